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
