"""The semcodec container: a versioned, layered, checksummed envelope (format 1.4).

A stream is a fixed preamble, a header that names everything a decoder needs
(models, checkpoint and calibration hashes, image size, entropy coder, layer
list), one chunk per layer and, when the image has any, one metadata chunk (``META``, format 1.2)::

    magic (8) | version (1+1) | flags (2) | header_length (4) | header | header_crc32 (4)
    chunk: type (4) | length (4) | payload | crc32 (4)      (repeated)

The semantic layer (``SEM0``) is always the first chunk, so a reader that only
wants the tokens can stop after it (:func:`read_container_prefix`). The byte
layout, the caps and the versioning policy are specified in
``docs/bitstream.md``; this module is the reference implementation. Layer
payloads are opaque here; the metadata payload is parsed by :mod:`semcodec.bitstream.metadata`.

Example:
    >>> header = Header(
    ...     codec_model="semcodec-tiny",
    ...     codec_checkpoint=bytes.fromhex("0123456789abcdef"),
    ...     semantic_model="",
    ...     calibration=bytes(8),
    ...     preprocessing="",
    ...     width=64,
    ...     height=48,
    ...     layers=(RESIDUAL_LAYER,),
    ... )
    >>> data = write_container(Container(header, (Chunk(RESIDUAL_LAYER, b"pixels"),)))
    >>> data[:8] == MAGIC
    True
    >>> read_container(data).layer(RESIDUAL_LAYER)
    b'pixels'
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from semcodec.bitstream.metadata import METADATA_CHUNK, Metadata
from semcodec.errors import (
    CorruptStreamError,
    InvalidInputError,
    MissingLayerError,
    TruncatedStreamError,
    UnsupportedVersionError,
)

__all__ = [
    "CHUNK_OVERHEAD",
    "CONSTRICTION_RANGE_CODER",
    "FORMAT_VERSION",
    "GRAY_FLAG",
    "LAYER_TYPES",
    "MAGIC",
    "MAX_CHUNKS",
    "MAX_CHUNK_PAYLOAD",
    "MAX_DIMENSION",
    "MAX_HEADER_LENGTH",
    "MAX_LAYERS",
    "MAX_NAME_LENGTH",
    "MAX_PIXELS",
    "METADATA_CHUNK",
    "METADATA_FLAG",
    "MIN_HEADER_LENGTH",
    "RESIDUAL_LAYER",
    "REFINEMENT_LAYER",
    "REFINEMENT_VERSION",
    "RESIDUAL_TILES_VERSION",
    "SEMANTIC_LAYER",
    "Chunk",
    "Container",
    "Header",
    "read_container",
    "read_container_prefix",
    "write_container",
]

#: (major, minor): the newest format this module reads and writes. It reads every 1.x and writes
#: the oldest minor that carries a container (1.0 unless it uses something 1.1 to 1.4 added).
FORMAT_VERSION = (1, 4)
#: PNG-style signature: the high byte catches 7-bit transports, CR LF / LF catch
#: line-ending conversion, 0x1A stops ``type`` on DOS.
MAGIC = b"\x89SMC\r\n\x1a\n"

#: Layer 0: semantic tokens. When present it is the first chunk of the stream.
SEMANTIC_LAYER = b"SEM0"
#: Layer 1: residual pixels.
RESIDUAL_LAYER = b"RES1"
#: Layer 2 (format 1.4): the refinement of the pixel layer, up to lossless. Listed only after RES1.
REFINEMENT_LAYER = b"REF2"
#: Layer types, in the order they appear in a stream (format 1.0 defines the first two, 1.4 adds REF2).
LAYER_TYPES = (SEMANTIC_LAYER, RESIDUAL_LAYER, REFINEMENT_LAYER)
#: The format that introduced layer 2; a stream listing it is written as this version.
REFINEMENT_VERSION = (1, 4)

#: ``entropy_coder`` id 1: constriction 0.5 ``stream.queue.RangeEncoder``,
#: 32-bit words serialized little-endian, categorical models with ``perfect=False``.
CONSTRICTION_RANGE_CODER = 1

# Caps. Every length read from a stream is checked against these (and against
# the bytes actually present) before anything is sliced or allocated.
MIN_HEADER_LENGTH = 16
MAX_HEADER_LENGTH = 4096
MAX_NAME_LENGTH = 64
MAX_DIMENSION = 16384
MAX_PIXELS = 2**28
MAX_LAYERS = 8
MAX_CHUNKS = 64
MAX_CHUNK_PAYLOAD = 256 * 2**20

#: Flag bit 0 (format 1.1): the image is gray (its channels were equal, or nearly); a decoder of the
#: pixel layer returns one channel. Advisory: a 1.0 reader ignores it and returns RGB.
GRAY_FLAG = 0x0001
#: Flag bit 1 (format 1.2): the stream has a metadata chunk (``META``), so a stream that ends before
#: it is truncated rather than a stream without metadata. A 1.0 or 1.1 reader ignores it (and the chunk).
METADATA_FLAG = 0x0002
# The flag bits each minor version defines.
_KNOWN_FLAGS = {0: 0x0000, 1: GRAY_FLAG, 2: GRAY_FLAG | METADATA_FLAG, 3: GRAY_FLAG | METADATA_FLAG,
                4: GRAY_FLAG | METADATA_FLAG}
#: Format 1.3 adds no container field: it lets the pixel layer compute its entropy parameters by tiles (a
#: flag of the RES1 payload, :mod:`semcodec.layers.pixels.payload`). Its encoder writes such a stream as 1.3
#: (``Container(..., version=RESIDUAL_TILES_VERSION)``), so a 1.2 reader, which refuses that flag, meets it
#: only in a stream that says it is newer.
RESIDUAL_TILES_VERSION = (1, 3)
_HASH_LENGTH = 8
_NO_HASH = bytes(_HASH_LENGTH)

_PREAMBLE = struct.Struct("<8sBBHI")  # magic, major, minor, flags, header_length
_CHUNK_FRAME = struct.Struct("<4sI")  # type, payload length
_CRC = struct.Struct("<I")
#: Bytes a chunk adds to its payload: its type and length before it, its CRC after it.
CHUNK_OVERHEAD = _CHUNK_FRAME.size + _CRC.size

_TYPE_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_LAYER_NAMES = {SEMANTIC_LAYER: "semantic layer", RESIDUAL_LAYER: "residual layer",
                REFINEMENT_LAYER: "refinement layer", METADATA_CHUNK: "metadata chunk"}


def _describe(chunk_type: bytes) -> str:
    """``b"SEM0"`` -> ``"semantic layer (SEM0)"``; unknown types -> ``"chunk XXXX"``."""
    name = chunk_type.decode("latin-1")
    if chunk_type in _LAYER_NAMES:
        return f"{_LAYER_NAMES[chunk_type]} ({name})"
    return f"chunk {name}"


def _is_chunk_type(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == 4 and all(c in _TYPE_CHARS for c in value)


def _is_int(value: object) -> bool:
    # bool is an int subclass; True as a width is a bug, not a 1.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Header:
    """What a decoder needs to know before it reads any layer.

    A header is checked on construction: a value format 1.x cannot carry raises
    :class:`~semcodec.errors.InvalidInputError`. What a newer minor version may
    extend (layer types, the fields of an absent layer) is checked more
    strictly by :func:`write_container`, which writes format 1.0 and 1.1 only.

    Attributes:
        codec_model: Registered name of the residual codec (ASCII ``[a-z0-9._-]``,
            at most 64 characters); empty when the stream has no pixel layer.
        codec_checkpoint: First 8 bytes of the sha256 of the codec checkpoint;
            all zero when the stream has no pixel layer.
        semantic_model: Registered name of the semantic tower; empty when the
            stream has no semantic layer.
        calibration: First 8 bytes of the sha256 of the tower's calibration;
            all zero when the stream has no semantic layer.
        preprocessing: Id of the tower's preprocessing (e.g.
            ``"pad-square-336-clip"``); empty when the stream has no semantic layer.
        width: Image width in pixels, 1..16384.
        height: Image height in pixels, 1..16384 (and ``width * height <= 2**28``).
        layers: Chunk types of the layers present, in stream order
            (``SEMANTIC_LAYER`` first when present). A list is accepted and
            stored as a tuple.
        entropy_coder: Entropy coder id; 1 (:data:`CONSTRICTION_RANGE_CODER`)
            is the only one format 1 defines.
        gray: The image is gray (its channels were equal, or nearly): the pixel layer decodes
            to one channel. Stored as :data:`GRAY_FLAG` in the preamble (format 1.1).
    """

    codec_model: str
    codec_checkpoint: bytes
    semantic_model: str
    calibration: bytes
    preprocessing: str
    width: int
    height: int
    layers: tuple[bytes, ...]
    entropy_coder: int = CONSTRICTION_RANGE_CODER
    gray: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        _check_header(self)


def _check_name(field: str, value: object) -> None:
    if not isinstance(value, str):
        raise InvalidInputError(f"header field {field} must be a str, not {type(value).__name__}")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"header field {field} is {len(value)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if not set(value) <= _NAME_CHARS:
        raise InvalidInputError(
            f"header field {field} is {value!r}; it may only contain a-z, 0-9, '.', '_' and '-'"
        )


def _check_header(h: Header) -> None:
    """Checks what holds in every 1.x stream; raises InvalidInputError."""
    for field in ("codec_model", "semantic_model", "preprocessing"):
        _check_name(field, getattr(h, field))
    for field in ("codec_checkpoint", "calibration"):
        value = getattr(h, field)
        if not isinstance(value, bytes) or len(value) != _HASH_LENGTH:
            raise InvalidInputError(
                f"header field {field} must be {_HASH_LENGTH} bytes (a sha256 prefix), got {value!r}"
            )
    for field in ("width", "height"):
        value = getattr(h, field)
        if not _is_int(value) or not 1 <= value <= MAX_DIMENSION:
            raise InvalidInputError(f"image {field} {value!r} is outside 1..{MAX_DIMENSION}")
    if h.width * h.height > MAX_PIXELS:
        raise InvalidInputError(f"image of {h.width}x{h.height} pixels exceeds the limit of {MAX_PIXELS} pixels")
    if not isinstance(h.gray, bool):
        raise InvalidInputError(f"header field gray must be a bool, not {type(h.gray).__name__}")
    if h.entropy_coder != CONSTRICTION_RANGE_CODER or not _is_int(h.entropy_coder):
        # Format 1.x has one coder; a new coder changes how layers decode, so it needs format 2.
        raise InvalidInputError(f"entropy coder id {h.entropy_coder!r} is not defined in format 1 (known: 1)")
    if not isinstance(h.layers, tuple):
        raise InvalidInputError(
            f"header field layers must be a tuple of chunk types, not {type(h.layers).__name__}"
        )
    if len(h.layers) > MAX_LAYERS:
        raise InvalidInputError(f"the header lists {len(h.layers)} layers; the limit is {MAX_LAYERS}")
    for layer in h.layers:
        if not _is_chunk_type(layer):
            raise InvalidInputError(f"layer type {layer!r} is not 4 bytes of A-Z / 0-9")
    if len(set(h.layers)) != len(h.layers):
        raise InvalidInputError(f"the header lists a layer twice: {_format_types(h.layers)}")
    if METADATA_CHUNK in h.layers:
        # An optional chunk type of every 1.x from 1.2 on, never a layer.
        raise InvalidInputError(f"the header lists the metadata chunk (META) as a layer: {_format_types(h.layers)}")
    if SEMANTIC_LAYER in h.layers and h.layers[0] != SEMANTIC_LAYER:
        # Layer 0 first is what lets a reader decode tokens from a stream prefix.
        raise InvalidInputError(f"the semantic layer must come first, got {_format_types(h.layers)}")
    if RESIDUAL_LAYER in h.layers and (not h.codec_model or h.codec_checkpoint == _NO_HASH):
        raise InvalidInputError("a stream with a residual layer must name its codec_model and codec_checkpoint")
    if SEMANTIC_LAYER in h.layers and (
        not h.semantic_model or not h.preprocessing or h.calibration == _NO_HASH
    ):
        raise InvalidInputError(
            "a stream with a semantic layer must name its semantic_model, calibration and preprocessing"
        )


def _format_1_0_violation(h: Header, version: tuple[int, int] = FORMAT_VERSION) -> str | None:
    """Returns which rule of format 1.0 (kept by 1.1 to 1.4, with 1.4's layer 2) that a newer 1.x minor
    version may relax ``h`` breaks, if any, for a stream of ``version``.

    The writer enforces these rules; the reader enforces them on streams whose
    minor version is not newer than its own.
    """
    known = LAYER_TYPES if version >= REFINEMENT_VERSION else LAYER_TYPES[:2]
    for layer in h.layers:
        if layer not in known:
            return (f"layer type {layer.decode('latin-1')} is not defined in format {version[0]}.{version[1]} "
                    f"(known: {', '.join(t.decode() for t in known)})")
    if REFINEMENT_LAYER in h.layers and (
            RESIDUAL_LAYER not in h.layers or h.layers.index(REFINEMENT_LAYER) != h.layers.index(RESIDUAL_LAYER) + 1):
        return f"the refinement layer (REF2) must directly follow the residual layer (RES1), got {_format_types(h.layers)}"
    if RESIDUAL_LAYER not in h.layers and (h.codec_model or h.codec_checkpoint != _NO_HASH):
        return "a stream without a residual layer must have an empty codec_model and an all-zero codec_checkpoint"
    if SEMANTIC_LAYER not in h.layers and (h.semantic_model or h.preprocessing or h.calibration != _NO_HASH):
        return (
            "a stream without a semantic layer must have an empty semantic_model and preprocessing "
            "and an all-zero calibration"
        )
    return None


def _format_types(types: tuple[bytes, ...]) -> str:
    return "(" + ", ".join(t.decode("latin-1") if isinstance(t, bytes) else repr(t) for t in types) + ")"


@dataclass(frozen=True)
class Chunk:
    """One chunk of a stream: a type and its payload.

    Attributes:
        type: 4 ASCII bytes ``[A-Z0-9]``, e.g. :data:`SEMANTIC_LAYER`.
        payload: The chunk's bytes (at most 256 MiB). ``bytearray`` and
            ``memoryview`` are accepted and stored as ``bytes``.
    """

    type: bytes
    payload: bytes

    def __post_init__(self) -> None:
        if not _is_chunk_type(self.type):
            raise InvalidInputError(f"chunk type {self.type!r} is not 4 bytes of A-Z / 0-9")
        if isinstance(self.payload, (bytearray, memoryview)):
            object.__setattr__(self, "payload", bytes(self.payload))
        if not isinstance(self.payload, bytes):
            raise InvalidInputError(f"chunk payload must be bytes, not {type(self.payload).__name__}")
        if len(self.payload) > MAX_CHUNK_PAYLOAD:
            raise InvalidInputError(
                f"{_describe(self.type)} payload is {len(self.payload)} bytes; the limit is {MAX_CHUNK_PAYLOAD}"
            )

    def __repr__(self) -> str:
        # Payloads can be megabytes; a repr (e.g. in a test failure) shows the size.
        return f"Chunk(type={self.type!r}, payload=<{len(self.payload)} bytes>)"


@dataclass(frozen=True)
class Container:
    """A parsed (or to-be-written) stream: header, layer chunks and metadata.

    ``chunks`` holds the layers in stream order. It equals ``header.layers`` for
    a complete stream and is a prefix of it for one read by
    :func:`read_container_prefix`. Chunks that are not layers are either the
    metadata chunk (``META``, held in ``metadata``) or optional data of a newer
    minor version, which the reader skips and which never appears here.

    Attributes:
        header: The stream header.
        chunks: The layer chunks, in stream order (a list is stored as a tuple).
        version: ``(major, minor)`` of the stream (what :func:`write_container`
            writes). Default: the oldest version that carries the container, 1.0
            unless it uses a 1.1 flag (1.1) or has metadata (1.2); a pixel layer coded by tiles needs 1.3
            (:data:`RESIDUAL_TILES_VERSION`), which its encoder asks for.
        metadata: The payload of the ``META`` chunk (see :meth:`image_metadata`
            and :class:`~semcodec.bitstream.metadata.Metadata`), written after the
            last layer; None when the stream has none (or, for a prefix read, when
            it comes after the last layer read).
    """

    header: Header
    chunks: tuple[Chunk, ...]
    version: tuple[int, int] | None = None
    metadata: bytes | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.header, Header):
            raise InvalidInputError(f"container header must be a Header, not {type(self.header).__name__}")
        if isinstance(self.metadata, (bytearray, memoryview)):
            object.__setattr__(self, "metadata", bytes(self.metadata))
        if self.metadata is not None and not isinstance(self.metadata, bytes):
            raise InvalidInputError(f"container metadata must be bytes (a META payload), not "
                                    f"{type(self.metadata).__name__}")
        if self.version is None:
            object.__setattr__(self, "version", _oldest_version(self.header, self.metadata))
        if isinstance(self.chunks, list):
            object.__setattr__(self, "chunks", tuple(self.chunks))
        if not isinstance(self.chunks, tuple) or not all(isinstance(c, Chunk) for c in self.chunks):
            raise InvalidInputError("container chunks must be a tuple of Chunk")
        types = tuple(c.type for c in self.chunks)
        if types != self.header.layers[: len(types)]:
            raise InvalidInputError(
                f"chunks {_format_types(types)} do not follow the header's layers "
                f"{_format_types(self.header.layers)}"
            )
        v = self.version
        if not (isinstance(v, tuple) and len(v) == 2 and all(_is_int(x) and 0 <= x <= 255 for x in v)):
            raise InvalidInputError(f"container version must be (major, minor) with values 0..255, got {v!r}")

    def layer(self, type: bytes) -> bytes | None:  # noqa: A002 - mirrors Chunk.type
        """Returns the payload of one layer.

        Args:
            type: The layer's chunk type, e.g. :data:`SEMANTIC_LAYER`.

        Returns:
            The payload, or ``None`` when this container does not hold that layer
            (the stream has no such layer, or it was read only up to an earlier one).
        """
        for chunk in self.chunks:
            if chunk.type == type:
                return chunk.payload
        return None

    def image_metadata(self) -> Metadata:
        """The parsed metadata chunk (empty when the stream has none).

        Raises:
            CorruptStreamError: the payload is not a valid ``META`` payload (the reader has already
                checked the payload of a stream it read).
        """
        if self.metadata is None:
            return Metadata()
        return Metadata.from_payload(self.metadata, newer_minor=self.version > FORMAT_VERSION)


def _oldest_version(h: Header, metadata: bytes | None = None) -> tuple[int, int]:
    """The oldest format version that carries header ``h`` and ``metadata``: writing it keeps streams
    without the newer features byte-identical to what earlier releases wrote."""
    if REFINEMENT_LAYER in h.layers:
        return REFINEMENT_VERSION
    if metadata is not None:
        return (1, 2)
    return (1, 1) if h.gray else (1, 0)


# --------------------------------------------------------------------------- writer


def _encode_name(value: str) -> bytes:
    raw = value.encode("ascii")
    return bytes([len(raw)]) + raw


def _encode_header(h: Header) -> bytes:
    return b"".join(
        (
            _encode_name(h.codec_model),
            h.codec_checkpoint,
            _encode_name(h.semantic_model),
            h.calibration,
            _encode_name(h.preprocessing),
            struct.pack("<IIBB", h.width, h.height, h.entropy_coder, len(h.layers)),
            *h.layers,
        )
    )


def write_container(container: Container) -> bytes:
    """Serializes a container as a format 1.x stream (its ``version``, 1.0 to 1.3).

    Args:
        container: The header, one chunk per listed layer in the header's order,
            and the metadata payload if any (written after the last layer).

    Returns:
        The stream bytes.

    Raises:
        InvalidInputError: The chunks do not match ``header.layers``, or the
            header uses something format 1.3 does not define (an unknown layer
            type, model fields set for an absent layer), or the metadata is not
            a valid ``META`` payload, or ``container.version`` is newer than
            :data:`FORMAT_VERSION` or older than the container needs.
    """
    if not isinstance(container, Container):
        raise InvalidInputError(f"write_container expects a Container, not {type(container).__name__}")
    major, minor = container.version
    oldest = _oldest_version(container.header, container.metadata)
    if not oldest <= (major, minor) <= FORMAT_VERSION:
        # Rewriting a newer stream as 1.3 would silently drop what we do not understand; an older
        # version would drop the flags or the metadata it lacks.
        raise InvalidInputError(
            f"cannot write format version {major}.{minor}; this semcodec writes "
            f"{oldest[0]}.{oldest[1]} to {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]} for this stream"
        )
    header = container.header
    violation = _format_1_0_violation(header, (major, minor))
    if violation:
        raise InvalidInputError(violation)
    types = tuple(c.type for c in container.chunks)
    if types != header.layers:
        raise InvalidInputError(
            f"chunks {_format_types(types)} do not match the header's layers {_format_types(header.layers)}"
        )
    if container.metadata is not None:
        try:
            Metadata.from_payload(container.metadata)
        except CorruptStreamError as e:
            raise InvalidInputError(str(e).replace("corrupt metadata chunk", "invalid metadata chunk", 1)) from None
    header_bytes = _encode_header(header)
    flags = (GRAY_FLAG if header.gray else 0) | (METADATA_FLAG if container.metadata is not None else 0)
    out = bytearray(_PREAMBLE.pack(MAGIC, major, minor, flags, len(header_bytes)))
    out += header_bytes
    out += _CRC.pack(zlib.crc32(out))
    trailer = (Chunk(METADATA_CHUNK, container.metadata),) if container.metadata is not None else ()
    for chunk in container.chunks + trailer:
        frame = _CHUNK_FRAME.pack(chunk.type, len(chunk.payload))
        out += frame
        out += chunk.payload
        out += _CRC.pack(zlib.crc32(chunk.payload, zlib.crc32(frame)))
    return bytes(out)


# --------------------------------------------------------------------------- reader


def _as_view(data: object) -> memoryview:
    """A flat byte view of ``data``, without copying it when it is contiguous."""
    if isinstance(data, str):
        raise InvalidInputError("a semcodec stream is bytes, not str (open the file in binary mode, 'rb')")
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidInputError(f"a semcodec stream must be bytes-like, not {type(data).__name__}") from None
    if not view.c_contiguous:
        return memoryview(view.tobytes())  # zlib.crc32 needs contiguous memory
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


class _HeaderCursor:
    """Reads header fields from a checksummed, fully present header.

    Running past its end is corruption, not truncation: ``header_length`` is
    covered by the CRC, so the header is complete but its fields are wrong.
    """

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.view) - self.pos:
            raise CorruptStreamError(f"corrupt header: it ends inside the field {what}")
        out = bytes(self.view[self.pos : self.pos + n])
        self.pos += n
        return out

    def name(self, what: str) -> str:
        (n,) = self.take(1, what)
        if n > MAX_NAME_LENGTH:
            raise CorruptStreamError(
                f"corrupt header: field {what} is {n} bytes long; the limit is {MAX_NAME_LENGTH}"
            )
        # latin-1 never fails; Header() then rejects anything outside [a-z0-9._-].
        return self.take(n, what).decode("latin-1")


# What the magic looks like after the transfers it is designed to catch.
_MANGLED_MAGIC = (
    (MAGIC.replace(b"\r\n", b"\n"), "its line endings were converted (CR LF -> LF)"),
    (MAGIC.replace(b"\n", b"\r\n"), "its line endings were converted (LF -> CR LF)"),
    (bytes([MAGIC[0] & 0x7F]) + MAGIC[1:], "the high bit of its bytes was stripped"),
    (b"\xef\xbf\xbdSMC", "it was decoded as text and re-encoded as UTF-8"),
)


def _mangling_hint(start: bytes) -> str:
    for mangled, what in _MANGLED_MAGIC:
        if len(start) >= 5 and mangled.startswith(start[: len(mangled)]):
            return f": this looks like a semcodec stream, but {what}; copy it in binary mode"
    return ""


def _read_header(view: memoryview) -> tuple[Header, tuple[int, int], int, int]:
    """Parses and checks preamble and header; returns (header, version, flags, offset of the first chunk)."""
    size = len(view)
    if size == 0:
        raise TruncatedStreamError("the input is empty (0 bytes); a semcodec stream starts with its magic bytes")
    start = bytes(view[: len(MAGIC)])
    if start != MAGIC[: len(start)]:
        raise CorruptStreamError(f"not a semcodec stream (bad magic){_mangling_hint(start)}")
    if size < 10:
        raise TruncatedStreamError(
            f"stream is truncated: it is {size} bytes long and ends before its format version"
        )
    major, minor = view[8], view[9]
    # The version is checked before anything else: a new major version may lay
    # out everything after byte 10 differently, so nothing else can be judged.
    if major != FORMAT_VERSION[0]:
        advice = "; upgrade semcodec" if major > FORMAT_VERSION[0] else ""
        raise UnsupportedVersionError(
            f"unsupported format version {major}.{minor} (this semcodec reads {FORMAT_VERSION[0]}.x){advice}"
        )
    if size < _PREAMBLE.size:
        raise TruncatedStreamError(f"stream is truncated: it is {size} bytes long and ends inside its preamble")
    _, _, _, flags, header_length = _PREAMBLE.unpack_from(view, 0)
    if not MIN_HEADER_LENGTH <= header_length <= MAX_HEADER_LENGTH:
        raise CorruptStreamError(
            f"corrupt stream: header length {header_length} is outside {MIN_HEADER_LENGTH}..{MAX_HEADER_LENGTH}"
        )
    header_end = _PREAMBLE.size + header_length
    if size < header_end + _CRC.size:
        raise TruncatedStreamError(
            f"stream is truncated: it is {size} bytes long and ends inside its header "
            f"(which needs {header_end + _CRC.size} bytes)"
        )
    (stored_crc,) = _CRC.unpack_from(view, header_end)
    if zlib.crc32(view[:header_end]) != stored_crc:
        raise CorruptStreamError("corrupt stream: header checksum mismatch")

    # A reader knows every flag and field up to its own minor version; beyond
    # that, a newer minor version may only add things an older reader can ignore.
    newer_minor = minor > FORMAT_VERSION[1]
    if flags & ~_KNOWN_FLAGS[min(minor, FORMAT_VERSION[1])] and not newer_minor:
        raise CorruptStreamError(f"corrupt header: reserved flag bits are set (flags = 0x{flags:04x})")

    cursor = _HeaderCursor(view[_PREAMBLE.size : header_end])
    codec_model = cursor.name("codec_model")
    codec_checkpoint = cursor.take(_HASH_LENGTH, "codec_checkpoint")
    semantic_model = cursor.name("semantic_model")
    calibration = cursor.take(_HASH_LENGTH, "calibration")
    preprocessing = cursor.name("preprocessing")
    width, height, entropy_coder, layer_count = struct.unpack(
        "<IIBB", cursor.take(10, "width/height/entropy_coder/layer_count")
    )
    if layer_count > MAX_LAYERS:
        raise CorruptStreamError(f"corrupt header: it lists {layer_count} layers; the limit is {MAX_LAYERS}")
    raw_layers = cursor.take(4 * layer_count, "layers")
    extra = header_length - cursor.pos
    if extra and not newer_minor:
        raise CorruptStreamError(f"corrupt header: {extra} unexpected bytes after its last field")
    try:
        header = Header(
            codec_model=codec_model,
            codec_checkpoint=codec_checkpoint,
            semantic_model=semantic_model,
            calibration=calibration,
            preprocessing=preprocessing,
            width=width,
            height=height,
            layers=tuple(raw_layers[i : i + 4] for i in range(0, len(raw_layers), 4)),
            entropy_coder=entropy_coder,
            gray=bool(flags & GRAY_FLAG),          # a 1.0 stream with the bit set was refused above
        )
    except InvalidInputError as e:
        raise CorruptStreamError(f"corrupt header: {e}") from e
    violation = None if newer_minor else _format_1_0_violation(header, (major, minor))
    if violation:
        raise CorruptStreamError(f"corrupt header: {violation}")
    return header, (major, minor), flags, header_end + _CRC.size


def _read_chunk(view: memoryview, pos: int, layers_done: bool) -> tuple[bytes, memoryview, int]:
    """Reads and checksums the chunk at ``pos``; returns (type, payload view, end offset)."""
    remaining = len(view) - pos
    frame = bytes(view[pos : pos + min(_CHUNK_FRAME.size, remaining)])
    chunk_type = frame[:4]
    # Bytes that cannot start a chunk are garbage (corrupt); a plausible chunk
    # start that runs past the end is a stream cut short (truncated).
    if not all(c in _TYPE_CHARS for c in chunk_type):
        if layers_done:
            raise CorruptStreamError(
                f"corrupt stream: {remaining} trailing bytes at offset {pos} after the last layer are not a chunk"
            )
        raise CorruptStreamError(f"corrupt stream: invalid chunk type {chunk_type!r} at offset {pos}")
    if remaining < _CHUNK_FRAME.size:
        raise TruncatedStreamError(f"stream is truncated: it ends inside the frame of the chunk at offset {pos}")
    (length,) = struct.unpack_from("<I", frame, 4)
    name = _describe(chunk_type)
    if length > MAX_CHUNK_PAYLOAD:
        raise CorruptStreamError(
            f"corrupt stream: {name} at offset {pos} claims {length} bytes; the limit is {MAX_CHUNK_PAYLOAD}"
        )
    end = pos + _CHUNK_FRAME.size + length + _CRC.size
    if end > len(view):
        raise TruncatedStreamError(
            f"stream is truncated: {name} at offset {pos} needs {end - pos} bytes but only {remaining} remain"
        )
    payload = view[pos + _CHUNK_FRAME.size : end - _CRC.size]
    (stored_crc,) = _CRC.unpack_from(view, end - _CRC.size)
    if zlib.crc32(payload, zlib.crc32(frame)) != stored_crc:
        raise CorruptStreamError(f"corrupt stream: checksum mismatch in {name} at offset {pos}")
    return chunk_type, payload, end


def _read_chunks(
    view: memoryview, pos: int, header: Header, version: tuple[int, int], flags: int, until: bytes | None
) -> tuple[tuple[Chunk, ...], bytes | None]:
    """Reads the chunks from ``pos``; returns (the layer chunks, the metadata payload or None)."""
    layers = header.layers
    announced = bool(flags & METADATA_FLAG)  # bit 1 is reserved (refused) before 1.2
    found: list[Chunk] = []
    metadata: bytes | None = None
    count = 0
    while True:
        if until is not None and found and found[-1].type == until:
            return tuple(found), metadata  # everything after `until` is ignored, unread
        layers_done = len(found) == len(layers)
        if pos == len(view):
            if not layers_done:
                raise TruncatedStreamError(
                    f"stream is truncated: it ends before its {_describe(layers[len(found)])}"
                )
            if announced and metadata is None:
                raise TruncatedStreamError(
                    f"stream is truncated: it ends before its {_describe(METADATA_CHUNK)}, which its header announces"
                )
            return tuple(found), metadata
        if count == MAX_CHUNKS:
            raise CorruptStreamError(f"corrupt stream: more than {MAX_CHUNKS} chunks")
        chunk_type, payload, end = _read_chunk(view, pos, layers_done)
        count += 1
        if chunk_type in layers:
            if layers_done or chunk_type != layers[len(found)]:
                if any(c.type == chunk_type for c in found):
                    raise CorruptStreamError(f"corrupt stream: the {_describe(chunk_type)} appears twice")
                raise CorruptStreamError(
                    f"corrupt stream: the {_describe(chunk_type)} comes before the "
                    f"{_describe(layers[len(found)])}"
                )
            if chunk_type == SEMANTIC_LAYER and count != 1:
                raise CorruptStreamError("corrupt stream: the semantic layer (SEM0) is not the first chunk")
            found.append(Chunk(chunk_type, bytes(payload)))
        elif chunk_type in LAYER_TYPES:
            raise CorruptStreamError(
                f"corrupt stream: it contains a {_describe(chunk_type)} that its header does not list"
            )
        elif chunk_type == METADATA_CHUNK:
            if version < (1, 2):
                raise CorruptStreamError(
                    f"corrupt stream: it holds a metadata chunk (META), which format 1.2 introduced, "
                    f"but it is a {version[0]}.{version[1]} stream"
                )
            if not announced:
                raise CorruptStreamError("corrupt stream: it holds a metadata chunk (META) that its header "
                                         "flags do not announce (bit 1)")
            if metadata is not None:
                raise CorruptStreamError("corrupt stream: the metadata chunk (META) appears twice")
            Metadata.from_payload(payload, newer_minor=version > FORMAT_VERSION)  # bounded; raises if damaged
            metadata = bytes(payload)
        # Any other type is optional data of a newer minor version: skipped (its CRC was checked).
        pos = end


def read_container(data: bytes | bytearray | memoryview) -> Container:
    """Parses and fully validates a stream.

    Args:
        data: The whole stream. Payloads are copied out, so the buffer may be
            released afterwards.

    Returns:
        The container, with one chunk per layer the header lists and the
        metadata payload (checked) if the stream has a ``META`` chunk. Other
        chunks that are not layers (optional data of a newer minor version)
        are checksummed and skipped.

    Raises:
        TruncatedStreamError: The data is empty or stops before the end of the
            header, of a chunk, or before a listed layer.
        CorruptStreamError: Bad magic, checksum mismatch, a field outside its
            range, a layer missing, repeated or out of order, too many chunks,
            trailing bytes that do not form a chunk, or a damaged, repeated or
            premature (before 1.2) metadata chunk.
        UnsupportedVersionError: The stream's major version is not 1.
        InvalidInputError: ``data`` is not bytes-like.
    """
    view = _as_view(data)
    header, version, flags, pos = _read_header(view)
    chunks, metadata = _read_chunks(view, pos, header, version, flags, until=None)
    return Container(header, chunks, version, metadata)


def read_container_prefix(data: bytes | bytearray | memoryview, until: bytes) -> Container:
    """Parses a stream up to and including one layer, ignoring everything after it.

    This lets a reader decode the semantic layer from the first bytes of a
    stream (``until=SEMANTIC_LAYER``): bytes after that layer are neither read
    nor checked, so they may be missing or damaged.

    Args:
        data: The stream, or any prefix of it that contains the layer ``until``.
        until: The chunk type of the last layer to read.

    Returns:
        The container; ``chunks`` holds the layers up to and including ``until``.

    Raises:
        MissingLayerError: The header does not list ``until``.
        TruncatedStreamError: The data stops before the end of layer ``until``.
        CorruptStreamError: As in :func:`read_container`, for the bytes read.
        UnsupportedVersionError: The stream's major version is not 1.
        InvalidInputError: ``data`` is not bytes-like or ``until`` is not a chunk type.
    """
    if not _is_chunk_type(until):
        raise InvalidInputError(f"layer type {until!r} is not 4 bytes of A-Z / 0-9")
    view = _as_view(data)
    header, version, flags, pos = _read_header(view)
    if until not in header.layers:
        present = ", ".join(_describe(t) for t in header.layers) or "none"
        raise MissingLayerError(f"the stream has no {_describe(until)} (its layers: {present})")
    chunks, metadata = _read_chunks(view, pos, header, version, flags, until=until)
    return Container(header, chunks, version, metadata)
