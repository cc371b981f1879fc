"""Rate-control accuracy and cost on a folder of images (default: ../shared/data/kodak).

For every image and target bpp it records the achieved size, the relative error, the
number of trial encodes, and the time of the size-targeted encode divided by the
time of one fixed-quality encode of the same image (same process, models warm).

    python benchmarks/rate_control.py [--images DIR] [--targets 0.1,0.25,0.5,1.0,1.5] [--model NAME] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from semcodec.api import compress_image, load_codec
from semcodec.bench.runner import list_images, run_script
from semcodec.errors import RateControlError

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--targets", default="0.1,0.25,0.5,1.0,1.5")
    parser.add_argument("--model", default="semcodec-ms192")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    images = list_images(args.images)
    images = images[: args.limit] if args.limit else images
    load_codec(args.model)  # warm
    rows = []
    for path in images:
        t0 = time.perf_counter()
        single = compress_image(path, quality=50, model=args.model, semantic=False)
        t_single = time.perf_counter() - t0
        for bpp in targets:
            t0 = time.perf_counter()
            try:
                r = compress_image(path, bpp=bpp, model=args.model, semantic=False)
            except RateControlError as e:
                rows.append({"image": path.name, "target_bpp": bpp, "reachable": False, "error": str(e)})
                continue
            t = time.perf_counter() - t0
            target_bytes = round(bpp * r.width * r.height / 8)
            rows.append({"image": path.name, "target_bpp": bpp, "reachable": True, "bytes": len(r.data),
                         "target_bytes": target_bytes, "rel_error": len(r.data) / target_bytes - 1,
                         "trials": r.trials, "time_s": t, "single_encode_s": t_single, "cost_ratio": t / t_single})
        print(f"{path.name}: done", flush=True)

    print(f"\nmodel {args.model}; {len(images)} images; torch threads {torch.get_num_threads()}\n")
    print("| target bpp | reachable | within ±2 % | max abs error | mean trials | cost vs one encode |")
    print("|---:|---:|---:|---:|---:|---:|")
    for bpp in targets:
        sel = [r for r in rows if r["target_bpp"] == bpp]
        ok = [r for r in sel if r["reachable"]]
        if not ok:
            print(f"| {bpp} | 0/{len(sel)} | – | – | – | – |")
            continue
        within = sum(abs(r["rel_error"]) <= 0.02 for r in ok)
        print(f"| {bpp} | {len(ok)}/{len(sel)} | {within}/{len(ok)} | {max(abs(r['rel_error']) for r in ok):.2%} | "
              f"{statistics.mean(r['trials'] for r in ok):.1f} | {statistics.mean(r['cost_ratio'] for r in ok):.2f}× |")
    unreachable = [r for r in rows if not r["reachable"]]
    if unreachable:
        print(f"\nunreachable example: {unreachable[0]['image']} @ {unreachable[0]['target_bpp']} bpp: {unreachable[0]['error']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    run_script(main)
