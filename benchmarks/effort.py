"""Encoder effort: what per-image latent refinement buys (BD-rate) and costs (encode time).

For the first ``--limit`` Kodak images, each effort level codes the image at the same
qualities through the public API (decoders are unaffected by the effort); reports mean
bpp / PSNR per quality, the BD-rate of each effort against effort 0 (and against the
``--baselines`` measured in the same run on the same images) and the mean encode time per image.

``--curve N`` also records, for the top effort level, the BD-rate against effort 0 after every N
iterations of one run of its schedule (the true cost is measured at those points, and the best
latents so far count): how the gain grows with the iteration budget. Its rates are those of the
pixel layer's payload (the container's fixed overhead left out), and a point inside the schedule
is not a shorter schedule (whose temperature would have annealed sooner).

    python benchmarks/effort.py [--images DIR] [--limit 4] [--efforts 0,1,2] [--qualities 0,18,36,54,72,90]
                                [--threads 2] [--baselines avif,webp,jpeg420] [--curve 50]
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
    parser.add_argument("--qualities", default="0,18,36,54,72,90", help="pixel-layer qualities (above 90 a quality adds layer 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the time budgets are for 2)")
    parser.add_argument("--device", default="cpu", help="where the refinement searches (cpu, cuda)")
    parser.add_argument("--baselines", default="", help="Pillow codecs to compare with, e.g. avif,webp,jpeg420")
    parser.add_argument("--curve", type=int, default=0, metavar="N",
                        help="BD-rate vs iterations of the top effort, measured every N iterations")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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
                data = semcodec.compress(im, quality=q, model=args.model, semantic=False, effort=effort,
                                         device=args.device)
                seconds.append(time.perf_counter() - start)
                bpp.append(len(data) * 8 / (im.shape[0] * im.shape[1]))
                db.append(psnr(semcodec.decompress(data), im))
            rates.append(float(np.mean(bpp)))
            quality.append(float(np.mean(db)))
            print(f"effort {effort} quality {q:g}: {rates[-1]:.4f} bpp, {quality[-1]:.2f} dB, "
                  f"{statistics.mean(seconds[-len(images):]):.1f} s / image", flush=True)
        curves[effort], times[effort] = (rates, quality), seconds
    others = _baseline_curves(args.baselines, images)

    size = f"{images[0].shape[1]}x{images[0].shape[0]}"
    print(f"\nmodel {args.model}; {len(images)} images ({size} first); qualities {args.qualities}; "
          f"torch threads {torch.get_num_threads()}; device {args.device}\n")
    names = list(others)
    print("| effort | iterations | BD-rate vs effort 0 (PSNR) | " + "".join(f"vs {n} | " for n in names)
          + "encode s / image (mean) |")
    print("|---:|---:|---:|" + "---:|" * len(names) + "---:|")
    base = curves[efforts[0]]
    for effort in efforts:
        bd = _bd(*base, *curves[effort]) if effort != efforts[0] else "0.0 %"
        against = "".join(f"{_bd(*others[n], *curves[effort])} | " for n in names)
        print(f"| {effort} | {semcodec.layers.pixels.refine.EFFORT_ITERATIONS[effort]} | {bd} | {against}"
              f"{statistics.mean(times[effort]):.1f} |")
    if args.curve > 0:
        _iteration_curve(args, images, qualities, max(efforts))


def _bd(anchor_rate, anchor_db, rate, db) -> str:
    """BD-rate of (rate, db) against the anchor as a table cell ('n/a' when the curves do not overlap)."""
    try:
        return f"{bd_rate(anchor_rate, anchor_db, rate, db):+.1f} %"
    except ValueError:
        return "n/a"


def _baseline_curves(names: str, images: list[np.ndarray]) -> dict[str, tuple[list[float], list[float]]]:
    """Mean (bpp, PSNR) per knob of each named Pillow codec over the images (its full sweep)."""
    from PIL import Image

    from semcodec.bench.baselines import pillow_baselines

    available = pillow_baselines()
    curves = {}
    for name in filter(None, names.split(",")):
        if name not in available:
            raise SystemExit(f"baseline {name} is not available here (have: {', '.join(available)})")
        b = available[name]
        rates, quality = [], []
        for value in b.sweep:
            bpp, db = [], []
            for im in images:
                data = b.encoder(Image.fromarray(im), value, 1)
                bpp.append(len(data) * 8 / (im.shape[0] * im.shape[1]))
                db.append(psnr(b.decoder(data, value), im))
            rates.append(float(np.mean(bpp)))
            quality.append(float(np.mean(db)))
        curves[name] = (rates, quality)
        print(f"{b.label}: {len(b.sweep)} knobs measured", flush=True)
    return curves


def _iteration_curve(args, images: list[np.ndarray], qualities: list[float], effort: int) -> None:
    """BD-rate against effort 0 of the best latents found after every ``args.curve`` iterations of one run."""
    from semcodec.api import load_codec, quality_to_rate
    from semcodec.layers.pixels.refine import refine_latents
    from semcodec.layers.pixels.coder import image_to_tensor

    coder = load_codec(args.model).coder
    iterations = semcodec.layers.pixels.refine.EFFORT_ITERATIONS[effort]
    points = list(range(args.curve, iterations + 1, args.curve))
    points += [iterations] if iterations not in points else []
    best: dict[int, list[list[tuple[float, float]]]] = {p: [] for p in [0] + points}   # point → quality → (bpp, dB)
    for quality in qualities:
        rows = {p: [] for p in best}
        for im in images:
            x = image_to_tensor(im)
            y = coder.analyze(x)
            pixels = im.shape[0] * im.shape[1]
            found: list = []
            refine_latents(coder, x, y, quality_to_rate(quality, coder.quality_range), iterations,
                           device=args.device, evaluate_at=points, on_evaluation=lambda e, _: found.append(e))
            lowest = None
            for e in found:                                 # the best so far at each point
                lowest = e if lowest is None or e.cost < lowest.cost else lowest
                mse = lowest.sse / (3 * pixels)
                rows[e.iteration].append((lowest.bits / pixels, 10 * np.log10(255**2 / mse)))
        for p in best:
            best[p].append((float(np.mean([r for r, _ in rows[p]])), float(np.mean([d for _, d in rows[p]]))))
        print(f"curve: quality {quality:g} done", flush=True)
    base_rate, base_db = zip(*best[0])
    print(f"\nBD-rate vs effort 0 (pixel-layer payload, PSNR) after n iterations of effort {effort}'s schedule "
          f"({iterations} iterations):\n")
    print("| iterations | BD-rate vs effort 0 |\n|---:|---:|")
    for p in points:
        rate, db = zip(*best[p])
        print(f"| {p} | {_bd(base_rate, base_db, rate, db)} |")


if __name__ == "__main__":
    run_script(main)
