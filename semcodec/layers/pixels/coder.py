"""Coding of layer 1 (the pixel layer): model → RES1 payload (:mod:`.payload`) and back.

The payload's bytes, the scale table and the symbol range are specified in :mod:`.payload`
and docs/pixels.md; this module computes the entropy parameters and runs the range coder
and the transforms.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from ...bitstream.entropy import CategoricalTables, EntropyDecoder, EntropyEncoder, param_digest
from ...errors import CorruptStreamError, InvalidInputError, ModelMismatchError, SemcodecError
from ...models.config import RATE_ONE
from ...models.residual import ResidualCodec, SemanticCondition
from ...models.transforms import checkerboard_anchors
from .payload import (
    ALIGN,
    MIN_BITS_PER_Y_SYMBOL,
    PARAM_MARGIN,
    SCALE_TABLE,
    Y_SYMBOL_RANGE,
    ResidualPayload,
    param_tiles,
    rate_to_fixed,
)

#: ``g_a`` and ``g_s`` run tile by tile on an image of more than TILE latents (1024 px) a side, so that
#: their peak memory stays near that of a 1024² image whatever the image size. Neighbouring tiles
#: overlap by TILE_MARGIN latents (64 px), twice the transforms' receptive field (an output depends on
#: inputs up to 2 latents away): each tile's kept part is computed from the very inputs that the
#: whole-image transform would use.
TILE = 64
TILE_MARGIN = 4
#: The largest image whose pixel layer is coded whole (a stream from before format 1.3: their encoders
#: refused larger images); larger ones are coded by tiles.
MAX_UNTILED_PIXELS = 64_000_000


class ResidualCoder:
    """Turns images into RES1 payloads and back with one frozen :class:`ResidualCodec`.

    The analysis transform is separated (:meth:`analyze`) so that rate control can
    run ``g_a`` once and try several rates (:meth:`encode_analyzed`).
    """

    def __init__(self, model: ResidualCodec):
        self.model = model.eval()
        eb = model.entropy_bottleneck
        if eb._quantized_cdf.numel() == 0:
            eb.update(force=True)  # a training checkpoint: shipped ones carry frozen tables
        self.z_tables = CategoricalTables.from_entropy_bottleneck(eb)
        self.z_medians = eb._get_medians().detach().reshape(-1)            # (N,)
        self.z_lo = torch.tensor(np.array(self.z_tables.offset), dtype=torch.float32)       # (N,)
        self.z_hi = self.z_lo + torch.tensor(np.array(self.z_tables.length), dtype=torch.float32) - 1
        self._parameter_path = _float64_parameter_path(model)
        # The float32 transforms (not the float64 parameter path) keep their weights channels-last, where
        # oneDNN's convolutions skip a layout reorder per call: g_a and g_s run ≈ 1.5× faster on 2 cores.
        for transform in (model.g_a, model.h_a, model.g_s):
            transform.to(memory_format=torch.channels_last)

    @property
    def levels(self) -> int:
        """Number of trained gain levels (integer knobs 0 … L-1)."""
        return self.model.config.levels

    @property
    def rate_range(self) -> tuple[float, float]:
        """``(q_min, q_max)`` of the continuous rate knob."""
        return self.model.config.rate_range

    @property
    def quality_range(self) -> tuple[float, float]:
        """The part of the rate range that quality 0–100 spans."""
        return self.model.config.quality_range

    # ------------------------------------------------------------------ encode
    @torch.no_grad()
    def analyze(self, x: torch.Tensor) -> torch.Tensor:
        """``g_a`` of an image. x: (1, 3, H, W) in [0, 1] → y (1, M, Hp/16, Wp/16) before gains."""
        return _run_tiled(self.model.g_a, pad_to_alignment(x), pixels_per_input=16, pixels_per_output=1)

    @torch.no_grad()
    def analyze_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """:meth:`analyze` of an (H, W, 3) uint8 image, converted to float tile by tile: the float image
        (12 bytes a pixel, 24 with its padding) is never held whole. → y (1, M, Hp/16, Wp/16), the same values."""
        height, width = pixels.shape[:2]
        hp, wp = _aligned(height), _aligned(width)

        def read(rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
            top, bottom, left, right = rows[0] * 16, rows[1] * 16, cols[0] * 16, cols[1] * 16
            block = pixels[top:min(bottom, height), left:min(right, width)]
            block = np.pad(block, ((0, bottom - top - block.shape[0]), (0, right - left - block.shape[1]), (0, 0)),
                           mode="edge")                         # the padding of pad_to_alignment, where it falls
            return image_to_tensor(block)                        # (1, 3, bottom - top, right - left)

        return _run_tiled_from(self.model.g_a, read, (hp // 16, wp // 16), pixels_per_output=1)

    @torch.no_grad()
    def encode_analyzed(self, y: torch.Tensor, q: float, semantic: SemanticCondition | None = None) -> bytes:
        """Encode an analyzed image at rate knob ``q`` into a RES1 payload."""
        return self._encode(*self.latents(y, q), q, semantic, keep_y_hat=False)[0]

    @torch.no_grad()
    def latents(self, y: torch.Tensor, q: float) -> tuple[torch.Tensor, torch.Tensor]:
        """What :meth:`encode_analyzed` codes at knob ``q``: ``y · gain`` (1, M, h, w) and
        ``z = h_a(y · gain) · hyper-gain`` (1, N, h/4, w/4), both before rounding."""
        gains = self.model.gains(torch.tensor([rate_to_fixed(q, self.rate_range) / RATE_ONE]))
        y = y * gains["y"]                                                 # (1, M, h, w)
        return y, _run_channels_last(self.model.h_a, y) * gains["z"]      # z: (1, N, h/4, w/4)

    @torch.no_grad()
    def encode_latents(self, y: torch.Tensor, z: torch.Tensor, q: float,
                       semantic: SemanticCondition | None = None) -> tuple[bytes, torch.Tensor]:
        """Encode given latents at rate knob ``q``: ``z`` need not be ``h_a(y)`` (the encoder's refinement,
        :mod:`semcodec.layers.pixels.refine`, chooses both); the decoder is the same.

        Args:
            y: (1, M, h, w) latent after the gains of ``q``, before rounding (CPU float32).
            z: (1, N, h/4, w/4) hyper-latent after the gains of ``q``, before rounding.

        Returns:
            The RES1 payload, and ``ŷ`` (1, M, h, w) in the gained domain exactly as the decoder will
            reconstruct it (see :meth:`reconstruct`).
        """
        return self._encode(y, z, q, semantic, keep_y_hat=True)

    def _encode(self, y: torch.Tensor, z: torch.Tensor, q: float, semantic: SemanticCondition | None,
                keep_y_hat: bool) -> tuple[bytes, torch.Tensor | None]:
        """:meth:`encode_latents`; ``ŷ`` (another latent-sized tensor) only when ``keep_y_hat``."""
        rate = rate_to_fixed(q, self.rate_range)
        z_sym, z_hat = self._quantize_z(z)
        enc = EntropyEncoder()
        enc.encode_categorical(z_sym, self.z_tables, self._z_table_index(z_sym.shape))
        lo, hi = Y_SYMBOL_RANGE
        y_hat = torch.empty_like(y) if keep_y_hat else None                 # (1, M, h, w)
        digests = []
        for rows, cols in param_tiles(y.shape[-2:]):                        # one tile unless the latent is large
            y_tile = y[:, :, rows[0]:rows[1], cols[0]:cols[1]]
            params = self._tile_parameters(z_hat, rate, y.shape[-2:], rows, cols, semantic)
            if self.model.context is not None:  # the non-anchors' parameters depend on the coded anchors
                params = self._after_anchors(params, _y_symbols(y_tile, params.chunk(2, dim=1)[1].float()))
            scale_index, means = _scale_index_and_means(params)
            y_sym = _y_symbols(y_tile, means)     # the anchors' symbols are those the context saw
            for part in self._y_passes(y_sym.shape):
                enc.encode_gaussian(y_sym[part], scale_index[part], SCALE_TABLE, lo=lo, hi=hi)
            digests.append(param_digest(scale_index))
            if y_hat is not None:
                y_hat[:, :, rows[0]:rows[1], cols[0]:cols[1]] = torch.from_numpy(y_sym).float() + means
        payload = ResidualPayload(rate=rate, conditioned=semantic is not None, digest=digests[0],
                                  words=enc.to_bytes(), tile_digests=tuple(digests[1:])).to_bytes()
        return payload, y_hat

    def encode(self, x: torch.Tensor, q: float, semantic: SemanticCondition | None = None) -> bytes:
        """Encode an image x (1, 3, H, W) in [0, 1] at rate knob ``q``."""
        return self.encode_analyzed(self.analyze(x), q, semantic)

    # ------------------------------------------------------------------ decode
    @torch.no_grad()
    def decode(self, payload: bytes, width: int, height: int, semantic: SemanticCondition | None = None,
               tiles_allowed: bool = True) -> np.ndarray:
        """Decode a RES1 payload into the image's pixels (height, width, 3) uint8.

        The work goes tile by tile (see :mod:`.payload`): each tile's digest is checked as soon as its
        parameters are known, and ``g_s`` turns the decoded rows into pixels as they become complete, so
        memory is bounded by a tile's row of the image (besides the image itself). A stream written
        before tiles existed (a large latent without the tiled flag) is decoded whole, as it was coded.

        Args:
            tiles_allowed: the stream's format version defines tiled payloads (1.3 and later).

        Raises:
            CorruptStreamError / TruncatedStreamError: damaged payload (too short for the image it claims,
                a digest that does not match, data left over).
            ModelMismatchError: the payload needs layer 0 conditioning that was not supplied.
        """
        hp, wp = _aligned(height), _aligned(width)
        latent_size = (hp // 16, wp // 16)
        tiles = param_tiles(latent_size)
        p = ResidualPayload.from_bytes(payload, self.rate_range, len(tiles), tiles_allowed)
        if p.conditioned and semantic is None:
            raise ModelMismatchError("the pixel layer was coded conditioned on the semantic layer, which is missing")
        if not p.conditioned:
            semantic = None
        self._check_plausible_size(p, latent_size)
        if not p.tiled:                                                    # coded whole (every stream before 1.3)
            if len(tiles) > 1 and height * width > MAX_UNTILED_PIXELS:
                raise CorruptStreamError(f"the pixel layer of a {width}x{height} image is not coded by tiles, which "
                                         f"no encoder wrote above {MAX_UNTILED_PIXELS // 10**6} megapixels")
            tiles = [((0, latent_size[0]), (0, latent_size[1]))]
        dec = EntropyDecoder(p.words)
        z_shape = (1, self.model.config.N, hp // ALIGN, wp // ALIGN)
        z_sym = dec.decode_categorical(self.z_tables, self._z_table_index(z_shape))
        z_hat = torch.from_numpy(z_sym).float() + self.z_medians[None, :, None, None]
        synthesis = _BandSynthesis(self, p.rate, latent_size, width, height)
        lo, hi = Y_SYMBOL_RANGE
        for tile, ((rows, cols), digest) in enumerate(zip(tiles, p.digests)):
            params = self._tile_parameters(z_hat, p.rate, latent_size, rows, cols, semantic)
            scale_index, means = _scale_index_and_means(params)
            y_sym = np.zeros(scale_index.shape, dtype=np.int32)            # (1, M, tile h, tile w)
            passes = self._y_passes(y_sym.shape)
            if self.model.context is not None:
                anchors = passes.pop(0)
                y_sym[anchors] = dec.decode_gaussian(scale_index[anchors], SCALE_TABLE, lo=lo, hi=hi)
                params = self._after_anchors(params, y_sym)
                scale_index, means = _scale_index_and_means(params)
            if param_digest(scale_index) != digest:
                raise self._digest_failure(tile, len(tiles))
            for part in passes:
                y_sym[part] = dec.decode_gaussian(scale_index[part], SCALE_TABLE, lo=lo, hi=hi)
            synthesis.add(rows, cols, torch.from_numpy(y_sym).float() + means)   # (1, M, tile h, tile w)
        dec.finish()
        return synthesis.pixels

    def _check_plausible_size(self, p: ResidualPayload, latent_size: tuple[int, int]) -> None:
        """Refuse a payload too short to hold the image its header claims, before any work: every symbol of
        ``y`` costs at least :data:`~.payload.MIN_BITS_PER_Y_SYMBOL` bits (the range coder ends within
        64 bits of the information it carries)."""
        symbols = self.model.config.M * latent_size[0] * latent_size[1]
        if len(p.words) * 8 + 64 < symbols * MIN_BITS_PER_Y_SYMBOL:
            raise CorruptStreamError(f"the pixel layer's {len(p.words)} bytes of coded data cannot hold the "
                                     f"{latent_size[1] * 16}x{latent_size[0] * 16} image the header claims "
                                     f"(at least {math.ceil(symbols * MIN_BITS_PER_Y_SYMBOL / 8)} bytes)")

    @staticmethod
    def _digest_failure(tile: int, tiles: int) -> SemcodecError:
        """The error for a tile whose scale indices do not match the digest the encoder stored. The stream
        names this very checkpoint (checked before) and its CRCs passed, so the likely cause is damage that
        kept a valid CRC (a crafted or mis-repaired stream); the other, a machine whose float64 arithmetic
        differs from the encoder's, is named too."""
        where = f"tile {tile + 1} of {tiles}" if tiles > 1 else "the whole latent"
        return CorruptStreamError(f"the pixel layer's entropy parameters do not match the digest its encoder stored "
                                  f"({where}): the stream is damaged (or was written on a machine whose float64 "
                                  "arithmetic differs from this one's); refusing to decode garbage")

    @torch.no_grad()
    def reconstruct(self, y_hat: torch.Tensor, q: float, width: int, height: int) -> torch.Tensor:
        """The decoded image x_hat (1, 3, height, width) in [0, 1] of ``ŷ`` (1, M, h, w) in the gained domain of ``q``."""
        gains = self.model.gains(torch.tensor([rate_to_fixed(q, self.rate_range) / RATE_ONE]))
        x_hat = _run_tiled(self.model.g_s, y_hat * gains["y_inv"],           # (1, 3, Hp, Wp)
                           pixels_per_input=1, pixels_per_output=16)
        return x_hat[:, :, :height, :width].clamp_(0, 1)

    # ------------------------------------------------------------------ shared
    def _quantize_z(self, z: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Symbols of z (clamped to the frozen tables) and the matching z_hat."""
        med = self.z_medians[None, :, None, None]
        sym = torch.round(z - med)
        sym = torch.maximum(torch.minimum(sym, self.z_hi[None, :, None, None]), self.z_lo[None, :, None, None])
        return sym.to(torch.int32).numpy(), sym + med

    def _z_table_index(self, shape: tuple[int, ...]) -> np.ndarray:
        """Channel index of every z symbol: (1, N, a, b)."""
        return np.broadcast_to(np.arange(shape[1], dtype=np.int32)[None, :, None, None], shape)

    def _tile_parameters(self, z_hat: torch.Tensor, rate: int, latent_size: tuple[int, int],
                         rows: tuple[int, int], cols: tuple[int, int],
                         semantic: SemanticCondition | None) -> torch.Tensor:
        """Entropy parameters (scales ‖ means) (1, 2M, tile h, tile w) float64 of the latent's tile ``rows`` ×
        ``cols``, from ``ẑ`` (1, N, h/4, w/4) (and the tokens) of the tile's area widened by
        :data:`~.payload.PARAM_MARGIN` (final for the anchors; the others get
        :meth:`ResidualCodec.context_parameters`). A tile that is the whole latent is computed whole."""
        (h, w), (r0, r1), (c0, c1) = latent_size, rows, cols
        (a0, a1), (b0, b1) = _widened(rows, PARAM_MARGIN, h), _widened(cols, PARAM_MARGIN, w)   # multiples of 4
        exact = self._parameter_path
        gains = exact.gains(torch.tensor([rate / RATE_ONE], dtype=torch.float64))
        if semantic is not None:
            semantic = replace(semantic, tokens=semantic.tokens.double(),
                               region=_sub_region(semantic.region, (h, w), (a0, a1), (b0, b1)))
        z_area = z_hat[:, :, a0 // 4:a1 // 4, b0 // 4:b1 // 4].double()
        params = exact.entropy_parameters(z_area, gains, (a1 - a0, b1 - b0), semantic)
        return params[:, :, r0 - a0:r1 - a0, c0 - b0:c1 - b0]

    def _after_anchors(self, params: torch.Tensor, y_sym: np.ndarray) -> torch.Tensor:
        """Parameters (1, 2M, h, w) float64 of every position once the anchors' symbols (in ``y_sym``,
        (1, M, h, w); its other values are ignored) are known: the context corrects the non-anchors."""
        y_hat = torch.from_numpy(y_sym).double() + params.chunk(2, dim=1)[1]     # ŷ = symbol + μ
        return self._parameter_path.context_parameters(params, y_hat)

    def _y_passes(self, shape: tuple[int, ...]) -> list:
        """Index of each coding pass over y (1, M, h, w): everything in raster order, or the
        checkerboard's anchors then the others (boolean masks), each in raster order."""
        if self.model.context is None:
            return [...]
        anchors = np.broadcast_to(checkerboard_anchors(shape[-2:]).numpy(), shape)
        return [anchors, ~anchors]


def _sub_region(region, latent_size: tuple[int, int], rows: tuple[int, int], cols: tuple[int, int]):
    """The semantic prior's region (top, left, height, width; fractions of the tower input) of the latent's
    area ``rows`` × ``cols``, from the whole latent's ``region``; the region itself for the whole latent."""
    (h, w), (a0, a1), (b0, b1) = latent_size, rows, cols
    if (a0, a1, b0, b1) == (0, h, 0, w):
        return region
    if isinstance(region, list):
        return [_sub_region(r, latent_size, rows, cols) for r in region]
    top, left, height, width = region
    return (top + height * a0 / h, left + width * b0 / w, height * (a1 - a0) / h, width * (b1 - b0) / w)


class _BandSynthesis:
    """``g_s`` of a latent that arrives tile by tile, turned into uint8 pixels band by band.

    The synthesis tiles are those of :func:`_run_tiled` (so the pixels equal a whole decode's); a band of
    them is run as soon as the decoded rows reach its lower margin, and the rows no band needs any more
    are dropped: besides the output image, memory holds at most a parameter tile's row of the latent
    and the band being synthesized.
    """

    def __init__(self, coder: "ResidualCoder", rate: int, latent_size: tuple[int, int], width: int, height: int):
        self.g_s = coder.model.g_s
        self.inverse_gain = coder.model.gains(torch.tensor([rate / RATE_ONE]))["y_inv"]      # (1, M, 1, 1)
        self.h, self.w = latent_size
        self.width, self.height = width, height
        self.pixels = np.empty((height, width, 3), dtype=np.uint8)
        self.bands = _tile_spans(self.h)                   # synthesis rows, pending
        self.rows: list[tuple[int, torch.Tensor]] = []     # (first latent row, (1, M, n, w) decoded rows)
        self.pending: dict[int, list[tuple[tuple[int, int], torch.Tensor]]] = {}   # a row of tiles being decoded

    def add(self, rows: tuple[int, int], cols: tuple[int, int], y_hat: torch.Tensor) -> None:
        """Take the decoded ``ŷ`` (1, M, tile h, tile w) of one tile; synthesize what is complete."""
        parts = self.pending.setdefault(rows[0], [])
        parts.append((cols, y_hat))
        if cols[1] < self.w:
            return                                         # the row of tiles is not complete yet
        del self.pending[rows[0]]
        self.rows.append((rows[0], torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])], dim=-1)))
        done = rows[1]
        while self.bands and _widened(self.bands[0], TILE_MARGIN, self.h)[1] <= done:   # its lower margin is in
            self._synthesize(*self.bands.pop(0))

    def _synthesize(self, r0: int, r1: int) -> None:
        a0, a1 = _widened((r0, r1), TILE_MARGIN, self.h)
        self.rows = [(start, t) for start, t in self.rows if start + t.shape[-2] > a0]   # drop what is behind
        first = self.rows[0][0]
        band = torch.cat([t for _, t in self.rows], dim=-2)[:, :, a0 - first:a1 - first] * self.inverse_gain
        top, bottom = r0 * 16, min(r1 * 16, self.height)
        for c0, c1 in _tile_spans(self.w):
            left, right = c0 * 16, min(c1 * 16, self.width)
            if top >= bottom or left >= right:
                continue                                   # padding only
            b0, b1 = _widened((c0, c1), TILE_MARGIN, self.w)
            x_hat = _run_channels_last(self.g_s, band[:, :, :, b0:b1])        # (1, 3, 16·band h, 16·tile w)
            y0, x0 = (r0 - a0) * 16, (c0 - b0) * 16                          # the tile's kept part in x_hat
            self.pixels[top:bottom, left:right] = tensor_to_image(x_hat[:, :, y0:y0 + bottom - top,
                                                                         x0:x0 + right - left])


def _scale_index_and_means(params: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """Integer scale indices (1, M, h, w) and float32 means of y from float64 (scales ‖ means)."""
    scales, means = params.chunk(2, dim=1)
    return SCALE_TABLE.index_of(scales.numpy()).astype(np.int32), means.float()


def _y_symbols(y: torch.Tensor, means: torch.Tensor) -> np.ndarray:
    """The coded symbols ``round(y - μ)`` (1, M, h, w) int32, clamped to the symbol range."""
    lo, hi = Y_SYMBOL_RANGE
    return torch.round(y - means).clamp_(lo, hi).to(torch.int32).numpy()


def _float64_parameter_path(model: ResidualCodec) -> ResidualCodec:
    """A float64 copy of ``model`` for :meth:`ResidualCodec.entropy_parameters` (``h_s``, gains, semantic priors).

    The transforms that do not feed the entropy coder (``g_a``, ``h_a``, ``g_s``) are left out of the copy.
    """
    left_out = {id(model.g_a): torch.nn.Identity(), id(model.h_a): torch.nn.Identity(),
                id(model.g_s): torch.nn.Identity()}
    return copy.deepcopy(model, memo=left_out).double().eval()


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def padded_size(width: int, height: int) -> tuple[int, int]:
    """``(width, height)`` of an image after padding to the transforms' alignment."""
    return _aligned(width), _aligned(height)


def _run_channels_last(transform: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``transform(x)`` computed in channels-last layout (see :class:`ResidualCoder`), returned contiguous."""
    return transform(x.contiguous(memory_format=torch.channels_last)).contiguous()


def _run_tiled(transform: torch.nn.Module, x: torch.Tensor, pixels_per_input: int,
               pixels_per_output: int) -> torch.Tensor:
    """``transform(x)`` computed over overlapping tiles of the latent grid (see :data:`TILE`).

    Args:
        transform: ``g_a`` (x (1, 3, Hp, Wp) → (1, M, Hp/16, Wp/16)) or ``g_s`` (the reverse).
        x: the input; one latent covers ``pixels_per_input`` of its rows and columns.
        pixels_per_input, pixels_per_output: 16 and 1 for ``g_a``, 1 and 16 for ``g_s``.

    Returns:
        The output, equal to ``transform(x)`` up to the floating-point rounding of the convolutions.
    """
    pi = pixels_per_input
    return _run_tiled_from(transform, lambda rows, cols: x[:, :, rows[0] * pi:rows[1] * pi, cols[0] * pi:cols[1] * pi],
                           (x.shape[-2] // pi, x.shape[-1] // pi), pixels_per_output)


def _run_tiled_from(transform: torch.nn.Module, read: Callable[[tuple[int, int], tuple[int, int]], torch.Tensor],
                    latent_size: tuple[int, int], pixels_per_output: int) -> torch.Tensor:
    """:func:`_run_tiled` with the input given by ``read(rows, cols)``: the input of latent rows and columns
    ``[start, end)`` (so that it need not exist whole, e.g. the float image of :meth:`ResidualCoder.analyze_pixels`)."""
    h, w = latent_size
    if h <= TILE and w <= TILE:
        return _run_channels_last(transform, read((0, h), (0, w)))
    po = pixels_per_output
    out = None
    for r0, r1 in _tile_spans(h):
        a0, a1 = _widened((r0, r1), TILE_MARGIN, h)                           # with the margin
        for c0, c1 in _tile_spans(w):
            b0, b1 = _widened((c0, c1), TILE_MARGIN, w)
            tile = _run_channels_last(transform, read((a0, a1), (b0, b1)))
            if out is None:
                out = tile.new_empty((1, tile.shape[1], h * po, w * po))
            out[:, :, r0 * po:r1 * po, c0 * po:c1 * po] = \
                tile[:, :, (r0 - a0) * po:(r1 - a0) * po, (c0 - b0) * po:(c1 - b0) * po]
    return out


def _widened(span: tuple[int, int], margin: int, n: int) -> tuple[int, int]:
    """``[start, end)`` widened by ``margin`` on both sides, clipped to ``[0, n)``."""
    return max(span[0] - margin, 0), min(span[1] + margin, n)


def _tile_spans(n: int) -> list[tuple[int, int]]:
    """``[start, end)`` of the tiles of ``n`` latents: as few as fit TILE, of (near) equal length."""
    count = -(-n // TILE)
    edges = [i * n // count for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def pad_to_alignment(x: torch.Tensor) -> torch.Tensor:
    """Pad (B, 3, H, W) on the bottom/right by edge replication to multiples of 64."""
    H, W = x.shape[-2:]
    ph, pw = _aligned(H) - H, _aligned(W) - W
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="replicate")


def image_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 → (1, 3, H, W) float in [0, 1]."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidInputError("expected an (H, W, 3) uint8 RGB array")
    pixels = np.require(pixels, requirements=["C", "W"])   # copies only read-only or strided arrays
    return torch.from_numpy(pixels).permute(2, 0, 1)[None].float().div_(255)


def tensor_to_image(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] → (H, W, 3) uint8 (round half up, deterministic)."""
    return torch.floor(x[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def measure_rate_curve(coder: ResidualCoder, images: list[np.ndarray]) -> list[tuple[float, float]]:
    """``(q, mean bpp)`` of the RES1 payload at every integer knob of the rate range, over (H, W, 3) uint8 images."""
    q_min, q_max = coder.rate_range
    analyzed = [(coder.analyze(image_to_tensor(im)), im.shape[0] * im.shape[1]) for im in images]
    return [(float(q), float(np.mean([len(coder.encode_analyzed(y, q)) * 8 / n for y, n in analyzed])))
            for q in range(int(np.ceil(q_min)), int(q_max) + 1)]
