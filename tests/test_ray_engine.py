"""``--engine ray`` and ``--shards``: local Ray with 2 CPUs, the tiny test codec, a few real images.

One Ray instance serves the whole module (starting Ray takes seconds); its worker
processes get the test codec's location through ``runtime_env``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import sys
from pathlib import Path

import pytest
from helpers import REPO, SAMPLE, TEST_DATA
from PIL import Image

from semcodec.batch import BatchItem, expand_inputs, plan_outputs
from semcodec.bitstream.container import read_container
from semcodec.cli.main import main

HAVE_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pyarrow") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='needs the ray extra (pip install -e ".[ray]")')


@pytest.fixture(scope="module")
def ray_cluster():
    """Local Ray, 2 CPUs, shared by the module; the engine uses it as it is (and leaves it running)."""
    import ray

    env = {"SEMCODEC_CHECKPOINTS": str(TEST_DATA / "checkpoints"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             runtime_env={"env_vars": env})
    yield ray
    ray.shutdown()


@pytest.fixture
def images(tmp_path) -> Path:
    """A small tree of real photos (crops of the sample in several formats) and one broken file."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    photo = Image.open(SAMPLE).convert("RGB")
    photo.save(src / "a.jpg", quality=90)
    photo.crop((0, 0, 256, 200)).save(src / "b.png")
    photo.crop((100, 50, 420, 290)).save(src / "sub" / "c.png")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src / "sub" / "d.webp", lossless=True)
    (src / "sub" / "broken.png").write_bytes(b"not an image")
    return src


def crash_once(item: BatchItem, *, marker: Path, victim: str, inner, resume: float):
    """Work that kills its own worker process once, right after writing ``victim``'s output."""
    outcome = inner(item, resume=resume)
    if item.source.name == victim and not marker.exists():
        marker.write_text(str(item.output.stat().st_ino))
        os._exit(1)
    return outcome


def always_crash(item: BatchItem, *, victim: str, inner, resume: float):
    """Work whose worker process dies on every try at ``victim`` (a poisonous file)."""
    if item.source.name == victim:
        os._exit(1)
    return inner(item, resume=resume)


def test_engine_ray_without_the_extra_says_how_to_install(runner, images, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray -> ImportError
    r = runner.invoke(main, ["compress", str(images), "-o", str(tmp_path / "out"), "--engine", "ray"])
    assert r.exit_code == 2
    assert r.stderr.strip().count("\n") == 0 and 'pip install -e ".[ray]"' in r.stderr
    assert not (tmp_path / "out").exists()


@needs_ray
def test_compress_decompress_tokens_on_ray_resume(runner, ray_cluster, test_codec, images, tmp_path):
    out = tmp_path / "out"
    args = ["compress", str(images), "--model", test_codec, "--semantic", "tiny", "--no-progress"]
    r = runner.invoke(main, args + ["-o", str(out), "--engine", "ray", "-j", "2"])
    assert r.exit_code == 1, r.stderr
    assert "5 files, 4 ok, 1 failed" in r.stderr and "broken.png" in r.stderr
    expected = plan_outputs(expand_inputs([str(images)], frozenset({".jpg", ".png", ".webp"})), out, ".smc")
    for item in expected:
        assert item.output.exists() == (item.source.name != "broken.png")
    # Same bytes as local mode.
    local = tmp_path / "local"
    assert runner.invoke(main, args + ["-o", str(local)]).exit_code == 1
    for item in (i for i in expected if i.output.exists()):
        data = item.output.read_bytes()
        read_container(data)
        assert data == (local / item.output.relative_to(out)).read_bytes()

    # Resume: kept outputs are not rewritten; a damaged one is redone.
    kept, damaged = out / "a.smc", out / "sub" / "c.smc"
    inode = kept.stat().st_ino
    damaged.write_bytes(damaged.read_bytes()[:-7])
    r = runner.invoke(main, args + ["-o", str(out), "--engine", "ray"])
    assert r.exit_code == 1 and "4 ok, 1 failed" in r.stderr and "3 skipped (output exists)" in r.stderr
    assert kept.stat().st_ino == inode
    read_container(damaged.read_bytes())

    r = runner.invoke(main, ["decompress", str(out), "-o", str(tmp_path / "dec"), "--engine", "ray", "--no-progress"])
    assert r.exit_code == 0, r.stderr
    assert Image.open(tmp_path / "dec" / "sub" / "d.png").size == (451, 300)

    r = runner.invoke(main, ["tokens", str(out), "-o", str(tmp_path / "tok"), "--engine", "ray", "--no-progress"])
    assert r.exit_code == 0, r.stderr
    from safetensors.torch import load_file

    assert load_file(tmp_path / "tok" / "sub" / "c.tokens.safetensors")["tokens"].shape == (196, 192)


@needs_ray
def test_worker_killed_mid_task_is_retried_without_loss_or_rewrite(ray_cluster, test_codec, images, tmp_path):
    from semcodec.cli.jobs import compress_file
    from semcodec.distributed import run_distributed

    pairs = [p for p in expand_inputs([str(images)], frozenset({".jpg", ".png", ".webp"})) if p[0].name != "broken.png"]
    marker = tmp_path / "killed-once"
    inner = functools.partial(compress_file, options={"model": test_codec, "semantic": False}, force=False)
    work = functools.partial(crash_once, marker=marker, victim="b.png", inner=inner)
    outcomes = run_distributed(pairs, tmp_path / "out", ".smc", work, engine="ray", jobs=2, files_per_task=2,
                               progress=False)
    assert marker.exists()                                         # the worker did die
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    assert len(outcomes) == 4 and len(list((tmp_path / "out").rglob("*.smc"))) == 4
    victim = next(o for o in outcomes if o.item.source.name == "b.png")
    assert victim.skipped                                          # the retry kept what the dead worker wrote
    assert victim.item.output.stat().st_ino == int(marker.read_text())
    assert not list((tmp_path / "out").rglob("*.part"))            # no partial files
    for o in outcomes:
        read_container(o.item.output.read_bytes())


@needs_ray
def test_parquet_shards_streams_and_tokens(runner, ray_cluster, test_codec, images, tmp_path):
    import pyarrow.parquet as pq
    from safetensors.torch import load

    (images / "sub" / "broken.png").unlink()
    shards = tmp_path / "shards"
    args = ["compress", str(images), "-o", str(shards), "--model", test_codec, "--semantic", "tiny", "--shards", "2",
            "--engine", "ray", "--no-progress"]
    r = runner.invoke(main, args)
    assert r.exit_code == 0, r.stderr
    files = sorted(shards.glob("*.parquet"))
    assert [f.name for f in files] == ["part-00000-of-00002.parquet", "part-00001-of-00002.parquet"]
    table = pq.read_table(shards)
    assert table.column_names == ["path", "stream", "width", "height", "bpp"]
    assert sorted(table.column("path").to_pylist()) == ["a.jpg", "b.png", "sub/c.png", "sub/d.webp"]
    for row in table.to_pylist():
        h = read_container(row["stream"]).header
        assert (h.width, h.height) == (row["width"], row["height"])
        assert row["bpp"] == pytest.approx(len(row["stream"]) * 8 / (h.width * h.height))
    mtimes = [f.stat().st_mtime_ns for f in files]
    r = runner.invoke(main, args)
    assert r.exit_code == 0 and "4 skipped (output exists)" in r.stderr
    assert [f.stat().st_mtime_ns for f in files] == mtimes

    # Token shards from a folder of streams (per-file .smc written locally).
    runner.invoke(main, ["compress", str(images), "-o", str(tmp_path / "smc"), "--model", test_codec,
                         "--semantic", "tiny", "--semantic-only", "--no-progress"])
    r = runner.invoke(main, ["tokens", str(tmp_path / "smc"), "-o", str(tmp_path / "tok"), "--shards", "1",
                             "--engine", "ray", "--no-progress"])
    assert r.exit_code == 0, r.stderr
    rows = pq.read_table(tmp_path / "tok" / "part-00000-of-00001.parquet").to_pylist()
    assert [r["path"] for r in rows] == ["a.smc", "b.smc", "sub/c.smc", "sub/d.smc"]
    assert all(load(r["tokens"])["tokens"].shape == (r["num_tokens"], r["dim"]) == (196, 192) for r in rows)


@needs_ray
def test_a_file_that_always_kills_its_worker_fails_alone(ray_cluster, test_codec, images, tmp_path):
    from semcodec.cli.jobs import compress_file
    from semcodec.distributed import run_distributed

    pairs = [p for p in expand_inputs([str(images)], frozenset({".jpg", ".png", ".webp"})) if p[0].name != "broken.png"]
    inner = functools.partial(compress_file, options={"model": test_codec, "semantic": False}, force=False)
    work = functools.partial(always_crash, victim="a.jpg", inner=inner)
    outcomes = run_distributed(pairs, tmp_path / "out", ".smc", work, engine="ray", jobs=2, files_per_task=4,
                               progress=False)
    assert [o.ok for o in outcomes] == [False, True, True, True]
    assert outcomes[0].error.startswith("worker lost")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.smc")) == ["b.smc", "c.smc", "d.smc"]
