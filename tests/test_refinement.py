"""Encoder effort (semcodec.layers.pixels.refine): refined latents code valid streams that cost no more than effort 0's,
deterministically, with z refined on its own, with the semantic condition, rate targets and devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import semcodec
import semcodec.layers.pixels.refine as refine
from semcodec.api import compress_image, load_codec
from semcodec.errors import InvalidInputError
from semcodec.layers.pixels.refine import Latents, refine_latents
from semcodec.layers.pixels.coder import image_to_tensor

from helpers import SAMPLE, pixels_digest, pixels_digest_in_another_process

#: A small crop of the sample photo (96 × 128): a few seconds of refinement with the test models.
CROP = np.ascontiguousarray(np.asarray(Image.open(SAMPLE).convert("RGB"))[100:196, 160:288])
#: A knob of the test models that codes more than zeros (at q ≤ 1 the random models code all zeros).
Q = 1.5


@pytest.fixture
def few_iterations(monkeypatch):
    """Effort levels of a few iterations each, so that API tests take seconds."""
    monkeypatch.setattr(refine, "EFFORT_ITERATIONS", (0, 6, 12, 18))


def true_cost(coder, payload: bytes, pixels: np.ndarray, q: float, semantic=None) -> float:
    """What the refinement minimizes, measured independently: bits per pixel of the payload + λ(q) · MSE of
    the image the normal decoder makes of it."""
    height, width = pixels.shape[:2]
    decoded = coder.decode(payload, width, height, semantic).astype(np.float64)       # (H, W, 3) as decompress
    return len(payload) * 8 / (width * height) + coder.model.rd_lambda(q) * np.mean((decoded - pixels) ** 2)


@pytest.mark.parametrize("model", ["semcodec-test", "semcodec-test-ctx"])
def test_refined_latents_decode_and_cost_less_than_effort_0(test_codec, model):
    coder = load_codec(model).coder
    x = image_to_tensor(CROP)
    y = coder.analyze(x)
    plain = coder.encode_analyzed(y, Q)
    evaluations = []
    latents = refine_latents(coder, x, y, Q, 24, evaluate_at=[8, 16, 24],
                             on_evaluation=lambda e, _: evaluations.append(e))
    refined = latents.encode(coder, Q)
    # The plain latents code exactly the effort-0 stream, and are the first candidate.
    assert Latents.analyzed(coder, y, Q).encode(coder, Q) == plain
    assert [e.iteration for e in evaluations] == [0, 8, 16, 24]
    assert evaluations[0].bits == len(plain) * 8
    # The normal decoder decodes the refined stream, and its true cost is the lowest evaluated one: below effort 0's.
    cost = true_cost(coder, refined, CROP, Q)
    assert cost == pytest.approx(min(e.cost for e in evaluations), rel=1e-9)
    assert cost < true_cost(coder, plain, CROP, Q)
    assert refined != plain


def test_refinement_is_deterministic_and_refines_z_itself(test_codec, monkeypatch):
    # The random test model's z moves across a rounding boundary within 24 iterations only at larger steps.
    monkeypatch.setattr(refine, "LEARNING_RATE", ((0.2, 0.2),) * 2)
    coder = load_codec(test_codec).coder
    x = image_to_tensor(CROP)
    y = coder.analyze(x)
    a, b = (refine_latents(coder, x, y, Q, 24) for _ in range(2))
    assert torch.equal(a.y, b.y) and torch.equal(a.z, b.z)
    assert a.encode(coder, Q) == b.encode(coder, Q)
    # Another seed draws other rounding noise: the seed is what makes runs repeat.
    c = refine_latents(coder, x, y, Q, 24, seed=1)
    assert not (torch.equal(a.y, c.y) and torch.equal(a.z, c.z))
    # z is a variable of its own: its symbols are not those h_a would give the refined y.
    recomputed = coder.latents(a.y / coder.model.gains(torch.tensor([Q]))["y"], Q)[1]
    assert not np.array_equal(coder._quantize_z(a.z)[0], coder._quantize_z(recomputed)[0])
    # Through the API: identical bytes twice.
    monkeypatch.setattr(refine, "EFFORT_ITERATIONS", (0, 6, 12, 18))
    assert (semcodec.compress(CROP, quality=100, model=test_codec, effort=2)
            == semcodec.compress(CROP, quality=100, model=test_codec, effort=2))


def test_never_worse_than_effort_0_even_when_every_step_overshoots(test_codec, monkeypatch):
    monkeypatch.setattr(refine, "LEARNING_RATE", ((50.0, 50.0),) * 2)
    coder = load_codec(test_codec).coder
    x = image_to_tensor(CROP)
    y = coder.analyze(x)
    evaluations = []
    latents = refine_latents(coder, x, y, Q, 12, on_evaluation=lambda e, _: evaluations.append(e))
    assert min(e.cost for e in evaluations[1:]) > evaluations[0].cost      # every refined iterate is worse...
    assert latents.encode(coder, Q) == coder.encode_analyzed(y, Q)        # ...so the plain stream is kept


def test_every_level_costs_no_more_than_effort_0(test_codec, few_iterations):
    """Every level keeps its best iterate by the true cost, the plain latents included."""
    from semcodec.bitstream.container import RESIDUAL_LAYER, read_container

    coder = load_codec(test_codec).coder
    costs = []
    for effort in range(4):
        stream = semcodec.compress(CROP, quality=100, model=test_codec, semantic=False, effort=effort)
        costs.append(true_cost(coder, read_container(stream).layer(RESIDUAL_LAYER), CROP, coder.quality_range[1]))
    assert max(costs[1:]) <= costs[0]
    assert min(costs[1:]) < costs[0]


def test_the_cost_stays_finite_in_the_tails(test_codec):
    """The test checkpoints (like the shipped fp16 one) store the entropy bottleneck's likelihood bound as 0:
    a latent far in a tail has likelihood 0, and the cost bounds it (1e-9) instead of becoming infinite."""
    coder = load_codec(test_codec).coder
    assert coder.model.entropy_bottleneck.likelihood_lower_bound.bound.item() == 0
    x = image_to_tensor(CROP)
    start = Latents.analyzed(coder, coder.analyze(x), Q)
    far = Latents(start.y + 1e4, start.z + 1e4, start.rate)
    search = refine._Search(coder, x, far, Q, None, torch.device("cpu"), 0)
    assert torch.all(search.z == search.z_max)                  # z is kept inside its coding tables
    cost = search.cost(0.1)
    assert torch.isfinite(cost)
    assert all(torch.isfinite(g).all() for g in torch.autograd.grad(cost, [search.y, search.z]))


def test_refinement_with_the_semantic_condition(test_codec, few_iterations):
    from semcodec.bitstream.container import RESIDUAL_LAYER, read_container
    from semcodec.layers.pixels.payload import residual_is_conditioned

    plain = semcodec.compress(CROP, quality=100, model="semcodec-test-cond", semantic="tiny")
    refined = semcodec.compress(CROP, quality=100, model="semcodec-test-cond", semantic="tiny", effort=1)
    assert residual_is_conditioned(read_container(refined).layer(RESIDUAL_LAYER))
    assert refined != plain
    assert semcodec.decompress(refined).size == (CROP.shape[1], CROP.shape[0])


def test_refinement_with_a_rate_target(test_codec, few_iterations):
    target = 900
    r = compress_image(CROP, size=target, model=test_codec, semantic=False, effort=1)
    assert abs(len(r.data) - target) <= 0.02 * target
    assert semcodec.decompress(r.data).size == (CROP.shape[1], CROP.shape[0])
    r = compress_image(CROP, bpp=0.6, model=test_codec, semantic=False, effort=1, max_size=True)
    assert len(r.data) * 8 / CROP.shape[0] / CROP.shape[1] <= 0.6


def test_progress_and_devices(test_codec, few_iterations):
    calls = []
    compress_image(CROP, quality=100, model=test_codec, effort=2, device="cpu",
                   progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 12) for i in range(1, 13)]
    with pytest.raises(InvalidInputError, match="device"):
        semcodec.compress(CROP, model=test_codec, effort=1, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="no CUDA device"):
            semcodec.compress(CROP, model=test_codec, effort=1, device="cuda")


def test_the_command_line_takes_a_device(runner, test_codec, few_iterations, tmp_path):
    from semcodec.cli.main import main

    Image.fromarray(CROP).save(tmp_path / "crop.png")
    r = runner.invoke(main, ["compress", str(tmp_path / "crop.png"), "-e", "2", "--device", "cpu", "--model", test_codec])
    assert r.exit_code == 0, r.output
    assert "effort 2" not in r.stderr                                    # no bar: stderr is not a terminal
    assert semcodec.decompress(tmp_path / "crop.smc").size == (CROP.shape[1], CROP.shape[0])
    r = runner.invoke(main, ["compress", str(tmp_path / "crop.png"), "-e", "2", "--progress", "-f", "--model", test_codec])
    assert r.exit_code == 0 and "effort 2" in r.stderr and "/12" in r.stderr          # asked for: a bar (of 12)
    r = runner.invoke(main, ["compress", str(tmp_path / "crop.png"), "-o", str(tmp_path / "x.smc"), "-e", "1",
                             "--device", "nonsense", "--model", test_codec])
    assert r.exit_code != 0 and "device" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "x.smc").exists()


@pytest.mark.gpu
def test_a_stream_refined_on_cuda_decodes_bit_exactly_on_the_cpu(test_codec, few_iterations, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    data = semcodec.compress(SAMPLE, quality=100, model="semcodec-test-ctx", effort=3, device="cuda")
    assert data != semcodec.compress(SAMPLE, quality=100, model="semcodec-test-ctx")
    stream = tmp_path / "cuda.smc"
    stream.write_bytes(data)
    assert pixels_digest_in_another_process(stream) == pixels_digest(semcodec.decompress(data))
