"""The checkerboard context model: what it changes, how it codes, how it trains."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import semcodec
from semcodec.bitstream.container import RESIDUAL_LAYER, Container, read_container, write_container
from semcodec.layers.pixels.checkpoint import load_residual_checkpoint
from semcodec.errors import CorruptStreamError, InvalidInputError, SemcodecError
from semcodec.models.residual import ResidualCodec, ResidualConfig
from semcodec.models.transforms import checkerboard_anchors
from semcodec.layers.pixels.coder import ResidualCoder, pad_to_alignment, tensor_to_image
from semcodec.training import TrainSettings, train

from helpers import SAMPLE, TEST_DATA, pixels_digest, pixels_digest_in_another_process

CTX_MODEL = "semcodec-test-ctx"


def _random_context_model(seed: int = 0) -> ResidualCodec:
    torch.manual_seed(seed)
    model = ResidualCodec(ResidualConfig(N=16, M=24, lambdas=(0.005, 0.05), context="checkerboard")).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.context.fuse[-1].weight, std=0.1)
    return model


def test_unknown_context_is_refused():
    with pytest.raises(ValueError, match="context"):
        ResidualConfig(context="serial")


def test_context_corrects_only_the_non_anchors():
    model = _random_context_model()
    params = torch.randn(1, 48, 6, 7)                               # (1, 2M, h, w)
    y_hat = torch.randn(1, 24, 6, 7)                                # (1, M, h, w)
    out = model.context_parameters(params, y_hat)
    anchors = checkerboard_anchors((6, 7)).expand_as(params)
    assert torch.equal(out[anchors], params[anchors])
    assert not torch.allclose(out[~anchors], params[~anchors])
    # The non-anchors' own values never enter: changing them changes nothing.
    other = torch.where(checkerboard_anchors((6, 7)), y_hat, torch.randn_like(y_hat))
    assert torch.equal(model.context_parameters(params, other), out)
    # An untrained context starts neutral: the model codes like the one without it.
    fresh = ResidualCodec(ResidualConfig(N=16, M=24, lambdas=(0.005, 0.05), context="checkerboard"))
    assert torch.equal(fresh.context_parameters(params, y_hat), params)


def test_the_coder_decodes_what_the_rounded_training_path_reconstructs():
    """Two passes (anchors, then the rest with their corrected parameters) give the reconstruction and,
    within the range coder's overhead, the size that ``code_latent(..., "round")`` computes."""
    model = _random_context_model()
    coder = ResidualCoder(model)
    x = torch.rand(1, 3, 70, 90)
    for q in (0.0, 1.0):
        payload = coder.encode(x, q)
        x_hat = coder.decode(payload, 90, 70)
        with torch.no_grad():
            out = model.code_latent(model.g_a(pad_to_alignment(x)), model.gains(torch.tensor([q])),
                                    quantization="round")
        expected = tensor_to_image(out.x_hat[..., :70, :90])
        assert np.abs(x_hat.astype(int) - expected.astype(int)).max() <= 1      # float rounding: one level
        assert abs(len(payload) - out.bits().item() / 8) < 0.05 * len(payload) + 12


def test_context_streams_round_trip_with_and_without_layer_0(test_codec, tmp_path):
    """The shipped-format path end to end, decoded in another process with one thread."""
    streams = {"cond": semcodec.compress(SAMPLE, quality=60, model=CTX_MODEL, semantic="tiny"),
               "plain": semcodec.compress(SAMPLE, quality=60, model=CTX_MODEL, semantic=False)}
    for name, data in streams.items():
        image = semcodec.decompress(data)
        assert image.size == Image.open(SAMPLE).size
        path = tmp_path / f"{name}.smc"
        path.write_bytes(data)
        assert pixels_digest_in_another_process(path) == pixels_digest(image)


def test_a_damaged_anchor_pass_is_detected(test_codec):
    """A flipped bit in the anchors' symbols changes the non-anchors' parameters: the digest catches it
    (or the range decoder does), behind a valid CRC."""
    data = semcodec.compress(SAMPLE, quality=60, model=CTX_MODEL, semantic=False)
    c = read_container(data)
    payload = bytearray(c.layer(RESIDUAL_LAYER))
    z_and_anchors_start = 7 + 40                       # past the prefix and into the first words
    payload[z_and_anchors_start] ^= 0x10
    damaged = write_container(Container(c.header, (type(c.chunks[0])(RESIDUAL_LAYER, bytes(payload)),)))
    with pytest.raises(SemcodecError):
        semcodec.decompress(damaged)


def test_training_adds_a_neutral_context_and_context_only_trains_just_it(photos, tmp_path):
    start = TEST_DATA / "checkpoints" / "semcodec-test.safetensors"
    before, _ = load_residual_checkpoint(start)
    settings = TrainSettings(data=str(photos), run_dir=str(tmp_path / "run"), crop=64, batch_size=2, max_iterations=2,
                             context="checkerboard", context_only=True, lr=1e-2, warmup_iterations=1)
    after, meta = load_residual_checkpoint(train(settings, resume_from=str(start), log=lambda m: None))
    assert after.config.context == "checkerboard"
    assert json.loads(meta["history"])[-1]["recipe"]["context_only"] is True
    state = after.state_dict()
    for k, v in before.state_dict().items():
        if not k.startswith("entropy_bottleneck._"):
            assert torch.equal(state[k], v), k
    assert state["context.fuse.2.weight"].abs().sum() > 0          # trained away from its zero start
    # Resuming the run keeps the context (no flag needed).
    settings = TrainSettings(data=str(photos), run_dir=str(tmp_path / "run"), crop=64, batch_size=2, max_iterations=3)
    again, _ = load_residual_checkpoint(train(settings, log=lambda m: None))
    assert again.config.context == "checkerboard"


def test_context_only_is_refused_where_it_cannot_apply(photos, tmp_path):
    start = str(TEST_DATA / "checkpoints" / "semcodec-test.safetensors")
    with pytest.raises(InvalidInputError, match="--context checkerboard"):
        train(TrainSettings(data=str(photos), run_dir=str(tmp_path / "a"), crop=64, max_iterations=1,
                            context_only=True), resume_from=start, log=lambda m: None)
    with pytest.raises(InvalidInputError, match="pick one"):
        train(TrainSettings(data=str(photos), run_dir=str(tmp_path / "b"), crop=64, max_iterations=1,
                            semantic="tiny", conditioning_only=True, context="checkerboard", context_only=True),
              resume_from=start, log=lambda m: None)
    assert not (tmp_path / "a" / "last.safetensors").exists() and not (tmp_path / "b" / "last.safetensors").exists()


def test_a_context_stream_refuses_a_model_that_computes_other_parameters(test_codec, monkeypatch):
    """The digest covers the non-anchors' corrected scales too."""
    data = semcodec.compress(SAMPLE, quality=60, model=CTX_MODEL, semantic=False)
    from semcodec.api import clear_codec_cache, load_codec

    coder = load_codec(CTX_MODEL).coder
    with torch.no_grad():
        coder._parameter_path.context.fuse[-1].bias.add_(0.5)
    try:
        with pytest.raises(CorruptStreamError, match="do not match the digest its encoder stored"):
            semcodec.decompress(data)
    finally:
        clear_codec_cache()


def test_train_cli_adds_the_context_and_refuses_an_unknown_one(photos, tmp_path):
    from click.testing import CliRunner

    from semcodec.cli.main import main

    start = TEST_DATA / "checkpoints" / "semcodec-test.safetensors"
    args = ["train", "--data", str(photos), "--resume-from", str(start), "--crop", "64", "--batch-size", "2",
            "--iterations", "1"]
    result = CliRunner().invoke(main, args + ["--run-dir", str(tmp_path / "run"), "--context", "checkerboard",
                                              "--context-only"])
    assert result.exit_code == 0, result.output
    model, meta = load_residual_checkpoint(tmp_path / "run" / "last.safetensors")
    assert model.config.context == "checkerboard" and json.loads(meta["recipe"])["context_only"] is True
    result = CliRunner().invoke(main, args + ["--run-dir", str(tmp_path / "bad"), "--context", "serial"])
    assert result.exit_code != 0 and "serial" in result.output
    assert not (tmp_path / "bad").exists()


def test_shipped_checkpoints_fit_16_mib_and_match_their_registered_architecture():
    """Every file in checkpoints/ travels (≤ 16 MiB); a registered model's checkpoint has the registry's config."""
    from semcodec.models.registry import REPO_CHECKPOINTS, codec_models

    for path in REPO_CHECKPOINTS.glob("*.safetensors"):
        assert path.stat().st_size <= 16 * 2**20, path
    for name, entry in codec_models().items():
        path = REPO_CHECKPOINTS / f"{name}.safetensors"
        if path.exists():
            assert load_residual_checkpoint(path)[0].config == entry.config, name
