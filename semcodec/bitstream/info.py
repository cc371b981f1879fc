"""A stream's bytes from wherever they come from, and what ``semcodec info`` reports about them.

Light on purpose: reading and describing a container needs neither torch nor the codec
models, so ``semcodec info`` (and anything else that only parses streams) starts at once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from ..errors import InvalidInputError
from ..fsutil import read_capped, read_file_object
from .container import MAGIC, read_container


def stream_data(source) -> bytes | bytearray | memoryview:
    """The bytes of a stream given as bytes-like data, a path (``str`` or ``os.PathLike``) or a binary
    file object; the decoders call it, so each takes any of these.

    Raises:
        InvalidInputError: a missing or unreadable file, a text-mode file object, or a ``str`` that
            holds a stream's content rather than a path (the file was read in text mode).
    """
    if hasattr(source, "read"):                        # open(path, "rb"), io.BytesIO, sys.stdin.buffer, …
        return read_file_object(source, "stream")
    if isinstance(source, str) and (source.startswith(MAGIC[:4].decode("latin-1")) or "\x00" in source):
        raise InvalidInputError("a semcodec stream is bytes, not str (open the file in binary mode, 'rb')")
    if isinstance(source, (str, os.PathLike)):
        return read_capped(source)
    return source


@dataclass(frozen=True)
class StreamInfo:
    """What ``semcodec info`` prints: the header, the size of each layer and of the metadata chunk."""

    format_version: str
    width: int
    height: int
    codec_model: str
    codec_checkpoint: str
    semantic_model: str
    calibration: str
    preprocessing: str
    entropy_coder: int
    layers: dict[str, int]          # chunk type → payload bytes, in stream order
    total_bytes: int
    gray: bool = False              # the pixel layer decodes to one channel
    metadata_bytes: int = 0         # payload bytes of the metadata chunk (META; 0: none)
    metadata: dict[str, int] = field(default_factory=dict)     # kind (EXIF, ICC, XMP) → bytes

    @property
    def bpp(self) -> float:
        return self.total_bytes * 8 / (self.width * self.height)

    def to_dict(self) -> dict:
        return asdict(self) | {"bpp": round(self.bpp, 6)}

    def describe(self) -> str:
        """Human-readable multi-line summary."""
        rows = [
            ("format", self.format_version),
            ("image", f"{self.width}x{self.height}" + (", gray" if self.gray else "")),
            ("codec model", f"{self.codec_model or '-'}"
                            + (f" (checkpoint {self.codec_checkpoint})" if self.codec_model else "")),
            ("semantic model", f"{self.semantic_model or '-'}"
                               + (f" (calibration {self.calibration}, {self.preprocessing})" if self.semantic_model else "")),
            ("entropy coder", str(self.entropy_coder)),
        ]
        names = {"SEM0": "layer 0 (semantic)", "RES1": "layer 1 (pixels)", "REF2": "layer 2 (refinement)"}
        rows += [(names.get(t, t), f"{n} bytes") for t, n in self.layers.items()]
        if self.metadata_bytes:
            kinds = ", ".join(f"{k} {n}" for k, n in self.metadata.items()) or "no kind this semcodec knows"
            rows.append(("metadata", f"{self.metadata_bytes} bytes ({kinds})"))
        rows.append(("total", f"{self.total_bytes} bytes, {self.bpp:.4f} bpp"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def inspect(data) -> StreamInfo:
    """Parse and validate a stream's container (bytes, a path or a binary file object) and report its
    header, layer sizes and metadata (the kinds and bytes of its META chunk)."""
    data = stream_data(data)
    c = read_container(data)
    h = c.header
    metadata = c.image_metadata()
    return StreamInfo(
        format_version=f"{c.version[0]}.{c.version[1]}", width=h.width, height=h.height,
        codec_model=h.codec_model, codec_checkpoint=h.codec_checkpoint.hex() if h.codec_model else "",
        semantic_model=h.semantic_model, calibration=h.calibration.hex() if h.semantic_model else "",
        preprocessing=h.preprocessing, entropy_coder=h.entropy_coder,
        layers={ch.type.decode("ascii"): len(ch.payload) for ch in c.chunks}, total_bytes=len(data), gray=h.gray,
        metadata_bytes=len(c.metadata or b""), metadata=metadata.kinds(),
    )
