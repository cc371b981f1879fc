"""The RES1 payload of layer 1 (the pixel layer): its bytes and the constants that define them.

The RES1 payload (all integers little-endian; docs/pixels.md specifies it whole)::

    offset  size       field
    0       2          rate      i16, rate knob q = rate / 4096 inside the model's rate range
                                 (-4 <= q <= L + 1; values >= 0 read the same as the u16 of 0.1.0)
    2       1          flags     bit 0: the entropy model is conditioned on layer 0 (SEM0);
                                 bit 1 (format 1.3): the entropy parameters are computed by tiles; other bits 0
    3       4          digest    first 4 bytes of param_digest(scale indices of y) — of the first tile when tiled
    7       4·(T − 1)  tile digests, only when tiled: those of tiles 2 … T, in tile order
    …       …          words     constriction range-coder words ('<u4'): segment z, then segment y

Shapes come from the header: the image is padded (edge replication) to
multiples of 64, ``y`` is (M, Hp/16, Wp/16) and ``z`` is (N, Hp/64, Wp/64).

Decoder-side entropy parameters are integers: ``z`` uses the integer CDF
tables frozen into the checkpoint; ``y`` is coded as ``round(y - μ)`` with a
zero-mean Gaussian whose scale is an index into :data:`SCALE_TABLE`, in raster
order (channel, row, column) — or, for a model with the checkerboard context,
in two passes of that order: the anchors (row + column even), then the others,
whose (μ, σ) depend on the decoded anchors. The indices
come from a float network (``h_s``), so the encoder stores their digest and the
decoder refuses to decode (instead of producing garbage) if it computed others.

That network runs in float64 on both sides: in float32, the rounding differences
between thread counts (or CPUs) — about 1e-7 relative — put a few of an image's
~10^5 scales on the other side of a table boundary, so a stream written with one
thread count failed to decode with another. In float64 those differences are about
1e-16 relative, and a flip is not expected in practice.

**Tiles** (format 1.3). A latent of more than :data:`PARAM_TILE` positions a side is
cut into tiles of PARAM_TILE × PARAM_TILE (the last ones smaller; :func:`param_tile_spans`),
each coded on its own after the whole ``z``: its parameters come from the ``ẑ`` (and
semantic tokens) of its area widened by :data:`PARAM_MARGIN`, its context sees its own
anchors only, and its symbols follow those of the previous tile. The decoder's memory
is then bounded by the tile, and it checks each tile's digest before it goes on. A
latent that fits one tile is coded exactly as before (no flag, no table): the streams
of images up to 1024 px a side are unchanged.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from ...bitstream.container import RESIDUAL_TILES_VERSION
from ...bitstream.entropy import ScaleTable
from ...errors import CorruptStreamError, TruncatedStreamError
from ...models.config import RATE_ONE
from ...models.residual import SCALE_MIN

#: Scale table of the latent ``y`` (part of format v1: changing it changes the bits).
SCALE_TABLE = ScaleTable.geometric(min=SCALE_MIN, max=256.0, count=64)
#: Symbol range of ``y`` (part of format v1).
Y_SYMBOL_RANGE = (-4096, 4096)
#: Spatial alignment of the transforms (g_a downsamples by 16, h_a by 4 more).
ALIGN = 64

#: Side of an entropy-parameter tile, in latent positions (1024 pixels), and the margin of ``ẑ`` around it
#: that its parameters see (8 positions = 2 of ``z``: more than the receptive field of ``h_s`` and of the
#: semantic prior). Both are part of format 1.3: changing them changes the bits.
PARAM_TILE = 64
PARAM_MARGIN = 8

_PREFIX = struct.Struct("<hB4s")
_DIGEST = 4
FLAG_SEMANTIC = 0x01
FLAG_TILED = 0x02
#: The fewest bits a symbol of ``y`` can cost: the range coder gives every symbol of the range at least one unit
#: of its 2**24 (its leaky quantization), so the likeliest has at most 1 − 8192 / 2**24.
MIN_BITS_PER_Y_SYMBOL = -math.log2(1 - (Y_SYMBOL_RANGE[1] - Y_SYMBOL_RANGE[0]) / 2**24)


def param_tile_spans(n: int) -> list[tuple[int, int]]:
    """``[start, end)`` of the entropy-parameter tiles along a latent side of ``n`` positions (multiples of
    :data:`PARAM_TILE` from 0; the last one shorter)."""
    return [(start, min(start + PARAM_TILE, n)) for start in range(0, n, PARAM_TILE)]


def param_tiles(latent_size: tuple[int, int]) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The ``(rows, columns)`` spans of every entropy-parameter tile of a latent ``(h, w)``, in coding order."""
    h, w = latent_size
    return [(rows, cols) for rows in param_tile_spans(h) for cols in param_tile_spans(w)]


@dataclass(frozen=True)
class ResidualPayload:
    """Parsed RES1 payload."""

    rate: int               # q · 4096 (signed)
    conditioned: bool       # entropy model used layer 0
    digest: bytes           # 4 bytes: of the whole latent's scale indices, or of the first tile's
    words: bytes            # range-coder words
    tile_digests: tuple[bytes, ...] = ()    # of tiles 2 … T when the parameters are computed by tiles

    @property
    def tiled(self) -> bool:
        return bool(self.tile_digests)

    @property
    def digests(self) -> tuple[bytes, ...]:
        """The digest of each tile (one for an untiled payload)."""
        return (self.digest, *self.tile_digests)

    def to_bytes(self) -> bytes:
        flags = (FLAG_SEMANTIC if self.conditioned else 0) | (FLAG_TILED if self.tiled else 0)
        return _PREFIX.pack(self.rate, flags, self.digest) + b"".join(self.tile_digests) + self.words

    @classmethod
    def from_bytes(cls, data: bytes, rate_range: tuple[float, float], tiles: int = 1,
                   tiles_allowed: bool = True) -> "ResidualPayload":
        """Parse and validate a RES1 payload of a model whose knob spans ``rate_range``.

        Args:
            tiles: the number of entropy-parameter tiles of the stream's latent (:func:`param_tiles`).
            tiles_allowed: the stream's format version defines the tiled flag (1.3 and later).
        """
        if len(data) < _PREFIX.size:
            raise TruncatedStreamError(f"the pixel layer is {len(data)} bytes, shorter than its {_PREFIX.size}-byte prefix")
        rate, flags, digest = _PREFIX.unpack_from(data)
        q_min, q_max = rate_range
        if not q_min * RATE_ONE <= rate <= q_max * RATE_ONE:
            raise CorruptStreamError(f"the pixel layer's rate knob {rate / RATE_ONE:.4f} is outside the model's "
                                     f"range {q_min:g}..{q_max:g}")
        known = FLAG_SEMANTIC | (FLAG_TILED if tiles_allowed else 0)
        if flags & ~known:
            raise CorruptStreamError(f"the pixel layer has unknown flags 0x{flags:02x}")
        tile_digests: tuple[bytes, ...] = ()
        start = _PREFIX.size
        if flags & FLAG_TILED:
            if tiles < 2:
                raise CorruptStreamError("the pixel layer says it is coded by tiles, but the image fits one tile")
            start += _DIGEST * (tiles - 1)
            if len(data) < start:
                raise TruncatedStreamError(f"the pixel layer ends inside its table of {tiles} tile digests")
            tile_digests = tuple(bytes(data[i:i + _DIGEST]) for i in range(_PREFIX.size, start, _DIGEST))
        words = data[start:]
        if len(words) % 4:
            raise CorruptStreamError("the pixel layer's entropy-coded data is not a whole number of 32-bit words")
        return cls(rate=rate, conditioned=bool(flags & FLAG_SEMANTIC), digest=digest, words=words,
                   tile_digests=tile_digests)


def container_version(payload: bytes, version: tuple[int, int]) -> tuple[int, int]:
    """The format version a stream with this RES1 payload needs, from the ``version`` its other content needs:
    :data:`~semcodec.bitstream.container.RESIDUAL_TILES_VERSION` for a payload coded by tiles."""
    tiled = len(payload) > 2 and bool(payload[2] & FLAG_TILED)
    return max(version, RESIDUAL_TILES_VERSION) if tiled else version


def residual_is_conditioned(payload: bytes) -> bool:
    """Whether a RES1 payload needs the decoded layer 0 (flag bit 0); False for a too-short payload."""
    return len(payload) >= _PREFIX.size and bool(payload[2] & FLAG_SEMANTIC)


def rate_to_fixed(q: float, rate_range: tuple[float, float]) -> int:
    """Snap a real rate knob to the payload's fixed-point grid (clamped to the model's range)."""
    q_min, q_max = rate_range
    return int(round(min(max(q, q_min), q_max) * RATE_ONE))
