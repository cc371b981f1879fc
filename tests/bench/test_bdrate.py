"""Tests of the Bjøntegaard metrics (semcodec.bench.bdrate) on curves whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semcodec.bench.bdrate import BDError, bd_psnr, bd_rate, mean_over_interval, prepare_curve, quality_interval

RATES = [0.12, 0.21, 0.33, 0.49, 0.70, 0.97, 1.31, 1.78]
PSNR = [27.1, 28.9, 30.6, 32.3, 33.9, 35.6, 37.2, 39.0]


def test_curve_against_itself_is_zero():
    assert bd_rate(RATES, PSNR, RATES, PSNR) == pytest.approx(0.0, abs=1e-12)
    assert bd_psnr(RATES, PSNR, RATES, PSNR) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("factor", [0.9, 1.1, 0.5])
def test_scaled_rates_give_exactly_that_bd_rate(factor):
    test = [r * factor for r in RATES]
    assert bd_rate(RATES, PSNR, test, PSNR) == pytest.approx((factor - 1) * 100, abs=1e-9)


def test_ten_percent_fewer_bits_is_minus_ten_percent_and_better_psnr():
    test = [r * 0.9 for r in RATES]
    assert bd_rate(RATES, PSNR, test, PSNR) == pytest.approx(-10.0, abs=1e-9)
    assert bd_psnr(RATES, PSNR, test, PSNR) > 0          # fewer bits for the same PSNR: better at equal rate


def test_psnr_shift_is_bd_psnr():
    assert bd_psnr(RATES, PSNR, RATES, [p + 0.5 for p in PSNR]) == pytest.approx(0.5, abs=1e-9)
    assert bd_psnr(RATES, PSNR, RATES, [p - 1.0 for p in PSNR]) == pytest.approx(-1.0, abs=1e-9)
    assert bd_rate(RATES, PSNR, RATES, [p + 0.5 for p in PSNR]) < 0


def test_log_linear_curves_match_the_closed_form():
    # Q = a + b ln R for both, test shifted by c dB: rate ratio at equal Q is exp(-c / b) everywhere.
    a, b, c = 35.0, 4.0, 0.8
    rates = np.geomspace(0.1, 2.0, 6)
    q = a + b * np.log(rates)
    q_test = a + c + b * np.log(rates * 1.07)                # other sample points of the shifted curve
    expected = (math.exp(-c / b) - 1) * 100
    assert bd_rate(rates, q, rates * 1.07, q_test) == pytest.approx(expected, abs=1e-9)
    assert bd_psnr(rates, q, rates * 1.07, q_test) == pytest.approx(c, abs=1e-9)


def test_other_samples_of_the_same_smooth_curve_give_about_zero():
    f = lambda r: 30 + 6 * np.log2(r) - 0.4 * np.log2(r) ** 2     # noqa: E731 (concave, smooth)
    r1, r2 = np.geomspace(0.1, 2, 8), np.geomspace(0.13, 1.8, 6)
    assert abs(bd_rate(r1, f(r1), r2, f(r2))) < 0.5
    assert abs(bd_psnr(r1, f(r1), r2, f(r2))) < 0.03


def test_order_duplicates_and_nans_do_not_matter():
    perm = [3, 0, 7, 5, 1, 6, 2, 4]
    shuffled_r, shuffled_q = [RATES[i] for i in perm], [PSNR[i] for i in perm]
    test = [r * 0.8 for r in RATES]
    ref = bd_rate(RATES, PSNR, test, PSNR)
    assert bd_rate(shuffled_r, shuffled_q, test, PSNR) == pytest.approx(ref, abs=1e-12)
    assert bd_rate(RATES + [RATES[2]], PSNR + [PSNR[2]], test, PSNR) == pytest.approx(ref, abs=1e-12)
    assert bd_rate(RATES + [math.nan], PSNR + [40.0], test + [0.0], PSNR + [41.0]) == pytest.approx(ref, abs=1e-12)


def test_swapping_anchor_and_test_inverts():
    test_r = [r * (0.8 + 0.03 * i) for i, r in enumerate(RATES)]
    test_q = [p + 0.1 * i for i, p in enumerate(PSNR)]
    r1, r2 = bd_rate(RATES, PSNR, test_r, test_q), bd_rate(test_r, test_q, RATES, PSNR)
    assert (1 + r1 / 100) * (1 + r2 / 100) == pytest.approx(1.0, abs=1e-12)
    assert bd_psnr(RATES, PSNR, test_r, test_q) == pytest.approx(-bd_psnr(test_r, test_q, RATES, PSNR), abs=1e-12)


def test_only_the_overlap_counts():
    # the test curve covers only the upper half: the lower half of the anchor must not matter
    upper_r, upper_q = RATES[4:], PSNR[4:]
    assert bd_rate(upper_r, upper_q, [r * 0.9 for r in upper_r], upper_q) == pytest.approx(-10.0, abs=1e-9)
    # against the whole anchor only the end slope of the shorter PCHIP differs: still about -10 %
    assert bd_rate(RATES, PSNR, [r * 0.9 for r in upper_r], upper_q) == pytest.approx(-10.0, abs=0.1)
    changed_low = [p - 3 if i < 3 else p for i, p in enumerate(PSNR)]
    assert bd_rate(RATES, changed_low, upper_r, upper_q) == pytest.approx(bd_rate(RATES, PSNR, upper_r, upper_q),
                                                                          abs=1e-12)


def test_quality_range_restricts_and_is_clipped_to_the_overlap():
    """A BD-rate over a PSNR range counts only that range, and only where both curves reach."""
    # the test curve is 10 % cheaper above 32 dB and 30 % dearer below: over 33–38 dB only the -10 % part counts
    test = [r * (0.9 if p > 32 else 1.3) for r, p in zip(RATES, PSNR)]
    assert bd_rate(RATES, PSNR, test, PSNR, quality_range=(33.9, 37.2)) == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate(RATES, PSNR, test, PSNR) > -10.0 + 1          # the whole overlap mixes both parts
    # a range wider than the curves: clipped to 27.1–39.0, the same as without a range
    assert bd_rate(RATES, PSNR, test, PSNR, quality_range=(20, 50)) == pytest.approx(bd_rate(RATES, PSNR, test, PSNR),
                                                                                    abs=1e-12)
    # the interval actually used: the range, cut to what both curves reach
    assert quality_interval(PSNR, PSNR[2:6], (30, 46)) == (PSNR[2], PSNR[5])
    assert quality_interval(PSNR, PSNR, (30, 36)) == (30.0, 36.0)
    with pytest.raises(BDError, match="within 40…46"):
        bd_rate(RATES, PSNR, RATES, PSNR, quality_range=(40, 46))   # both curves end at 39 dB


def test_errors():
    with pytest.raises(BDError, match="overlap"):
        bd_rate([0.1, 0.2], [20, 22], [1, 2], [30, 32])
    with pytest.raises(BDError, match="overlap"):
        bd_psnr([0.1, 0.2], [20, 22], [1, 2], [30, 32])
    with pytest.raises(BDError, match="two points"):
        bd_rate([0.1], [20], RATES, PSNR)
    with pytest.raises(BDError, match="two points"):
        bd_rate([0.1, 0.2], [20, 20], RATES, PSNR)     # one distinct quality
    with pytest.raises(BDError, match="as many"):
        prepare_curve([1, 2, 3], [1, 2])


def test_pchip_integral_is_exact_and_does_not_overshoot():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    assert mean_over_interval(x, 2 * x + 1, 0.0, 3.0) == pytest.approx(4.0, abs=1e-12)   # linear: exact
    step = np.array([0.0, 0.0, 1.0, 1.0])          # a cubic fit would dip below 0 and rise above 1 here
    assert mean_over_interval(x, step, 0.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert mean_over_interval(x, step, 2.0, 3.0) == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.05, 3.0), min_size=3, max_size=8, unique=True),
       st.floats(0.3, 3.0), st.floats(-2.0, 2.0))
def test_properties_on_random_monotone_curves(rates, scale, shift):
    r = np.sort(np.array(rates))
    if np.min(np.diff(np.log(r))) < 1e-3:
        return
    q = 30 + 5 * np.log(r) + np.cumsum(np.full(r.size, 0.01))   # strictly increasing quality
    assert bd_rate(r, q, r * scale, q) == pytest.approx((scale - 1) * 100, rel=1e-9, abs=1e-9)
    assert bd_psnr(r, q, r, q + shift) == pytest.approx(shift, abs=1e-9)
