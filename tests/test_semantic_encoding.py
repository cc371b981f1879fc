"""Layer-0 encoding cost and placement: the tower loads once per process and runs once per image whatever the rate
search does; ``--device`` places the tower (a missing CUDA device is a one-line error); calibration streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import semcodec
from semcodec import api
from semcodec.cli.main import main
from semcodec.errors import InvalidInputError
from semcodec.layers.semantic import calibrate, decode_tokens, load_calibration
from semcodec.models import semantic as sem


@pytest.fixture
def images(tmp_path):
    """Three small non-square photos (smooth, so that token dropping has something to predict)."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        small = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        Image.fromarray(small).resize((112, 80), Image.BICUBIC).save(folder / f"p{i}.png")
    return folder


@pytest.fixture
def counted(monkeypatch):
    """Counts tower loads and tower forward passes (per image) in this process."""
    calls = {"load": 0, "images": 0}
    real_load, real_tokens = sem.load_tower, sem.SemanticTower.tokens

    def load(*args, **kwargs):
        calls["load"] += 1
        return real_load(*args, **kwargs)

    def tokens(self, images, batch_size=8):
        calls["images"] += len(images) if isinstance(images, list) else 1
        return real_tokens(self, images, batch_size)

    monkeypatch.setattr(sem, "load_tower", load)
    monkeypatch.setattr(sem.SemanticTower, "tokens", tokens)
    api._semantic_models.cache_clear()
    yield calls
    api._semantic_models.cache_clear()


@pytest.mark.parametrize("budget", [[], ["--size", "700"], ["--semantic-bytes", "300"]])
def test_batch_loads_the_tower_once_and_runs_it_once_per_image(runner, images, tmp_path, counted, budget):
    out = tmp_path / "out"
    r = runner.invoke(main, ["compress", str(images), "-o", str(out), "--semantic", "tiny", "-j", "1",
                             "--semantic-only", *budget])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["p0.smc", "p1.smc", "p2.smc"]
    # the rate search (--size, --semantic-bytes) tries many rates and kept sets on one set of tokens
    assert counted == {"load": 1, "images": 3}
    for p in out.iterdir():
        assert decode_tokens(p.read_bytes()).tokens.shape[1] == 192


def test_cuda_for_the_tower_is_refused_without_a_gpu(runner, images, tmp_path, counted):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    src = images / "p0.png"
    out = tmp_path / "x.smc"
    r = runner.invoke(main, ["compress", str(src), "-o", str(out), "--semantic-only", "--semantic", "tiny",
                             "--device", "cuda"])
    assert r.exit_code != 0 and "no CUDA device is available" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not out.exists() and counted["load"] == 0        # refused before the tower loads
    with pytest.raises(InvalidInputError, match="cuda"):
        semcodec.compress(src, semantic="tiny", semantic_only=True, device="cuda:0")
    with pytest.raises(InvalidInputError, match="cpu or cuda"):
        semcodec.compress(src, semantic="tiny", semantic_only=True, device="tpu")
    cal = tmp_path / "cal.safetensors"
    r = runner.invoke(main, ["calibrate", "--semantic", "tiny", "--images", str(images), "-o", str(cal),
                             "--device", "cuda"])
    assert r.exit_code != 0 and "no CUDA device is available" in r.output and not cal.exists()
    assert counted["load"] == 0


def test_device_cpu_gives_the_default_stream(images):
    src = images / "p1.png"
    assert semcodec.compress(src, semantic="tiny", semantic_only=True, size=600, device="cpu") == \
        semcodec.compress(src, semantic="tiny", semantic_only=True, size=600)


@pytest.mark.gpu
def test_tower_on_cuda_codes_its_tokens_and_decodes_on_the_cpu(images):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from semcodec.bitstream.container import SEMANTIC_LAYER, read_container

    src = images / "p2.png"
    image = Image.open(src).convert("RGB")
    stream = semcodec.compress(src, semantic="tiny", semantic_only=True, device="cuda")
    tower, coder = api._semantic_models("tiny", None)
    assert tower.device.type == "cuda"
    gpu_tokens = tower.tokens([image])[0]
    # the stream is a function of the tokens alone: those the GPU computed, coded on the CPU
    payload = coder.encode(gpu_tokens, api.DEFAULT_SEMANTIC_RATE, image_size=image.size)
    assert read_container(stream).layer(SEMANTIC_LAYER) == payload
    tower.to("cpu")
    assert float((gpu_tokens - tower.tokens([image])[0]).abs().max()) < 1e-3
    assert decode_tokens(stream).tokens.shape == (196, 192)              # decoded here, with no tower


def test_calibration_streams_with_a_progress_bar_only_on_a_terminal(runner, images, tmp_path, monkeypatch):
    """``calibrate`` with the photos let go after preprocessing gives the same statistics as batch tokens;
    the CLI draws no bar when stderr is not a terminal (CliRunner), and one with --progress."""
    tower = sem.load_tower("tiny")
    paths = sorted(images.glob("*.png"))
    done = []
    cal = calibrate(tower, paths, batch_size=2, progress=done.append)
    assert done == [2, 3] and cal.stats["num_images"] == 3
    t = torch.cat([tower.tokens([Image.open(p).convert("RGB")]) for p in paths]).double()
    assert np.allclose(cal.mean, t.mean((0, 1)).numpy(), atol=1e-5)
    out = tmp_path / "c.safetensors"
    r = runner.invoke(main, ["calibrate", "--semantic", "tiny", "--images", str(images), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "img/s" not in r.output and "calibrating" not in r.output
    r = runner.invoke(main, ["calibrate", "--semantic", "tiny", "--images", str(images), "-o", str(out), "-f",
                             "--progress", "--batch-size", "1"])
    assert r.exit_code == 0 and "calibrating tiny" in r.output and "3/3" in r.output
    assert load_calibration(out).stats["num_images"] == 3
