"""Encoder effort: what per-image latent refinement buys (BD-rate) and costs (encode time).

For the first ``--limit`` Kodak images, each effort level codes the image at the same
qualities through the public API (decoders are unaffected by the effort); reports mean
bpp / PSNR per quality, the BD-rate of each effort against effort 0 and the mean
encode time per image.

    python benchmarks/effort.py [--images DIR] [--limit 4] [--efforts 0,1,2] [--qualities 0,25,50,75,100]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import semcodec
from semcodec.bench.bdrate import bd_rate
from semcodec.bench.metrics import psnr
from semcodec.bench.runner import list_images, run_script
from semcodec.imageio import load_rgb

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--model", default="semcodec-ms192")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--efforts", default="0,1,2")
    parser.add_argument("--qualities", default="0,25,50,75,100")
    args = parser.parse_args()
    efforts = [int(e) for e in args.efforts.split(",")]
    qualities = [float(q) for q in args.qualities.split(",")]
    paths = list_images(args.images, args.limit)
    if not paths:
        raise SystemExit(f"no images in {args.images}")
    images = [load_rgb(p) for p in paths]

    curves: dict[int, tuple[list[float], list[float]]] = {}
    times: dict[int, list[float]] = {}
    for effort in efforts:
        rates, quality, seconds = [], [], []
        for q in qualities:
            bpp, db = [], []
            for im in images:
                start = time.perf_counter()
                data = semcodec.compress(im, quality=q, model=args.model, semantic=False, effort=effort)
                seconds.append(time.perf_counter() - start)
                bpp.append(len(data) * 8 / (im.shape[0] * im.shape[1]))
                db.append(psnr(semcodec.decompress(data), im))
            rates.append(float(np.mean(bpp)))
            quality.append(float(np.mean(db)))
            print(f"effort {effort} quality {q:g}: {rates[-1]:.4f} bpp, {quality[-1]:.2f} dB", flush=True)
        curves[effort], times[effort] = (rates, quality), seconds

    size = f"{images[0].shape[1]}x{images[0].shape[0]}"
    print(f"\nmodel {args.model}; {len(images)} images ({size} first); torch threads {torch.get_num_threads()}\n")
    print("| effort | BD-rate vs effort 0 (PSNR) | encode s / image (mean) |")
    print("|---:|---:|---:|")
    base = curves[efforts[0]]
    for effort in efforts:
        bd = bd_rate(*base, *curves[effort]) if effort != efforts[0] else 0.0
        print(f"| {effort} | {bd:+.1f} % | {statistics.mean(times[effort]):.2f} |")


if __name__ == "__main__":
    run_script(main)
