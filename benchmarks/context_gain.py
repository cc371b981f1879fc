"""Pixel-layer bytes of two checkpoints with the same transforms, e.g. a model without and with its context.

With ``g_a``/``g_s`` shared (a context trained with ``--context-only``), both code the same latent and
reconstruct identically, so the byte difference at each rate knob is the BD-rate gain at equal PSNR.

    python benchmarks/context_gain.py BASE.safetensors OTHER.safetensors [--images DIR] [--every 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from semcodec.bench.runner import list_images, run_script
from semcodec.layers.pixels.checkpoint import load_residual_checkpoint
from semcodec.imageio import load_rgb
from semcodec.layers.pixels.coder import ResidualCoder, image_to_tensor

REPO = Path(__file__).resolve().parents[1]
KNOBS = (-3.0, -1.0, 1.0, 3.0, 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path)
    parser.add_argument("other", type=Path)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--every", type=int, default=1, help="use every n-th image")
    args = parser.parse_args()
    paths = list_images(args.images)[:: args.every]
    coders = [ResidualCoder(load_residual_checkpoint(p)[0]) for p in (args.base, args.other)]
    total = np.zeros((2, len(KNOBS)))
    with torch.no_grad():
        for path in paths:
            x = image_to_tensor(load_rgb(path))
            for c, coder in enumerate(coders):
                y = coder.analyze(x)
                for k, q in enumerate(KNOBS):
                    total[c, k] += len(coder.encode_analyzed(y, q))
    print(f"{len(paths)} images; mean RES1 bytes per image\n")
    print("| knob q | base | other | change |\n|---:|---:|---:|---:|")
    for k, q in enumerate(KNOBS):
        print(f"| {q:+.0f} | {total[0, k] / len(paths):.0f} | {total[1, k] / len(paths):.0f} | "
              f"{100 * (total[1, k] / total[0, k] - 1):+.2f} % |")
    print(f"| all | | | {100 * (total[1].sum() / total[0].sum() - 1):+.2f} % |")


if __name__ == "__main__":
    run_script(main)
