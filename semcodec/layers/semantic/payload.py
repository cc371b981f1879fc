"""The bytes of a ``SEM0`` payload: its format constants, header, pass map, integer helpers and scale tables.

Everything here is part of the format (``docs/semantic.md`` §3): changing any of it
changes the payload's ``version`` byte. The coder (:mod:`.coder`) derives every
entropy-model parameter from these constants with the integer helpers below.
"""

from __future__ import annotations

import math
import struct

import numpy as np

#: Version byte of the SEM0 payload (fixed-grid towers: the grid comes from the calibration).
PAYLOAD_VERSION = 1
#: Version byte of the variable-grid form (dynamic-resolution towers, e.g. Qwen2.5-VL): the header is followed
#: by the token grid ``gh, gw`` (u16 each); everything else is version 1's, on that grid.
PAYLOAD_VERSION_VARIABLE = 2
#: Largest variable grid, ``gh · gw`` (Qwen2.5-VL-7B's ``max_pixels / 28²``).
MAX_VARIABLE_TOKENS = 16384
#: Rate indices are 0..RATE_MAX (0 codes no component: every token is its position mean).
RATE_MAX = 160
#: The gain byte is a signed shift of every model scale by ``gain / 16`` in log2.
GAIN_MIN, GAIN_MAX = -64, 63
#: Scale table: entry ``u - U_MIN`` has scale ``2**(u/16) / sqrt(12)`` (Gaussian std;
#: Laplace ``b`` is that over ``sqrt(2)``), for ``u`` in ``U_MIN..U_MAX``.
U_MIN, U_MAX = -48, 224
#: Mean grid of the entropy models (means are ``mean_q / 16`` symbols).
MEAN_GRID = 16
#: Prediction weights are ``alpha_q / 64``.
ALPHA_GRID = 64
ALPHA_MAX = 128
#: Hierarchical passes over the grid and the Chebyshev radius of the context window of each.
NUM_PASSES = 5
PASS_RADIUS = (0, 2, 2, 1, 1)
#: Largest ring radius with its own reconstruction weight for dropped tokens.
DROP_RADIUS_MAX = 3
#: Symbol range of a component: ``|s| <= 2**(e + 8) - 1`` with ``e = min(u // 16, RANGE_E_MAX)``.
RANGE_E_MAX = 11
#: Payload header: version u8, rate u8, gain i8, kept u16.
_PAYLOAD_HEADER = struct.Struct("<BBbH")
#: Version 2 only, after the header: grid rows u16, grid columns u16.
_GRID_HEADER = struct.Struct("<HH")


def pass_map(gh: int, gw: int) -> np.ndarray:
    """The pass of each grid position ``(gh, gw)`` (row-major), 0..4.

    ====  ==========================  ==========================
    pass  positions (i, j)            context (decoded neighbours)
    ====  ==========================  ==========================
    0     i ≡ 0, j ≡ 0 (mod 4)        none
    1     i ≡ 2, j ≡ 2 (mod 4)        radius 2 (the 4 pass-0 corners)
    2     i, j even, not pass 0/1     radius 2
    3     i, j odd                    radius 1
    4     i + j odd                   radius 1
    ====  ==========================  ==========================
    """
    i = np.arange(gh)[:, None]
    j = np.arange(gw)[None, :]
    p = np.full((gh, gw), 4, dtype=np.int64)
    p[(i % 2 == 1) & (j % 2 == 1)] = 3
    even = (i % 2 == 0) & (j % 2 == 0)
    p[even] = 2
    p[(i % 4 == 2) & (j % 4 == 2)] = 1
    p[(i % 4 == 0) & (j % 4 == 0)] = 0
    return p


def _box_sum(x: np.ndarray, radius: int) -> np.ndarray:
    """Sum of ``x (gh, gw, ...)`` over the (2r+1)² window around each position (zero outside).

    Integer inputs give exact integer sums; float inputs are summed in a fixed order.
    """
    if radius == 0:
        return x.copy()
    gh, gw = x.shape[:2]
    pad = [(radius, radius), (radius, radius)] + [(0, 0)] * (x.ndim - 2)
    xp = np.pad(x, pad)
    out = np.zeros_like(x)
    for di in range(2 * radius + 1):
        for dj in range(2 * radius + 1):
            out += xp[di:di + gh, dj:dj + gw]
    return out


def _round_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``round(num / den)`` for int64 arrays, den > 0, halves rounded up (exact integer arithmetic)."""
    return np.floor_divide(2 * num + den, 2 * den)


def _scale_table(family: str):
    from ...bitstream.entropy import ScaleTable

    c = 1.0 / math.sqrt(12.0) if family == "gaussian" else 1.0 / math.sqrt(24.0)
    return ScaleTable.geometric(min=2.0 ** (U_MIN / 16) * c, max=2.0 ** (U_MAX / 16) * c, count=U_MAX - U_MIN + 1)



def _comb_rank(positions: np.ndarray) -> int:
    """Colex rank of an increasing position list in the combinatorial number system."""
    return sum(math.comb(int(p), k + 1) for k, p in enumerate(positions))


def _comb_unrank(rank: int, n: int, k: int) -> np.ndarray:
    """Inverse of :func:`_comb_rank` (``0 <= rank < C(n, k)``)."""
    out = np.empty(k, dtype=np.int64)
    p = n - 1
    for j in range(k, 0, -1):
        # largest p with C(p, j) <= rank, scanning down from the previous position
        c = math.comb(p, j)
        while c > rank:
            c = c * (p - j) // p  # C(p-1, j)
            p -= 1
        out[j - 1] = p
        rank -= c
        p -= 1
    return out



def _rank_bytes(n: int, k: int) -> int:
    total = math.comb(n, k)
    return ((total - 1).bit_length() + 7) // 8
