"""``import semcodec.pillow``: Pillow opens and saves semcodec streams."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import semcodec
import semcodec.pillow  # noqa: F401  (registers the format)
from helpers import SAMPLE


def test_save_then_open_round_trips_through_pillow(test_codec, tmp_path):
    original = Image.open(SAMPLE).convert("RGB")
    path = tmp_path / "x.smc"
    original.save(path, quality=60, model=test_codec)             # the suffix picks the format
    data = path.read_bytes()
    assert data == semcodec.compress(original, quality=60, model=test_codec)   # the keywords reached compress

    opened = Image.open(path)
    assert (opened.format, opened.size, opened.mode) == ("SEMCODEC", original.size, "RGB")
    assert np.array_equal(np.asarray(opened.convert("RGB")), np.asarray(semcodec.decompress(data)))


def test_gray_streams_open_as_mode_l_and_save_to_a_buffer_by_format_name(test_codec):
    gray = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1)), mode="L")
    buf = io.BytesIO()
    gray.save(buf, format="SEMCODEC", quality=90, model=test_codec)
    opened = Image.open(io.BytesIO(buf.getvalue()))
    assert opened.mode == "L" and opened.size == (64, 48)
    assert np.array_equal(np.asarray(opened), np.asarray(semcodec.decompress(buf.getvalue())))


def test_semantic_only_stream_opens_but_has_no_pixels(tmp_path):
    data = semcodec.compress(SAMPLE, semantic="tiny", semantic_only=True)
    opened = Image.open(io.BytesIO(data))
    assert opened.size == Image.open(SAMPLE).size
    with pytest.raises(semcodec.MissingLayerError, match="no pixel layer"):
        opened.load()


def test_a_damaged_stream_is_refused_with_semcodecs_error(test_codec):
    data = bytearray(semcodec.compress(SAMPLE, quality=10, model=test_codec))
    data[-3] ^= 0xFF
    with pytest.raises(semcodec.CorruptStreamError):
        Image.open(io.BytesIO(bytes(data)))


def test_unknown_save_keywords_are_not_passed_on(test_codec):
    buf = io.BytesIO()
    Image.open(SAMPLE).save(buf, format="SEMCODEC", quality=5, model=test_codec, optimize=True)  # optimize: ignored
    assert semcodec.inspect(buf.getvalue()).layers


def test_metadata_is_in_info_from_the_open_on_and_saving_keeps_it(test_codec, tmp_path):
    from PIL import ExifTags

    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "semcodec-test-camera"
    path = tmp_path / "m.smc"
    Image.open(SAMPLE).save(path, quality=20, model=test_codec, exif=exif)    # as Pillow's writers take it
    assert Image.open(path).getexif()[ExifTags.Base.Make] == "semcodec-test-camera"
    with_exif = Image.open(SAMPLE)
    with_exif.info["exif"] = exif.tobytes()
    with_exif.save(path, quality=20, model=test_codec)                       # the image's own metadata
    opened = Image.open(path)
    assert opened.getexif()[ExifTags.Base.Make] == "semcodec-test-camera"
    opened.load()
    assert opened.getexif()[ExifTags.Base.Make] == "semcodec-test-camera"
    with_exif.save(path, quality=20, model=test_codec, strip_metadata=True)
    assert "exif" not in Image.open(path).info


def test_a_lossless_nearly_gray_image_opens_as_rgb_with_its_exact_pixels(test_codec, tmp_path):
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    rgb = np.stack([gray, gray, gray], axis=-1)
    rgb[..., 2] = np.clip(gray.astype(int) + 1, 0, 255).astype(np.uint8)      # within the gray tolerance
    path = tmp_path / "x.smc"
    Image.fromarray(rgb).save(path, lossless=True, model=test_codec, semantic=False)
    with Image.open(path) as image:
        assert image.mode == "RGB" and "REF2" in image.info["semcodec_layers"]
        np.testing.assert_array_equal(np.asarray(image), rgb)
