"""Turns a benchmark run into files: CSV, markdown tables, BD-rates, plots, ``results.md``, ``run.json``.

Files written to the output folder:

=====================  ================================================================
``measurements.csv``   one row per image and setting (:data:`~semcodec.bench.runner.COLUMNS`)
``speed.csv``          the speed section, one row per image and measurement
``summary.csv``        mean per setting (the summary table)
``bdrate.csv``         BD-rate / BD-PSNR of each semcodec curve against each other curve
``rd_psnr.png``        PSNR vs bpp (measured curves solid, published curves dashed)
``rd_msssim.png``      MS-SSIM (dB) vs bpp
``tokens_cos.png``     token cosine vs bytes per image
``decode_time.png``    decode time vs bpp
``results.md``         all tables and plots; what the README's results section is made of
``run.json``           command line, options, versions, hardware, seed, notes
=====================  ================================================================

A run writes the files of the sections it ran (``rd``: the measurements, summary, BD-rate
and plots above; ``speed``: ``speed.csv``); the layer-2 sections add:

==========================  ===========================================================
``lossless.csv``            one row per image and lossless codec (bytes, bpp, exact,
                            times, peak memory, error)
``lossless_summary.csv``    mean per lossless codec (over its bit-exact images)
``lossless_bpp.png``        mean bpp per lossless codec
``high_rate.csv``           the high-rate section's rows (columns of ``measurements.csv``)
``high_rate_summary.csv``   mean per high-rate setting
``high_rate_bdrate.csv``    BD-rate of semcodec over 36–46 dB (clipped to the overlap)
``rd_high_rate.png``        PSNR vs bpp from 30 to 50+ dB (lossless rates as lines)
==========================  ===========================================================

Curves are **means over images per setting** (mean bpp, mean per-image PSNR, …),
the way CompressAI publishes its Kodak results, so measured and published curves
are comparable; BD-rates are computed on these mean curves.

The README's results section is the part between ``<!-- semcodec-bench:begin -->``
and ``<!-- semcodec-bench:end -->``; :func:`update_readme` replaces it with
``results.md`` (links rewritten relative to the README, headings demoted).
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .bdrate import BDError, bd_psnr, bd_rate, quality_interval
from .metrics import ms_ssim_db
from .runner import COLUMNS, LOSSLESS_COLUMNS, SPEED_COLUMNS, BenchResult

__all__ = ["HIGH_RATE_BD_RANGE", "README_BEGIN", "README_END", "Curve", "bd_table", "curves_from_summary",
           "environment", "high_rate_bd_table", "knob_text", "load_published", "lossless_summary", "markdown_table",
           "run_metadata", "summarize", "update_readme", "write_csv", "write_report"]

README_BEGIN = "<!-- semcodec-bench:begin -->"
README_END = "<!-- semcodec-bench:end -->"
#: The published reference curves (CompressAI's models, VTM, BPG, AV1 on Kodak), shipped in the package with their
#: sources (``data/README.md``) so that an installed semcodec plots them too.
PUBLISHED_RD = Path(__file__).resolve().parent / "data" / "kodak_published_rd.csv"

#: PSNR range (dB) of the high-rate section's BD-rates; each is clipped to the part both curves reach.
HIGH_RATE_BD_RANGE = (36.0, 46.0)

_MEAN_FIELDS = ("bytes", "bpp", "psnr", "ms_ssim", "token_cos", "token_mse", "layer0_bytes", "layer0_cos",
                "layer0_mse", "enc_s", "dec_s", "tokens_dec_s")
_MAX_FIELDS = ("enc_peak_mib", "dec_peak_mib")


# --------------------------------------------------------------------------- tables


def write_csv(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> Path:
    """Writes ``rows`` (dicts) with the given columns; floats keep full precision."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                        for k, v in r.items()})
    return path


def _num(v) -> float:
    if v is None or v == "":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def summarize(rows: Iterable[dict]) -> list[dict]:
    """Mean per setting (codec, param) in first-seen order.

    Means are over the images whose measurement succeeded; peak memory is the
    maximum over images. ``n`` counts successful images, ``errors`` failed ones.
    """
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["codec"], _num(r["param"])), []).append(r)
    out = []
    for (codec, param), rs in groups.items():
        ok = [r for r in rs if not r.get("error")]
        s = {"codec": codec, "family": rs[0]["family"], "param": param, "setting": rs[0].get("setting", ""),
             "n": len(ok), "errors": len(rs) - len(ok)}
        for k in _MEAN_FIELDS:
            s[k] = _mean([_num(r[k]) for r in ok])
        for k in _MAX_FIELDS:
            vals = [_num(r[k]) for r in ok if not math.isnan(_num(r[k]))]
            s[k] = max(vals) if vals else math.nan
        out.append(s)
    return out


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, str):
        return v
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if isinstance(v, float) and v.is_integer() and digits == 0:
        return str(int(v))
    return f"{v:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one character per column (``l``/``r``), default left then right."""
    rows = [list(map(str, r)) for r in rows]
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _has(summary: list[dict], key: str) -> bool:
    return any(not math.isnan(s[key]) for s in summary)


def summary_markdown(summary: list[dict]) -> str:
    cols = [("codec", "codec", None), ("param", "quality", 0), ("n", "n", None), ("bpp", "bpp", 4),
            ("psnr", "PSNR (dB)", 2), ("ms_ssim", "MS-SSIM", 4)]
    if _has(summary, "token_cos"):
        cols += [("token_cos", "token cos", 4), ("token_mse", "token MSE", 4)]
    if _has(summary, "layer0_bytes"):
        cols += [("layer0_bytes", "layer-0 bytes", 0), ("layer0_cos", "layer-0 cos", 4)]
    cols += [("enc_s", "enc (ms)", "ms"), ("dec_s", "dec (ms)", "ms")]
    if _has(summary, "tokens_dec_s"):
        cols += [("tokens_dec_s", "tokens dec (ms)", "ms")]
    cols += [("enc_peak_mib", "enc peak (MiB)", 1), ("dec_peak_mib", "dec peak (MiB)", 1)]
    rows = []
    for s in summary:
        row = []
        for key, _, d in cols:
            v = s[key]
            if d == "ms":
                row.append(_fmt(v * 1000, 1))
            elif d is None:
                row.append(str(v))
            else:
                row.append(_fmt(float(v), d))
        rows.append(row)
    return markdown_table([c[1] for c in cols], rows)


# --------------------------------------------------------------------------- curves and BD-rates


@dataclass
class Curve:
    """A rate–distortion curve (one point per setting, means over images)."""

    name: str
    label: str
    family: str                       # semcodec | pillow | compressai | published
    bpp: np.ndarray
    psnr: np.ndarray
    ms_ssim: np.ndarray
    bytes: np.ndarray | None = None
    token_cos: np.ndarray | None = None
    layer0_bytes: np.ndarray | None = None
    layer0_cos: np.ndarray | None = None
    dec_ms: np.ndarray | None = None

    @property
    def published(self) -> bool:
        return self.family == "published"


def curves_from_summary(summary: list[dict], labels: dict[str, str] | None = None) -> dict[str, Curve]:
    """Measured curves by codec, points sorted by bpp."""
    labels = labels or {}
    by: dict[str, list[dict]] = {}
    for s in summary:
        if s["n"]:
            by.setdefault(s["codec"], []).append(s)
    out = {}
    for name, pts in by.items():
        pts = sorted(pts, key=lambda s: (math.isnan(s["bpp"]), s["bpp"]))
        col = lambda k: np.array([s[k] for s in pts], dtype=np.float64)   # noqa: E731
        out[name] = Curve(name, labels.get(name, name), pts[0]["family"], col("bpp"), col("psnr"), col("ms_ssim"),
                          col("bytes"), col("token_cos"), col("layer0_bytes"), col("layer0_cos"),
                          col("dec_s") * 1000)
    return out


def load_published(path: Path | None = PUBLISHED_RD) -> dict[str, Curve]:
    """Published reference curves (``codec,bpp,psnr_rgb,ms_ssim`` rows); {} when the file is absent."""
    if path is None or not Path(path).is_file():
        return {}
    by: dict[str, list[tuple[float, float, float]]] = {}
    with Path(path).open(newline="") as f:
        for r in csv.DictReader(f):
            by.setdefault(r["codec"], []).append((_num(r["bpp"]), _num(r["psnr_rgb"]), _num(r.get("ms_ssim"))))
    out = {}
    for name, pts in by.items():
        pts.sort()
        a = np.array(pts, dtype=np.float64)
        out[name] = Curve(f"{name} (published)", f"{name} (published)", "published", a[:, 0], a[:, 1], a[:, 2])
    return out


def _msssim_db(values: np.ndarray) -> np.ndarray:
    return np.array([ms_ssim_db(v) if not math.isnan(v) else math.nan for v in values])


def _safe(fn, *args) -> float | str:
    try:
        return fn(*args)
    except BDError as e:
        return "no overlap" if "overlap" in str(e) else "too few points"


def bd_table(curves: dict[str, Curve], published: dict[str, Curve] | None = None) -> list[dict]:
    """BD-rate (PSNR and MS-SSIM-dB) and BD-PSNR of every semcodec curve against every other curve.

    The other curve is the anchor: a negative BD-rate means semcodec needs fewer bits.
    """
    anchors = [c for c in curves.values() if c.family != "semcodec"] + list((published or {}).values())
    anchors = [c for c in curves.values() if c.family == "semcodec"] + anchors
    rows = []
    for test in (c for c in curves.values() if c.family == "semcodec"):
        for anchor in anchors:
            if anchor is test:
                continue
            rows.append({
                "test": test.name, "anchor": anchor.name, "anchor_kind": "published" if anchor.published else "measured",
                "bd_rate_psnr": _safe(bd_rate, anchor.bpp, anchor.psnr, test.bpp, test.psnr),
                "bd_psnr_db": _safe(bd_psnr, anchor.bpp, anchor.psnr, test.bpp, test.psnr),
                "bd_rate_msssim": _safe(bd_rate, anchor.bpp, _msssim_db(anchor.ms_ssim), test.bpp,
                                        _msssim_db(test.ms_ssim)),
            })
    return rows


def bd_markdown(rows: list[dict]) -> str:
    def pct(v):
        return v if isinstance(v, str) else f"{v:+.1f} %"

    def db(v):
        return v if isinstance(v, str) else f"{v:+.2f}"

    return markdown_table(
        ["semcodec curve", "anchor", "", "BD-rate (PSNR)", "BD-PSNR (dB)", "BD-rate (MS-SSIM dB)"],
        [[r["test"], r["anchor"], r["anchor_kind"], pct(r["bd_rate_psnr"]), db(r["bd_psnr_db"]),
          pct(r["bd_rate_msssim"])] for r in rows], align="lllrrr")


# --------------------------------------------------------------------------- speed


def speed_markdown(speed: list[dict]) -> str:
    """Per-image times of the speed section, and the mean throughput of each measurement."""
    if not speed:
        return "_no speed measurements_"
    whats = list(dict.fromkeys((r["what"], r["device"]) for r in speed))
    images = list(dict.fromkeys(r["image"] for r in speed))
    cell = {(r["image"], r["what"], r["device"]): r for r in speed}
    headers = ["image", "size"] + [f"{w} [{d}] (ms)" for w, d in whats]
    rows = []
    for im in images:
        first = next(r for r in speed if r["image"] == im)
        row = [im, f"{first['width']}×{first['height']}"]
        for w, d in whats:
            r = cell.get((im, w, d))
            row.append(_fmt(_num(r["median_s"]) * 1000, 1) if r else "–")
        rows.append(row)
    mean_row = ["**mean**", ""]
    thr_row = ["**MPix/s**", ""]
    for w, d in whats:
        rs = [cell[(im, w, d)] for im in images if (im, w, d) in cell]
        mean_row.append(_fmt(_mean([_num(r["median_s"]) * 1000 for r in rs]), 1))
        thr_row.append(_fmt(_mean([_num(r["mpix_per_s"]) for r in rs]), 2))
    notes = sorted({r["note"] for r in speed if r.get("note")})
    text = markdown_table(headers, rows + [mean_row, thr_row])
    if notes:
        text += "\n\n" + "\n".join(f"- tokens-only stream: {n}" for n in notes)
    return text


# --------------------------------------------------------------------------- lossless and high-rate sections


def lossless_summary(rows: Iterable[dict]) -> list[dict]:
    """Mean per lossless codec, in first-seen order, over the images it coded bit-exactly.

    ``n`` counts those images, ``errors`` the others (failed or not exact); peak memory is the maximum.
    """
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["codec"], []).append(r)
    out = []
    for codec, rs in groups.items():
        ok = [r for r in rs if not r.get("error") and r.get("exact") == "yes"]
        s = {"codec": codec, "family": rs[0]["family"], "n": len(ok), "errors": len(rs) - len(ok)}
        for k in ("bytes", "bpp", "enc_s", "dec_s"):
            s[k] = _mean([_num(r[k]) for r in ok])
        for k in ("enc_peak_mib", "dec_peak_mib"):
            vals = [_num(r[k]) for r in ok if not math.isnan(_num(r[k]))]
            s[k] = max(vals) if vals else math.nan
        out.append(s)
    return out


def lossless_markdown(rows: list[dict], summary: list[dict], labels: dict[str, str]) -> str:
    """The lossless section: bpp per image and codec, then the mean per codec with times and exactness.

    A cell of an image that a codec did not code bit-exactly reads ``error``; its reason is listed below.
    """
    codecs = [s["codec"] for s in summary]
    images = list(dict.fromkeys(r["image"] for r in rows))
    cell = {(r["image"], r["codec"]): r for r in rows}

    def bpp(r):
        return "error" if r.get("error") or r.get("exact") != "yes" else _fmt(_num(r["bpp"]), 3)

    per_image = [[im] + [bpp(cell[(im, c)]) if (im, c) in cell else "–" for c in codecs] for im in images]
    per_image.append(["**mean**"] + [_fmt(s["bpp"], 3) for s in summary])
    ours = next((s for s in summary if s["family"] == "semcodec"), None)
    per_codec = []
    for s in summary:
        versus = ("–" if ours is None or s is ours or not s["bpp"] > 0
                  else f"{(ours['bpp'] / s['bpp'] - 1) * 100:+.1f} %")
        per_codec.append([s["codec"], labels.get(s["codec"], s["codec"]), f"{s['n']}/{s['n'] + s['errors']}",
                          _fmt(s["bpp"], 3), versus, _fmt(s["enc_s"] * 1000, 1), _fmt(s["dec_s"] * 1000, 1),
                          _fmt(s["enc_peak_mib"], 1), _fmt(s["dec_peak_mib"], 1)])
    text = (markdown_table(["image"] + codecs, per_image) + "\n\n"
            + markdown_table(["codec", "what", "bit-exact", "mean bpp", "semcodec vs it", "enc (ms)", "dec (ms)",
                              "enc peak (MiB)", "dec peak (MiB)"], per_codec, align="llrrrrrrr"))
    errors = [f"- {r['codec']} on {r['image']}: {r['error']}" for r in rows if r.get("error")]
    if errors:
        text += "\n\n**Errors** (left out of the means):\n\n" + "\n".join(errors)
    return text


def knob_text(setting_json: str) -> str:
    """A setting's rate knob for tables: ``quality 94``, ``bpp 7``, ``distance 0.25``, ``lossless``."""
    try:
        kw = json.loads(setting_json) if setting_json else {}
    except (TypeError, ValueError):
        return str(setting_json)
    for key in ("quality", "bpp", "size", "distance"):
        if kw.get(key) is not None:
            v = float(kw[key])
            return f"{key} {int(v) if v.is_integer() else f'{v:g}'}"
    return "lossless" if kw.get("lossless") else "–"


def high_rate_markdown(summary: list[dict]) -> str:
    """Mean per setting of the high-rate section (rate knob, bpp, PSNR, MS-SSIM, times)."""
    rows = [[s["codec"], knob_text(s.get("setting", "")), str(s["n"]), _fmt(s["bpp"], 3), _fmt(s["psnr"], 2),
             _fmt(s["ms_ssim"], 5), _fmt(s["enc_s"] * 1000, 1), _fmt(s["dec_s"] * 1000, 1)] for s in summary]
    text = markdown_table(["codec", "setting", "n", "bpp", "PSNR (dB)", "MS-SSIM", "enc (ms)", "dec (ms)"], rows,
                          align="llrrrrrr")
    if any(math.isinf(s["psnr"]) for s in summary):
        text += "\n\nA PSNR of ∞: at least one image of that setting decoded exactly (its mean is not finite)."
    return text


def high_rate_bd_table(curves: dict[str, Curve], quality_range: tuple[float, float] = HIGH_RATE_BD_RANGE
                       ) -> list[dict]:
    """BD-rate (PSNR) of every semcodec curve against every other measured curve over ``quality_range``,
    clipped to the PSNR both curves reach; each row says which interval it covers and why it is shorter."""
    lo_want, hi_want = quality_range
    rows = []
    for test in (c for c in curves.values() if c.family == "semcodec"):
        for anchor in curves.values():
            if anchor is test:
                continue
            row = {"test": test.name, "anchor": anchor.name,
                   "anchor_psnr_min": float(np.nanmin(anchor.psnr)), "anchor_psnr_max": float(np.nanmax(anchor.psnr)),
                   "from_db": math.nan, "to_db": math.nan, "bd_rate_psnr": "", "note": ""}
            try:
                lo, hi = quality_interval(anchor.psnr, test.psnr, quality_range)
                row.update(from_db=lo, to_db=hi,
                           bd_rate_psnr=bd_rate(anchor.bpp, anchor.psnr, test.bpp, test.psnr, quality_range))
            except BDError as e:
                row["bd_rate_psnr"] = "no overlap" if "overlap" in str(e) else "too few points"
                rows.append(row)
                continue
            why = []
            for c, who in ((anchor, anchor.name), (test, test.name)):
                top, bottom = float(np.nanmax(c.psnr)), float(np.nanmin(c.psnr))
                if top < hi_want:
                    why.append(f"{who} tops out at {top:.2f} dB")
                if bottom > lo_want:
                    why.append(f"{who} starts at {bottom:.2f} dB")
            row["note"] = "; ".join(why)
            rows.append(row)
    return rows


def high_rate_bd_markdown(rows: list[dict]) -> str:
    def pct(v):
        return v if isinstance(v, str) else f"{v:+.1f} %"

    return markdown_table(
        ["semcodec curve", "anchor", "anchor reaches (dB)", "BD-rate over (dB)", "BD-rate (PSNR)", "note"],
        [[r["test"], r["anchor"], f"{r['anchor_psnr_min']:.2f}–{r['anchor_psnr_max']:.2f}",
          "–" if math.isnan(r["from_db"]) else f"{r['from_db']:.2f}–{r['to_db']:.2f}", pct(r["bd_rate_psnr"]),
          r["note"]] for r in rows], align="llrrrl")


# --------------------------------------------------------------------------- plots


def _style(curve: Curve, index: int) -> dict:
    import matplotlib.pyplot as plt

    if curve.published:   # light tab20 colours, dashed, thin: reference, not measured here
        return dict(color=plt.get_cmap("tab20")((2 * index + 1) % 20), linestyle="--",
                    marker="v^<>dph*x+"[index % 10], markersize=4, linewidth=1.1)
    if curve.family == "semcodec":
        return dict(color=plt.get_cmap("Dark2")(index % 8), linestyle="-", marker="o", linewidth=2.4, zorder=5)
    return dict(color=plt.get_cmap("tab10")(index % 10), linestyle="-", marker="s", markersize=4, linewidth=1.5)


def _styled(curves: Iterable[Curve]) -> list[tuple[Curve, dict]]:
    counters: dict[str, int] = {}
    out = []
    for c in curves:
        key = "published" if c.published else ("semcodec" if c.family == "semcodec" else "measured")
        out.append((c, _style(c, counters.get(key, 0))))
        counters[key] = counters.get(key, 0) + 1
    return out


def _finish(fig, ax, path: Path, title: str) -> Path:
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def plot_all(outdir: Path, curves: dict[str, Curve], published: dict[str, Curve], subtitle: str) -> list[Path]:
    """The four plots; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = list(curves.values())
    every = _styled(measured + list(published.values()))
    top = max([float(np.nanmax(c.bpp)) for c in measured if c.bpp.size] + [0.5])
    xmax = min(top, 2.5) * 1.05
    paths = []

    fig, ax = plt.subplots(figsize=(10, 5.2))
    for c, st in every:
        ax.plot(c.bpp, c.psnr, label=c.label, **st)
    ax.set_xlim(0, xmax)
    ax.set_xlabel("rate (bits per pixel)")
    ax.set_ylabel("PSNR, RGB (dB)")
    paths.append(_finish(fig, ax, outdir / "rd_psnr.png", f"PSNR vs rate — {subtitle}"))

    fig, ax = plt.subplots(figsize=(10, 5.2))
    for c, st in every:
        ax.plot(c.bpp, _msssim_db(c.ms_ssim), label=c.label, **st)
    ax.set_xlim(0, xmax)
    ax.set_xlabel("rate (bits per pixel)")
    ax.set_ylabel("MS-SSIM (dB) = −10·log10(1 − MS-SSIM)")
    paths.append(_finish(fig, ax, outdir / "rd_msssim.png", f"MS-SSIM vs rate — {subtitle}"))

    fig, ax = plt.subplots(figsize=(10, 5.2))
    for c, st in _styled(measured):
        if c.token_cos is not None and np.isfinite(c.token_cos).any():
            ax.plot(c.bytes, c.token_cos, label=f"{c.label}: tower on decoded pixels", **st)
        if c.layer0_cos is not None and np.isfinite(c.layer0_cos).any():
            ax.plot(c.layer0_bytes, c.layer0_cos, label=f"{c.label}: layer-0 tokens (at layer-0 bytes)",
                    **(st | {"linestyle": ":", "marker": "D"}))
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (whole stream; layer-0 points: layer-0 payload only), log scale")
    ax.set_ylabel("token cosine similarity to the original's tokens")
    paths.append(_finish(fig, ax, outdir / "tokens_cos.png", f"Token fidelity vs size — {subtitle}"))

    fig, ax = plt.subplots(figsize=(10, 5.2))
    for c, st in _styled(measured):
        ax.plot(c.bpp, c.dec_ms, label=c.label, **st)
    ax.set_yscale("log")
    ax.set_xlabel("rate (bits per pixel)")
    ax.set_ylabel("decode time per image (ms, log scale)")
    paths.append(_finish(fig, ax, outdir / "decode_time.png", f"Decode time vs rate — {subtitle}"))
    return paths


def plot_high_rate(outdir: Path, curves: dict[str, Curve], lossless: list[dict], subtitle: str) -> Path:
    """PSNR vs bpp of the high-rate section, the BD-rate range shaded, each lossless codec's mean bpp as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.2))
    ax.axhspan(*HIGH_RATE_BD_RANGE, color="0.5", alpha=0.08, label=f"BD-rate range {HIGH_RATE_BD_RANGE[0]:g}–"
               f"{HIGH_RATE_BD_RANGE[1]:g} dB")
    for c, st in _styled(curves.values()):
        ax.plot(c.bpp, c.psnr, label=c.label, **st)
    dashes = [(1, 1.5), (4, 2), (6, 2, 1, 2), (2, 3), (8, 3)]
    for i, s in enumerate(x for x in lossless if x["bpp"] > 0):
        ours = s["family"] == "semcodec"
        ax.axvline(s["bpp"], color=plt.get_cmap("Dark2")(0) if ours else "0.45", dashes=dashes[i % len(dashes)],
                   linewidth=1.6 if ours else 1.0, label=f"lossless: {s['codec']} {s['bpp']:.2f} bpp")
    ax.set_ylim(28, 56)
    ax.set_xlabel("rate (bits per pixel)")
    ax.set_ylabel("PSNR, RGB (dB)")
    return _finish(fig, ax, outdir / "rd_high_rate.png", f"High rate: PSNR vs rate — {subtitle}")


def plot_lossless(outdir: Path, summary: list[dict], subtitle: str) -> Path:
    """Mean bpp per lossless codec (bit-exact images only), as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.2))
    names = [s["codec"] for s in summary]
    colors = [plt.get_cmap("Dark2")(0) if s["family"] == "semcodec" else plt.get_cmap("tab10")(7) for s in summary]
    bars = ax.bar(names, [s["bpp"] for s in summary], color=colors)
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_ylabel("mean bits per pixel (bit-exact images)")
    ax.set_title(f"Lossless — {subtitle}", fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
    fig.tight_layout()
    path = outdir / "lossless_bpp.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- environment and run.json


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return math.nan


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head + ("+dirty" if head and dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


_LIB_NAMES = {"jpeg": "libjpeg-turbo", "webp": "libwebp", "avif": "libavif", "jxl": "pillow-jxl-plugin"}


def environment(threads: int) -> dict:
    """Versions and hardware, for ``run.json``."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from ..version import __version__
    from .baselines import _versions

    def v(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return ""

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return {
        "versions": {"semcodec": __version__, "python": platform.python_version(), "torch": torch.__version__,
                     "numpy": np.__version__, **{_LIB_NAMES.get(k, k): val
                                                 for k, val in _versions().items()},
                     "compressai": v("compressai"), "pytorch-msssim": v("pytorch-msssim"), "scipy": v("scipy"),
                     "matplotlib": v("matplotlib"), "open_clip_torch": v("open_clip_torch"),
                     "constriction": v("constriction")},
        "hardware": {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(),
                     "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                     "memory_gib": _mem_total_gib(), "gpu": gpu, "platform": platform.platform(),
                     "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else []},
        "threads": {"requested": threads, "torch_intra_op": threads, "torch_inter_op": torch.get_num_interop_threads()},
        "git_commit": _git_commit(),
    }


def run_metadata(config, images_dir: Path, command: str) -> dict:
    """What ``run.json`` records about a run: command, options, model checkpoint, environment, seed."""
    from ..fsutil import file_digest
    from ..models.registry import require_checkpoint

    ckpt = require_checkpoint(config.model)
    names = {p.name for p in config.images}
    return {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "images_dir": str(images_dir),
        "images": [p.name for p in config.images],
        "full_kodak": len(names) == 24 and all(n.startswith("kodim") for n in names),
        "quick": config.quick,
        "model": config.model,
        "checkpoint": str(ckpt),
        "checkpoint_sha256": file_digest(ckpt).hex(),
        "semantic": config.semantic or "",
        "baselines": list(config.baselines),
        "settings": config.settings,
        "seed": config.seed,
        "speed_images": config.speed_images,
        "speed_repeats": config.speed_repeats,
        "environment": environment(config.threads),
    }


# --------------------------------------------------------------------------- results.md, README


def _hardware_line(env: dict) -> str:
    h = env["hardware"]
    gpu = f", GPU {h['gpu']}" if h.get("gpu") else ", no GPU"
    return (f"{h['cpu']}, {h['usable_cpus']} usable of {h['logical_cpus']} logical CPUs, {h['memory_gib']} GiB"
            f"{gpu}; {env['threads']['requested']} thread(s); load average at start "
            f"{', '.join(f'{x:.2f}' for x in h['load_average_at_start'])}")


def _images_measured(result: BenchResult) -> int:
    return len({r["image"] for r in result.rows + result.high_rate + result.lossless})


def results_markdown(result: BenchResult, meta: dict, summary: list[dict], bd_rows: list[dict],
                     plots: list[Path], layer2: list[str] | None = None) -> str:
    """``results.md``: the run's description, then the sections it ran (``layer2``: the markdown of the
    lossless and high-rate sections, already made)."""
    env = meta["environment"]
    n_images = _images_measured(result)
    lines = [
        "# semcodec benchmark results",
        "",
        f"<!-- generated by `semcodec bench` on {meta['date']}; do not edit: rerun the benchmark -->",
        "",
        f"- **Command**: `{meta['command']}`",
        f"- **Images**: {n_images} from `{meta['images_dir']}`" + (" (`--quick` subset)" if meta["quick"] else ""),
        f"- **Codec model**: `{meta['model']}` (checkpoint `{meta['checkpoint']}`, sha256 {meta['checkpoint_sha256'][:16]}…)",
        f"- **Semantic tower** (token fidelity): {result.tower or 'none'}",
        f"- **Hardware**: {_hardware_line(env)}",
        f"- **Versions**: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"- **Run time**: {result.seconds / 60:.1f} min; peak memory method: {result.memory_method}; seed {meta['seed']}",
        f"- **Sections**: {', '.join(result.sections)}",
        "",
    ]
    if "rd" in result.sections:
        lines += _rd_markdown(result, meta, summary, bd_rows)
    if "speed" in result.sections:
        lines += [
            "## Speed (default model, quality 75)",
            "",
            f"Median of {meta['speed_repeats']} runs per image, wall clock, {env['threads']['requested']} thread(s). "
            "The machine may be shared: compare codecs within one run, not across runs.",
            "",
            speed_markdown(result.speed),
            "",
        ]
    lines += layer2 or []
    if plots:
        lines += ["## Plots", ""]
        titles = {"rd_psnr.png": "PSNR vs bpp", "rd_msssim.png": "MS-SSIM vs bpp",
                  "tokens_cos.png": "token cosine vs bytes", "decode_time.png": "decode time vs bpp"}
        lines += [f"![{titles.get(p.name, p.stem)}]({p.name})" for p in plots]
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def _rd_markdown(result: BenchResult, meta: dict, summary: list[dict], bd_rows: list[dict]) -> list[str]:
    return [
        "## Rate–distortion and fidelity (mean over images per setting)",
        "",
        summary_markdown(summary),
        "",
        "Curves: " + "; ".join(f"`{k}` = {v}" if v != k else f"`{k}`" for k, v in result.labels.items()) + ".",
        "",
        "## BD-rate of semcodec (Bjøntegaard, PCHIP, on the mean curves)",
        "",
        "Negative BD-rate: semcodec needs that many percent fewer bits than the anchor for the same quality; "
        "positive BD-PSNR: semcodec is that many dB better at the same rate. Published anchors are the "
        "CompressAI-reported Kodak means (not measured here)"
        + ("" if meta.get("full_kodak") else "; this run did not use all 24 Kodak images, so comparisons with "
           "them are indicative only") + ".",
        "",
        bd_markdown(bd_rows) if bd_rows else "_no BD-rates (no semcodec curve or no anchor)_",
        "",
    ]


def _lossless_section(result: BenchResult, outdir: Path, subtitle: str) -> tuple[list[Path], list[str], dict]:
    """Files and markdown lines of the lossless section."""
    summary = lossless_summary(result.lossless)
    files = [write_csv(outdir / "lossless.csv", result.lossless, LOSSLESS_COLUMNS),
             write_csv(outdir / "lossless_summary.csv", summary, list(summary[0]) if summary else ["codec"])]
    md = lossless_markdown(result.lossless, summary, result.lossless_labels) if summary else "_no lossless codec ran_"
    lines = ["## Lossless (layer 2 at step 1)", "",
             "Bits per pixel of each image, every decode compared with the original 8-bit pixels: a decode that "
             "is not bit-exact is an error, left out of the means. Times are wall clock per image (encode: "
             "`compress_image` / `Image.save`; decode: `decompress` / `Image.open` + `load`).", "", md, ""]
    if summary:
        files.append(plot_lossless(outdir, summary, subtitle))
        lines += [f"![lossless bpp]({files[-1].name})", ""]
    return files, lines, {"lossless_summary": summary, "lossless_md": md}


def _high_rate_section(result: BenchResult, outdir: Path, subtitle: str, lossless: list[dict]
                       ) -> tuple[list[Path], list[str], dict]:
    """Files and markdown lines of the high-rate section."""
    summary = summarize(result.high_rate)
    curves = curves_from_summary(summary, result.high_rate_labels)
    bd_rows = high_rate_bd_table(curves)
    files = [write_csv(outdir / "high_rate.csv", result.high_rate, COLUMNS),
             write_csv(outdir / "high_rate_summary.csv", summary, list(summary[0]) if summary else ["codec"]),
             write_csv(outdir / "high_rate_bdrate.csv", bd_rows,
                       ["test", "anchor", "anchor_psnr_min", "anchor_psnr_max", "from_db", "to_db", "bd_rate_psnr",
                        "note"])]
    md = high_rate_markdown(summary) if summary else "_no high-rate measurements_"
    bd_md = high_rate_bd_markdown(bd_rows) if bd_rows else "_no BD-rates (no semcodec curve or no anchor)_"
    lo, hi = HIGH_RATE_BD_RANGE
    lines = ["## High rate (layer 2: quality above 90, bpp targets above quality 100's rate)", "",
             "Mean over images per setting.", "", md, "",
             "Curves: " + "; ".join(f"`{k}` = {v}" if v != k else f"`{k}`"
                                    for k, v in result.high_rate_labels.items()) + ".", "",
             f"### BD-rate of semcodec over {lo:g}–{hi:g} dB (PSNR)", "",
             f"Bjøntegaard delta rate (PCHIP, on the mean curves) integrated over {lo:g}–{hi:g} dB, clipped to the "
             "PSNR both curves reach (never extrapolated); the interval actually used and why it is shorter are in "
             "each row. Negative: semcodec needs that many percent fewer bits for the same PSNR.", "", bd_md, ""]
    if curves:
        files.append(plot_high_rate(outdir, curves, lossless, subtitle))
        lines += [f"![high-rate PSNR vs bpp]({files[-1].name})", ""]
    return files, lines, {"high_rate_summary": summary, "high_rate_bd": bd_rows, "high_rate_md": md,
                          "high_rate_bd_md": bd_md}


def results_section(readme: Path) -> tuple[str, int, int]:
    """The README's text and the offsets of :data:`README_BEGIN` and :data:`README_END` in it
    (checked before a benchmark runs, so that a README without them fails at once, not after the run).

    Raises:
        ValueError: the README lacks the markers or cannot be read.
    """
    try:
        text = Path(readme).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {readme}: {e}") from None
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"{readme} has no results section; add the lines {README_BEGIN} and {README_END} "
                         "where the results should go")
    return text, begin, end


def update_readme(readme: Path, outdir: Path) -> Path:
    """Replaces the README's results section with ``outdir/results.md``.

    The section lies between :data:`README_BEGIN` and :data:`README_END`; image
    links are rewritten relative to the README and headings are demoted one level.

    Raises:
        FileNotFoundError: no ``results.md`` in ``outdir``.
        ValueError: the README lacks the markers or cannot be read.
    """
    readme, outdir = Path(readme), Path(outdir)
    text, begin, end = results_section(readme)
    results = (outdir / "results.md").read_text()
    rel = Path(os.path.relpath(outdir.resolve(), readme.resolve().parent))
    results = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", lambda m: f"![{m[1]}]({(rel / m[2]).as_posix()})", results)
    results = re.sub(r"^(#+) ", lambda m: "#" + m[1] + " ", results, flags=re.M)
    new = text[:begin + len(README_BEGIN)] + "\n" + results.strip() + "\n" + text[end:]
    readme.write_text(new)
    return readme


def write_report(result: BenchResult, outdir: Path, meta: dict, published_path: Path | None = PUBLISHED_RD) -> dict:
    """Writes the output files of the sections that ran; returns ``{"summary", "bd", "files", "markdown",
    "summary_md", "bd_md"}`` plus, for the layer-2 sections, their summaries and markdown (``lossless_md``,
    ``high_rate_md``, ``high_rate_bd_md``, …)."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    n_images = _images_measured(result)
    subtitle = f"{n_images} image{'s' if n_images != 1 else ''}" + (f", tower {result.tower}" if result.tower else "")
    files: list[Path] = []
    summary, bd_rows, plots, published = [], [], [], {}
    if "rd" in result.sections:
        files.append(write_csv(outdir / "measurements.csv", result.rows, COLUMNS))
        summary = summarize(result.rows)
        files.append(write_csv(outdir / "summary.csv", summary, list(summary[0]) if summary else ["codec"]))
        curves = curves_from_summary(summary, result.labels)
        published = load_published(published_path)
        bd_rows = bd_table(curves, published)
        files.append(write_csv(outdir / "bdrate.csv", bd_rows,
                               ["test", "anchor", "anchor_kind", "bd_rate_psnr", "bd_psnr_db", "bd_rate_msssim"]))
        plots = plot_all(outdir, curves, published, subtitle)
        files += plots
    if "speed" in result.sections:
        files.append(write_csv(outdir / "speed.csv", result.speed, SPEED_COLUMNS))
    layer2, extra = [], {}
    if "lossless" in result.sections:
        more, lines, extra_l = _lossless_section(result, outdir, subtitle)
        files, layer2, extra = files + more, layer2 + lines, extra | extra_l
    if "high-rate" in result.sections:
        more, lines, extra_h = _high_rate_section(result, outdir, subtitle, extra.get("lossless_summary", []))
        files, layer2, extra = files + more, layer2 + lines, extra | extra_h
    meta = dict(meta)
    meta.setdefault("date", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    meta["published_reference"] = str(published_path) if published else ""
    meta["memory_method"] = result.memory_method
    meta["duration_s"] = round(result.seconds, 1)
    meta["sections"] = list(result.sections)
    meta["notes"] = result.notes
    meta["curves"] = result.labels
    if result.high_rate_labels:
        meta["high_rate_curves"] = result.high_rate_labels
    if result.lossless_labels:
        meta["lossless_codecs"] = result.lossless_labels
    md = results_markdown(result, meta, summary, bd_rows, plots, layer2)
    (outdir / "results.md").write_text(md)
    files.append(outdir / "results.md")
    (outdir / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    files.append(outdir / "run.json")
    return {"summary": summary, "bd": bd_rows, "files": files, "markdown": md,
            "summary_md": summary_markdown(summary) if summary else "",
            "bd_md": bd_markdown(bd_rows) if bd_rows else "", **extra}
