"""Distortion and token-fidelity metrics of the benchmark harness.

All pixel metrics compare 8-bit RGB images as displayed (``(H, W, 3)`` uint8),
the way CompressAI's published Kodak results do:

* **PSNR (RGB)**: ``10·log10(255² / MSE)`` with the MSE taken over all H·W·3
  values of one image. Means over images are means of per-image PSNR.
* **MS-SSIM**: ``pytorch_msssim.ms_ssim`` on the RGB image (data range 255,
  5 scales, the standard weights, an 11-tap Gaussian window of σ 1.5). Images
  whose short side is 160 px or less cannot be downsampled four times with that
  window; for them the window shrinks to the largest odd size that fits
  (:func:`ms_ssim_window`), and below 33 px the metric is NaN.
* **Token fidelity**: the semantic tower's ``(N, D)`` patch tokens of the
  decoded image against those of the original: mean cosine similarity over
  the N tokens and mean squared error over all N·D values.

Example:
    >>> import numpy as np
    >>> a = np.zeros((8, 8, 3), np.uint8); b = a.copy(); b[0, 0, 0] = 16
    >>> round(psnr(a, b), 3)          # MSE = 256 / 192
    46.881
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["TokenFidelity", "mismatch", "ms_ssim", "ms_ssim_db", "ms_ssim_window", "mse", "psnr", "psnr_from_mse",
           "to_rgb_array", "token_fidelity"]

#: Peak value of 8-bit samples.
PEAK = 255.0
#: Window of the standard MS-SSIM (Wang et al. 2003) as pytorch_msssim implements it.
MS_SSIM_WINDOW = 11
#: MS-SSIM downsamples by 2 four times (5 scales).
_MS_SSIM_DOWNSAMPLINGS = 4


def to_rgb_array(image) -> np.ndarray:
    """A PIL image or an array as ``(H, W, 3)`` uint8 (grayscale is repeated to 3 channels)."""
    a = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 samples, got {a.dtype}")
    return a


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = to_rgb_array(a), to_rgb_array(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    return a, b


def mismatch(original, decoded) -> str | None:
    """Why ``decoded`` is not bit-exact to the ``original`` 8-bit RGB pixels, or None when it is
    (a grayscale decode of a gray original is exact: it is compared as RGB).

    Example:
        >>> a = np.zeros((2, 2, 3), np.uint8); b = a.copy(); b[0, 0, 1] = 3
        >>> mismatch(a, a) is None, mismatch(a, b)
        (True, 'not bit-exact: 1 of 12 samples differ, by up to 3')
    """
    a = to_rgb_array(original)
    try:
        b = to_rgb_array(decoded)
    except ValueError as e:
        return f"not bit-exact: {e}"
    if a.shape != b.shape:
        return f"not bit-exact: decoded {b.shape[1]}x{b.shape[0]}, original {a.shape[1]}x{a.shape[0]}"
    differ = a != b
    if not differ.any():
        return None
    largest = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
    return f"not bit-exact: {int(differ.sum())} of {a.size} samples differ, by up to {largest}"


def mse(a, b) -> float:
    """Mean squared error over all samples of two RGB images (float64)."""
    a, b = _pair(a, b)
    d = a.astype(np.float64) - b.astype(np.float64)
    return float(np.mean(d * d))


def psnr_from_mse(value: float, peak: float = PEAK) -> float:
    """PSNR in dB of a mean squared error (``inf`` for 0)."""
    return math.inf if value == 0 else 10.0 * math.log10(peak * peak / value)


def psnr(a, b) -> float:
    """PSNR (RGB, dB) of two 8-bit images; ``inf`` when they are identical."""
    return psnr_from_mse(mse(a, b))


def ms_ssim_window(short_side: int) -> int | None:
    """Gaussian window size MS-SSIM uses for an image of this short side (None: too small).

    The standard window (11) needs a short side above ``(11 - 1) · 2⁴ = 160`` px;
    smaller images get the largest odd window ``w ≥ 3`` with ``short_side > (w - 1) · 16``.
    """
    limit = 2 ** _MS_SSIM_DOWNSAMPLINGS
    if short_side > (MS_SSIM_WINDOW - 1) * limit:
        return MS_SSIM_WINDOW
    w = (short_side - 1) // limit + 1          # largest w with (w - 1) * 16 < short_side
    w = w if w % 2 else w - 1
    return w if w >= 3 else None


def ms_ssim(a, b) -> float:
    """MS-SSIM of two 8-bit RGB images (1.0 when identical; NaN below 33 px, see module doc)."""
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    a, b = _pair(a, b)
    win = ms_ssim_window(min(a.shape[:2]))
    if win is None:
        return math.nan
    x = torch.from_numpy(a.astype(np.float32)).permute(2, 0, 1)[None]   # (1, 3, H, W)
    y = torch.from_numpy(b.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        return float(_ms_ssim(x, y, data_range=PEAK, size_average=True, win_size=win))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM in dB, ``−10·log10(1 − MS-SSIM)`` (the scale on which MS-SSIM curves are compared)."""
    return math.inf if value >= 1 else -10.0 * math.log10(1.0 - value)


@dataclass(frozen=True)
class TokenFidelity:
    """How close decoded tokens are to the original ones."""

    cosine: float   # mean over tokens of the cosine similarity of the D-vectors
    mse: float      # mean over all N·D values of the squared difference


def token_fidelity(decoded, original) -> TokenFidelity:
    """Cosine and MSE of ``(N, D)`` (or ``(1, N, D)``) token tensors.

    Example:
        >>> import torch
        >>> t = torch.randn(4, 8)
        >>> token_fidelity(t, t)
        TokenFidelity(cosine=1.0, mse=0.0)
    """
    import torch

    t_hat = torch.as_tensor(decoded, dtype=torch.float64).reshape(-1, decoded.shape[-1])   # (N, D)
    t = torch.as_tensor(original, dtype=torch.float64).reshape(-1, original.shape[-1])
    if t_hat.shape != t.shape:
        raise ValueError(f"token shapes differ: {tuple(t_hat.shape)} vs {tuple(t.shape)}")
    cos = torch.nn.functional.cosine_similarity(t_hat, t, dim=-1, eps=1e-12).mean()
    return TokenFidelity(cosine=round(float(cos), 12), mse=float(((t_hat - t) ** 2).mean()))
