"""Layer 0 rate vs token fidelity on Kodak, against JPEG / WebP / AVIF at matched bytes.

For every image and byte budget B:

* **semcodec layer 0**: a complete semantic-only stream (container header + SEM0
  chunk) of at most B bytes (``encode_to_budget`` on the payload budget that
  remains after the container overhead), decoded with ``decode_tokens``.
* **JPEG / WebP / AVIF (Pillow)**: the largest file of at most B bytes: the
  image is first resized so that its long side equals the tower input size S
  (the tower never sees more pixels than that), then the quality is bisected;
  if even the lowest quality does not fit, the image is downscaled further by
  steps of 0.8. The decoded image is resized back to the original size and run
  through the tower.

Token fidelity is measured against the tokens of the original image: mean
squared error over all N×D values and mean cosine similarity over the N tokens.

Timing compares decoding tokens from a semcodec stream with decoding the
matched-bytes JPEG and running the tower on the decoded image (both single-threaded
by default, see ``--threads``; the machine may be shared, so treat absolute times
with care).

**Random full-size towers** (``--random``): every family at full size with random
weights (``clip-l14-336``, ``siglip-so400m-384``, ``qwen2.5-vl-7b`` on Kodak's own
768×512 grid of 18×27 tokens), written to a temporary weights file and loaded as
``--semantic-weights`` would, calibrated on ``--calib-images`` training photos
(``../shared/data/train``, never Kodak). Random weights show the plumbing and the
cost (bytes, decode time, token count), **not meaning**: the tokens of a random
tower say nothing about the image, so their fidelity numbers compare codecs on
noise-like features only.

Usage::

    python benchmarks/semantic_rd.py                       # tiny + real towers whose weights are here
    python benchmarks/semantic_rd.py --limit 6 --budgets 1000
    python benchmarks/semantic_rd.py --towers --random clip-l14-336 siglip-so400m-384 qwen2.5-vl-7b \
        --limit 2 --codecs jpeg --threads 2

Writes ``bench-results/semantic_rd.csv`` (one row per image, codec and budget)
and prints a markdown summary.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
# numpy's BLAS threads spin on a shared machine; single-threaded numbers are stable (set before numpy loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import semcodec._compat  # noqa: E402,F401  (before torchvision / open_clip)
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from semcodec.bench.runner import list_images, run_script  # noqa: E402
from semcodec.layers.semantic import (  # noqa: E402
    decode_tokens, find_calibration, load_calibration, semantic_only_stream)
from semcodec.models.semantic import list_semantic_models, load_tower  # noqa: E402

PIL_CODECS = {
    "jpeg": dict(format="JPEG", optimize=True),
    # the same, but starting from the full-resolution image (what a user sending the photo would do)
    "jpeg-full": dict(format="JPEG", optimize=True),
    "webp": dict(format="WEBP", method=6),
    "avif": dict(format="AVIF", speed=4),
}


def pil_encode(img: Image.Image, codec: str, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, quality=quality, **PIL_CODECS[codec])
    return buf.getvalue()


def pil_at_budget(img: Image.Image, codec: str, budget: int, max_side: int) -> tuple[bytes | None, tuple[int, int]]:
    """The largest encoding of at most ``budget`` bytes: quality bisection, then downscaling."""
    w, h = img.size
    scale = min(1.0, max_side / max(w, h))
    for _ in range(25):
        size = (max(8, round(w * scale)), max(8, round(h * scale)))
        small = img.resize(size, Image.BICUBIC) if size != img.size else img
        lo, hi, best = 1, 95, None
        while lo <= hi:
            q = (lo + hi) // 2
            data = pil_encode(small, codec, q)
            if len(data) <= budget:
                best, lo = data, q + 1
            else:
                hi = q - 1
        if best is not None:
            return best, size
        scale *= 0.8
    return None, (0, 0)


def fidelity(t_hat: torch.Tensor, t: torch.Tensor) -> tuple[float, float]:
    mse = float(((t_hat - t) ** 2).mean())
    cos = float(torch.nn.functional.cosine_similarity(t_hat, t, dim=-1).mean())
    return mse, cos


def timed(fn, repeat: int = 5, slow: float = 2.0) -> float:
    """Best of ``repeat`` calls after a warm-up; a call slower than ``slow`` seconds is timed once."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > slow:
        return first
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def forward(tower, img: Image.Image) -> torch.Tensor:
    """The tower's tokens ``(N, D)`` of one image."""
    return tower.tokens([img])[0]


def run_tower(name: str, images: list[Path], budgets: list[int], codecs: list[str], rows: list[dict],
              tower=None, cal=None) -> dict:
    """Rows of ``name`` (a registered tower with weights and calibration here, or the given ``tower`` and ``cal``)."""
    tower = tower or load_tower(name)
    cal = cal or load_calibration(find_calibration(tower.spec.name))
    variable = getattr(tower, "variable_grid", False)
    timing = {"semcodec": [], "jpeg+tower": [], "tower": [], "tokens": []}
    timing_budget = min(budgets, key=lambda b: abs(b - 1000))
    for path in images:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        S = max(w, h) if variable else tower.spec.image_size   # Qwen sees Kodak at its own size (within limits)
        grid = tower.grid(w, h) if variable else None
        t0 = time.perf_counter()
        t = forward(tower, img)
        t_forward = time.perf_counter() - t0
        timing["tokens"].append(t.shape[0])
        for budget in budgets:
            stream = semantic_only_stream(t, cal, w, h, max_bytes=budget, grid=grid)
            tok = decode_tokens(stream, calibration=cal)
            mse, cos = fidelity(tok.tokens, t)
            rows.append(dict(tower=name, image=path.name, codec="semcodec", budget=budget, bytes=len(stream),
                             mse=mse, cosine=cos, kept=int(tok.positions.numel()), detail=""))
            if budget == timing_budget:
                timing["semcodec"].append(timed(lambda: decode_tokens(stream, calibration=cal)))
            for codec in codecs:
                data, size = pil_at_budget(img, codec, budget, max(w, h) if codec.endswith("-full") else S)
                if data is None:
                    rows.append(dict(tower=name, image=path.name, codec=codec, budget=budget, bytes=0,
                                     mse=float("nan"), cosine=float("nan"), kept=0, detail="does not fit"))
                    continue
                dec = Image.open(io.BytesIO(data)).convert("RGB").resize((w, h), Image.BICUBIC)
                mse, cos = fidelity(forward(tower, dec), t)
                rows.append(dict(tower=name, image=path.name, codec=codec, budget=budget, bytes=len(data),
                                 mse=mse, cosine=cos, kept=0, detail=f"{size[0]}x{size[1]}"))
                if codec == "jpeg" and budget == timing_budget:
                    def jpeg_decode(data=data):
                        im = Image.open(io.BytesIO(data))
                        im.load()
                        return im.convert("RGB")
                    # the tower's cost does not depend on the pixels' values (the decoded image has the size of
                    # the original: the same grid), so a slow forward is timed once, on the original
                    t_tower = timed(lambda: forward(tower, img)) if t_forward < 2.0 else t_forward
                    timing["jpeg+tower"].append(timed(jpeg_decode) + t_tower)
                    timing["tower"].append(t_tower)
        print(f"  {name}: {path.name} done", file=sys.stderr)
    out = {k: statistics.median(v) if v else float("nan") for k, v in timing.items()}
    out["budget"] = timing_budget
    return out


def random_tower(name: str, folder: Path, train: Path, calib_images: int):
    """Tower ``name`` at full size with random weights (a file in ``folder``, loaded as ``--semantic-weights``)
    and its calibration on the first ``calib_images`` photos of ``train``."""
    from semantic_speed import random_tower_weights

    from semcodec.layers.semantic import calibrate

    weights = random_tower_weights(name, folder / f"{name}.safetensors")
    tower = load_tower(name, weights=weights)
    photos = sorted(p for p in train.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:calib_images]
    t0 = time.perf_counter()
    cal = calibrate(tower, photos)
    print(f"  {name}: random weights, calibrated on {len(photos)} training photos in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    weights.unlink()
    return tower, cal


def synthetic_calibration(spec, seed: int = 0):
    """A calibration of the tower's shape with a power-law spectrum and a random KLT (speed tests only)."""
    import numpy as np

    from semcodec.layers.semantic.calibration import Calibration, _q8_log2
    from semcodec.layers.semantic.payload import DROP_RADIUS_MAX, NUM_PASSES

    rng = np.random.default_rng(seed)
    n, d = spec.num_tokens, spec.token_dim
    var = 50.0 / np.arange(1, d + 1) ** 1.1
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    ls = _q8_log2(var)
    return Calibration(
        model=spec.name, layer=spec.layer, preprocessing_id=spec.preprocessing_id, grid=spec.grid, token_dim=d,
        preprocessing=spec.preprocessing, input_size=spec.image_size,
        position_mean=np.zeros((n, d), np.float32), padding_mean=np.zeros((n, d), np.float32),
        mean=np.zeros(d, np.float32), klt=q.astype(np.float32), variances=var.astype(np.float32),
        log2_std_q=ls, log2_std_pad_q=ls - 16, log2_cstd_q=np.stack([ls] + [ls - 6] * (NUM_PASSES - 1)),
        alpha_q=np.array([[0] * d] + [[48] * d] * (NUM_PASSES - 1), np.int32),
        drop_alpha_q=np.full((DROP_RADIUS_MAX, d), 40, np.int32), family="laplace")


def speed_only(name: str, image: Path, budget: int) -> dict:
    """Decode-to-tokens time vs JPEG decode + tower for a tower without weights here.

    The tower runs with random weights (its cost does not depend on their values)
    and the stream uses a synthetic calibration of the right shape: only the
    times are meaningful, not token fidelity.
    """
    from semcodec.models.semantic import SemanticTower, _build_visual, semantic_spec

    spec = semantic_spec(name)
    tower = SemanticTower(spec, _build_visual(spec))
    cal = synthetic_calibration(spec)
    img = Image.open(image).convert("RGB")
    w, h = img.size
    tokens = cal.random_tokens(seed=1)
    stream = semantic_only_stream(tokens, cal, w, h, max_bytes=budget)
    data, _ = pil_at_budget(img, "jpeg", budget, spec.image_size)

    def jpeg_path():
        im = Image.open(io.BytesIO(data))
        im.load()
        return tower.tokens([im.convert("RGB")])

    return {"semcodec": timed(lambda: decode_tokens(stream, calibration=cal)),
            "jpeg+tower": timed(jpeg_path, repeat=2), "tower": float("nan"), "bytes": len(stream)}


def summarize(rows: list[dict], towers: list[str], budgets: list[int], codecs: list[str], timings: dict) -> str:
    out = []
    for name in towers:
        out.append(f"\n### {name}\n")
        out.append("| budget (B) | codec | mean bytes | token MSE | mean cosine | MSE ratio codec/semcodec |")
        out.append("|---:|---|---:|---:|---:|---:|")
        for budget in budgets:
            sel = [r for r in rows if r["tower"] == name and r["budget"] == budget]
            base = [r for r in sel if r["codec"] == "semcodec"]
            base_mse = statistics.mean(r["mse"] for r in base)
            for codec in ["semcodec", *codecs]:
                rs = [r for r in sel if r["codec"] == codec and r["bytes"] > 0]
                if not rs:
                    out.append(f"| {budget} | {codec} | - | does not fit | - | - |")
                    continue
                mse = statistics.mean(r["mse"] for r in rs)
                cos = statistics.mean(r["cosine"] for r in rs)
                nb = statistics.mean(r["bytes"] for r in rs)
                missing = len(sel) // (1 + len(codecs)) - len(rs)
                note = f" ({missing} images do not fit)" if missing else ""
                out.append(f"| {budget} | {codec} | {nb:.0f} | {mse:.4f} | {cos:.4f} | {mse / base_mse:.1f}x{note} |")
        t = timings[name]
        out.append(f"\nDecode to tokens ({name}, {t['tokens']:.0f} tokens, {t['budget']} B budget): semcodec stream "
                   f"{t['semcodec'] * 1e3:.2f} ms; JPEG decode + tower {t['jpeg+tower'] * 1e3:.1f} ms (tower forward "
                   f"alone {t['tower'] * 1e3:.1f} ms); speedup {t['jpeg+tower'] / t['semcodec']:.0f}x")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kodak", type=Path, default=ROOT.parent / "shared" / "data" / "kodak")
    ap.add_argument("--towers", nargs="*", default=None,
                    help="towers to measure (default: tiny and every registered tower with weights and calibration)")
    ap.add_argument("--budgets", type=int, nargs="*", default=[500, 1000, 2000, 4000])
    ap.add_argument("--codecs", nargs="*", default=list(PIL_CODECS))
    ap.add_argument("--limit", type=int, default=0, help="use the first N images only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = stable timings)")
    ap.add_argument("--random", nargs="*", default=[],
                    help="towers measured at full size with random weights, calibrated on --train (plumbing and "
                         "cost, not meaning): clip-l14-336 siglip-so400m-384 qwen2.5-vl-7b")
    ap.add_argument("--train", type=Path, default=ROOT.parent / "shared" / "data" / "train")
    ap.add_argument("--calib-images", type=int, default=8, help="training photos for a random tower's calibration")
    ap.add_argument("--speed-only", nargs="*", default=[],
                    help="towers without weights here whose decode speed is measured with random weights "
                         "and a synthetic calibration (times only)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-results" / "semantic_rd.csv")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    images = list_images(args.kodak)
    if args.limit:
        images = images[:args.limit]
    if not images:
        sys.exit(f"no Kodak images in {args.kodak}")
    towers = args.towers
    if towers is None:
        towers = [r["name"] for r in list_semantic_models()
                  if r["name"] == "tiny" or (r["weights_present"] and r["calibration_present"])]
    rows: list[dict] = []
    timings = {}
    t0 = time.time()
    for name in towers:
        timings[name] = run_tower(name, images, args.budgets, args.codecs, rows)
    for name in args.random:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="semcodec-rd-") as tmp:
            tower, cal = random_tower(name, Path(tmp), args.train, args.calib_images)
        label = f"{name} (random weights)"
        timings[label] = run_tower(label, images, args.budgets, args.codecs, rows, tower=tower, cal=cal)
        towers = [*towers, label]
        del tower
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"## semcodec layer 0 vs Pillow codecs on {len(images)} Kodak images "
          f"(token fidelity to the original image's tokens; {time.time() - t0:.0f} s)")
    print(summarize(rows, towers, args.budgets, args.codecs, timings))
    budget = min(args.budgets, key=lambda b: abs(b - 1000))
    for name in args.speed_only or []:
        if name in towers:
            continue
        t = speed_only(name, images[0], budget)
        print(f"\nDecode to tokens ({name}, random weights + synthetic calibration: times only, "
              f"{t['bytes']} B stream): semcodec {t['semcodec'] * 1e3:.2f} ms; JPEG decode + tower "
              f"{t['jpeg+tower'] * 1e3:.0f} ms; speedup {t['jpeg+tower'] / t['semcodec']:.0f}x")
    print(f"\nCSV: {args.out}")


if __name__ == "__main__":
    run_script(main)
