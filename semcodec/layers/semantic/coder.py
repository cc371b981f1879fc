"""The layer-0 coder: :class:`SemanticCoder` codes ``(N, D)`` tokens into ``SEM0`` payloads and back.

Both sides derive the same integer plan (:class:`_Plan`) from the calibration and
the payload header; the symbols are range coded in 5 hierarchical passes over the
token grid (``docs/semantic.md`` §3).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ...errors import (
    CorruptStreamError,
    InvalidInputError,
    RateControlError,
    TruncatedStreamError,
    UnsupportedVersionError,
)
from .calibration import Calibration, padding_mask
from .payload import (
    _GRID_HEADER,
    _PAYLOAD_HEADER,
    ALPHA_GRID,
    DROP_RADIUS_MAX,
    GAIN_MAX,
    GAIN_MIN,
    MAX_VARIABLE_TOKENS,
    MEAN_GRID,
    NUM_PASSES,
    PASS_RADIUS,
    PAYLOAD_VERSION,
    PAYLOAD_VERSION_VARIABLE,
    RANGE_E_MAX,
    RATE_MAX,
    U_MAX,
    U_MIN,
    _box_sum,
    _comb_rank,
    _comb_unrank,
    _rank_bytes,
    _round_div,
    _scale_table,
    pass_map,
)

@dataclass
class DecodedTokens:
    """A decoded SEM0 payload.

    Attributes:
        tokens: ``(K, D)`` float32, the kept tokens (in ``positions`` order).
        positions: ``(K,)`` int64 row-major grid indices of the kept tokens, increasing.
        full: ``(N, D)`` float32, every position (dropped ones reconstructed from kept neighbours).
        grid: ``(gh, gw)``.
        model: semantic tower id.
        rate: the rate index the payload was coded with.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    full: torch.Tensor
    grid: tuple[int, int]
    model: str
    rate: int = 0


@dataclass
class _Plan:
    """The integer parameters of one (rate, gain, kept set): identical on both sides."""

    rate: int
    gain: int
    theta_q: int
    m: int                      # coded components
    delta: float
    kept: np.ndarray            # (K,) increasing positions
    pad: np.ndarray             # (N,) bool, padding tokens (from the image size)
    range_e: np.ndarray         # (m,) range exponent per component
    groups: list                # [(e, component indices)]



class SemanticCoder:
    """Codes ``(N, D)`` tokens of one calibrated tower into SEM0 payloads and back.

    ``image_size`` (``(width, height)`` of the coded image, from the stream
    header) tells both sides which tokens are padding (``pad-square``); it must
    be the same when encoding and decoding. ``None`` means a square image.

    With a variable-grid calibration (dynamic-resolution towers) the encoder is given
    each image's ``grid=(gh, gw)``; it writes payload version 2, which carries the grid,
    and the decoder reads it from there. Fixed-grid calibrations write version 1, as before.

    Args:
        calibration: the tower's calibration (its hash must be stored with the payload).

    Example:
        >>> coder = SemanticCoder(calibration)                                     # doctest: +SKIP
        >>> payload = coder.encode(tokens, rate=60, keep=150, image_size=(768, 512))  # doctest: +SKIP
        >>> coder.decode(payload, image_size=(768, 512)).full                        # doctest: +SKIP
    """

    def __init__(self, calibration: Calibration):
        calibration.validate()
        self.calibration = cal = calibration
        self.variable_grid = cal.variable_grid
        self.grid = None if self.variable_grid else cal.grid   # a variable grid is set per payload (_on_grid)
        self.n = cal.num_tokens
        self.d = cal.token_dim
        self._ls = cal.log2_std_q.astype(np.int64)
        self._ls_pad = cal.log2_std_pad_q.astype(np.int64)
        self._lcs = cal.log2_cstd_q.astype(np.int64)
        self._alpha = cal.alpha_q.astype(np.int64)
        self._drop_alpha = cal.drop_alpha_q.astype(np.float64) / ALPHA_GRID
        self._pm = None if self.variable_grid else pass_map(*cal.grid).reshape(-1)
        self._table = _scale_table(cal.family)
        self._klt = cal.klt.astype(np.float64)
        self._mu_img = cal.position_mean.astype(np.float64)   # (N, D), or (1, D) for a variable grid
        self._mu_pad = cal.padding_mean.astype(np.float64)
        # Laplace scale b (symbol units) of every table entry, and its bin-centroid offset δ(b).
        b = self._table.scales * (1.0 if cal.family == "laplace" else 1.0 / math.sqrt(2.0))
        with np.errstate(over="ignore"):
            self._delta = np.clip(0.5 - b + 1.0 / np.expm1(1.0 / b), 0.0, 0.5)

    @property
    def rate_range(self) -> range:
        """Valid rate indices (larger = more bytes, lower distortion)."""
        return range(0, RATE_MAX + 1)

    def _on_grid(self, grid: tuple[int, int] | None) -> "SemanticCoder":
        """This coder on a token grid: itself for a fixed grid (``grid`` None or equal), a view with
        ``grid``, ``n`` and the pass map set for a variable-grid calibration."""
        if not self.variable_grid:
            if grid is not None and tuple(grid) != tuple(self.grid):
                raise InvalidInputError(f"{self.calibration.model} has a fixed {self.grid[0]}x{self.grid[1]} grid, "
                                        f"not {grid[0]}x{grid[1]}")
            return self
        if grid is None:
            raise InvalidInputError(f"{self.calibration.model} has a token grid per image: give grid=(gh, gw) "
                                    "(the tower's grid for this image)")
        gh, gw = grid
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (gh, gw)) \
                or not (gh >= 1 and gw >= 1 and gh * gw <= MAX_VARIABLE_TOKENS):
            raise InvalidInputError(f"grid {grid!r} is outside 1x1 .. {MAX_VARIABLE_TOKENS} tokens")
        view = copy.copy(self)
        view.grid, view.n = (int(gh), int(gw)), int(gh) * int(gw)
        view._pm = pass_map(view.grid[0], view.grid[1]).reshape(-1)
        return view

    def padding(self, image_size: tuple[int, int] | None) -> np.ndarray:
        """``(N,)`` bool: the padding tokens of an image of this size (see :func:`padding_mask`)."""
        if image_size is None:
            return np.zeros(self.n, dtype=bool)
        w, h = (int(v) for v in image_size)
        if w < 1 or h < 1:
            raise InvalidInputError(f"image size {w}x{h} is empty")
        cal = self.calibration
        if self.variable_grid:  # smart-resize pads nothing
            return np.zeros(self.n, dtype=bool)
        return padding_mask(cal.preprocessing, cal.input_size, cal.grid, w, h)

    def _mean(self, pad: np.ndarray) -> np.ndarray:
        return np.where(pad[:, None], self._mu_pad, self._mu_img)

    # ---- the integer plan both sides derive

    def _plan(self, rate: int, gain: int, kept: np.ndarray, pad: np.ndarray) -> _Plan:
        theta_q = 2 * int(self._ls[0]) - rate
        u = 2 * self._ls - theta_q
        m = int(np.count_nonzero(u > 0))  # a prefix: log2_std_q is non-increasing
        delta = math.sqrt(12.0) * 2.0 ** (theta_q / 16.0)
        e = np.minimum(np.maximum(u[:m], 0) // 16, RANGE_E_MAX)
        groups = [(int(v), np.flatnonzero(e == v)) for v in np.unique(e)]
        return _Plan(rate, gain, theta_q, m, delta, kept, pad, e, groups)

    def _context(self, plan: _Plan, sym_grid: np.ndarray, known: np.ndarray, p: int, pos: np.ndarray):
        """Sums ``(n_p, m)`` and counts ``(n_p,)`` of the decoded image-token neighbours of ``pos`` (pass ``p``).

        Window sums come from integer integral images (exact).
        """
        gh, gw = self.grid
        r = PASS_RADIUS[p]
        if r == 0:
            return np.zeros((pos.size, plan.m), dtype=np.int64), np.zeros(pos.size, dtype=np.int64)
        k = known.reshape(gh, gw)
        x = np.zeros((gh + 1, gw + 1, plan.m + 1), dtype=np.int64)
        x[1:, 1:, :plan.m] = sym_grid.reshape(gh, gw, plan.m) * k[..., None]
        x[1:, 1:, plan.m] = k
        np.cumsum(x, axis=0, out=x)
        np.cumsum(x, axis=1, out=x)
        ii, jj = pos // gw, pos % gw
        i0, i1 = np.maximum(ii - r, 0), np.minimum(ii + r + 1, gh)
        j0, j1 = np.maximum(jj - r, 0), np.minimum(jj + r + 1, gw)
        box = x[i1, j1] - x[i0, j1] - x[i1, j0] + x[i0, j0]  # (n_p, m + 1)
        return box[:, :plan.m], box[:, plan.m]

    def _models(self, plan: _Plan, p: int, pos: np.ndarray, sums: np.ndarray, cnt: np.ndarray):
        """Integer (scale index, mean_q) arrays ``(n_p, m)`` for the tokens ``pos`` of pass ``p``."""
        m = plan.m
        pad = plan.pad[pos]
        has = (cnt > 0) & ~pad
        u_unc = 2 * self._ls[:m] - plan.theta_q + plan.gain
        u_con = 2 * self._lcs[p, :m] - plan.theta_q + plan.gain
        u_pad = 2 * self._ls_pad[:m] - plan.theta_q + plan.gain
        u = np.where(has[:, None], u_con[None, :], u_unc[None, :])
        u = np.where(pad[:, None], u_pad[None, :], u)
        index = (np.clip(u, U_MIN, U_MAX) - U_MIN).astype(np.int32)
        num = self._alpha[p, :m][None, :] * sums * MEAN_GRID
        den = np.maximum(cnt, 1)[:, None] * ALPHA_GRID
        mean_q = np.where(has[:, None], _round_div(num, den), 0)
        hi = (2 ** (plan.range_e + 8) - 1) * MEAN_GRID
        mean_q = np.clip(mean_q, -hi[None, :], hi[None, :]).astype(np.int32)
        return index, mean_q

    def _run_passes(self, plan: _Plan, sym: np.ndarray | None, enc=None, dec=None):
        """Codes (``enc``) or decodes (``dec``) the symbols pass by pass.

        Returns ``(symbols, scale_index, mean_q)``, each ``(K, m)``: the symbols and
        the integer model of every symbol (the reconstruction uses the latter).
        """
        kept = plan.kept
        out = np.zeros((kept.size, plan.m), dtype=np.int64) if sym is None else sym
        idx_all = np.zeros((kept.size, plan.m), dtype=np.int32)
        mean_all = np.zeros((kept.size, plan.m), dtype=np.int32)
        sym_grid = np.zeros((self.n, plan.m), dtype=np.int64)
        known = np.zeros(self.n, dtype=np.int64)  # decoded image tokens (the context of later passes)
        pk = self._pm[kept]
        fam = self.calibration.family
        for p in range(NUM_PASSES):
            idx = np.flatnonzero(pk == p)
            if idx.size == 0:
                continue
            pos = kept[idx]
            sums, cnt = self._context(plan, sym_grid, known, p, pos)
            index, mean_q = self._models(plan, p, pos, sums, cnt)
            for e, comps in plan.groups:
                h = 2 ** (e + 8) - 1
                args = dict(table=self._table, mean_q=mean_q[:, comps], mean_grid=MEAN_GRID, lo=-h, hi=h, family=fam)
                if enc is not None:
                    enc.encode_gaussian(out[np.ix_(idx, comps)], index[:, comps], **args)
                else:
                    out[np.ix_(idx, comps)] = dec.decode_gaussian(index[:, comps], **args)
            idx_all[idx] = index
            mean_all[idx] = mean_q
            sym_grid[pos] = out[idx]
            known[pos] = ~plan.pad[pos]
        return out, idx_all, mean_all

    # ---- encoder

    def _coefficients(self, tokens, pad: np.ndarray) -> np.ndarray:
        if isinstance(tokens, torch.Tensor):
            t = tokens.detach().to("cpu", torch.float64).numpy()
        else:
            t = np.asarray(tokens, dtype=np.float64)
        if t.shape != (self.n, self.d):
            raise InvalidInputError(f"tokens must have shape ({self.n}, {self.d}) for {self.calibration.model}, "
                                    f"got {tuple(t.shape)}")
        if not np.all(np.isfinite(t)):
            raise InvalidInputError("tokens contain NaN or infinite values")
        return (t - self._mean(pad)) @ self._klt  # (N, D)

    def _check_rate(self, rate) -> int:
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not 0 <= rate <= RATE_MAX:
            raise InvalidInputError(f"rate must be an integer in 0..{RATE_MAX}, got {rate!r}")
        return int(rate)

    def _check_keep(self, keep) -> int:
        if keep is None:
            return self.n
        if isinstance(keep, bool) or not isinstance(keep, (int, np.integer)) or not 1 <= keep <= self.n:
            raise InvalidInputError(f"keep must be an integer in 1..{self.n}, got {keep!r}")
        return int(keep)

    def drop_order(self, tokens, image_size: tuple[int, int] | None = None,
                   grid: tuple[int, int] | None = None) -> np.ndarray:
        """Positions in the order the encoder drops them (first = most predictable).

        ``keep=K`` keeps every position except the first ``N - K`` of this order.
        Greedy: repeatedly drop the kept token that the decoder would reconstruct
        best from its kept neighbours (padding tokens: from their mean), measured
        on the strongest components (95 % of the variance, at most 64).
        """
        self = self._on_grid(grid)
        pad = self.padding(image_size)
        return self._drop_order(self._coefficients(tokens, pad), pad)

    def _drop_order(self, c: np.ndarray, pad: np.ndarray, drops: int | None = None) -> np.ndarray:
        """:meth:`drop_order` of coefficients ``c (N, D)``: its first ``drops`` positions (default all ``N - 1``
        choices) by the greedy rule, then the positions still kept in increasing order.

        Incremental: after a drop only the kept tokens whose prediction window held the dropped one
        are re-predicted, on a crop of the grid around it, with the very arithmetic of a whole-grid
        :meth:`_neighbour_prediction` (the same values in the same order: the order is that of the
        plain greedy loop, bit for bit, in about ``O(N)`` work instead of ``O(N²)``).
        """
        gh, gw = self.grid
        ev = self.calibration.variances.astype(np.float64)
        top = int(min(64, max(1, np.searchsorted(np.cumsum(ev) / max(ev.sum(), 1e-300), 0.95) + 1)))
        x = np.ascontiguousarray(c[:, :top]).reshape(gh, gw, top)
        img = ~pad.reshape(gh, gw)
        src = img.astype(np.float64)             # (gh, gw) kept image tokens: what predictions are made from
        pred, radius = self._neighbour_prediction(x, src, exclude_self=True, comps=top, radii=True)
        pred[~img] = 0.0                         # padding tokens are predicted by their mean
        err = ((x - pred) ** 2).sum(-1).reshape(-1)  # (N,) inf once dropped
        radius = np.where(radius > 0, radius, max(gh, gw)).reshape(-1)  # window radius of each prediction
        drops = self.n - 1 if drops is None else max(0, min(int(drops), self.n - 1))
        order = []
        for _ in range(drops):
            i = int(np.argmin(err))
            order.append(i)
            err[i] = np.inf
            if img.flat[i]:                      # a padding token predicts nothing: no other error changes
                src.flat[i] = 0.0
                self._repredict(x, src, err, radius, i)
        rest = np.flatnonzero(np.isfinite(err))
        return np.concatenate([np.array(order, dtype=np.int64), rest.astype(np.int64)])

    def _repredict(self, x: np.ndarray, src: np.ndarray, err: np.ndarray, radius: np.ndarray, i: int) -> None:
        """Updates ``err`` and ``radius`` of the kept image tokens whose window held ``i``, just dropped from ``src``.

        A token ``j`` with ``i`` outside its window (Chebyshev distance above its radius) keeps its
        prediction: the kept tokens within that radius are unchanged. The others get theirs anew
        from the kept tokens of a crop around ``i`` that holds their new windows (grown until it
        does): ρ = the distance to the nearest other kept token, the window's tokens summed one by
        one in row-major order (the order in which :func:`_box_sum` adds them; the skipped cells add
        zeros), so the values are those of :meth:`_neighbour_prediction` on the whole grid.
        """
        gh, gw = src.shape
        ri, ci = divmod(i, gw)
        rad2 = radius.reshape(gh, gw)
        reach = int(radius[src.reshape(-1) > 0].max(initial=0))
        r0, r1, c0, c1 = max(ri - reach, 0), min(ri + reach + 1, gh), max(ci - reach, 0), min(ci + reach + 1, gw)
        rows, cols = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
        dist = np.maximum(np.abs(rows - ri), np.abs(cols - ci))
        hit = (src[r0:r1, c0:c1] > 0) & (dist <= rad2[r0:r1, c0:c1])
        ar, ac = rows[hit], cols[hit]             # (k,) the affected tokens
        if ar.size == 0:
            return
        none = max(gh, gw)                        # the radius of "no kept neighbour at all"
        margin = int((dist[hit] + rad2[ar, ac]).max())
        while True:
            R0, R1 = max(ri - margin, 0), min(ri + margin + 1, gh)
            C0, C1 = max(ci - margin, 0), min(ci + margin + 1, gw)
            kr, kc = np.nonzero(src[R0:R1, C0:C1])  # kept tokens of the crop, row-major
            kr, kc = kr + R0, kc + C0
            d = np.maximum(np.abs(ar[:, None] - kr[None, :]), np.abs(ac[:, None] - kc[None, :]))  # (k, C)
            rho = np.where(d > 0, d, none).min(1, initial=none)
            whole = (R0, R1, C0, C1) == (0, gh, 0, gw)
            inside = (rho < none) & (np.maximum(ar - rho, 0) >= R0) & (np.minimum(ar + rho + 1, gh) <= R1) \
                & (np.maximum(ac - rho, 0) >= C0) & (np.minimum(ac + rho + 1, gw) <= C1)
            if whole or inside.all():
                break
            margin *= 2
        window = d <= rho[:, None]                # (k, C) the window's kept tokens, the token itself included
        cnt = window.sum(1).astype(np.float64) - 1.0
        terms = np.where(window[..., None], x[kr, kc][None], 0.0)              # (k, C, comps)
        s = (np.add.accumulate(terms, axis=1)[:, -1] if kr.size else np.zeros((ar.size, x.shape[2]))) - x[ar, ac]
        a = self._drop_alpha[np.minimum(rho, DROP_RADIUS_MAX) - 1, :x.shape[2]]
        found = cnt > 0
        pred = np.zeros((ar.size, x.shape[2]))
        pred[found] = a[found] * s[found] / cnt[found][:, None]
        flat = ar * gw + ac
        err[flat] = ((x[ar, ac] - pred) ** 2).sum(-1)
        radius[flat] = np.where(found, rho, none)

    def _neighbour_prediction(self, x: np.ndarray, kept: np.ndarray, exclude_self: bool, comps: int,
                              radii: bool = False):
        """``α_ρ ·`` mean of the ``kept`` tokens within the smallest radius ρ that has one (float64).

        Positions with no kept token at all get 0. With ``radii``, also returns the ``(gh, gw)`` radius ρ of
        each prediction (0: none).
        """
        gh, gw = self.grid
        pred = np.zeros_like(x)
        done = np.zeros((gh, gw), dtype=bool)
        rad = np.zeros((gh, gw), dtype=np.int64)
        xk = x * kept[..., None]
        for rho in range(1, max(gh, gw)):
            cnt = _box_sum(kept, rho) - (kept if exclude_self else 0)
            s = _box_sum(xk, rho) - (xk if exclude_self else 0)
            new = (cnt > 0) & ~done
            if new.any():
                a = self._drop_alpha[min(rho, DROP_RADIUS_MAX) - 1, :comps]
                pred[new] = a * s[new] / cnt[new][:, None]
                rad[new] = rho
                done |= new
            if done.all():
                break
        return (pred, rad) if radii else pred

    def _quantize(self, c: np.ndarray, plan: _Plan) -> np.ndarray:
        """Symbols ``(K, m)`` int64 of the kept tokens (plain rounding, clamped to the component's range)."""
        h = 2 ** (plan.range_e + 8) - 1
        s = np.rint(c[plan.kept, :plan.m] / plan.delta)
        return np.clip(s, -h, h).astype(np.int64)

    def _estimate_gain(self, c: np.ndarray, plan: _Plan) -> int:
        """The gain byte: ``round(8 · log2 mean(c² / σ²))`` over the kept image tokens' coded components."""
        rows = plan.kept[~plan.pad[plan.kept]]
        if plan.m == 0 or rows.size == 0:
            return 0
        var = self.calibration.variances[:plan.m].astype(np.float64)
        ratio = float(np.mean(c[rows, :plan.m] ** 2 / np.maximum(var, 1e-30)[None, :]))
        if not ratio > 0:
            return GAIN_MIN
        return int(np.clip(round(8 * math.log2(ratio)), GAIN_MIN, GAIN_MAX))

    def _entropy_encode(self, plan: _Plan, sym: np.ndarray):
        from ...bitstream.entropy import EntropyEncoder

        if plan.m == 0:
            z = np.zeros((plan.kept.size, 0), dtype=np.int32)
            return b"", z, z
        enc = EntropyEncoder()
        _, index, mean_q = self._run_passes(plan, sym, enc=enc)
        return enc.to_bytes(), index, mean_q

    def _positions(self, kept: np.ndarray) -> bytes:
        """The kept positions as the payload writes them: their combinatorial rank, little-endian."""
        nbytes = _rank_bytes(self.n, kept.size)
        return _comb_rank(kept).to_bytes(nbytes, "little") if nbytes else b""

    def _payload(self, plan: _Plan, words: bytes, positions: bytes | None = None) -> bytes:
        k = plan.kept.size
        if self.variable_grid:
            head = (_PAYLOAD_HEADER.pack(PAYLOAD_VERSION_VARIABLE, plan.rate, plan.gain, k)
                    + _GRID_HEADER.pack(*self.grid))
        else:
            head = _PAYLOAD_HEADER.pack(PAYLOAD_VERSION, plan.rate, plan.gain, k)
        return head + (self._positions(plan.kept) if positions is None else positions) + words

    def _encode_plan(self, c: np.ndarray, rate: int, kept: np.ndarray, pad: np.ndarray,
                     positions: bytes | None = None):
        """``(plan, (symbols, scale index, mean_q), payload)`` at ``rate`` for the ``kept`` positions;
        ``positions``: their :meth:`_positions` bytes when already known (a rate search reuses them)."""
        plan = self._plan(rate, 0, kept, pad)
        plan.gain = self._estimate_gain(c, plan)
        sym = self._quantize(c, plan)
        words, index, mean_q = self._entropy_encode(plan, sym)
        return plan, (sym, index, mean_q), self._payload(plan, words, positions)

    def encode(self, tokens, rate: int, keep: int | None = None, image_size: tuple[int, int] | None = None,
               grid: tuple[int, int] | None = None) -> bytes:
        """Codes tokens into a SEM0 payload.

        Args:
            tokens: ``(N, D)`` float tensor/array of the calibrated tower.
            rate: rate index in :attr:`rate_range` (0 = position means only).
            keep: number of tokens to keep (default all); the others are
                reconstructed from kept neighbours by the decoder.
            image_size: ``(width, height)`` of the image (decides the padding tokens).
            grid: ``(gh, gw)`` of the tokens; required for a variable-grid calibration
                (written in the payload), else optional (must be the calibration's).

        Returns:
            The payload bytes (see ``docs/semantic.md``).
        """
        self = self._on_grid(grid)
        rate = self._check_rate(rate)
        keep = self._check_keep(keep)
        pad = self.padding(image_size)
        c = self._coefficients(tokens, pad)
        kept = np.arange(self.n) if keep == self.n else np.sort(self._drop_order(c, pad, self.n - keep)[self.n - keep:])
        return self._encode_plan(c, rate, kept, pad)[2]

    def encode_to_budget(self, tokens, max_bytes: int, image_size: tuple[int, int] | None = None,
                         keep_fractions: Sequence[float] | None = None, grid: tuple[int, int] | None = None) -> bytes:
        """The payload of at most ``max_bytes`` bytes with the lowest token MSE over (rate, keep).

        For each candidate ``keep`` (fractions of N) the largest rate that fits
        is found by bisection (bytes grow with the rate); among these the pair
        with the lowest mean squared token error (computed exactly as the decoder
        reconstructs) wins. About 60 trial encodes.

        ``grid``: as in :meth:`encode`.

        Raises:
            RateControlError: not even rate 0 fits in ``max_bytes``.
        """
        self = self._on_grid(grid)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
            raise InvalidInputError(f"max_bytes must be a positive integer, got {max_bytes!r}")
        pad = self.padding(image_size)
        c = self._coefficients(tokens, pad)
        all_kept = np.arange(self.n)
        base = self._encode_plan(c, 0, all_kept, pad)[2]
        if len(base) > max_bytes:
            raise RateControlError(f"the semantic layer needs at least {len(base)} bytes; the budget is {max_bytes}")
        fractions = keep_fractions or (1.0, 0.75, 0.5, 0.375, 0.25, 0.1875, 0.125)
        keeps = sorted({max(1, min(self.n, round(f * self.n))) for f in fractions}, reverse=True)
        order = self._drop_order(c, pad, self.n - min(keeps)) if min(keeps) < self.n else None
        best = (float((c ** 2).sum()) / c.size, base)
        for k in keeps:
            kept = all_kept if k == self.n else np.sort(order[self.n - k:])
            positions = self._positions(kept)  # a big-integer rank: computed once per kept set
            lo, hi, fit = 0, RATE_MAX, None
            while lo <= hi:  # largest rate that fits
                mid = (lo + hi) // 2
                trial = self._encode_plan(c, mid, kept, pad, positions)
                if len(trial[2]) <= max_bytes:
                    fit, lo = trial, mid + 1
                else:
                    hi = mid - 1
            if fit is None:
                continue
            plan, coded, payload = fit
            rec = self._reconstruct(plan, *coded)
            err = float(((c[:, :plan.m] - rec) ** 2).sum() + (c[:, plan.m:] ** 2).sum()) / c.size
            if err < best[0]:
                best = (err, payload)
        return best[1]

    # ---- decoder

    def _dequantize(self, sym: np.ndarray, index: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
        """Reconstruction values ``(K, m)`` in symbol units: each symbol moved toward its model's
        mean by the centroid offset of a Laplace bin, ``δ(b) = ½ − b + 1/(e^{1/b} − 1)``."""
        s = sym.astype(np.float64)
        if s.size == 0:
            return s
        mu = mean_q.astype(np.float64) / MEAN_GRID
        d = self._delta[index]
        return s + np.clip(mu - s, -d, d)

    def _reconstruct(self, plan: _Plan, sym: np.ndarray, index: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
        """Decoded KLT coefficients ``(N, m)`` float64 of every position (dropped ones predicted)."""
        gh, gw = self.grid
        c = np.zeros((self.n, plan.m))
        c[plan.kept] = self._dequantize(sym, index, mean_q) * plan.delta
        if plan.kept.size < self.n and plan.m:
            kept = np.zeros(self.n)
            kept[plan.kept] = 1
            src = (kept * ~plan.pad).reshape(gh, gw)
            pred = self._neighbour_prediction(c.reshape(gh, gw, plan.m), src, False, plan.m).reshape(self.n, plan.m)
            drop = (kept == 0) & ~plan.pad  # dropped padding tokens stay at their mean
            c[drop] = pred[drop]
        return c

    def parse_header(self, payload: bytes) -> tuple[int, int, np.ndarray, memoryview]:
        """Parses ``(rate, gain, kept positions, entropy bytes)``; bounded and validated."""
        return self._parse(payload)[1:]

    def _parse(self, payload: bytes) -> tuple["SemanticCoder", int, int, np.ndarray, memoryview]:
        """``(coder on the payload's grid, rate, gain, kept positions, entropy bytes)``; bounded and validated."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise InvalidInputError(f"a SEM0 payload is bytes, not {type(payload).__name__}")
        view = memoryview(payload).cast("B")
        if len(view) < _PAYLOAD_HEADER.size:
            raise TruncatedStreamError(f"semantic layer is truncated: {len(view)} bytes, "
                                       f"its header alone needs {_PAYLOAD_HEADER.size}")
        version, rate, gain, k = _PAYLOAD_HEADER.unpack_from(view, 0)
        start = _PAYLOAD_HEADER.size
        expected = PAYLOAD_VERSION_VARIABLE if self.variable_grid else PAYLOAD_VERSION
        if version in (PAYLOAD_VERSION, PAYLOAD_VERSION_VARIABLE) and version != expected:
            kinds = {PAYLOAD_VERSION: "a fixed-grid", PAYLOAD_VERSION_VARIABLE: "a variable-grid"}
            raise CorruptStreamError(f"corrupt semantic layer: {kinds[version]} payload (version {version}) for "
                                     f"{kinds[expected]} calibration of {self.calibration.model}")
        if version != expected:
            raise UnsupportedVersionError(f"semantic layer payload version {version} is not supported "
                                          f"(this semcodec reads {PAYLOAD_VERSION} and {PAYLOAD_VERSION_VARIABLE}); "
                                          "upgrade semcodec")
        if self.variable_grid:
            if len(view) < start + _GRID_HEADER.size:
                raise TruncatedStreamError("semantic layer is truncated inside its token grid")
            gh, gw = _GRID_HEADER.unpack_from(view, start)
            start += _GRID_HEADER.size
            if not (gh >= 1 and gw >= 1 and gh * gw <= MAX_VARIABLE_TOKENS):
                raise CorruptStreamError(f"corrupt semantic layer: token grid {gh}x{gw} outside 1x1 .. "
                                         f"{MAX_VARIABLE_TOKENS} tokens")
            self = self._on_grid((gh, gw))
        if rate > RATE_MAX:
            raise CorruptStreamError(f"corrupt semantic layer: rate index {rate} exceeds {RATE_MAX}")
        if not GAIN_MIN <= gain <= GAIN_MAX:
            raise CorruptStreamError(f"corrupt semantic layer: gain {gain} outside {GAIN_MIN}..{GAIN_MAX}")
        if not 1 <= k <= self.n:
            raise CorruptStreamError(f"corrupt semantic layer: {k} kept tokens, the grid has {self.n}")
        nbytes = _rank_bytes(self.n, k)
        end = start + nbytes
        if len(view) < end:
            raise TruncatedStreamError("semantic layer is truncated inside its token positions")
        if nbytes:
            rank = int.from_bytes(view[start:end], "little")
            if rank >= math.comb(self.n, k):
                raise CorruptStreamError("corrupt semantic layer: invalid token positions")
            kept = _comb_unrank(rank, self.n, k)
        else:
            kept = np.arange(self.n, dtype=np.int64)
        return self, rate, gain, kept, view[end:]

    def decode(self, payload: bytes, image_size: tuple[int, int] | None = None) -> DecodedTokens:
        """Decodes a SEM0 payload made with this calibration (and the same ``image_size``).

        Raises:
            TruncatedStreamError / CorruptStreamError / UnsupportedVersionError:
                the payload is damaged (only SemcodecError subclasses are raised).
        """
        from ...bitstream.entropy import EntropyDecoder

        self, rate, gain, kept, data = self._parse(payload)  # self: on the payload's grid (variable grids)
        pad = self.padding(image_size)
        plan = self._plan(rate, gain, kept, pad)
        if plan.m == 0:
            if len(data):
                raise CorruptStreamError("corrupt semantic layer: data after a rate-0 header")
            sym = index = mean_q = np.zeros((kept.size, 0), dtype=np.int64)
        else:
            if len(data) == 0:
                raise TruncatedStreamError("semantic layer is truncated: its coded symbols are missing")
            dec = EntropyDecoder(bytes(data))
            sym, index, mean_q = self._run_passes(plan, None, dec=dec)
            dec.finish()
        c = self._reconstruct(plan, sym, index, mean_q)
        full = self._mean(pad) + c @ self._klt[:, :plan.m].T  # (N, D) float64
        full32 = torch.from_numpy(full.astype(np.float32))
        pos = torch.from_numpy(kept.astype(np.int64))
        return DecodedTokens(tokens=full32[pos].clone(), positions=pos, full=full32, grid=self.grid,
                             model=self.calibration.model, rate=rate)



_CODER_CACHE: dict[int, tuple[Calibration, SemanticCoder]] = {}


def coder_for(cal: Calibration) -> SemanticCoder:
    """The coder of a calibration, cached per calibration object (tables and casts are computed once)."""
    hit = _CODER_CACHE.get(id(cal))
    if hit is not None and hit[0] is cal:
        return hit[1]
    if len(_CODER_CACHE) > 8:
        _CODER_CACHE.clear()
    coder = SemanticCoder(cal)
    _CODER_CACHE[id(cal)] = (cal, coder)
    return coder
