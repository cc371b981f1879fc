"""Rate control: the search itself on synthetic size curves, and size targets through the API."""

from __future__ import annotations

import math

import pytest
from helpers import SAMPLE
from hypothesis import given, settings
from hypothesis import strategies as st

import semcodec
from semcodec.api import compress_image
from semcodec.errors import RateControlError
from semcodec.ratecontrol import search_rate


def curve(a: float, b: float):
    """A size curve bytes(q) = a·exp(b·q), quantized to whole bytes, with a call counter."""
    calls = []

    def encode(q: float) -> bytes:
        calls.append(q)
        return bytes(int(a * math.exp(b * q)))

    return encode, calls


@given(a=st.floats(200, 5000), b=st.floats(0.2, 1.2), frac=st.floats(0.05, 0.95))
@settings(max_examples=200, deadline=None)
def test_hits_reachable_targets_within_two_percent(a, b, frac):
    encode, calls = curve(a, b)
    target = int(a * math.exp(b * 5 * frac))
    result = search_rate(encode, target, 0.0, 5.0)
    assert abs(len(result.data) - target) <= 0.02 * target
    assert len(calls) <= 8


@given(a=st.floats(200, 5000), b=st.floats(0.2, 1.2), frac=st.floats(0.05, 0.95))
@settings(max_examples=100, deadline=None)
def test_never_above(a, b, frac):
    encode, _ = curve(a, b)
    target = int(a * math.exp(b * 5 * frac))
    result = search_rate(encode, target, 0.0, 5.0, never_above=True)
    assert target * 0.98 <= len(result.data) <= target


def test_unreachable_targets_report_the_range():
    encode, _ = curve(1000, 0.5)
    with pytest.raises(RateControlError, match=r"below the smallest.*reachable: 1000"):
        search_rate(encode, 500, 0.0, 4.0)
    with pytest.raises(RateControlError, match=r"above the largest"):
        search_rate(encode, 10**6, 0.0, 4.0)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_size_targets_on_a_real_image(test_codec, fraction):
    lo = len(semcodec.compress(SAMPLE, quality=0, model=test_codec))
    hi = len(semcodec.compress(SAMPLE, quality=100, model=test_codec))
    target = int(lo + fraction * (hi - lo))
    r = compress_image(SAMPLE, size=target, model=test_codec)
    assert abs(len(r.data) - target) <= 0.02 * target
    assert semcodec.decompress(r.data).size == (r.width, r.height)
    r = compress_image(SAMPLE, bpp=target * 8 / (r.width * r.height), max_size=True, model=test_codec)
    assert len(r.data) <= target


def test_size_target_out_of_range(test_codec):
    with pytest.raises(RateControlError, match="reachable"):
        semcodec.compress(SAMPLE, size=20, model=test_codec)


def test_rate_curve_guess():
    from semcodec.ratecontrol import RateCurve

    curve = RateCurve.from_metadata([[-2, 0.05], [-1, 0.1], [0, 0.2], [1, 0.4], [2, 0.8]])
    span = (-2.0, 2.0)
    q, slope = curve.guess(0.2, span)
    assert q == pytest.approx(0.0) and slope == pytest.approx(math.log(2))
    assert curve.guess(0.3, span)[0] == pytest.approx(math.log(1.5) / math.log(2))
    assert curve.guess(0.001, span)[0] == -2.0 and curve.guess(100, span)[0] == 2.0
    assert curve.guess(0.01, (-10.0, 2.0))[0] == pytest.approx(-2 - math.log(5) / math.log(2))   # extrapolated


def test_rate_curve_reads_the_0_1_0_metadata_form():
    from semcodec.ratecontrol import RateCurve

    assert RateCurve.from_metadata([0.1, 0.2]).points == ((0.0, 0.1), (1.0, 0.2))
