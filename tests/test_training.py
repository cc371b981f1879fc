"""Training: a few iterations run, checkpoint, resume, condition on layer 0 and export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import TEST_DATA
from PIL import Image

from semcodec.checkpoints import freeze_for_shipping, load_residual_checkpoint
from semcodec.errors import InvalidInputError
from semcodec.models.residual import ResidualConfig
from semcodec.training import TrainSettings, train


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_train_resume_and_export(photos, tmp_path):
    run = tmp_path / "run"
    settings = TrainSettings(data=str(photos), run_dir=str(run), crop=64, batch_size=2, max_iterations=2, log_every=1)
    last = train(settings, ResidualConfig(N=8, M=8, lambdas=(0.01, 0.1), prior_channels=4), log=lambda m: None)
    assert load_residual_checkpoint(last)[1]["iterations"] == "2"
    settings.max_iterations = 3
    last = train(settings, log=lambda m: None)                      # resumes from run/last.safetensors
    _, meta = load_residual_checkpoint(last)
    assert meta["iterations"] == "3" and json.loads(meta["recipe"])["crop"] == 64
    assert len((run / "log.jsonl").read_text().splitlines()) == 3
    shipped = freeze_for_shipping(last, tmp_path / "shipped.safetensors", "semcodec-x")
    model, _ = load_residual_checkpoint(shipped)
    assert model.entropy_bottleneck._quantized_cdf.numel() > 0


def test_conditioning_only_trains_just_the_prior(photos, tmp_path):
    start = TEST_DATA / "checkpoints" / "semcodec-test.safetensors"
    before, _ = load_residual_checkpoint(start)
    settings = TrainSettings(data=str(photos), run_dir=str(tmp_path / "run"), crop=64, batch_size=2, max_iterations=2,
                             semantic="tiny", conditioning_only=True)
    after, _ = load_residual_checkpoint(train(settings, resume_from=str(start), log=lambda m: None))
    assert after.has_semantic_prior("tiny")
    frozen = {k: v for k, v in after.state_dict().items() if not k.startswith("semantic_priors.")}
    for k, v in before.state_dict().items():
        if not k.startswith("entropy_bottleneck._"):
            assert (frozen[k] == v).all(), k


def test_refuses_kodak(tmp_path):
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    with pytest.raises(InvalidInputError, match="Kodak"):
        train(TrainSettings(data=str(kodak), run_dir=str(tmp_path / "r")), log=lambda m: None)
