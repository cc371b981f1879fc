"""Reading images into the codec's canonical form: (H, W, 3) uint8 sRGB.

What happens to each kind of input (also in the README):

* EXIF orientation is applied (the image is coded as it is displayed).
* Grayscale (L, I;16, I, F) becomes RGB with equal channels; 16-bit and float
  images are scaled to 8 bits (16-bit RGB and RGBA by Pillow's reader). A gray
  image (channels equal to within :data:`GRAY_TOLERANCE`, :func:`channel_spread`)
  is flagged in the stream and decodes to one channel (:func:`gray_from_rgb`).
* Transparency (RGBA, LA, PA, palette with transparency) is composited over
  white; the alpha channel is not coded.
* An embedded ICC colour profile other than sRGB (Display P3, Adobe RGB, a CMYK
  press profile, …) is applied: the pixels are converted to sRGB by LittleCMS, so
  that colours look the same after decoding (the decoded image is sRGB).
* CMYK without a profile, YCbCr, palette and other modes are converted to RGB by Pillow.
* Animated images and multi-image files: the first frame is coded.

Metadata (:func:`load_image`): the EXIF block (its orientation tag set to 1, the pixels being coded as
displayed), the XMP packet, and the ICC profile when it describes the coded pixels: a profile that was
applied (converted to sRGB) or could not be read is not kept; an sRGB profile, or one that was not applied
(grayscale profiles, palette images, no LittleCMS), is. See ``docs/bitstream.md`` (``META``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .bitstream.metadata import EXIF, ICC_PROFILE, KIND_NAMES, MAX_METADATA_BYTES, XMP, Metadata, entry_problem
from .errors import InvalidInputError
from .fsutil import read_capped, read_file_object

#: Largest accepted image (pixels); the container caps each side at 16384.
MAX_PIXELS = 1 << 28
MAX_SIDE = 16384


@functools.cache
def register_photo_formats() -> None:
    """Teach Pillow the photo formats it does not read by itself: HEIC/HEIF (phone cameras; pillow-heif)
    and JPEG XL (pillow-jxl-plugin). Both are dependencies; a missing one only loses its format."""
    with contextlib.suppress(ImportError):
        from pillow_heif import register_heif_opener

        register_heif_opener()
    with contextlib.suppress(ImportError):
        import pillow_jxl  # noqa: F401  (registers JPEG XL with Pillow on import)


def open_image(source, load: bool = True) -> Image.Image:
    """Open ``source`` (path, bytes, binary file object or PIL image) as a PIL image, with clear
    errors for non-images; without ``load``, only its header is read (a cheap check of an input)."""
    if isinstance(source, Image.Image):
        return source
    register_photo_formats()
    if hasattr(source, "read"):                    # a file object: open(path, "rb"), io.BytesIO, …
        source = read_file_object(source, "image")
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        raise InvalidInputError(f"cannot read an image from a {type(source).__name__}; pass a path, bytes, "
                                f"a binary file object, a PIL image or an (H, W[, 3 or 4]) uint8 array")
    name = "input"
    if isinstance(source, (str, os.PathLike)):
        name, path = str(source), Path(source)
        if not path.exists():
            raise InvalidInputError(f"{path}: no such file")
        if path.is_dir():
            raise InvalidInputError(f"{path} is a directory, not an image")
        if not path.is_file():      # a pipe (bash's <(…)) or a device: Pillow seeks, so read it whole first
            source = read_capped(path)
        elif path.stat().st_size == 0:
            source = b""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InvalidInputError(f"{name} is empty (0 bytes), not an image")
        source = io.BytesIO(bytes(source))
    try:
        with _semcodec_size_limits():
            im = Image.open(source)               # reads the header only
    except UnidentifiedImageError as e:
        raise InvalidInputError(f"{name} is not an image Pillow can read ({e.__class__.__name__})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidInputError(f"{name}: cannot decode image ({e})") from None
    check_image_size(im.width, im.height, name)   # before a single pixel is decoded
    if _sixteen_bit_samples(im):                  # known from the decoder's raw mode, before it runs
        im.info[_SOURCE_BITS] = 16
    if not load:
        return im
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as e:
        raise InvalidInputError(f"{name}: cannot decode image ({e})") from None
    return im


def check_image_size(width: int, height: int, name: str = "input") -> None:
    """Refuse an image beyond semcodec's own caps (:data:`MAX_SIDE` a side, :data:`MAX_PIXELS` pixels),
    saying which cap applies and what to do.

    These caps replace Pillow's decompression-bomb guard (about 89 and 179 megapixels), which would
    refuse real photos that semcodec codes (a semantic-only stream has no other size limit); the
    pixel layer's own, lower cap is checked where it is coded.
    """
    if max(width, height) > MAX_SIDE:
        raise InvalidInputError(f"{name} is {width}x{height}: semcodec codes images of up to {MAX_SIDE} px a side; "
                                "downscale it")
    if width * height > MAX_PIXELS:
        raise InvalidInputError(f"{name} is {width}x{height} ({width * height / 1e6:.0f} megapixels): semcodec codes "
                                f"images of up to {MAX_PIXELS / 1e6:.0f} megapixels; downscale it")


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _semcodec_size_limits():
    """Open images without Pillow's decompression-bomb limit (:func:`check_image_size` applies semcodec's
    caps instead, before decoding). Pillow keeps that limit in a module global; it is lifted only for the
    duration of ``Image.open``, which reads the header, and restored after."""
    with _PILLOW_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


@dataclass(frozen=True)
class LoadedImage:
    """An image read for coding: its pixels and the metadata kept with them.

    Attributes:
        pixels: (H, W, 3) uint8 sRGB (or the colour space of ``metadata.icc_profile``), as displayed.
        metadata: EXIF (orientation 1), ICC profile and XMP to carry in the stream (see the module docstring).
    """

    pixels: np.ndarray
    metadata: Metadata


def to_rgb8(im: Image.Image, notes: list[str] | None = None) -> np.ndarray:
    """Convert a PIL image to (H, W, 3) uint8 following the rules of the module docstring.

    Each conversion that changes what is coded (grayscale, depth, alpha, colour space,
    orientation, frames) is described by one line appended to ``notes`` when given.
    """
    return _convert(im, [] if notes is None else notes, metadata=False).pixels


def _convert(im: Image.Image, notes: list[str], metadata: bool) -> LoadedImage:
    """:func:`to_rgb8`, and with ``metadata`` the metadata that describes the converted pixels."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1 and im.format in ("TIFF", "MPO"):     # pages of a document, views of a stereo photo
        notes.append(f"multi-image file ({frames} images): only the first is coded")
    elif frames > 1:
        notes.append(f"animated image ({frames} frames): only the first frame is coded")
    if im.info.get(_SOURCE_BITS) == 16 or _sixteen_bit_samples(im):
        notes.append(f"16-bit {im.mode}: reduced to 8 bits per channel")
    original, orientation = im, 1
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # a malformed EXIF block must not make the image unreadable
        orientation = 1
    # pillow-heif applies a HEIC's orientation itself (its EXIF then says 1) and keeps the original value.
    shown = orientation if orientation in _ORIENTATIONS else original.info.get("original_orientation")
    if shown in _ORIENTATIONS:
        notes.append(f"EXIF orientation {shown} applied: coded as displayed ({_ORIENTATIONS[shown]})")
    check_image_size(im.width, im.height)
    keep_profile = True                    # the profile describes the pixels unless it is applied or unreadable
    icc_profile = im.info.get("icc_profile")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255) else (
            1.0 if im.mode == "F" and a.max(initial=0) <= 1.0 else 255.0)
        notes.append(f"{_MODE_NAMES.get(im.mode, im.mode)} grayscale: scaled to 8 bits and coded as RGB "
                     "with equal channels")
        a = np.clip(np.floor(a / scale * 255 + 0.5), 0, 255).astype(np.uint8)
        pixels = np.repeat(a[:, :, None], 3, axis=2)
    else:
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            what = "grayscale with transparency" if im.mode in ("LA", "La") else "transparency"
            notes.append(f"{what}: composited over white and coded as RGB (the alpha channel is not coded)")
            rgba = im.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, rgba).convert("RGB")
        if icc_profile and im.mode in ("RGB", "CMYK"):
            im, keep_profile = _profile_to_srgb(im, icc_profile, notes)
        if im.mode in ("L", "1"):
            notes.append("grayscale: coded as RGB with equal channels")
        elif im.mode == "CMYK":
            notes.append("CMYK: converted to RGB by Pillow (no colour management)")
        # Pillow's own conversions of other colour models (CMYK, YCbCr, LAB, …) leave no profile describing
        # the result; from gray or a palette the values, and so the profile, stay meaningful.
        keep_profile = keep_profile and im.mode in ("RGB", "L", "1", "P")
        if im.mode != "RGB":
            im = im.convert("RGB")
        pixels = np.asarray(im, dtype=np.uint8).copy()
    if not metadata:
        return LoadedImage(pixels, Metadata())
    exif = _exif_as_coded(original, im, orientation)
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")     # without tiff:Orientation once applied
    return LoadedImage(pixels, _checked_metadata(exif, icc_profile if keep_profile else None, xmp, notes))


#: EXIF tag 0x0112 and what each value other than 1 asks a viewer to do.
_ORIENTATION = 0x0112
_ORIENTATIONS = {2: "mirrored left to right", 3: "rotated 180°", 4: "mirrored top to bottom",
                 5: "mirrored along the main diagonal", 6: "rotated 90° clockwise",
                 7: "mirrored along the other diagonal", 8: "rotated 90° counter-clockwise"}
#: ``im.info`` key under which :func:`open_image` records that the file stores 16 bits per sample.
_SOURCE_BITS = "semcodec_source_bits"


def _sixteen_bit_samples(im: Image.Image) -> bool:
    """Whether Pillow reads this (not yet loaded) file's 16-bit samples into an 8-bit mode (16-bit RGB and
    RGBA PNG, TIFF and PPM files). Only the decoder's raw mode tells."""
    if im.mode.startswith("I") or im.mode == "F":      # 16-bit grayscale keeps its depth (scaled in _convert)
        return False
    for tile in getattr(im, "tile", None) or ():
        args = tile.args if isinstance(tile.args, tuple) else (tile.args,)
        if args and isinstance(args[0], str) and ";16" in args[0]:
            return True
    return False


def _exif_as_coded(original: Image.Image, transposed: Image.Image, orientation: int) -> bytes | None:
    """The input's EXIF block (a TIFF structure, without JPEG's ``Exif\\0\\0``) describing the image as coded:
    its orientation tag is set to 1 when the orientation was applied, every other byte left as it was."""
    raw = original.info.get("exif")
    if not isinstance(raw, (bytes, bytearray)) or not raw:
        return None
    tiff = _without_exif_prefix(bytes(raw))
    if orientation in _ORIENTATIONS:
        patched = _reset_orientation(tiff)
        # An IFD0 we cannot patch in place: Pillow's rewrite of it, without the tag.
        tiff = patched if patched is not None else _without_exif_prefix(transposed.info.get("exif") or b"")
    return tiff or None


def _without_exif_prefix(data: bytes) -> bytes:
    return data[6:] if data.startswith(b"Exif\x00\x00") else data


def _reset_orientation(tiff: bytes) -> bytes | None:
    """``tiff`` (an EXIF block) with the orientation tag of its IFD0 set to 1 (unchanged when it has none), or
    None when IFD0 cannot be walked or holds the tag in an unexpected form."""
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    if ifd + 2 + 12 * count > len(tiff):
        return None
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, entry)
        if tag == _ORIENTATION:
            if kind != 3 or n != 1:                     # one SHORT, stored in the entry itself
                return None
            out = bytearray(tiff)
            struct.pack_into(order + "H", out, entry + 8, 1)
            return bytes(out)
    return tiff


def _checked_metadata(exif, icc_profile, xmp, notes: list[str]) -> Metadata:
    """The metadata a stream can carry: a value that breaks the ``META`` rules is left out, with a note."""
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    values = {}
    for kind, value in ((EXIF, exif), (ICC_PROFILE, icc_profile), (XMP, xmp)):
        if not isinstance(value, (bytes, bytearray)) or not value:
            continue
        problem = entry_problem(kind, bytes(value))
        if problem:
            notes.append(f"{KIND_NAMES[kind]} metadata not kept: it {problem}")
        else:
            values[kind] = bytes(value)
    size = sum(len(v) + 5 for v in values.values())
    if size > MAX_METADATA_BYTES:
        notes.append(f"metadata not kept: its {size} bytes exceed the {MAX_METADATA_BYTES} a stream carries")
        return Metadata()
    return Metadata(exif=values.get(EXIF), icc_profile=values.get(ICC_PROFILE), xmp=values.get(XMP))


def _profile_to_srgb(im: Image.Image, icc_profile: bytes, notes: list[str]) -> tuple[Image.Image, bool]:
    """Convert an RGB or CMYK image from its embedded ICC profile to sRGB (an sRGB profile is left as is).

    Returns:
        The image, and whether the profile still describes its pixels (it was left as is and can be read).
    """
    try:
        from PIL import ImageCms       # LittleCMS: in Pillow's wheels, optional in source builds
    except ImportError:
        notes.append("ICC colour profile ignored (this Pillow has no LittleCMS): the pixels are coded as sRGB")
        return im, True
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        name = ImageCms.getProfileDescription(profile).strip() or "unnamed"
    except (ImageCms.PyCMSError, OSError, ValueError):
        notes.append("unreadable ICC colour profile ignored: the pixels are coded as sRGB")
        return im, False
    if "srgb" in name.lower():
        return im, True
    try:
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        converted = ImageCms.profileToProfile(im, profile, srgb, outputMode="RGB")
    except ImageCms.PyCMSError as e:
        notes.append(f"ICC colour profile {name!r} could not be applied ({e}): the pixels are coded as sRGB")
        return im, True
    notes.append(f"ICC colour profile {name!r}: converted to sRGB (colours outside sRGB are clipped)")
    return converted, False


#: How a note names a Pillow mode with more than 8 bits per sample.
_MODE_NAMES = {"I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit integer", "F": "floating-point"}


def load_rgb(source, notes: list[str] | None = None) -> np.ndarray:
    """Read any image Pillow understands (path, bytes, file object, PIL image or array) as (H, W, 3) uint8;
    what the conversion changed goes to ``notes`` (see :func:`to_rgb8`)."""
    return load_image(source, notes, metadata=False).pixels


def load_image(source, notes: list[str] | None = None, metadata: bool = True) -> LoadedImage:
    """:func:`load_rgb`, and (with ``metadata``) the EXIF, ICC profile and XMP that describe the coded pixels.

    A metadata value a stream cannot carry (malformed, or beyond the ``META`` caps) is left out with a note.
    """
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or not (source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (3, 4))):
            raise InvalidInputError(f"expected an (H, W), (H, W, 3) or (H, W, 4) uint8 array, "
                                    f"got shape {source.shape} dtype {source.dtype}")
        source = Image.fromarray(source)
    return _convert(open_image(source), [] if notes is None else notes, metadata)


#: The largest difference between the channels of an image that still counts as gray: lossy WebP or HEIC files
#: of a black-and-white photo differ by one level here and there.
GRAY_TOLERANCE = 1


def channel_spread(pixels: np.ndarray) -> int:
    """The largest difference between two channels of an (H, W, 3) uint8 image at any pixel (0: exactly gray)."""
    r, g, b = (pixels[..., c] for c in range(3))
    return max(int(np.abs(np.subtract(x, y, dtype=np.int16)).max(initial=0)) for x, y in ((r, g), (r, b), (g, b)))


def gray_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """The gray value of a decoded gray image, (H, W, 3) uint8 → (H, W) uint8: the rounded mean of its channels
    (the codec does not keep them exactly equal; their mean is the better estimate)."""
    return ((rgb.astype(np.uint16).sum(axis=2) + 1) // 3).astype(np.uint8)
