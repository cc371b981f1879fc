"""Time of layer 2 (the refinement) against the pixel layer's own, per Kodak image.

For each image: the pixel layer alone (``compress_image(quality=Q)``, ``Q`` ≤ 90) and the same with layer 2
(``quality=100`` and ``lossless=True``); decoding is timed on the whole stream and on the same stream with its
layer 2 dropped (``extract_layers``), so layer 2's decode time is the difference. Layer 2's encode time is
measured directly: ``RefinementCoder.encode`` over the decoded pixel layer, plus that decode, which the encoder
needs. Best of ``--repeats`` runs per measurement. Also the PSNR of quality 100 (layer 2 at step 4).

    python benchmarks/layer2_speed.py [--images DIR] [--limit 8] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from semcodec.api import compress_image, decompress, extract_layers, refinement_step
from semcodec.bench.metrics import psnr
from semcodec.bench.runner import list_images
from semcodec.imageio import load_rgb
from semcodec.layers.refinement import STEP_ONE, RefinementCoder

REPO = Path(__file__).resolve().parents[1]


def best_of(repeats: int, fn) -> tuple[float, object]:
    """Shortest wall time of ``repeats`` calls, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pixel-quality", type=float, default=90.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for path in list_images(args.images)[: args.limit]:
        image = load_rgb(path)
        pixel_enc, pixel_only = best_of(args.repeats, lambda: compress_image(
            image, quality=args.pixel_quality, semantic=False).data)
        pixel_dec, base = best_of(args.repeats, lambda: np.asarray(decompress(pixel_only)))
        row = {"image": path.name, "pixel_enc": pixel_enc, "pixel_dec": pixel_dec}
        for name, kwargs, step16 in (("q100", {"quality": 100.0}, refinement_step(100.0)),
                                     ("lossless", {"lossless": True}, STEP_ONE)):
            stream = compress_image(image, semantic=False, **kwargs).data
            lower = extract_layers(stream, [1])
            full_dec, full = best_of(args.repeats, lambda: np.asarray(decompress(stream)))
            lower_dec, lower_pixels = best_of(args.repeats, lambda: np.asarray(decompress(lower)))
            enc, _ = best_of(args.repeats, lambda: RefinementCoder().encode(image, lower_pixels, step16))
            row[f"{name}_enc"] = enc + lower_dec              # the encoder decodes the pixel layer first
            row[f"{name}_dec"] = full_dec - lower_dec
            row[f"{name}_bpp"] = 8 * len(stream) / (image.shape[0] * image.shape[1])
            if name == "q100":
                row["q100_psnr"] = psnr(full, image)
        rows.append(row)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    keys = [k for k in rows[0] if k != "image"]
    print(f"\nmean over {len(rows)} images ({args.threads} torch threads, best of {args.repeats}):")
    print("| " + " | ".join(keys) + " |")
    print("|" + " ---: |" * len(keys))
    print("| " + " | ".join(f"{statistics.mean(r[k] for r in rows):.3f}" for k in keys) + " |")


if __name__ == "__main__":
    main()
