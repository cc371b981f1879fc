"""Ablation of layer 0's effect on layer 1: how many bits the semantic prior saves the pixel layer.

For each image and integer rate knob, the same codec codes the pixel layer twice — with
its semantic prior fed the decoded layer-0 tokens, and without — and reports the RES1
bytes, the layer-0 bytes and the PSNR of both: "saved" is what the prior saves the pixel
layer, "net" compares the whole two-layer stream (layer 0 + conditioned RES1) with the
pixels-only one. The cost of scalability — a model that must also work without layer 0 —
is zero by construction when the prior was trained with ``--conditioning-only`` (the
rest of the model is frozen, so pixels-only streams are bit-identical to the model's
without the prior); a jointly trained model is compared with one trained without the
prior, given as ``--baseline-model``.

    python benchmarks/ablation.py [--images DIR] [--model NAME] [--semantic tiny] [--limit 8]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from PIL import Image

from semcodec.api import _semantic_models, load_codec, semantic_condition
from semcodec.bench.metrics import psnr
from semcodec.bench.runner import list_images, run_script
from semcodec.imageio import load_rgb
from semcodec.layers.pixels.coder import image_to_tensor

REPO = Path(__file__).resolve().parents[1]
LAYER0_RATE = 48


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--model", default="semcodec-ms192")
    parser.add_argument("--baseline-model", default=None, help="the same architecture trained without layer 0")
    parser.add_argument("--semantic", default="tiny")
    parser.add_argument("--limit", type=int, default=8)
    args = parser.parse_args()
    codec = load_codec(args.model)
    if not codec.coder.model.has_semantic_prior(args.semantic):
        raise SystemExit(f"{args.model} has no semantic prior for {args.semantic}: train one with "
                         f"`semcodec train --semantic {args.semantic} --conditioning-only`")
    tower, coder0 = _semantic_models(args.semantic, None)
    baseline = load_codec(args.baseline_model) if args.baseline_model else None
    rows = []
    for path in list_images(args.images, args.limit):
        pixels = load_rgb(path)                                   # (H, W, 3) uint8
        h, w = pixels.shape[:2]
        payload0 = coder0.encode(tower.tokens([Image.fromarray(pixels)])[0], LAYER0_RATE, image_size=(w, h))
        decoded = coder0.decode(payload0, image_size=(w, h))
        condition = semantic_condition(args.semantic, decoded.full, decoded.grid, w, h)
        x = image_to_tensor(pixels)
        y = codec.coder.analyze(x)
        for q in range(codec.coder.levels):
            row = {"image": path.name, "q": q, "layer0": len(payload0)}
            for name, cond in (("with", condition), ("without", None)):
                res = codec.coder.encode_analyzed(y, q, cond)
                out = codec.coder.decode(res, w, h, cond)
                row[f"res_{name}"], row[f"psnr_{name}"] = len(res), psnr(out, pixels)
            if baseline is not None:
                res = baseline.coder.encode(x, q)
                row["res_baseline"] = len(res)
                row["psnr_baseline"] = psnr(baseline.coder.decode(res, w, h), pixels)
            rows.append(row)
    print(f"model {args.model}, tower {args.semantic} (layer-0 rate {LAYER0_RATE}), {len(rows)} points\n")
    print("| q | layer 0 B | RES1 with | RES1 without | saved | net | PSNR with | PSNR without |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for q in range(codec.coder.levels):
        sel = [r for r in rows if r["q"] == q]
        mean = lambda k: statistics.mean(r[k] for r in sel)  # noqa: E731
        print(f"| {q} | {mean('layer0'):.0f} | {mean('res_with'):.0f} | {mean('res_without'):.0f} | "
              f"{1 - mean('res_with') / mean('res_without'):+.1%} | "
              f"{1 - (mean('layer0') + mean('res_with')) / mean('res_without'):+.1%} | "
              f"{mean('psnr_with'):.2f} | {mean('psnr_without'):.2f} |")


if __name__ == "__main__":
    run_script(main)
