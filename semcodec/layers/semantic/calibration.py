"""The calibration of a semantic tower: computing it, its file format and caps, finding, loading and checking it.

A :class:`Calibration` (``semcodec calibrate``) is part of the codec model: its
file hash is stored in the stream header and a decoder refuses another one. The
file is specified in ``docs/semantic.md`` §2.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from ...errors import InvalidInputError, ModelError, ModelMismatchError, ModelNotAvailableError
from ...fsutil import file_digest, file_digest8
from ...safetensors_io import canonical_bytes, read_checked_metadata, write_bytes_atomic
from ...version import __version__
from .payload import ALPHA_GRID, ALPHA_MAX, DROP_RADIUS_MAX, NUM_PASSES, PASS_RADIUS, _box_sum, pass_map

#: Layout version of calibration files.
CALIBRATION_FORMAT_VERSION = "1"
#: Caps of what a calibration may declare (bounded parsing).
MAX_TOKENS = 4096
MAX_TOKEN_DIM = 4096
_LS_BOUND = 512  # |log2_std_q| <= 512, i.e. σ within 2**±64
FAMILIES = ("gaussian", "laplace")
#: The ``grid`` of a variable-grid calibration (dynamic-resolution towers): the grid is in each payload.
VARIABLE_GRID = (0, 0)
#: Preprocessing modes of fixed-grid towers, and of variable-grid ones.
FIXED_MODES = ("pad-square", "resize-crop", "squash")
VARIABLE_MODES = ("smart-resize",)
#: Shipped calibrations: ``<repo>/checkpoints`` (the repository root is the parent of the package:
#: ``<repo>/semcodec/layers/semantic/calibration.py``).
CHECKPOINT_DIR = Path(__file__).resolve().parents[3] / "checkpoints"


@dataclass(eq=False)
class Calibration:
    """The statistics of one tower's token space that the layer-0 coder needs.

    Float tensors drive the encoder's transform and the decoder's reconstruction;
    the integer tensors are the only inputs of the decoder's entropy parameters.

    Attributes:
        model: Semantic tower id (``SemanticSpec.name``).
        layer: The tower layer the tokens come from.
        preprocessing_id: The tower's preprocessing id.
        grid: Token grid ``(gh, gw)``; ``(0, 0)`` (:data:`VARIABLE_GRID`) for a dynamic-resolution
            tower, whose statistics are position-independent and whose payloads carry their grid.
        token_dim: ``D``.
        preprocessing: ``"pad-square"``, ``"resize-crop"`` or ``"squash"`` (decides which tokens are padding);
            ``"smart-resize"`` for variable grids (no padding).
        input_size: Side of the tower input in pixels (0 for variable grids).
        position_mean: ``(N, D)`` float32 mean image token at each grid position; ``(1, D)``, the mean
            of all tokens, for variable grids.
        padding_mean: ``(N, D)`` float32 mean padding token at each grid position
            (``pad-square``: tokens of the mean-colour border of non-square images); ``(1, D)`` for
            variable grids (equal to ``position_mean``: they have no padding).
        mean: ``(D,)`` float32 mean over all tokens.
        klt: ``(D, D)`` float32 orthonormal KLT, column ``i`` the eigenvector of the
            residual (token minus position mean) covariance with the ``i``-th largest variance.
        variances: ``(D,)`` float32 eigenvalues, non-increasing.
        log2_std_q: ``(D,)`` int32 ``round(8 · log2 σᵢ)``, non-increasing.
        log2_std_pad_q: ``(D,)`` int32 the same for padding tokens (around ``padding_mean``).
        log2_cstd_q: ``(5, D)`` int32 ``round(8 · log2)`` of the residual std of
            component ``i`` after the pass-``p`` prediction (row 0 = ``log2_std_q``).
        alpha_q: ``(5, D)`` int32 prediction weights × 64 per pass (row 0 = 0).
        drop_alpha_q: ``(3, D)`` int32 reconstruction weights × 64 of dropped tokens
            predicted from the kept tokens within radius 1, 2, 3.
        family: ``"laplace"`` or ``"gaussian"``, the entropy model family.
        stats: Token statistics (JSON-able): counts, norms, per-dimension ranges.
        metadata: The file's metadata (after :meth:`save` / :meth:`load`).
        path: The file, when loaded or saved.
    """

    model: str
    layer: int
    preprocessing_id: str
    grid: tuple[int, int]
    token_dim: int
    preprocessing: str
    input_size: int
    position_mean: np.ndarray
    padding_mean: np.ndarray
    mean: np.ndarray
    klt: np.ndarray
    variances: np.ndarray
    log2_std_q: np.ndarray
    log2_std_pad_q: np.ndarray
    log2_cstd_q: np.ndarray
    alpha_q: np.ndarray
    drop_alpha_q: np.ndarray
    family: str
    stats: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    path: Path | None = None
    _bytes_hash: bytes | None = field(default=None, repr=False)

    @property
    def num_tokens(self) -> int:
        """``N`` of a fixed grid (0 for a variable grid)."""
        return self.grid[0] * self.grid[1]

    @property
    def variable_grid(self) -> bool:
        """True for a dynamic-resolution tower's calibration (the grid is in each payload)."""
        return tuple(self.grid) == VARIABLE_GRID

    @property
    def hash8(self) -> bytes:
        """First 8 bytes of the sha256 of the calibration file (what the stream header stores)."""
        if self._bytes_hash is None:
            self._bytes_hash = hashlib.sha256(self.to_bytes()).digest()
        return self._bytes_hash[:8]

    # ---- serialization

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {
            "position_mean": torch.from_numpy(np.ascontiguousarray(self.position_mean, dtype=np.float32)),
            "padding_mean": torch.from_numpy(np.ascontiguousarray(self.padding_mean, dtype=np.float32)),
            "log2_std_pad_q": torch.from_numpy(np.ascontiguousarray(self.log2_std_pad_q, dtype=np.int32)),
            "mean": torch.from_numpy(np.ascontiguousarray(self.mean, dtype=np.float32)),
            "klt": torch.from_numpy(np.ascontiguousarray(self.klt, dtype=np.float32)),
            "variances": torch.from_numpy(np.ascontiguousarray(self.variances, dtype=np.float32)),
            "log2_std_q": torch.from_numpy(np.ascontiguousarray(self.log2_std_q, dtype=np.int32)),
            "log2_cstd_q": torch.from_numpy(np.ascontiguousarray(self.log2_cstd_q, dtype=np.int32)),
            "alpha_q": torch.from_numpy(np.ascontiguousarray(self.alpha_q, dtype=np.int32)),
            "drop_alpha_q": torch.from_numpy(np.ascontiguousarray(self.drop_alpha_q, dtype=np.int32)),
        }

    def _metadata(self) -> dict[str, str]:
        meta = {k: str(v) for k, v in self.metadata.items()}
        meta.update({
            "format_version": CALIBRATION_FORMAT_VERSION,
            "kind": "semantic-calibration",
            "model": self.model,
            "layer": str(self.layer),
            "preprocessing": self.preprocessing_id,
            "grid": f"{self.grid[0]},{self.grid[1]}",
            "token_dim": str(self.token_dim),
            "preprocessing_mode": self.preprocessing,
            "input_size": str(self.input_size),
            "family": self.family,
            "stats": json.dumps(self.stats, sort_keys=True),
        })
        return meta

    def to_bytes(self) -> bytes:
        """The calibration as safetensors bytes (the file :meth:`save` writes)."""
        return canonical_bytes(self._tensors(), self._metadata())

    def save(self, path: str | os.PathLike) -> Path:
        """Writes the calibration atomically; returns the path."""
        data = self.to_bytes()
        path = write_bytes_atomic(path, data)
        self._bytes_hash = hashlib.sha256(data).digest()
        self.metadata = self._metadata()
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        """Loads and validates a calibration file.

        Raises:
            ModelError: unreadable file, wrong kind or version, or tensors that
                contradict the metadata (shapes, integer ranges, non-finite values).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load as st_load

        path = Path(path).expanduser()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelNotAvailableError(f"cannot read calibration {path}: {e.strerror or e}") from None
        try:
            tensors = st_load(data)
        except (SafetensorError, ValueError) as e:
            raise ModelError(f"{path} is not a readable safetensors file: {e}") from None
        meta = read_checked_metadata(path, "semantic-calibration", CALIBRATION_FORMAT_VERSION, "calibration")
        try:
            gh, gw = (int(v) for v in meta["grid"].split(","))
            d = int(meta["token_dim"])
            layer = int(meta["layer"])
            family = meta["family"]
            mode, input_size = meta["preprocessing_mode"], int(meta["input_size"])
            stats = json.loads(meta.get("stats", "{}"))
            arr = {k: tensors[k].numpy() for k in (
                "position_mean", "padding_mean", "mean", "klt", "variances", "log2_std_q", "log2_std_pad_q",
                "log2_cstd_q", "alpha_q", "drop_alpha_q")}
        except (KeyError, ValueError, TypeError) as e:
            raise ModelError(f"malformed calibration {path}: {e}") from None
        cal = cls(model=meta.get("model", ""), layer=layer, preprocessing_id=meta.get("preprocessing", ""),
                  grid=(gh, gw), token_dim=d, preprocessing=mode, input_size=input_size, family=family,
                  stats=stats, metadata=meta, path=path,
                  _bytes_hash=hashlib.sha256(data).digest(), **arr)
        cal.validate(str(path))
        return cal

    def validate(self, where: str = "calibration") -> None:
        """Checks shapes, dtypes and integer ranges; raises ModelError."""
        gh, gw = self.grid
        n, d = gh * gw, self.token_dim
        variable = self.variable_grid
        if not ((variable or (1 <= gh and 1 <= gw and n <= MAX_TOKENS)) and 1 <= d <= MAX_TOKEN_DIM):
            raise ModelError(f"{where}: grid {gh}x{gw} / token_dim {d} outside the supported range")
        if self.family not in FAMILIES:
            raise ModelError(f"{where}: unknown entropy model family {self.family!r}")
        modes_ok = (self.preprocessing in VARIABLE_MODES and self.input_size == 0) if variable else \
            (self.preprocessing in FIXED_MODES and 1 <= self.input_size <= 16384)
        if not modes_ok:
            raise ModelError(f"{where}: unknown preprocessing {self.preprocessing!r} / input size {self.input_size}"
                             f"{' for a variable grid' if variable else ''}")
        n = 1 if variable else n  # one position-independent mean
        shapes = {"position_mean": (n, d), "padding_mean": (n, d), "log2_std_pad_q": (d,),
                  "mean": (d,), "klt": (d, d), "variances": (d,), "log2_std_q": (d,),
                  "log2_cstd_q": (NUM_PASSES, d), "alpha_q": (NUM_PASSES, d), "drop_alpha_q": (DROP_RADIUS_MAX, d)}
        for name, shape in shapes.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.shape != shape:
                raise ModelError(f"{where}: {name} has shape {getattr(a, 'shape', None)}, expected {shape}")
        for name in ("position_mean", "padding_mean", "mean", "klt", "variances"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ModelError(f"{where}: {name} holds non-finite values")
        for name in ("log2_std_q", "log2_std_pad_q", "log2_cstd_q", "alpha_q", "drop_alpha_q"):
            if not np.issubdtype(getattr(self, name).dtype, np.integer):
                raise ModelError(f"{where}: {name} must hold integers")
        if max(np.abs(self.log2_std_q).max(), np.abs(self.log2_cstd_q).max(),
               np.abs(self.log2_std_pad_q).max()) > _LS_BOUND:
            raise ModelError(f"{where}: log2 std values outside ±{_LS_BOUND}")
        if np.any(np.diff(self.log2_std_q.astype(np.int64)) > 0):
            raise ModelError(f"{where}: log2_std_q must be non-increasing (components sorted by variance)")
        if not np.array_equal(self.log2_cstd_q[0], self.log2_std_q) or np.any(self.alpha_q[0] != 0):
            raise ModelError(f"{where}: pass 0 must be the unconditional model")
        if np.abs(self.alpha_q).max() > ALPHA_MAX or np.abs(self.drop_alpha_q).max() > ALPHA_MAX:
            raise ModelError(f"{where}: prediction weights outside ±{ALPHA_MAX}")

    def random_tokens(self, seed: int = 0, count: int | None = None,
                      grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Synthetic tokens with the calibrated statistics (Gaussian), for tests and examples.

        Returns ``(N, D)`` float32, or ``(count, N, D)`` when ``count`` is given; ``grid`` gives
        ``N`` for a variable-grid calibration.
        """
        g = np.random.default_rng(seed)
        n = self.num_tokens
        if self.variable_grid:
            if grid is None:
                raise InvalidInputError("a variable-grid calibration needs grid=(gh, gw) for random tokens")
            n = int(grid[0]) * int(grid[1])
        shape = (count or 1, n, self.token_dim)
        z = g.standard_normal(shape) * np.sqrt(np.maximum(self.variances, 0))[None, None, :]
        t = self.position_mean[None] + z @ self.klt.T.astype(np.float64)
        out = torch.from_numpy(t.astype(np.float32))
        return out if count is not None else out[0]

    def describe(self) -> str:
        s = self.stats
        grid = "a grid per image" if self.variable_grid else f"{self.grid[0]}x{self.grid[1]}"
        return (f"calibration of {self.model} (layer {self.layer}, {self.preprocessing_id}, "
                f"{grid} tokens x {self.token_dim}), hash {self.hash8.hex()}, "
                f"{s.get('num_images', '?')} images, {self.family}")


def _q8_log2(x: np.ndarray) -> np.ndarray:
    """``round(8 · log2 sqrt(x))`` as int32, with x floored at 2**-128."""
    return np.clip(np.rint(4.0 * np.log2(np.maximum(x, 2.0 ** -128))), -_LS_BOUND, _LS_BOUND).astype(np.int32)


def _data_hash(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def padding_mask(preprocessing: str, input_size: int, grid: tuple[int, int], width: int, height: int) -> np.ndarray:
    """Which tokens lie entirely in the padding of a ``width × height`` image, ``(N,)`` bool.

    Only ``pad-square`` pads. The image is pasted at offset ``(side - short) // 2``
    on a ``side × side`` canvas (``side = max(width, height)``), resized to
    ``input_size``. A patch row (column) counts as padding when it lies entirely
    outside the image with a margin of 2 input pixels (the bicubic support).
    Pure integer arithmetic: encoder and decoder agree exactly.
    """
    gh, gw = grid
    n = gh * gw
    if preprocessing != "pad-square" or width == height:
        return np.zeros(n, dtype=bool)
    side, short = max(width, height), min(width, height)
    start = (side - short) // 2
    stop = start + short
    cells = gh if width > height else gw
    patch = input_size // cells
    idx = np.arange(cells, dtype=np.int64)
    # patch [i·P, (i+1)·P) in input pixels ↔ canvas [i·P·side/S, (i+1)·P·side/S)
    before = ((idx + 1) * patch + 2) * side <= start * input_size
    after = (idx * patch - 2) * side >= stop * input_size
    line = before | after
    mask = np.repeat(line[:, None], gw, 1) if width > height else np.repeat(line[None, :], gh, 0)
    return mask.reshape(-1)


def _klt(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigen-decomposition of a (D, D) covariance in decreasing order with semcodec's sign convention (each
    eigenvector's largest-magnitude entry positive); returns ``(evals, evecs, log2_std_q)``, the last made
    non-increasing explicitly."""
    d = cov.shape[0]
    cov = (cov + cov.T) / 2
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(-evals, kind="stable")
    evals = np.maximum(evals[order], 0.0)
    evecs = evecs[:, order]
    evecs *= np.where(evecs[np.abs(evecs).argmax(0), np.arange(d)] < 0, -1.0, 1.0)  # sign convention
    return evals, evecs, np.minimum.accumulate(_q8_log2(evals))


def _pass_context(c: np.ndarray, pm: np.ndarray, img: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The coefficients of pass ``p`` at image positions ``img`` of a (gh, gw, D) grid and their context (the
    mean of the earlier passes' image coefficients within the pass's radius); ``(x, ctx)``, (n, D) each."""
    if p == 0:
        x = c[(pm == 0) & img]
        return x, np.zeros_like(x)
    known = ((pm < p) & img).astype(np.float64)
    ctx_n = _box_sum(known, PASS_RADIUS[p])
    sel = (pm == p) & img & (ctx_n > 0)
    return c[sel], _box_sum(c * known[..., None], PASS_RADIUS[p])[sel] / ctx_n[sel][:, None]


class _PassStatistics:
    """Sums for the per-pass prediction weights, residual stds and drop weights, over images added one by one."""

    def __init__(self, d: int):
        self.sxx, self.sxc, self.scc = (np.zeros((NUM_PASSES, d)) for _ in range(3))
        self.cnt = np.zeros(NUM_PASSES)
        self.dxc, self.dcc = np.zeros((DROP_RADIUS_MAX, d)), np.zeros((DROP_RADIUS_MAX, d))

    def add(self, c: np.ndarray, pm: np.ndarray, img: np.ndarray) -> None:
        """One image's (gh, gw, D) coefficients, its pass map and its image positions (bool (gh, gw))."""
        for p in range(NUM_PASSES):
            x, ctx = _pass_context(c, pm, img, p)
            self.sxx[p] += (x * x).sum(0)
            self.sxc[p] += (x * ctx).sum(0)
            self.scc[p] += (ctx * ctx).sum(0)
            self.cnt[p] += x.shape[0]
        imgf = img.astype(np.float64)
        for rho in range(1, DROP_RADIUS_MAX + 1):
            ring_n = _box_sum(imgf, rho) - imgf
            sel = img & (ring_n > 0)
            ctx = (_box_sum(c * imgf[..., None], rho) - c * imgf[..., None])[sel] / ring_n[sel][:, None]
            self.dxc[rho - 1] += (c[sel] * ctx).sum(0)
            self.dcc[rho - 1] += (ctx * ctx).sum(0)

    def parameters(self, ls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(alpha_q, a, res_var, cstd_q, drop_alpha_q)``: the quantized prediction weights per pass (0 for pass 0),
        their values, the residual variances, their quantized log2 stds (pass 0: ``ls``) and the drop weights."""
        alpha_q = np.clip(np.rint(self.sxc / np.maximum(self.scc, 1e-300) * ALPHA_GRID), -ALPHA_MAX,
                          ALPHA_MAX).astype(np.int32)
        alpha_q[0] = 0
        a = alpha_q / ALPHA_GRID
        res_var = (self.sxx - 2 * a * self.sxc + a * a * self.scc) / np.maximum(self.cnt, 1)[:, None]
        cstd_q = _q8_log2(res_var)
        cstd_q[0] = ls
        drop_alpha_q = np.clip(np.rint(self.dxc / np.maximum(self.dcc, 1e-300) * ALPHA_GRID), -ALPHA_MAX, ALPHA_MAX)
        return alpha_q, a, res_var, cstd_q, drop_alpha_q


def _entropy_family(grids, a: np.ndarray, res_var: np.ndarray, evals: np.ndarray) -> tuple[str, dict[str, float]]:
    """The better log-likelihood family (``"gaussian"``/``"laplace"``) of the residuals of the strongest components
    (95 % of the variance), over ``grids``: ``(c, pm, img)`` triples as for :meth:`_PassStatistics.add`."""
    top = max(1, int(np.searchsorted(np.cumsum(evals) / max(evals.sum(), 1e-300), 0.95)) + 1)
    res_std = np.sqrt(np.maximum(res_var[:, :top], 1e-300))
    ll = {"gaussian": 0.0, "laplace": 0.0}
    for c, pm, img in grids:
        for p in range(NUM_PASSES):
            x, ctx = _pass_context(c, pm, img, p)
            z = (x[:, :top] - a[p, :top] * ctx[:, :top]) / res_std[p]
            ll["gaussian"] += float((-0.5 * z * z - 0.5 * math.log(2 * math.pi)).sum())
            ll["laplace"] += float((-math.sqrt(2) * np.abs(z) - math.log(math.sqrt(2))).sum())
    return ("laplace" if ll["laplace"] >= ll["gaussian"] else "gaussian"), ll


def calibrate(tower, image_paths: Iterable[str | os.PathLike], batch_size: int = 8,
              progress: Callable[[int], None] | None = None, max_cache_bytes: int = 1 << 29) -> Calibration:
    """Computes a tower's calibration from a folder of photos.

    Streams the images through the tower, ``batch_size`` at a time (each photo is read, turned
    into the tower input and let go: memory holds one batch of inputs, the float64 sums and the
    float16 token cache, whatever the photos' sizes), and accumulates, in float64, per-position
    means of image tokens and of padding tokens (``pad-square``) and the
    covariance of image tokens around their position mean; its
    eigendecomposition is the KLT. The integer entropy-model parameters
    (per-pass prediction weights and residual stds, the padding tokens' stds)
    and the reconstruction weights of dropped tokens are fitted on the KLT
    coefficients of the images kept in memory.

    Args:
        tower: a :class:`~semcodec.models.semantic.SemanticTower`.
        image_paths: image files (at least 2). Never calibrate on the test set (Kodak).
        batch_size: images per tower call.
        progress: called with the number of images done after each batch.
        max_cache_bytes: tokens kept in memory (float16) for the second-pass
            statistics; beyond it a deterministic subset of images is used.

    Returns:
        The calibration (call :meth:`Calibration.save`).

    Raises:
        InvalidInputError: fewer than 2 readable images.
    """
    from PIL import Image

    from ...imageio import load_rgb

    spec = tower.spec
    paths = sorted(Path(p) for p in image_paths)
    if getattr(spec, "variable_grid", False):
        return _calibrate_variable_grid(tower, paths, progress, max_cache_bytes)
    n, d = spec.num_tokens, spec.token_dim
    gh, gw = spec.grid

    def pad_of(size: tuple[int, int]) -> np.ndarray:
        return padding_mask(spec.preprocessing, spec.image_size, spec.grid, *size)

    sum_img, sum_pad = np.zeros((n, d)), np.zeros((n, d))
    cnt_img, cnt_pad = np.zeros(n), np.zeros(n)
    gram = np.zeros((d, d))
    norm_sum = norm_sq = 0.0
    dim_min = np.full(d, np.inf)
    dim_max = np.full(d, -np.inf)
    keep_every = max(1, math.ceil(len(paths) * n * d * 2 / max_cache_bytes))
    cache: list[tuple[np.ndarray, np.ndarray]] = []
    used: list[Path] = []
    skipped: list[str] = []
    done = 0
    for i in range(0, len(paths), batch_size):
        inputs, sizes, names = [], [], []
        for p in paths[i:i + batch_size]:
            try:
                image = Image.fromarray(load_rgb(p))                   # as the encoder reads it
            except InvalidInputError:
                skipped.append(p.name)
                continue
            inputs.append(tower.preprocess(image))                      # (3, S, S): the photo itself is let go
            sizes.append(image.size)
            names.append(p)
            del image
        if inputs:
            t = tower.tokens_from_tensor(torch.stack(inputs)).cpu().double().numpy()  # (B, N, D)
            inputs.clear()
            for k, (size, p) in enumerate(zip(sizes, names)):
                pad = pad_of(size)
                img = ~pad
                sum_img[img] += t[k, img]
                cnt_img += img
                sum_pad[pad] += t[k, pad]
                cnt_pad += pad
                gram += t[k, img].T @ t[k, img]
                if (len(used) + k) % keep_every == 0:
                    cache.append((t[k].astype(np.float16), pad))
            flat = t.reshape(-1, d)
            norms = np.linalg.norm(flat, axis=1)
            norm_sum += norms.sum()
            norm_sq += (norms ** 2).sum()
            dim_min = np.minimum(dim_min, flat.min(0))
            dim_max = np.maximum(dim_max, flat.max(0))
            used.extend(names)
        done += len(paths[i:i + batch_size])
        if progress is not None:
            progress(done)
    if len(used) < 2:
        raise InvalidInputError(f"calibration needs at least 2 readable images, found {len(used)}")
    m = len(used)
    mean = (sum_img.sum(0) + sum_pad.sum(0)) / (m * n)
    img_mean = sum_img.sum(0) / max(cnt_img.sum(), 1)
    position_mean = np.where(cnt_img[:, None] > 0, sum_img / np.maximum(cnt_img, 1)[:, None], img_mean)
    pad_all = sum_pad.sum(0) / cnt_pad.sum() if cnt_pad.sum() else None
    padding_mean = np.where(cnt_pad[:, None] > 0, sum_pad / np.maximum(cnt_pad, 1)[:, None],
                            position_mean if pad_all is None else pad_all)
    # Covariance of image tokens around their position mean: E[t tᵀ] - Σ_p cnt_p μ_p μ_pᵀ / Σ cnt.
    total = max(cnt_img.sum(), 1)
    cov = (gram - (position_mean * cnt_img[:, None]).T @ position_mean) / total
    evals, evecs, ls = _klt(cov)

    # Second pass on cached tokens: prediction weights and residual stds per pass (image tokens only).
    pm = pass_map(gh, gw)
    pass_stats = _PassStatistics(d)
    pad_sq, pad_n = np.zeros(d), 0

    def coefficients(t16: np.ndarray, pad: np.ndarray) -> np.ndarray:
        mu = np.where(pad[:, None], padding_mean, position_mean)
        return ((t16.astype(np.float64) - mu) @ evecs).reshape(gh, gw, d)

    for t16, pad in cache:
        c = coefficients(t16, pad)
        img = ~pad.reshape(gh, gw)
        pad_sq += (c[~img] ** 2).sum(0)
        pad_n += int((~img).sum())
        pass_stats.add(c, pm, img)
    alpha_q, a, res_var, cstd_q, drop_alpha_q = pass_stats.parameters(ls)
    pad_std_q = _q8_log2(pad_sq / pad_n) if pad_n else ls.copy()
    family, ll = _entropy_family(((coefficients(t16, pad), pm, ~pad.reshape(gh, gw)) for t16, pad in cache[:32]),
                                 a, res_var, evals)

    stats = {
        "num_images": m, "num_tokens": m * n, "padding_tokens": int(cnt_pad.sum()), "skipped_images": len(skipped),
        "stats_images": len(cache), "family_loglik": ll,
        "token_norm_mean": norm_sum / (m * n),
        "token_norm_std": math.sqrt(max(norm_sq / (m * n) - (norm_sum / (m * n)) ** 2, 0)),
        "total_variance": float(evals.sum()),
        "position_mean_variance": float(((position_mean - img_mean) ** 2).sum(1).mean()),
        "padding_variance": float(pad_sq.sum() / pad_n) if pad_n else 0.0,
        "components_for_90pct": int(np.searchsorted(np.cumsum(evals) / max(evals.sum(), 1e-300), 0.9) + 1),
        "dim_min": float(dim_min.min()), "dim_max": float(dim_max.max()),
    }
    metadata = {
        "open_clip_arch": spec.open_clip_arch, "pretrained": spec.pretrained,
        "tower_weights_sha256": _weights_digest(getattr(tower, "weights", None)),
        "data_hash": _data_hash(used), "num_images": str(m), "num_tokens": str(m * n),
        "semcodec_version": __version__,
    }
    return Calibration(model=spec.name, layer=spec.layer, preprocessing_id=spec.preprocessing_id, grid=spec.grid,
                       token_dim=d, preprocessing=spec.preprocessing, input_size=spec.image_size,
                       position_mean=position_mean.astype(np.float32), padding_mean=padding_mean.astype(np.float32),
                       mean=mean.astype(np.float32), klt=evecs.astype(np.float32), variances=evals.astype(np.float32),
                       log2_std_q=ls, log2_cstd_q=cstd_q, log2_std_pad_q=pad_std_q.astype(np.int32),
                       alpha_q=alpha_q, drop_alpha_q=drop_alpha_q.astype(np.int32),
                       family=family, stats=stats, metadata=metadata)


def _calibrate_variable_grid(tower, paths: list[Path], progress: Callable[[int], None] | None,
                             max_cache_bytes: int) -> Calibration:
    """:func:`calibrate` for a dynamic-resolution tower: one grid per image, position-independent statistics.

    The mean ``μ`` and the covariance (hence the KLT) are taken over every token of every
    image; the per-pass prediction weights, residual stds and drop weights are fitted as for
    fixed grids, each image on its own grid (``pass_map(gh, gw)``). Images are cached (float16)
    for that second pass in path order until ``max_cache_bytes`` is reached. There is no padding.
    """
    from PIL import Image

    from ...imageio import load_rgb

    spec = tower.spec
    d = spec.token_dim
    total, gram = np.zeros(d), np.zeros((d, d))
    count = 0
    norm_sum = norm_sq = 0.0
    dim_min, dim_max = np.full(d, np.inf), np.full(d, -np.inf)
    cache: list[tuple[np.ndarray, tuple[int, int]]] = []
    cached_bytes = 0
    used: list[Path] = []
    skipped: list[str] = []
    grids: list[int] = []
    for done, p in enumerate(paths, 1):
        try:
            image = Image.fromarray(load_rgb(p))                       # as the encoder reads it
        except InvalidInputError:
            skipped.append(p.name)
        else:
            grid = tower.grid(*image.size)
            t = tower.tokens([image])[0].double().numpy()               # (N_i, D)
            total += t.sum(0)
            gram += t.T @ t
            count += t.shape[0]
            norms = np.linalg.norm(t, axis=1)
            norm_sum += norms.sum()
            norm_sq += (norms ** 2).sum()
            dim_min, dim_max = np.minimum(dim_min, t.min(0)), np.maximum(dim_max, t.max(0))
            if cached_bytes + t.size * 2 <= max_cache_bytes or not cache:
                cache.append((t.astype(np.float16), grid))
                cached_bytes += t.size * 2
            used.append(p)
            grids.append(t.shape[0])
        if progress is not None:
            progress(done)
    if len(used) < 2:
        raise InvalidInputError(f"calibration needs at least 2 readable images, found {len(used)}")
    mean = total / count
    cov = gram / count - np.outer(mean, mean)
    evals, evecs, ls = _klt(cov)

    def coefficients(t16: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        return ((t16.astype(np.float64) - mean) @ evecs).reshape(*grid, d)

    def coefficient_grids(items):
        """(coefficients, pass map, image positions: all of them) of cached images."""
        for t16, grid in items:
            yield coefficients(t16, grid), pass_map(*grid), np.ones(grid, dtype=bool)

    pass_stats = _PassStatistics(d)
    for c, pm, img in coefficient_grids(cache):
        pass_stats.add(c, pm, img)
    alpha_q, a, res_var, cstd_q, drop_alpha_q = pass_stats.parameters(ls)
    family, ll = _entropy_family(coefficient_grids(cache[:32]), a, res_var, evals)

    m = len(used)
    stats = {
        "num_images": m, "num_tokens": count, "padding_tokens": 0, "skipped_images": len(skipped),
        "stats_images": len(cache), "family_loglik": ll, "tokens_per_image_min": min(grids),
        "tokens_per_image_max": max(grids), "token_norm_mean": norm_sum / count,
        "token_norm_std": math.sqrt(max(norm_sq / count - (norm_sum / count) ** 2, 0)),
        "total_variance": float(evals.sum()), "position_mean_variance": 0.0, "padding_variance": 0.0,
        "components_for_90pct": int(np.searchsorted(np.cumsum(evals) / max(evals.sum(), 1e-300), 0.9) + 1),
        "dim_min": float(dim_min.min()), "dim_max": float(dim_max.max()),
    }
    metadata = {
        "open_clip_arch": spec.open_clip_arch, "pretrained": spec.pretrained,
        "tower_weights_sha256": _weights_digest(getattr(tower, "weights", None)),
        "data_hash": _data_hash(used), "num_images": str(m), "num_tokens": str(count),
        "semcodec_version": __version__,
    }
    mu = mean[None].astype(np.float32)                                   # (1, D)
    return Calibration(model=spec.name, layer=spec.layer, preprocessing_id=spec.preprocessing_id, grid=VARIABLE_GRID,
                       token_dim=d, preprocessing=spec.preprocessing, input_size=0, position_mean=mu,
                       padding_mean=mu.copy(), mean=mean.astype(np.float32), klt=evecs.astype(np.float32),
                       variances=evals.astype(np.float32), log2_std_q=ls, log2_cstd_q=cstd_q,
                       log2_std_pad_q=ls.copy(), alpha_q=alpha_q, drop_alpha_q=drop_alpha_q.astype(np.int32),
                       family=family, stats=stats, metadata=metadata)


def _weights_digest(path) -> str:
    if not path or not Path(path).is_file():
        return ""
    return file_digest(path).hex()


# --------------------------------------------------------------------------- finding calibrations


def calibration_dirs() -> list[Path]:
    """Where calibrations are looked for, in order.

    ``$SEMCODEC_CALIBRATION_PATH`` (``os.pathsep``-separated), ``<repo>/checkpoints``,
    ``~/.cache/semcodec/calibrations``.
    """
    dirs = [Path(p).expanduser() for p in os.environ.get("SEMCODEC_CALIBRATION_PATH", "").split(os.pathsep) if p]
    dirs += [CHECKPOINT_DIR, Path("~/.cache/semcodec/calibrations").expanduser()]
    return dirs


def user_calibration_path(name: str) -> str:
    """Where `semcodec calibrate` puts a calibration of tower ``name`` for this user (found there on use)."""
    return f"~/.cache/semcodec/calibrations/calibration-{name}.safetensors"


def find_calibration(name: str, hash8: bytes | None = None) -> Path:
    """Finds the calibration file of tower ``name`` (optionally the one with a given hash).

    Looks for ``calibration-<name>.safetensors`` and ``calibration-<name>-*.safetensors``
    in :func:`calibration_dirs`.

    Raises:
        ModelNotAvailableError: none found; the message says where it looked and
            the command that makes one.
        ModelMismatchError: calibrations of ``name`` exist, but none has ``hash8``.
    """
    found: list[Path] = []
    dirs = calibration_dirs()
    for d in dirs:
        if not d.is_dir():
            continue
        cands = [d / f"calibration-{name}.safetensors"] + sorted(d.glob(f"calibration-{name}-*.safetensors"))
        found.extend(p for p in cands if p.is_file())
    if hash8 is None and found:
        return found[0]
    for p in found:
        if file_digest8(p) == hash8:
            return p
    where = ", ".join(str(d) for d in dirs)
    need = f"calibration {hash8.hex()} of semantic tower {name}" if hash8 else f"a calibration of semantic tower {name}"
    if found:
        raise ModelMismatchError(
            f"this needs {need}, but the calibrations found ({', '.join(f'{p} = {file_digest8(p).hex()}' for p in found)}) "
            "are other ones; a calibration is part of the codec model: get the exact file the encoder used "
            f"and put it in one of: {where}")
    make = (f"semcodec calibrate --semantic {name} --images DIR -o {user_calibration_path(name)}")
    extra = " (a stream needs the very file its encoder used; a new calibration has another hash)" if hash8 else ""
    raise ModelNotAvailableError(f"{need} is not on this machine (looked in {where}); make one with: {make}{extra}")


_CAL_CACHE: dict[tuple, Calibration] = {}


def load_calibration(path: str | os.PathLike) -> Calibration:
    """:meth:`Calibration.load` with a cache keyed by path, mtime and size."""
    path = Path(path).expanduser().resolve()
    try:
        st = path.stat()
    except OSError as e:
        raise ModelNotAvailableError(f"cannot read calibration {path}: {e.strerror or e}") from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _CAL_CACHE:
        if len(_CAL_CACHE) > 8:
            _CAL_CACHE.clear()
        _CAL_CACHE[key] = Calibration.load(path)
    return _CAL_CACHE[key]


def check_calibration(calibration: Calibration, semantic_model: str, hash8: bytes, preprocessing: str | None = None) -> None:
    """Raises ModelMismatchError unless ``calibration`` is the one a stream header names."""
    if calibration.model != semantic_model:
        raise ModelMismatchError(f"the stream's semantic layer is for tower {semantic_model}, "
                                 f"but the calibration is for {calibration.model}")
    if calibration.hash8 != bytes(hash8):
        raise ModelMismatchError(f"the stream needs calibration {bytes(hash8).hex()} of {semantic_model}, "
                                 f"but the one given is {calibration.hash8.hex()}")
    if preprocessing is not None and preprocessing != calibration.preprocessing_id:
        raise ModelMismatchError(f"the stream's preprocessing {preprocessing} differs from the calibration's "
                                 f"{calibration.preprocessing_id}")

