"""safetensors files as semcodec writes and reads them: canonical bytes, atomic writes, checked metadata.

safetensors writes its ``__metadata__`` in a random order; semcodec rewrites the JSON
header with sorted keys, so the same content always gives the same bytes (and the
same sha256, which streams use to name checkpoints and calibrations).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import ModelError
from .fsutil import atomic_write


def canonical_bytes(tensors: dict, metadata: dict[str, str]) -> bytes:
    """Serialize torch tensors and string metadata as safetensors with a sorted, reproducible header."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)          # the format wants the buffer 8-byte aligned
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically, creating its folder; returns the path."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)
    return path


def save_atomic(tensors: dict, path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write a canonical safetensors file atomically (no partial file remains after an error)."""
    return write_bytes_atomic(path, canonical_bytes(tensors, metadata))


def read_checked_metadata(path: str | os.PathLike, kind: str, format_version: str, what: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, checked for its ``kind`` and ``format_version``.

    Raises:
        ModelError: unreadable file, another kind of file, or another format version.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"{path} is not a readable safetensors file: {e}") from None
    if meta.get("kind") != kind:
        raise ModelError(f"{path} is not a semcodec {what} (kind {meta.get('kind')!r})")
    if meta.get("format_version") != format_version:
        raise ModelError(f"{path} has {what} format {meta.get('format_version')!r}; this semcodec reads {format_version!r}")
    return meta
