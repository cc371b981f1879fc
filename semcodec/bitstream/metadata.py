"""The metadata chunk (``META``, format 1.2): the EXIF, ICC profile and XMP kept with the coded image.

Its payload is self-describing: a count, then one entry per kind, each a kind id, a length and the bytes::

    count (u8) | count × (kind (u8) | length (u32) | bytes)

Kinds are listed in increasing order, each at most once (so a set of metadata has exactly one
encoding); the byte layout, the caps and the content rules are specified in ``docs/bitstream.md``
(section ``META``). This module is its reference implementation; the container
(:mod:`semcodec.bitstream.container`) frames the chunk and calls :meth:`Metadata.from_payload` on it.

Example:
    >>> exif = bytes.fromhex("4d4d002a 00000008 0000 00000000")   # a TIFF header and an empty IFD
    >>> payload = Metadata(exif=exif).to_payload()
    >>> payload[:6].hex(" ")                                         # 1 entry: kind 1 (EXIF), 14 bytes
    '01 01 0e 00 00 00'
    >>> Metadata.from_payload(payload).kinds()
    {'EXIF': 14}
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields

from ..errors import CorruptStreamError, InvalidInputError

__all__ = [
    "EXIF",
    "ICC_PROFILE",
    "KIND_NAMES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_ENTRIES",
    "METADATA_CHUNK",
    "XMP",
    "Metadata",
    "icc_colour_space",
]

#: Chunk type of the metadata chunk (optional: not listed in the header's layers).
METADATA_CHUNK = b"META"
#: Entry kinds format 1.2 defines.
EXIF, ICC_PROFILE, XMP = 1, 2, 3
#: How ``semcodec info`` names each kind.
KIND_NAMES = {EXIF: "EXIF", ICC_PROFILE: "ICC", XMP: "XMP"}
#: Cap on the chunk's payload (entries and their frames). JPEG's own EXIF segment holds 64 KiB; large
#: ICC profiles (LUT-based printer profiles) and XMP with edit histories reach a few MiB.
MAX_METADATA_BYTES = 16 * 2**20
#: Cap on the entry count (three kinds are defined; a newer minor version may add some).
MAX_METADATA_ENTRIES = 16

_ENTRY = struct.Struct("<BI")  # kind, length
_TIFF_HEADERS = (b"II*\x00", b"MM\x00*")
_ICC_HEADER_BYTES = 132  # the 128-byte header and the tag count


def entry_problem(kind: int, value: bytes) -> str | None:
    """What is wrong with ``value`` as an entry of ``kind`` (a sentence fragment), or None when it is valid."""
    if kind == EXIF:
        if len(value) < 8 or value[:4] not in _TIFF_HEADERS:
            return "does not start with a TIFF header (II*\\0 or MM\\0*)"
    elif kind == ICC_PROFILE:
        if len(value) < _ICC_HEADER_BYTES or value[36:40] != b"acsp":
            return "is not an ICC profile (no 'acsp' signature at byte 36)"
        (declared,) = struct.unpack_from(">I", value, 0)
        if declared != len(value):
            return f"declares {declared} bytes in its header but holds {len(value)}"
    elif kind == XMP:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return "is not UTF-8 text"
    return None


def icc_colour_space(profile: bytes) -> str:
    """The colour space an ICC profile describes (header bytes 16–19, e.g. ``"RGB"``, ``"GRAY"``, ``"CMYK"``)."""
    return profile[16:20].decode("latin-1").strip() if len(profile) >= 20 else ""


@dataclass(frozen=True)
class Metadata:
    """The metadata of a coded image, as the ``META`` chunk carries it.

    Attributes:
        exif: EXIF as a TIFF structure (starting ``II*\\0`` or ``MM\\0*``, without JPEG's ``Exif\\0\\0``
            prefix), describing the image as coded (its orientation tag is 1), or None.
        icc_profile: An ICC profile that describes the coded pixels, or None (the pixels are sRGB).
        xmp: An XMP packet (UTF-8), or None.

    Each present value is checked on construction (:class:`~semcodec.errors.InvalidInputError`).
    """

    exif: bytes | None = None
    icc_profile: bytes | None = None
    xmp: bytes | None = None

    def __post_init__(self) -> None:
        for kind, field in zip(KIND_NAMES, fields(self)):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, (bytearray, memoryview)):
                value = bytes(value)
                object.__setattr__(self, field.name, value)
            if not isinstance(value, bytes):
                raise InvalidInputError(f"metadata {field.name} must be bytes, not {type(value).__name__}")
            if not value:
                raise InvalidInputError(f"metadata {field.name} is empty; pass None for no {KIND_NAMES[kind]}")
            problem = entry_problem(kind, value)
            if problem:
                raise InvalidInputError(f"metadata {field.name} {problem}")
        size = len(self.to_payload())
        if size > MAX_METADATA_BYTES:
            raise InvalidInputError(f"the metadata takes {size} bytes; the limit is {MAX_METADATA_BYTES}")

    def entries(self) -> list[tuple[int, bytes]]:
        """The present entries as ``(kind, bytes)``, in kind order."""
        values = (getattr(self, f.name) for f in fields(self))
        return [(kind, value) for kind, value in zip(KIND_NAMES, values) if value is not None]

    def __bool__(self) -> bool:
        return bool(self.entries())

    def kinds(self) -> dict[str, int]:
        """Bytes of each present kind, e.g. ``{"EXIF": 212, "ICC": 588}``."""
        return {KIND_NAMES[kind]: len(value) for kind, value in self.entries()}

    def image_info(self) -> dict[str, bytes]:
        """The metadata as Pillow's readers put it in ``Image.info``: ``"exif"`` (with JPEG's ``Exif\\0\\0``
        prefix, as Pillow's writers expect it), ``"icc_profile"``, ``"xmp"``; only the present ones."""
        info = {"exif": b"Exif\x00\x00" + self.exif if self.exif else None, "icc_profile": self.icc_profile,
                "xmp": self.xmp}
        return {key: value for key, value in info.items() if value is not None}

    def to_payload(self) -> bytes:
        """The ``META`` chunk payload."""
        entries = self.entries()
        return bytes([len(entries)]) + b"".join(_ENTRY.pack(kind, len(value)) + value for kind, value in entries)

    @classmethod
    def from_payload(cls, payload: bytes | memoryview, newer_minor: bool = False) -> Metadata:
        """Parse and check a ``META`` chunk payload.

        Args:
            payload: The chunk's payload.
            newer_minor: The stream's minor version is newer than this reader's: entries of kinds it
                does not know are skipped instead of refused.

        Raises:
            CorruptStreamError: a length or count beyond its cap or beyond the payload, kinds out of
                order or repeated, an unknown kind (unless ``newer_minor``), an entry whose content
                is not of its kind, or bytes after the last entry.
        """
        size = len(payload)
        what = "corrupt metadata chunk (META)"
        if size > MAX_METADATA_BYTES:
            raise CorruptStreamError(f"{what}: it is {size} bytes long; the limit is {MAX_METADATA_BYTES}")
        if size == 0:
            raise CorruptStreamError(f"{what}: it is empty (no entry count)")
        count = payload[0]
        if not 1 <= count <= MAX_METADATA_ENTRIES:
            raise CorruptStreamError(f"{what}: it announces {count} entries; 1 to {MAX_METADATA_ENTRIES} are allowed")
        values: dict[int, bytes] = {}
        pos, last = 1, 0
        for i in range(count):
            if size - pos < _ENTRY.size:
                raise CorruptStreamError(f"{what}: it ends inside the frame of entry {i + 1} of {count}")
            kind, length = _ENTRY.unpack_from(payload, pos)
            pos += _ENTRY.size
            name = KIND_NAMES.get(kind, f"kind {kind}")
            if kind <= last:
                raise CorruptStreamError(f"{what}: entry {i + 1} ({name}) repeats a kind or is out of order "
                                         "(kinds must increase)")
            last = kind
            if not 1 <= length <= size - pos:
                raise CorruptStreamError(f"{what}: the {name} entry claims {length} bytes; "
                                         f"1 to {size - pos} remain")
            value = bytes(payload[pos : pos + length])
            pos += length
            if kind not in KIND_NAMES:
                if not newer_minor:
                    raise CorruptStreamError(f"{what}: entry kind {kind} is not defined in format 1.2 "
                                             f"(known: {', '.join(f'{k} {n}' for k, n in KIND_NAMES.items())})")
                continue                                  # a newer minor's kind: skipped
            problem = entry_problem(kind, value)
            if problem:
                raise CorruptStreamError(f"{what}: the {name} entry {problem}")
            values[kind] = value
        if pos != size:
            raise CorruptStreamError(f"{what}: {size - pos} unexpected bytes after its last entry")
        return cls(exif=values.get(EXIF), icc_profile=values.get(ICC_PROFILE), xmp=values.get(XMP))
