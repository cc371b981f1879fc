"""File handling of the shell commands: '-' for stdin/stdout, size caps, atomic writes."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

from ..batch import IMAGE_SUFFIXES
from ..fsutil import MAX_INPUT_BYTES, atomic_write, read_capped
from ..errors import InvalidInputError, OutputClosedError


def read_input_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole input file, pipe or stdin for '-', with a clear error for missing or oversized inputs."""
    if str(path) != "-":
        return read_capped(path)
    data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidInputError(f"standard input holds more than {MAX_INPUT_BYTES} bytes, the limit")
    return data


def default_output(input_path: str, suffix: str) -> str:
    """Output name next to the input: ``photo.png`` → ``photo<suffix>``; stdin → stdout."""
    if input_path == "-":
        return "-"
    p = Path(input_path)
    return str(p.with_name(p.stem + suffix)) if p.suffix != suffix else str(p.with_name(p.name + suffix))


def single_output(input_path: str, output: str | None, suffix: str) -> str:
    """Where the output of one input goes: ``-o`` as given, or inside it under the default name when
    it is an existing folder (as ``cp`` does); without ``-o``, next to the input."""
    if output is None:
        return default_output(input_path, suffix)
    if output != "-" and Path(output).is_dir():
        if input_path == "-":
            raise InvalidInputError(f"{output} is a folder; with stdin as the input, give -o a file name")
        return str(Path(output) / Path(default_output(input_path, suffix)).name)
    return output


def check_writable(path: str | os.PathLike, force: bool) -> None:
    """Fail early (before any work) when an output would overwrite a file without --force,
    or would write binary data to a terminal."""
    if str(path) == "-" and sys.stdout.isatty():
        raise InvalidInputError("refusing to write binary data to a terminal; give -o FILE or redirect stdout")
    if str(path) != "-":
        if Path(path).is_dir():
            raise InvalidInputError(f"{path} is a folder; give a file name")
        refuse_overwrite(path, force)


def check_output_folder(path: str | os.PathLike) -> None:
    """Fail before any work (training, calibration) when an output's folder does not exist."""
    if str(path) != "-" and not Path(path).parent.exists():
        raise InvalidInputError(f"cannot write {path}: folder {Path(path).parent} does not exist")


def refuse_overwrite(path: str | os.PathLike, force: bool) -> None:
    """Refuse to replace an existing file without ``force``. A device or a pipe (``-o /dev/null``,
    bash's ``>(…)``) is written into, not replaced, and needs no ``force``."""
    if not force and Path(path).is_file():
        raise InvalidInputError(f"{path} exists; use --force to overwrite it")


def _suffix(path: str | os.PathLike) -> str:
    """The lower-case suffix of an output name ('' for stdout and names without one)."""
    return Path(str(path)).suffix.lower() if str(path) != "-" else ""


def check_stream_name(path: str | os.PathLike) -> None:
    """Refuse to write a semcodec stream under an image's name (``-o x.png``), which would promise
    an image that no viewer can open."""
    suffix = _suffix(path)
    if suffix in IMAGE_SUFFIXES:
        raise InvalidInputError(f"{path} would hold a semcodec stream, not a {suffix} image; name it .smc "
                                f"(decompress writes images)")


def check_safetensors_name(path: str | os.PathLike, what: str) -> None:
    """Refuse an output name whose suffix promises another format (``-o x.npy``, ``x.pt``, ``x.png``)
    for ``what`` (tokens, a calibration, a checkpoint), which is written as safetensors."""
    suffix = _suffix(path)
    if suffix not in ("", ".safetensors"):
        raise InvalidInputError(f"{path} would hold {what} in safetensors format; name it .safetensors, not {suffix!r}")


#: Lossless output image formats by file suffix; a name without a suffix (and stdout) is PNG.
_IMAGE_FORMATS = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".webp": "WEBP"}


def image_format(path: str | os.PathLike) -> str:
    """The Pillow format a decoded image is written in for this output name.

    Raises:
        InvalidInputError: the suffix names another format (e.g. .jpg: decoded pixels are
            not re-encoded lossily behind the user's back).
    """
    suffix = _suffix(path)
    if suffix and suffix not in _IMAGE_FORMATS:
        raise InvalidInputError(f"cannot write decoded pixels as {suffix!r}: they are written losslessly as "
                                f"{', '.join(_IMAGE_FORMATS)} (chosen by the output's suffix)")
    return _IMAGE_FORMATS.get(suffix, "PNG")


def encode_image(image, path: str | os.PathLike) -> memoryview:
    """Encode a decoded PIL image losslessly in the format its output name asks for (PNG by default), with
    the metadata in its ``info`` (see :func:`metadata_options`).

    Raises:
        InvalidInputError: the format cannot hold this image (e.g. WebP beyond 16383 px a side).
    """
    buf = io.BytesIO()
    _save_image(image, buf, path)
    return buf.getbuffer()                      # the buffer itself: no copy of a large image


def write_output_image(path: str | os.PathLike, image, force: bool = False) -> int:
    """Write a decoded image to ``path`` as :func:`encode_image` encodes it, saved straight into the atomic
    write's temporary file (a large image is not held encoded in memory too), or to stdout for '-'.

    Returns:
        The bytes written.

    Raises:
        InvalidInputError: as :func:`encode_image` and :func:`write_output_bytes`.
        OutputClosedError: '-' is a pipe whose reader has gone.
    """
    p = Path(path)
    if str(path) == "-" or (p.exists() and not p.is_file()):     # stdout, a pipe or a device: cannot seek
        data = encode_image(image, path)
        write_output_bytes(path, data, force=force)
        return len(data)
    refuse_overwrite(p, force)
    _write_atomically(p, lambda tmp: _save_image(image, tmp, path))
    return p.stat().st_size


def _save_image(image, target, path: str | os.PathLike) -> None:
    """``image.save`` into ``target`` (a file name or object) in the format ``path`` names, with its metadata."""
    fmt = image_format(path)
    try:
        image.save(target, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}),
                   **metadata_options(image, fmt))
    except (ValueError, OSError) as e:             # e.g. WebP holds at most 16383 px a side
        if isinstance(e, (FileNotFoundError, PermissionError)):
            raise
        raise InvalidInputError(f"cannot write the decoded {image.width}x{image.height} image as {fmt} ({e}); "
                                f"choose another format, e.g. .png") from None


def metadata_options(image, fmt: str) -> dict:
    """Pillow save options that write a decoded image's metadata (``image.info``: ``exif``, ``icc_profile``,
    ``xmp``, as :func:`semcodec.decompress` sets them) into formats that carry it: PNG (eXIf, iCCP and an
    ``XML:com.adobe.xmp`` iTXt chunk), TIFF (its tags, tag 34675 and tag 700) and WebP (EXIF, ICCP and XMP
    chunks). BMP and PPM carry none. An ICC profile is written only when its colour space is that of the
    written pixels (WebP stores a gray image as RGB)."""
    import warnings

    from PIL import Image, PngImagePlugin

    from ..bitstream.metadata import icc_colour_space

    exif, icc, xmp = (image.info.get(key) for key in ("exif", "icc_profile", "xmp"))
    gray = image.mode == "L" and fmt != "WEBP"
    if icc and icc_colour_space(icc) != ("GRAY" if gray else "RGB"):
        icc = None
    options: dict = {"icc_profile": icc}        # explicit: PNG and TIFF would otherwise take info's
    if fmt == "PNG":
        if exif:
            options["exif"] = exif
        if xmp:
            pnginfo = PngImagePlugin.PngInfo()
            pnginfo.add_itxt("XML:com.adobe.xmp", xmp.decode("utf-8", "replace"))
            options["pnginfo"] = pnginfo
    elif fmt == "WEBP":
        options |= {"exif": exif or b"", "xmp": xmp or b""}
    elif fmt == "TIFF":
        tags = Image.Exif()
        if exif:
            with warnings.catch_warnings():        # Pillow keeps what it can read of a damaged IFD, and says so
                warnings.simplefilter("ignore")
                tags.load(exif)
        if xmp:
            tags[700] = xmp                      # XMLPacket
        options["exif"] = tags
    return options


def output_closed() -> OutputClosedError:
    """The error for a standard output whose reader has gone (EPIPE), after pointing the output at
    /dev/null: Python's final flush of what is left in its buffer then succeeds, instead of printing
    "Exception ignored … BrokenPipeError" after the one-line error."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):   # no real stdout (CliRunner)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    return OutputClosedError("output pipe closed: its reader stopped before the end of the output")


def write_output_bytes(path: str | os.PathLike, data: bytes, force: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + rename), or to stdout for '-'.

    Raises:
        InvalidInputError: the file exists and ``force`` is false, or it cannot be written.
        OutputClosedError: '-' is a pipe whose reader has gone.
    """
    if str(path) == "-":
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise output_closed() from None
        return
    p = Path(path)
    refuse_overwrite(p, force)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    _write_atomically(p, write)


def _write_atomically(p: Path, write) -> None:
    """:func:`~semcodec.fsutil.atomic_write` with its failures as one-line errors."""
    try:
        atomic_write(p, write)
    except FileNotFoundError:
        raise InvalidInputError(f"cannot write {p}: folder {p.parent} does not exist") from None
    except OSError as e:
        raise InvalidInputError(f"cannot write {p}: {e.strerror or e}") from None

