"""The shell interface through click's CliRunner: every command, option and bad input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner
from helpers import SAMPLE, TEST_DATA, run_cli_in_fresh_interpreter
from PIL import Image

from semcodec.cli.main import main
from semcodec.errors import InvalidInputError
from semcodec.fsutil import read_capped


@pytest.fixture
def sample(tmp_path):
    p = tmp_path / "photo.jpg"
    shutil.copy(SAMPLE, p)
    return p


def test_help_lists_commands(runner):
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("compress", "decompress", "info", "models"):
        assert command in result.output


def test_compress_decompress_default_names(runner, test_codec, sample):
    r = runner.invoke(main, ["compress", str(sample), "--model", test_codec, "-q", "60"])
    assert r.exit_code == 0, r.output
    stream = sample.with_suffix(".smc")
    assert stream.exists() and "bpp" in r.stderr
    r = runner.invoke(main, ["decompress", str(stream)])
    assert r.exit_code == 0, r.output
    out = sample.with_name("photo.png")
    assert Image.open(out).size == Image.open(sample).size


def test_no_overwrite_without_force(runner, test_codec, sample):
    out = sample.with_suffix(".smc")
    out.write_bytes(b"keep me")
    r = runner.invoke(main, ["compress", str(sample), "--model", test_codec])
    assert r.exit_code != 0 and "--force" in r.stderr
    assert out.read_bytes() == b"keep me"
    r = runner.invoke(main, ["compress", str(sample), "--model", test_codec, "--force"])
    assert r.exit_code == 0 and out.read_bytes() != b"keep me"


def test_stdin_stdout(runner, test_codec, sample):
    r = runner.invoke(main, ["compress", "-", "-o", "-", "--model", test_codec], input=sample.read_bytes())
    assert r.exit_code == 0
    stream = r.stdout_bytes
    r = runner.invoke(main, ["decompress", "-", "-o", "-"], input=stream)
    assert r.exit_code == 0 and r.stdout_bytes.startswith(b"\x89PNG")


@contextlib.contextmanager
def _pipe_path(content: bytes):
    """A path naming the read end of a pipe that holds ``content`` (what bash's <(…) gives)."""
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, content), os.close(write_end)))
    writer.start()
    try:
        yield f"/proc/self/fd/{read_end}"
    finally:
        writer.join()
        os.close(read_end)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
def test_pipes_as_input_paths(runner, test_codec, sample, tmp_path):
    with _pipe_path(sample.read_bytes()) as path:
        r = runner.invoke(main, ["compress", path, "-o", str(tmp_path / "p.smc"), "--model", test_codec])
    assert r.exit_code == 0, r.output
    with _pipe_path((tmp_path / "p.smc").read_bytes()) as path:
        r = runner.invoke(main, ["decompress", path, "-o", str(tmp_path / "p.png")])
    assert r.exit_code == 0 and Image.open(tmp_path / "p.png").size == Image.open(sample).size
    # A pipe or device that never ends is refused at the input cap instead of filling memory.
    with _pipe_path(b"x" * 100) as path, pytest.raises(InvalidInputError, match="holds more than 64 bytes"):
        read_capped(path, limit=64)


def test_outputs_through_symlinks_and_into_pipes(runner, test_codec, sample, tmp_path):
    stream = tmp_path / "s.smc"
    assert runner.invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec]).exit_code == 0
    # A symlink is followed: its target is replaced (with --force), the link stays.
    target, link = tmp_path / "target.png", tmp_path / "link.png"
    target.write_bytes(b"old")
    link.symlink_to(target)
    assert runner.invoke(main, ["decompress", str(stream), "-o", str(link)]).exit_code != 0
    assert runner.invoke(main, ["decompress", str(stream), "-o", str(link), "-f"]).exit_code == 0
    assert link.is_symlink() and Image.open(target).size == Image.open(sample).size
    # A pipe (like /dev/null or bash's >(…)) is written into, not replaced by a rename, and needs no --force.
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    r = runner.invoke(main, ["decompress", str(stream), "-o", str(fifo)])
    reader.join(timeout=60)
    assert r.exit_code == 0, r.output
    assert received[0].startswith(b"\x89PNG") and fifo.is_fifo()


def test_info_text_and_json(runner, test_codec, sample, tmp_path):
    stream = tmp_path / "s.smc"
    assert runner.invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec]).exit_code == 0
    r = runner.invoke(main, ["info", str(stream)])
    assert r.exit_code == 0 and "layer 1 (pixels)" in r.output and test_codec in r.output
    r = runner.invoke(main, ["info", "--json", str(stream)])
    info = json.loads(r.output)
    assert info["total_bytes"] == stream.stat().st_size and info["layers"]["RES1"] > 0
    assert (info["width"], info["height"]) == Image.open(sample).size


def test_info_needs_no_torch(runner, test_codec, sample, tmp_path):
    """Reading a container is header parsing: `semcodec info` starts at once, without torch or the models."""
    stream = tmp_path / "s.smc"
    assert runner.invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec]).exit_code == 0
    r, imported = run_cli_in_fresh_interpreter("info", str(stream), forbidden=("torch",))
    assert r.returncode == 0 and imported == [], r.stderr
    assert "layer 1 (pixels)" in r.stdout


def test_models_needs_no_pixel_codec():
    """Listing models reads configs and looks for files: it loads no network code of the pixel codec."""
    r, imported = run_cli_in_fresh_interpreter("models", forbidden=("compressai", "semcodec.models.residual"))
    assert r.returncode == 0 and imported == [], r.stderr
    assert "semcodec-ms192" in r.stdout and "tiny" in r.stdout


def test_info_several_streams_folders_and_failures(runner, test_codec, sample, tmp_path):
    good = tmp_path / "a" / "s.smc"
    good.parent.mkdir()
    assert runner.invoke(main, ["compress", str(sample), "-o", str(good), "--model", test_codec]).exit_code == 0
    (tmp_path / "a" / "deep").mkdir()
    nested = tmp_path / "a" / "deep" / "t.smc"
    nested.write_bytes(good.read_bytes())
    bad = tmp_path / "bad.smc"
    bad.write_bytes(good.read_bytes()[:-5])                     # truncated
    r = runner.invoke(main, ["info", str(tmp_path / "a"), str(bad)])
    assert r.exit_code == 1
    assert f"==> {good} <==" in r.stdout and f"==> {nested} <==" in r.stdout
    assert r.stdout.count("layer 1 (pixels)") == 2
    assert str(bad) in r.stderr and "Traceback" not in r.output
    r = runner.invoke(main, ["info", "--json", str(good), str(nested)])
    rows = json.loads(r.stdout)
    assert r.exit_code == 0 and [row["path"] for row in rows] == [str(good), str(nested)]
    assert rows[0]["total_bytes"] == good.stat().st_size
    r = runner.invoke(main, ["info", str(good), "-"])
    assert r.exit_code != 0 and "stdin" in r.output


def test_models_lists_registry(runner):
    r = runner.invoke(main, ["models", "--json"])
    assert r.exit_code == 0
    names = {row["name"] for row in json.loads(r.output)}
    assert "semcodec-ms192" in names


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "empty"),
    (b"this is text, not an image", "not an image"),
])
def test_compress_bad_inputs(runner, test_codec, tmp_path, content, message):
    p = tmp_path / "in.png"
    if content is not None:
        p.write_bytes(content)
    r = runner.invoke(main, ["compress", str(p), "--model", test_codec])
    assert r.exit_code != 0 and message in r.stderr
    assert "Traceback" not in r.output
    assert not list(tmp_path.glob("*.smc")) and not list(tmp_path.glob(".*part"))


def test_decompress_bad_streams(runner, test_codec, sample, tmp_path):
    stream = tmp_path / "s.smc"
    runner.invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec])
    data = stream.read_bytes()
    cases = {"truncated.smc": data[: len(data) // 2], "empty.smc": b"", "text.smc": b"hello",
             "flipped.smc": data[:40] + bytes([data[40] ^ 1]) + data[41:]}
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        r = runner.invoke(main, ["decompress", str(p), "-o", str(tmp_path / (name + ".png"))])
        assert r.exit_code == 3, (name, r.output)
        assert r.stderr.startswith("semcodec: error:") and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / (name + ".png")).exists()
    r = runner.invoke(main, ["info", str(tmp_path / "truncated.smc")])
    assert r.exit_code == 3 and "truncated" in r.stderr.lower()


def test_unwritable_output(runner, test_codec, sample, tmp_path):
    r = runner.invoke(main, ["compress", str(sample), "-o", str(tmp_path / "no" / "such" / "dir.smc"), "--model", test_codec])
    assert r.exit_code != 0 and "does not exist" in r.stderr


def test_output_names_and_folders(runner, test_codec, sample, tmp_path):
    """A lossy/unknown image suffix (or a misleading stream/tokens suffix) fails up front with one line and
    writes nothing; a folder as -o of one input receives the output under its default name (as with cp)."""
    folder = tmp_path / "streams"
    folder.mkdir()
    r = runner.invoke(main, ["compress", str(sample), "-o", str(folder), "--model", test_codec])
    assert r.exit_code == 0, r.output
    stream = folder / "photo.smc"
    assert stream.exists()
    r = runner.invoke(main, ["compress", "-", "-o", str(folder), "--model", test_codec], input=sample.read_bytes())
    assert r.exit_code == 2 and "is a folder" in r.stderr
    r = runner.invoke(main, ["decompress", str(stream), "-o", str(tmp_path / "out.jpg")])
    assert r.exit_code == 2 and "'.jpg'" in r.stderr and ".png" in r.stderr
    assert not (tmp_path / "out.jpg").exists()
    r = runner.invoke(main, ["decompress", str(stream), "-o", str(tmp_path / "out.tiff")])
    assert r.exit_code == 0 and Image.open(tmp_path / "out.tiff").format == "TIFF"
    # A format that cannot hold the image (WebP: at most 16383 px a side) is an error, not a traceback.
    Image.new("RGB", (16384, 1), (90, 120, 200)).save(tmp_path / "line.png")
    r = runner.invoke(main, ["compress", str(tmp_path / "line.png"), "--model", test_codec, "-q", "10"])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(main, ["decompress", str(tmp_path / "line.smc"), "-o", str(tmp_path / "line.webp")])
    assert r.exit_code == 2 and "cannot write the decoded 16384x1 image as WEBP" in r.stderr
    assert not (tmp_path / "line.webp").exists()
    # A stream named like an image, or tokens named like another array format, would mislead: refused up front.
    r = runner.invoke(main, ["compress", str(sample), "-o", str(tmp_path / "photo.png"), "--model", test_codec])
    assert r.exit_code == 2 and "name it .smc" in r.stderr and not (tmp_path / "photo.png").exists()
    r = runner.invoke(main, ["tokens", str(stream), "-o", str(tmp_path / "t.npy")])
    assert r.exit_code == 2 and "safetensors format" in r.stderr and not (tmp_path / "t.npy").exists()


def test_bad_quality_is_a_usage_error(runner, sample):
    r = runner.invoke(main, ["compress", str(sample), "-q", "300"])
    assert r.exit_code == 2 and "quality" in r.output.lower()
    r = runner.invoke(main, ["compress", str(sample), "--effort", "4"])
    assert r.exit_code == 2 and "effort" in r.output.lower()
    for option, value in (("-q", "nan"), ("--bpp", "inf"), ("--bpp", "nan")):
        r = runner.invoke(main, ["compress", str(sample), option, value])
        assert r.exit_code == 2 and f"{value} is not a finite number" in r.output


def test_effort_from_the_shell(runner, test_codec, sample, tmp_path):
    r = runner.invoke(main, ["compress", str(sample), "-o", str(tmp_path / "e.smc"), "-e", "1", "--model", test_codec])
    assert r.exit_code == 0, r.stderr
    r = runner.invoke(main, ["decompress", str(tmp_path / "e.smc"), "-o", str(tmp_path / "e.png")])
    assert r.exit_code == 0 and Image.open(tmp_path / "e.png").size == (451, 300)


def test_batch_folder_with_a_bad_file(runner, test_codec, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(SAMPLE, src / "a.jpg")
    shutil.copy(SAMPLE, src / "sub" / "b.jpg")
    (src / "sub" / "broken.png").write_bytes(b"not an image")
    Image.open(SAMPLE).convert("L").save(src / "gray.png")
    r = runner.invoke(main, ["compress", str(src), "-o", str(tmp_path / "out"), "--model", test_codec, "--no-progress"])
    assert r.exit_code == 1
    assert (tmp_path / "out" / "a.smc").exists() and (tmp_path / "out" / "sub" / "b.smc").exists()
    assert "4 files, 3 ok, 1 failed" in r.stderr and "broken.png" in r.stderr
    # A note that only some files got names them.
    assert f"note: {src / 'gray.png'}: grayscale: coded as RGB" in r.stderr
    r = runner.invoke(main, ["decompress", str(tmp_path / "out"), "-o", str(tmp_path / "dec"), "--no-progress"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "dec" / "sub" / "b.png").exists()
    # A folder with nothing to do is named in the error (streams are not images).
    r = runner.invoke(main, ["compress", str(tmp_path / "out"), "-o", str(tmp_path / "x"), "--no-progress"])
    assert r.exit_code == 2 and f"{tmp_path / 'out'}: no .avif .bmp" in r.stderr and "files in this folder" in r.stderr


def test_batch_with_jobs_and_glob(runner, test_codec, tmp_path):
    for name in ("x.jpg", "y.jpg", "z.jpg"):
        shutil.copy(SAMPLE, tmp_path / name)
    r = runner.invoke(main, ["compress", str(tmp_path / "*.jpg"), "-o", str(tmp_path / "o"), "-j", "2",
                             "--model", test_codec, "--size", "500", "--no-progress"])
    assert r.exit_code == 0, r.stderr
    sizes = [p.stat().st_size for p in sorted((tmp_path / "o").glob("*.smc"))]
    assert len(sizes) == 3 and all(abs(s - 500) <= 10 for s in sizes)


def test_rate_options(runner, test_codec, sample, tmp_path):
    r = runner.invoke(main, ["compress", str(sample), "-o", str(tmp_path / "a.smc"), "--bpp", "0.04", "--model", test_codec])
    assert r.exit_code == 0
    assert abs((tmp_path / "a.smc").stat().st_size * 8 / (451 * 300) - 0.04) <= 0.02 * 0.04
    r = runner.invoke(main, ["compress", str(sample), "--bpp", "0.04", "--size", "100"])
    assert r.exit_code == 2 and "at most one" in r.output
    r = runner.invoke(main, ["compress", str(sample), "-o", str(tmp_path / "b.smc"), "--size", "10", "--model", test_codec])
    assert r.exit_code == 5 and "reachable" in r.stderr and not (tmp_path / "b.smc").exists()


def test_semantic_layer_from_the_shell(runner, test_codec, sample, tmp_path):
    stream = tmp_path / "both.smc"
    r = runner.invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec, "--semantic", "tiny"])
    assert r.exit_code == 0, r.stderr
    info = json.loads(runner.invoke(main, ["info", "--json", str(stream)]).output)
    assert list(info["layers"]) == ["SEM0", "RES1"] and info["semantic_model"] == "tiny"
    r = runner.invoke(main, ["tokens", str(stream), "-o", str(tmp_path / "t.safetensors")])
    assert r.exit_code == 0, r.stderr
    from safetensors.numpy import load_file

    assert load_file(tmp_path / "t.safetensors")["tokens"].shape == (196, 192)
    assert runner.invoke(main, ["decompress", str(stream), "-o", str(tmp_path / "both.png")]).exit_code == 0


def test_semantic_only_and_budgets(runner, test_codec, sample, tmp_path):
    only = tmp_path / "only.smc"
    r = runner.invoke(main, ["compress", str(sample), "-o", str(only), "--semantic", "tiny", "--semantic-only", "--size", "700"])
    assert r.exit_code == 0, r.stderr
    assert 0.9 * 700 <= only.stat().st_size <= 700   # layer 0 alone: the target is a ceiling (discrete knobs)
    r = runner.invoke(main, ["decompress", str(only), "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 3 and "no pixel layer" in r.stderr
    r = runner.invoke(main, ["compress", str(sample), "-o", str(tmp_path / "two.smc"), "--semantic", "tiny",
                             "--semantic-only", "--size", "700", "--semantic-bytes", "300"])
    assert r.exit_code == 2 and "not both" in r.stderr and not (tmp_path / "two.smc").exists()
    budget = tmp_path / "budget.smc"
    r = runner.invoke(main, ["compress", str(sample), "-o", str(budget), "--model", test_codec, "--semantic", "tiny",
                             "--semantic-bytes", "300"])
    assert r.exit_code == 0
    assert json.loads(runner.invoke(main, ["info", "--json", str(budget)]).output)["layers"]["SEM0"] <= 300


def test_default_without_tower_writes_pixels_with_a_note(runner, test_codec, sample, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    r = runner.invoke(main, ["compress", str(sample), "-o", str(tmp_path / "p.smc"), "--model", test_codec])
    assert r.exit_code == 0 and "note: no semantic layer" in r.stderr
    r = runner.invoke(main, ["tokens", str(tmp_path / "p.smc"), "-o", str(tmp_path / "t.safetensors")])
    assert r.exit_code == 3 and "no semantic layer" in r.stderr


def test_explicit_unavailable_tower_is_an_error(runner, test_codec, sample, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    r = runner.invoke(main, ["compress", str(sample), "-o", str(tmp_path / "p.smc"), "--model", test_codec,
                             "--semantic", "clip-l14-336"])
    assert r.exit_code == 4 and "clip-l14-336" in r.stderr and not (tmp_path / "p.smc").exists()
    # A layer-0 budget asks for layer 0 as --semantic does: the unavailable default tower is an error, not a note.
    r = runner.invoke(main, ["compress", str(sample), "-o", str(tmp_path / "p.smc"), "--model", test_codec,
                             "--semantic-bytes", "100"])
    assert r.exit_code == 4 and "clip-l14-336" in r.stderr and not (tmp_path / "p.smc").exists()


def test_batch_takes_a_file_named_twice_once(runner, test_codec, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(SAMPLE, folder / "a.jpg")
    out = tmp_path / "out"
    r = runner.invoke(main, ["compress", str(folder), str(folder / "a.jpg"), str(folder / "*.jpg"), "-o", str(out),
                             "--model", test_codec, "--no-progress"])
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.smc"] and "1 file, 1 ok, 0 failed" in r.stderr


def test_batch_keeps_extensions_when_names_clash(runner, test_codec, tmp_path):
    Image.open(SAMPLE).save(tmp_path / "photo.png")
    shutil.copy(SAMPLE, tmp_path / "photo.jpg")
    r = runner.invoke(main, ["compress", str(tmp_path / "photo.png"), str(tmp_path / "photo.jpg"),
                             "--model", test_codec, "--no-progress"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "photo.png.smc").exists() and (tmp_path / "photo.jpg.smc").exists()


# --------------------------------------------------------------------------- metadata


@pytest.fixture
def camera_photo(tmp_path):
    """A JPEG with EXIF (orientation 6, a camera make), the sRGB ICC profile and XMP."""
    from helpers import jpeg_with_metadata

    p = tmp_path / "camera.jpg"
    p.write_bytes(jpeg_with_metadata(size=(64, 48), orientation=6))
    return p


def test_metadata_is_kept_in_decoded_png_webp_and_tiff(runner, test_codec, camera_photo, tmp_path):
    from helpers import XMP_PACKET

    r = runner.invoke(main, ["compress", str(camera_photo), "--model", test_codec, "--no-semantic", "-q", "50"])
    assert r.exit_code == 0, r.output
    assert "semcodec: note: EXIF orientation 6 applied: coded as displayed (rotated 90° clockwise)" in r.stderr
    stream = camera_photo.with_suffix(".smc")
    r = runner.invoke(main, ["info", str(stream)])
    assert r.exit_code == 0 and "format            1.2" in r.output
    row = next(line for line in r.output.splitlines() if line.startswith("metadata"))
    info = json.loads(runner.invoke(main, ["info", "--json", str(stream)]).output)
    assert row.split(None, 1)[1] == (f"{info['metadata_bytes']} bytes (EXIF {info['metadata']['EXIF']}, "
                                     f"ICC {info['metadata']['ICC']}, XMP {info['metadata']['XMP']})")
    source = Image.open(camera_photo)
    for suffix in (".png", ".webp", ".tif"):
        out = tmp_path / f"decoded{suffix}"
        r = runner.invoke(main, ["decompress", str(stream), "-o", str(out)])
        assert r.exit_code == 0, r.output
        decoded = Image.open(out)
        exif = decoded.getexif()
        assert decoded.size == (48, 64), suffix
        assert (exif[0x0112], exif[0x010F]) == (1, "SemcodecCam"), suffix
        assert exif.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09", suffix
        assert decoded.info["icc_profile"] == source.info["icc_profile"], suffix
        assert decoded.info["xmp"] == XMP_PACKET.replace(b'tiff:Orientation="6"', b""), suffix
    r = runner.invoke(main, ["decompress", str(stream), "-o", str(tmp_path / "decoded.bmp")])  # carries none
    assert r.exit_code == 0 and Image.open(tmp_path / "decoded.bmp").size == (48, 64)


def test_strip_drops_the_metadata_in_single_and_batch_mode(runner, test_codec, camera_photo, tmp_path):
    stream = tmp_path / "stripped.smc"
    r = runner.invoke(main, ["compress", str(camera_photo), "-o", str(stream), "--model", test_codec, "--no-semantic",
                             "--strip"])
    assert r.exit_code == 0, r.output
    info = json.loads(runner.invoke(main, ["info", "--json", str(stream)]).output)
    assert info["format_version"] == "1.0" and info["metadata_bytes"] == 0 and info["metadata"] == {}
    assert "metadata" not in runner.invoke(main, ["info", str(stream)]).output
    assert runner.invoke(main, ["decompress", str(stream), "-o", str(tmp_path / "d.png")]).exit_code == 0
    assert not {"exif", "icc_profile", "xmp"} & set(Image.open(tmp_path / "d.png").info)
    # Batch mode takes the option through the same options (two inputs).
    shutil.copy(camera_photo, tmp_path / "second.jpg")
    out = tmp_path / "batch"
    r = runner.invoke(main, ["compress", str(camera_photo), str(tmp_path / "second.jpg"), "-o", str(out),
                             "--model", test_codec, "--no-semantic", "--strip", "--no-progress"])
    assert r.exit_code == 0, r.output
    streams = sorted(out.rglob("*.smc"))
    assert len(streams) == 2
    for s in streams:
        assert json.loads(runner.invoke(main, ["info", "--json", str(s)]).output)["metadata_bytes"] == 0


def test_gray_image_metadata_in_decoded_png_and_webp(runner, test_codec, tmp_path):
    gray = tmp_path / "gray.png"
    exif = Image.Exif()
    exif[0x010F] = "GrayCam"
    Image.open(SAMPLE).convert("L").resize((40, 32)).save(gray, exif=exif)
    assert runner.invoke(main, ["compress", str(gray), "--model", test_codec, "--no-semantic"]).exit_code == 0
    for suffix in (".png", ".webp"):
        out = tmp_path / f"gray-decoded{suffix}"
        assert runner.invoke(main, ["decompress", str(gray.with_suffix(".smc")), "-o", str(out)]).exit_code == 0
        decoded = Image.open(out)
        assert decoded.getexif()[0x010F] == "GrayCam", suffix
    assert Image.open(tmp_path / "gray-decoded.png").mode == "L"


def test_bpp_target_with_metadata_from_the_shell(runner, test_codec, tmp_path):
    from helpers import jpeg_with_metadata

    photo = tmp_path / "big.jpg"
    photo.write_bytes(jpeg_with_metadata(size=(160, 112)))
    stream = tmp_path / "big.smc"
    r = runner.invoke(main, ["compress", str(photo), "-o", str(stream), "--model", test_codec, "--no-semantic",
                             "--bpp", "1.0"])
    assert r.exit_code == 0, r.output
    info = json.loads(runner.invoke(main, ["info", "--json", str(stream)]).output)
    assert abs(info["bpp"] - 1.0) <= 0.02 and info["metadata_bytes"] > 0


def test_damaged_metadata_chunk_exits_3(runner, test_codec, camera_photo, tmp_path):
    import struct
    import zlib

    stream = tmp_path / "s.smc"
    assert runner.invoke(main, ["compress", str(camera_photo), "-o", str(stream), "--model", test_codec,
                                "--no-semantic"]).exit_code == 0
    data = stream.read_bytes()
    start = data.rindex(b"META")
    body = bytearray(data[start:-4])
    body[8] = 200                                                   # the entry count, beyond the cap of 16
    cases = {"count.smc": (data[:start] + bytes(body) + struct.pack("<I", zlib.crc32(body)), "announces 200 entries"),
             "crc.smc": (data[:start] + bytes(body) + data[-4:], "checksum mismatch in metadata chunk"),
             "cut.smc": (data[:start + 20], "truncated"),
             "missing.smc": (data[:start], "ends before its metadata chunk")}
    for name, (content, message) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        for command in (["decompress", str(p), "-o", str(tmp_path / (name + ".png"))], ["info", str(p)]):
            r = runner.invoke(main, command)
            assert r.exit_code == 3, (name, r.output)
            assert r.stderr.startswith("semcodec: error:") and message in r.stderr, (name, r.stderr)
            assert len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / (name + ".png")).exists()


# --------------------------------------------------------------------------- verbosity, --skip-existing, progress
@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No default tower: every compress gets the 'no semantic layer' note."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def test_quiet_and_verbose_single_file(runner, test_codec, sample, tmp_path, offline):
    stream = tmp_path / "s.smc"
    r = runner.invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec])
    assert r.exit_code == 0 and r.stderr.count("note: no semantic layer") == 1
    assert r.stderr.splitlines()[-1] == f"{sample} -> {stream}: {stream.stat().st_size} bytes, " \
                                        f"{stream.stat().st_size * 8 / (451 * 300):.4f} bpp"
    r = runner.invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec, "-f", "--quiet"])
    assert r.exit_code == 0 and r.stderr == "" and stream.exists()
    r = runner.invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec, "-f", "-v"])
    line = r.stderr.splitlines()[-1]
    assert r.exit_code == 0 and "layer 1 " in line and "rate knob" in line and line.endswith(" s")
    r = runner.invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec, "--quiet", "-v"])
    assert r.exit_code == 2 and "contradict" in r.stderr
    # decompress: silent by default and with --quiet; -v describes the image and the stream's layers.
    r = runner.invoke(main, ["decompress", str(stream), "-o", str(tmp_path / "d.png"), "--quiet"])
    assert r.exit_code == 0 and r.stderr == ""
    r = runner.invoke(main, ["decompress", str(stream), "-o", str(tmp_path / "d.png"), "-f", "-v"])
    assert r.exit_code == 0 and f"-> {tmp_path / 'd.png'}: 451x300 RGB" in r.stderr and "layer 1 " in r.stderr
    # The error of a bad input is still printed with --quiet.
    r = runner.invoke(main, ["compress", str(tmp_path / "missing.png"), "--quiet"])
    assert r.exit_code == 2 and r.stderr.startswith("semcodec: error:")


def test_tokens_quiet_and_verbose(runner, test_codec, sample, tmp_path):
    stream = tmp_path / "t.smc"
    assert runner.invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec, "--semantic", "tiny",
                                "--semantic-only"]).exit_code == 0
    out = tmp_path / "t.safetensors"
    r = runner.invoke(main, ["tokens", str(stream), "-o", str(out), "--quiet"])
    assert r.exit_code == 0 and r.stderr == "" and out.exists()
    r = runner.invoke(main, ["tokens", str(stream), "-o", str(out), "-f", "-v"])
    assert r.exit_code == 0 and f"{out.stat().st_size} bytes, 196 tokens x 192" in r.stderr
    assert r.stderr.rstrip().endswith(" s")


def _batch_folder(tmp_path, broken: bool = False):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(SAMPLE, src / "a.jpg")
    Image.open(SAMPLE).crop((0, 0, 200, 100)).save(src / "b.png")
    if broken:
        (src / "broken.png").write_bytes(b"not an image")
    return src


def test_quiet_and_verbose_batch(runner, test_codec, tmp_path, offline):
    src = _batch_folder(tmp_path, broken=True)
    args = ["compress", str(src), "--model", test_codec]
    r = runner.invoke(main, args + ["-o", str(tmp_path / "o1")])
    # The note every file got is printed once, in the summary; no line per file.
    assert r.exit_code == 1 and r.stderr.count("no semantic layer") == 1 and " -> " not in r.stderr
    r = runner.invoke(main, args + ["-o", str(tmp_path / "o2"), "-v"])
    assert r.exit_code == 1 and r.stderr.count("no semantic layer") == 1
    assert f"{src / 'a.jpg'} -> {tmp_path / 'o2' / 'a.smc'}: " in r.stderr and "rate knob" in r.stderr
    assert f"{src / 'broken.png'}: FAILED: " in r.stderr and "3 files, 2 ok, 1 failed" in r.stderr
    # --quiet: only the failure, as one error line.
    r = runner.invoke(main, args + ["-o", str(tmp_path / "o3"), "--quiet", "-j", "2"])
    assert r.exit_code == 1 and (tmp_path / "o3" / "b.smc").exists()
    assert r.stderr.splitlines() == [f"semcodec: error: {src / 'broken.png'}: " + r.stderr.split(": ", 3)[3].rstrip()]
    (src / "broken.png").unlink()
    r = runner.invoke(main, args + ["-o", str(tmp_path / "o4"), "--quiet"])
    assert r.exit_code == 0 and r.stderr == ""


def test_skip_existing(runner, test_codec, tmp_path):
    src = _batch_folder(tmp_path)
    out = tmp_path / "out"
    args = ["compress", str(src), "-o", str(out), "--model", test_codec, "--no-semantic"]
    assert runner.invoke(main, args).exit_code == 0
    a, b = out / "a.smc", out / "b.smc"
    kept = (a.stat().st_mtime_ns, a.stat().st_ino)
    r = runner.invoke(main, args)                                   # without it: every existing output fails
    assert r.exit_code == 1 and "2 failed" in r.stderr and "--force" in r.stderr
    b.write_bytes(b.read_bytes()[:-3])                              # a damaged output is written again
    r = runner.invoke(main, args + ["--skip-existing", "-j", "2"])
    assert r.exit_code == 0, r.stderr
    assert "2 files, 2 ok, 0 failed" in r.stderr and "1 skipped (output exists)" in r.stderr
    assert f"{src / 'b.png'}: the existing output did not verify: written again" in r.stderr
    assert (a.stat().st_mtime_ns, a.stat().st_ino) == kept
    from semcodec.cli.jobs import verify_stream

    verify_stream(b.read_bytes())
    r = runner.invoke(main, args + ["--skip-existing"])
    assert r.exit_code == 0 and "2 skipped (output exists)" in r.stderr
    r = runner.invoke(main, args + ["--skip-existing", "--force"])
    assert r.exit_code == 2 and "--skip-existing contradicts --force" in r.stderr
    # One file: skipped with a line (nothing with --quiet); decompress and tokens alike.
    r = runner.invoke(main, ["compress", str(src / "a.jpg"), "-o", str(a), "--skip-existing", "--model", test_codec])
    assert r.exit_code == 0 and r.stderr == f"{src / 'a.jpg'} -> {a}: skipped (output exists)\n"
    assert (a.stat().st_mtime_ns, a.stat().st_ino) == kept
    png = tmp_path / "a.png"
    png.write_bytes(b"not a png")
    r = runner.invoke(main, ["decompress", str(a), "-o", str(png), "--skip-existing", "--quiet"])
    assert r.exit_code == 0 and r.stderr == "" and Image.open(png).size == (451, 300)    # did not verify: redone
    mtime = png.stat().st_mtime_ns
    r = runner.invoke(main, ["decompress", str(a), "-o", str(png), "--skip-existing", "--quiet"])
    assert r.exit_code == 0 and r.stderr == "" and png.stat().st_mtime_ns == mtime
    r = runner.invoke(main, ["decompress", str(out), "-o", str(tmp_path / "dec"), "--skip-existing"])
    assert r.exit_code == 0 and "2 files, 2 ok" in r.stderr and "skipped" not in r.stderr


def test_summary_bpp_weighs_by_pixels(runner, test_codec, tmp_path):
    """A 1x1 image's stream is hundreds of bits per pixel: the summary's bpp is all bits over all pixels."""
    src = _batch_folder(tmp_path)
    Image.new("RGB", (1, 1), (200, 30, 60)).save(src / "dot.png")
    out = tmp_path / "out"
    r = runner.invoke(main, ["compress", str(src), "-o", str(out), "--model", test_codec, "--no-semantic"])
    assert r.exit_code == 0, r.stderr
    bits = sum(p.stat().st_size * 8 for p in out.glob("*.smc"))
    assert (out / "dot.smc").stat().st_size * 8 > 100                            # the dot alone: > 100 bpp
    assert f", {bits / (451 * 300 + 200 * 100 + 1):.4f} bpp" in r.stderr


def test_progress_bar_only_on_a_terminal(runner, test_codec, tmp_path):
    src = _batch_folder(tmp_path)
    args = ["compress", str(src), "--model", test_codec, "--no-semantic"]
    r = runner.invoke(main, args + ["-o", str(tmp_path / "o1")])                 # stderr is not a terminal
    assert r.exit_code == 0 and "%|" not in r.stderr and "2 files, 2 ok" in r.stderr
    r = runner.invoke(main, args + ["-o", str(tmp_path / "o2"), "--progress"])
    assert r.exit_code == 0 and "compress: 100%|" in r.stderr
    # On a terminal (a pseudo-terminal here), the bar is drawn by default.
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))   # a new pty is 0 columns wide
    env = dict(os.environ, SEMCODEC_CHECKPOINTS=os.environ["SEMCODEC_CHECKPOINTS"])
    proc = subprocess.run([sys.executable, "-m", "semcodec.cli.main", *args, "-o", str(tmp_path / "o3")],
                          stderr=follower, stdout=subprocess.DEVNULL, env=env, timeout=120)
    os.close(follower)
    seen = b""
    with contextlib.suppress(OSError):                          # EIO once everything written has been read
        while chunk := os.read(leader, 65536):
            seen += chunk
    os.close(leader)
    assert proc.returncode == 0 and b"compress: 100%|" in seen


def test_closed_stdout_is_one_error_line(test_codec, sample, tmp_path):
    """`semcodec decompress s.smc -o - | head -c 10`, where head is gone before the image is written."""
    stream = tmp_path / "s.smc"
    assert CliRunner().invoke(main, ["compress", str(sample), "-o", str(stream), "--model", test_codec]).exit_code == 0
    for command in (["decompress", str(stream), "-o", "-"], ["info", str(stream)]):
        proc = subprocess.Popen([sys.executable, "-m", "semcodec.cli.main", *command], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        proc.stdout.close()                                     # the reader stops before anything is written
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 141, err
        assert err.decode().splitlines() == ["semcodec: error: output pipe closed: its reader stopped before the "
                                             "end of the output"]


# --------------------------------------------------------------------------- interrupting a batch
# A batch whose outputs after the first take a minute each to write: it is mid-write when the test stops it.
_SLOW_BATCH = """
import sys, time
from pathlib import Path
import semcodec.cli.jobs as jobs
from semcodec.cli.main import main
from semcodec.fsutil import atomic_write

fast = jobs.write_output_bytes

def slow(path, data, force=False):
    if Path(path).name == "0.smc":
        return fast(path, data, force=force)
    atomic_write(path, lambda tmp: (Path(tmp).write_bytes(data[:9]), time.sleep(60)))

jobs.write_output_bytes = slow
main(sys.argv[1:], prog_name="semcodec")
"""


def _start_slow_batch(tmp_path):
    """The slow batch over 6 images with -j 2, once its first output is written and the second is being
    written; returns the process, its worker processes and the output folder."""
    import psutil
    from semcodec.fsutil import temporary_files

    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        Image.open(SAMPLE).crop((i * 10, 0, i * 10 + 96, 64)).save(src / f"{i}.png")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BATCH, "compress", str(src), "-o", str(out), "-j", "2",
                             "--no-semantic", "--model", "semcodec-test"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ((out / "0.smc").exists() and temporary_files(out / "1.smc")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    workers = psutil.Process(proc.pid).children()
    assert len(workers) == 2
    return proc, workers, out


def _alive(processes) -> list:
    import psutil

    alive = []
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


@pytest.mark.parametrize("sig, status, word", [(signal.SIGINT, 130, "interrupted"),
                                               (signal.SIGTERM, 143, "terminated")])
def test_interrupted_batch_stops_at_once(tmp_path, monkeypatch, sig, status, word):
    monkeypatch.setenv("SEMCODEC_CHECKPOINTS", str(TEST_DATA / "checkpoints"))
    proc, workers, out = _start_slow_batch(tmp_path)
    t0 = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 2.5                      # not the minute the workers' writes would take
    assert proc.returncode == status and err.decode().splitlines()[-1] == f"semcodec: {word}", err
    assert sorted(p.name for p in out.iterdir()) == ["0.smc"]          # no partial output, no temporary file
    assert not _alive(workers)


def test_workers_die_with_a_killed_parent(tmp_path, monkeypatch):
    from semcodec.fsutil import temporary_files

    monkeypatch.setenv("SEMCODEC_CHECKPOINTS", str(TEST_DATA / "checkpoints"))
    proc, workers, out = _start_slow_batch(tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 2
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(workers)
    assert not temporary_files(out / "1.smc")                # each worker cleaned up after its write
    proc.stderr.close()
