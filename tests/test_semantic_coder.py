"""Layer 0: calibration, SEM0 coder round trips, determinism, damaged payloads, budgets, tokens CLI."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semcodec.bitstream.container import RESIDUAL_LAYER, Chunk, Container, Header, write_container
from semcodec.errors import (
    CorruptStreamError,
    InvalidInputError,
    MissingLayerError,
    ModelMismatchError,
    ModelNotAvailableError,
    RateControlError,
    SemcodecError,
    TruncatedStreamError,
    UnsupportedVersionError,
)
from semcodec.layers.semantic import (
    Calibration,
    SemanticCoder,
    Tokens,
    calibrate,
    check_calibration,
    decode_tokens,
    find_calibration,
    padding_mask,
    semantic_only_stream,
)
from semcodec.layers.semantic.payload import RATE_MAX, pass_map

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cal():
    return Calibration.load(find_calibration("tiny"))


@pytest.fixture(scope="module")
def coder(cal):
    return SemanticCoder(cal)


@pytest.fixture(scope="module")
def tokens():
    """Tokens of the tiny tower for two small synthetic photos (not from any data set)."""
    from semcodec.models.semantic import load_tower

    tower = load_tower("tiny")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:96, 0:128]
    images = []
    for k in range(2):
        base = np.stack([np.sin(xx / (9 + 4 * k)) * 90, np.cos(yy / (7 + k)) * 80, (xx + yy) % 64 * 2], -1) + 120
        base = base + rng.normal(0, 12, base.shape)
        images.append(Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)))
    return tower.tokens(images)


def mse(a, b) -> float:
    return float(((a - b) ** 2).mean())


def test_shipped_calibration(cal):
    path = find_calibration("tiny")
    assert path == ROOT / "checkpoints" / "calibration-tiny.safetensors"
    assert cal.hash8 == hashlib.sha256(path.read_bytes()).digest()[:8]
    assert cal.model == "tiny" and cal.grid == (14, 14) and cal.token_dim == 192 and cal.layer == -2
    assert cal.metadata["num_images"] == "287" and len(cal.metadata["data_hash"]) == 64
    klt = cal.klt.astype(np.float64)
    assert np.allclose(klt.T @ klt, np.eye(192), atol=1e-5)
    assert np.all(np.diff(cal.variances) <= 0)


def test_calibration_round_trip(tmp_path):
    from semcodec.models.semantic import load_tower

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (50 + 10 * i, 70, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    c = calibrate(load_tower("tiny"), [*paths, tmp_path / "broken.png"], batch_size=3)
    assert c.stats["num_images"] == 4 and c.stats["skipped_images"] == 1
    out = c.save(tmp_path / "cal.safetensors")
    back = Calibration.load(out)
    assert back.hash8 == c.hash8 == hashlib.sha256(out.read_bytes()).digest()[:8]
    for name in ("position_mean", "klt", "variances", "log2_std_q", "log2_cstd_q", "alpha_q", "drop_alpha_q"):
        assert np.array_equal(getattr(back, name), getattr(c, name)), name
    assert back.metadata["model"] == "tiny" and back.metadata["preprocessing"] == "pad-square-224-openai"
    assert back.metadata["num_tokens"] == str(4 * 196) and back.metadata["semcodec_version"]
    assert c.to_bytes() == out.read_bytes()  # reproducible file (no timestamps)
    with pytest.raises(InvalidInputError):
        calibrate(load_tower("tiny"), paths[:1])


def test_find_calibration_errors(tmp_path, monkeypatch, cal):
    with pytest.raises(ModelNotAvailableError) as e:
        find_calibration("clip-l14-336.l-5")
    msg = str(e.value)
    assert "semcodec calibrate --semantic clip-l14-336.l-5" in msg and "checkpoints" in msg
    with pytest.raises(ModelMismatchError):
        find_calibration("tiny", hash8=b"\x01" * 8)
    (tmp_path / "calibration-tiny-other.safetensors").write_bytes(cal.to_bytes())
    monkeypatch.setenv("SEMCODEC_CALIBRATION_PATH", str(tmp_path))
    assert find_calibration("tiny") == tmp_path / "calibration-tiny-other.safetensors"
    with pytest.raises(ModelMismatchError):
        check_calibration(cal, "tiny", b"\0" * 8)
    with pytest.raises(ModelMismatchError):
        check_calibration(cal, "clip-b16", cal.hash8)
    check_calibration(cal, "tiny", cal.hash8, "pad-square-224-openai")


def test_padding_mask():
    grid = (14, 14)
    assert not padding_mask("pad-square", 224, grid, 300, 300).any()
    assert not padding_mask("resize-crop", 224, grid, 768, 512).any()
    land = padding_mask("pad-square", 224, grid, 768, 512).reshape(grid)
    # 3:2 landscape: the image spans input rows 37..186; rows 0-1 and 12-13 hold padding only.
    assert land[:, 0].tolist() == [True, True] + [False] * 10 + [True, True]
    assert (land == land[:, :1]).all()
    port = padding_mask("pad-square", 224, grid, 512, 768).reshape(grid)
    assert np.array_equal(port, land.T)
    assert padding_mask("pad-square", 224, grid, 1000, 10).reshape(grid)[:, 0].sum() == 12


def test_padding_tokens_use_their_own_statistics(coder, cal, tokens):
    t = tokens[0]  # a 128x96 image: rows 0 and 13 are padding
    size = (128, 96)
    pad = coder.padding(size)
    assert pad.sum() == 28
    payload = coder.encode(t, 60, image_size=size)
    d = coder.decode(payload, image_size=size)
    assert mse(d.full, t) < 0.2 * mse(torch.from_numpy(cal.position_mean), t)
    # The image size is part of the payload's context (it comes from the stream header).
    try:
        assert not torch.allclose(coder.decode(payload).full, d.full)
    except CorruptStreamError:
        pass
    dropped = coder.decode(coder.encode(t, 60, keep=100, image_size=size), image_size=size)
    kept = set(dropped.positions.tolist())
    assert sum(int(i) in kept for i in np.flatnonzero(pad)) < 10  # padding tokens are dropped first


def test_pass_map_covers_grid():
    p = pass_map(6, 6)
    assert p[0, 0] == 0 and p[2, 2] == 1 and p[0, 2] == 2 and p[1, 1] == 3 and p[0, 1] == 4
    assert set(np.unique(p)) == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("rate,keep", [(0, None), (12, None), (40, None), (40, 98), (90, 30), (160, None), (160, 1)])
def test_round_trip(coder, cal, tokens, rate, keep):
    t = tokens[0]
    payload = coder.encode(t, rate, keep=keep)
    d = coder.decode(payload)
    k = keep or 196
    assert d.full.shape == (196, 192) and d.tokens.shape == (k, 192) and d.positions.shape == (k,)
    assert d.grid == (14, 14) and d.model == "tiny" and d.rate == rate
    assert torch.equal(d.full[d.positions], d.tokens)
    assert torch.all(d.positions[1:] > d.positions[:-1])
    if rate == 0:
        assert len(payload) == 5
        assert torch.allclose(d.full, torch.from_numpy(cal.position_mean))
    if rate == 160 and keep is None:
        assert mse(d.full, t) < 1e-3 * mse(torch.from_numpy(cal.position_mean), t)


def test_bytes_grow_and_error_falls_with_rate(coder, tokens):
    t = tokens[1]
    sizes, errors = [], []
    for r in range(0, RATE_MAX + 1, 16):
        p = coder.encode(t, r)
        sizes.append(len(p))
        errors.append(mse(coder.decode(p).full, t))
    assert sizes == sorted(sizes) and len(set(sizes)) > 5
    assert all(b <= a * 1.02 for a, b in zip(errors, errors[1:]))


def test_weak_components_cost_nothing(coder, cal, tokens):
    t = tokens[0]
    rate = 30
    plan = coder._plan(rate, 0, np.arange(196), np.zeros(196, dtype=bool))
    assert 0 < plan.m < 192
    d = coder.decode(coder.encode(t, rate))
    coeff = (d.full.double().numpy() - cal.position_mean) @ cal.klt.astype(np.float64)
    assert np.abs(coeff[:, plan.m:]).max() < 1e-4  # never coded, reconstructed as the mean
    # The coded set is exactly the components with variance above θ (integer rule on log2_std_q).
    theta_q = 2 * int(cal.log2_std_q[0]) - rate
    assert plan.m == int(np.sum(2 * cal.log2_std_q.astype(int) > theta_q))


def test_keep_uses_fewer_bytes_and_fills_dropped(coder, tokens):
    t = tokens[0]
    full = coder.encode(t, 70)
    half = coder.encode(t, 70, keep=98)
    assert len(half) < len(full)
    d = coder.decode(half)
    dropped = np.setdiff1d(np.arange(196), d.positions.numpy())
    # Dropped tokens are predicted from neighbours: better than the position mean alone.
    pm = torch.from_numpy(coder.calibration.position_mean)
    assert mse(d.full[dropped], t[dropped]) < mse(pm[dropped], t[dropped])


def greedy_drop_order(coder, tokens, image_size, grid=None):
    """The drop order by its definition: every step re-predicts the whole grid from the kept image tokens and
    drops the kept token with the smallest error (O(N²); the coder updates only what a drop changes)."""
    coder = coder._on_grid(grid)
    pad = coder.padding(image_size)
    gh, gw = coder.grid
    ev = coder.calibration.variances.astype(np.float64)
    top = int(min(64, max(1, np.searchsorted(np.cumsum(ev) / ev.sum(), 0.95) + 1)))
    x = coder._coefficients(tokens, pad)[:, :top].reshape(gh, gw, top)
    img = ~pad.reshape(gh, gw)
    kept = np.ones((gh, gw))
    order = []
    for _ in range(coder.n - 1):
        pred = coder._neighbour_prediction(x, kept * img, exclude_self=True, comps=top)
        pred[~img] = 0.0
        err = ((x - pred) ** 2).sum(-1)
        err[kept == 0] = np.inf
        order.append(int(np.argmin(err)))
        kept.reshape(-1)[order[-1]] = 0
    return np.array(order + [int(np.flatnonzero(kept)[0])])


@pytest.mark.parametrize("size", [None, (768, 512), (300, 900), (64, 10)])
def test_drop_order_is_the_greedy_order(coder, tokens, size):
    rng = np.random.default_rng(5)
    smooth = np.cumsum(np.cumsum(rng.standard_normal((14, 14, 192)), 0), 1).reshape(196, 192) * 0.2
    for t in (tokens[0], torch.from_numpy(smooth)):
        order = coder.drop_order(t, image_size=size)
        assert np.array_equal(order, greedy_drop_order(coder, t, size))  # bit for bit: the same float arithmetic
        # keep=K keeps the last K of that order, also when the coder stops choosing after N - K drops
        payload = coder.encode(t, 40, keep=50, image_size=size)
        assert coder.decode(payload, image_size=size).positions.tolist() == sorted(order[-50:].tolist())


def test_encode_is_deterministic_and_decode_thread_independent(coder, tokens, tmp_path):
    t = tokens[1]
    payload = coder.encode(t, 75, keep=150)
    assert coder.encode(t, 75, keep=150) == payload
    here = coder.decode(payload).full.numpy().tobytes()
    (tmp_path / "p.bin").write_bytes(payload)
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from semcodec.layers.semantic import SemanticCoder, Calibration, find_calibration\n"
        "c = SemanticCoder(Calibration.load(find_calibration('tiny')))\n"
        "d = c.decode(open(sys.argv[1], 'rb').read())\n"
        "sys.stdout.buffer.write(d.full.numpy().tobytes())\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "p.bin")], capture_output=True, env=env,
                         cwd=ROOT, timeout=120, check=True).stdout
    assert out == here


def test_damaged_payloads_raise_only_semcodec_errors(coder, tokens):
    payload = coder.encode(tokens[0], 60, keep=120)
    for n in range(len(payload)):
        try:
            coder.decode(payload[:n])
        except SemcodecError:
            pass
    with pytest.raises(TruncatedStreamError):
        coder.decode(payload[:3])
    rng = np.random.default_rng(0)
    for _ in range(150):
        bad = bytearray(payload)
        for i in rng.integers(0, len(bad), size=rng.integers(1, 4)):
            bad[i] = int(rng.integers(0, 256))
        try:
            d = coder.decode(bytes(bad))
            assert d.full.shape == (196, 192) and torch.isfinite(d.full).all()
        except SemcodecError:
            pass
    with pytest.raises(UnsupportedVersionError):
        coder.decode(b"\x03" + payload[1:])
    with pytest.raises(CorruptStreamError, match="variable-grid payload"):
        coder.decode(b"\x02" + payload[1:])  # version 2 is the variable-grid form, not this calibration's
    with pytest.raises(CorruptStreamError):
        coder.decode(payload[:1] + bytes([RATE_MAX + 1]) + payload[2:])
    with pytest.raises(CorruptStreamError):
        coder.decode(payload[:3] + (0).to_bytes(2, "little") + payload[5:])  # K = 0
    with pytest.raises(CorruptStreamError):
        coder.decode(payload[:3] + (197).to_bytes(2, "little") + payload[5:])  # K > N
    nbytes = ((math.comb(196, 120) - 1).bit_length() + 7) // 8
    with pytest.raises(CorruptStreamError):
        coder.decode(payload[:5] + b"\xff" * nbytes + payload[5 + nbytes:])  # rank >= C(N, K)
    with pytest.raises(CorruptStreamError):
        coder.decode(payload + b"\0\0\0\0" * 4)  # trailing data
    with pytest.raises(InvalidInputError):
        coder.decode("text")


def test_budget_search(coder, tokens):
    t = tokens[0]
    last_err = float("inf")
    for budget in (60, 200, 600, 1500):
        p = coder.encode_to_budget(t, budget)
        assert len(p) <= budget
        err = mse(coder.decode(p).full, t)
        assert err <= last_err
        last_err = err
    with pytest.raises(RateControlError):
        coder.encode_to_budget(t, 3)
    with pytest.raises(InvalidInputError):
        coder.encode(t, RATE_MAX + 1)
    with pytest.raises(InvalidInputError):
        coder.encode(t, 10, keep=0)
    with pytest.raises(InvalidInputError):
        coder.encode(t[:10], 10)


def test_decode_tokens_from_stream(cal, tokens, tmp_path):
    stream = semantic_only_stream(tokens[0], cal, 128, 96, rate=50, keep=150)
    tok = decode_tokens(stream)
    assert tok.tokens.shape == (196, 192) and tok.positions.numel() == 150
    assert (tok.model, tok.preprocessing, tok.grid, tok.layer) == ("tiny", "pad-square-224-openai", (14, 14), -2)
    assert tok.image_size == (128, 96) and tok.calibration == cal.hash8.hex()
    budgeted = semantic_only_stream(tokens[0], cal, 128, 96, max_bytes=700)
    assert len(budgeted) <= 700
    path = tok.save(tmp_path / "t.safetensors")
    back = Tokens.load(path)
    assert torch.equal(back.tokens, tok.tokens) and torch.equal(back.positions, tok.positions)
    assert (back.model, back.grid, back.image_size) == (tok.model, tok.grid, tok.image_size)
    with pytest.raises(TruncatedStreamError):
        decode_tokens(stream[:-3])
    pixels_only = write_container(Container(
        Header(codec_model="semcodec-x", codec_checkpoint=b"\1" * 8, semantic_model="", calibration=bytes(8),
               preprocessing="", width=8, height=8, layers=(RESIDUAL_LAYER,)),
        (Chunk(RESIDUAL_LAYER, b"pixels"),)))
    with pytest.raises(MissingLayerError, match="no semantic layer"):
        decode_tokens(pixels_only)


def test_decode_tokens_loads_neither_the_tower_nor_the_pixel_codec(cal, tokens, tmp_path):
    stream = semantic_only_stream(tokens[0], cal, 64, 64, rate=30)
    (tmp_path / "s.smc").write_bytes(stream)
    script = (
        "import sys\n"
        "from semcodec.layers.semantic import decode_tokens\n"
        "t = decode_tokens(open(sys.argv[1], 'rb').read())\n"
        "assert t.tokens.shape == (196, 192)\n"
        "assert not any(m.startswith(('open_clip', 'semcodec.models.semantic')) for m in sys.modules), 'tower imported'\n"
        "assert not any(m.startswith(('compressai', 'semcodec.models.residual')) for m in sys.modules), 'codec'\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "s.smc")], cwd=ROOT, timeout=120, check=True)


def test_tokens_cli(cal, tokens, tmp_path):
    from click.testing import CliRunner

    from semcodec.cli.main import SemcodecGroup
    from semcodec.cli.semantic import tokens as tokens_cmd

    group = SemcodecGroup(commands={"tokens": tokens_cmd})
    src = tmp_path / "photo.smc"
    src.write_bytes(semantic_only_stream(tokens[1], cal, 64, 64, rate=40))
    r = CliRunner().invoke(group, ["tokens", str(src)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "photo.tokens.safetensors"
    assert Tokens.load(out).tokens.shape == (196, 192)
    r = CliRunner().invoke(group, ["tokens", str(src)])
    assert r.exit_code == 2 and "--force" in r.output
    assert CliRunner().invoke(group, ["tokens", str(src), "--force"]).exit_code == 0
    r = CliRunner().invoke(group, ["tokens", "-", "-o", "-"], input=src.read_bytes())
    assert r.exit_code == 0 and r.stdout_bytes[:8] != b""
    bad = tmp_path / "bad.smc"
    bad.write_bytes(b"hello world")
    r = CliRunner().invoke(group, ["tokens", str(bad), "-o", str(tmp_path / "o.safetensors")])
    assert r.exit_code == 3 and "not a semcodec stream" in r.output
    r = CliRunner().invoke(group, ["tokens", str(tmp_path / "missing.smc")])
    assert r.exit_code == 2
    r = CliRunner().invoke(group, ["tokens", str(src), "-o", str(tmp_path / "x.safetensors"),
                                   "--calibration", str(tmp_path / "nope.safetensors")])
    assert r.exit_code == 4 and "cannot read calibration" in r.output


# A SEM0 payload made with the shipped tiny calibration (hash below): it must keep decoding to the
# same tokens. A change of the payload format or of the shipped calibration changes it (and needs a
# payload version bump or a new calibration hash, see docs/semantic.md).
GOLDEN_CALIBRATION = "fd44100a78b7c2d7"
GOLDEN_PAYLOAD = bytes.fromhex(
    "011803960088d3d4c2c7cb73c035df86e5ea311aea1b9e2feab7aec4704e3428a5d38771fbecf5233c90e18be565327a9c78"
    "526c90c910cfc961d85da5eb57b41a181c1e549b3dede5b97d512d9b7cebc517ad84a6b644483a031136ed916dd018f518b7"
    "50fcb63ce9ba8712bc38bef2f54623e1adf26b00e991d5ba39a76d5cfc2c355e402b722be0e42b022699231c933646682b97"
    "a29329aff651a33147ea244a70793e80acf669544146db3604c0944a2a1b6da6fef9")


def test_golden_payload(cal, coder):
    assert cal.hash8.hex() == GOLDEN_CALIBRATION
    d = coder.decode(GOLDEN_PAYLOAD, image_size=(768, 512))
    assert (d.rate, d.positions.numel()) == (24, 150)
    full = d.full.double()
    assert float(full.sum()) == pytest.approx(572.732, abs=2e-3)
    assert float((full ** 2).sum()) == pytest.approx(35361.567, abs=2e-2)
    assert coder.encode(cal.random_tokens(seed=7), 24, keep=150, image_size=(768, 512)) == GOLDEN_PAYLOAD
