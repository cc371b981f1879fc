"""Bjøntegaard delta rate and delta PSNR with piecewise cubic (PCHIP) interpolation.

The Bjøntegaard metrics (VCEG-M33, 2001) summarize how far apart two
rate–distortion curves are:

* **BD-rate**: the average relative difference in *rate* at equal quality.
  Each curve is written as ``log R = f(Q)``; ``f`` is interpolated, integrated
  over the quality interval the two curves share, and the mean difference
  ``Δ = mean(f_test) − mean(f_anchor)`` becomes ``(exp Δ − 1) · 100 %``.
  Negative: the test codec needs fewer bits than the anchor for the same quality.
* **BD-PSNR** (BD-quality): the average difference in *quality* at equal rate,
  ``Q = g(log R)`` integrated over the shared log-rate interval.
  Positive: the test codec is better.

The interpolant is the monotone piecewise cubic Hermite interpolant (PCHIP,
Fritsch–Carlson), as in current VCEG/JVET practice: Bjøntegaard's update
(VCEG-AL22, 2008) replaced the original cubic polynomial fit by piecewise cubic
interpolation, which cannot overshoot between points. It is integrated exactly
(``scipy``'s ``PchipInterpolator.integrate``).

Preparation of each curve: non-finite points are dropped, points are sorted by
the abscissa (quality for BD-rate, log-rate for BD-PSNR), and points with equal
abscissa are merged by averaging their ordinates. At least two distinct points
are required (two give a straight line); the curves must overlap.

A BD-rate may be restricted to a quality range (``quality_range=(36, 46)``, the
high-rate section's): the integral then runs over the part of that range both
curves reach (:func:`quality_interval`), never extrapolating past a curve's end.

Example:
    >>> rates, psnr = [0.25, 0.5, 1.0, 2.0], [30.0, 33.0, 36.0, 39.0]
    >>> round(bd_rate(rates, psnr, [r * 0.9 for r in rates], psnr), 6)
    -10.0
    >>> round(bd_psnr(rates, psnr, rates, [p + 0.5 for p in psnr]), 6)
    0.5
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["BDError", "bd_psnr", "bd_rate", "mean_over_interval", "prepare_curve", "quality_interval"]


class BDError(ValueError):
    """The two curves cannot be compared (too few points, or no overlap)."""


def prepare_curve(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Finite points sorted by ``x``, equal ``x`` merged (mean ``y``); at least two distinct ``x``.

    Raises:
        BDError: fewer than two distinct finite points.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise BDError(f"a curve needs as many x as y values, got {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    ux, inverse = np.unique(x, return_inverse=True)         # sorted distinct x
    uy = np.bincount(inverse, weights=y) / np.bincount(inverse)
    if ux.size < 2:
        raise BDError(f"a curve needs at least two points with distinct values, got {ux.size}")
    return ux, uy


def mean_over_interval(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Mean of the PCHIP interpolant of ``(x, y)`` over ``[lo, hi]`` (exact integral / length)."""
    from scipy.interpolate import PchipInterpolator

    return float(PchipInterpolator(x, y, extrapolate=False).integrate(lo, hi)) / (hi - lo)


def _overlap(xa: np.ndarray, xt: np.ndarray, what: str) -> tuple[float, float]:
    lo, hi = max(xa[0], xt[0]), min(xa[-1], xt[-1])
    if not hi > lo:
        raise BDError(f"the curves do not overlap in {what} (anchor {xa[0]:.4g}…{xa[-1]:.4g}, "
                      f"test {xt[0]:.4g}…{xt[-1]:.4g})")
    return lo, hi


def quality_interval(anchor_quality: Sequence[float], test_quality: Sequence[float],
                     quality_range: tuple[float, float] | None = None) -> tuple[float, float]:
    """The quality interval a BD-rate integrates over: the qualities both curves reach, within
    ``quality_range`` when one is given (non-finite qualities are ignored).

    Raises:
        BDError: the curves (within the range) do not overlap.
    """
    qa = np.asarray(anchor_quality, dtype=np.float64).ravel()
    qt = np.asarray(test_quality, dtype=np.float64).ravel()
    qa, qt = qa[np.isfinite(qa)], qt[np.isfinite(qt)]
    if not qa.size or not qt.size:
        raise BDError("a curve has no finite quality")
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    where = ""
    if quality_range is not None:
        lo, hi = max(lo, quality_range[0]), min(hi, quality_range[1])
        where = f" within {quality_range[0]:g}…{quality_range[1]:g}"
    if not hi > lo:
        raise BDError(f"the curves do not overlap in quality{where} (anchor {qa.min():.4g}…{qa.max():.4g}, "
                      f"test {qt.min():.4g}…{qt.max():.4g})")
    return float(lo), float(hi)


def _log_rates(rates: Sequence[float]) -> np.ndarray:
    r = np.asarray(rates, dtype=np.float64).ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, np.log(np.where(r > 0, r, 1.0)), np.nan)  # non-positive rates are dropped


def bd_rate(anchor_rate: Sequence[float], anchor_quality: Sequence[float],
            test_rate: Sequence[float], test_quality: Sequence[float],
            quality_range: tuple[float, float] | None = None) -> float:
    """Bjøntegaard delta rate of ``test`` against ``anchor``, in percent.

    Args:
        anchor_rate, test_rate: rates (bpp, bytes or bits: any unit, the same for both).
        anchor_quality, test_quality: qualities (PSNR in dB, MS-SSIM in dB, …), higher is better.
        quality_range: integrate only over this part of the shared quality interval (e.g. ``(36, 46)``).

    Returns:
        Average rate difference at equal quality, ``(exp Δ − 1) · 100``; −10 means
        the test codec needs 10 % fewer bits.

    Raises:
        BDError: a curve has fewer than two points, or the quality ranges (within ``quality_range``)
            do not overlap.
    """
    qa, la = prepare_curve(anchor_quality, _log_rates(anchor_rate))
    qt, lt = prepare_curve(test_quality, _log_rates(test_rate))
    lo, hi = _overlap(qa, qt, "quality") if quality_range is None else quality_interval(qa, qt, quality_range)
    delta = mean_over_interval(qt, lt, lo, hi) - mean_over_interval(qa, la, lo, hi)
    return (math.exp(delta) - 1.0) * 100.0


def bd_psnr(anchor_rate: Sequence[float], anchor_quality: Sequence[float],
            test_rate: Sequence[float], test_quality: Sequence[float]) -> float:
    """Bjøntegaard delta quality (BD-PSNR when the quality is PSNR) of ``test`` against ``anchor``.

    Returns:
        Average quality difference at equal rate, in the quality's unit (dB for
        PSNR); positive means the test codec is better.

    Raises:
        BDError: a curve has fewer than two points, or the rate ranges do not overlap.
    """
    la, qa = prepare_curve(_log_rates(anchor_rate), anchor_quality)
    lt, qt = prepare_curve(_log_rates(test_rate), test_quality)
    lo, hi = _overlap(la, lt, "rate")
    return mean_over_interval(lt, qt, lo, hi) - mean_over_interval(la, qa, lo, hi)
