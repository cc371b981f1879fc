"""Encoder effort: what per-image latent refinement buys (BD-rate) and costs (encode time).

For the first ``--limit`` Kodak images, each effort level codes each image at the same qualities
(the pixel layer's, 0–90: above 90 a quality adds layer 2); decoders are unaffected by the effort.
The report gives mean bpp / PSNR per quality, the BD-rate (PSNR) of each level against effort 0 and
against the ``--baselines`` measured on the same images, and the encode time per image.

Every coded (image, quality, effort) is appended to a CSV as soon as it is measured (``--csv``), and
a rerun skips what the CSV already holds: a long measurement can be stopped and resumed, and the
report covers, for each level, the images it has finished at every quality (effort 0 and the
baselines restricted to the same images).

``--curve N`` records, in the top level's own run, the true cost after every N iterations as well
(the best latents so far count): the BD-rate against effort 0 as a function of the iteration budget,
on the pixel layer's payload. A point inside the schedule is not a shorter schedule (whose
temperature would have annealed sooner). The top level's stream is still the one ``compress``
writes: its latents are chosen among the schedule's own evaluation points only (the extra points
cost one true-cost evaluation each, ≈ 1.2 iterations, included in its time).

    python benchmarks/effort.py [--images DIR] [--limit 8] [--efforts 0,1,2,3] [--qualities 0,18,36,54,72,90]
                                [--threads 2] [--baselines avif,webp,jpeg420] [--curve 100]
                                [--csv bench-results/effort.csv] [--report-only]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import semcodec
from semcodec.bench.bdrate import bd_rate
from semcodec.bench.metrics import psnr, psnr_from_mse
from semcodec.bench.runner import list_images, run_script
from semcodec.imageio import load_rgb

REPO = Path(__file__).resolve().parents[1]
FIELDS = ["kind", "image", "quality", "effort", "iterations", "bits", "psnr", "seconds", "threads"]


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
                        help="BD-rate vs iterations of the top effort, measured every N iterations of its run")
    parser.add_argument("--csv", type=Path, default=REPO / "bench-results" / "effort.csv",
                        help="where measurements are appended (and read back: done ones are skipped)")
    parser.add_argument("--report-only", action="store_true", help="report what the CSV holds, measure nothing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    efforts = sorted({int(e) for e in args.efforts.split(",")} | {0})
    qualities = [float(q) for q in args.qualities.split(",")]
    paths = list_images(args.images, args.limit)
    if not paths:
        raise SystemExit(f"no images in {args.images}")
    if not args.report_only:
        measure(args, paths, efforts, qualities)
    report(args, paths, efforts, qualities)


# --------------------------------------------------------------------------- measuring


def measure(args, paths: list[Path], efforts: list[int], qualities: list[float]) -> None:
    """Code every (effort, image, quality) the CSV does not hold yet, level by level, appending each row."""
    done = {(r["kind"], r["image"], float(r["quality"]), int(r["effort"])) for r in read_rows(args.csv)}
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    top = max(efforts)
    with args.csv.open("a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if f.tell() == 0:
            writer.writeheader()
        for effort in efforts:
            for path in paths:
                image = None
                for q in qualities:
                    if ("effort", path.name, q, effort) in done:
                        continue
                    image = load_rgb(path) if image is None else image
                    with_curve = args.curve > 0 and effort == top and effort > 0
                    rows = (_measure_with_curve if with_curve else _measure)(args, image, q, effort)
                    for row in rows:
                        writer.writerow({"image": path.name, "quality": q, "threads": torch.get_num_threads(), **row})
                    f.flush()
                    main_row = rows[0]
                    print(f"effort {effort} {path.name} quality {q:g}: {main_row['bits'] / image[..., 0].size:.4f} bpp, "
                          f"{main_row['psnr']} dB, {main_row['seconds']} s", flush=True)


def _measure(args, image: np.ndarray, quality: float, effort: int) -> list[dict]:
    """One ``compress`` at this quality and effort, timed, and its decoded PSNR."""
    start = time.perf_counter()
    data = semcodec.compress(image, quality=quality, model=args.model, semantic=False, effort=effort,
                             device=args.device)
    seconds = time.perf_counter() - start
    return [_row("effort", effort, _iterations(effort), len(data) * 8, psnr(semcodec.decompress(data), image), seconds)]


def _measure_with_curve(args, image: np.ndarray, quality: float, effort: int) -> list[dict]:
    """The top level's stream, as ``compress`` makes it (the latents of lowest true cost among the
    schedule's own evaluation points), and from the same run the best true cost after every
    ``args.curve`` iterations (pixel-layer payload bits; iteration 0: the plain latents)."""
    from semcodec.api import load_codec, quality_to_rate
    from semcodec.layers.pixels.coder import image_to_tensor
    from semcodec.layers.pixels.refine import evaluation_points, refine_latents

    coder = load_codec(args.model).coder
    iterations = _iterations(effort)
    own_points = set(evaluation_points(iterations))
    curve_points = set(range(args.curve, iterations + 1, args.curve)) | {iterations}
    q = quality_to_rate(quality, coder.quality_range)
    found = []
    start = time.perf_counter()
    y = coder.analyze_pixels(image)                                       # (1, M, h, w)
    refine_latents(coder, image_to_tensor(image), y, q, iterations, device=args.device,
                   evaluate_at=sorted(own_points | curve_points), on_evaluation=lambda *e: found.append(e))
    chosen, latents = None, None                      # what refine_latents returns with its own points
    for e, candidate in found:
        if (e.iteration == 0 or e.iteration in own_points) and (chosen is None or e.cost < chosen.cost):
            chosen, latents = e, candidate
    payload = latents.encode(coder, q)
    seconds = time.perf_counter() - start
    assert len(payload) * 8 == chosen.bits
    found = [e for e, _ in found]
    # The stream is effort 0's with the RES1 payload replaced (the container's framing is fixed-size).
    plain = semcodec.compress(image, quality=quality, model=args.model, semantic=False)
    stream_bits = len(plain) * 8 - found[0].bits + chosen.bits
    pixels = image[..., 0].size
    rows = [_row("effort", effort, iterations, stream_bits, psnr_from_mse(chosen.sse / (3 * pixels)), seconds)]
    best = None
    for e in found:
        best = e if best is None or e.cost < best.cost else best
        if e.iteration == 0 or e.iteration in curve_points:
            rows.append(_row("curve", effort, e.iteration, best.bits, psnr_from_mse(best.sse / (3 * pixels)), 0.0))
    return rows


def _row(kind: str, effort: int, iterations: int, bits: int, db: float, seconds: float) -> dict:
    return {"kind": kind, "effort": effort, "iterations": iterations, "bits": bits, "psnr": f"{db:.4f}",
            "seconds": f"{seconds:.2f}"}


def _iterations(effort: int) -> int:
    from semcodec.layers.pixels.refine import effort_iterations
    return effort_iterations(effort)


def read_rows(path: Path) -> list[dict]:
    """The rows of a measurement CSV (none when it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- reporting


def report(args, paths: list[Path], efforts: list[int], qualities: list[float]) -> None:
    """BD-rates and times of each level over the images it has finished, from the CSV."""
    names = [p.name for p in paths]
    points = defaultdict(dict)                 # (kind, effort, iterations) → (image, quality) → (bpp, dB, s)
    sizes = {p.name: load_rgb(p).shape[:2] for p in paths}
    for r in read_rows(args.csv):
        if r["image"] in sizes and float(r["quality"]) in qualities:
            h, w = sizes[r["image"]]
            key = (r["kind"], int(r["effort"]), int(r["iterations"]) if r["kind"] == "curve" else 0)
            points[key][(r["image"], float(r["quality"]))] = (int(r["bits"]) / (h * w), float(r["psnr"]),
                                                             float(r["seconds"]))

    def finished(key) -> list[str]:
        return [n for n in names if all((n, q) in points[key] for q in qualities)]

    def curve(key, images: list[str]) -> tuple[list[float], list[float]]:
        rows = [[points[key][(n, q)] for n in images] for q in qualities]
        return [float(np.mean([b for b, _, _ in r])) for r in rows], [float(np.mean([d for _, d, _ in r])) for r in rows]

    print(f"\nmodel {args.model}; qualities {args.qualities}; CSV {args.csv}\n")
    levels = [(e, finished(("effort", e, 0))) for e in efforts]
    baselines = _baselines(args.baselines, paths, max((imgs for _, imgs in levels), key=len, default=[]))
    print("| effort | iterations | images | BD-rate vs effort 0 (PSNR) | "
          + "".join(f"vs {n} | " for n in baselines) + "encode s / image (mean, max) |")
    print("|---:|---:|---:|---:|" + "---:|" * len(baselines) + "---:|")
    for effort, images in levels:
        if not images:
            print(f"| {effort} | {_iterations(effort)} | 0 | not measured |" + " |" * len(baselines) + " |")
            continue
        mine = curve(("effort", effort, 0), images)
        versus = _bd(*curve(("effort", 0, 0), images), *mine) if effort else "0.0 %"
        against = "".join(f"{_bd(*baselines[n](images), *mine)} | " for n in baselines)
        seconds = [points[("effort", effort, 0)][(n, q)][2] for n in images for q in qualities]
        print(f"| {effort} | {_iterations(effort)} | {len(images)} | {versus} | {against}"
              f"{statistics.mean(seconds):.1f}, {max(seconds):.1f} |")
    print()
    for effort, images in levels:
        if images:
            rates, dbs = curve(("effort", effort, 0), images)
            cells = ", ".join(f"q{q:g} {b:.4f} bpp {d:.2f} dB" for q, b, d in zip(qualities, rates, dbs))
            print(f"effort {effort} ({len(images)} images): {cells}")
    curve_keys = sorted(k for k in points if k[0] == "curve")
    if curve_keys:
        top = curve_keys[0][1]
        images = [n for n in names if all(n in finished(k) for k in curve_keys)]
        if images:
            base = curve(("curve", top, 0), images)
            print(f"\nBD-rate vs effort 0 (pixel-layer payload, PSNR) after n iterations of effort {top}'s "
                  f"schedule, {len(images)} images:\n")
            print("| iterations | BD-rate vs effort 0 |\n|---:|---:|")
            for key in curve_keys:
                if key[2]:
                    print(f"| {key[2]} | {_bd(*base, *curve(key, images))} |")


def _bd(anchor_rate, anchor_db, rate, db) -> str:
    """BD-rate of (rate, db) against the anchor as a table cell ('n/a' when the curves do not overlap)."""
    try:
        return f"{bd_rate(anchor_rate, anchor_db, rate, db):+.1f} %"
    except ValueError:
        return "n/a"


def _baselines(names: str, paths: list[Path], images: list[str]) -> dict:
    """For each named Pillow codec, a function of a subset of ``images`` giving its mean (bpp, PSNR) per knob
    (its full sweep), each image coded once."""
    from PIL import Image

    from semcodec.bench.baselines import pillow_baselines

    available = pillow_baselines()
    by_name = {p.name: p for p in paths}
    found = {}
    for name in filter(None, names.split(",")):
        if name not in available:
            raise SystemExit(f"baseline {name} is not available here (have: {', '.join(available)})")
        b = available[name]
        measured = {}                                          # image → [(bpp, dB) per knob]
        for n in images:
            im = load_rgb(by_name[n])
            measured[n] = [(len(d) * 8 / (im.shape[0] * im.shape[1]), psnr(b.decoder(d, v), im))
                           for v in b.sweep for d in [b.encoder(Image.fromarray(im), v, 1)]]
        found[name] = lambda subset, m=measured: (
            [float(np.mean([m[n][k][0] for n in subset])) for k in range(len(next(iter(m.values()))))],
            [float(np.mean([m[n][k][1] for n in subset])) for k in range(len(next(iter(m.values()))))])
    return found


if __name__ == "__main__":
    run_script(main)
