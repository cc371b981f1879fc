"""File system helpers: capped whole-file reads, file digests, and atomic writes.

Reads are capped, so that a pipe or a device (``/dev/zero``) that never ends is an
error, not an exhausted memory. Writes go to a temporary file in the destination
folder, then a rename: a reader never sees a partial file, and an error or Ctrl-C
leaves nothing behind.
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

from .errors import InvalidInputError

#: Largest input read into memory (streams and images).
MAX_INPUT_BYTES = 1 << 30


def file_digest(path: str | Path) -> bytes:
    """Full sha256 of a file (the stream header stores its first 8 bytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def file_digest8(path: str | Path) -> bytes:
    """The first 8 bytes of a file's sha256 (what stream headers record for checkpoints and
    calibrations), hashed once per version of the file (path, mtime, size): looking for the file
    that many streams name does not re-hash the candidates."""
    st = os.stat(path)
    return _cached_digest8(str(path), st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _cached_digest8(path: str, mtime_ns: int, size: int) -> bytes:
    return file_digest(path)[:8]


def read_capped(path: str | os.PathLike, limit: int = MAX_INPUT_BYTES) -> bytes:
    """The whole content of a file, pipe (e.g. bash's ``<(…)``) or device, at most ``limit`` bytes,
    with a clear :class:`InvalidInputError` for missing, unreadable or oversized inputs."""
    p = Path(path)
    try:
        if p.is_dir():
            raise InvalidInputError(f"{p} is a directory, not a file")
        if p.is_file() and (size := p.stat().st_size) > limit:
            raise InvalidInputError(f"{p} is {size} bytes; the limit is {limit}")
        with open(p, "rb") as f:
            data = f.read(limit + 1)      # pipes and devices report no size: read one byte past the limit
    except FileNotFoundError:
        raise InvalidInputError(f"{p}: no such file") from None
    except PermissionError:
        raise InvalidInputError(f"{p}: permission denied") from None
    except OSError as e:
        raise InvalidInputError(f"{p}: cannot read ({e.strerror or e})") from None
    if len(data) > limit:
        raise InvalidInputError(f"{p} holds more than {limit} bytes, the limit")
    return data


def read_file_object(f, what: str) -> bytes:
    """The content of a binary file object (``open(path, "rb")``, ``io.BytesIO``, ``sys.stdin.buffer``);
    a text-mode one is an :class:`InvalidInputError` that says how to open ``what`` instead."""
    data = f.read()
    if isinstance(data, str):
        raise InvalidInputError(f"the file object is in text mode; open the {what} with mode 'rb'")
    return data


def default_file_mode() -> int:
    """Permissions of a new file under the current umask (mkstemp alone would create it 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_TEMPORARY_SUFFIX = ".part"


def temporary_files(path: str | os.PathLike) -> list[Path]:
    """The temporary files that :func:`atomic_write` calls for ``path`` have left: none, unless a writer
    was killed (SIGKILL) before its cleanup could run; a batch removes those of the workers it kills."""
    path = Path(os.path.realpath(path))
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{_TEMPORARY_SUFFIX}"))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Create ``path`` atomically: ``write(tmp_path)`` fills a temporary file that is then renamed.

    A symlink is followed: the file it names is replaced and the link kept. A path that names
    something other than a regular file (``/dev/null``, a pipe such as bash's ``>(…)``) cannot be
    replaced by a rename and must not be: ``write`` writes into it directly.

    Raises:
        OSError: the folder does not exist or is not writable (nothing is left behind).
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        write(str(path))
        return
    path = Path(os.path.realpath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMPORARY_SUFFIX,
                               dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())   # after writing: some writers recreate the file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
