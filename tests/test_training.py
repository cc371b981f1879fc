"""Training: a few iterations run, checkpoint, resume, condition on layer 0 and export."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import TEST_DATA

from semcodec.layers.pixels.checkpoint import freeze_for_shipping, load_residual_checkpoint
from semcodec.errors import InvalidInputError
from semcodec.models.residual import ResidualConfig
from semcodec.training import TrainSettings, train


def test_train_resume_and_export(photos, tmp_path):
    run = tmp_path / "run"
    settings = TrainSettings(data=str(photos), run_dir=str(run), crop=64, batch_size=2, max_iterations=2, log_every=1)
    last = train(settings, ResidualConfig(N=8, M=8, lambdas=(0.01, 0.1), prior_channels=4), log=lambda m: None)
    assert load_residual_checkpoint(last)[1]["iterations"] == "2"
    settings.max_iterations = 3
    last = train(settings, log=lambda m: None)                      # resumes from run/last.safetensors
    _, meta = load_residual_checkpoint(last)
    assert meta["iterations"] == "3" and json.loads(meta["recipe"])["crop"] == 64
    history = json.loads(meta["history"])          # two calls with one recipe: one segment
    assert len(history) == 1 and history[0]["iterations"] == [0, 3] and history[0]["recipe"]["crop"] == 64
    # A call that trains nothing (e.g. only to export) keeps the recipe and the history as they are.
    last = train(TrainSettings(data=str(photos), run_dir=str(run), crop=64, lr=1e-3, max_iterations=3), log=lambda m: None)
    _, again = load_residual_checkpoint(last)
    assert again["recipe"] == meta["recipe"] and again["history"] == meta["history"]
    assert len((run / "log.jsonl").read_text().splitlines()) == 3
    shipped = freeze_for_shipping(last, tmp_path / "shipped.safetensors", "semcodec-x")
    model, _ = load_residual_checkpoint(shipped)
    assert model.entropy_bottleneck._quantized_cdf.numel() > 0


def test_conditioning_only_trains_just_the_prior(photos, tmp_path):
    start = TEST_DATA / "checkpoints" / "semcodec-test.safetensors"
    before, _ = load_residual_checkpoint(start)
    settings = TrainSettings(data=str(photos), run_dir=str(tmp_path / "run"), crop=64, batch_size=2, max_iterations=2,
                             semantic="tiny", conditioning_only=True)
    after, meta = load_residual_checkpoint(train(settings, resume_from=str(start), log=lambda m: None))
    assert after.has_semantic_prior("tiny")
    assert json.loads(meta["history"])[-1]["recipe"]["conditioning_only"] is True
    frozen = {k: v for k, v in after.state_dict().items() if not k.startswith("semantic_priors.")}
    for k, v in before.state_dict().items():
        if not k.startswith("entropy_bottleneck._"):
            assert (frozen[k] == v).all(), k


def test_refuses_kodak(tmp_path):
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    with pytest.raises(InvalidInputError, match="Kodak"):
        train(TrainSettings(data=str(kodak), run_dir=str(tmp_path / "r")), log=lambda m: None)


def test_training_data_that_is_not_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInputError, match=f"training data folder {tmp_path / 'none'} does not exist"):
        train(TrainSettings(data=str(tmp_path / "none"), run_dir=str(tmp_path / "r")), log=lambda m: None)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(InvalidInputError, match="is not a folder"):
        train(TrainSettings(data=str(tmp_path / "a.png"), run_dir=str(tmp_path / "r")), log=lambda m: None)


def test_random_batch_reports_where_each_crop_came_from():
    import random

    import torch

    from semcodec.training import random_batch

    images = [torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8) for _ in range(3)]
    batch, picks = random_batch(images, 16, 32, random.Random(1))
    assert batch.shape == (16, 3, 32, 32) and len(picks) == 16 and any(p.flipped for p in picks)
    for crop, p in zip(batch, picks):
        source = images[p.index].flip(-1) if p.flipped else images[p.index]
        assert torch.equal(crop, source[:, p.top:p.top + 32, p.left:p.left + 32].float() / 255)


def test_token_source_gives_each_crop_its_region_of_the_tower_input():
    """Training crops see the tokens of their whole image, placed like a coded image of that size."""
    import random

    import torch

    from semcodec.models.semantic import image_region, semantic_spec
    from semcodec.training import CropPick, TokenSource

    images = [torch.randint(0, 256, (3, 64, 128), dtype=torch.uint8)]
    source = TokenSource("tiny", (24, 24), random.Random(0))
    picks = [CropPick(0, 0, 0, 64, False), CropPick(0, 0, 64, 64, True)]
    cond = source.condition(images, picks)
    top, left, rh, rw = image_region(semantic_spec("tiny"), 128, 64)        # (0.25, 0, 0.5, 1)
    assert cond.region[0] == pytest.approx((top, left, rh, rw / 2))
    assert cond.region[1] == pytest.approx((top, left + rw / 2, rh, rw / 2))
    assert cond.tokens.shape[0] == 2 and not torch.equal(cond.tokens[0], cond.tokens[1])   # mirrored image


def test_rate_only_loss_skips_the_reconstruction():
    import torch

    from semcodec.models.residual import ResidualCodec
    from semcodec.training import rd_loss

    model = ResidualCodec(ResidualConfig(N=8, M=8, lambdas=(0.01, 0.1), prior_channels=4))
    x, level = torch.rand(2, 3, 64, 64), torch.tensor([0, 1])
    torch.manual_seed(0)                       # the same quantization noise in both passes
    full = rd_loss(model, x, level)
    torch.manual_seed(0)
    rate = rd_loss(model, x, level, rate_only=True)
    assert torch.allclose(full["bpp"], rate["bpp"]) and rate["loss"].item() == pytest.approx(rate["bpp"].mean().item())
    assert torch.isnan(rate["mse"]).all() and not torch.isnan(full["mse"]).any()


def _tiny_config() -> ResidualConfig:
    return ResidualConfig(N=8, M=8, lambdas=(0.01, 0.1), prior_channels=4)


def _poison_losses(monkeypatch, poisoned) -> list[int]:
    """Make ``rd_loss`` return a NaN loss (with a NaN gradient) on the calls for which ``poisoned(n)`` (n from 1)."""
    import semcodec.training as training

    real, calls = training.rd_loss, []

    def rd_loss(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls.append(1)
        if poisoned(len(calls)):
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(training, "rd_loss", rd_loss)
    return calls


def test_a_batch_with_a_non_finite_loss_is_skipped_not_applied(photos, tmp_path, monkeypatch):
    import torch

    calls = _poison_losses(monkeypatch, lambda call: call == 2)
    run = tmp_path / "run"
    settings = TrainSettings(data=str(photos), run_dir=str(run), crop=64, batch_size=2, max_iterations=2, log_every=1)
    model, meta = load_residual_checkpoint(train(settings, _tiny_config(), log=lambda m: None))
    assert meta["iterations"] == "2" and len(calls) == 3            # the poisoned batch did not count
    assert all(torch.isfinite(p).all() for p in model.parameters())
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [0, 1]


def test_training_that_keeps_diverging_stops_and_keeps_the_last_finite_checkpoint(photos, tmp_path, monkeypatch):
    import semcodec.training as training
    from semcodec.fsutil import file_digest
    from semcodec.errors import TrainingDivergedError

    run = tmp_path / "run"
    settings = TrainSettings(data=str(photos), run_dir=str(run), crop=64, batch_size=2, max_iterations=1)
    last = train(settings, _tiny_config(), log=lambda m: None)
    before = file_digest(last)
    _poison_losses(monkeypatch, lambda call: True)
    monkeypatch.setattr(training, "MAX_SKIPPED_IN_A_ROW", 3)
    settings.max_iterations = 5
    with pytest.raises(TrainingDivergedError, match="3 batches in a row"):
        train(settings, log=lambda m: None)
    assert file_digest(last) == before


def test_resuming_without_optimizer_state_warms_the_learning_rate_up_again(photos, tmp_path):
    from semcodec.training import _lr_at

    settings = TrainSettings(data=str(photos), run_dir=str(tmp_path / "run"), crop=64, batch_size=2,
                             warmup_iterations=10, log_every=1)
    assert _lr_at(settings, 5000, warmup_from=5000) == pytest.approx(_lr_at(settings, 5000) / 10)
    assert _lr_at(settings, 5009, warmup_from=5000) == pytest.approx(_lr_at(settings, 5009))
    # A checkpoint without Adam moments (as shipped): its first resumed step runs at a tenth of the scheduled rate.
    from semcodec.layers.pixels.checkpoint import save_residual_checkpoint

    model, _ = load_residual_checkpoint(TEST_DATA / "checkpoints" / "semcodec-test.safetensors")
    resumed_at = 5000
    start = tmp_path / "weights-only.safetensors"
    save_residual_checkpoint(model, start, metadata={"iterations": resumed_at})
    settings.max_iterations = resumed_at + 1
    messages = []
    train(settings, resume_from=str(start), log=messages.append)
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert record["lr"] == pytest.approx(_lr_at(settings, resumed_at) / 10)
    assert any("warms up again" in m for m in messages)


def test_anneal_decays_the_lr_over_the_calls_own_budget(photos, tmp_path):
    from semcodec.layers.pixels.checkpoint import save_residual_checkpoint
    from semcodec.training import _budget_used, _lr_at

    settings = TrainSettings(data=str(photos), run_dir=str(tmp_path / "run"), crop=64, batch_size=2, lr=1e-3,
                             lr_final=1e-5, warmup_iterations=1, log_every=1, anneal=True)
    with pytest.raises(InvalidInputError, match="give --hours or --iterations"):
        train(settings, log=lambda m: None)
    settings.max_hours = 2.0
    assert _budget_used(settings, 700, 1.5, 500, 1.0) == pytest.approx(0.25)             # half an hour of two
    settings.max_iterations = 600
    assert _budget_used(settings, 550, 1.5, 500, 1.0) == pytest.approx(0.5)              # the iterations end first
    assert _lr_at(settings, 10**6, budget_used=0.0) == pytest.approx(1e-3)
    assert _lr_at(settings, 10**6, budget_used=0.5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert _lr_at(settings, 10**6, budget_used=1.0) == pytest.approx(1e-5)
    # A resumed run far past --lr-decay-iterations still starts at --lr and ends near --lr-final.
    model, _ = load_residual_checkpoint(TEST_DATA / "checkpoints" / "semcodec-test.safetensors")
    start = tmp_path / "weights.safetensors"
    save_residual_checkpoint(model, start, metadata={"iterations": 200_000})
    settings.max_hours, settings.max_iterations = TrainSettings.max_hours, 200_004
    train(settings, resume_from=str(start), log=lambda m: None)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([_lr_at(settings, 10**6, budget_used=u) for u in (0, 0.25, 0.5, 0.75)])
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < 2e-4
    assert json.loads(load_residual_checkpoint(tmp_path / "run" / "last.safetensors")[1]["recipe"])["anneal"] is True


def test_train_cli_anneal_needs_a_budget(photos, tmp_path):
    from click.testing import CliRunner

    from semcodec.cli.main import main

    result = CliRunner().invoke(main, ["train", "--data", str(photos), "--run-dir", str(tmp_path / "run"), "--anneal"])
    assert result.exit_code != 0 and "--anneal decays the learning rate over this call's budget" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_train_refuses_a_device_torch_cannot_use(tmp_path):
    import torch
    from click.testing import CliRunner

    from semcodec.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = CliRunner().invoke(main, ["train", "--device", "cuda", "--data", str(tmp_path), "--run-dir",
                                       str(tmp_path / "run")])
    assert result.exit_code != 0 and "cannot train on device 'cuda'" in result.output
    assert not (tmp_path / "run").exists()


def test_train_cli_refuses_a_missing_or_file_data_folder_before_loading_a_model(tmp_path):
    from click.testing import CliRunner

    from semcodec.cli.main import main

    (tmp_path / "photo.png").write_bytes(b"")
    missing, a_file = tmp_path / "none", tmp_path / "photo.png"
    for data, message in ((missing, f"training data folder {missing} does not exist; pass --data DIR"),
                          (a_file, f"Directory '{a_file}' is a file")):                 # the second: click's check
        result = CliRunner().invoke(main, ["train", "--data", str(data), "--run-dir", str(tmp_path / "run")])
        assert result.exit_code == 2 and message in result.output
        assert not (tmp_path / "run").exists()


def test_train_cli_passes_the_lr_schedule_to_the_recipe_and_refuses_bad_ones(photos, tmp_path):
    from click.testing import CliRunner

    from semcodec.cli.main import main
    from semcodec.training import _lr_at

    start = TEST_DATA / "checkpoints" / "semcodec-test.safetensors"
    run = tmp_path / "run"
    args = ["train", "--data", str(photos), "--run-dir", str(run), "--resume-from", str(start), "--crop", "64",
            "--batch-size", "2", "--iterations", "1"]
    result = CliRunner().invoke(main, args + ["--lr-final", "2e-5", "--lr-decay-iterations", "1"])
    assert result.exit_code == 0, result.output
    recipe = json.loads(load_residual_checkpoint(run / "last.safetensors")[1]["recipe"])
    assert recipe["lr_final"] == 2e-5 and recipe["lr_decay_iterations"] == 1
    # Past the decay length, the schedule (after warm-up) sits at --lr-final: the way to anneal a resumed run.
    settings = TrainSettings(data="", run_dir="", lr_final=2e-5, lr_decay_iterations=1)
    assert _lr_at(settings, 5000) == pytest.approx(2e-5)
    for bad, message in ((["--lr-final", "1e-3"], "--lr-final must not exceed --lr"),
                         (["--lr-final", "0"], "'--lr-final': 0.0 is not in the range x>0"),
                         (["--lr", "nan"], "'--lr': nan is not a finite number"),
                         (["--lr", "inf"], "'--lr': inf is not a finite number"),
                         (["--hours", "nan"], "'--hours': nan is not a finite number"),
                         (["--threads", "-1"], "'--threads': -1 is not in the range x>=0"),
                         (["--batch-size", "0"], "'--batch-size': 0 is not in the range x>=1"),
                         (["--crop", "100"], "the crop side must be a multiple of 64"),
                         (["--crop", "0"], "'--crop': 0 is not in the range x>=64"),
                         (["--lr-decay-iterations", "0"], "'--lr-decay-iterations': 0 is not in the range x>=1"),
                         (["--export-to", str(tmp_path / "model.pt")], "name it .safetensors, not '.pt'"),
                         (["--export-to", str(tmp_path / "no" / "m.safetensors")], f"folder {tmp_path / 'no'} does not exist")):
        result = CliRunner().invoke(main, args + ["--run-dir", str(tmp_path / "bad")] + bad)
        assert result.exit_code != 0 and message in result.output
        assert not (tmp_path / "bad").exists()


def _train_one_step(photos, run, compile_loss: bool):
    settings = TrainSettings(data=str(photos), run_dir=str(run), crop=64, batch_size=2, max_iterations=1,
                             compile=compile_loss)
    last = train(settings, ResidualConfig(N=8, M=8, lambdas=(0.01, 0.1), prior_channels=4), log=lambda m: None)
    return load_residual_checkpoint(last)[0].state_dict()


@pytest.mark.slow
def test_compiled_training_takes_the_same_step(photos, tmp_path):
    """``--compile`` changes the kernels, not the arithmetic: one step from the same seed lands on the same weights."""
    eager = _train_one_step(photos, tmp_path / "eager", False)
    compiled = _train_one_step(photos, tmp_path / "compiled", True)
    for name, w in eager.items():
        assert torch.allclose(w, compiled[name], rtol=1e-4, atol=1e-6), name


def test_a_failing_compiler_is_a_clear_error(photos, tmp_path, monkeypatch):
    import torch._dynamo.exc

    def broken_compile(function):
        def run(*args, **kwargs):
            raise torch._dynamo.exc.BackendCompilerFailed(lambda: None, RuntimeError("no C++ compiler"), None)
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(InvalidInputError, match="train without --compile"):
        _train_one_step(photos, tmp_path / "run", True)
    assert not (tmp_path / "run").exists()      # a run that failed before its first checkpoint leaves no folder
    # From the shell: the flag reaches the training loop, and the failure is one line and a non-zero exit.
    from click.testing import CliRunner

    from semcodec.cli.main import main

    result = CliRunner().invoke(main, ["train", "--data", str(photos), "--run-dir", str(tmp_path / "cli"), "--crop", "64",
                                       "--batch-size", "2", "--iterations", "1", "--compile"])
    assert result.exit_code != 0 and "train without --compile" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "cli").exists()


def test_an_added_gain_level_keeps_every_rate_the_model_had_and_trains(photos, tmp_path):
    from semcodec.training import _with_level

    start = TEST_DATA / "checkpoints" / "semcodec-test.safetensors"
    before, _ = load_residual_checkpoint(start)
    lam = before.config.lambdas[-1] * 2
    grown = _with_level(before, lam, log=lambda m: None)
    assert grown.config.lambdas == (*before.config.lambdas, lam)
    assert grown.config.rate_range[1] == before.config.rate_range[1] + 1
    q = torch.linspace(*before.config.rate_range, 25)                  # the old knob, extrapolation included
    for key, g in before.gains(q).items():
        assert torch.allclose(grown.gains(q)[key], g, rtol=1e-5), key
    for what, bad in (("must exceed", before.config.lambdas[0]), ("must exceed", before.config.lambdas[-1] / 2)):
        with pytest.raises(InvalidInputError, match=what):
            _with_level(before, bad, log=lambda m: None)

    settings = TrainSettings(data=str(photos), run_dir=str(tmp_path / "run"), crop=64, batch_size=4, max_iterations=2,
                             add_level=lam, lr=1e-2, warmup_iterations=1)
    logged: list[str] = []
    after, meta = load_residual_checkpoint(train(settings, resume_from=str(start), log=logged.append))
    assert after.config.levels == before.config.levels + 1 and any("added gain level 2" in m for m in logged)
    assert json.loads(meta["history"])[-1]["recipe"]["add_level"] == lam
    assert not torch.equal(after.log_gain[-1], grown.log_gain[-1])     # the new level trained
    settings.max_iterations = 3                                        # resuming the run: the level is there already
    again, _ = load_residual_checkpoint(train(settings, log=lambda m: None))
    assert again.config.lambdas == after.config.lambdas


def test_a_model_grown_to_the_most_levels_codes_at_the_top_of_its_knob():
    from semcodec.models.config import RATE_KNOB_MAX
    from semcodec.layers.pixels.coder import ResidualCoder, image_to_tensor
    from semcodec.training import _with_level

    model, _ = load_residual_checkpoint(TEST_DATA / "checkpoints" / "semcodec-test.safetensors")
    while model.config.levels < 8:
        model = _with_level(model, model.config.lambdas[-1] * 2, log=lambda m: None)
    assert model.config.rate_range[1] == RATE_KNOB_MAX              # the payload's int16 knob, not 7 + 2
    with pytest.raises(InvalidInputError, match="at most 8 levels"):
        _with_level(model, model.config.lambdas[-1] * 2, log=lambda m: None)
    coder = ResidualCoder(model)
    image = torch.randint(0, 256, (48, 64, 3), dtype=torch.uint8).numpy()
    payload = coder.encode(image_to_tensor(image), model.config.rate_range[1] + 1)   # clamped to the top
    assert coder.decode(payload, 64, 48).shape == (48, 64, 3)
