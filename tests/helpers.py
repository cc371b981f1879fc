"""Constants and small helpers shared by the tests (importable as ``helpers``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TEST_DATA = REPO / "tests" / "data"
SAMPLE = REPO / "assets" / "sample.jpg"
SHARED = Path(os.environ.get("SEMCODEC_SHARED", REPO.parent / "shared"))
KODAK = SHARED / "data" / "kodak"
TEST_MODEL = "semcodec-test"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def pixels_digest(image) -> str:
    """sha256 of a PIL image's RGB pixels (what a bit-exact decode must reproduce)."""
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def pixels_digest_in_another_process(stream: Path) -> str:
    """Decode ``stream`` in a fresh Python process with one torch/OpenMP thread (and the test checkpoints)
    and return its :func:`pixels_digest`: the cross-process, cross-thread-count determinism check."""
    import subprocess
    import sys

    code = ("import sys, hashlib, numpy as np, torch; torch.set_num_threads(1); import semcodec; "
            "im = semcodec.decompress(open(sys.argv[1], 'rb').read()); "
            "print(hashlib.sha256(np.asarray(im.convert('RGB')).tobytes()).hexdigest())")
    env = dict(os.environ, SEMCODEC_CHECKPOINTS=str(TEST_DATA / "checkpoints"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code, str(stream)], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    return out.stdout.strip()
