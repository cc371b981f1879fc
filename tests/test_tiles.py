"""The pixel layer by tiles (format 1.3): large latents are coded tile by tile, checked tile by tile, and a
stream that cannot hold the image it claims is refused before any work."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from helpers import pixels_digest_in_another_process

import semcodec
from semcodec.bitstream.container import RESIDUAL_LAYER, Chunk, Container, Header, read_container, write_container
from semcodec.errors import CorruptStreamError, TruncatedStreamError
from semcodec.layers.pixels.payload import FLAG_TILED, PARAM_TILE, ResidualPayload, param_tiles


def _photo(width: int, height: int) -> np.ndarray:
    """A smooth synthetic photo (gradients and a few shapes), (height, width, 3) uint8."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([128 + 100 * np.sin(xx / 97), 128 + 90 * np.cos(yy / 71), (xx + yy) % 256], axis=-1)
    image[(xx - width / 3) ** 2 + (yy - height / 2) ** 2 < (height / 4) ** 2] = (230, 40, 60)
    return np.clip(image, 0, 255).astype(np.uint8)


def _rewrite_payload(data: bytes, change) -> bytes:
    """The stream with its RES1 payload changed by ``change(bytearray)`` (CRCs recomputed: damage a CRC hides)."""
    container = read_container(data)
    payload = bytearray(container.layer(RESIDUAL_LAYER))
    change(payload)
    chunks = tuple(Chunk(c.type, bytes(payload) if c.type == RESIDUAL_LAYER else c.payload) for c in container.chunks)
    return write_container(Container(container.header, chunks, version=container.version,
                                     metadata=container.metadata))


@pytest.fixture(scope="module")
def tiled_stream():
    """A 1100x620 image (a 72x40 latent: 2 tiles) coded by the test codec, and the image."""
    pytest.MonkeyPatch().setenv("SEMCODEC_CHECKPOINTS", str(__import__("helpers").TEST_DATA / "checkpoints"))
    from semcodec.api import clear_codec_cache

    clear_codec_cache()
    image = _photo(1100, 620)
    return semcodec.compress(image, quality=80, model="semcodec-test"), image


def test_a_large_latent_is_coded_by_tiles_in_a_1_3_stream(tiled_stream, tmp_path):
    data, image = tiled_stream
    container = read_container(data)
    payload = container.layer(RESIDUAL_LAYER)
    assert container.version == (1, 3) and payload[2] & FLAG_TILED
    tiles = param_tiles((640 // 16, 1152 // 16))
    assert len(tiles) == 2 and ResidualPayload.from_bytes(payload, (-4, 8), len(tiles)).tiled
    path = tmp_path / "tiled.smc"
    path.write_bytes(data)
    assert pixels_digest_in_another_process(path) == __import__("helpers").pixels_digest(semcodec.decompress(data))


def test_the_decoder_reconstructs_the_encoders_latent_tile_by_tile(test_codec):
    """What the decoder rebuilds, band by band, is what the encoder coded (its ŷ through g_s), to float rounding."""
    from semcodec.api import load_codec
    from semcodec.layers.pixels.coder import image_to_tensor, tensor_to_image

    coder = load_codec(test_codec).coder
    image = _photo(1100, 1090)                                     # 69x69 latent positions: 4 tiles
    q = 1.5
    payload, y_hat = coder.encode_latents(*coder.latents(coder.analyze(image_to_tensor(image)), q), q)
    assert ResidualPayload.from_bytes(payload, coder.rate_range, 4).tiled
    decoded = coder.decode(payload, 1100, 1090)
    expected = tensor_to_image(coder.reconstruct(y_hat, q, 1100, 1090))
    assert decoded.shape == (1090, 1100, 3) and np.abs(decoded.astype(int) - expected.astype(int)).max() <= 1


def test_a_latent_that_fits_one_tile_is_coded_as_before(test_codec):
    data = semcodec.compress(_photo(PARAM_TILE * 16, 300), quality=50, model=test_codec)
    container = read_container(data)
    assert container.version == (1, 0) and not container.layer(RESIDUAL_LAYER)[2] & FLAG_TILED


def test_each_tile_is_checked_by_its_digest(tiled_stream):
    data, _ = tiled_stream

    def second_tile_digest(payload: bytearray) -> None:
        payload[7] ^= 0x01                        # the table of tile digests starts after the 7-byte prefix

    with pytest.raises(CorruptStreamError, match=r"tile 2 of 2\): the stream is damaged"):
        semcodec.decompress(_rewrite_payload(data, second_tile_digest))


def test_damaged_or_cut_coded_data_is_refused(tiled_stream):
    data, _ = tiled_stream

    def flip_words(payload: bytearray) -> None:
        payload[len(payload) // 2] ^= 0x5A

    def cut(payload: bytearray) -> None:
        del payload[len(payload) // 2 // 4 * 4:]

    for change in (flip_words, cut):
        with pytest.raises((CorruptStreamError, TruncatedStreamError)):
            semcodec.decompress(_rewrite_payload(data, change))


@pytest.mark.parametrize("word", [bytes(4), b"\x5a\xa5\x00\x7f"])
def test_a_payload_with_a_trailing_word_is_refused(tiled_stream, word):
    data, _ = tiled_stream
    with pytest.raises(CorruptStreamError, match="continues for 1 word"):
        semcodec.decompress(_rewrite_payload(data, lambda payload: payload.extend(word)))


def test_a_tiled_flag_in_a_stream_older_than_1_3_is_refused(tiled_stream):
    data, _ = tiled_stream
    container = read_container(data)
    old = write_container(Container(container.header, container.chunks, version=(1, 0)))
    with pytest.raises(CorruptStreamError, match="unknown flags 0x02"):
        semcodec.decompress(old)


def test_a_short_stream_claiming_a_huge_image_is_refused_at_once(test_codec):
    header = Header(codec_model=test_codec, codec_checkpoint=read_container(
        semcodec.compress(_photo(64, 64), model=test_codec)).header.codec_checkpoint, semantic_model="",
        calibration=bytes(8), preprocessing="", width=16000, height=16000, layers=(RESIDUAL_LAYER,))
    payload = struct.pack("<hB4s", 0, FLAG_TILED, b"abcd") + bytes(4 * (len(param_tiles((1000, 1000))) - 1)) \
        + bytes(range(256)) * 4
    stream = write_container(Container(header, (Chunk(RESIDUAL_LAYER, payload),), version=(1, 3)))
    start = time.monotonic()
    with pytest.raises(CorruptStreamError, match="cannot hold the 16000x16000 image"):
        semcodec.decompress(stream)
    assert time.monotonic() - start < 5
    assert zlib.crc32(stream)                     # (the stream itself is well-formed: only its size gives it away)
