"""The independent pixel-layer decoder (tests/reference_decoder.py, numpy only, written from docs/pixels.md)
against semcodec, on golden streams of the shipped model.

Each golden ``tests/data/golden/ms192-*.smc`` has a sidecar ``.sha256`` of the pixels semcodec decodes from it
(:func:`helpers.pixels_digest`). They are regenerated with ``SEMCODEC_REGEN=1`` from crops of assets/sample.jpg;
a regenerated golden changes only when the shipped checkpoint or the encoder does, and old ones must keep decoding.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import reference_decoder as rd
import semcodec
from helpers import REPO, SAMPLE, TEST_DATA, pixels_digest

GOLDEN = TEST_DATA / "golden"
SHIPPED = REPO / "checkpoints" / "semcodec-ms192.safetensors"
#: name → (left, top, width, height) of the crop of assets/sample.jpg (resized first to ``resize`` when given),
#: quality, gray, resize.
GOLDENS = {
    # quality 30 is knob q = -1.3: gains extrapolated below level 0 (the level index clamps to 0)
    "ms192-sample-64x48-q30": ((200, 100, 64, 48), 30, False, None),
    # q = 2.75 between two trained levels; a 2×2 hyper-latent and an 8×8 latent, cropped on both sides
    "ms192-sample-120x90-q75": ((150, 60, 120, 90), 75, False, None),
    # a gray image: the container's gray flag, decoded as one channel
    "ms192-gray-40x56-q50": ((300, 180, 40, 56), 50, True, None),
    # the smallest images coded by tiles (format 1.3): a 4×68 latent, two tiles (64 and 4 columns wide), so
    # the context of the first tile's last columns does not see the second tile's anchors; q = -2.2
    "ms192-sample-1040x48-q20-tiled": ((0, 300, 1040, 48), 20, False, (1040, 692)),
}
REGEN = os.environ.get("SEMCODEC_REGEN") == "1"


def _golden(name: str) -> bytes:
    """The golden stream ``name`` (rewritten with its pixels' digest under ``SEMCODEC_REGEN=1``)."""
    path = GOLDEN / f"{name}.smc"
    if REGEN:
        (left, top, width, height), quality, gray, resize = GOLDENS[name]
        image = Image.open(SAMPLE).convert("L" if gray else "RGB")
        if resize is not None:
            image = image.resize(resize, Image.Resampling.BICUBIC)
        image = image.crop((left, top, left + width, top + height))
        data = semcodec.compress(np.asarray(image), quality=quality, semantic=False)
        path.write_bytes(data)
        path.with_suffix(".sha256").write_text(pixels_digest(semcodec.decompress(data)) + "\n")
    return path.read_bytes()


@pytest.fixture(scope="module")
def reference_codec() -> rd.Codec:
    return rd.Codec(SHIPPED)


@pytest.fixture(scope="module")
def reference_decode(reference_codec):
    """``name → (rd.Decoded, rd.Container)`` of a golden, decoded once per module (the tiled one takes seconds)."""
    decoded = {}

    def decode(name: str) -> tuple[rd.Decoded, rd.Container]:
        if name not in decoded:
            decoded[name] = rd.decode_stream(_golden(name), reference_codec)
        return decoded[name]
    return decode


@pytest.mark.parametrize("name", GOLDENS)
def test_reference_decoder_matches_semcodec(name, reference_decode):
    """semcodec decodes the golden to its recorded pixels; the reference computes the same scale-index digest
    as the payload stores (of every tile, when coded by tiles) and pixels within one level of semcodec's."""
    image = semcodec.decompress(_golden(name))
    assert pixels_digest(image) == (GOLDEN / f"{name}.sha256").read_text().strip()

    decoded, container = reference_decode(name)
    assert decoded.digests == decoded.stored_digests
    if name.endswith("-tiled"):
        assert container.version == (1, 3) and len(decoded.tiles) == len(decoded.stored_digests) == 2
    else:
        assert container.version < (1, 3) and len(decoded.tiles) == 1
    (_, _, width, height), _, gray, _ = GOLDENS[name]
    assert (container.width, container.height, container.gray) == (width, height, gray)
    ours = rd.gray(decoded.pixels) if gray else decoded.pixels
    theirs = np.asarray(image)
    assert ours.shape == theirs.shape and ours.dtype == np.uint8
    assert int(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).max()) <= 1


@pytest.mark.parametrize("name", GOLDENS)
def test_reference_symbols_reencode_to_the_payload(name, reference_decode):
    """The reference's decoded symbols and scale indices, coded again by semcodec's entropy coder in the order
    docs/pixels.md gives (z, then tile after tile its anchors and the others), reproduce the payload's words
    exactly: the entropy decoding is identical."""
    from semcodec.bitstream.entropy import CategoricalTables, EntropyEncoder, ScaleTable

    decoded, container = reference_decode(name)
    payload = container.layers["RES1"]
    ckpt, _ = rd.read_safetensors(SHIPPED)
    tables = CategoricalTables.from_quantized_cdf(ckpt["entropy_bottleneck._quantized_cdf"],
                                                  ckpt["entropy_bottleneck._cdf_length"],
                                                  ckpt["entropy_bottleneck._offset"])
    enc = EntropyEncoder()
    z = decoded.z_symbols
    enc.encode_categorical(z, tables, np.broadcast_to(np.arange(z.shape[0])[:, None, None], z.shape))
    table = ScaleTable.geometric(min=rd.SCALE_MIN, max=rd.SCALE_MAX, count=rd.SCALE_COUNT)
    for (r0, r1), (c0, c1) in decoded.tiles:                     # tile after tile: anchors, then the others
        symbols, index = decoded.y_symbols[:, r0:r1, c0:c1], decoded.scale_index[:, r0:r1, c0:c1]
        anchors = np.broadcast_to(rd.anchors_mask(r1 - r0, c1 - c0), symbols.shape)
        for part in (anchors, ~anchors):
            enc.encode_gaussian(symbols[part], index[part], table, lo=rd.Y_LO, hi=rd.Y_HI)
    assert enc.to_bytes() == payload[7 + 4 * (len(decoded.tiles) - 1):]


def test_reference_decoder_refuses_other_parameters(reference_codec):
    """A payload whose rate knob was changed decodes other scale indices: the reference refuses it by the digest,
    as semcodec does (so the digest comparison above is not vacuous)."""
    container = rd.read_container(_golden("ms192-sample-120x90-q75"))
    payload = bytearray(container.layers["RES1"])
    payload[0] ^= 0x04                                        # rate knob 4/4096 off, inside the model's range
    with pytest.raises(rd.ReferenceDecodeError, match="digest"):
        rd.decode_res1(reference_codec, bytes(payload), container.width, container.height)


def test_reference_decoder_tile_checks(reference_codec):
    """On the tiled golden, the reference refuses what semcodec refuses: a wrong digest of tile 2 (after tile 1
    decoded), the tiled flag in a stream older than 1.3 (semcodec's payload parser gives the same message), and
    the tiled flag on a latent of one tile; on another golden, coded data too short for the image a header claims."""
    from semcodec.layers.pixels.payload import ResidualPayload

    container = rd.read_container(_golden("ms192-sample-1040x48-q20-tiled"))
    payload, size = container.layers["RES1"], (container.width, container.height)
    damaged = bytearray(payload)
    damaged[7] ^= 0x01                                        # tile 2's digest, first in the table
    with pytest.raises(rd.ReferenceDecodeError, match="tile 2 of 2"):
        rd.decode_res1(reference_codec, bytes(damaged), *size)
    with pytest.raises(rd.ReferenceDecodeError, match="unknown flags 0x02"):
        rd.decode_res1(reference_codec, payload, *size, version=(1, 2))
    with pytest.raises(semcodec.CorruptStreamError, match="unknown flags 0x02"):
        ResidualPayload.from_bytes(payload, reference_codec.rate_range, tiles=2, tiles_allowed=False)
    with pytest.raises(rd.ReferenceDecodeError, match="fits one tile"):
        rd.decode_res1(reference_codec, payload, 1024, 48)

    untiled = rd.read_container(_golden("ms192-sample-120x90-q75")).layers["RES1"]
    with pytest.raises(rd.ReferenceDecodeError, match="too short"):
        rd.decode_res1(reference_codec, untiled, 16384, 16384)


@pytest.mark.parametrize("word", [0, 1, 0xFFFFFFFF])
def test_reference_decoder_refuses_a_trailing_word(reference_codec, word):
    """A RES1 payload with one word appended still decodes every symbol (the two-word look-ahead hides it); the
    end check of pixels.md §5.2 refuses it, as semcodec does."""
    container = rd.read_container(_golden("ms192-sample-64x48-q30"))
    payload = container.layers["RES1"] + word.to_bytes(4, "little")
    with pytest.raises(rd.ReferenceDecodeError, match="not the encoding of its symbols"):
        rd.decode_res1(reference_codec, payload, container.width, container.height)
    with pytest.raises(semcodec.CorruptStreamError):
        semcodec.decompress(with_res1_payload(_golden("ms192-sample-64x48-q30"), payload))


def with_res1_payload(stream: bytes, payload: bytes) -> bytes:
    """``stream`` with its RES1 payload replaced (through semcodec's own container writer)."""
    from dataclasses import replace

    from semcodec.bitstream.container import Chunk, read_container, write_container

    container = read_container(stream)
    chunks = tuple(Chunk(c.type, payload) if c.type == b"RES1" else c for c in container.chunks)
    return write_container(replace(container, chunks=chunks))


def test_reference_scale_table_and_gaussian_tables():
    """The scale table is semcodec's; every quantized Gaussian's integer CDF is strictly increasing (so decoding
    a symbol has one answer whatever the search) and its entries equal constriction's (a sample of symbols, read
    back from the encoder's state after one symbol: lower = scale·C[s], range = scale·(C[s+1] − C[s]))."""
    import constriction

    from semcodec.layers.pixels.payload import SCALE_TABLE, Y_SYMBOL_RANGE

    assert np.array_equal(rd.SCALES, SCALE_TABLE.scales) and (rd.Y_LO, rd.Y_HI) == Y_SYMBOL_RANGE
    scale = ((1 << 64) - 1) >> rd.PRECISION
    model = constriction.stream.model.QuantizedGaussian(rd.Y_LO, rd.Y_HI)
    rng = np.random.default_rng(0)
    for k, sigma in enumerate(rd.SCALES):
        cdf = rd.gaussian_cdf(float(sigma))
        assert cdf[0] == 0 and cdf[-1] == 1 << 24 and np.all(np.diff(cdf) >= 1), k
        near = rng.integers(-int(6 * sigma) - 2, int(6 * sigma) + 3, 24)
        for s in [*near.tolist(), rd.Y_LO, rd.Y_LO + 1, rd.Y_HI - 1, rd.Y_HI]:
            enc = constriction.stream.queue.RangeEncoder()
            enc.encode(np.array([s], dtype=np.int32), model, np.array([0.0]), np.array([float(sigma)]))
            _, (lower, width) = enc.pos()
            i = s - rd.Y_LO
            assert (lower, width) == (scale * int(cdf[i]), scale * int(cdf[i + 1] - cdf[i])), (k, s)


def test_reference_categorical_tables(reference_codec):
    """The z tables of the shipped checkpoint, quantized as docs/pixels.md says, equal constriction's."""
    import constriction

    ckpt, _ = rd.read_safetensors(SHIPPED)
    cdf = ckpt["entropy_bottleneck._quantized_cdf"].astype(np.int64)
    length = ckpt["entropy_bottleneck._cdf_length"].astype(np.int64) - 2
    scale = ((1 << 64) - 1) >> rd.PRECISION
    for c in range(0, reference_codec.N, 9):
        counts = np.diff(cdf[c, :length[c] + 1]).astype(np.float64)
        model = constriction.stream.model.Categorical(counts, perfect=False)
        ours = reference_codec.z_cdfs[c]
        for s in range(len(counts)):
            enc = constriction.stream.queue.RangeEncoder()
            enc.encode(np.array([s], dtype=np.int32), model)
            _, (lower, width) = enc.pos()
            assert (lower, width) == (scale * int(ours[s]), scale * int(ours[s + 1] - ours[s])), (c, s)


# --------------------------------------------------------------------------- layer 2 (REF2, docs/refinement.md)
REF2_GOLDENS = {"lossless": 16, "step4.5": 72}          # payload name → step16


def _ref2_golden(name: str) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The golden REF2 payload ``name``, its base x̂₁ and the original image (tests/layers/test_refinement_layer.py)."""
    base = np.asarray(Image.open(GOLDEN / "ref2-photo96x96-base.png"))
    image = np.asarray(Image.open(GOLDEN / "ref2-photo96x96-image.png"))
    return (GOLDEN / f"ref2-photo96x96-{name}.bin").read_bytes(), base, image


@pytest.mark.parametrize("name", REF2_GOLDENS)
def test_reference_ref2_decodes_the_goldens_as_semcodec(name):
    """The reference decodes the golden REF2 payloads from docs/refinement.md alone to semcodec's pixels bit for
    bit (lossless: the original image), with both CRCs of the payload and the end check of the words passing."""
    import zlib

    from semcodec.layers.refinement import RefinementCoder

    payload, base, image = _ref2_golden(name)
    decoded = rd.decode_ref2(payload, base)                    # raises on a CRC or word mismatch
    theirs = RefinementCoder().decode(payload, base)
    assert decoded.pixels.shape == theirs.shape == image.shape and decoded.pixels.dtype == np.uint8
    np.testing.assert_array_equal(decoded.pixels, theirs)
    header = decoded.header
    assert (header.channels, header.step16) == (3, REF2_GOLDENS[name])
    assert zlib.crc32(base.tobytes()) == header.base_crc and zlib.crc32(decoded.pixels.tobytes()) == header.pixels_crc
    if name == "lossless":
        np.testing.assert_array_equal(decoded.pixels, image)
    else:
        step = REF2_GOLDENS[name] / 16
        assert 0 < np.abs(decoded.pixels.astype(np.int16) - image).max() <= step
    # not vacuous: several buckets' scales are in play, and the groups of the 2×2 grid carry weights (those of the
    # 4×4 grid, 576 positions each here, do not pay for theirs)
    assert sum(group.weights is not None for group in header.groups) == 9
    assert len(np.unique(decoded.scale_index)) > 3 and np.any(decoded.symbols != 0)


@pytest.mark.parametrize("shape", [(80, 80), (80, 80, 3)])
def test_reference_ref2_predicted_means_in_every_group(shape):
    """A residual linear in x̂₁'s horizontal gradient makes semcodec's encoder keep the weights of every group (gray
    and RGB, every phase and channel), so the features and means of docs/refinement.md §4.3 decide every symbol:
    the reference decodes semcodec's pixels, lossless and lossy."""
    from semcodec.layers.refinement import RefinementCoder

    rng = np.random.default_rng(0)
    base = rng.integers(40, 216, shape)
    padded = np.pad(base, [(0, 0), (1, 1)] + [(0, 0)] * (len(shape) - 2), mode="reflect")
    image = np.clip(base + (padded[:, 2:] - padded[:, :-2]) // 3 + rng.integers(-2, 3, shape), 0, 255)
    base, image = base.astype(np.uint8), image.astype(np.uint8)
    for step16 in (16, 40):
        payload = RefinementCoder().encode(image, base, step16)
        decoded = rd.decode_ref2(payload, base)
        assert all(g.weights is not None for g in decoded.header.groups) and np.mean(decoded.means != 0) > 0.9
        np.testing.assert_array_equal(decoded.pixels, RefinementCoder().decode(payload, base).reshape(shape))
        if step16 == 16:
            np.testing.assert_array_equal(decoded.pixels, image)


def test_reference_ref2_refuses_another_base_and_damage():
    """A base one level off in one pixel is refused by ``base_crc`` before any symbol; a damaged word decodes to
    other symbols, which the end check or ``pixels_crc`` refuses (semcodec refuses both too)."""
    from semcodec.layers.refinement import RefinementCoder

    payload, base, _ = _ref2_golden("step4.5")
    other = base.copy()
    other[7, 9, 1] ^= 1
    with pytest.raises(rd.ReferenceMismatchError, match="base CRC"):
        rd.decode_ref2(payload, other)
    with pytest.raises(semcodec.ModelMismatchError):
        RefinementCoder().decode(payload, other)
    damaged = bytearray(payload)
    damaged[len(payload) - 40] ^= 0x10                       # inside the range coder's words
    with pytest.raises(rd.ReferenceDecodeError, match="not the encoding|CRC|invalid range-coder"):
        rd.decode_ref2(bytes(damaged), base)
    with pytest.raises(semcodec.CorruptStreamError):
        RefinementCoder().decode(bytes(damaged), base)


@pytest.mark.parametrize("layout", ["rgb", "gray", "gray-to-rgb"])
def test_reference_ref2_small_and_odd_sizes(layout):
    """Payloads semcodec encodes over sizes where the reflected padding folds (1, 2 and 3 samples) and odd ones,
    lossless and lossy, one channel and a gray base refined to RGB: the reference decodes semcodec's pixels."""
    from semcodec.layers.refinement import RefinementCoder

    rng = np.random.default_rng(5)
    for h, w in [(1, 1), (1, 6), (5, 1), (2, 3), (3, 2), (7, 5)]:
        base = rng.integers(0, 256, (h, w) if layout != "rgb" else (h, w, 3)).astype(np.uint8)
        noise = rng.integers(-9, 10, (h, w, 3) if layout != "gray" else (h, w))
        image = np.clip((base[..., None] if layout == "gray-to-rgb" else base) + noise, 0, 255).astype(np.uint8)
        for step16 in (16, 57):
            payload = RefinementCoder().encode(image, base, step16)
            theirs = RefinementCoder().decode(payload, base)            # (H, W, C)
            ours = rd.decode_ref2(payload, base).pixels
            np.testing.assert_array_equal(ours, theirs[..., 0] if layout == "gray" else theirs, f"{h}x{w} {step16}")
            if step16 == 16:
                np.testing.assert_array_equal(ours, image)


def test_reference_laplace_tables_equal_constriction():
    """The reference's QuantizedLaplace(−B, B) CDFs (docs/refinement.md §4.5) equal constriction's: a sample of
    symbols, means on the 1/16 grid (inside and at the clamp) and table scales, read back from the encoder state."""
    import constriction

    scale = ((1 << 64) - 1) >> rd.PRECISION
    rng = np.random.default_rng(3)
    for bound in (4, 57, 255):
        model = constriction.stream.model.QuantizedLaplace(-bound, bound)
        mean_q = np.concatenate([rng.integers(-16 * bound, 16 * bound + 1, 6), [-16 * bound, 0, 16 * bound]])
        k = rng.integers(0, rd.SCALE_COUNT, len(mean_q))
        cdfs = rd.laplace_cdfs(mean_q / 16.0, rd.SCALES[k], bound)
        assert np.all(np.diff(cdfs, axis=1) >= 1) and np.all(cdfs[:, -1] == 1 << 24)
        for mu, b, cdf in zip(mean_q / 16.0, rd.SCALES[k], cdfs):
            near = np.clip(np.round(mu) + rng.integers(-int(4 * b) - 2, int(4 * b) + 3, 8), -bound, bound)
            for s in [*near.astype(int).tolist(), -bound, bound]:
                enc = constriction.stream.queue.RangeEncoder()
                enc.encode(np.array([s], dtype=np.int32), model, np.array([mu]), np.array([b]))
                _, (lower, width) = enc.pos()
                i = s + bound
                assert (lower, width) == (scale * int(cdf[i]), scale * int(cdf[i + 1] - cdf[i])), (bound, mu, b, s)
