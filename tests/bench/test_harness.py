"""The benchmark harness end to end on two small images with the test codec, and its parts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from helpers import SAMPLE, csv_rows
from PIL import Image

from semcodec.bench.baselines import compressai_weights, pillow_baselines, select_baselines
from semcodec.bench.metrics import psnr
from semcodec.bench.report import README_BEGIN, README_END, load_published, summarize, update_readme
from semcodec.bench.runner import COLUMNS, PeakMemory, curve_name, list_images, run_script, unsupported_keywords
from semcodec.errors import InvalidInputError
from semcodec.cli.bench import bench

BASELINES = "jpeg420,jpeg444,webp,avif,jxl"


def test_bench_end_to_end(runner, test_codec, small_images, tmp_path):
    """One --quick run over the two images (a few seconds), then every output is checked."""
    out = tmp_path / "out"
    result = runner.invoke(bench, [str(small_images), "-o", str(out), "--quick", "--model", test_codec,
                                   "--baselines", BASELINES, "--speed-images", "1", "--speed-repeats", "1",
                                   "--threads", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    _check_outputs(result, out, small_images, test_codec)
    _check_semantic_curve(out, test_codec)
    _check_summary_and_readme(out, tmp_path)


def _check_outputs(result, out, images, test_codec):
    for name in ("measurements.csv", "summary.csv", "bdrate.csv", "speed.csv", "results.md", "run.json",
                 "rd_psnr.png", "rd_msssim.png", "tokens_cos.png", "decode_time.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("rd_psnr.png", "rd_msssim.png", "tokens_cos.png", "decode_time.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width >= 800

    # every image × setting, all columns, no failures, consistent numbers
    rows = csv_rows(out / "measurements.csv")
    assert list(rows[0]) == list(COLUMNS)
    codecs = {r["codec"] for r in rows}
    assert {"jpeg420", "jpeg444", "webp", "avif", "jxl", test_codec} <= codecs
    assert {r["image"] for r in rows} == {"a.png", "b.png"}
    assert len(rows) == 2 * len({(r["codec"], r["param"]) for r in rows})
    assert not [r for r in rows if r["error"]]
    for r in rows:
        assert float(r["bpp"]) == pytest.approx(int(r["bytes"]) * 8 / (int(r["width"]) * int(r["height"])))
        assert math.isfinite(float(r["psnr"])) and 0 < float(r["ms_ssim"]) <= 1
        assert -1 <= float(r["token_cos"]) <= 1 and float(r["token_mse"]) >= 0
        assert float(r["enc_s"]) > 0 and float(r["dec_s"]) > 0 and float(r["dec_peak_mib"]) >= 0

    # the stored PSNR is the PSNR of the decoded image (JPEG is deterministic)
    row = next(r for r in rows if r["codec"] == "jpeg420" and r["image"] == "a.png" and float(r["param"]) == 60)
    original = Image.open(images / "a.png").convert("RGB")
    jpeg = pillow_baselines()["jpeg420"]
    data = jpeg.encode(original, 60)
    assert len(data) == int(row["bytes"])
    assert float(row["psnr"]) == pytest.approx(psnr(np.asarray(original), jpeg.decode(data, 60)), abs=1e-9)

    # markdown: summary table, BD-rate table, speed section, plots; stdout has the tables too
    md = (out / "results.md").read_text()
    for part in ("## Rate–distortion", "| codec | quality |", "## BD-rate", "| semcodec curve | anchor |",
                 "## Speed", "decode pixels + tower", "![PSNR vs bpp](rd_psnr.png)", "NOT semantic"):
        assert part in md, part
    assert "| codec | quality |" in result.stdout and "jpeg420" in result.stdout

    # BD rows: the semcodec curve against every measured baseline (and the published curves when present)
    bd = csv_rows(out / "bdrate.csv")
    anchors = {r["anchor"] for r in bd if r["test"] == test_codec}
    assert {"jpeg420", "jpeg444", "webp", "avif", "jxl"} <= anchors
    if load_published():
        assert any(r["anchor_kind"] == "published" and r["anchor"].endswith("(published)") for r in bd)

    # speed section: the default model's encode/decode, pixels + tower, tokens-only (or why not)
    speed = csv_rows(out / "speed.csv")
    whats = {r["what"] for r in speed}
    assert {"encode (q=75)", "decode pixels", "decode pixels + tower (tiny)", "decode tokens (layer 0 only)"} <= whats
    assert all(r["threads"] == "1" for r in speed)

    # reproducibility record
    meta = json.loads((out / "run.json").read_text())
    assert meta["command"].startswith("semcodec bench ") and "--quick" in meta["command"]
    assert meta["seed"] == 0 and meta["model"] == test_codec and len(meta["checkpoint_sha256"]) == 64
    assert meta["environment"]["hardware"]["cpu"] and meta["environment"]["threads"]["requested"] == 1
    assert meta["environment"]["versions"]["torch"] and meta["memory_method"] in ("rss-hwm", "tracemalloc")


def _check_semantic_curve(out, test_codec):
    """The semantic-layer curve is measured once compress_image takes semantic=, else skipped with a note."""
    rows = csv_rows(out / "measurements.csv")
    semantic_rows = [r for r in rows if r["codec"] == f"{test_codec}+semantic=tiny"]
    notes = json.loads((out / "run.json").read_text())["notes"]
    if unsupported_keywords({"semantic": "tiny"}):
        assert not semantic_rows and any("semantic" in n and "skipped" in n for n in notes)
    else:
        assert semantic_rows and all(int(r["layer0_bytes"]) > 0 for r in semantic_rows if not r["error"])


def _check_summary_and_readme(out, tmp_path):
    rows = csv_rows(out / "measurements.csv")
    summary = summarize(rows)
    jpeg = next(s for s in summary if s["codec"] == "jpeg420" and s["param"] == 60)
    pair = [r for r in rows if r["codec"] == "jpeg420" and float(r["param"]) == 60]
    assert jpeg["n"] == 2 and jpeg["bpp"] == pytest.approx(np.mean([float(r["bpp"]) for r in pair]))

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n\n{README_BEGIN}\nold\n{README_END}\n\n## After\n")
    update_readme(readme, out)
    text = readme.read_text()
    assert "old" not in text and text.endswith("## After\n")
    assert "### Rate–distortion" in text and "](out/rd_psnr.png)" in text
    bare = tmp_path / "BARE.md"
    bare.write_text("# no markers\n")
    with pytest.raises(ValueError, match="semcodec-bench:begin"):
        update_readme(bare, out)


def test_cli_errors(runner, tmp_path, monkeypatch, small_images):
    import semcodec.cli.bench as cli

    monkeypatch.setattr(cli, "DEFAULT_IMAGES", tmp_path / "nowhere")
    r = runner.invoke(bench, [])
    assert r.exit_code == 2 and "pass a folder of images" in r.output
    r = runner.invoke(bench, [str(small_images), "--baselines", "jpeg,png"])
    assert r.exit_code == 2 and "unknown jpeg, png" in r.output
    r = runner.invoke(bench, [str(small_images), "--setting", "{quality: 5}"])
    assert r.exit_code == 2 and "not JSON" in r.output
    r = runner.invoke(bench, [str(small_images), "--setting", '{"qualty": 5}'])
    assert r.exit_code == 2 and "compress_image has no keyword 'qualty'" in r.output and "it takes quality" in r.output
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# no results section\n")
    r = runner.invoke(bench, [str(small_images), "--update-readme", str(plain), "-o", str(tmp_path / "never")])
    assert r.exit_code == 2 and "has no results section" in r.output and not (tmp_path / "never").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(bench, [str(empty)])
    assert r.exit_code == 2 and "no images" in r.output


def test_helpers(tmp_path):
    for i in range(10):
        (tmp_path / f"im{i:02d}.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in list_images(tmp_path)][:2] == ["im00.png", "im01.png"]
    assert [p.name for p in list_images(tmp_path, quick=True)] == ["im00.png", "im03.png", "im06.png", "im09.png"]
    assert len(list_images(tmp_path, limit=3)) == 3
    with pytest.raises(InvalidInputError, match="does not exist"):
        list_images(tmp_path / "missing")
    assert curve_name({"quality": 50, "model": "m"}) == "m"
    assert curve_name({"quality": 50, "model": "m", "semantic": "tiny"}) == "m+semantic=tiny"
    assert curve_name({"quality": 50, "model": "m", "semantic": False}) == "m"
    assert unsupported_keywords({"quality": 1, "no_such_option": 2}) == ["no_such_option"]
    chosen, notes = select_baselines(["jpeg420", "compressai"], hub_dir=tmp_path)
    assert [b.name for b in chosen] == ["jpeg420"] and any("compressai" in n for n in notes)
    with pytest.raises(ValueError, match="unknown"):
        select_baselines(["gif"])


def test_peak_memory_sees_a_large_allocation():
    probe = PeakMemory()
    with probe.measure() as m:
        a = np.ones(48 * 2**20 // 8)          # 48 MiB, touched
        del a
    assert m.peak_mib > 40
    with probe.measure() as small:
        b = bytearray(1024)
        del b
    assert small.peak_mib < 20


def test_compressai_zoo_weights_are_found_in_the_cache_only(tmp_path):
    """A (random) zoo state dict under the zoo file name is detected, loaded and codes an image."""
    import torch
    from compressai.zoo.image import cfgs, model_architectures, model_urls

    from semcodec.bench.baselines import compressai_baselines

    assert compressai_weights(tmp_path) == {}
    (tmp_path / "checkpoints").mkdir()
    url = model_urls["bmshj2018-factorized"]["mse"][1]
    torch.manual_seed(0)
    net = model_architectures["bmshj2018-factorized"](*cfgs["bmshj2018-factorized"][1])
    torch.save(net.state_dict(), tmp_path / "checkpoints" / url.rsplit("/", 1)[1])
    assert set(compressai_weights(tmp_path)) == {"bmshj2018-factorized"}
    zoo = compressai_baselines(tmp_path)["compressai-bmshj2018-factorized"]
    assert zoo.sweep == (1,) and zoo.family == "compressai"
    image = Image.open(SAMPLE).convert("RGB").crop((0, 0, 70, 50))     # not a multiple of 64: padded
    data = zoo.encode(image, 1)
    decoded = zoo.decode(data, 1)
    assert decoded.size == image.size and decoded.mode == "RGB"


def test_benchmark_scripts_end_on_semcodec_errors_with_a_message(tmp_path, capsys):
    def main():
        list_images(tmp_path / "missing")

    with pytest.raises(SystemExit) as stopped:
        run_script(main)
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"error: image folder {tmp_path / 'missing'} does not exist\n"
