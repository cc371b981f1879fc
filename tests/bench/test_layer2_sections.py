"""The layer-2 sections of the benchmark (lossless, high-rate) on two small images with the test codec."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from helpers import csv_rows
from PIL import Image

import semcodec.bench.runner as runner_module
from semcodec.bench.baselines import (HIGH_RATE_SWEEPS, LosslessCodec, high_rate_baselines, jxl_quality_of_distance,
                                      lossless_codecs)
from semcodec.bench.metrics import mismatch
from semcodec.bench.report import Curve, high_rate_bd_table, high_rate_markdown, knob_text, write_report
from semcodec.bench.runner import (HIGH_RATE_BPPS, HIGH_RATE_QUALITIES, HIGH_RATE_QUICK_BPPS,
                                   HIGH_RATE_QUICK_QUALITIES, LOSSLESS_COLUMNS, BenchConfig, high_rate_settings,
                                   run_bench)
from semcodec.cli.bench import bench

BASELINES = "jpeg420,jpeg444,webp,avif,jxl"


def test_lossless_and_high_rate_sections_alone(runner, test_codec, small_images, tmp_path):
    """--sections lossless,high-rate --quick: only those sections' files, every number consistent (a few seconds)."""
    out = tmp_path / "out"
    result = runner.invoke(bench, [str(small_images), "-o", str(out), "--quick", "--model", test_codec,
                                   "--baselines", BASELINES, "--threads", "1", "--sections", "high-rate,lossless"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    written = {p.name for p in out.iterdir()}
    assert written == {"lossless.csv", "lossless_summary.csv", "lossless_bpp.png", "high_rate.csv",
                       "high_rate_summary.csv", "high_rate_bdrate.csv", "rd_high_rate.png", "results.md", "run.json"}

    # lossless: every codec on every image, bit-exact, bpp = its bytes; PNG's size is what Pillow writes
    rows = csv_rows(out / "lossless.csv")
    assert list(rows[0]) == list(LOSSLESS_COLUMNS)
    names = [c.name for c in lossless_codecs()]
    assert {"png", "webp-lossless-m4", "webp-lossless-m6", "jxl-lossless-e7"} <= set(names)
    assert {(r["image"], r["codec"]) for r in rows} == {(i, c) for i in ("a.png", "b.png")
                                                        for c in [test_codec] + names}
    for r in rows:
        assert r["exact"] == "yes" and not r["error"], r
        assert float(r["bpp"]) == pytest.approx(int(r["bytes"]) * 8 / (int(r["width"]) * int(r["height"])))
        assert float(r["enc_s"]) > 0 and float(r["dec_s"]) > 0
    png = next(r for r in rows if r["codec"] == "png" and r["image"] == "a.png")
    buf = io.BytesIO()
    Image.open(small_images / "a.png").convert("RGB").save(buf, format="PNG", optimize=True)
    assert int(png["bytes"]) == len(buf.getvalue())
    ours = next(r for r in rows if r["codec"] == test_codec and r["image"] == "b.png")
    from semcodec import api
    original = Image.open(small_images / "b.png").convert("RGB")
    data = api.compress(original, lossless=True, model=test_codec, semantic=False)
    assert int(ours["bytes"]) == len(data) and mismatch(np.asarray(original), api.decompress(data)) is None

    # high rate: semcodec's quick sweep (qualities into layer 2, bpp targets) and each baseline's high sweep
    high = csv_rows(out / "high_rate.csv")
    assert not [r for r in high if r["error"]]
    ours = {knob_text(r["setting"]) for r in high if r["codec"] == test_codec}
    assert ours == {f"quality {q}" for q in HIGH_RATE_QUICK_QUALITIES} | {f"bpp {b}" for b in HIGH_RATE_QUICK_BPPS}
    bpp7 = [r for r in high if r["codec"] == test_codec and knob_text(r["setting"]) == "bpp 7"]
    assert all(float(r["bpp"]) == pytest.approx(7, rel=0.02) for r in bpp7)          # the target is met
    q100 = [float(r["psnr"]) for r in high if r["codec"] == test_codec and knob_text(r["setting"]) == "quality 100"]
    q80 = [float(r["psnr"]) for r in high if r["codec"] == test_codec and knob_text(r["setting"]) == "quality 80"]
    assert min(q100) > max(q80) + 10                                                  # layer 2 adds fidelity
    for name in ("jpeg444", "webp", "avif", "avif444", "jxl"):
        params = sorted({float(r["param"]) for r in high if r["codec"] == name})
        assert params == sorted(float(v) for v in HIGH_RATE_SWEEPS[name][1]), name
    assert {knob_text(r["setting"]) for r in high if r["codec"] == "jxl"} == {"distance 1.5", "distance 0.5",
                                                                             "distance 0.18", "distance 0.11"}

    # BD-rates over 36–46 dB against every baseline, each over an interval inside that range
    bd = csv_rows(out / "high_rate_bdrate.csv")
    assert {r["anchor"] for r in bd} == {"jpeg420", "jpeg444", "webp", "avif", "avif444", "jxl"}
    for r in bd:
        if r["from_db"]:
            assert 36 <= float(r["from_db"]) < float(r["to_db"]) <= 46
            float(r["bd_rate_psnr"])
            reaches = float(r["anchor_psnr_max"]) >= 46
            assert reaches or "tops out" in r["note"]

    md = (out / "results.md").read_text()
    for part in ("## Lossless", "| image | " + test_codec, "**mean**", "## High rate",
                 "BD-rate of semcodec over 36–46 dB", "![high-rate PSNR vs bpp](rd_high_rate.png)",
                 "![lossless bpp](lossless_bpp.png)", "**Sections**: lossless, high-rate"):
        assert part in md, part
    assert "## Rate–distortion" not in md and "## Speed" not in md
    assert "## Lossless" in result.stdout and "BD-rate of semcodec over 36–46 dB" in result.stdout
    meta = json.loads((out / "run.json").read_text())
    assert meta["sections"] == ["lossless", "high-rate"]
    assert "--sections lossless,high-rate" in meta["command"]
    assert meta["lossless_codecs"][test_codec].startswith(test_codec)


def test_a_codec_that_is_not_exact_is_an_error(test_codec, small_images, tmp_path, monkeypatch):
    """A 'lossless' codec whose decode differs from the original: its rows are errors, out of the means."""
    def jpeg(image, threads):
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=95)
        return buf.getvalue()

    fake = LosslessCodec("fake-lossless", "JPEG q95 posing as lossless", jpeg,
                         lambda data: Image.open(io.BytesIO(data)).convert("RGB"))
    monkeypatch.setattr(runner_module, "lossless_codecs", lambda: [fake])
    images = sorted(small_images.glob("*.png"))
    config = BenchConfig(images=images, model=test_codec, semantic=None, baselines=["jpeg420"], threads=1,
                         sections=("lossless",))
    result = run_bench(config)
    assert result.sections == ("lossless",) and not result.rows and not result.high_rate and not result.speed
    bad = [r for r in result.lossless if r["codec"] == "fake-lossless"]
    assert len(bad) == 2 and all(r["exact"] == "no" and r["error"].startswith("not bit-exact: ") for r in bad)
    assert any("lossless: 2 of 4 measurements failed" in n for n in result.notes)
    meta = {"command": "x", "date": "d", "images_dir": str(small_images), "quick": False, "model": test_codec,
            "checkpoint": "c", "checkpoint_sha256": "0" * 64, "seed": 0, "speed_repeats": 1, "environment": {
                "hardware": {"cpu": "c", "usable_cpus": 1, "logical_cpus": 1, "memory_gib": 1, "gpu": "",
                             "load_average_at_start": [0.0]}, "threads": {"requested": 1}, "versions": {}}}
    out = write_report(result, tmp_path / "out", meta)
    fake_summary = next(s for s in out["lossless_summary"] if s["codec"] == "fake-lossless")
    assert fake_summary["n"] == 0 and fake_summary["errors"] == 2 and np.isnan(fake_summary["bpp"])
    assert "**Errors** (left out of the means)" in out["lossless_md"] and "fake-lossless on a.png" in out["lossless_md"]
    assert "| a.png | " in out["lossless_md"] and "| error |" in out["lossless_md"]


def test_mismatch():
    a = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert mismatch(a, a.copy()) is None
    assert mismatch(a, Image.fromarray(a)) is None
    b = a.copy()
    b[1, 2] = [0, 0, 0]
    assert mismatch(a, b) == "not bit-exact: 3 of 24 samples differ, by up to 20"
    assert "decoded 2x2, original 4x2" in mismatch(a, a[:, :2])
    gray = np.repeat(np.arange(8, dtype=np.uint8).reshape(2, 4, 1), 3, axis=2)
    assert mismatch(gray, Image.fromarray(gray[..., 0], "L")) is None       # a gray decode of a gray image is exact


def test_high_rate_sweeps_and_baselines():
    qualities = [s["quality"] for s in high_rate_settings("m") if "quality" in s]
    assert qualities == list(map(float, HIGH_RATE_QUALITIES))
    assert [s["bpp"] for s in high_rate_settings("m") if "bpp" in s] == list(map(float, HIGH_RATE_BPPS))
    assert jxl_quality_of_distance(1.0) == pytest.approx(90.0)
    assert jxl_quality_of_distance(0.11) == pytest.approx(99.8889, abs=1e-4)
    with pytest.raises(ValueError, match="distance"):
        jxl_quality_of_distance(0.1)                       # quality 100: libjxl refuses a lossy distance 0
    chosen, notes = high_rate_baselines(["avif", "compressai", "jxl"])
    assert [b.name for b in chosen] == ["avif", "jxl", "avif444"]
    assert next(b for b in chosen if b.name == "jxl").param == "distance"
    assert any("compressai" in n for n in notes)
    for b in chosen:
        assert b.sweep == HIGH_RATE_SWEEPS[b.name][0]
    with pytest.raises(ValueError, match="unknown"):
        high_rate_baselines(["gif"])


def test_high_rate_bd_table_says_where_a_curve_ends():
    rates = np.array([1.0, 2.0, 4.0, 8.0])

    def curve(name, psnr, family="pillow", scale=1.0):
        p = np.array(psnr, dtype=float)
        return Curve(name, name, family, rates * scale, p, np.full(4, np.nan))

    curves = {"ours": curve("ours", [34, 38, 42, 48], "semcodec", 0.8), "full": curve("full", [34, 38, 42, 48]),
              "short": curve("short", [34, 38, 40, 43]), "low": curve("low", [20, 24, 28, 32])}
    rows = {r["anchor"]: r for r in high_rate_bd_table(curves)}
    assert rows["full"]["bd_rate_psnr"] == pytest.approx(-20.0, abs=1e-9)
    assert (rows["full"]["from_db"], rows["full"]["to_db"], rows["full"]["note"]) == (36.0, 46.0, "")
    assert rows["short"]["to_db"] == 43.0 and rows["short"]["note"] == "short tops out at 43.00 dB"
    assert rows["low"]["bd_rate_psnr"] == "no overlap"


def test_high_rate_table_explains_an_infinite_mean():
    row = {"codec": "c", "setting": '{"bpp": 9.0}', "n": 2, "bpp": 9.0, "psnr": float("inf"), "ms_ssim": 1.0,
           "enc_s": 1.0, "dec_s": 1.0}
    text = high_rate_markdown([row])
    assert "| c | bpp 9 | 2 | 9.000 | ∞ |" in text and "decoded exactly" in text
    assert "decoded exactly" not in high_rate_markdown([row | {"psnr": 50.0}])


def test_cli_rejects_unknown_sections(runner, small_images):
    r = runner.invoke(bench, [str(small_images), "--sections", "lossless,fast"])
    assert r.exit_code == 2 and "unknown fast" in r.output and "high-rate" in r.output
