"""The RES1 payload of layer 1 (the pixel layer): its bytes and the constants that define them.

The RES1 payload (format v1, all integers little-endian)::

    offset  size  field
    0       2     rate      i16, rate knob q = rate / 4096 inside the model's rate range
                            (-4 <= q <= L + 1; values >= 0 read the same as the u16 of 0.1.0)
    2       1     flags     bit 0: the entropy model is conditioned on layer 0 (SEM0); other bits 0
    3       4     digest    first 4 bytes of param_digest(scale indices of y)
    7       ...   words     constriction range-coder words ('<u4'): segment z, then segment y

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

That network runs in float64 on both sides (:func:`_float64_parameter_path`): in
float32, the rounding differences between thread counts (or CPUs) — about 1e-7
relative — put a few of an image's ~10^5 scales on the other side of a table
boundary, so a stream written with one thread count failed to decode with another.
In float64 those differences are about 1e-16 relative, and a flip is not expected
in practice.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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

_PREFIX = struct.Struct("<hB4s")
FLAG_SEMANTIC = 0x01


@dataclass(frozen=True)
class ResidualPayload:
    """Parsed RES1 payload."""

    rate: int               # q · 4096 (signed)
    conditioned: bool       # entropy model used layer 0
    digest: bytes           # 4 bytes
    words: bytes            # range-coder words

    def to_bytes(self) -> bytes:
        return _PREFIX.pack(self.rate, FLAG_SEMANTIC if self.conditioned else 0, self.digest) + self.words

    @classmethod
    def from_bytes(cls, data: bytes, rate_range: tuple[float, float]) -> "ResidualPayload":
        """Parse and validate a RES1 payload of a model whose knob spans ``rate_range``."""
        if len(data) < _PREFIX.size:
            raise TruncatedStreamError(f"the pixel layer is {len(data)} bytes, shorter than its {_PREFIX.size}-byte prefix")
        rate, flags, digest = _PREFIX.unpack_from(data)
        q_min, q_max = rate_range
        if not q_min * RATE_ONE <= rate <= q_max * RATE_ONE:
            raise CorruptStreamError(f"the pixel layer's rate knob {rate / RATE_ONE:.4f} is outside the model's "
                                     f"range {q_min:g}..{q_max:g}")
        if flags & ~FLAG_SEMANTIC:
            raise CorruptStreamError(f"the pixel layer has unknown flags 0x{flags:02x}")
        words = data[_PREFIX.size:]
        if len(words) % 4:
            raise CorruptStreamError("the pixel layer's entropy-coded data is not a whole number of 32-bit words")
        return cls(rate=rate, conditioned=bool(flags & FLAG_SEMANTIC), digest=digest, words=words)


def residual_is_conditioned(payload: bytes) -> bool:
    """Whether a RES1 payload needs the decoded layer 0 (flag bit 0); False for a too-short payload."""
    return len(payload) >= _PREFIX.size and bool(payload[2] & FLAG_SEMANTIC)


def rate_to_fixed(q: float, rate_range: tuple[float, float]) -> int:
    """Snap a real rate knob to the payload's fixed-point grid (clamped to the model's range)."""
    q_min, q_max = rate_range
    return int(round(min(max(q, q_min), q_max) * RATE_ONE))
