"""Learning curve of the pixel codec: RD and BD-rate vs JPEG 4:2:0 for each training snapshot.

Every ``snapshot-XXXh.safetensors`` (and ``last.safetensors``) of a run folder is frozen
as a decoder would load it, then real streams are coded for a few Kodak images at the
integer rate knobs (its trained levels; ``--levels N``: the first N, so that a model with
an added level compares with earlier ones over the same knobs); JPEG 4:2:0 is measured on
the same images in the same run.

    python benchmarks/learning_curve.py runs/semcodec-ms192 [--images DIR] [--limit 6] [--levels N] [--csv OUT]

Checkpoint files may be named instead of (or beside) run folders.
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from semcodec.bench.bdrate import bd_rate
from semcodec.bench.metrics import psnr
from semcodec.bench.runner import list_images, run_script
from semcodec.layers.pixels.checkpoint import freeze_for_shipping, load_residual_checkpoint
from semcodec.imageio import load_rgb
from semcodec.layers.pixels.coder import ResidualCoder, image_to_tensor

REPO = Path(__file__).resolve().parents[1]


def rd_points(coder: ResidualCoder, images: list[np.ndarray], levels: int | None = None
              ) -> tuple[list[float], list[float]]:
    """Mean (bpp, PSNR) over the images at each integer rate knob (the first ``levels`` of them)."""
    rates, quality = [], []
    for q in range(min(levels or coder.levels, coder.levels)):
        bpp, db = [], []
        for im in images:
            payload = coder.encode(image_to_tensor(im), q)
            out = coder.decode(payload, im.shape[1], im.shape[0])
            bpp.append(len(payload) * 8 / (im.shape[0] * im.shape[1]))
            db.append(psnr(out, im))
        rates.append(float(np.mean(bpp)))
        quality.append(float(np.mean(db)))
    return rates, quality


def jpeg_points(images: list[np.ndarray], qualities=(10, 20, 30, 50, 70, 85, 95)) -> tuple[list[float], list[float]]:
    rates, quality = [], []
    for qual in qualities:
        bpp, db = [], []
        for im in images:
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, format="JPEG", quality=qual, subsampling="4:2:0")
            out = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
            bpp.append(len(buf.getvalue()) * 8 / (im.shape[0] * im.shape[1]))
            db.append(psnr(out, im))
        rates.append(float(np.mean(bpp)))
        quality.append(float(np.mean(db)))
    return rates, quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders and/or checkpoint files")
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--limit", type=int, default=6)
    parser.add_argument("--levels", type=int, default=None, help="code only the first N trained levels")
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    if args.levels is not None and args.levels < 1:
        parser.error(f"--levels must be at least 1; got {args.levels}")
    paths = list_images(args.images, args.limit)
    images = [load_rgb(p) for p in paths]
    jr, jq = jpeg_points(images)
    rows = []
    snapshots = []
    for run in args.runs:
        snapshots += ([run] if run.is_file() else
                      sorted(run.glob("snapshot-*.safetensors")) + [run / "last.safetensors"])
    with tempfile.TemporaryDirectory() as tmp:
        for snap in snapshots:
            if not snap.exists():
                continue
            frozen = freeze_for_shipping(snap, Path(tmp) / "frozen.safetensors", "learning-curve")
            model, meta = load_residual_checkpoint(frozen)
            rates, quality = rd_points(ResidualCoder(model), images, args.levels)
            try:
                bd = f"{bd_rate(jr, jq, rates, quality):+.1f}"
            except ValueError as e:          # no PSNR overlap with JPEG yet
                bd = f"n/a ({e})"
            row = {"snapshot": str(snap), "iterations": meta.get("iterations"), "hours": meta.get("train_hours"),
                   "bpp": " ".join(f"{r:.3f}" for r in rates), "psnr": " ".join(f"{q:.2f}" for q in quality),
                   "bd_rate_vs_jpeg420_percent": bd}
            rows.append(row)
            print(row, flush=True)
    if args.csv and rows:
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    run_script(main)
