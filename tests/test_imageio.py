"""Reading images: photo formats beyond Pillow's own, and colour profiles applied so that the coded pixels are sRGB."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import SAMPLE, SRGB_BLUE_XYZ, SRGB_GREEN_XYZ, SRGB_RED_XYZ, psnr, rgb_icc_profile
from PIL import Image, ImageCms

from semcodec.imageio import load_rgb

#: red, green, blue, mid grey and a dark orange, as one row of pixels
PIXELS = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128], [180, 90, 20]]], np.uint8)


def _saved(pixels: np.ndarray, fmt: str = "PNG", mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_a_non_srgb_profile_is_converted_to_srgb():
    # A colour space whose red is sRGB's green and whose green is sRGB's red: sRGB values swap.
    swapped = rgb_icc_profile(SRGB_GREEN_XYZ, SRGB_RED_XYZ, SRGB_BLUE_XYZ, "Swapped RG", gamma=2.2)
    notes: list[str] = []
    pixels = load_rgb(_saved(PIXELS, icc_profile=swapped), notes).astype(int)
    np.testing.assert_array_equal(pixels[0, :3], [[0, 255, 0], [255, 0, 0], [0, 0, 255]])
    assert abs(pixels[0, 3] - 128).max() <= 2                  # gamma 2.2 is close to sRGB's curve
    assert notes == ["ICC colour profile 'Swapped RG': converted to sRGB (colours outside sRGB are clipped)"]


def test_srgb_tagged_and_untagged_images_are_left_as_they_are():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for data in (_saved(PIXELS, icc_profile=srgb), _saved(PIXELS)):
        notes: list[str] = []
        np.testing.assert_array_equal(load_rgb(data, notes), PIXELS)
        assert notes == []


def test_a_profile_is_applied_after_compositing_transparency():
    rgba = np.concatenate([PIXELS, np.full((1, 5, 1), 255, np.uint8)], axis=2)
    rgba[0, 4, 3] = 0                                           # one transparent pixel: white after compositing
    swapped = rgb_icc_profile(SRGB_GREEN_XYZ, SRGB_RED_XYZ, SRGB_BLUE_XYZ, "Swapped RG")
    notes: list[str] = []
    pixels = load_rgb(_saved(rgba, mode="RGBA", icc_profile=swapped), notes)
    np.testing.assert_array_equal(pixels[0, [0, 1, 4]], [[0, 255, 0], [255, 0, 0], [255, 255, 255]])
    assert [n.split(":")[0] for n in notes] == ["transparency", "ICC colour profile 'Swapped RG'"]


def test_an_unreadable_profile_is_ignored_with_a_note():
    notes: list[str] = []
    np.testing.assert_array_equal(load_rgb(_saved(PIXELS, icc_profile=b"not a profile" * 20), notes), PIXELS)
    assert notes == ["unreadable ICC colour profile ignored: the pixels are coded as sRGB"]


def test_a_profile_of_the_wrong_colour_space_is_ignored_with_a_note():
    # An RGB profile on a CMYK image cannot be applied: Pillow's plain conversion is used instead.
    swapped = rgb_icc_profile(SRGB_GREEN_XYZ, SRGB_RED_XYZ, SRGB_BLUE_XYZ, "Swapped RG")
    notes: list[str] = []
    pixels = load_rgb(_saved(PIXELS, fmt="JPEG", mode="CMYK", icc_profile=swapped, quality=100), notes)
    assert pixels.shape == (1, 5, 3)
    assert notes[0].startswith("ICC colour profile 'Swapped RG' could not be applied")
    assert notes[1] == "CMYK: converted to RGB by Pillow (no colour management)"


def test_phone_and_jpeg_xl_photos_are_read(tmp_path):
    """HEIC (pillow-heif) and JPEG XL (pillow-jxl-plugin) are registered with Pillow by semcodec itself."""
    from semcodec.batch import IMAGE_SUFFIXES
    from semcodec.imageio import register_photo_formats

    register_photo_formats()                                   # to write the test files with Pillow
    original = np.asarray(Image.open(SAMPLE).convert("RGB"))
    for suffix in (".heic", ".jxl"):
        path = tmp_path / f"photo{suffix}"
        Image.fromarray(original).save(path, quality=95)
        pixels = load_rgb(path)
        assert pixels.shape == original.shape and psnr(pixels, original) > 30, suffix
        assert suffix in IMAGE_SUFFIXES                        # folder walks pick them up


def test_images_beyond_pillows_bomb_guard_but_within_semcodecs_caps_are_read(tmp_path):
    """Pillow refuses more than about 179 megapixels and warns above 89; semcodec's own caps replace that guard."""
    from PIL import Image

    from semcodec.imageio import open_image

    path = tmp_path / "big.png"
    Image.new("L", (12000, 8000), 7).save(path)                 # 96 megapixels, a few hundred kB of PNG
    im = open_image(path)
    assert im.size == (12000, 8000) and Image.MAX_IMAGE_PIXELS == 89_478_485    # Pillow's limit is left as it was


def test_an_image_beyond_every_cap_is_refused_before_it_is_decoded(tmp_path):
    import struct
    import zlib

    from semcodec.errors import InvalidInputError
    from semcodec.imageio import open_image

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    # A 200-byte PNG that claims 20000 x 20000 pixels: decoding it would need 1.2 GB.
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))
    with pytest.raises(InvalidInputError, match=r"20000x20000: semcodec codes images of up to 16384 px a side"):
        open_image(bomb)


# --------------------------------------------------------------------------- metadata, orientation, 16-bit RGB


def _exif(block: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(block)
    return exif


def test_metadata_is_read_as_the_pixels_are_coded():
    from helpers import XMP_PACKET, jpeg_with_metadata

    from semcodec.bitstream.metadata import Metadata
    from semcodec.imageio import load_image

    data = jpeg_with_metadata(size=(64, 48), orientation=6)
    notes: list[str] = []
    loaded = load_image(data, notes)
    assert loaded.pixels.shape == (64, 48, 3)                   # rotated: coded as displayed
    assert notes == ["EXIF orientation 6 applied: coded as displayed (rotated 90° clockwise)"]
    exif = _exif(loaded.metadata.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "SemcodecCam"
    assert exif.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"
    original = Image.open(io.BytesIO(data)).info["exif"].removeprefix(b"Exif\x00\x00")
    # The block is kept byte for byte but for the orientation value (6 -> 1).
    assert len(loaded.metadata.exif) == len(original)
    assert sum(a != b for a, b in zip(loaded.metadata.exif, original)) == 1
    assert loaded.metadata.icc_profile == Image.open(io.BytesIO(data)).info["icc_profile"]    # sRGB: kept
    assert loaded.metadata.xmp == XMP_PACKET.replace(b'tiff:Orientation="6"', b"")
    np.testing.assert_array_equal(load_rgb(data), loaded.pixels)
    assert load_image(data, metadata=False).metadata == Metadata()


def test_upright_image_keeps_its_exif_unchanged():
    from helpers import jpeg_with_metadata

    from semcodec.imageio import load_image

    data = jpeg_with_metadata(size=(40, 24), orientation=1)
    notes: list[str] = []
    loaded = load_image(data, notes)
    assert notes == [] and loaded.pixels.shape == (24, 40, 3)
    assert loaded.metadata.exif == Image.open(io.BytesIO(data)).info["exif"].removeprefix(b"Exif\x00\x00")


def test_only_a_profile_that_describes_the_coded_pixels_is_kept():
    from semcodec.imageio import load_image

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    swapped = rgb_icc_profile(SRGB_GREEN_XYZ, SRGB_RED_XYZ, SRGB_BLUE_XYZ, "Swapped RG")
    gray = bytearray(rgb_icc_profile(SRGB_RED_XYZ, SRGB_GREEN_XYZ, SRGB_BLUE_XYZ, "Gray gamma 2.2"))
    gray[16:20] = b"GRAY"                                       # not applied to grayscale pixels: kept
    cases = [
        (_saved(PIXELS, icc_profile=srgb), srgb),                                   # left as is: kept
        (_saved(PIXELS, icc_profile=swapped), None),                                # converted to sRGB
        (_saved(PIXELS, icc_profile=b"not a profile" * 20), None),                  # unreadable
        (_saved(PIXELS, fmt="JPEG", mode="CMYK", icc_profile=swapped, quality=100), None),   # Pillow's CMYK -> RGB
        (_saved(PIXELS, mode="L", icc_profile=bytes(gray)), bytes(gray)),
    ]
    for data, kept in cases:
        assert load_image(data).metadata.icc_profile == kept


def _png16(samples: np.ndarray) -> bytes:
    """A 16-bit-per-sample RGB (3 channels) or RGBA (4) PNG, written by hand (Pillow writes none)."""
    import struct
    import zlib

    height, width, channels = samples.shape
    raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("channels, mode", [(3, "RGB"), (4, "RGBA")])
def test_16_bit_rgb_is_reduced_to_8_bits_with_a_note(channels, mode):
    values = np.random.default_rng(3).integers(0, 256, (5, 7, channels)).astype(np.uint16)
    if channels == 4:
        values[..., 3] = 255                                    # opaque
    data = _png16(values * 257)                                 # the 16-bit samples of 8-bit `values`
    for source in (data, Image.open(io.BytesIO(data))):         # a file, or a PIL image not loaded yet
        notes: list[str] = []
        np.testing.assert_array_equal(load_rgb(source, notes), values[..., :3])
        assert notes[0] == f"16-bit {mode}: reduced to 8 bits per channel"
        assert len(notes) == (2 if channels == 4 else 1)        # RGBA: and the alpha note


def test_heic_orientation_applied_by_pillow_heif_is_noted_and_its_exif_kept():
    """pillow-heif rotates a HEIC itself (its EXIF then says 1): the note still names the original orientation."""
    from helpers import jpeg_with_metadata

    from semcodec.imageio import load_image, register_photo_formats

    register_photo_formats()
    source = Image.open(io.BytesIO(jpeg_with_metadata(size=(64, 48), orientation=6)))
    heic = io.BytesIO()
    source.save(heic, "HEIF", quality=90, exif=source.info["exif"], xmp=source.info["xmp"])
    notes: list[str] = []
    loaded = load_image(heic.getvalue(), notes)
    assert loaded.pixels.shape == (64, 48, 3)
    assert notes == ["EXIF orientation 6 applied: coded as displayed (rotated 90° clockwise)"]
    exif = _exif(loaded.metadata.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "SemcodecCam"
