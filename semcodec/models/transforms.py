"""Plain neural transforms of the residual codec (no entropy-coder state).

Paper notation (Ballé et al. 2018, Minnen et al. 2018):

* ``g_a`` analysis transform, image ``x`` → latent ``y``        (B, 3, H, W) → (B, M, H/16, W/16)
* ``g_s`` synthesis transform, ``y_hat`` → ``x_hat``
* ``h_a`` hyper-analysis, ``y`` → hyper-latent ``z``             (B, M, h, w) → (B, N, h/4, w/4)
* ``h_s`` hyper-synthesis, ``z_hat`` → entropy parameters of ``y`` (B, N, h/4, w/4) → (B, 2M, h, w)
* ``SemanticPrior`` decoded semantic tokens → a correction of the entropy parameters on the latent grid
* ``CheckerboardContext`` decoded anchor half of ``y_hat`` → a correction of the other half's parameters

Everything here is an ``nn.Module`` built from CompressAI layers; the entropy
models and the coding itself live in ``semcodec.models.residual`` and
``semcodec.bitstream.entropy``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .compressai_parts import GDN, conv, deconv


def analysis_transform(N: int, M: int) -> nn.Sequential:
    """``g_a``: four stride-2 5×5 convolutions with GDN. (B, 3, H, W) → (B, M, H/16, W/16)."""
    return nn.Sequential(
        conv(3, N), GDN(N),
        conv(N, N), GDN(N),
        conv(N, N), GDN(N),
        conv(N, M),
    )


def synthesis_transform(N: int, M: int) -> nn.Sequential:
    """``g_s``: mirror of ``g_a`` with inverse GDN. (B, M, h, w) → (B, 3, 16h, 16w)."""
    return nn.Sequential(
        deconv(M, N), GDN(N, inverse=True),
        deconv(N, N), GDN(N, inverse=True),
        deconv(N, N), GDN(N, inverse=True),
        deconv(N, 3),
    )


def hyper_analysis_transform(N: int, M: int) -> nn.Sequential:
    """``h_a``: (B, M, h, w) → (B, N, h/4, w/4)."""
    return nn.Sequential(
        conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
        conv(N, N), nn.LeakyReLU(inplace=True),
        conv(N, N),
    )


def hyper_synthesis_transform(N: int, M: int) -> nn.Sequential:
    """``h_s`` of the mean-scale hyperprior: (B, N, h/4, w/4) → (B, 2M, h, w) = (scales ‖ means)."""
    return nn.Sequential(
        deconv(N, M), nn.LeakyReLU(inplace=True),
        deconv(M, M * 3 // 2), nn.LeakyReLU(inplace=True),
        conv(M * 3 // 2, M * 2, stride=1, kernel_size=3),
    )


class SemanticPrior(nn.Module):
    """Maps decoded semantic tokens onto the latent grid as a correction of the entropy parameters.

    ::

        tokens (B, gh·gw, D) ─ reshape → (B, D, gh, gw) ─ 1×1 conv → C ─ resize to the latent
        grid of the padded square ─ crop the image region → (B, C, h, w) ─ 3×3 convs → (B, 2M, h, w)

    The last convolution starts at zero, so a model with an untrained prior behaves
    exactly like the model without one; a stream without layer 0 uses no correction.
    """

    def __init__(self, token_dim: int, channels: int, M: int):
        super().__init__()
        self.project = nn.Conv2d(token_dim, channels, kernel_size=1)
        self.refine = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(channels, 2 * M, kernel_size=3, padding=1),
        )
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def keep_eager_under_compile(self) -> None:
        """Run this prior eagerly inside ``torch.compile`` (``semcodec train --compile``): each crop's region
        (Python floats that change every batch) would otherwise be traced as constants, one new graph per batch.

        Called by the training loop before it compiles, not as a decorator here: ``torch.compiler.disable``
        imports ``torch._dynamo`` (about 1 s), which coding never needs.
        """
        self.forward = torch.compiler.disable(self.forward)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int],
                region: "tuple[float, float, float, float] | list[tuple[float, float, float, float]]",
                latent_size: tuple[int, int]) -> torch.Tensor:
        """Args:
            tokens: (B, gh*gw, D) decoded patch tokens in raster order.
            grid: (gh, gw) token grid.
            region: (top, left, height, width) of the latent's area inside the tower's input, as
                fractions of it; one for the batch or one per image.
            latent_size: (h, w) of the latent ``y``.

        Returns:
            (B, 2M, h, w) additive correction of (scales ‖ means) parameters.
        """
        B, _, D = tokens.shape
        gh, gw = grid
        t = tokens.transpose(1, 2).reshape(B, D, gh, gw)        # (B, D, gh, gw)
        f = self.project(t)                                     # (B, C, gh, gw)
        if isinstance(region, list):
            f = torch.cat([_region_on_latent(f[i:i + 1], r, latent_size) for i, r in enumerate(region)])
        else:
            f = _region_on_latent(f, region, latent_size)       # (B, C, h, w)
        return self.refine(f)                                   # (B, 2M, h, w)


def _region_on_latent(f: torch.Tensor, region: tuple[float, float, float, float],
                      latent_size: tuple[int, int]) -> torch.Tensor:
    """Resize token features (B, C, gh, gw) so that ``region`` covers exactly the (h, w) latent; crop it."""
    h, w = latent_size
    top, left, rh, rw = region
    # At least one row and column, and a crop that starts inside it: an image of a few pixels has a
    # latent region several times larger than the tower input (its padding), which would round to 0.
    full_h, full_w = max(round(h / rh), 1), max(round(w / rw), 1)
    f = F.interpolate(f, size=(full_h, full_w), mode="bilinear", align_corners=False)
    r0, c0 = min(round(top * full_h), full_h - 1), min(round(left * full_w), full_w - 1)
    f = f[:, :, r0:r0 + h, c0:c0 + w]                           # (B, C, ≤h, ≤w)
    if f.shape[-2:] != (h, w):                                   # rounding at the border
        f = F.pad(f, (0, w - f.shape[-1], 0, h - f.shape[-2]), mode="replicate")
    return f


#: The taps (row, column) of a 5×5 window centred on a non-anchor that fall on anchors: row + column odd.
CONTEXT_TAPS = tuple((dy, dx) for dy in range(5) for dx in range(5) if (dy + dx) % 2 == 1)


class CheckerboardContext(nn.Module):
    """Spatial context of the two-pass checkerboard order (He et al., "Checkerboard Context
    Model for Efficient Learned Image Compression", CVPR 2021).

    The latent is coded in two passes: the *anchors* (``(i + j)`` even) with the
    hyperprior's parameters alone, then the *non-anchors*, whose parameters this
    module corrects from the decoded anchors around them::

        y_hat · anchor (B, M, h, w) ─ 5×5 conv → M ─┐
        params (B, 2M, h, w) ───────────────────────┴ concat ─ 1×1 → 2M ─ LeakyReLU ─ 1×1 → 2M

    Around a non-anchor only the 12 taps of :data:`CONTEXT_TAPS` can see an anchor, so only
    those weights exist (``context_weight``, (M, M, 12)); the input is zero at the non-anchors.
    The last convolution starts at zero, so a model with an untrained context codes exactly like
    the model without one.
    """

    def __init__(self, M: int):
        super().__init__()
        dense = nn.Conv2d(M, M, kernel_size=5, padding=2)      # for PyTorch's default initialization
        taps = torch.tensor([dy * 5 + dx for dy, dx in CONTEXT_TAPS])
        self.register_buffer("tap_index", taps, persistent=False)
        self.context_weight = nn.Parameter(dense.weight.detach().flatten(2)[..., taps].clone())   # (M, M, 12)
        self.context_bias = nn.Parameter(dense.bias.detach().clone())                            # (M,)
        self.fuse = nn.Sequential(
            nn.Conv2d(3 * M, 2 * M, kernel_size=1), nn.LeakyReLU(inplace=True),
            nn.Conv2d(2 * M, 2 * M, kernel_size=1),
        )
        nn.init.zeros_(self.fuse[-1].weight)
        nn.init.zeros_(self.fuse[-1].bias)

    def kernel(self) -> torch.Tensor:
        """The 5×5 convolution kernel (M, M, 5, 5), zero at the taps that never see an anchor."""
        M = self.context_weight.shape[0]
        dense = self.context_weight.new_zeros(M, M, 25)
        dense[..., self.tap_index] = self.context_weight
        return dense.view(M, M, 5, 5)

    def forward(self, y_hat_anchors: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Args:
            y_hat_anchors: (B, M, h, w) decoded latent, zero at the non-anchor positions.
            params: (B, 2M, h, w) hyperprior (and semantic) parameters (scales ‖ means).

        Returns:
            (B, 2M, h, w) additive correction of the parameters (meaningful at non-anchors only).
        """
        context = F.conv2d(y_hat_anchors, self.kernel(), self.context_bias, padding=2)   # (B, M, h, w)
        return self.fuse(torch.cat([params, context], dim=1))


def checkerboard_anchors(latent_size: tuple[int, int], device=None) -> torch.Tensor:
    """(1, 1, h, w) bool: the anchor positions ``(i + j)`` even of the checkerboard order."""
    h, w = latent_size
    i = torch.arange(h, device=device)[:, None]
    j = torch.arange(w, device=device)[None, :]
    return ((i + j) % 2 == 0)[None, None]
