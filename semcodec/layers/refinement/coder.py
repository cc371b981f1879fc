"""The refinement coder: the residual between the image and the decoded pixel layer, from high fidelity to lossless.

Layer 2 codes ``r = x − x̂₁`` (the original 8-bit pixels minus the pixel layer's decoded pixels), quantized with
step ``Δ = step16 / 16`` (``Δ = 1``: lossless)::

    q = floor(16·r / step16 + 1/2)          r̂ = floor((step16·q + 8) / 16)          x̂₂ = clip(x̂₁ + r̂, 0, 255)

The symbols ``q`` are coded in 7 phases (:data:`PHASES`: four on a 4×4 grid, then three on the 2×2 grid) and,
within a phase, channel by channel: 7·C *groups*. Each symbol's Laplace model takes its mean from a linear
prediction over integer features (the decoded pixel layer around it, the symbols already decoded around it and at
the same position in earlier channels) with per-group integer weights fitted by the encoder and stored, and its
scale from one of 24 buckets of local activity, per group, stored too. Everything the range coder sees is an
integer function of the payload and ``x̂₁``: streams decode bit-exactly wherever ``x̂₁`` does (the payload holds
``x̂₁``'s CRC-32 to check that). Specified in docs/refinement.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from semcodec.bitstream.entropy import EntropyDecoder, EntropyEncoder
from semcodec.errors import CorruptStreamError, InvalidInputError, ModelMismatchError

from .payload import (
    ACTIVITY_CLASSES,
    BUCKETS,
    GRADIENT_CLASSES,
    MAX_STEP16,
    MEAN_GRID,
    SCALE_TABLE,
    STEP_ONE,
    UNUSED_BUCKET,
    WEIGHT_BITS,
    GroupModel,
    RefinementPayload,
    pixels_crc,
    symbol_bound,
)

#: The phases, in coding order: (row offset, column offset, stride). The positions of the 2×2 grid's first phase
#: (even rows and columns) are split again on a 4×4 grid, so that three quarters of them see decoded neighbours
#: too (at distance 2); the others follow at stride 2.
PHASES = ((0, 0, 4), (2, 2, 4), (0, 2, 4), (2, 0, 4), (1, 1, 2), (0, 1, 2), (1, 0, 2))
_DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))
_CROSS = ((0, -1), (0, 1), (-1, 0), (1, 0))
_ALL = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))
#: The already-decoded neighbours of a phase's positions (row, column offsets): none for the first phase; at
#: distance 2 on the 4×4 grid, 1 on the 2×2 grid.
NEIGHBOURS = {
    0: (),
    1: tuple((2 * dy, 2 * dx) for dy, dx in _DIAGONAL),
    2: tuple((2 * dy, 2 * dx) for dy, dx in _CROSS),
    3: tuple((2 * dy, 2 * dx) for dy, dx in _ALL),
    4: _DIAGONAL,
    5: _CROSS,
    6: _ALL,
}
#: Window radius of the pixel-layer features: 5×5 in the symbol's channel, 3×3 in the others.
SAME_RADIUS, OTHER_RADIUS = 2, 1
#: Positions per band: features are computed band by band (rows of a phase) to bound memory.
BAND_POSITIONS = 1 << 17
#: At most this many positions of a group fit its weights: bands of FIT_ROWS rows spread over the image.
FIT_POSITIONS = 1 << 15
FIT_ROWS = 32
#: Positions of the estimate that decides whether a group's weights pay for their bytes.
COST_POSITIONS = 1 << 15
_POW2 = 2 ** np.arange(31, dtype=np.int64)       # bit length by search: exact on every machine
#: Rate-distortion trade-off of the encoder's choice of symbols (lossy steps only): a symbol moves one step
#: towards 0 where that lowers squared error + RDO_LAMBDA · step² · bits (about 6–13 % fewer bits at equal PSNR
#: over 34–46 dB on Kodak images, measured; 0.12 and 0.25 gave the same curve).
RDO_LAMBDA = 0.15


def groups(channels: int) -> list[tuple[int, int]]:
    """The groups ``(phase, channel)`` in coding order."""
    return [(p, c) for p in range(len(PHASES)) for c in range(channels)]


def _window(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)]


def feature_count(phase: int, channel: int, channels: int) -> int:
    """Number of features (and weights) of group ``(phase, channel)``; see :func:`_features`."""
    nb = len(NEIGHBOURS[phase])
    return 1 + len(_window(SAME_RADIUS)) + (channels - 1) * len(_window(OTHER_RADIUS)) + nb + channel * (1 + nb)


def feature_counts(channels: int) -> list[int]:
    """Weights per group, in coding order."""
    return [feature_count(p, c, channels) for p, c in groups(channels)]


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Indices reflected into ``[0, n)`` about the edge samples, by one rule each (``−i ↦ i``,
    ``n − 1 + i ↦ n − 1 − i``), then clamped (so ``−2 ↦ 1`` when ``n = 2``, and every index ``↦ 0`` when ``n = 1``)."""
    index = np.where(index < 0, -index, np.where(index >= n, 2 * (n - 1) - index, index))
    return np.clip(index, 0, n - 1)


PAD = SAME_RADIUS                                 # border of the padded planes


def _padded(plane: np.ndarray) -> np.ndarray:
    """``plane`` (H, W) with a border of :data:`PAD` samples reflected about the edge samples, (H + 4, W + 4)."""
    h, w = plane.shape
    return plane[np.ix_(_reflect(np.arange(-PAD, h + PAD), h), _reflect(np.arange(-PAD, w + PAD), w))]


class _Planes:
    """The decoder's state: the pixel layer and the symbols decoded so far, padded planes (C, H + 4, W + 4)."""

    def __init__(self, base: np.ndarray):
        self.channels, self.height, self.width = base.shape                       # base: (C, H, W) int16, x̂₁
        self.base = np.stack([_padded(b) for b in base])
        self.q = np.zeros_like(self.base)                                         # 0 where not decoded yet

    def interior(self, planes: np.ndarray) -> np.ndarray:
        return planes[:, PAD:PAD + self.height, PAD:PAD + self.width]

    def set_group(self, phase: int, channel: int, symbols: np.ndarray) -> None:
        """Store a group's symbols and refresh the channel's reflected border."""
        py, px, stride = PHASES[phase]
        self.q[channel, PAD + py:PAD + self.height:stride, PAD + px:PAD + self.width:stride] = symbols
        self.q[channel] = _padded(self.interior(self.q)[channel])

    def grid(self, phase: int) -> tuple[int, int]:
        """(rows, columns) of a phase's positions."""
        py, px, stride = PHASES[phase]
        return len(range(py, self.height, stride)), len(range(px, self.width, stride))

    def view(self, planes: np.ndarray, c: int, phase: int, band: slice, dy: int, dx: int) -> np.ndarray:
        """``planes[c]`` at the phase's positions of rows ``band`` shifted by ``(dy, dx)``: a strided view."""
        py, px, stride = PHASES[phase]
        r0 = PAD + py + stride * band.start + dy
        c0 = PAD + px + dx
        rows, cols = band.stop - band.start, self.grid(phase)[1]
        return planes[c, r0:r0 + stride * rows:stride, c0:c0 + stride * cols:stride]


def _features(s: _Planes, phase: int, channel: int, band: slice):
    """The features of group ``(phase, channel)`` at the phase's rows ``band``, in their fixed order, as int16
    or int32 arrays (rows, columns), every value within ±255; also returns the bucket of each position.

    Order: 1; ``x̂₁[n] − x̂₁[0]`` over the 5×5 window (row-major) in the channel, then over the 3×3 window in each
    other channel (increasing channel); ``q[n]`` of the channel at the phase's neighbours; for each earlier channel
    ``c'``: ``q[0]`` then ``q[n]`` at the neighbours.
    """
    centre = s.view(s.base, channel, phase, band, 0, 0)
    shape = centre.shape
    feats = [np.ones(shape, dtype=np.int32)]
    for c in [channel] + [k for k in range(s.channels) if k != channel]:
        middle = s.view(s.base, c, phase, band, 0, 0)
        feats.extend(s.view(s.base, c, phase, band, dy, dx) - middle
                     for dy, dx in _window(SAME_RADIUS if c == channel else OTHER_RADIUS))
    grad = (np.abs(s.view(s.base, channel, phase, band, 0, 1) - s.view(s.base, channel, phase, band, 0, -1))
            + np.abs(s.view(s.base, channel, phase, band, 1, 0) - s.view(s.base, channel, phase, band, -1, 0)))
    neighbours = NEIGHBOURS[phase]
    activity = np.zeros(shape, dtype=np.int32)                 # 8 × mean |q| around, + 8 × |q| of earlier channels
    weight = 8 // len(neighbours) if neighbours else 0
    for dy, dx in neighbours:
        f = s.view(s.q, channel, phase, band, dy, dx)
        feats.append(f)
        activity += np.multiply(np.abs(f), weight, dtype=np.int32)
    for c in range(channel):
        f = s.view(s.q, c, phase, band, 0, 0)
        feats.append(f)
        activity += np.multiply(np.abs(f), 8, dtype=np.int32)
        feats.extend(s.view(s.q, c, phase, band, dy, dx) for dy, dx in neighbours)
    a_class = np.minimum(np.searchsorted(_POW2, activity >> 2, side="right"), ACTIVITY_CLASSES - 1)
    g_class = np.minimum(np.searchsorted(_POW2, grad >> 2, side="right"), GRADIENT_CLASSES - 1)
    return feats, (a_class * GRADIENT_CLASSES + g_class).astype(np.int64)


def _mean_q(feats: list[np.ndarray], weights: np.ndarray | None, bound: int) -> np.ndarray:
    """Means on the grid ``1/16``: ``floor((Σ w·f + 2^7) / 2^8)``, clamped to ``±16·bound``.

    int32 arithmetic is exact: ``|w| ≤ 2^15``, ``|f| ≤ 255`` and at most 67 features keep every sum below 2^30.
    """
    if weights is None:
        return np.zeros(feats[0].shape, dtype=np.int32)
    acc = np.zeros(feats[0].shape, dtype=np.int32)
    for w, f in zip(weights.tolist(), feats):
        if w:
            acc += np.multiply(f, w, dtype=np.int32)      # explicit dtype: the same under NumPy 1 and 2 casting
    shift = WEIGHT_BITS - int(math.log2(MEAN_GRID))
    return np.clip((acc + (1 << (shift - 1))) >> shift, -MEAN_GRID * bound, MEAN_GRID * bound)


def _bands(n_rows: int, n_cols: int) -> list[slice]:
    """Slices of a phase's rows holding about :data:`BAND_POSITIONS` positions each."""
    step = max(1, BAND_POSITIONS // max(n_cols, 1))
    return [slice(r, min(r + step, n_rows)) for r in range(0, n_rows, step)]


def _bucket_scales(truth: np.ndarray, bands: list[slice], means: list[np.ndarray], keys: list[np.ndarray]) -> np.ndarray:
    """The scale index of each bucket of a group for its symbols ``truth`` (rows, columns), given each band's
    means and buckets."""
    err_sum, counts = np.zeros(BUCKETS), np.zeros(BUCKETS, dtype=np.int64)
    for band, mean_q, key in zip(bands, means, keys):
        err = np.abs(truth[band] - mean_q / MEAN_GRID)
        err_sum += np.bincount(key.ravel(), err.ravel(), minlength=BUCKETS)
        counts += np.bincount(key.ravel(), minlength=BUCKETS)
    return _scale_indices(err_sum, counts)


def _scale_indices(abs_err_sum: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per bucket, the table scale nearest (in log) to the Laplace fit ``b = mean |q − μ|``; unused buckets marked."""
    out = np.full(BUCKETS, UNUSED_BUCKET, dtype=np.uint8)
    log_table = np.log(SCALE_TABLE.scales)
    for k in np.flatnonzero(counts):
        b = max(abs_err_sum[k] / counts[k], 1e-3)
        out[k] = int(np.argmin(np.abs(log_table - math.log(b))))
    return out


def _laplace_cost(q: np.ndarray, mean: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-symbol code length (bits) of integer ``q`` under discretized Laplace(mean, b)."""
    def cdf(t):
        z = (t - mean) / b
        return np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)), 1 - 0.5 * np.exp(-np.maximum(z, 0)))
    return -np.log2(np.maximum(cdf(q + 0.5) - cdf(q - 0.5), 2.0 ** -24))


def _rdo(q: np.ndarray, mean_q: np.ndarray, b: np.ndarray, target: np.ndarray, base: np.ndarray, step16: int,
         lam: float) -> np.ndarray:
    """Each symbol moved one step towards 0 where that lowers distortion + ``lam`` · bits (the encoder's choice)."""
    mean = mean_q / MEAN_GRID
    toward = q - np.sign(q)

    def cost(v):
        error = target - np.clip(base + dequantize(v, step16), 0, 255)
        return error.astype(np.float64) ** 2 + lam * _laplace_cost(v, mean, b)
    return np.where((q != 0) & (cost(toward) < cost(q)), toward, q)


def quantize(residual: np.ndarray, step16: int) -> np.ndarray:
    """Symbols of a residual (integers) with step ``step16/16``: ``floor(16·r/step16 + 1/2)``."""
    return ((32 * residual.astype(np.int32) + step16) // (2 * step16)).astype(np.int16)


def dequantize(symbols: np.ndarray, step16: int) -> np.ndarray:
    """Decoded residual of symbols: ``floor((step16·q + 8) / 16)``."""
    return (step16 * symbols.astype(np.int32) + STEP_ONE // 2) >> 4


def _planes_of(image: np.ndarray, channels: int) -> np.ndarray:
    """(C, H, W) int16 planes of a (H, W), (H, W, 1) or (H, W, 3) uint8 image; gray is repeated to 3 channels."""
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[2] == 1 and channels == 3:
        image = np.repeat(image, 3, axis=2)
    if image.shape[2] != channels:
        raise InvalidInputError(f"an image of {image.shape[2]} channels cannot be refined as {channels}")
    return np.ascontiguousarray(np.moveaxis(image, 2, 0)).astype(np.int16)


def _image_of(planes: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 of (C, H, W) planes with values in 0..255."""
    return np.ascontiguousarray(np.moveaxis(planes.astype(np.uint8), 0, 2))


def _refined(base_planes: np.ndarray, s: "_Planes", step16: int) -> np.ndarray:
    """``x̂₂ = clip(x̂₁ + r̂, 0, 255)`` from the decoded symbols, (H, W, C) uint8."""
    return _image_of(np.clip(base_planes + dequantize(s.interior(s.q), step16), 0, 255))


class RefinementCoder:
    """Encodes and decodes layer 2 (``REF2``). It has no model file: everything it needs is in the payload."""

    def encode(self, image: np.ndarray, base: np.ndarray, step16: int) -> bytes:
        """Codes ``image`` given the decoded pixel layer ``base``.

        Args:
            image: (H, W, C) or (H, W) uint8, the original pixels (C = 1 or 3).
            base: the decoded pixel layer, (H, W), (H, W, 1) or (H, W, 3) uint8 (gray repeats to 3 channels).
            step16: quantization step in sixteenths of a level, 16 (lossless) to 1024.

        Returns:
            The ``REF2`` payload.
        """
        if not (isinstance(step16, int) and STEP_ONE <= step16 <= MAX_STEP16):
            raise InvalidInputError(f"the refinement step must be 16..{MAX_STEP16} sixteenths, got {step16!r}")
        image = image[..., None] if image.ndim == 2 else image
        channels = image.shape[2]
        if image.dtype != np.uint8 or channels not in (1, 3):
            raise InvalidInputError("the refinement layer codes 8-bit gray or RGB pixels")
        target = _planes_of(image, channels)                                  # (C, H, W)
        base_planes = _planes_of(np.asarray(base), channels)
        if base_planes.shape != target.shape:
            raise InvalidInputError(f"the pixel layer is {base_planes.shape[1:]}, the image {target.shape[1:]}")
        s = _Planes(base_planes)
        symbols = quantize(target - base_planes, step16)                     # (C, H, W)
        bound = symbol_bound(step16)
        enc = EntropyEncoder()
        models = []
        for phase, channel in groups(channels):
            py, px, stride = PHASES[phase]
            truth = symbols[channel, py::stride, px::stride]                  # (rows, columns) of the phase
            bands = _bands(*truth.shape)
            weights = self._fit(s, phase, channel, truth, bound)
            means, keys = [], []
            for band in bands:
                feats, key = _features(s, phase, channel, band)
                means.append(_mean_q(feats, weights, bound))
                keys.append(key)
            scale_index = _bucket_scales(truth, bands, means, keys)
            if step16 > STEP_ONE:                                          # lossy: rate-distortion choice
                lam = RDO_LAMBDA * (step16 / STEP_ONE) ** 2
                pixel_target = target[channel, py::stride, px::stride]
                pixel_base = base_planes[channel, py::stride, px::stride]
                for band, mean_q, key in zip(bands, means, keys):
                    truth[band] = _rdo(truth[band], mean_q, SCALE_TABLE.scales[scale_index[key]], pixel_target[band],
                                       pixel_base[band], step16, lam)
                scale_index = _bucket_scales(truth, bands, means, keys)     # refitted to the chosen symbols
            for band, mean_q, key in zip(bands, means, keys):
                enc.encode_gaussian(truth[band], scale_index[key].astype(np.int32), SCALE_TABLE, mean_q=mean_q,
                                    mean_grid=MEAN_GRID, lo=-bound, hi=bound, family="laplace")
            s.set_group(phase, channel, truth)
            models.append(GroupModel(weights, scale_index))
        base_crc = pixels_crc(_image_of(base_planes))
        recon = _refined(base_planes, s, step16)
        return RefinementPayload(channels, step16, base_crc, pixels_crc(recon), tuple(models),
                                 enc.to_bytes()).to_bytes()

    def decode(self, payload: bytes, base: np.ndarray) -> np.ndarray:
        """Decodes layer 2 over the decoded pixel layer ``base``; returns (H, W, C) uint8 (C from the payload).

        Raises:
            CorruptStreamError / TruncatedStreamError: the payload is damaged (its data is not the encoding of
                what it decodes to, or the refined pixels fail their CRC-32).
            ModelMismatchError: ``base`` is not the pixel layer the encoder refined (its CRC-32 differs): the pixel
                layer's float32 synthesis rounded differently on this machine.
        """
        p = RefinementPayload.from_bytes(payload, feature_counts)
        base = np.asarray(base)
        if p.channels == 1 and base.ndim == 3 and base.shape[2] == 3:
            raise CorruptStreamError("corrupt refinement layer: one channel over an RGB pixel layer")
        base_planes = _planes_of(base, p.channels)
        if pixels_crc(_image_of(base_planes)) != p.base_crc:
            raise ModelMismatchError(
                "the refinement layer cannot be applied: this machine decodes the pixel layer to other pixels than "
                "the machine that wrote the stream (its float32 synthesis rounds differently); layers 0-1 still "
                "decode: `semcodec extract --layers 0,1`")
        s = _Planes(base_planes)
        bound = symbol_bound(p.step16)
        dec = EntropyDecoder(p.words)
        for (phase, channel), model in zip(groups(p.channels), p.groups):
            decoded = np.zeros(s.grid(phase), dtype=np.int16)                 # (rows, columns) of the phase
            for band in _bands(*decoded.shape):
                feats, key = _features(s, phase, channel, band)
                mean_q = _mean_q(feats, model.weights, bound)
                scale_index = model.scale_index[key]
                if np.any(scale_index == UNUSED_BUCKET):
                    raise CorruptStreamError("corrupt refinement layer: a symbol falls in a bucket marked unused")
                decoded[band] = dec.decode_gaussian(scale_index.astype(np.int32), SCALE_TABLE, mean_q=mean_q,
                                                    mean_grid=MEAN_GRID, lo=-bound, hi=bound, family="laplace")
            s.set_group(phase, channel, decoded)
        dec.finish()
        recon = _refined(base_planes, s, p.step16)
        if pixels_crc(recon) != p.pixels_crc:
            raise CorruptStreamError("corrupt refinement layer: the refined pixels fail their CRC-32")
        return recon

    @staticmethod
    def _fit(s: _Planes, phase: int, channel: int, truth: np.ndarray, bound: int) -> np.ndarray | None:
        """Least-squares weights of one group, fitted on rows spread over the image and snapped to int16; None when
        predicting does not pay for the weights' bytes (estimated on the same rows)."""
        if truth.size == 0:
            return None
        n_rows, n_cols = truth.shape
        per_band = max(1, min(n_rows, FIT_ROWS))                                # rows of each fitted band
        bands = max(1, min(n_rows // per_band, FIT_POSITIONS // max(per_band * n_cols, 1)))
        starts = (np.arange(bands) * (n_rows - per_band) // max(bands - 1, 1)).tolist() if bands > 1 else [0]
        picked = [slice(r, r + per_band) for r in starts]                    # bands spread over the image
        parts = [_features(s, phase, channel, band) for band in picked]
        feats = [np.concatenate([part[0][k] for part in parts], axis=0) for k in range(len(parts[0][0]))]
        key = np.concatenate([part[1] for part in parts], axis=0).ravel()
        y = np.concatenate([truth[band] for band in picked], axis=0).astype(np.float64).ravel()
        stride = truth.size / y.size
        if not np.any(y):
            return None
        f = np.empty((y.size, len(feats)))                                    # (n, K) float64
        for k, x in enumerate(feats):
            f[:, k] = x.ravel()
        gram = f.T @ f + 1e-6 * np.eye(f.shape[1])                            # normal equations, ridge for safety
        w = np.linalg.solve(gram, f.T @ y)
        weights = np.clip(np.rint(w * (1 << WEIGHT_BITS)), -32768, 32767).astype(np.int64)
        predicted = _mean_q(feats, weights, bound).ravel() / MEAN_GRID

        every = max(1, y.size // COST_POSITIONS)                             # the estimate needs fewer positions

        def cost(mean: np.ndarray) -> float:
            bits = 0.0
            ys, ms, ks = y[::every], mean[::every], key[::every]
            for k in np.unique(ks):
                m = ks == k
                b = max(float(np.abs(ys[m] - ms[m]).mean()), float(SCALE_TABLE.scales[0]))
                bits += float(_laplace_cost(ys[m], ms[m], b).sum())
            return bits * stride * every

        if cost(predicted) + 16 * len(weights) < cost(np.zeros_like(y)):
            return weights
        return None

