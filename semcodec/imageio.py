"""Reading images into the codec's canonical form: (H, W, 3) uint8 sRGB.

What happens to each kind of input (also in the README):

* EXIF orientation is applied (the image is coded as it is displayed).
* Grayscale (L, I;16, I, F) becomes RGB with equal channels; 16-bit and float
  images are scaled to 8 bits. A gray image (channels equal to within
  :data:`GRAY_TOLERANCE`, :func:`channel_spread`) is flagged in the stream and
  decodes to one channel (:func:`gray_from_rgb`).
* Transparency (RGBA, LA, PA, palette with transparency) is composited over
  white; the alpha channel is not coded.
* An embedded ICC colour profile other than sRGB (Display P3, Adobe RGB, a CMYK
  press profile, …) is applied: the pixels are converted to sRGB by LittleCMS, so
  that colours look the same after decoding (the decoded image is sRGB).
* CMYK without a profile, YCbCr, palette and other modes are converted to RGB by Pillow.
* Animated images and multi-image files: the first frame is coded.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def open_image(source) -> Image.Image:
    """Open ``source`` (path, bytes, binary file object or PIL image) as a PIL image, with clear
    errors for non-images."""
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


def to_rgb8(im: Image.Image, notes: list[str] | None = None) -> np.ndarray:
    """Convert a PIL image to (H, W, 3) uint8 following the rules of the module docstring.

    Each conversion that changes what is coded (grayscale, depth, alpha, colour space,
    frames) is described by one line appended to ``notes`` when given.
    """
    notes = [] if notes is None else notes
    frames = getattr(im, "n_frames", 1)
    if frames > 1 and im.format in ("TIFF", "MPO"):     # pages of a document, views of a stereo photo
        notes.append(f"multi-image file ({frames} images): only the first is coded")
    elif frames > 1:
        notes.append(f"animated image ({frames} frames): only the first frame is coded")
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # a malformed EXIF block must not make the image unreadable
        pass
    check_image_size(im.width, im.height)
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        scale = 65535.0 if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255) else (
            1.0 if im.mode == "F" and a.max(initial=0) <= 1.0 else 255.0)
        notes.append(f"{_MODE_NAMES.get(im.mode, im.mode)} grayscale: scaled to 8 bits and coded as RGB "
                     "with equal channels")
        a = np.clip(np.floor(a / scale * 255 + 0.5), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    icc_profile = im.info.get("icc_profile")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        what = "grayscale with transparency" if im.mode in ("LA", "La") else "transparency"
        notes.append(f"{what}: composited over white and coded as RGB (the alpha channel is not coded)")
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba).convert("RGB")
    if icc_profile and im.mode in ("RGB", "CMYK"):
        im = _profile_to_srgb(im, icc_profile, notes)
    if im.mode in ("L", "1"):
        notes.append("grayscale: coded as RGB with equal channels")
    elif im.mode == "CMYK":
        notes.append("CMYK: converted to RGB by Pillow (no colour management)")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy()


def _profile_to_srgb(im: Image.Image, icc_profile: bytes, notes: list[str]) -> Image.Image:
    """Convert an RGB or CMYK image from its embedded ICC profile to sRGB (an sRGB profile is left as is)."""
    try:
        from PIL import ImageCms       # LittleCMS: in Pillow's wheels, optional in source builds
    except ImportError:
        notes.append("ICC colour profile ignored (this Pillow has no LittleCMS): the pixels are coded as sRGB")
        return im
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        name = ImageCms.getProfileDescription(profile).strip() or "unnamed"
    except (ImageCms.PyCMSError, OSError, ValueError):
        notes.append("unreadable ICC colour profile ignored: the pixels are coded as sRGB")
        return im
    if "srgb" in name.lower():
        return im
    try:
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        converted = ImageCms.profileToProfile(im, profile, srgb, outputMode="RGB")
    except ImageCms.PyCMSError as e:
        notes.append(f"ICC colour profile {name!r} could not be applied ({e}): the pixels are coded as sRGB")
        return im
    notes.append(f"ICC colour profile {name!r}: converted to sRGB (colours outside sRGB are clipped)")
    return converted


#: How a note names a Pillow mode with more than 8 bits per sample.
_MODE_NAMES = {"I;16": "16-bit", "I;16B": "16-bit", "I;16L": "16-bit", "I": "32-bit integer", "F": "floating-point"}


def load_rgb(source, notes: list[str] | None = None) -> np.ndarray:
    """Read any image Pillow understands (path, bytes, file object, PIL image or array) as (H, W, 3) uint8;
    what the conversion changed goes to ``notes`` (see :func:`to_rgb8`)."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or not (source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (3, 4))):
            raise InvalidInputError(f"expected an (H, W), (H, W, 3) or (H, W, 4) uint8 array, "
                                    f"got shape {source.shape} dtype {source.dtype}")
        source = Image.fromarray(source)
    return to_rgb8(open_image(source), notes)


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
