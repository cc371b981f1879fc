"""Rate control: find the rate knob whose stream hits a byte target.

The codec's rate knob ``q`` is continuous (gain interpolation) and the stream size
grows with it, roughly exponentially. :func:`search_rate` runs a safeguarded secant
search on ``log(bytes)`` over ``q``: each trial is a real, deterministic encode
(the caller reuses the analysis transform between trials, so a trial costs only
the hyperprior and the range coder). Until the target is bracketed it takes
expanding steps from the model's size curve; then it runs false position with the
Illinois modification, which keeps the bracket shrinking even where the size curve
is flat on one side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .errors import RateControlError, TargetAboveReachError

#: Relative tolerance of a size target (±2 %).
DEFAULT_TOLERANCE = 0.02
#: d log(bytes) / dq used for the first step before two trials are known.
PRIOR_SLOPE = 0.45


@dataclass
class RateSearchResult:
    """Outcome of a rate search: the chosen knob, its stream and every trial made."""

    q: float
    data: bytes
    trials: list[tuple[float, int]] = field(default_factory=list)   # (q, bytes) in evaluation order


@dataclass(frozen=True)
class RateCurve:
    """A model's typical size curve: ``(q, mean bits per pixel)`` at integer rate knobs, ascending.

    Measured when a checkpoint is frozen (``semcodec train --export-to``) and stored in its
    metadata; it gives rate control a first guess and a slope, so that most targets are
    met within two or three trial encodes.
    """

    points: tuple[tuple[float, float], ...]

    @classmethod
    def from_metadata(cls, value: list) -> "RateCurve":
        """Parse the stored curve: ``[[q, bpp], …]`` (or the 0.1.0 form ``[bpp at q=0, 1, …]``)."""
        if value and not isinstance(value[0], (list, tuple)):
            value = list(enumerate(value))
        return cls(tuple((float(q), float(b)) for q, b in value))

    def guess(self, bpp: float, rate_range: tuple[float, float]) -> tuple[float, float]:
        """``(q, d log(bytes)/dq)`` where the curve meets ``bpp`` (extrapolated at the ends, clamped to the range)."""
        qs = [q for q, _ in self.points]
        logs = [math.log(b) for _, b in self.points]
        target = math.log(max(bpp, 1e-6))
        if len(logs) == 1:
            return min(max(qs[0], rate_range[0]), rate_range[1]), PRIOR_SLOPE
        for i in range(len(logs) - 1):
            slope = max((logs[i + 1] - logs[i]) / (qs[i + 1] - qs[i]), 1e-3)
            if target <= logs[i + 1] or i == len(logs) - 2:
                q = qs[i] + (target - logs[i]) / slope
                return min(max(q, rate_range[0]), rate_range[1]), slope
        raise AssertionError("unreachable")


def search_rate(encode: Callable[[float], bytes], target_bytes: int, q_min: float, q_max: float, *,
                q_start: float | None = None, slope: float = PRIOR_SLOPE, tolerance: float = DEFAULT_TOLERANCE,
                never_above: bool = False, max_trials: int = 20, quantum: float = 1 / 4096) -> RateSearchResult:
    """Find ``q`` in ``[q_min, q_max]`` whose ``encode(q)`` has ``target_bytes`` (±tolerance).

    Args:
        encode: deterministic function from rate knob to stream bytes, non-decreasing in size.
        target_bytes: requested stream size.
        q_min, q_max: the knob's range.
        q_start: first guess (default: middle of the range).
        slope: expected d log(bytes) / dq, for the steps before the secant takes over.
        tolerance: accepted relative deviation from the target.
        never_above: the result must not exceed ``target_bytes`` (it is then within
            ``tolerance`` below the target when reachable, else the largest size below it).
        max_trials: safety cap on encodes.
        quantum: resolution of ``q`` (the stream's fixed point).

    Returns:
        The best trial.

    Raises:
        RateControlError: the target lies outside the reachable range (the message gives it).
    """
    if target_bytes <= 0:
        raise RateControlError(f"the size target must be positive, got {target_bytes} bytes")
    trials: list[tuple[float, int, bytes]] = []
    cache: dict[float, bytes] = {}

    def trial(q: float) -> int:
        q = min(max(round(q / quantum) * quantum, q_min), q_max)
        if q not in cache:
            cache[q] = encode(q)
            trials.append((q, len(cache[q]), cache[q]))
        return len(cache[q])

    def acceptable(n: int) -> bool:
        if never_above:
            return target_bytes * (1 - tolerance) <= n <= target_bytes
        return abs(n - target_bytes) <= tolerance * target_bytes

    lo_q, hi_q = q_min, q_max          # bracket: size(lo_q) <= target <= size(hi_q) once both are known
    lo_n = hi_n = None
    lo_f = hi_f = 0.0                  # log(size / aim) at the bracket ends, Illinois-weighted
    q = q_start if q_start is not None else (q_min + q_max) / 2
    aim = target_bytes * (1 - tolerance / 2) if never_above else target_bytes   # keep a margin under a ceiling
    last_step, last_side = 0.0, None
    for _ in range(max_trials):
        n = trial(q)
        q = current = min(max(round(q / quantum) * quantum, q_min), q_max)
        if acceptable(n):
            break
        side = "lo" if n < target_bytes else "hi"
        f = math.log(n) - math.log(aim)
        if side == "lo":
            lo_q, lo_n, lo_f = q, n, f
            if last_side == "lo" and hi_n is not None:
                hi_f /= 2              # Illinois: the other end stayed twice, pull the secant towards it
        else:
            hi_q, hi_n, hi_f = q, n, f
            if last_side == "hi" and lo_n is not None:
                lo_f /= 2
        last_side = side
        if lo_n is None and q <= q_min:
            raise RateControlError(_out_of_range(target_bytes, n, trial(q_max), below=True))
        if hi_n is None and q >= q_max:
            raise TargetAboveReachError(_out_of_range(target_bytes, trial(q_min), n, below=False), cache[q])
        if hi_q - lo_q <= quantum:
            break
        if lo_n is not None and hi_n is not None:
            # False position (Illinois variant) on log(size) inside the bracket; bisect if degenerate.
            step_q = lo_q - lo_f * (hi_q - lo_q) / (hi_f - lo_f) if hi_f > lo_f else (lo_q + hi_q) / 2
            q = step_q if lo_q < step_q < hi_q else (lo_q + hi_q) / 2
        else:
            # Expanding search: each step at least doubles the previous one, so a flat stretch of
            # the size curve (or a poor slope guess) still reaches the far end in a few trials.
            step_q = q + (math.log(aim) - math.log(n)) / max(slope, 1e-3)
            direction = 1.0 if side == "lo" else -1.0
            step_q = q + direction * max(abs(step_q - q), 2 * last_step)
            # A step past an unexplored end of the range tries that end (which also tells whether
            # the target is reachable).
            if step_q >= q_max and hi_n is None:
                q = q_max
            elif step_q <= q_min and lo_n is None:
                q = q_min
            else:
                inner_lo = lo_q if lo_n is not None else q_min
                inner_hi = hi_q if hi_n is not None else q_max
                q = step_q if inner_lo < step_q < inner_hi else (inner_lo + inner_hi) / 2
        # Always move by at least one quantum towards the target (the step can be smaller).
        if abs(q - current) < quantum:
            q = current + (quantum if side == "lo" else -quantum)
        last_step = abs(q - current)
    return _best(trials, target_bytes, never_above)


def _best(trials: list[tuple[float, int, bytes]], target: int, never_above: bool) -> RateSearchResult:
    candidates = [t for t in trials if t[1] <= target] if never_above else trials
    if not candidates:
        smallest = min(trials, key=lambda t: t[1])
        raise RateControlError(f"no stream of at most {target} bytes is possible; the smallest is {smallest[1]} bytes")
    q, _, data = min(candidates, key=lambda t: abs(t[1] - target))
    return RateSearchResult(q=q, data=data, trials=[(t[0], t[1]) for t in trials])


def _out_of_range(target: int, smallest: int, largest: int, below: bool) -> str:
    side = "below the smallest" if below else "above the largest"
    return (f"a target of {target} bytes is {side} size this model reaches for this image "
            f"(reachable: {smallest}–{largest} bytes)")
