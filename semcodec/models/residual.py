"""Layer 1: the residual pixel codec (mean-scale hyperprior with gain vectors and a semantic prior).

::

    x ─ g_a ─ y ─·gain(q)─ y' ──────── Q(y' - μ) + μ ─ ŷ' ─·gain⁻¹(q)─ g_s ─ x̂
                  │                          ▲ (μ, σ)
                  └ h_a ─·hgain(q)─ z ─ Q ─ ẑ ─·hgain⁻¹(q)─ h_s ─ (+ SemanticPrior(T̂)) ─┘

Minnen, Ballé, Toderici, "Joint Autoregressive and Hierarchical Priors for Learned
Image Compression" (NeurIPS 2018), mean-scale hyperprior; instead of its serial
autoregressive context, a model may carry the two-pass checkerboard context of He et
al. (CVPR 2021): ``config.context = "checkerboard"`` codes the anchor half of ``y``
with the parameters above, then corrects the other half's (μ, σ) from the decoded
anchors (:class:`~semcodec.models.transforms.CheckerboardContext`). Continuous rate
through interpolated gain vectors as in Cui et al., "Asymmetric Gained Deep Image
Compression With Continuous Rate Adaptation" (CVPR 2021).

The rate knob ``q`` is real-valued; ``0 … L-1`` are the ``L`` trained λ levels:
``gain(q) = gain[l]^(1-t) · gain[l+1]^t`` with ``l = floor(q)``, ``t = q - l``. Larger
``q`` means more bits. Outside the trained levels the same formula extrapolates
the gains of the two nearest levels (the bounds are in :mod:`semcodec.models.config`):
below level 0 down to ``q = -RATE_EXTRAPOLATION_BELOW``
(coarser quantization along the trained direction, which extends the range to lower
rates with a smooth RD curve), and above level ``L-1`` up to
``q = L-1 + RATE_EXTRAPOLATION_ABOVE`` (finer quantization than any trained level:
the synthesis was not trained for it, so there extra bits buy little quality; it
exists so that size targets above the trained range are still met).

``forward`` is the training path (noisy/straight-through quantization, likelihoods);
``code_latent(..., quantization="round")`` the same path with the coder's rounding;
the encoder's per-image refinement of the latents is :mod:`semcodec.layers.pixels.refine`;
coding a real stream is in :mod:`semcodec.codec` over :mod:`semcodec.bitstream.entropy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .compressai_parts import EntropyBottleneck, GaussianConditional
from .config import ResidualConfig
from .transforms import (
    CheckerboardContext,
    SemanticPrior,
    analysis_transform,
    checkerboard_anchors,
    hyper_analysis_transform,
    hyper_synthesis_transform,
    synthesis_transform,
)

#: Lower bound of σ, shared by training (GaussianConditional) and the coder's scale table.
SCALE_MIN = 0.11


@dataclass
class ResidualOutput:
    """Result of the training forward pass."""

    x_hat: torch.Tensor | None          # (B, 3, H, W) reconstruction in [0, 1] (not clamped); None if not asked
    y_likelihoods: torch.Tensor         # (B, M, h, w)
    z_likelihoods: torch.Tensor         # (B, N, h/4, w/4)

    def bits(self) -> torch.Tensor:
        """Estimated bits of each image (``y`` and ``z``): (B,)."""
        return -(self.y_likelihoods.log2().flatten(1).sum(1) + self.z_likelihoods.log2().flatten(1).sum(1))


class ResidualCodec(nn.Module):
    """Mean-scale hyperprior with continuous-rate gain vectors and optional semantic priors."""

    def __init__(self, config: ResidualConfig):
        super().__init__()
        self.config = config
        N, M, L = config.N, config.M, config.levels
        self.g_a = analysis_transform(N, M)
        self.g_s = synthesis_transform(N, M)
        self.h_a = hyper_analysis_transform(N, M)
        self.h_s = hyper_synthesis_transform(N, M)
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None, scale_bound=SCALE_MIN)
        # Gains are stored as logs so that interpolation is linear and gains stay positive.
        self.log_gain = nn.Parameter(torch.linspace(-1.0, 1.0, L)[:, None].repeat(1, M))      # (L, M)
        self.log_inv_gain = nn.Parameter(-self.log_gain.detach().clone())                      # (L, M)
        self.log_hyper_gain = nn.Parameter(torch.zeros(L, N))                                   # (L, N)
        self.log_hyper_inv_gain = nn.Parameter(torch.zeros(L, N))                               # (L, N)
        #: One semantic prior per semantic model id (e.g. "tiny"); empty for a pixels-only model.
        self.semantic_priors = nn.ModuleDict()
        self.context = CheckerboardContext(M) if config.context == "checkerboard" else None

    # ------------------------------------------------------------------ gains
    def gains(self, q: torch.Tensor) -> dict[str, torch.Tensor]:
        """Interpolated (or, below level 0, extrapolated) gain vectors for rate knobs ``q`` (B,).

        ``q`` is clamped to :attr:`ResidualConfig.rate_range`. Returns a dict of
        (B, C, 1, 1) tensors: ``y``, ``y_inv``, ``z``, ``z_inv``.
        """
        L = self.config.levels
        q = q.to(torch.float32).clamp(*self.config.rate_range)
        lo = q.floor().long().clamp(0, L - 2) if L > 1 else torch.zeros_like(q, dtype=torch.long)
        t = (q - lo.to(q.dtype))[:, None]                                   # (B, 1); < 0 below level 0

        def interp(table: torch.Tensor) -> torch.Tensor:                    # (L, C) → (B, C, 1, 1)
            if L == 1:
                return table[0].exp().expand(q.shape[0], -1)[..., None, None]
            v = table[lo] * (1 - t) + table[lo + 1] * t
            return v.exp()[..., None, None]

        return {
            "y": interp(self.log_gain), "y_inv": interp(self.log_inv_gain),
            "z": interp(self.log_hyper_gain), "z_inv": interp(self.log_hyper_inv_gain),
        }

    def rd_lambda(self, q: float) -> float:
        """The λ the rate knob ``q`` stands for: log-linear between (and beyond) the trained levels."""
        lambdas = self.config.lambdas
        if len(lambdas) == 1:
            return float(lambdas[0])
        lo = min(max(int(q // 1), 0), len(lambdas) - 2)
        t = q - lo
        return float(lambdas[lo] ** (1 - t) * lambdas[lo + 1] ** t)

    # ------------------------------------------------------------------ semantic prior
    def add_semantic_prior(self, semantic_model: str, token_dim: int) -> SemanticPrior:
        """Create (or return) the semantic prior for one semantic model id."""
        key = _module_key(semantic_model)
        if key not in self.semantic_priors:
            self.semantic_priors[key] = SemanticPrior(token_dim, self.config.prior_channels, self.config.M)
        return self.semantic_priors[key]

    def has_semantic_prior(self, semantic_model: str) -> bool:
        """Whether this model carries a trained prior for tokens of ``semantic_model``."""
        return _module_key(semantic_model) in self.semantic_priors

    def entropy_parameters(self, z_hat: torch.Tensor, gains: dict[str, torch.Tensor],
                           latent_size: tuple[int, int], semantic: "SemanticCondition | None") -> torch.Tensor:
        """(scales ‖ means) of ``y`` in the gained domain: (B, 2M, h, w)."""
        params = self.h_s(z_hat * gains["z_inv"])
        h, w = latent_size
        params = params[:, :, :h, :w]
        if semantic is not None:
            params = params + self.semantic_correction(semantic, (h, w))
        return params

    def semantic_correction(self, semantic: "SemanticCondition", latent_size: tuple[int, int]) -> torch.Tensor:
        """The semantic prior's additive correction (B, 2M, h, w) of (scales ‖ means): it depends on the
        tokens alone, so the encoder's latent refinement computes it once."""
        prior = self.semantic_priors[_module_key(semantic.model)]
        return prior(semantic.tokens, semantic.grid, semantic.region, latent_size)

    def context_parameters(self, params: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """(scales ‖ means) (B, 2M, h, w) of every position in the checkerboard order.

        The anchors keep ``params`` (from :meth:`entropy_parameters`); the non-anchors get
        the context's correction computed from the anchors of ``y_hat`` (B, M, h, w; its
        non-anchor values are ignored). Without a context model, ``params`` itself.
        """
        if self.context is None:
            return params
        anchors = checkerboard_anchors(params.shape[-2:], params.device)   # (1, 1, h, w)
        correction = self.context(y_hat * anchors, params)                  # (B, 2M, h, w)
        return torch.where(anchors, params, params + correction)

    # ------------------------------------------------------------------ training path
    def forward(self, x: torch.Tensor, q: torch.Tensor, semantic: "SemanticCondition | None" = None,
                reconstruct: bool = True) -> ResidualOutput:
        """Training forward pass (noisy quantization proxy).

        Args:
            x: (B, 3, H, W) images in [0, 1]; H and W multiples of 64.
            q: (B,) rate knobs in [0, L-1].
            semantic: decoded tokens to condition on, or None.
            reconstruct: run ``g_s``; without it ``x_hat`` is None (training only the rate,
                e.g. a semantic prior, which cannot change the reconstruction's gradient).
        """
        return self.code_latent(self.g_a(x), self.gains(q), semantic, reconstruct)

    def code_latent(self, y: torch.Tensor, gains: dict[str, torch.Tensor],
                    semantic: "SemanticCondition | None" = None, reconstruct: bool = True,
                    quantization: str = "noise") -> ResidualOutput:
        """Everything after ``g_a``: hyperprior, likelihoods and (optionally) ``g_s``.

        Args:
            y: (B, M, h, w) analysis ``g_a(x)`` before the gains.
            gains: :meth:`gains` of the batch's rate knobs.
            quantization: ``"noise"`` — the training proxy: additive uniform noise for the
                likelihoods, rounding passed straight through for ``g_s``; ``"round"`` —
                what the coder does (``z`` rounded around the medians, ``y`` around the
                means), with straight-through gradients everywhere, likelihoods included
                (the coder's rounding as a differentiable cost, e.g. for tests and probes).
        """
        if quantization not in ("noise", "round"):
            raise ValueError(f"unknown quantization mode {quantization!r}")
        y = y * gains["y"]                                               # (B, M, h, w)
        z = self.h_a(y) * gains["z"]                                     # (B, N, h/4, w/4)
        if quantization == "noise":
            z_hat, z_likelihoods = self.entropy_bottleneck(z)
        else:
            z_hat, z_likelihoods = self._rounded_z(z)
        params = self.entropy_parameters(z_hat, gains, y.shape[-2:], semantic)  # (B, 2M, h, w)
        if self.context is not None:                                     # anchors first, as the coder does
            anchor_means = params.chunk(2, dim=1)[1]
            params = self.context_parameters(params, anchor_means + _round_straight_through(y - anchor_means))
        scales, means = params.chunk(2, dim=1)
        y_hat = means + _round_straight_through(y - means)              # (B, M, h, w)
        if quantization == "noise":
            _, y_likelihoods = self.gaussian_conditional(y, scales, means)
        else:
            gc = self.gaussian_conditional
            y_likelihoods = gc.likelihood_lower_bound(gc._likelihood(y_hat, scales, means))
        x_hat = self.g_s(y_hat * gains["y_inv"]) if reconstruct else None
        return ResidualOutput(x_hat=x_hat, y_likelihoods=y_likelihoods, z_likelihoods=z_likelihoods)

    def _rounded_z(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` rounded around the entropy bottleneck's medians (straight-through) and its likelihoods.

        CompressAI's own "dequantize" mode rounds without a gradient; this is the same
        quantization with the gradient passed through. z: (B, N, a, b).
        """
        eb = self.entropy_bottleneck
        medians = eb._get_medians().detach().reshape(1, -1, 1, 1)       # (1, N, 1, 1)
        z_hat = medians + _round_straight_through(z - medians)          # (B, N, a, b)
        channels_first = z_hat.transpose(0, 1)                          # (N, B, a, b)
        likelihoods, _, _ = eb._likelihood(channels_first.reshape(z.shape[1], 1, -1))
        likelihoods = eb.likelihood_lower_bound(likelihoods).reshape(channels_first.shape).transpose(0, 1)
        return z_hat, likelihoods

    def aux_loss(self) -> torch.Tensor:
        """Loss that fits the entropy bottleneck's quantiles (CompressAI convention)."""
        return self.entropy_bottleneck.loss()


@dataclass
class SemanticCondition:
    """Decoded semantic tokens handed to the residual codec's semantic prior."""

    model: str                                   # semantic model id, e.g. "tiny"
    tokens: torch.Tensor                         # (B, gh*gw, D)
    grid: tuple[int, int]                        # (gh, gw)
    #: Area of the (padded) latent inside the tower input, (top, left, h, w) as fractions;
    #: one for the batch or one per image.
    region: tuple[float, float, float, float] | list[tuple[float, float, float, float]]


def _round_straight_through(v: torch.Tensor) -> torch.Tensor:
    """round(v) in the forward pass, the identity in the backward pass."""
    return v + (torch.round(v) - v).detach()


def _module_key(semantic_model: str) -> str:
    """ModuleDict keys may not contain dots or dashes."""
    return semantic_model.replace("-", "_").replace(".", "_")
