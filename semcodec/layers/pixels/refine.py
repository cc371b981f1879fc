"""Encoder effort: per-image refinement of the pixel layer's latents ``y`` and ``z`` (encoder only).

A trained analysis transform does not give the best latents for a given image: ``g_a`` and ``h_a`` are
amortized over a training set (the amortization gap), and rounding each value to its nearest integer is
not the best choice of integers (the discretization gap). Refinement searches, for one image at its own
rate knob, for other integer symbols of ``y`` and ``z`` that cost fewer bits for the same distortion. The
decoder, the RES1 payload and every existing stream are unchanged: only the symbols the encoder chooses
differ, and the final stream is written by :meth:`ResidualCoder.encode_latents`, whose entropy parameters
run in the float64 path the decoder runs.

The search is stochastic Gumbel annealing (SGA; Yang, Bamler & Mandt, "Improving Inference for Neural Image
Compression", NeurIPS 2020). ``y`` and ``z`` are free variables (``z`` is not recomputed from ``h_a(y)``),
in the coder's quantization domain (after the gains of the knob, where a symbol is one unit)::

    z ─ SGA(τ) around the medians ─ z̃ ─ h_s (+ semantic prior) ─ (μ, σ) of the anchors ──────────┐
    y ─ SGA(τ) around μ ─ ỹ anchors ─ checkerboard context ─ (μ, σ) of the others ─ SGA(τ) ─ ỹ ─ g_s ─ x̂
    cost = (bits of ỹ under (μ, σ) + bits of z̃ under the factorized prior) / pixels + λ(q) · MSE(x̂, x)

Each value sits between its two neighbouring integers; SGA replaces the rounding by a random, differentiable
blend of the two (a two-class Gumbel-softmax whose logits favour the nearer one), and the temperature τ
anneals from soft to nearly hard rounding over the schedule, so that early steps explore and late steps
settle on integers. Adam updates ``y`` and ``z`` on each sample's gradient; ``z`` stays inside the range of
its frozen coding tables.

The relaxed cost is only a guide: at a few points of the schedule (:func:`evaluation_points`) the current
latents are coded for real and their *true* cost is measured — the payload's bits and the MSE of the very
image the decoder will produce — and the best of those (the plain encoder's latents included) is kept, so a
refined stream never costs more than the effort-0 one at its knob.

The likelihoods are bounded below by 1e-9 in the cost (:data:`LIKELIHOOD_BOUND`) with the gradient passed
through: the shipped fp16 checkpoint stores the entropy bottleneck's bound as 0, so a value deep in a tail
would otherwise cost infinitely many bits. The decoder's tables are not affected.

Deterministic for a given image, settings and machine: the rounding noise comes from a seeded
``torch.Generator``. With ``device="cuda"`` the search runs on the GPU; the true costs and the final stream
are computed on the CPU, as the decoder computes them, so the stream decodes bit-exactly anywhere.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...errors import InvalidInputError
from ...models.config import RATE_ONE
from ...models.residual import ResidualCodec, SemanticCondition
from .coder import ResidualCoder
from .payload import rate_to_fixed

#: SGA iterations of each encoder effort level (0 = the plain analysis transform). Chosen for the time
#: budgets of a 768×512 image on 2 CPU cores (e1 ≤ 15 s, e2 ≤ 60 s, e3 ≤ 300 s); see docs/benchmarks.md.
EFFORT_ITERATIONS = (0, 32, 160, 800)
#: Adam step size (in symbols: the latents are searched in the coder's quantization domain) and SGA
#: temperature at the first and the last iteration (geometric in between) of a schedule of fewer than
#: LONG_SCHEDULE iterations, and of a longer one. Measured on 384×256 Kodak crops at quality 30 and 70 (see
#: docs/benchmarks.md): a larger step diverges (2e-2 at 120 iterations, 3e-2 at 30), a colder end
#: (τ 0.05 or 0.02) leaves less gain at 30–120 iterations; over 480 iterations the smaller step and the colder
#: end gain about one point more, and over 800 a step decaying to 1e-3 about one more than a constant one (which
#: stops gaining after ≈ 500).
LEARNING_RATE = ((1e-2, 1e-2), (5e-3, 1e-3))
TEMPERATURE = ((0.5, 0.15), (0.5, 0.1))
LONG_SCHEDULE = 300
#: The true cost is measured (besides the plain latents') at the end of the schedule and, from its middle
#: on, every eighth of it but at most once per EVALUATION_SPACING iterations (one costs about 1.2 iterations).
EVALUATION_SPACING = 16
#: Lower bound of a likelihood in the cost (the training value; the shipped checkpoint stores 0).
LIKELIHOOD_BOUND = 1e-9
#: Seed of the rounding noise.
SEED = 0
#: Run the synthesis of the relaxed cost in bfloat16 where the device computes it natively (CPUs with
#: AVX-512 BF16 or AMX, CUDA GPUs): about 3× faster on such a CPU. The true costs stay float32.
BFLOAT16_SYNTHESIS = True

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Latents:
    """What the encoder codes: ``y`` (1, M, h, w) and ``z`` (1, N, h/4, w/4) before rounding, in the
    gained domain of the fixed-point rate knob ``rate`` (CPU float32)."""

    y: torch.Tensor
    z: torch.Tensor
    rate: int

    @classmethod
    def analyzed(cls, coder: ResidualCoder, y: torch.Tensor, q: float) -> "Latents":
        """The plain encoder's latents of ``y = g_a(x)`` at knob ``q`` (those :meth:`ResidualCoder.encode_analyzed` codes)."""
        return cls(*coder.latents(y, q), rate_to_fixed(q, coder.rate_range))

    def at(self, coder: ResidualCoder, q: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, z)`` for knob ``q``: themselves at their own knob; near it, moved by the ratio of the
        gains (a latent refined for one knob stays good near it: rate control's second search)."""
        rate = rate_to_fixed(q, coder.rate_range)
        if rate == self.rate:
            return self.y, self.z
        old = coder.model.gains(torch.tensor([self.rate / RATE_ONE]))
        new = coder.model.gains(torch.tensor([rate / RATE_ONE]))
        return self.y * (new["y"] / old["y"]), self.z * (new["z"] / old["z"])

    def encode(self, coder: ResidualCoder, q: float, semantic: SemanticCondition | None = None) -> bytes:
        """The RES1 payload of these latents at knob ``q``."""
        return coder.encode_latents(*self.at(coder, q), q, semantic)[0]


@dataclass(frozen=True)
class Evaluation:
    """The true RD cost of the latents at one point of the schedule."""

    iteration: int          # 0: the plain encoder's latents
    bits: int               # of the RES1 payload
    sse: float              # sum of squared errors of the decoded 8-bit image (0–255 scale)
    cost: float             # bits per pixel + λ(q) · MSE


def effort_iterations(effort: int) -> int:
    """SGA iterations of an encoder effort level (0 = fastest).

    Raises:
        InvalidInputError: not a level of :data:`EFFORT_ITERATIONS`.
    """
    if effort not in range(len(EFFORT_ITERATIONS)):
        raise InvalidInputError(f"effort must be one of 0..{len(EFFORT_ITERATIONS) - 1}, got {effort}")
    return EFFORT_ITERATIONS[effort]


def evaluation_points(iterations: int) -> list[int]:
    """The iterations after which :func:`refine_latents` measures the true cost (see :data:`EVALUATION_SPACING`):
    early iterates, still far from integers, are seldom the best once rounded."""
    if iterations <= 0:
        return []
    spacing = max(iterations // 8, EVALUATION_SPACING)
    return sorted(set(range(max(iterations // 2, 1), iterations - spacing // 2, spacing)) | {iterations})


def search_device(device: str | torch.device | None) -> torch.device:
    """The device of the latent search, checked: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``.

    Raises:
        InvalidInputError: an unknown device, or CUDA asked for where none is available.
    """
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError):
        raise InvalidInputError(f"device must be cpu or cuda[:N], got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError("device cuda: no CUDA device is available here (this torch build or machine "
                                    "has none); use device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidInputError(f"device {dev}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise InvalidInputError(f"device must be cpu or cuda[:N], got {device!r}")
    return dev


def refine_latents(coder: ResidualCoder, x: torch.Tensor, y: torch.Tensor, q: float, iterations: int,
                   semantic: SemanticCondition | None = None, *, device: str | torch.device = "cpu",
                   seed: int = SEED, progress: ProgressCallback | None = None,
                   evaluate_at: list[int] | None = None,
                   on_evaluation: Callable[[Evaluation, Latents], None] | None = None) -> Latents:
    """Refine the latents of one image for its RD cost at knob ``q`` (see the module docstring).

    Args:
        coder: the pixel layer's coder.
        x: (1, 3, H, W) the image in [0, 1] (from :func:`~semcodec.layers.pixels.coder.image_to_tensor`).
        y: (1, M, Hp/16, Wp/16) its analysis ``g_a(x)`` (:meth:`ResidualCoder.analyze`).
        q: the rate knob the latents are refined for.
        iterations: SGA iterations (0: the plain latents, nothing is searched).
        semantic: the decoded layer 0 the pixel layer is conditioned on, or None.
        device: where the search runs (``"cpu"`` or ``"cuda"``; see :func:`search_device`).
        seed: seed of the rounding noise.
        progress: called as ``progress(done, iterations)`` after each iteration.
        evaluate_at: iterations after which to measure the true cost (default :func:`evaluation_points`).
        on_evaluation: called with each :class:`Evaluation` (the plain latents' first) and its latents.

    Returns:
        The latents of lowest true cost among the plain ones and those evaluated; code them with
        :meth:`Latents.encode`.
    """
    start = Latents.analyzed(coder, y, q)
    if iterations <= 0:
        return start
    height, width = x.shape[-2:]
    target = torch.round(x * 255).double()                                  # (1, 3, H, W) the 8-bit image
    lmbda = coder.model.rd_lambda(q)

    def evaluate(latents: Latents, iteration: int) -> Evaluation:
        payload, y_hat = coder.encode_latents(latents.y, latents.z, q, semantic)
        decoded = torch.floor(coder.reconstruct(y_hat, q, width, height) * 255 + 0.5)  # as tensor_to_image
        sse = (decoded.double() - target).square().sum().item()
        bits = len(payload) * 8
        found = Evaluation(iteration, bits, sse, bits / (height * width) + lmbda * sse / target.numel())
        if on_evaluation is not None:
            on_evaluation(found, latents)
        return found

    best, best_cost = start, evaluate(start, 0).cost
    points = set(evaluation_points(iterations) if evaluate_at is None else evaluate_at)
    search = _Search(coder, x, start, q, semantic, search_device(device), seed)
    long = iterations >= LONG_SCHEDULE
    for i in range(iterations):
        fraction = i / max(iterations - 1, 1)
        search.step(_geometric(TEMPERATURE[long], fraction), _geometric(LEARNING_RATE[long], fraction))
        if i + 1 in points:
            current = search.latents()
            if (cost := evaluate(current, i + 1).cost) < best_cost:
                best, best_cost = current, cost
        if progress is not None:
            progress(i + 1, iterations)
    return best


class _Search:
    """The relaxed RD cost of one image and an Adam optimizer over its ``y`` and ``z`` (on ``device``).

    Everything that does not depend on the latents (gains, λ, the semantic prior's correction, the
    medians and ranges of ``z``) is computed once.
    """

    def __init__(self, coder: ResidualCoder, x: torch.Tensor, start: Latents, q: float,
                 semantic: SemanticCondition | None, device: torch.device, seed: int):
        self.model = model = _search_model(coder, device)
        self.rate = start.rate
        self.x = x.to(device)                                                    # (1, 3, H, W)
        self.lmbda = model.rd_lambda(q)
        self.gains = {k: v.to(device) for k, v in coder.model.gains(torch.tensor([self.rate / RATE_ONE])).items()}
        self.latent_size = tuple(start.y.shape[-2:])
        self.prior = None
        if semantic is not None:
            on_device = SemanticCondition(semantic.model, semantic.tokens.to(device), semantic.grid, semantic.region)
            with torch.no_grad():
                self.prior = model.semantic_correction(on_device, self.latent_size)  # (1, 2M, h, w)
        self.medians = coder.z_medians.to(device)[None, :, None, None]             # (1, N, 1, 1)
        # z is kept where the coder's clamp to its tables is a no-op (then SGA only blends codable values).
        self.z_min = self.medians + coder.z_lo.to(device)[None, :, None, None]
        self.z_max = self.medians + coder.z_hi.to(device)[None, :, None, None]
        self.y = start.y.detach().to(device).clone().requires_grad_(True)        # (1, M, h, w)
        self.z = torch.minimum(torch.maximum(start.z.detach().to(device), self.z_min), self.z_max)
        self.z.requires_grad_(True)                                               # (1, N, h/4, w/4)
        self.optimizer = torch.optim.Adam([self.y, self.z])
        self.generator = torch.Generator(device).manual_seed(seed)
        self.bfloat16 = BFLOAT16_SYNTHESIS and _native_bfloat16(device)

    def step(self, temperature: float, learning_rate: float) -> float:
        """One Adam step of size ``learning_rate`` on a fresh sample of the relaxed cost at ``temperature``;
        returns that sample's cost."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        with torch.enable_grad():
            cost = self.cost(temperature)
            self.y.grad, self.z.grad = torch.autograd.grad(cost, [self.y, self.z])
        self.optimizer.step()
        with torch.no_grad():
            torch.minimum(torch.maximum(self.z, self.z_min), self.z_max, out=self.z)
        return cost.item()

    def cost(self, temperature: float) -> torch.Tensor:
        """A sample of the relaxed RD cost (bits per pixel + λ · MSE on the 0–255 scale) of the current latents."""
        model, gains = self.model, self.gains
        z_noise = self._logistic_noise(self.z)
        z_tilde = self.medians + _sga_round(self.z - self.medians, temperature, z_noise)  # (1, N, h/4, w/4)
        params = model.entropy_parameters(z_tilde, gains, self.latent_size, None)         # (1, 2M, h, w)
        if self.prior is not None:
            params = params + self.prior
        y_noise = self._logistic_noise(self.y)
        if model.context is not None:          # the context sees the anchors as they will be coded
            means = params.chunk(2, dim=1)[1]
            params = model.context_parameters(params, means + _sga_round(self.y - means, temperature, y_noise))
        scales, means = params.chunk(2, dim=1)
        y_tilde = means + _sga_round(self.y - means, temperature, y_noise)               # (1, M, h, w)
        y_likelihoods = model.gaussian_conditional._likelihood(y_tilde, scales, means)
        eb = model.entropy_bottleneck
        z_likelihoods, _, _ = eb._likelihood(z_tilde.transpose(0, 1).reshape(z_tilde.shape[1], 1, -1))
        bits = -(_bounded(y_likelihoods).log2().sum() + _bounded(z_likelihoods).log2().sum())
        y_in = (y_tilde * gains["y_inv"]).contiguous(memory_format=torch.channels_last)
        height, width = self.x.shape[-2:]
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.bfloat16):
            x_hat = model.g_s(y_in)[..., :height, :width].float()                        # (1, 3, H, W)
        return bits / (height * width) + self.lmbda * 255**2 * (x_hat - self.x).square().mean()

    def latents(self) -> Latents:
        """The current latents (on the CPU, for the coder)."""
        return Latents(self.y.detach().cpu().clone(), self.z.detach().cpu().clone(), self.rate)

    def _logistic_noise(self, like: torch.Tensor) -> torch.Tensor:
        """Logistic(0, 1) samples shaped like ``like``: the difference of the two classes' Gumbel noises."""
        u = torch.rand(like.shape, generator=self.generator, device=like.device).clamp_(1e-6, 1 - 1e-6)
        return torch.log(u) - torch.log1p(-u)


def _geometric(ends: tuple[float, float], fraction: float) -> float:
    """The value a ``fraction`` of the way from ``ends[0]`` to ``ends[1]`` on a geometric schedule."""
    start, end = ends
    return start * (end / start) ** fraction


def _sga_round(v: torch.Tensor, temperature: float, noise: torch.Tensor) -> torch.Tensor:
    """A sample of SGA's relaxed rounding of ``v``: ``floor(v) + w`` with the weight ``w`` of ``ceil(v)`` in (0, 1).

    The two classes' logits are ``-atanh(distance) / τ``; their Gumbel-softmax at temperature ``τ``
    (``noise``: the difference of the two Gumbel samples, Logistic(0, 1)) weighs the nearer integer more,
    and tends to the hard choice of a random neighbour, then of the nearest one, as ``τ`` → 0.
    """
    floor = torch.floor(v).detach()
    d = v - floor                                                      # in [0, 1)
    limit = 1 - 1e-5
    logit = (torch.atanh(d.clamp(max=limit)) - torch.atanh((1 - d).clamp(max=limit))) / temperature
    return floor + torch.sigmoid((logit + noise) / temperature)


def _native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (else they are slower than float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    native = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(probe is not None and probe() for probe in native)


def _bounded(likelihood: torch.Tensor) -> torch.Tensor:
    """``max(likelihood, LIKELIHOOD_BOUND)`` with the gradient of the likelihood passed through."""
    return likelihood + (likelihood.clamp_min(LIKELIHOOD_BOUND) - likelihood).detach()


_SEARCH_MODELS: "weakref.WeakKeyDictionary[ResidualCoder, dict[str, ResidualCodec]]" = weakref.WeakKeyDictionary()


def _search_model(coder: ResidualCoder, device: torch.device) -> ResidualCodec:
    """The frozen networks the search runs through on ``device``: the coder's own on the CPU, else a copy
    (without ``g_a`` and ``h_a``, which the search does not use), made once per coder and device."""
    if device.type == "cpu":
        return coder.model
    models = _SEARCH_MODELS.setdefault(coder, {})
    if str(device) not in models:
        model = coder.model
        left_out = {id(model.g_a): torch.nn.Identity(), id(model.h_a): torch.nn.Identity()}
        copied = copy.deepcopy(model, memo=left_out).to(device).eval()
        copied.g_s.to(memory_format=torch.channels_last)
        models[str(device)] = copied
    return models[str(device)]


__all__ = ["EFFORT_ITERATIONS", "Evaluation", "Latents", "effort_iterations", "evaluation_points",
           "refine_latents", "search_device"]
