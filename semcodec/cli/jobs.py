"""Per-file work of the batch commands (module-level so worker processes can pickle it).

With ``resume`` (the start time of the run, ``time.time()``), an output that already
exists and verifies is kept instead of being written again: ``--skip-existing`` (and
the Ray engine, always) use it, so a re-run picks up where an interrupted one stopped,
and a task that Ray retries after its worker died does not rewrite what the dead worker
finished. With ``force``, only outputs written by this run (modified at or after
``resume``) are kept; older ones are redone. An existing output that does not verify
(a damaged or foreign file) is redone either way, with a note.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..batch import BatchItem, BatchOutcome, failure
from ..errors import SemcodecError
from .io import read_input_bytes, write_output_bytes, write_output_image


def kept_output(path: Path, verify: Callable[[bytes], object], force: bool, resume: float | None) -> bytes | None:
    """The bytes of an output a resumed run keeps, or None when the output must be (re)written.

    ``verify`` raises on a damaged file (any exception counts as damaged).
    """
    if resume is None or not path.is_file():           # a pipe or a device (-o /dev/null) is never "done"
        return None
    try:
        if force and path.stat().st_mtime < resume:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    try:
        verify(data)
    except Exception:  # noqa: BLE001 - whatever the reader raises, the file is not a usable output
        return None
    return data


#: The note of an output that existed but did not verify, and was written again.
REDONE = "the existing output did not verify: written again"


def existing_output(path: Path, verify: Callable[[bytes], object], force: bool,
                    resume: float | None) -> tuple[bytes | None, tuple[str, ...]]:
    """:func:`kept_output`, and the notes to report: :data:`REDONE` when an existing file is to be replaced
    because it does not verify (not with ``force``, which replaces on purpose)."""
    kept = kept_output(path, verify, force, resume)
    redone = kept is None and resume is not None and not force and path.is_file()
    return kept, (REDONE,) if redone else ()


def stream_detail(data: bytes) -> str:
    """A stream's bytes by layer, as ``-v/--verbose`` prints them:
    ``layer 0 700 B + layer 1 4300 B + container 30 B``."""
    from ..bitstream.info import inspect

    info = inspect(data)
    names = {"SEM0": "layer 0", "RES1": "layer 1"}
    parts = [f"{names.get(t, t)} {n} B" for t, n in info.layers.items()]
    return " + ".join(parts + [f"container {info.total_bytes - sum(info.layers.values())} B"])


def compress_detail(result) -> str:
    """What ``-v/--verbose`` says about a compressed image (an :class:`~semcodec.api.CompressResult`)."""
    rate = (f"rate knob {result.rate:.3f}" if result.rate is not None else "no pixel layer") + (
        f" ({result.trials} trial encodes)" if result.trials > 1 else "")
    return f"{len(result.data)} bytes, {result.bpp:.4f} bpp ({stream_detail(result.data)}); {rate}"


def decompress_detail(image, written: int, stream: bytes) -> str:
    """What ``-v/--verbose`` says about a decoded image (``written``: the bytes of its file)."""
    return (f"{image.width}x{image.height} {image.mode}, {written} bytes "
            f"(from {len(stream)} bytes: {stream_detail(stream)})")


def verify_stream(data: bytes):
    """Parse a stream fully (header, every layer, every CRC); returns its container."""
    from ..bitstream.container import read_container

    return read_container(data)


def verify_image(data: bytes) -> None:
    """Check an encoded image's structure (PNG: every chunk's CRC)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.verify()


def verify_tokens(data: bytes) -> int:
    """Check a tokens file (safetensors that parses, with the tokens metadata); returns its image's pixel count."""
    import json
    import struct

    from safetensors.torch import load

    tensors = load(data)
    (n,) = struct.unpack_from("<Q", data)
    meta = json.loads(data[8:8 + n]).get("__metadata__", {})
    if meta.get("kind") != "semantic-tokens" or "tokens" not in tensors or "positions" not in tensors:
        raise ValueError("not a semcodec tokens file")
    width, height = (int(v) for v in meta.get("image_size", "0,0").split(","))
    return width * height


def compress_file(item: BatchItem, options: dict, force: bool, resume: float | None = None) -> BatchOutcome:
    """Compress one image file into one stream file."""
    from .. import api

    t0 = time.perf_counter()
    try:
        kept, notes = existing_output(item.output, verify_stream, force, resume)
        if kept is not None:
            h = verify_stream(kept).header
            return BatchOutcome(item, True, bytes_in=item.source.stat().st_size, bytes_out=len(kept),
                                stream_bytes=len(kept), pixels=h.width * h.height, skipped=True)
        result = api.compress_image(item.source, **options)
        item.output.parent.mkdir(parents=True, exist_ok=True)
        write_output_bytes(item.output, result.data, force=force or resume is not None)
        return BatchOutcome(item, True, bytes_in=item.source.stat().st_size, bytes_out=len(result.data),
                            stream_bytes=len(result.data), pixels=result.width * result.height,
                            notes=result.notes + notes, detail=compress_detail(result),
                            seconds=time.perf_counter() - t0)
    except SemcodecError as e:
        return failure(item, e)


def decompress_file(item: BatchItem, force: bool, resume: float | None = None) -> BatchOutcome:
    """Decode one stream file into one image file."""
    from .. import api

    t0 = time.perf_counter()
    try:
        data = read_input_bytes(item.source)
        kept, notes = existing_output(item.output, verify_image, force, resume)
        if kept is not None:
            h = verify_stream(data).header
            return BatchOutcome(item, True, bytes_in=len(data), bytes_out=len(kept), stream_bytes=len(data),
                                pixels=h.width * h.height, skipped=True)
        image = api.decompress(data)
        item.output.parent.mkdir(parents=True, exist_ok=True)
        written = write_output_image(item.output, image, force=force or resume is not None)
        return BatchOutcome(item, True, bytes_in=len(data), bytes_out=written, stream_bytes=len(data),
                            pixels=image.width * image.height, notes=notes,
                            detail=decompress_detail(image, written, data), seconds=time.perf_counter() - t0)
    except SemcodecError as e:
        return failure(item, e)


def tokens_detail(tokens) -> str:
    """What ``semcodec tokens`` says about the tokens it wrote (a :class:`~semcodec.layers.semantic.Tokens`)."""
    n, d = tokens.tokens.shape
    return (f"{n} tokens x {d} ({tokens.grid[0]}x{tokens.grid[1]}, {tokens.positions.numel()} coded) of "
            f"{tokens.model}, {tokens.preprocessing}")


def decode_tokens_bytes(data: bytes, calibration: Path | None) -> tuple[bytes, int, str]:
    """Layer 0 of a stream as a tokens file (safetensors bytes), the image's pixel count and a description."""
    from ..layers.semantic import decode_tokens

    tokens = decode_tokens(data, calibration=calibration)
    return tokens.to_bytes(), tokens.image_size[0] * tokens.image_size[1], tokens_detail(tokens)


def tokens_file(item: BatchItem, calibration: Path | None, force: bool, resume: float | None = None) -> BatchOutcome:
    """Decode the semantic tokens (layer 0) of one stream file into one tokens file."""
    t0 = time.perf_counter()
    try:
        data = read_input_bytes(item.source)
        kept, notes = existing_output(item.output, verify_tokens, force, resume)
        if kept is not None:
            return BatchOutcome(item, True, bytes_in=len(data), bytes_out=len(kept), stream_bytes=len(data),
                                pixels=verify_tokens(kept), skipped=True)
        encoded, pixels, detail = decode_tokens_bytes(data, calibration)
        item.output.parent.mkdir(parents=True, exist_ok=True)
        write_output_bytes(item.output, encoded, force=force or resume is not None)
        return BatchOutcome(item, True, bytes_in=len(data), bytes_out=len(encoded), stream_bytes=len(data),
                            pixels=pixels, notes=notes, detail=f"{len(encoded)} bytes, {detail}",
                            seconds=time.perf_counter() - t0)
    except SemcodecError as e:
        return failure(item, e)
