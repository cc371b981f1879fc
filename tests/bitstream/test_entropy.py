"""Tests of semcodec.bitstream.entropy: round trips, goldens, damage and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semcodec.bitstream.entropy import (
    MAX_SYMBOL_SPAN,
    CategoricalTables,
    EntropyDecoder,
    EntropyEncoder,
    ScaleTable,
    param_digest,
    snap_means,
)
from semcodec.errors import CorruptStreamError, InvalidInputError, SemcodecError

TABLE = ScaleTable.geometric(min=0.11, max=256.0, count=64)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


# --------------------------------------------------------------------------- #
# Strategies: a segment is a dict of everything needed to encode and decode it
# --------------------------------------------------------------------------- #


@st.composite
def gaussian_segments(draw):
    shape = draw(shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        lo, hi = -1024, 1024
    else:
        lo = draw(st.integers(-300, 300))
        hi = lo + draw(st.integers(0, 300))
    family = draw(st.sampled_from(["gaussian", "laplace"]))
    grid = draw(st.sampled_from([1, 2, 16, 256]))
    scale_index = rng.integers(0, len(TABLE), size=shape).astype(draw(st.sampled_from([np.int8, np.int32, np.int64])))
    mean_q = None
    if draw(st.booleans()):
        mean_q = rng.integers((lo - 20) * grid, (hi + 20) * grid + 1, size=shape)
    if draw(st.booleans()):  # symbols from the model (realistic) or uniform over the range (worst case)
        mean = 0.0 if mean_q is None else mean_q / grid
        noise = rng.standard_normal(shape) if family == "gaussian" else rng.laplace(size=shape)
        symbols = np.clip(np.rint(mean + TABLE.scales[scale_index] * noise), lo, hi).astype(np.int64)
    else:
        symbols = rng.integers(lo, hi + 1, size=shape)
    return dict(
        kind="gaussian",
        symbols=symbols,
        params=dict(scale_index=scale_index, table=TABLE, mean_q=mean_q, mean_grid=grid, lo=lo, hi=hi, family=family),
    )


@st.composite
def categorical_tables(draw):
    num_tables, width = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pmf = rng.integers(0, 4, size=(num_tables, width)) * rng.integers(0, 2, size=(num_tables, width))  # many zeros
    pmf[:, 0] += pmf[:, 0] == 0  # at least one nonzero count per table...
    pmf = pmf[:, rng.permutation(width)] if draw(st.booleans()) else pmf  # ...not always in front
    length = None
    if draw(st.booleans()):
        length = rng.integers(1, width + 1, size=num_tables)
        for k in range(num_tables):  # keep a nonzero count inside the table
            if pmf[k, : length[k]].sum() == 0:
                pmf[k, 0] = 1
    if draw(st.booleans()):
        pmf = pmf * draw(st.sampled_from([1000, 2**23]))  # large counts stay exact
        pmf = np.minimum(pmf, 2**24 - 1)
    offset = rng.integers(-10, 11, size=num_tables)
    return CategoricalTables(pmf=pmf, offset=offset, length=length)


@st.composite
def categorical_segments(draw, tables=None):
    tables = tables if tables is not None else draw(categorical_tables())
    shape = draw(shapes)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    table_index = rng.integers(0, tables.num_tables, size=shape)
    category = np.floor(rng.random(shape) * tables.length[table_index]).astype(np.int64)
    symbols = tables.offset[table_index] + category  # zero-count categories included
    return dict(kind="categorical", symbols=symbols, params=dict(tables=tables, table_index=table_index))


segments = st.one_of(gaussian_segments(), categorical_segments())


def encode_all(segs) -> bytes:
    enc = EntropyEncoder()
    for seg in segs:
        if seg["kind"] == "gaussian":
            enc.encode_gaussian(seg["symbols"], **seg["params"])
        else:
            enc.encode_categorical(seg["symbols"], **seg["params"])
    return enc.to_bytes()


def decode_one(dec: EntropyDecoder, seg) -> np.ndarray:
    if seg["kind"] == "gaussian":
        return dec.decode_gaussian(**seg["params"])
    return dec.decode_categorical(**seg["params"])


# --------------------------------------------------------------------------- #
# Round trips
# --------------------------------------------------------------------------- #


@FAST
@given(st.lists(segments, min_size=1, max_size=4))
def test_round_trip_several_segments(segs):
    data = encode_all(segs)
    assert len(data) % 4 == 0
    dec = EntropyDecoder(data)
    for seg in segs:
        out = decode_one(dec, seg)
        assert out.dtype == np.int32
        assert out.shape == seg["symbols"].shape
        np.testing.assert_array_equal(out, seg["symbols"])
    dec.finish()


@FAST
@given(gaussian_segments())
def test_gaussian_bytes_do_not_depend_on_dtypes_or_torch(seg):
    p = dict(seg["params"])
    reference = encode_all([seg])
    p["scale_index"] = torch.from_numpy(np.asarray(p["scale_index"], dtype=np.int64))
    if p["mean_q"] is not None:
        p["mean_q"] = np.asarray(p["mean_q"], dtype=np.int32)
    enc = EntropyEncoder()
    enc.encode_gaussian(torch.from_numpy(np.asarray(seg["symbols"], dtype=np.int32)), **p)
    assert enc.to_bytes() == reference


def test_zero_dim_and_single_element():
    enc = EntropyEncoder()
    enc.encode_gaussian(np.int64(3), np.int32(20), TABLE, mean_q=np.int64(40), mean_grid=16)
    enc.encode_gaussian(np.array([-7]), np.array([9]), TABLE, family="laplace")
    dec = EntropyDecoder(enc.to_bytes())
    first = dec.decode_gaussian(np.int32(20), TABLE, mean_q=np.int64(40), mean_grid=16)
    assert first.shape == () and int(first) == 3
    assert dec.decode_gaussian(np.array([9]), TABLE, family="laplace").tolist() == [-7]


def test_certain_symbols_cost_nothing():
    tables = CategoricalTables(pmf=np.array([[5, 0, 0], [1, 1, 1]]), offset=np.array([4, 0]), length=np.array([1, 3]))
    enc = EntropyEncoder()
    enc.encode_categorical(np.full((3, 3), 4), tables, np.zeros((3, 3), dtype=int))  # one category: 0 bits
    enc.encode_gaussian(np.full(10, 7), np.zeros(10, dtype=int), TABLE, lo=7, hi=7)  # lo == hi: 0 bits
    assert enc.to_bytes() == b""
    dec = EntropyDecoder(b"")
    np.testing.assert_array_equal(dec.decode_categorical(tables, np.zeros((3, 3), dtype=int)), np.full((3, 3), 4))
    np.testing.assert_array_equal(dec.decode_gaussian(np.zeros(10, dtype=int), TABLE, lo=7, hi=7), np.full(10, 7))


def test_well_predicted_gaussian_costs_about_its_entropy():
    rng = np.random.default_rng(1)
    n = 20000
    scale_index = rng.integers(10, 40, size=n)
    mean_q = rng.integers(-160, 161, size=n)
    std, mean = TABLE.scales[scale_index], mean_q / 16
    symbols = np.rint(mean + std * rng.standard_normal(n)).astype(np.int64)
    enc = EntropyEncoder()
    enc.encode_gaussian(symbols, scale_index, TABLE, mean_q=mean_q, mean_grid=16)
    # Ideal cost: -log2 of the quantized Gaussian mass of each symbol.
    upper = torch.distributions.Normal(torch.from_numpy(mean), torch.from_numpy(std))
    p = upper.cdf(torch.from_numpy(symbols + 0.5)) - upper.cdf(torch.from_numpy(symbols - 0.5))
    ideal = float(-torch.log2(p.clamp_min(1e-12)).sum())
    assert ideal <= enc.num_bits() <= ideal * 1.01 + 64


# --------------------------------------------------------------------------- #
# CompressAI EntropyBottleneck conversion
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def bottleneck():
    import semcodec._compat  # noqa: F401 - makes torchvision (and compressai) importable
    from compressai.entropy_models import EntropyBottleneck

    torch.manual_seed(0)
    eb = EntropyBottleneck(8)
    eb.update(force=True, update_quantiles=True)  # quantiles from the density: negligible tail mass
    return eb.eval()


def test_entropy_bottleneck_tables_match_its_cdfs(bottleneck):
    tables = CategoricalTables.from_entropy_bottleneck(bottleneck)
    cdf = bottleneck._quantized_cdf.numpy()
    cdf_length = bottleneck._cdf_length.numpy()
    assert tables.num_tables == 8
    np.testing.assert_array_equal(tables.offset, bottleneck._offset.numpy())
    np.testing.assert_array_equal(tables.length, cdf_length - 2)
    for c in range(8):
        n = cdf_length[c] - 2
        np.testing.assert_array_equal(tables.pmf[c, :n], np.diff(cdf[c, : n + 1]))


def test_entropy_bottleneck_round_trip_and_rate(bottleneck):
    tables = CategoricalTables.from_entropy_bottleneck(bottleneck)
    rng = np.random.default_rng(0)
    shape = (2, 8, 16, 16)  # (B, C, H, W)
    table_index = np.broadcast_to(np.arange(8)[None, :, None, None], shape)
    # Draw symbols from each channel's own table: categories by inverse CDF.
    probs = tables.pmf / tables.pmf.sum(axis=1, keepdims=True)
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(shape)
    category = (u[..., None] > cdf[table_index]).sum(axis=-1)
    category = np.minimum(category, tables.length[table_index] - 1)
    symbols = tables.offset[table_index] + category

    enc = EntropyEncoder()
    enc.encode_categorical(symbols, tables, table_index)
    data = enc.to_bytes()
    dec = EntropyDecoder(data)
    np.testing.assert_array_equal(dec.decode_categorical(tables, table_index), symbols)
    dec.finish()

    # The same symbols through CompressAI: y = symbols + medians quantizes back to them.
    medians = bottleneck._get_medians().detach().reshape(1, 8, 1, 1)
    y = torch.from_numpy(symbols).float() + medians
    np.testing.assert_array_equal(bottleneck.quantize(y, "symbols", medians).numpy(), symbols)
    with torch.no_grad():
        _, likelihoods = bottleneck(y, training=False)
    ideal = float(-torch.log2(likelihoods).sum())
    assert abs(8 * len(data) - ideal) <= 0.01 * ideal + 64


def test_entropy_bottleneck_without_update_is_refused():
    import semcodec._compat  # noqa: F401
    from compressai.entropy_models import EntropyBottleneck

    with pytest.raises(InvalidInputError, match="update"):
        CategoricalTables.from_entropy_bottleneck(EntropyBottleneck(4))


def test_from_quantized_cdf_handles_ragged_lengths():
    cdf = np.array([[0, 10, 30, 65536, 0, 0], [0, 100, 65000, 65400, 65535, 65536]])
    tables = CategoricalTables.from_quantized_cdf(cdf, np.array([4, 6]), np.array([-1, -2]))
    np.testing.assert_array_equal(tables.length, [2, 4])
    np.testing.assert_array_equal(tables.pmf, [[10, 20, 0, 0], [100, 64900, 400, 135]])
    table_index = np.array([0, 0, 1, 1, 1, 1])
    symbols = np.array([-1, 0, -2, -1, 0, 1])
    enc = EntropyEncoder()
    enc.encode_categorical(symbols, tables, table_index)
    np.testing.assert_array_equal(EntropyDecoder(enc.to_bytes()).decode_categorical(tables, table_index), symbols)
    with pytest.raises(InvalidInputError):
        enc.encode_categorical(np.array([1]), tables, np.array([0]))  # the overflow slot is not a category


# --------------------------------------------------------------------------- #
# Golden bytes: pin our formulas and constriction's arithmetic
# --------------------------------------------------------------------------- #

GOLDEN_TABLE_FINGERPRINT = "c528d2d4782349a6"
# Produced by golden_stream() with constriction 0.5.0; a change here breaks old files.
GOLDEN_HEX = (
    "4bfb9451632f2a5bcafd636aecf7ad98f2689af27a36cc8a3f5a6b3008f84808"
    "3a089840afc5f74ff74fbdf7acf7efb41880848ea21b3d8a1c35f2d3c7a10139"
    "e1c6591be998c6616d4b5995e9ef05119ed8062cb48c97b0696236a74ba7dec7"
    "9c7c66b7312e7863c035820c3347a13a7f9e09ff98e539ce46ed2835bc31ddf6"
    "4b11b2eef692850ed7dcb517df5ae7c74e6586486ad4557f92730c0c72baa813"
    "50d0e2197387bc130019902a2100bf20201f0065"
)


def golden_stream() -> bytes:
    enc = EntropyEncoder()
    tables = CategoricalTables(pmf=np.array([[3, 0, 5, 1], [1, 1, 1, 1]]), offset=np.array([-2, 10]))
    enc.encode_categorical(np.array([-2, 11, 1, 13, 0]), tables, np.array([0, 1, 0, 1, 0]))
    scale_index = np.array([[0, 7, 15], [31, 47, 63]])
    enc.encode_gaussian(np.array([[0, 1, -3], [12, -40, 300]]), scale_index, TABLE,
                        mean_q=np.array([[0, 5, -33], [160, -17, 1000]]), mean_grid=16)
    enc.encode_gaussian(np.array([2, -1, 0, 5]), np.array([20, 20, 3, 40]), TABLE, lo=-8, hi=8, family="laplace")
    i = np.arange(64)  # every table entry once, symbols and means from fixed formulas
    enc.encode_gaussian((i * 37) % 41 - 20, i, TABLE, mean_q=(i * 5) % 33 - 16, mean_grid=16)
    enc.encode_gaussian((i * 11) % 9 - 4, i[::-1], TABLE, mean_q=i - 32, mean_grid=4, lo=-100, hi=50, family="laplace")
    return enc.to_bytes()


def test_golden_scale_table():
    assert TABLE.fingerprint() == GOLDEN_TABLE_FINGERPRINT
    assert TABLE.scales[-1] == 256.0
    # Same formula as CompressAI's get_scale_table, up to the documented 20-bit rounding.
    reference = np.exp(np.linspace(math.log(0.11), math.log(256.0), 64))
    np.testing.assert_allclose(TABLE.scales, reference, rtol=2**-20, atol=0)


def test_golden_bytes():
    assert golden_stream().hex() == GOLDEN_HEX


# --------------------------------------------------------------------------- #
# Damaged streams raise only SemcodecError subclasses
# --------------------------------------------------------------------------- #

DAMAGE_SEGMENTS = [
    dict(kind="categorical", symbols=np.array([0, 1, 2, 0, 0, 1]),
         params=dict(tables=CategoricalTables(pmf=np.array([[5, 0, 1], [1, 2, 3]]), offset=np.array([0, 0])),
                     table_index=np.array([0, 1, 1, 0, 0, 1]))),
    dict(kind="gaussian", symbols=np.array([[0, 4, -2], [100, 0, 1]]),
         params=dict(scale_index=np.array([[0, 10, 20], [63, 1, 30]]), table=TABLE,
                     mean_q=np.array([[0, 64, -16], [1600, 0, 8]]), mean_grid=16, lo=-1024, hi=1024, family="gaussian")),
    dict(kind="gaussian", symbols=np.array([1, -3, 0]),
         params=dict(scale_index=np.array([5, 25, 0]), table=TABLE, mean_q=None, mean_grid=16,
                     lo=-5, hi=5, family="laplace")),
]


def decode_damaged(data: bytes) -> None:
    """Decodes DAMAGE_SEGMENTS from ``data``: SemcodecError or in-range output."""
    try:
        dec = EntropyDecoder(data)
        for seg in DAMAGE_SEGMENTS:
            out = decode_one(dec, seg)
            assert out.shape == seg["symbols"].shape
            if seg["kind"] == "gaussian":
                assert out.min() >= seg["params"]["lo"] and out.max() <= seg["params"]["hi"]
        dec.finish()
    except SemcodecError as exc:
        # The parameters are valid, so the only acceptable complaint is about the data.
        assert isinstance(exc, CorruptStreamError), exc


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=80))
def test_garbage_raises_only_semcodec_errors(data):
    decode_damaged(data)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_truncated_or_flipped_stream_raises_only_semcodec_errors(draw):
    data = bytearray(encode_all(DAMAGE_SEGMENTS))
    if draw.draw(st.booleans()):
        data = data[: draw.draw(st.integers(0, len(data)))]
    elif data:
        i = draw.draw(st.integers(0, len(data) - 1))
        data[i] ^= 1 << draw.draw(st.integers(0, 7))
    decode_damaged(bytes(data))


def test_valid_stream_decodes_and_bad_length_is_corrupt():
    data = encode_all(DAMAGE_SEGMENTS)
    dec = EntropyDecoder(data)
    for seg in DAMAGE_SEGMENTS:
        np.testing.assert_array_equal(decode_one(dec, seg), seg["symbols"])
    dec.finish()
    with pytest.raises(CorruptStreamError, match="multiple of 4"):
        EntropyDecoder(data[:-1])


@pytest.mark.parametrize("extra", [bytes(4), b"\xff" * 4, b"\x01\x00\x00\x80", bytes(12)])
def test_trailing_words_are_rejected(extra):
    # A single trailing word hides inside the decoder's two-word look-ahead; the re-encoding check still sees it.
    data = encode_all(DAMAGE_SEGMENTS)
    dec = EntropyDecoder(data + extra)
    for seg in DAMAGE_SEGMENTS:
        np.testing.assert_array_equal(decode_one(dec, seg), seg["symbols"])
    with pytest.raises(CorruptStreamError, match=f"continues for {len(extra) // 4} word"):
        dec.finish()


def test_data_that_is_not_the_encoding_of_its_symbols_is_rejected():
    data = bytearray(encode_all(DAMAGE_SEGMENTS))
    found = False
    for i in range(len(data)):  # find a bit flip that still decodes to in-range symbols
        damaged = bytearray(data)
        damaged[i] ^= 1
        dec = EntropyDecoder(bytes(damaged))
        try:
            for seg in DAMAGE_SEGMENTS:
                decode_one(dec, seg)
        except CorruptStreamError:
            continue
        found = True
        with pytest.raises(CorruptStreamError):
            dec.finish()
    assert found


def test_decoder_refuses_after_a_failure():
    # 0xff... words make constriction report invalid data for this model.
    dec = EntropyDecoder(b"\xff" * 8)
    seg = DAMAGE_SEGMENTS[1]
    failed = False
    for _ in range(20):
        try:
            decode_one(dec, seg)
        except CorruptStreamError:
            failed = True
            break
    assert failed
    with pytest.raises(CorruptStreamError, match="earlier"):
        decode_one(dec, DAMAGE_SEGMENTS[0])


# --------------------------------------------------------------------------- #
# Validation: bad arguments raise InvalidInputError with a message
# --------------------------------------------------------------------------- #

IDX = np.array([0, 5, 63])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(symbols=np.array([0, 1025, 0])), r"symbols must lie in \[-1024, 1024\]"),
        (dict(symbols=np.array([0, -3, 0]), lo=-2, hi=2), "symbols must lie"),
        (dict(scale_index=np.array([0, 5, 64])), "scale_index must lie"),
        (dict(scale_index=np.array([0, -1, 3])), "scale_index must lie"),
        (dict(scale_index=np.array([0.0, 5.0, 3.0])), "scale_index must be an array of integers"),
        (dict(scale_index=np.array([True, False, True])), "integers"),
        (dict(symbols=np.array([0.0, 1.0, 0.0])), "symbols must be an array of integers"),
        (dict(symbols=np.array([0, 1])), "shape"),
        (dict(mean_q=np.array([1, 2])), "shape"),
        (dict(mean_q=np.array([0.5, 1.0, 2.0])), "mean_q must be an array of integers"),
        (dict(mean_q=np.array([0, 2**31, 0])), "mean_q must lie"),
        (dict(mean_grid=12), "power of two"),
        (dict(mean_grid=0), "power of two"),
        (dict(mean_grid=16.0), "mean_grid must be an integer"),
        (dict(lo=3, hi=2, symbols=np.array([2, 2, 2])), "empty"),
        (dict(lo=0, hi=MAX_SYMBOL_SPAN + 1), "too wide"),
        (dict(family="cauchy"), "family"),
        (dict(table=np.array([1.0, 2.0])), "ScaleTable"),
    ],
)
def test_gaussian_validation(kwargs, match):
    args = dict(symbols=np.array([0, 1, -1]), scale_index=IDX, table=TABLE)
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=match):
        EntropyEncoder().encode_gaussian(**args)
    if "symbols" not in kwargs:  # the decoder validates the same parameters
        args.pop("symbols")
        with pytest.raises(InvalidInputError, match=match):
            EntropyDecoder(b"").decode_gaussian(**args)


def test_categorical_validation():
    tables = CategoricalTables(pmf=np.array([[1, 2, 0], [4, 0, 0]]), offset=np.array([0, -1]), length=np.array([3, 2]))
    enc = EntropyEncoder()
    with pytest.raises(InvalidInputError, match="table_index must lie"):
        enc.encode_categorical(np.array([0]), tables, np.array([2]))
    with pytest.raises(InvalidInputError, match="table 1, whose range is \\[-1, 0\\]"):
        enc.encode_categorical(np.array([0, 1]), tables, np.array([0, 1]))
    with pytest.raises(InvalidInputError, match="shape"):
        enc.encode_categorical(np.array([0, 1]), tables, np.array([0]))
    with pytest.raises(InvalidInputError, match="CategoricalTables"):
        enc.encode_categorical(np.array([0]), np.array([[1, 2]]), np.array([0]))
    with pytest.raises(InvalidInputError, match="table_index must lie"):
        EntropyDecoder(b"").decode_categorical(tables, np.array([-1]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pmf=np.array([[1, -1]])), "pmf counts must lie"),
        (dict(pmf=np.array([[1, 2**24]])), "pmf counts must lie"),
        (dict(pmf=np.array([[0, 0]])), "no nonzero count"),
        (dict(pmf=np.array([[0, 3]]), length=np.array([1])), "no nonzero count"),
        (dict(pmf=np.array([[1.0, 2.0]])), "integers"),
        (dict(pmf=np.array([1, 2])), "shape"),
        (dict(offset=np.array([0, 1])), "offset must have shape"),
        (dict(length=np.array([3])), "length must lie"),
        (dict(length=np.array([0])), "length must lie"),
    ],
)
def test_categorical_tables_validation(kwargs, match):
    args = dict(pmf=np.array([[1, 2]]), offset=np.array([0]))
    args.update(kwargs)
    with pytest.raises(InvalidInputError, match=match):
        CategoricalTables(**args)


def test_decoder_input_type():
    with pytest.raises(InvalidInputError, match="bytes"):
        EntropyDecoder("abcd")


# --------------------------------------------------------------------------- #
# Snapping helpers and tables
# --------------------------------------------------------------------------- #


def test_index_of_rounds_up_and_clamps():
    t = ScaleTable(np.array([0.5, 1.0, 2.0]))
    scales = np.array([-1.0, 0.0, 0.5, 0.5000001, 1.0, 1.5, 2.0, 2.5, np.inf])
    assert t.index_of(scales).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert t.index_of(torch.tensor(scales, dtype=torch.float32)).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert t.index_of(torch.tensor([[0.7]], dtype=torch.bfloat16)).shape == (1, 1)
    assert t.index_of(np.array(0.7)).dtype == np.int32
    with pytest.raises(InvalidInputError, match="NaN"):
        t.index_of(np.array([1.0, np.nan]))


@FAST
@given(st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=1, max_size=20))
def test_index_of_is_smallest_entry_at_least_the_scale(values):
    x = np.array(values)
    idx = TABLE.index_of(x)
    chosen = TABLE.scales[idx]
    inside = x <= TABLE.scales[-1]
    assert np.all(chosen[inside] >= x[inside])
    below = np.where(idx > 0, TABLE.scales[np.maximum(idx - 1, 0)], -np.inf)
    assert np.all(below < x)


def test_snap_means():
    means = np.array([0.03, -1.5, 2.0, 1 / 32, 3 / 32, 1e12, -1e12])
    assert snap_means(means, grid=16).tolist() == [0, -24, 32, 0, 2, 2**31 - 1, -(2**31 - 1)]
    assert snap_means(torch.tensor([[0.25]]), grid=4).tolist() == [[1]]
    with pytest.raises(InvalidInputError, match="power of two"):
        snap_means(means, grid=10)
    with pytest.raises(InvalidInputError, match="NaN"):
        snap_means(np.array([np.nan]))


def test_scale_table_validation_and_identity():
    assert ScaleTable.geometric() == TABLE and hash(ScaleTable.geometric()) == hash(TABLE)
    assert len(ScaleTable.geometric(min=2.0, max=2.0, count=1)) == 1
    assert not TABLE.scales.flags.writeable
    for bad in ([], [1.0, 1.0], [2.0, 1.0], [0.0, 1.0], [1.0, np.inf], [[1.0, 2.0]]):
        with pytest.raises(InvalidInputError):
            ScaleTable(np.array(bad))
    with pytest.raises(InvalidInputError):
        ScaleTable.geometric(min=1.0, max=0.5)


def test_param_digest():
    a, b = np.arange(6).reshape(2, 3), np.arange(6).reshape(3, 2)
    assert param_digest(a) == param_digest(a.astype(np.int16)) == param_digest(torch.from_numpy(a))
    assert param_digest(a) != param_digest(b)  # the shape counts
    assert param_digest(a, a) != param_digest(a)
    assert len(param_digest(a, size=8)) == 8
    with pytest.raises(InvalidInputError):
        param_digest(np.array([1.5]))
