"""The bytes of ``REF2`` (layer 2): prefix, per-group model parameters, range-coder words.

Specified in docs/refinement.md §3. Everything here is integer: the decoder derives every
entropy-model parameter from these integers and the decoded pixel layer, with integer arithmetic only.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from semcodec.bitstream.entropy import ScaleTable
from semcodec.errors import CorruptStreamError, InvalidInputError, TruncatedStreamError, UnsupportedVersionError

#: Payload version this module reads and writes.
PAYLOAD_VERSION = 1
#: The step is coded in sixteenths of a level: ``step16 = 16`` is step 1 (lossless).
STEP_ONE = 16
#: Coarsest step (in sixteenths): 64 levels.
MAX_STEP16 = 64 * STEP_ONE
#: Fractional bits of the prediction weights (int16: |w| < 8).
WEIGHT_BITS = 12
#: Grid of the coded means: ``mean = mean_q / MEAN_GRID``.
MEAN_GRID = 16
#: Activity and gradient classes: ``ACTIVITY_CLASSES · GRADIENT_CLASSES`` scale buckets per group.
ACTIVITY_CLASSES = 6
GRADIENT_CLASSES = 4
BUCKETS = ACTIVITY_CLASSES * GRADIENT_CLASSES
#: Scale index of a bucket no symbol falls in.
UNUSED_BUCKET = 255
#: Laplace scales ``b`` of the symbols (the pixel layer's table: 64 steps from 0.11 to 256).
SCALE_TABLE = ScaleTable.geometric()
#: Group flag bit 0: the group's symbols have predicted means (its weights follow).
FLAG_PREDICTED = 0x01

_PREFIX = struct.Struct("<BBHII")  # version, channels, step16, crc32 of the pixel layer, crc32 of the result


def symbol_bound(step16: int) -> int:
    """Largest ``|q|`` of a residual symbol: a residual of ±255 levels quantized with step ``step16 / 16``."""
    return -(-255 * STEP_ONE // step16)


@dataclass(frozen=True)
class GroupModel:
    """The coded model of one group (one phase of one channel).

    Attributes:
        weights: int16 prediction weights (``WEIGHT_BITS`` fractional bits), one per feature; None when the
            group's means are 0.
        scale_index: uint8 per bucket: index into :data:`SCALE_TABLE`, or :data:`UNUSED_BUCKET`.
    """

    weights: np.ndarray | None
    scale_index: np.ndarray

    def to_bytes(self) -> bytes:
        flags = FLAG_PREDICTED if self.weights is not None else 0
        w = self.weights.astype("<i2").tobytes() if self.weights is not None else b""
        return bytes([flags]) + w + self.scale_index.astype(np.uint8).tobytes()


@dataclass(frozen=True)
class RefinementPayload:
    """A parsed ``REF2`` payload.

    Attributes:
        channels: 1 (gray) or 3 (RGB): the channels of the refined image.
        step16: quantization step in sixteenths of a level (16: lossless).
        base_crc: CRC-32 of the pixel layer it refines, as ``(H, W, channels)`` uint8 bytes (gray repeated).
        pixels_crc: CRC-32 of the refined pixels (row-major ``(H, W, channels)`` uint8 bytes).
        groups: one :class:`GroupModel` per group, in coding order.
        words: the range coder's words (bytes, a multiple of 4).
    """

    channels: int
    step16: int
    base_crc: int
    pixels_crc: int
    groups: tuple[GroupModel, ...]
    words: bytes

    @property
    def lossless(self) -> bool:
        return self.step16 == STEP_ONE

    def to_bytes(self) -> bytes:
        head = _PREFIX.pack(PAYLOAD_VERSION, self.channels, self.step16, self.base_crc, self.pixels_crc)
        return head + b"".join(g.to_bytes() for g in self.groups) + self.words

    @classmethod
    def from_bytes(cls, data: bytes, feature_counts) -> "RefinementPayload":
        """Parse and check a payload; ``feature_counts(channels)`` gives the number of weights of each group.

        Raises:
            UnsupportedVersionError: a payload version this semcodec does not know.
            TruncatedStreamError, CorruptStreamError: the payload is cut short or has impossible values.
        """
        data = bytes(data)
        _version, channels, step16, base_crc, crc = _read_prefix(data)
        pos = _PREFIX.size

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(data):
                raise TruncatedStreamError("the refinement layer is truncated inside its model parameters")
            pos += n
            return data[pos - n:pos]

        groups = []
        for count in feature_counts(channels):
            flags = take(1)[0]
            if flags & ~FLAG_PREDICTED:
                raise CorruptStreamError(f"corrupt refinement layer: unknown group flags 0x{flags:02x}")
            weights = np.frombuffer(take(2 * count), dtype="<i2").astype(np.int64) if flags & FLAG_PREDICTED else None
            scale_index = np.frombuffer(take(BUCKETS), dtype=np.uint8).copy()
            if np.any((scale_index >= len(SCALE_TABLE)) & (scale_index != UNUSED_BUCKET)):
                raise CorruptStreamError("corrupt refinement layer: a scale index outside the table")
            groups.append(GroupModel(weights, scale_index))
        words = data[pos:]
        if len(words) % 4:
            raise CorruptStreamError(f"corrupt refinement layer: {len(words)} bytes of coded data, not a multiple of 4")
        return cls(channels, step16, base_crc, crc, tuple(groups), words)


def _read_prefix(data: bytes) -> tuple[int, int, int, int, int]:
    """``(version, channels, step16, base_crc, pixels_crc)`` of a payload's prefix, checked.

    Raises:
        UnsupportedVersionError: a payload version this semcodec does not know.
        TruncatedStreamError, CorruptStreamError: the prefix is cut short or has impossible values.
    """
    if len(data) < _PREFIX.size:
        raise TruncatedStreamError(f"the refinement layer is truncated: {len(data)} bytes, its prefix alone "
                                   f"takes {_PREFIX.size}")
    version, channels, step16, base_crc, crc = _PREFIX.unpack_from(data)
    if version != PAYLOAD_VERSION:
        raise UnsupportedVersionError(f"refinement layer version {version} is not supported (this semcodec "
                                      f"reads version {PAYLOAD_VERSION}); upgrade semcodec")
    if channels not in (1, 3):
        raise CorruptStreamError(f"corrupt refinement layer: {channels} channels (1 or 3)")
    if not STEP_ONE <= step16 <= MAX_STEP16:
        raise CorruptStreamError(f"corrupt refinement layer: step {step16}/16 is outside 1..{MAX_STEP16 // STEP_ONE}")
    return version, channels, step16, base_crc, crc


def refinement_channels(data: bytes) -> int:
    """The channels (1 or 3) a ``REF2`` payload refines to, from its checked prefix (the rest is not read).

    Raises:
        UnsupportedVersionError, TruncatedStreamError, CorruptStreamError: as :func:`_read_prefix`.
    """
    return _read_prefix(bytes(data[:_PREFIX.size]))[1]


def pixels_crc(pixels: np.ndarray) -> int:
    """CRC-32 (zlib) of uint8 pixels in row-major order."""
    if pixels.dtype != np.uint8:
        raise InvalidInputError("pixels must be uint8")
    return zlib.crc32(np.ascontiguousarray(pixels).data) & 0xFFFFFFFF
