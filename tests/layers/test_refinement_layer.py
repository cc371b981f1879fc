"""Layer 2 (REF2): the refinement of the pixel layer, from high fidelity to lossless."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from helpers import SAMPLE, psnr

import semcodec
from semcodec.api import compress_image, extract_layers, refinement_step
from semcodec.bitstream.container import (
    REFINEMENT_LAYER,
    RESIDUAL_LAYER,
    SEMANTIC_LAYER,
    Container,
    read_container,
    write_container,
)
from semcodec.errors import (
    CorruptStreamError,
    InvalidInputError,
    MissingLayerError,
    ModelMismatchError,
    RateControlError,
    TruncatedStreamError,
    UnsupportedVersionError,
)
from semcodec.layers.refinement import RefinementCoder, dequantize, quantize
from semcodec.layers.refinement.coder import feature_counts


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth structure plus noise, (height, width, 3) uint8: a residual worth predicting."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    smooth = np.stack([120 + 80 * np.sin(xx / 9 + c) * np.cos(yy / 13) for c in range(3)], axis=-1)
    return np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)


def _blurred(image: np.ndarray) -> np.ndarray:
    """A stand-in for a decoded pixel layer: the image averaged over 3x3 (uint8)."""
    f = image.astype(np.float64)
    p = np.pad(f, ((1, 1), (1, 1)) + ((0, 0),) * (f.ndim - 2), mode="edge")
    out = sum(p[dy:dy + f.shape[0], dx:dx + f.shape[1]] for dy in range(3) for dx in range(3)) / 9
    return np.rint(out).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (5, 1, 3), (3, 5, 3), (2, 2, 1), (33, 47, 3), (40, 31, 1)])
def test_lossless_refinement_restores_every_pixel(shape):
    image = _photo(shape[0], shape[1])[..., : shape[2]]
    base = _blurred(image)
    coder = RefinementCoder()
    payload = coder.encode(image if shape[2] == 3 else image[..., 0], base[..., 0] if shape[2] == 1 else base, 16)
    decoded = coder.decode(payload, base[..., 0] if shape[2] == 1 else base)
    np.testing.assert_array_equal(decoded, image)


def test_a_gray_base_is_refined_to_rgb():
    image = _photo(24, 20)
    base = _blurred(image)[..., 1]                                    # the pixel layer of a nearly gray image
    payload = RefinementCoder().encode(image, base, 16)
    np.testing.assert_array_equal(RefinementCoder().decode(payload, base), image)


@pytest.mark.parametrize("step16", [24, 64, 160, 1024])
def test_a_lossy_step_bounds_the_error_and_fewer_bits_for_coarser_steps(step16):
    image = _photo(48, 64)
    base = _blurred(image)
    payload = RefinementCoder().encode(image, base, step16)
    decoded = RefinementCoder().decode(payload, base)
    step = step16 / 16
    # Rounding to the nearest step gives at most half a step; the rate-distortion choice may move a symbol one
    # step towards 0, so the bound is one and a half steps.
    assert np.abs(decoded.astype(int) - image).max() <= 1.5 * step + 1
    assert psnr(decoded, image) > psnr(base, image) if step16 <= 160 else psnr(decoded, image) >= psnr(base, image)
    finer = RefinementCoder().encode(image, base, max(16, step16 // 2))
    assert len(finer) > len(payload) if step16 <= 160 else len(finer) >= len(payload)


def test_quantization_round_trip_is_exact_for_step_one_and_rounds_to_the_nearest_step():
    r = np.arange(-255, 256)
    np.testing.assert_array_equal(dequantize(quantize(r, 16), 16), r)
    q = quantize(r, 64)
    assert np.abs(dequantize(q, 64) - r).max() <= 2


def test_the_same_input_gives_the_same_bytes():
    image = _photo(30, 30, seed=3)
    base = _blurred(image)
    assert RefinementCoder().encode(image, base, 40) == RefinementCoder().encode(image, base, 40)


@pytest.fixture(scope="module")
def payload_and_base():
    image = _photo(40, 48, seed=1)
    base = _blurred(image)
    return RefinementCoder().encode(image, base, 16), base, image


def test_a_damaged_payload_is_refused(payload_and_base):
    payload, base, _ = payload_and_base
    coder = RefinementCoder()
    with pytest.raises(TruncatedStreamError):
        coder.decode(payload[:10], base)
    with pytest.raises(UnsupportedVersionError):
        coder.decode(b"\x02" + payload[1:], base)
    with pytest.raises(CorruptStreamError, match="channels"):
        coder.decode(payload[:1] + b"\x02" + payload[2:], base)
    with pytest.raises(CorruptStreamError, match="step"):
        coder.decode(payload[:2] + struct.pack("<H", 8) + payload[4:], base)
    with pytest.raises(CorruptStreamError, match="continues for 1 word"):
        coder.decode(payload + bytes(4), base)
    with pytest.raises((CorruptStreamError, TruncatedStreamError)):
        coder.decode(payload[:-4], base)
    rng = np.random.default_rng(0)
    words_start = len(payload) - 4 * (len(payload) // 4 // 2)
    for _ in range(20):                         # flips in the coded data: never a silently wrong image
        damaged = bytearray(payload)
        damaged[int(rng.integers(words_start, len(payload)))] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(CorruptStreamError):
            coder.decode(bytes(damaged), base)


def test_a_one_channel_layer_over_an_rgb_pixel_layer_is_corrupt():
    image = _photo(16, 16)[..., 0]
    payload = RefinementCoder().encode(image, _blurred(image), 16)
    with pytest.raises(CorruptStreamError, match="one channel over an RGB"):
        RefinementCoder().decode(payload, _blurred(_photo(16, 16)))


def test_another_pixel_layer_is_refused_by_name(payload_and_base):
    payload, base, _ = payload_and_base
    other = base.copy()
    other[0, 0, 0] ^= 1
    with pytest.raises(ModelMismatchError, match="decodes the pixel layer to other pixels"):
        RefinementCoder().decode(payload, other)


def test_group_parameters_are_counted_per_channel_layout():
    assert len(feature_counts(3)) == 21 and len(feature_counts(1)) == 7
    assert feature_counts(1) == [25, 29, 29, 33, 29, 29, 33]


# --------------------------------------------------------------------------- through the API and the shell


def test_quality_above_90_adds_layer_2_and_keeps_the_pixel_layer(test_codec):
    image = _photo(64, 96, seed=2)
    plain = semcodec.compress(image, quality=90, model=test_codec, semantic=False)
    refined = semcodec.compress(image, quality=100, model=test_codec, semantic=False)
    assert read_container(plain).header.layers == (RESIDUAL_LAYER,)
    c = read_container(refined)
    assert c.header.layers == (RESIDUAL_LAYER, REFINEMENT_LAYER) and c.version == (1, 4)
    assert refinement_step(90) is None and refinement_step(100) == 64 and refinement_step(95) > 64
    got = np.asarray(semcodec.decompress(refined))
    assert psnr(got, image) > 45
    assert np.abs(got.astype(int) - image).max() <= 6


def test_lossless_stream_decodes_to_the_exact_pixels_and_extracts_to_the_lossy_one(test_codec):
    image = _photo(64, 80, seed=4)
    data = semcodec.compress(image, lossless=True, model=test_codec, semantic="tiny")
    np.testing.assert_array_equal(np.asarray(semcodec.decompress(data)), image)
    lossy = extract_layers(data, [0, 1])
    c = read_container(lossy)
    assert c.header.layers == (SEMANTIC_LAYER, RESIDUAL_LAYER) and c.version < (1, 4)
    assert lossy == write_container(Container(c.header, read_container(data).chunks[:2], metadata=c.metadata))
    assert psnr(np.asarray(semcodec.decompress(lossy)), image) < 60
    tokens_only = extract_layers(data, [0])
    assert read_container(tokens_only).header.codec_model == ""
    semcodec.decode_tokens(tokens_only)
    with pytest.raises(InvalidInputError, match="keep layer 1"):
        extract_layers(data, [0, 2])
    with pytest.raises(InvalidInputError, match="numbered"):
        extract_layers(data, [3])
    with pytest.raises(MissingLayerError):
        extract_layers(lossy, [2])


def test_an_exactly_gray_image_is_lossless_in_one_channel(test_codec):
    gray = _photo(40, 40, seed=5)[..., 0]
    data = semcodec.compress(gray, lossless=True, model=test_codec, semantic=False)
    out = semcodec.decompress(data)
    assert out.mode == "L"
    np.testing.assert_array_equal(np.asarray(out), gray)


def test_size_targets_above_the_pixel_layers_reach_are_met_by_layer_2(test_codec):
    image = _photo(64, 64, seed=6)
    top = len(semcodec.compress(image, quality=100, model=test_codec, semantic=False))
    lossless = len(semcodec.compress(image, lossless=True, model=test_codec, semantic=False))
    target = (top + lossless) // 2
    result = compress_image(image, size=target, model=test_codec, semantic=False)
    assert abs(len(result.data) - target) <= 0.02 * target
    assert any("layer 2" in note for note in result.notes)
    capped = compress_image(image, size=target, max_size=True, model=test_codec, semantic=False)
    assert len(capped.data) <= target
    with pytest.raises(RateControlError, match="above the largest"):
        compress_image(image, size=2 * lossless, model=test_codec, semantic=False)
    ceiling = compress_image(image, size=2 * lossless, max_size=True, model=test_codec, semantic=False)
    np.testing.assert_array_equal(np.asarray(semcodec.decompress(ceiling.data)), image)
    assert any("lossless" in note for note in ceiling.notes)
    with pytest.raises(InvalidInputError, match="lossless"):
        compress_image(image, size=target, lossless=True, model=test_codec, semantic=False)


def test_shell_lossless_extract_and_info(test_codec, runner, tmp_path):
    from semcodec.cli.main import main

    stream, lossy, out = tmp_path / "s.smc", tmp_path / "l.smc", tmp_path / "o.png"
    r = runner.invoke(main, ["compress", str(SAMPLE), "--lossless", "--no-semantic", "--model", test_codec,
                             "-o", str(stream)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["info", str(stream)])
    assert "layer 2 (refinement)" in r.output and "1.4" in r.output
    r = runner.invoke(main, ["decompress", str(stream), "-o", str(out)])
    assert r.exit_code == 0, r.output
    from semcodec.imageio import load_image

    expected = load_image(str(SAMPLE), []).pixels
    np.testing.assert_array_equal(np.asarray(__import__("PIL.Image").Image.open(out)), expected)
    r = runner.invoke(main, ["extract", str(stream), "--layers", "1", "-o", str(lossy)])
    assert r.exit_code == 0, r.output
    assert "layer 2" not in runner.invoke(main, ["info", str(lossy)]).output
    r = runner.invoke(main, ["extract", str(stream), "--layers", "0", "-o", str(tmp_path / "t.smc")])
    assert r.exit_code != 0 and "no layer 0" in r.output
    r = runner.invoke(main, ["extract", str(stream), "--layers", "x", "-o", str(tmp_path / "t.smc")])
    assert r.exit_code == 2 and "comma-separated" in r.output
    r = runner.invoke(main, ["compress", str(SAMPLE), "--lossless", "--bpp", "3", "-o", str(tmp_path / "b.smc")])
    assert r.exit_code == 2 and "--lossless contradicts" in r.output
    assert not (tmp_path / "b.smc").exists() and not (tmp_path / "t.smc").exists()


# --------------------------------------------------------------------------- goldens

GOLDEN = __import__("helpers").TEST_DATA / "golden"


@pytest.mark.parametrize("name, step16, size", [("lossless", 16, 15401), ("step4.5", 72, 8013)])
def test_golden_refinement_payloads_decode_and_encode_unchanged(name, step16, size):
    """Payloads written when layer 2 was specified: the decoder's conventions (and the encoder's output, whose
    size also guards its compression) must not drift."""
    from PIL import Image

    image = np.asarray(Image.open(GOLDEN / "ref2-photo96x96-image.png"))
    base = np.asarray(Image.open(GOLDEN / "ref2-photo96x96-base.png"))
    payload = (GOLDEN / f"ref2-photo96x96-{name}.bin").read_bytes()
    decoded = RefinementCoder().decode(payload, base)
    if step16 == 16:
        np.testing.assert_array_equal(decoded, image)
    assert psnr(decoded, image) > 45
    assert len(payload) == size and RefinementCoder().encode(image, base, step16) == payload
