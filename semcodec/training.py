"""Training of the residual codec: random crops, RD loss over a set of λ, resumable.

The loop is built for a CPU budget (see DESIGN.md): it runs in the background,
writes ``last.safetensors`` in its run folder at least every ``checkpoint_minutes``
(atomically), appends one JSON line per logging step to ``log.jsonl`` and keeps an
hourly snapshot for the learning curve. A run resumes from its own
``last.safetensors`` (weights and Adam moments) or from a shipped checkpoint
(weights only).

Loss per image ``b`` with its level ``l_b`` (uniformly drawn):
``R_b + λ_{l_b} · 255² · MSE_b`` where ``R_b`` is the estimated bits per pixel.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .batch import IMAGE_SUFFIXES, files_in
from .layers.pixels.checkpoint import CDF_BUFFERS, load_residual_checkpoint, save_residual_checkpoint
from .errors import InvalidInputError, TrainingDivergedError
from .imageio import load_rgb
from .models.residual import ResidualCodec, ResidualConfig, SemanticCondition
from .models.transforms import SemanticPrior
from .layers.pixels.payload import ALIGN

#: Training stops (without writing the diverged weights) after this many skipped updates in a row.
MAX_SKIPPED_IN_A_ROW = 100


@dataclass
class TrainSettings:
    """Knobs of one training run (stored in the checkpoint metadata as the recipe)."""

    data: str
    run_dir: str
    crop: int = 128
    batch_size: int = 8
    lr: float = 5e-4
    lr_final: float = 1e-4
    lr_decay_iterations: int = 150_000
    warmup_iterations: int = 1000
    aux_lr: float = 1e-3
    #: Stop at this iteration count (counted from 0, so a resumed run goes on to it); None: no limit.
    max_iterations: int | None = None
    #: Stop after this many hours of this call's training; None: no limit.
    max_hours: float | None = None
    checkpoint_minutes: float = 8.0
    log_every: int = 50
    seed: int = 0
    threads: int = 0
    #: Semantic tower whose decoded tokens condition the entropy model (None: pixels only).
    semantic: str | None = None
    #: Train only that tower's semantic prior, everything else frozen.
    conditioning_only: bool = False
    #: Give the model this spatial context ("checkerboard") if it has none yet (None: keep the model's).
    context: str | None = None
    #: Train only the context model, everything else frozen.
    context_only: bool = False
    #: Fraction of batches trained without layer 0 (so one model serves both kinds of streams).
    condition_dropout: float = 0.5
    #: Layer-0 rate indices drawn uniformly for the simulated decoded tokens.
    semantic_rates: tuple[int, int] = (24, 96)
    #: Decay the lr from ``lr`` to ``lr_final`` over this call's own budget (``max_hours`` / ``max_iterations``,
    #: whichever ends first) instead of over ``lr_decay_iterations`` counted from iteration 0: a warm restart
    #: that ends annealed however many iterations per second the machine runs.
    anneal: bool = False
    #: torch device that trains ("cpu", "cuda", "cuda:1", ...); checkpoints are stored device-free.
    device: str = "cpu"
    #: Append a gain level trained at this λ above the model's top level (see :func:`_with_level`).
    add_level: float | None = None
    #: Run the loss (forward and backward) through torch.compile: fused elementwise kernels, after a
    #: one-off compilation (about a minute on 2 CPU cores; needs a C++ compiler on the CPU).
    compile: bool = False


def load_training_images(folder: str | Path, min_side: int) -> list[torch.Tensor]:
    """Decode every image of ``folder`` once into memory as (3, H, W) uint8 tensors.

    Raises:
        InvalidInputError: ``folder`` is missing, is the Kodak evaluation set, or holds no usable image.
    """
    paths = files_in(folder, IMAGE_SUFFIXES, role="training data folder")
    if "kodak" in str(Path(folder).resolve()).lower():
        raise InvalidInputError("refusing to train on Kodak: it is the evaluation set")
    images = []
    for p in paths:
        a = load_rgb(p)                                           # (H, W, 3) uint8, as the encoder reads it
        if min(a.shape[:2]) >= min_side:
            images.append(torch.from_numpy(a).permute(2, 0, 1))
    if not images:
        raise InvalidInputError(f"no training images of at least {min_side}px found in {folder}")
    return images


@dataclass(frozen=True)
class CropPick:
    """Where a training crop came from: image index, top-left corner, side and horizontal flip."""

    index: int
    top: int
    left: int
    size: int
    flipped: bool


def random_batch(images: list[torch.Tensor], batch_size: int, crop: int,
                 rng: random.Random) -> tuple[torch.Tensor, list[CropPick]]:
    """(B, 3, crop, crop) float batch in [0, 1] of random crops with random horizontal flips, and their picks."""
    out = torch.empty(batch_size, 3, crop, crop)
    picks = []
    for i in range(batch_size):
        index = rng.randrange(len(images))
        im = images[index]
        _, H, W = im.shape
        top, left = rng.randrange(H - crop + 1), rng.randrange(W - crop + 1)
        flipped = rng.random() < 0.5
        if flipped:    # the crop of the mirrored image at (top, left)
            im = im.flip(-1)
        out[i] = im[:, top:top + crop, left:left + crop].float() / 255.0
        picks.append(CropPick(index, top, left, crop, flipped))
    return out, picks


class TokenSource:
    """Decoded layer-0 tokens for training crops, exactly as a decoder would see them.

    As at coding time, the tower sees the whole (mirrored, if the crop is) image with
    its preprocessing; the tokens are coded with the calibrated layer-0 coder at a
    random rate and decoded again, and each crop gets the region of the tower input it
    covers, so the prior learns at the scale it is used at. Tower outputs are cached
    per image and flip; the coding at a random rate is redone every time.
    """

    def __init__(self, name: str, rates: tuple[int, int], rng: random.Random):
        from .models.semantic import load_tower
        from .layers.semantic import coder_for, find_calibration, load_calibration

        self.tower = load_tower(name)
        self.coder = coder_for(load_calibration(find_calibration(self.tower.spec.name)))
        self.name, self.rates, self.rng = self.tower.spec.name, rates, rng
        self._tokens: dict[tuple[int, bool], torch.Tensor] = {}

    @property
    def token_dim(self) -> int:
        return self.tower.spec.token_dim

    def _image_tokens(self, images: list[torch.Tensor], index: int, flipped: bool) -> torch.Tensor:
        """Tower tokens (N, D) of one training image (mirrored or not), cached."""
        key = (index, flipped)
        if key not in self._tokens:
            im = images[index].flip(-1) if flipped else images[index]
            pil = Image.fromarray(im.permute(1, 2, 0).numpy())
            self._tokens[key] = self.tower.tokens([pil])[0]
        return self._tokens[key]

    @torch.no_grad()
    def condition(self, images: list[torch.Tensor], picks: list[CropPick],
                  device: torch.device | str = "cpu") -> SemanticCondition:
        """Decoded tokens (B, N, D) on ``device`` of each crop's image, with each crop's region of the tower input."""
        from .models.semantic import box_region

        decoded, regions = [], []
        for pick in picks:
            _, H, W = images[pick.index].shape
            tokens = self._image_tokens(images, pick.index, pick.flipped)
            payload = self.coder.encode(tokens, self.rng.randint(*self.rates), image_size=(W, H))
            decoded.append(self.coder.decode(payload, image_size=(W, H)).full)
            regions.append(box_region(self.tower.spec, W, H, pick.top, pick.left, pick.size, pick.size))
        return SemanticCondition(model=self.name, tokens=torch.stack(decoded).float().to(device),
                                 grid=tuple(self.coder.grid), region=regions)


def rd_loss(model: ResidualCodec, x: torch.Tensor, level: torch.Tensor,
            semantic: SemanticCondition | None = None, rate_only: bool = False) -> dict[str, torch.Tensor]:
    """Rate–distortion loss of a batch; per-image λ from its level.

    With ``rate_only`` the reconstruction is skipped and the loss is the rate alone (the
    distortion is then reported as NaN): what trains a semantic prior with the rest frozen,
    since the prior only moves the entropy parameters.
    """
    out = model(x, level.float(), semantic, reconstruct=not rate_only)
    num_pixels = x.shape[-2] * x.shape[-1]
    bpp = out.bits() / num_pixels                                                                      # (B,)
    if rate_only:
        return {"loss": bpp.mean(), "bpp": bpp.detach(), "mse": torch.full_like(bpp, float("nan"))}
    mse = (out.x_hat - x).square().flatten(1).mean(1)                                                  # (B,)
    lambdas = torch.tensor(model.config.lambdas, dtype=x.dtype, device=x.device)[level]
    loss = (bpp + lambdas * 255**2 * mse).mean()
    return {"loss": loss, "bpp": bpp.detach(), "mse": mse.detach()}


def _lr_at(settings: TrainSettings, iteration: int, warmup_from: int = 0, budget_used: float | None = None) -> float:
    """Linear warm-up from ``warmup_from``, then cosine decay from ``lr`` to ``lr_final``.

    The cosine runs over ``lr_decay_iterations`` counted from iteration 0, or, with
    ``settings.anneal``, over this call's budget (``budget_used``: the fraction spent, see
    :func:`_budget_used`).

    A run resumed without optimizer state warms up again from its resume point
    (``warmup_from``): fresh Adam moments would otherwise make the first steps
    full-size, sign-like updates of every weight at the decayed-to learning rate.
    """
    warmup = min((iteration - warmup_from + 1) / max(settings.warmup_iterations, 1), 1.0)
    t = budget_used if settings.anneal else iteration / settings.lr_decay_iterations
    t = min(t, 1.0)
    return warmup * (settings.lr_final + 0.5 * (settings.lr - settings.lr_final) * (1 + math.cos(math.pi * t)))


def _budget_used(settings: TrainSettings, iteration: int, hours: float, iterations_at_start: int,
                 hours_at_start: float) -> float:
    """Fraction of this call's budget spent: of ``max_hours`` or of the iterations up to ``max_iterations``,
    whichever ends the call first (the larger fraction)."""
    used = []
    if settings.max_hours is not None:
        used.append((hours - hours_at_start) / settings.max_hours)
    if settings.max_iterations is not None:
        used.append((iteration - iterations_at_start) / max(settings.max_iterations - iterations_at_start, 1))
    return max(used)


def _within_budget(settings: TrainSettings, iteration: int, hours: float, hours_at_start: float) -> bool:
    """Whether this call may train another iteration (neither ``max_iterations`` nor ``max_hours`` reached)."""
    return ((settings.max_iterations is None or iteration < settings.max_iterations)
            and (settings.max_hours is None or hours - hours_at_start < settings.max_hours))


def train(settings: TrainSettings, config: ResidualConfig | None = None, resume_from: str | None = None,
          log=print) -> Path:
    """Train (or resume training) a residual codec; returns the path of the last checkpoint."""
    if settings.anneal and settings.max_hours is None and settings.max_iterations is None:
        raise InvalidInputError("--anneal decays the learning rate over this call's budget: "
                                "give --hours or --iterations")
    if settings.crop < ALIGN or settings.crop % ALIGN:
        raise InvalidInputError(f"the crop side must be a multiple of {ALIGN} (the model's stride); got {settings.crop}")
    device = _usable_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    with _run_folder(Path(settings.run_dir)) as run_dir:
        return _train(settings, config, resume_from, log, device, run_dir)


@contextlib.contextmanager
def _run_folder(path: Path):
    """Creates the run folder; a new one that is still empty when training fails (e.g. at
    compilation, before the first checkpoint) is removed again rather than left behind."""
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if created and not any(path.iterdir()):
            path.rmdir()
        raise


def _train(settings: TrainSettings, config: ResidualConfig | None, resume_from: str | None, log,
           device: torch.device, run_dir: Path) -> Path:
    last = run_dir / "last.safetensors"
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)

    state: dict = {"iteration": 0, "hours": 0.0}
    history: list[dict] = []
    meta: dict = {}
    source = last if last.exists() else (Path(resume_from) if resume_from else None)
    if source is not None:
        model, optim_state, meta = load_residual_checkpoint(source, with_optimizer=True)
        state["iteration"] = int(meta.get("iterations", 0))
        state["hours"] = float(meta.get("train_hours", 0.0))
        history = _history_of(meta)
        log(f"resuming from {source} at iteration {state['iteration']} ({state['hours']:.2f} h)")
    else:
        model, optim_state = ResidualCodec(config or ResidualConfig()), None
    model = _with_level(_with_context(model, settings.context, log), settings.add_level, log)
    warmup_from = state["iteration"] if not optim_state else 0
    if source is not None and not optim_state:
        log(f"no optimizer state in {source}: the learning rate warms up again "
            f"over {settings.warmup_iterations} iterations")
    model.train()

    tokens = None
    if settings.semantic:
        tokens = TokenSource(settings.semantic, tuple(settings.semantic_rates), rng)
        model.add_semantic_prior(tokens.name, tokens.token_dim)
    if settings.conditioning_only:
        if tokens is None:
            raise InvalidInputError("--conditioning-only needs --semantic NAME")
        prior_ids = {id(p) for p in model.add_semantic_prior(tokens.name, tokens.token_dim).parameters()}
        for p in model.parameters():          # everything but this tower's prior stays frozen
            p.requires_grad_(id(p) in prior_ids)
    if settings.context_only:
        if model.context is None:
            raise InvalidInputError("--context-only needs a model with a context (add one with --context checkerboard)")
        if settings.conditioning_only:
            raise InvalidInputError("--context-only and --conditioning-only train different parts; pick one")
        context_ids = {id(p) for p in model.context.parameters()}
        for p in model.parameters():          # everything but the context model stays frozen
            p.requires_grad_(id(p) in context_ids)
    rate_only = settings.conditioning_only or settings.context_only
    model.to(device)
    # On CPU, oneDNN's convolutions (forward and backward) skip a layout reorder per call in channels-last:
    # ≈ 1.3× more iterations per second on 2 cores at 256² × 8, with the same fp32 arithmetic.
    model.to(memory_format=_memory_format(device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True     # crops have one fixed size: let cuDNN pick its fastest kernels

    main_params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles") and p.requires_grad]
    aux_params = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    optimizer = torch.optim.Adam(main_params, lr=settings.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=settings.aux_lr)
    names = {id(p): n for n, p in model.named_parameters()}
    if optim_state is not None:
        _restore_adam(optimizer, names, optim_state, "main")
        _restore_adam(aux_optimizer, names, optim_state, "aux")

    images = load_training_images(settings.data, settings.crop)
    log(f"{len(images)} training images; model N={model.config.N} M={model.config.M}; "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; threads {torch.get_num_threads()}")

    start = time.time()
    hours_at_start = state["hours"]
    iterations_at_start = state["iteration"]
    last_checkpoint = time.time()
    next_snapshot_hour = math.floor(hours_at_start) + 1
    window: list[dict] = []
    window_start = time.time()
    skipped = skipped_in_a_row = 0      # updates skipped for a non-finite loss or gradient (total, current streak)

    def checkpoint() -> None:
        trained = state["iteration"] > iterations_at_start      # else (e.g. an export) keep the source's recipe
        recipe = json.dumps(settings.__dict__) if trained or "recipe" not in meta else meta["recipe"]
        done = _extend_history(history, settings, state, iterations_at_start, hours_at_start) if trained else history
        info = {"iterations": state["iteration"], "train_hours": state["hours"], "recipe": recipe,
                "history": json.dumps(done)}
        save_residual_checkpoint(model, last, metadata=info,
                                 optimizer_state=_adam_state(optimizer, names, "main") | _adam_state(aux_optimizer, names, "aux"))

    if settings.compile:
        for module in model.modules():
            if isinstance(module, SemanticPrior):
                module.keep_eager_under_compile()
    loss_of = _compiled(rd_loss) if settings.compile else rd_loss
    stop = _StopRequest()
    try:
        while _within_budget(settings, state["iteration"], state["hours"], hours_at_start) and not stop.requested:
            used = (_budget_used(settings, state["iteration"], state["hours"], iterations_at_start, hours_at_start)
                    if settings.anneal else None)
            lr = _lr_at(settings, state["iteration"], warmup_from, used)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, picks = random_batch(images, settings.batch_size, settings.crop, rng)
            level = torch.randint(0, model.config.levels, (settings.batch_size,))
            use_tokens = tokens is not None and (settings.conditioning_only
                                                 or rng.random() >= settings.condition_dropout)
            condition = tokens.condition(images, picks, device) if use_tokens else None
            x = x.to(device, memory_format=_memory_format(device))
            terms = loss_of(model, x, level.to(device), condition, rate_only=rate_only)
            aux = None if rate_only else aux_optimizer
            if not _update(model, terms["loss"], optimizer, main_params, aux):
                # One bad batch must not poison the weights (and every later checkpoint): its update was skipped.
                skipped += 1
                skipped_in_a_row += 1
                if skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    raise TrainingDivergedError(
                        f"{skipped_in_a_row} batches in a row gave a non-finite loss or gradient at iteration "
                        f"{state['iteration']}; {last} holds the last finite weights")
                continue
            skipped_in_a_row = 0

            state["iteration"] += 1
            state["hours"] = hours_at_start + (time.time() - start) / 3600
            window.append({"loss": terms["loss"].item(), "bpp": terms["bpp"].cpu(), "mse": terms["mse"].cpu(),
                           "level": level})
            if state["iteration"] % settings.log_every == 0:
                record = _summarize(window, model.config.levels)
                record.update(iteration=state["iteration"], hours=round(state["hours"], 4), lr=lr, skipped=skipped,
                              its_per_s=round(len(window) / max(time.time() - window_start, 1e-9), 3))
                with open(run_dir / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                log(f"it {record['iteration']} loss {record['loss']:.4f} lr {lr:.2e} "
                    + " ".join(f"L{l}:{v['bpp']:.3f}bpp" + (f"/{v['psnr']:.2f}dB" if v["psnr"] is not None else "")
                               for l, v in record["levels"].items()))
                window, window_start = [], time.time()
            if time.time() - last_checkpoint > settings.checkpoint_minutes * 60:
                checkpoint()
                last_checkpoint = time.time()
            if state["hours"] >= next_snapshot_hour:
                checkpoint()
                snap = run_dir / f"snapshot-{next_snapshot_hour:03d}h.safetensors"
                save_residual_checkpoint(model, snap, metadata={"iterations": state["iteration"],
                                                                "train_hours": state["hours"]})
                next_snapshot_hour += 1
        checkpoint()
    finally:
        stop.restore()
    if stop.requested:
        log(f"stopped by signal at iteration {state['iteration']}; checkpoint written")
    return last


def _with_context(model: ResidualCodec, context: str | None, log) -> ResidualCodec:
    """``model``, or a copy of it with an (untrained, so far neutral) spatial ``context`` added."""
    if context is None or context == model.config.context:
        return model
    if model.config.context != "none":
        raise InvalidInputError(f"the model already has the {model.config.context!r} context; "
                                f"it cannot be replaced by {context!r}")
    try:
        config = replace(model.config, context=context)
    except ValueError as e:
        raise InvalidInputError(str(e)) from None
    upgraded = _rebuilt(model, config, model.state_dict(), new_prefix="context.")
    log(f"added the {context} context model ({sum(p.numel() for p in upgraded.context.parameters()) / 1e6:.2f} M "
        "parameters); it starts neutral")
    return upgraded


#: The (L, C) gain tables of a model, one row per λ level.
GAIN_TABLES = ("log_gain", "log_inv_gain", "log_hyper_gain", "log_hyper_inv_gain")


def _with_level(model: ResidualCodec, lam: float | None, log) -> ResidualCodec:
    """``model``, or a copy of it with one more gain level, trained at ``lam``, above its top level.

    The new level's log-gains start on the line through the top two levels: the model's gains at
    every rate it had (the extrapolation above its top included) are unchanged, and training moves
    the new level from there. A model that already ends at ``lam`` (a resumed run) is returned as is.
    """
    if lam is None or lam == model.config.lambdas[-1]:
        return model
    if model.config.levels < 2:
        raise InvalidInputError("--add-level extrapolates from the top two levels; this model has one")
    if lam <= model.config.lambdas[-1]:
        raise InvalidInputError(f"--add-level must exceed the model's top λ {model.config.lambdas[-1]}; got {lam}")
    state = model.state_dict()
    for name in GAIN_TABLES:
        table = state[name]                                               # (L, C)
        state[name] = torch.cat([table, 2 * table[-1:] - table[-2:-1]])   # (L+1, C)
    try:
        config = replace(model.config, lambdas=(*model.config.lambdas, lam))
    except ValueError as e:                   # past the most levels a stream can address
        raise InvalidInputError(str(e)) from None
    upgraded = _rebuilt(model, config, state)
    log(f"added gain level {model.config.levels} at λ {lam} (levels at λ {', '.join(map(str, upgraded.config.lambdas))})")
    return upgraded


def _rebuilt(model: ResidualCodec, config: ResidualConfig, state: dict[str, torch.Tensor],
             new_prefix: str | None = None) -> ResidualCodec:
    """A model of ``config`` holding ``model``'s semantic priors and the weights ``state``; only
    parameters under ``new_prefix`` (new modules of ``config``) may be absent from ``state``."""
    upgraded = ResidualCodec(config)
    for key, prior in model.semantic_priors.items():
        upgraded.semantic_priors[key] = prior
    for name in CDF_BUFFERS:                  # frozen tables (a shipped checkpoint) have sizes
        getattr(upgraded.entropy_bottleneck, name).resize_(getattr(model.entropy_bottleneck, name).shape)
    missing, unexpected = upgraded.load_state_dict(state, strict=False)
    if unexpected or not all(new_prefix and k.startswith(new_prefix) for k in missing):   # a bug, not a user error
        raise RuntimeError(f"rebuilding the model changed other weights: missing {missing}, unexpected {unexpected}")
    return upgraded


def _compiled(loss_function):
    """``loss_function`` through torch.compile; a compiler failure (e.g. no C++ compiler) becomes a clear error."""
    compiled = torch.compile(loss_function)

    def run(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            raise InvalidInputError(f"--compile: torch.compile failed ({str(e).splitlines()[0][:200]}); "
                                    "train without --compile") from None

    return run


def _memory_format(device: torch.device) -> torch.memory_format:
    """Layout of the training batches and weights: channels-last on CPU (see :func:`train`)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _usable_device(name: str) -> torch.device:
    """``name`` as a torch device, or a clear error where this torch cannot use it (e.g. no CUDA)."""
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise InvalidInputError(f"cannot train on device {name!r}: {e}") from None
    return device


def _update(model: ResidualCodec, loss: torch.Tensor, optimizer: torch.optim.Adam, main_params: list[torch.Tensor],
            aux_optimizer: torch.optim.Adam | None) -> bool:
    """One optimizer step on ``loss`` (gradient norm clipped to 1), then one on the quantiles' aux loss.

    Returns False, and leaves every weight and optimizer state as it was, when the loss or its gradient
    is not finite.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(main_params, 1.0)
    if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
        return False
    optimizer.step()
    if aux_optimizer is not None:
        aux_optimizer.zero_grad(set_to_none=True)
        aux_loss = model.aux_loss()
        if torch.isfinite(aux_loss):
            aux_loss.backward()
            aux_optimizer.step()
    return True


class _StopRequest:
    """SIGTERM / SIGINT end training after the current iteration, with a final checkpoint."""

    def __init__(self):
        import signal
        import threading

        self.requested = False
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


#: Settings that do not change what is trained (left out when comparing history segments).
_BOOKKEEPING = ("run_dir", "max_iterations", "max_hours", "checkpoint_minutes", "log_every", "threads")


def _history_of(meta: dict) -> list[dict]:
    """The training history stored in a checkpoint (one segment per recipe, oldest first).

    Checkpoints written before histories were kept have only the last ``recipe``; it then
    stands for all their iterations.
    """
    if "history" in meta:
        return json.loads(meta["history"])
    if "recipe" in meta:
        return [{"recipe": json.loads(meta["recipe"]), "iterations": [0, int(meta.get("iterations", 0))],
                 "hours": [0.0, round(float(meta.get("train_hours", 0.0)), 4)]}]
    return []


def _extend_history(history: list[dict], settings: TrainSettings, state: dict, iterations_at_start: int,
                    hours_at_start: float) -> list[dict]:
    """``history`` with this call's segment; it extends the previous one when the recipe is the same."""
    recipe = {k: v for k, v in settings.__dict__.items() if k not in _BOOKKEEPING}
    segment = {"recipe": recipe, "iterations": [iterations_at_start, state["iteration"]],
               "hours": [round(hours_at_start, 4), round(state["hours"], 4)]}
    if history:
        previous = history[-1]
        same = {k: v for k, v in previous["recipe"].items() if k not in _BOOKKEEPING} == json.loads(json.dumps(recipe))
        if same and previous["iterations"][1] == iterations_at_start:
            return history[:-1] + [{**segment, "iterations": [previous["iterations"][0], state["iteration"]],
                                    "hours": [previous["hours"][0], segment["hours"][1]]}]
    return history + [segment]


def _summarize(window: list[dict], levels: int) -> dict:
    """Mean loss and per-level mean bpp / PSNR over a logging window."""
    bpp = torch.cat([w["bpp"] for w in window])
    mse = torch.cat([w["mse"] for w in window])
    lvl = torch.cat([w["level"] for w in window])
    per_level = {}
    for l in range(levels):
        sel = lvl == l
        if sel.any():
            psnr = (10 * torch.log10(1 / mse[sel].clamp_min(1e-10))).mean().item()
            per_level[str(l)] = {"bpp": bpp[sel].mean().item(), "psnr": None if math.isnan(psnr) else psnr}
    return {"loss": float(np.mean([w["loss"] for w in window])), "levels": per_level}


def _adam_state(optimizer: torch.optim.Adam, names: dict[int, str], prefix: str) -> dict[str, torch.Tensor]:
    """Adam moments as a flat tensor dict keyed by parameter name (safetensors-friendly)."""
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st:
                n = names[id(p)]
                out[f"{prefix}/{n}/exp_avg"] = st["exp_avg"]
                out[f"{prefix}/{n}/exp_avg_sq"] = st["exp_avg_sq"]
                out[f"{prefix}/{n}/step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1)
    return out


def _restore_adam(optimizer: torch.optim.Adam, names: dict[int, str], state: dict[str, torch.Tensor],
                  prefix: str) -> None:
    """Inverse of :func:`_adam_state`; parameters without saved moments start fresh."""
    by_id = {}
    for key, t in state.items():
        p, _, rest = key.partition("/")
        if p == prefix:
            name, _, what = rest.rpartition("/")
            by_id.setdefault(name, {})[what] = t
    for group in optimizer.param_groups:
        for p in group["params"]:
            saved = by_id.get(names[id(p)])
            if saved and {"exp_avg", "exp_avg_sq", "step"} <= saved.keys() and saved["exp_avg"].shape == p.shape:
                optimizer.state[p] = {"step": torch.tensor(float(saved["step"].item())),     # moments in p's layout
                                      "exp_avg": torch.empty_like(p).copy_(saved["exp_avg"]),
                                      "exp_avg_sq": torch.empty_like(p).copy_(saved["exp_avg_sq"])}
