"""Tests of the format v1 container (specified in docs/bitstream.md).

The helpers ``build`` and ``frame`` below encode streams independently of
``container.py``, straight from the spec, so that the tests can produce what the
writer refuses to (newer minor versions, damaged or hostile streams) and check
the writer against a second implementation.

Golden files are regenerated with ``SEMCODEC_REGEN=1``; a change that alters
them needs a format version bump.
"""

from __future__ import annotations

import os
import random
import struct
import time
import tracemalloc
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semcodec.bitstream.container import (
    FORMAT_VERSION,
    MAGIC,
    MAX_CHUNK_PAYLOAD,
    MAX_CHUNKS,
    METADATA_CHUNK,
    REFINEMENT_LAYER,
    RESIDUAL_LAYER,
    SEMANTIC_LAYER,
    Chunk,
    Container,
    Header,
    read_container,
    read_container_prefix,
    write_container,
)
from semcodec.bitstream.metadata import MAX_METADATA_BYTES, Metadata
from semcodec.errors import (
    CorruptStreamError,
    InvalidInputError,
    MissingLayerError,
    SemcodecError,
    TruncatedStreamError,
    UnsupportedVersionError,
)

SEM, RES, META = SEMANTIC_LAYER, RESIDUAL_LAYER, METADATA_CHUNK
#: The first minor version newer than this reader's (what a future writer may produce).
NEWER = (1, FORMAT_VERSION[1] + 1)
GOLDEN = Path(__file__).parent / "golden"
CKPT = bytes.fromhex("5e3c0dec0ffee001")
CALIB = bytes.fromhex("ca11b4a7e0000042")


# --------------------------------------------------------------------------- fixtures


def both_layers() -> Container:
    header = Header(
        codec_model="semcodec-tiny",
        codec_checkpoint=CKPT,
        semantic_model="tiny",
        calibration=CALIB,
        preprocessing="pad-square-224-clip",
        width=640,
        height=480,
        layers=(SEM, RES),
    )
    return Container(header, (Chunk(SEM, b"tokens:0123"), Chunk(RES, b"pixels:456789")))


def pixels_only() -> Container:
    header = Header(
        codec_model="semcodec-tiny",
        codec_checkpoint=CKPT,
        semantic_model="",
        calibration=bytes(8),
        preprocessing="",
        width=1,
        height=16384,
        layers=(RES,),
    )
    return Container(header, (Chunk(RES, bytes(range(256)) * 3),))


def semantic_only() -> Container:
    header = Header(
        codec_model="",
        codec_checkpoint=bytes(8),
        semantic_model="clip-l14-336",
        calibration=CALIB,
        preprocessing="pad-square-336-clip",
        width=16384,
        height=16384,
        layers=(SEM,),
    )
    return Container(header, (Chunk(SEM, b""),))


def gray_pixels() -> Container:
    """Format 1.1: a gray image's pixel layer (flag bit 0)."""
    header = Header(**{**pixels_only().header.__dict__, "width": 33, "height": 17, "gray": True})
    return Container(header, (Chunk(RES, b"gray pixels"),))


#: A TIFF header (big-endian) and an empty IFD: the smallest well-formed EXIF.
EXIF = b"MM\x00*\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00"
XMP = '<x:xmpmeta xmlns:x="adobe:ns:meta/">Ünïcode</x:xmpmeta>'.encode()


def fake_icc(space: bytes = b"RGB ") -> bytes:
    """The smallest blob the META rules accept as an ICC profile: a 128-byte header (size, colour space,
    'acsp') and an empty tag table."""
    profile = bytearray(132)
    profile[0:4] = struct.pack(">I", 132)
    profile[16:20] = space
    profile[36:40] = b"acsp"
    return bytes(profile)


def with_metadata() -> Container:
    """Format 1.2: both layers and a metadata chunk with EXIF, an ICC profile and XMP."""
    container = both_layers()
    payload = meta_payload([(1, EXIF), (2, fake_icc()), (3, XMP)])
    return Container(container.header, container.chunks, metadata=payload)


def refined() -> Container:
    """Format 1.4: all three layers (layer 2 directly after layer 1) and metadata."""
    container = with_metadata()
    header = Header(**{**container.header.__dict__, "layers": (SEM, RES, REFINEMENT_LAYER)})
    return Container(header, container.chunks + (Chunk(REFINEMENT_LAYER, b"refinement"),),
                     metadata=container.metadata)


GOLDEN_CASES = {"both_layers": both_layers, "pixels_only": pixels_only, "semantic_only": semantic_only,
                "gray_pixels": gray_pixels, "with_metadata": with_metadata, "refined": refined}


# ------------------------------------------------ independent encoder (from the spec)


def str8(value: str | bytes) -> bytes:
    raw = value.encode("ascii") if isinstance(value, str) else value
    return bytes([len(raw)]) + raw


def header_bytes(h: Header, *, extra: bytes = b"", layer_count: int | None = None) -> bytes:
    return (
        str8(h.codec_model)
        + h.codec_checkpoint
        + str8(h.semantic_model)
        + h.calibration
        + str8(h.preprocessing)
        + struct.pack("<II", h.width, h.height)
        + bytes([h.entropy_coder, len(h.layers) if layer_count is None else layer_count])
        + b"".join(h.layers)
        + extra
    )


def seal_header(body: bytes, *, version=(1, 0), flags=0, header_length: int | None = None) -> bytes:
    out = MAGIC + bytes(version) + struct.pack("<HI", flags, len(body) if header_length is None else header_length)
    out += body
    return out + struct.pack("<I", zlib.crc32(out))


def frame(chunk_type: bytes, payload: bytes) -> bytes:
    head = chunk_type + struct.pack("<I", len(payload))
    return head + payload + struct.pack("<I", zlib.crc32(head + payload))


def meta_payload(entries) -> bytes:
    """A META payload per the spec: a u8 count, then (kind u8, length u32, bytes) per entry."""
    return bytes([len(entries)]) + b"".join(bytes([k]) + struct.pack("<I", len(v)) + v for k, v in entries)


def build(container: Container, *, version=None, flags=None, extra=b"", chunks=None) -> bytes:
    """Encodes ``container`` per the spec; ``chunks`` ((type, payload) pairs) overrides its chunks (and its
    metadata chunk, after the layers), ``version`` and ``flags`` override the container's (the oldest that
    carries it: 1.0 with no flags, 1.1 and bit 0 for a gray image, 1.2 with metadata)."""
    if version is None:
        version = ((1, 4) if REFINEMENT_LAYER in container.header.layers else (1, 2) if container.metadata is not None
                   else (1, 1) if container.header.gray else (1, 0))
    if flags is None:
        flags = (0x0001 if container.header.gray else 0) | (0x0002 if container.metadata is not None else 0)
    if chunks is None:
        chunks = [(c.type, c.payload) for c in container.chunks]
        if container.metadata is not None:
            chunks.append((META, container.metadata))
    out = seal_header(header_bytes(container.header, extra=extra), version=version, flags=flags)
    return out + b"".join(frame(t, p) for t, p in chunks)


def header_end(data: bytes) -> int:
    """Offset of the first chunk."""
    return 16 + struct.unpack_from("<I", data, 12)[0] + 4


def reseal(data: bytearray) -> None:
    """Recomputes every CRC whose frame still fits, so that damage reaches the field checks."""
    if len(data) < 16:
        return
    pos = 16 + struct.unpack_from("<I", data, 12)[0]
    if pos + 4 > len(data):
        return
    data[pos : pos + 4] = struct.pack("<I", zlib.crc32(data[:pos]))
    pos += 4
    while pos + 8 <= len(data):
        length = struct.unpack_from("<I", data, pos + 4)[0]
        end = pos + 8 + length
        if end + 4 > len(data):
            return
        data[end : end + 4] = struct.pack("<I", zlib.crc32(data[pos:end]))
        pos = end + 4


def multi_chunk() -> tuple[bytes, Container, int]:
    """A stream with an optional chunk between its layers; returns (data, container, end of SEM0)."""
    rng = random.Random(7)
    sem = bytes(rng.randrange(256) for _ in range(97))
    res = bytes(rng.randrange(256) for _ in range(150))
    container = Container(both_layers().header, (Chunk(SEM, sem), Chunk(RES, res)))
    data = build(container, chunks=[(SEM, sem), (b"XTRA", b"optional data"), (RES, res)])
    return data, container, header_end(data) + 12 + len(sem)


# --------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_file(name):
    container = GOLDEN_CASES[name]()
    path = GOLDEN / f"{name}.smc"
    data = write_container(container)
    if os.environ.get("SEMCODEC_REGEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    expected = path.read_bytes()
    assert data == expected, f"{path.name} changed: a format change needs a version bump"
    assert read_container(expected) == container
    assert build(container) == expected  # the spec's reading, re-implemented above


def test_golden_pixels_only_has_empty_semantic_fields():
    data = (GOLDEN / "pixels_only.smc").read_bytes()
    # str8 "semcodec-tiny", ckpt, then an empty semantic_model and an all-zero calibration.
    assert data[16:30] == b"\x0dsemcodec-tiny"
    assert data[38:48] == b"\x00" + bytes(8) + b"\x00"


# --------------------------------------------------------------------------- round trip

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=64)
HASHES = st.binary(min_size=8, max_size=8).filter(lambda b: b != bytes(8))


@st.composite
def containers(draw) -> Container:
    layers = draw(st.sampled_from([(), (SEM,), (RES,), (SEM, RES)]))
    has_sem, has_res = SEM in layers, RES in layers
    width = draw(st.integers(1, 16384))
    height = draw(st.integers(1, 16384))
    header = Header(
        codec_model=draw(NAMES) if has_res else "",
        codec_checkpoint=draw(HASHES) if has_res else bytes(8),
        semantic_model=draw(NAMES) if has_sem else "",
        calibration=draw(HASHES) if has_sem else bytes(8),
        preprocessing=draw(NAMES) if has_sem else "",
        width=width,
        height=height,
        layers=layers,
    )
    metadata = draw(st.one_of(st.none(), st.builds(
        Metadata,
        exif=st.one_of(st.none(), st.binary(max_size=200).map(lambda tail: EXIF + tail)),
        icc_profile=st.sampled_from([None, fake_icc(), fake_icc(b"GRAY")]),
        xmp=st.one_of(st.none(), st.text(min_size=1, max_size=200).map(str.encode)),
    ).filter(bool).map(Metadata.to_payload)))
    return Container(header, tuple(Chunk(t, draw(st.binary(max_size=3000))) for t in layers), metadata=metadata)


@settings(max_examples=150, deadline=None)
@given(containers())
def test_round_trip(container):
    data = write_container(container)
    assert data == build(container)
    assert read_container(data) == container
    assert read_container(memoryview(data)) == container
    assert read_container(bytearray(data)) == container
    for i, layer in enumerate(container.header.layers):
        prefix = read_container_prefix(data, layer)
        assert prefix.chunks == container.chunks[: i + 1]
        assert prefix.layer(layer) == container.layer(layer)


def test_docstring_example():
    import doctest

    import semcodec.bitstream.container as module

    assert doctest.testmod(module).failed == 0


def test_layer_accessor():
    container = both_layers()
    assert container.layer(SEM) == b"tokens:0123"
    assert container.layer(RES) == b"pixels:456789"
    assert pixels_only().layer(SEM) is None
    assert read_container_prefix(write_container(container), SEM).layer(RES) is None


# --------------------------------------------------------------------------- truncation


def test_truncation_at_every_offset():
    data, container, sem_end = multi_chunk()
    assert read_container(data) == container
    for k in range(len(data)):
        with pytest.raises(TruncatedStreamError):
            read_container(data[:k])
        if k < sem_end:
            with pytest.raises(TruncatedStreamError):
                read_container_prefix(data[:k], SEM)
        else:
            assert read_container_prefix(data[:k], SEM).chunks == container.chunks[:1]


def test_truncation_at_every_offset_of_golden_files():
    for name in GOLDEN_CASES:
        data = (GOLDEN / f"{name}.smc").read_bytes()
        for k in range(len(data)):
            with pytest.raises(TruncatedStreamError):
                read_container(data[:k])


def test_prefix_ignores_everything_after_its_layer():
    data, container, sem_end = multi_chunk()
    for tail in (b"", b"\x00", b"garbage that is not a chunk", data[sem_end:][::-1]):
        assert read_container_prefix(data[:sem_end] + tail, SEM).chunks == container.chunks[:1]
    assert read_container_prefix(data + b"junk", RES) == container


def test_prefix_of_missing_layer():
    data = write_container(pixels_only())
    with pytest.raises(MissingLayerError, match="no semantic layer"):
        read_container_prefix(data, SEM)
    with pytest.raises(InvalidInputError):
        read_container_prefix(data, b"sem0")


def test_stream_ending_before_a_listed_layer_is_truncated():
    container = both_layers()
    data = build(container, chunks=[(SEM, b"tokens:0123")])
    with pytest.raises(TruncatedStreamError, match="ends before its residual layer"):
        read_container(data)
    assert read_container_prefix(data, SEM).chunks == container.chunks[:1]


# --------------------------------------------------------------------------- magic, input


def test_empty_input():
    with pytest.raises(TruncatedStreamError, match="empty"):
        read_container(b"")


@pytest.mark.parametrize("k", range(1, 8))
def test_prefix_of_magic_is_truncated(k):
    with pytest.raises(TruncatedStreamError):
        read_container(MAGIC[:k])


@pytest.mark.parametrize(
    "data",
    [
        b"hello world, this is not a stream",
        b"\x89PNG\r\n\x1a\n" + bytes(40),
        b"\x00",
        # What a text-mode transfer (CR LF -> LF) makes of a stream.
        write_container(both_layers()).replace(b"\r\n", b"\n"),
    ],
)
def test_bad_magic(data):
    with pytest.raises(CorruptStreamError, match=r"not a semcodec stream \(bad magic\)"):
        read_container(data)


@pytest.mark.parametrize(
    "mangle, hint",
    [
        (lambda d: d.replace(b"\r\n", b"\n"), r"CR LF -> LF"),
        (lambda d: d.replace(b"\n", b"\r\n"), r"LF -> CR LF"),
        (lambda d: bytes(b & 0x7F for b in d), "high bit"),
        (lambda d: d.decode("utf-8", "replace").encode("utf-8"), "decoded as text"),
    ],
)
def test_bad_magic_names_the_text_mode_damage(mangle, hint):
    with pytest.raises(CorruptStreamError, match=hint):
        read_container(mangle(write_container(both_layers())))


def test_accepts_any_bytes_like_input():
    data = write_container(both_layers())
    strided = memoryview(bytes(x for b in data for x in (b, 0)))[::2]  # not contiguous
    for value in (bytearray(data), memoryview(data), strided):
        assert read_container(value) == both_layers()
    words = memoryview(data + bytes(-len(data) % 4)).cast("I")  # read as its bytes: zero padding trails
    with pytest.raises(CorruptStreamError, match="trailing bytes"):
        read_container(words)


def test_text_is_rejected_with_a_hint():
    with pytest.raises(InvalidInputError, match="binary mode"):
        read_container(write_container(both_layers()).decode("latin-1"))  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        read_container(12345)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- versions


def test_unknown_major_version():
    data = bytearray(write_container(both_layers()))
    data[8:10] = bytes([2, 0])
    with pytest.raises(UnsupportedVersionError) as info:
        read_container(bytes(data))
    assert str(info.value) == "unsupported format version 2.0 (this semcodec reads 1.x); upgrade semcodec"
    # Checked before anything after it: a 2.x layout is none of our business.
    with pytest.raises(UnsupportedVersionError):
        read_container(MAGIC + bytes([3, 7]))
    only_1x = r"^unsupported format version 0\.9 \(this semcodec reads 1\.x\)$"  # no advice to upgrade
    with pytest.raises(UnsupportedVersionError, match=only_1x):
        read_container(MAGIC + bytes([0, 9]) + bytes(100))


def test_newer_minor_version_extensions_are_ignored():
    container = both_layers()
    data = build(container, version=NEWER, flags=0x8004, extra=b"new fields of a newer minor")
    assert read_container(data) == Container(container.header, container.chunks, version=NEWER)
    # Bit 0 keeps its 1.1 meaning in later minors (bit 1's: test_metadata_chunk_needs_format_1_2_and_its_flag).
    gray = Header(**{**container.header.__dict__, "gray": True})
    assert read_container(build(container, version=NEWER, flags=0x8005)).header == gray
    # The same extensions in a 1.0 or 1.1 stream are damage; bit 0 is only defined from 1.1 on.
    for version, flags in (((1, 0), 0x0001), ((1, 1), 0x0002), ((1, 0), 0x8000), ((1, 2), 0x0004), ((1, 3), 0x0004)):
        with pytest.raises(CorruptStreamError, match="reserved flag"):
            read_container(build(container, version=version, flags=flags))
    for version in ((1, 0), (1, 1), (1, 2)):
        with pytest.raises(CorruptStreamError, match="unexpected bytes"):
            read_container(build(container, version=version, extra=b"\x00"))


def test_the_oldest_version_that_carries_a_stream_is_written():
    container = both_layers()
    assert container.version == (1, 0) and write_container(container)[8:12] == bytes([1, 0, 0, 0])
    gray = gray_pixels()
    assert gray.version == (1, 1) and write_container(gray)[8:12] == bytes([1, 1, 1, 0])
    # A 1.1 stream without the flag is valid and written as asked; a gray image cannot be 1.0.
    as_1_1 = Container(container.header, container.chunks, version=(1, 1))
    assert read_container(write_container(as_1_1)) == as_1_1
    with pytest.raises(InvalidInputError, match="writes 1.1 to 1.4 for this stream"):
        write_container(Container(gray.header, gray.chunks, version=(1, 0)))
    # Metadata needs 1.2; a gray image with metadata is 1.2 with bit 0 set.
    meta = with_metadata()
    assert meta.version == (1, 2) and write_container(meta)[8:12] == bytes([1, 2, 2, 0])
    gray_meta = Container(gray.header, gray.chunks, metadata=meta.metadata)
    assert write_container(gray_meta)[8:12] == bytes([1, 2, 3, 0])
    assert read_container(write_container(gray_meta)) == gray_meta
    with pytest.raises(InvalidInputError, match="writes 1.2 to 1.4 for this stream"):
        write_container(Container(meta.header, meta.chunks, version=(1, 1), metadata=meta.metadata))


def test_newer_minor_version_may_add_layer_types():
    header = Header(**{**both_layers().header.__dict__, "layers": (SEM, RES, b"SEM1")})
    chunks = [(SEM, b"a"), (RES, b"b"), (b"SEM1", b"c")]
    container = read_container(build(Container(header, ()), version=NEWER, chunks=chunks))
    assert container.layer(b"SEM1") == b"c" and container.version == NEWER
    prefix = build(Container(header, ()), version=NEWER, chunks=chunks[:2])
    assert read_container_prefix(prefix, RES).chunks[1].payload == b"b"
    with pytest.raises(CorruptStreamError, match="not defined in format 1.0"):
        read_container(build(Container(header, ()), chunks=chunks))
    for version in ((1, 1), (1, 2), (1, 3), (1, 4)):
        with pytest.raises(CorruptStreamError, match=rf"not defined in format 1\.{version[1]}"):
            read_container(build(Container(header, ()), version=version, chunks=chunks))
    with pytest.raises(InvalidInputError, match=f"cannot write format version 1.{NEWER[1]}"):
        write_container(container)


def test_a_refinement_layer_needs_format_1_4_and_directly_follows_the_pixel_layer():
    REF = REFINEMENT_LAYER
    header = Header(**{**both_layers().header.__dict__, "layers": (SEM, RES, REF)})
    container = Container(header, (Chunk(SEM, b"a"), Chunk(RES, b"b"), Chunk(REF, b"c")))
    assert container.version == (1, 4)
    data = write_container(container)
    assert data[8:10] == bytes([1, 4]) and read_container(data) == container
    assert read_container_prefix(data, RES).chunks == container.chunks[:2]
    chunks = [(SEM, b"a"), (RES, b"b"), (REF, b"c")]
    with pytest.raises(CorruptStreamError, match="REF2 is not defined in format 1.3"):
        read_container(build(Container(header, ()), version=(1, 3), chunks=chunks))
    with pytest.raises(InvalidInputError, match="writes 1.4 to 1.4"):
        write_container(Container(header, container.chunks, version=(1, 3)))
    alone = Header(**{**both_layers().header.__dict__, "layers": (SEM, REF)})
    with pytest.raises(InvalidInputError, match="must directly follow the residual layer"):
        write_container(Container(alone, (Chunk(SEM, b"a"), Chunk(REF, b"c"))))
    with pytest.raises(CorruptStreamError, match="must directly follow the residual layer"):
        read_container(build(Container(alone, ()), version=(1, 4), chunks=[(SEM, b"a"), (REF, b"c")]))


# --------------------------------------------------------------------------- metadata chunk (format 1.2)


def test_metadata_chunk_follows_the_layers():
    container = with_metadata()
    data, plain = write_container(container), write_container(both_layers())
    # The 1.0 stream but for the version, the flags (bit 1) and the header CRC, then one META chunk.
    end = header_end(plain)
    assert data[8:12] == bytes([1, 2, 2, 0])
    assert data[:8] == plain[:8] and data[12 : end - 4] == plain[12 : end - 4] and data[end : len(plain)] == plain[end:]
    assert data[len(plain) :] == frame(META, container.metadata)
    meta = read_container(data).image_metadata()
    assert (meta.exif, meta.icc_profile, meta.xmp) == (EXIF, fake_icc(), XMP)
    assert meta.kinds() == {"EXIF": len(EXIF), "ICC": 132, "XMP": len(XMP)}
    assert Metadata(exif=EXIF, icc_profile=fake_icc(), xmp=XMP).to_payload() == container.metadata
    assert read_container(plain).metadata is None and not read_container(plain).image_metadata()


def test_metadata_chunk_between_layers_and_prefix_reads():
    container = with_metadata()
    sem, res = container.chunks
    data = build(container, chunks=[(SEM, sem.payload), (META, container.metadata), (RES, res.payload)])
    assert read_container(data) == container
    assert read_container_prefix(data, SEM).metadata is None                # SEM0 alone is read
    assert read_container_prefix(data, RES).metadata == container.metadata
    assert read_container_prefix(write_container(container), RES).metadata is None    # after RES1: unread


def test_metadata_chunk_needs_format_1_2_and_its_flag():
    for version in ((1, 0), (1, 1)):
        with pytest.raises(CorruptStreamError, match=rf"format 1.2 introduced, but it is a 1.{version[1]} stream"):
            read_container(build(with_metadata(), version=version, flags=0))
        with pytest.raises(CorruptStreamError, match="reserved flag"):                 # bit 1 before 1.2
            read_container(build(both_layers(), version=version, flags=0x0002))
    for version in ((1, 2), NEWER):
        with pytest.raises(CorruptStreamError, match="do not announce"):
            read_container(build(with_metadata(), version=version, flags=0))
        # The flag without the chunk: the stream was cut before it (and in a newer minor, bit 1 keeps its meaning).
        with pytest.raises(TruncatedStreamError, match="ends before its metadata chunk"):
            read_container(build(both_layers(), version=version, flags=0x0002))
    assert read_container(build(with_metadata(), version=NEWER)).metadata == with_metadata().metadata


def test_metadata_chunk_twice_is_corrupt():
    container = with_metadata()
    sem, res = container.chunks
    twice = [(SEM, sem.payload), (META, container.metadata), (RES, res.payload), (META, container.metadata)]
    with pytest.raises(CorruptStreamError, match=r"metadata chunk \(META\) appears twice"):
        read_container(build(container, chunks=twice))


def test_metadata_chunk_is_not_a_layer():
    with pytest.raises(InvalidInputError, match="lists the metadata chunk"):
        Header(**{**both_layers().header.__dict__, "layers": (SEM, RES, META)})
    data = bytearray(corrupt_header(layers=(SEM, RES, META)))
    data[9] = NEWER[1]                                         # reserved in every later minor too
    reseal(data)
    with pytest.raises(CorruptStreamError, match="lists the metadata chunk"):
        read_container(bytes(data))


def meta_stream(payload: bytes, version=(1, 2)) -> bytes:
    """``both_layers()`` with a META chunk of ``payload`` after its layers (flag bit 1 set), built per the spec."""
    container = both_layers()
    return build(container, version=version, flags=0x0002,
                 chunks=[*((c.type, c.payload) for c in container.chunks), (META, payload)])


DAMAGED_METADATA = [
    (b"", "it is empty"),
    (b"\x00", "announces 0 entries"),
    (bytes([17]) + meta_payload([(1, EXIF)])[1:], "announces 17 entries"),
    (bytes([2]) + meta_payload([(1, EXIF)])[1:], "ends inside the frame of entry 2 of 2"),
    (meta_payload([(2, fake_icc()), (1, EXIF)]), r"entry 2 \(EXIF\) repeats a kind or is out of order"),
    (meta_payload([(1, EXIF), (1, EXIF)]), "repeats a kind"),
    (meta_payload([(4, b"x")]), "entry kind 4 is not defined in format 1.2"),
    (meta_payload([(1, b"")]), "the EXIF entry claims 0 bytes"),
    (bytes([1, 3]) + struct.pack("<I", 0xFFFFFFFF) + XMP, "the XMP entry claims 4294967295 bytes"),
    (meta_payload([(1, EXIF)]) + b"\x00", "1 unexpected bytes after its last entry"),
    (meta_payload([(1, b"Exif\x00\x00" + EXIF)]), "EXIF entry does not start with a TIFF header"),
    (meta_payload([(2, b"x" * 200)]), "ICC entry is not an ICC profile"),
    (meta_payload([(2, fake_icc() + bytes(4))]), "ICC entry declares 132 bytes in its header but holds 136"),
    (meta_payload([(3, b"\xff\xfe<\x00x\x00")]), "XMP entry is not UTF-8 text"),
]


@pytest.mark.parametrize("payload, message", DAMAGED_METADATA)
def test_damaged_metadata_payload(payload, message):
    container = both_layers()
    with pytest.raises(CorruptStreamError, match=r"^corrupt metadata chunk \(META\): .*" + message):
        read_container(meta_stream(payload))
    with pytest.raises(InvalidInputError, match=r"^invalid metadata chunk \(META\): .*" + message):
        write_container(Container(container.header, container.chunks, metadata=payload))


def test_metadata_payload_cap():
    payload = meta_payload([(3, b" " * (MAX_METADATA_BYTES - 6))])
    assert read_container(meta_stream(payload)).image_metadata().kinds() == {"XMP": MAX_METADATA_BYTES - 6}
    with pytest.raises(CorruptStreamError, match=f"is {MAX_METADATA_BYTES + 1} bytes long; the limit is"):
        read_container(meta_stream(payload + b" "))
    with pytest.raises(InvalidInputError, match=f"the limit is {MAX_METADATA_BYTES}"):
        Metadata(xmp=b" " * MAX_METADATA_BYTES)


def test_newer_minor_metadata_kinds_are_skipped():
    data = meta_stream(meta_payload([(1, EXIF), (9, b"future")]), version=NEWER)
    assert read_container(data).image_metadata() == Metadata(exif=EXIF)
    # The order rule and the known kinds' content rules hold in every minor version.
    for entries in ([(9, b"future"), (1, EXIF)], [(1, b"not exif"), (9, b"future")]):
        with pytest.raises(CorruptStreamError, match="corrupt metadata chunk"):
            read_container(meta_stream(meta_payload(entries), version=NEWER))


@pytest.mark.parametrize("fields", [{"exif": b"II*"}, {"exif": b""}, {"xmp": "text"}, {"icc_profile": b"x" * 132}])
def test_metadata_values_are_checked(fields):
    with pytest.raises(InvalidInputError):
        Metadata(**fields)


def test_container_metadata_must_be_bytes():
    container = both_layers()
    with pytest.raises(InvalidInputError, match="must be bytes"):
        Container(container.header, container.chunks, metadata=Metadata(exif=EXIF))  # type: ignore[arg-type]
    assert Container(container.header, container.chunks, metadata=bytearray(b"x")).metadata == b"x"


# --------------------------------------------------------------------------- chunk rules


def test_optional_chunks_are_skipped():
    container = both_layers()
    sem, res = container.chunks
    for chunks in (
        [(SEM, sem.payload), (b"XTRA", b"1"), (RES, res.payload)],
        [(SEM, sem.payload), (RES, res.payload), (b"ZZZZ", b""), (b"A1B2", b"x" * 100)],
    ):
        assert read_container(build(container, chunks=chunks)) == container
    pixels = pixels_only()
    assert read_container(build(pixels, chunks=[(b"XTRA", b"1"), (RES, pixels.chunks[0].payload)])) == pixels


def test_optional_chunk_crc_is_checked():
    container = both_layers()
    data = bytearray(build(container, chunks=[(SEM, b"tokens:0123"), (b"XTRA", b"abc"), (RES, b"pixels:456789")]))
    data[data.index(b"XTRA") + 9] ^= 0x01
    with pytest.raises(CorruptStreamError, match="checksum mismatch in chunk XTRA"):
        read_container(bytes(data))


def test_semantic_layer_must_be_the_first_chunk():
    container = both_layers()
    data = build(container, chunks=[(b"XTRA", b""), (SEM, b"tokens:0123"), (RES, b"pixels:456789")])
    with pytest.raises(CorruptStreamError, match="not the first chunk"):
        read_container(data)


@pytest.mark.parametrize(
    "chunks, message",
    [
        ([(SEM, b"a"), (SEM, b"a"), (RES, b"b")], "semantic layer .SEM0. appears twice"),
        ([(SEM, b"a"), (RES, b"b"), (RES, b"b")], "residual layer .RES1. appears twice"),
        ([(RES, b"b"), (SEM, b"a")], "comes before"),
        ([(SEM, b"a"), (RES, b"b"), (SEM, b"a")], "appears twice"),
    ],
)
def test_duplicated_or_misordered_layers(chunks, message):
    with pytest.raises(CorruptStreamError, match=message):
        read_container(build(both_layers(), chunks=chunks))


def test_unlisted_known_layer_is_corrupt():
    pixels = pixels_only()
    data = build(pixels, chunks=[(RES, b"x"), (SEM, b"tokens")])
    with pytest.raises(CorruptStreamError, match="does not list"):
        read_container(data)


def test_chunk_count_cap():
    container = both_layers()
    fillers = [(b"XTRA", b"")] * (MAX_CHUNKS - 2)
    ok = build(container, chunks=[(SEM, b"tokens:0123"), *fillers, (RES, b"pixels:456789")])
    assert read_container(ok) == container
    too_many = build(container, chunks=[(SEM, b"tokens:0123"), *fillers, (b"XTRA", b""), (RES, b"pixels:456789")])
    with pytest.raises(CorruptStreamError, match="more than 64 chunks"):
        read_container(too_many)


@pytest.mark.parametrize(
    "tail, error",
    [
        (b"\x00", CorruptStreamError),
        (b"\n", CorruptStreamError),
        (b"junk after the stream", CorruptStreamError),
        (bytes(100), CorruptStreamError),
        (b"XT", TruncatedStreamError),  # an optional chunk, cut short
        (b"XTRA\x05\x00", TruncatedStreamError),
        (frame(b"XTRA", b"some optional data")[:-1], TruncatedStreamError),
        (b"XTRA\xff\xff\xff\xff", CorruptStreamError),  # over the chunk cap: not a real chunk
    ],
)
def test_trailing_bytes(tail, error):
    with pytest.raises(error):
        read_container(write_container(both_layers()) + tail)


def test_checksum_mismatches():
    data = write_container(both_layers())
    end = header_end(data)
    for offset, message in [
        (9, "header checksum"),  # version minor, covered by the header CRC
        (20, "header checksum"),
        (end - 1, "header checksum"),  # the CRC itself
        (end + 8, "checksum mismatch in semantic layer"),
        (len(data) - 5, "checksum mismatch in residual layer"),
        (len(data) - 1, "checksum mismatch in residual layer"),
    ]:
        damaged = bytearray(data)
        damaged[offset] ^= 0x40
        with pytest.raises(CorruptStreamError, match=message):
            read_container(bytes(damaged))


# --------------------------------------------------------------------------- hostile fields


def test_length_fields_are_checked_before_use():
    data = write_container(both_layers())
    end = header_end(data)
    cases = []
    for value in (0xFFFFFFFF, 2**31, MAX_CHUNK_PAYLOAD + 1, MAX_CHUNK_PAYLOAD, 10**6):
        forged = bytearray(data)
        forged[end + 4 : end + 8] = struct.pack("<I", value)
        cases.append(bytes(forged))
    for value in (0xFFFFFFFF, 4097, 15, 0):
        forged = bytearray(data)
        forged[12:16] = struct.pack("<I", value)
        cases.append(bytes(forged))
    for data in cases:
        tracemalloc.start()
        started = time.perf_counter()
        with pytest.raises((CorruptStreamError, TruncatedStreamError)):
            read_container(data)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert elapsed < 0.1
        assert peak < 64 * 1024, f"parse allocated {peak} bytes"


def corrupt_header(**changes) -> bytes:
    """A 1.0 stream whose header holds ``changes`` (with a valid header CRC)."""
    container = both_layers()
    fields = {**container.header.__dict__, **changes}
    body = (
        str8(fields["codec_model"])
        + fields["codec_checkpoint"]
        + str8(fields["semantic_model"])
        + fields["calibration"]
        + str8(fields["preprocessing"])
        + struct.pack("<II", fields["width"], fields["height"])
        + bytes([fields["entropy_coder"], fields.get("layer_count", len(fields["layers"]))])
        + b"".join(fields["layers"])
    )
    return seal_header(body) + b"".join(frame(c.type, c.payload) for c in container.chunks)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"width": 0}, "width 0"),
        ({"height": 16385}, "height 16385"),
        ({"codec_model": b"Semcodec"}, "codec_model"),
        ({"semantic_model": b"tiny\x00"}, "semantic_model"),
        ({"preprocessing": b"\xff" * 65}, "65 bytes long"),
        ({"codec_model": b""}, "must name its codec_model"),
        ({"calibration": bytes(8)}, "must name its semantic_model"),
        ({"entropy_coder": 0}, "entropy coder id 0"),
        ({"entropy_coder": 7}, "entropy coder id 7 is not defined in format 1 "),
        ({"layer_count": 9}, "9 layers"),
        ({"layer_count": 3}, "ends inside the field layers"),
        ({"layers": (RES, SEM)}, "must come first"),
        ({"layers": (SEM, b"S\x00M1")}, "not 4 bytes"),
        ({"layers": (SEM, SEM)}, "twice"),
    ],
)
def test_corrupt_header_fields(changes, message):
    with pytest.raises(CorruptStreamError, match=message):
        read_container(corrupt_header(**changes))


def test_header_shorter_than_its_fields():
    body = header_bytes(both_layers().header)
    with pytest.raises(CorruptStreamError, match="ends inside the field"):
        read_container(seal_header(body[:20]))


# --------------------------------------------------------------------------- fuzzing


def mutate(rng: random.Random, data: bytearray) -> None:
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(data) + 1)
        op = rng.randrange(5)
        if op == 0 and pos < len(data):
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 2:
            del data[pos : pos + rng.randint(1, 8)]
        elif op == 3:
            data[pos : pos + 1] = bytes([rng.randrange(256)])
        else:  # a hostile u32, where a length field might be
            value = rng.choice([0, 0xFFFFFFFF, 0x7FFFFFFF, MAX_CHUNK_PAYLOAD, 4096, 4097, 16385])
            data[pos : pos + 4] = struct.pack("<I", value)
        if not data:
            data += b"\x00"


def test_random_mutations_raise_only_semcodec_errors():
    rng = random.Random(20261125)
    bases = [multi_chunk()[0]] + [write_container(make()) for make in GOLDEN_CASES.values()]
    outcomes: Counter[str] = Counter()
    slowest = 0.0
    for i in range(3000):
        data = bytearray(rng.choice(bases))
        mutate(rng, data)
        if i % 2:  # half of them get valid CRCs, so the damage reaches the field checks
            reseal(data)
        started = time.perf_counter()
        try:
            container = read_container(bytes(data))
        except SemcodecError as e:
            outcomes[type(e).__name__] += 1
            assert str(e)
        else:
            outcomes["valid"] += 1
            if container.version <= FORMAT_VERSION:
                assert read_container(write_container(container)) == container
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 1.0
    # Make sure the fuzzer exercises more than the CRC check.
    assert outcomes["CorruptStreamError"] and outcomes["TruncatedStreamError"] and outcomes["valid"]


# --------------------------------------------------------------------------- writer side


BAD_HEADER_FIELDS = [
    {"codec_model": "Semcodec"},
    {"codec_model": "a" * 65},
    {"codec_model": b"semcodec"},
    {"codec_model": "semcodec/tiny"},
    {"codec_checkpoint": bytes(7)},
    {"codec_checkpoint": "5e3c0dec0ffee001"},
    {"width": 0},
    {"width": 16385},
    {"height": True},
    {"height": 3.0},
    {"gray": 1},
    {"layers": (SEM, SEM)},
    {"layers": (RES, SEM)},
    {"layers": (b"sem0",)},
    {"layers": "SEM0"},
    {"layers": tuple(f"L{i:03d}".encode() for i in range(9))},
    {"codec_model": ""},
    {"codec_checkpoint": bytes(8)},
    {"calibration": bytes(8)},
    {"preprocessing": ""},
    {"entropy_coder": 0},
    {"entropy_coder": 2},
    {"entropy_coder": 256},
]


@pytest.mark.parametrize("changes", BAD_HEADER_FIELDS)
def test_header_rejects_bad_fields(changes):
    with pytest.raises(InvalidInputError):
        Header(**{**both_layers().header.__dict__, **changes})


@pytest.mark.parametrize(
    "changes",
    [
        {"layers": (SEM, RES, b"NEW1")},
        {"layers": (SEM,)},  # codec fields set without a residual layer
        {"layers": (RES,)},  # semantic fields set without a semantic layer
    ],
)
def test_writer_writes_format_1_0_only(changes):
    header = Header(**{**both_layers().header.__dict__, **changes})
    chunks = tuple(Chunk(t, b"") for t in header.layers)
    with pytest.raises(InvalidInputError):
        write_container(Container(header, chunks))


def test_writer_requires_one_chunk_per_layer():
    container = both_layers()
    with pytest.raises(InvalidInputError, match="do not match"):
        write_container(Container(container.header, container.chunks[:1]))
    with pytest.raises(InvalidInputError, match="do not follow"):
        Container(container.header, container.chunks[::-1])
    with pytest.raises(InvalidInputError):
        Chunk(b"sem0", b"")
    with pytest.raises(InvalidInputError):
        Chunk(SEM, "text")  # type: ignore[arg-type]
    assert Chunk(SEM, bytearray(b"ab")).payload == b"ab"
    assert "3 bytes" in repr(Chunk(SEM, b"abc"))


def test_header_layers_list_is_stored_as_tuple():
    header = Header(**{**both_layers().header.__dict__, "layers": [SEM, RES]})
    assert header.layers == (SEM, RES)
    hash(header)
