"""Layer 0: calibration and transform coding of semantic tokens (the ``SEM0`` payload).

::

    tokens T (N, D) ── − μ (per position; padding tokens of pad-square: their own mean)
      ── · U (KLT, D×D) ── c (N, D)
      │ keep K of N (greedy: drop the tokens best predicted by kept neighbours)
      │ θ = σ₀²·2^(−r/8) (one integer rate index r); components with σᵢ² ≤ θ cost 0 bits
      └ s = round(c / Δ), Δ = √(12θ), for the M components with σᵢ² > θ
          └ range coder, 5 hierarchical passes over the token grid; each symbol's
            model is a Laplace/Gaussian whose scale index and mean (on a 1/16 grid)
            are integer functions of the calibration, r, a gain byte, the image
            size (padding tokens) and the symbols of already decoded neighbours
    decoder: ĉ = (s moved toward its model mean by the bin-centroid offset)·Δ for kept tokens,
             dropped tokens = α_ρ · mean of kept neighbours within ρ,
             T̂ = μ + ĉ · U[:, :M]ᵀ

A :class:`Calibration` (``semcodec calibrate``) is part of the codec model: its
file hash is stored in the stream header and a decoder refuses another one. The
payload format and the algorithms are specified in ``docs/semantic.md``.

Determinism: everything that reaches the entropy coder on the decoder side is an
integer computed with integer arithmetic from the calibration's integer tensors
(``log2_std_q``, ``log2_cstd_q``, ``alpha_q``), the payload's header fields and
previously decoded symbols. Floats appear only in the reconstruction (float64,
then rounded to float32).

Example:
    >>> from semcodec.semantic_coder import SemanticCoder, find_calibration, Calibration
    >>> coder = SemanticCoder(Calibration.load(find_calibration("tiny")))
    >>> import torch; tokens = coder.calibration.random_tokens(seed=0)
    >>> payload = coder.encode(tokens, rate=40, image_size=(768, 512))
    >>> coder.decode(payload, image_size=(768, 512)).full.shape
    torch.Size([196, 192])
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .errors import (
    CorruptStreamError,
    InvalidInputError,
    MissingLayerError,
    ModelError,
    ModelMismatchError,
    ModelNotAvailableError,
    RateControlError,
    TruncatedStreamError,
    UnsupportedVersionError,
)
from .fsutil import file_digest, file_digest8
from .safetensors_io import canonical_bytes, read_checked_metadata, write_bytes_atomic
from .version import __version__

__all__ = [
    "Calibration",
    "DecodedTokens",
    "SemanticCoder",
    "Tokens",
    "calibrate",
    "calibration_dirs",
    "check_calibration",
    "coder_for",
    "decode_tokens",
    "find_calibration",
    "load_calibration",
    "padding_mask",
    "semantic_only_stream",
]

# --------------------------------------------------------------------------- constants (part of the format)

#: Layout version of calibration files.
CALIBRATION_FORMAT_VERSION = "1"
#: Version byte of the SEM0 payload.
PAYLOAD_VERSION = 1
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
#: Caps of what a calibration may declare (bounded parsing).
MAX_TOKENS = 4096
MAX_TOKEN_DIM = 4096
_LS_BOUND = 512  # |log2_std_q| <= 512, i.e. σ within 2**±64
FAMILIES = ("gaussian", "laplace")
#: Shipped calibrations: ``<repo>/checkpoints`` (the repository root is the parent of the package).
CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "checkpoints"


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
    from .bitstream.entropy import ScaleTable

    c = 1.0 / math.sqrt(12.0) if family == "gaussian" else 1.0 / math.sqrt(24.0)
    return ScaleTable.geometric(min=2.0 ** (U_MIN / 16) * c, max=2.0 ** (U_MAX / 16) * c, count=U_MAX - U_MIN + 1)


# --------------------------------------------------------------------------- calibration


@dataclass(eq=False)
class Calibration:
    """The statistics of one tower's token space that the layer-0 coder needs.

    Float tensors drive the encoder's transform and the decoder's reconstruction;
    the integer tensors are the only inputs of the decoder's entropy parameters.

    Attributes:
        model: Semantic tower id (``SemanticSpec.name``).
        layer: The tower layer the tokens come from.
        preprocessing_id: The tower's preprocessing id.
        grid: Token grid ``(gh, gw)``.
        token_dim: ``D``.
        preprocessing: ``"pad-square"`` or ``"resize-crop"`` (decides which tokens are padding).
        input_size: Side of the tower input in pixels.
        position_mean: ``(N, D)`` float32 mean image token at each grid position.
        padding_mean: ``(N, D)`` float32 mean padding token at each grid position
            (``pad-square``: tokens of the mean-colour border of non-square images).
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
        return self.grid[0] * self.grid[1]

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
        if not (1 <= gh and 1 <= gw and n <= MAX_TOKENS and 1 <= d <= MAX_TOKEN_DIM):
            raise ModelError(f"{where}: grid {gh}x{gw} / token_dim {d} outside the supported range")
        if self.family not in FAMILIES:
            raise ModelError(f"{where}: unknown entropy model family {self.family!r}")
        if self.preprocessing not in ("pad-square", "resize-crop") or not 1 <= self.input_size <= 16384:
            raise ModelError(f"{where}: unknown preprocessing {self.preprocessing!r} / input size {self.input_size}")
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

    def random_tokens(self, seed: int = 0, count: int | None = None) -> torch.Tensor:
        """Synthetic tokens with the calibrated statistics (Gaussian), for tests and examples.

        Returns ``(N, D)`` float32, or ``(count, N, D)`` when ``count`` is given.
        """
        g = np.random.default_rng(seed)
        shape = (count or 1, self.num_tokens, self.token_dim)
        z = g.standard_normal(shape) * np.sqrt(np.maximum(self.variances, 0))[None, None, :]
        t = self.position_mean[None] + z @ self.klt.T.astype(np.float64)
        out = torch.from_numpy(t.astype(np.float32))
        return out if count is not None else out[0]

    def describe(self) -> str:
        s = self.stats
        return (f"calibration of {self.model} (layer {self.layer}, {self.preprocessing_id}, "
                f"{self.grid[0]}x{self.grid[1]} tokens x {self.token_dim}), hash {self.hash8.hex()}, "
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


def calibrate(tower, image_paths: Iterable[str | os.PathLike], batch_size: int = 8,
              progress: Callable[[int], None] | None = None, max_cache_bytes: int = 1 << 29) -> Calibration:
    """Computes a tower's calibration from a folder of photos.

    Runs the tower over every image and accumulates, in float64, per-position
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

    from .imageio import load_rgb

    spec = tower.spec
    paths = sorted(Path(p) for p in image_paths)
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
        batch, names = [], []
        for p in paths[i:i + batch_size]:
            try:
                batch.append(Image.fromarray(load_rgb(p)))             # as the encoder reads it
                names.append(p)
            except InvalidInputError:
                skipped.append(p.name)
        if batch:
            t = tower.tokens(batch, batch_size=batch_size).double().numpy()  # (B, N, D)
            for k, (im, p) in enumerate(zip(batch, names)):
                pad = pad_of(im.size)
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
    cov = (cov + cov.T) / 2
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(-evals, kind="stable")
    evals = np.maximum(evals[order], 0.0)
    evecs = evecs[:, order]
    evecs *= np.where(evecs[np.abs(evecs).argmax(0), np.arange(d)] < 0, -1.0, 1.0)  # sign convention
    ls = np.minimum.accumulate(_q8_log2(evals))  # non-increasing by construction; made explicit

    # Second pass on cached tokens: prediction weights and residual stds per pass (image tokens only).
    pm = pass_map(gh, gw)
    sxx, sxc, scc = (np.zeros((NUM_PASSES, d)) for _ in range(3))
    cnt = np.zeros(NUM_PASSES)
    dxc, dcc = np.zeros((DROP_RADIUS_MAX, d)), np.zeros((DROP_RADIUS_MAX, d))
    pad_sq, pad_n = np.zeros(d), 0

    def coefficients(t16: np.ndarray, pad: np.ndarray) -> np.ndarray:
        mu = np.where(pad[:, None], padding_mean, position_mean)
        return ((t16.astype(np.float64) - mu) @ evecs).reshape(gh, gw, d)

    def pass_context(c: np.ndarray, img: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
        if p == 0:
            x = c[(pm == 0) & img]
            return x, np.zeros_like(x)
        known = ((pm < p) & img).astype(np.float64)
        ctx_n = _box_sum(known, PASS_RADIUS[p])
        sel = (pm == p) & img & (ctx_n > 0)
        return c[sel], _box_sum(c * known[..., None], PASS_RADIUS[p])[sel] / ctx_n[sel][:, None]

    for t16, pad in cache:
        c = coefficients(t16, pad)
        img = ~pad.reshape(gh, gw)
        pad_sq += (c[~img] ** 2).sum(0)
        pad_n += int((~img).sum())
        for p in range(NUM_PASSES):
            x, ctx = pass_context(c, img, p)
            sxx[p] += (x * x).sum(0)
            sxc[p] += (x * ctx).sum(0)
            scc[p] += (ctx * ctx).sum(0)
            cnt[p] += x.shape[0]
        imgf = img.astype(np.float64)
        for rho in range(1, DROP_RADIUS_MAX + 1):
            ring_n = _box_sum(imgf, rho) - imgf
            sel = img & (ring_n > 0)
            ctx = (_box_sum(c * imgf[..., None], rho) - c * imgf[..., None])[sel] / ring_n[sel][:, None]
            dxc[rho - 1] += (c[sel] * ctx).sum(0)
            dcc[rho - 1] += (ctx * ctx).sum(0)
    alpha_q = np.clip(np.rint(sxc / np.maximum(scc, 1e-300) * ALPHA_GRID), -ALPHA_MAX, ALPHA_MAX).astype(np.int32)
    alpha_q[0] = 0
    a = alpha_q / ALPHA_GRID
    res_var = (sxx - 2 * a * sxc + a * a * scc) / np.maximum(cnt, 1)[:, None]
    cstd_q = _q8_log2(res_var)
    cstd_q[0] = ls
    drop_alpha_q = np.clip(np.rint(dxc / np.maximum(dcc, 1e-300) * ALPHA_GRID), -ALPHA_MAX, ALPHA_MAX)
    pad_std_q = _q8_log2(pad_sq / pad_n) if pad_n else ls.copy()

    # Entropy model family: the better log-likelihood of the residuals of the strongest components.
    top = max(1, int(np.searchsorted(np.cumsum(evals) / max(evals.sum(), 1e-300), 0.95)) + 1)
    res_std = np.sqrt(np.maximum(res_var[:, :top], 1e-300))
    ll = {"gaussian": 0.0, "laplace": 0.0}
    for t16, pad in cache[:32]:
        c = coefficients(t16, pad)
        img = ~pad.reshape(gh, gw)
        for p in range(NUM_PASSES):
            x, ctx = pass_context(c, img, p)
            z = (x[:, :top] - a[p, :top] * ctx[:, :top]) / res_std[p]
            ll["gaussian"] += float((-0.5 * z * z - 0.5 * math.log(2 * math.pi)).sum())
            ll["laplace"] += float((-math.sqrt(2) * np.abs(z) - math.log(math.sqrt(2))).sum())
    family = "laplace" if ll["laplace"] >= ll["gaussian"] else "gaussian"

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


# --------------------------------------------------------------------------- coder


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


class SemanticCoder:
    """Codes ``(N, D)`` tokens of one calibrated tower into SEM0 payloads and back.

    ``image_size`` (``(width, height)`` of the coded image, from the stream
    header) tells both sides which tokens are padding (``pad-square``); it must
    be the same when encoding and decoding. ``None`` means a square image.

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
        self.grid = cal.grid
        self.n = cal.num_tokens
        self.d = cal.token_dim
        self._ls = cal.log2_std_q.astype(np.int64)
        self._ls_pad = cal.log2_std_pad_q.astype(np.int64)
        self._lcs = cal.log2_cstd_q.astype(np.int64)
        self._alpha = cal.alpha_q.astype(np.int64)
        self._drop_alpha = cal.drop_alpha_q.astype(np.float64) / ALPHA_GRID
        self._pm = pass_map(*cal.grid).reshape(-1)
        self._table = _scale_table(cal.family)
        self._klt = cal.klt.astype(np.float64)
        self._mu_img = cal.position_mean.astype(np.float64)
        self._mu_pad = cal.padding_mean.astype(np.float64)
        # Laplace scale b (symbol units) of every table entry, and its bin-centroid offset δ(b).
        b = self._table.scales * (1.0 if cal.family == "laplace" else 1.0 / math.sqrt(2.0))
        with np.errstate(over="ignore"):
            self._delta = np.clip(0.5 - b + 1.0 / np.expm1(1.0 / b), 0.0, 0.5)

    @property
    def rate_range(self) -> range:
        """Valid rate indices (larger = more bytes, lower distortion)."""
        return range(0, RATE_MAX + 1)

    def padding(self, image_size: tuple[int, int] | None) -> np.ndarray:
        """``(N,)`` bool: the padding tokens of an image of this size (see :func:`padding_mask`)."""
        if image_size is None:
            return np.zeros(self.n, dtype=bool)
        w, h = (int(v) for v in image_size)
        if w < 1 or h < 1:
            raise InvalidInputError(f"image size {w}x{h} is empty")
        cal = self.calibration
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

    def drop_order(self, tokens, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """Positions in the order the encoder drops them (first = most predictable).

        ``keep=K`` keeps every position except the first ``N - K`` of this order.
        Greedy: repeatedly drop the kept token that the decoder would reconstruct
        best from its kept neighbours (padding tokens: from their mean), measured
        on the strongest components (95 % of the variance, at most 64).
        """
        pad = self.padding(image_size)
        return self._drop_order(self._coefficients(tokens, pad), pad)

    def _drop_order(self, c: np.ndarray, pad: np.ndarray) -> np.ndarray:
        gh, gw = self.grid
        ev = self.calibration.variances.astype(np.float64)
        top = int(min(64, max(1, np.searchsorted(np.cumsum(ev) / max(ev.sum(), 1e-300), 0.95) + 1)))
        x = c[:, :top].reshape(gh, gw, top)
        img = ~pad.reshape(gh, gw)
        kept = np.ones((gh, gw))
        order = []
        for _ in range(self.n - 1):
            pred = self._neighbour_prediction(x, kept * img, exclude_self=True, comps=top)
            pred[~img] = 0.0
            err = ((x - pred) ** 2).sum(-1)
            err[kept == 0] = np.inf
            i = int(np.argmin(err.reshape(-1)))
            order.append(i)
            kept.reshape(-1)[i] = 0
        order.append(int(np.flatnonzero(kept.reshape(-1))[0]))
        return np.array(order, dtype=np.int64)

    def _neighbour_prediction(self, x: np.ndarray, kept: np.ndarray, exclude_self: bool, comps: int) -> np.ndarray:
        """``α_ρ ·`` mean of the ``kept`` tokens within the smallest radius ρ that has one (float64).

        Positions with no kept token at all get 0.
        """
        gh, gw = self.grid
        pred = np.zeros_like(x)
        done = np.zeros((gh, gw), dtype=bool)
        xk = x * kept[..., None]
        for rho in range(1, max(gh, gw)):
            cnt = _box_sum(kept, rho) - (kept if exclude_self else 0)
            s = _box_sum(xk, rho) - (xk if exclude_self else 0)
            new = (cnt > 0) & ~done
            if new.any():
                a = self._drop_alpha[min(rho, DROP_RADIUS_MAX) - 1, :comps]
                pred[new] = a * s[new] / cnt[new][:, None]
                done |= new
            if done.all():
                break
        return pred

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
        from .bitstream.entropy import EntropyEncoder

        if plan.m == 0:
            z = np.zeros((plan.kept.size, 0), dtype=np.int32)
            return b"", z, z
        enc = EntropyEncoder()
        _, index, mean_q = self._run_passes(plan, sym, enc=enc)
        return enc.to_bytes(), index, mean_q

    def _payload(self, plan: _Plan, words: bytes) -> bytes:
        k = plan.kept.size
        head = _PAYLOAD_HEADER.pack(PAYLOAD_VERSION, plan.rate, plan.gain, k)
        nbytes = _rank_bytes(self.n, k)
        rank = _comb_rank(plan.kept).to_bytes(nbytes, "little") if nbytes else b""
        return head + rank + words

    def _encode_plan(self, c: np.ndarray, rate: int, kept: np.ndarray, pad: np.ndarray):
        plan = self._plan(rate, 0, kept, pad)
        plan.gain = self._estimate_gain(c, plan)
        sym = self._quantize(c, plan)
        words, index, mean_q = self._entropy_encode(plan, sym)
        return plan, (sym, index, mean_q), self._payload(plan, words)

    def encode(self, tokens, rate: int, keep: int | None = None, image_size: tuple[int, int] | None = None) -> bytes:
        """Codes tokens into a SEM0 payload.

        Args:
            tokens: ``(N, D)`` float tensor/array of the calibrated tower.
            rate: rate index in :attr:`rate_range` (0 = position means only).
            keep: number of tokens to keep (default all); the others are
                reconstructed from kept neighbours by the decoder.
            image_size: ``(width, height)`` of the image (decides the padding tokens).

        Returns:
            The payload bytes (see ``docs/semantic.md``).
        """
        rate = self._check_rate(rate)
        keep = self._check_keep(keep)
        pad = self.padding(image_size)
        c = self._coefficients(tokens, pad)
        kept = np.arange(self.n) if keep == self.n else np.sort(self._drop_order(c, pad)[self.n - keep:])
        return self._encode_plan(c, rate, kept, pad)[2]

    def encode_to_budget(self, tokens, max_bytes: int, image_size: tuple[int, int] | None = None,
                         keep_fractions: Sequence[float] | None = None) -> bytes:
        """The payload of at most ``max_bytes`` bytes with the lowest token MSE over (rate, keep).

        For each candidate ``keep`` (fractions of N) the largest rate that fits
        is found by bisection (bytes grow with the rate); among these the pair
        with the lowest mean squared token error (computed exactly as the decoder
        reconstructs) wins. About 60 trial encodes.

        Raises:
            RateControlError: not even rate 0 fits in ``max_bytes``.
        """
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
        order = self._drop_order(c, pad) if any(k < self.n for k in keeps) else None
        best = (float((c ** 2).sum()) / c.size, base)
        for k in keeps:
            kept = all_kept if k == self.n else np.sort(order[self.n - k:])
            lo, hi, fit = 0, RATE_MAX, None
            while lo <= hi:  # largest rate that fits
                mid = (lo + hi) // 2
                trial = self._encode_plan(c, mid, kept, pad)
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
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise InvalidInputError(f"a SEM0 payload is bytes, not {type(payload).__name__}")
        view = memoryview(payload).cast("B")
        if len(view) < _PAYLOAD_HEADER.size:
            raise TruncatedStreamError(f"semantic layer is truncated: {len(view)} bytes, "
                                       f"its header alone needs {_PAYLOAD_HEADER.size}")
        version, rate, gain, k = _PAYLOAD_HEADER.unpack_from(view, 0)
        if version != PAYLOAD_VERSION:
            raise UnsupportedVersionError(f"semantic layer payload version {version} is not supported "
                                          f"(this semcodec reads {PAYLOAD_VERSION}); upgrade semcodec")
        if rate > RATE_MAX:
            raise CorruptStreamError(f"corrupt semantic layer: rate index {rate} exceeds {RATE_MAX}")
        if not GAIN_MIN <= gain <= GAIN_MAX:
            raise CorruptStreamError(f"corrupt semantic layer: gain {gain} outside {GAIN_MIN}..{GAIN_MAX}")
        if not 1 <= k <= self.n:
            raise CorruptStreamError(f"corrupt semantic layer: {k} kept tokens, the grid has {self.n}")
        nbytes = _rank_bytes(self.n, k)
        end = _PAYLOAD_HEADER.size + nbytes
        if len(view) < end:
            raise TruncatedStreamError("semantic layer is truncated inside its token positions")
        if nbytes:
            rank = int.from_bytes(view[_PAYLOAD_HEADER.size:end], "little")
            if rank >= math.comb(self.n, k):
                raise CorruptStreamError("corrupt semantic layer: invalid token positions")
            kept = _comb_unrank(rank, self.n, k)
        else:
            kept = np.arange(self.n, dtype=np.int64)
        return rate, gain, kept, view[end:]

    def decode(self, payload: bytes, image_size: tuple[int, int] | None = None) -> DecodedTokens:
        """Decodes a SEM0 payload made with this calibration (and the same ``image_size``).

        Raises:
            TruncatedStreamError / CorruptStreamError / UnsupportedVersionError:
                the payload is damaged (only SemcodecError subclasses are raised).
        """
        from .bitstream.entropy import EntropyDecoder

        pad = self.padding(image_size)
        rate, gain, kept, data = self.parse_header(payload)
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


def _rank_bytes(n: int, k: int) -> int:
    total = math.comb(n, k)
    return ((total - 1).bit_length() + 7) // 8


# --------------------------------------------------------------------------- whole streams


@dataclass
class Tokens:
    """The semantic tokens of a stream, ready for an MLLM.

    Attributes:
        tokens: ``(N, D)`` float32, all grid positions in row-major order.
        positions: ``(K,)`` int64 positions that were coded (the rest are reconstructed).
        grid: ``(gh, gw)``.
        model: semantic tower id (e.g. ``clip-l14-336``).
        preprocessing: preprocessing id (what the tokens describe, e.g. ``pad-square-336-openai``).
        layer: tower layer of the tokens (``-2`` = penultimate).
        calibration: hex of the calibration hash.
        image_size: ``(width, height)`` of the coded image.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    grid: tuple[int, int]
    model: str
    preprocessing: str
    layer: int = -2
    calibration: str = ""
    image_size: tuple[int, int] = (0, 0)

    def _parts(self) -> tuple[dict, dict]:
        tensors = {"tokens": self.tokens.contiguous().float(), "positions": self.positions.contiguous().long()}
        meta = {
            "format_version": "1", "kind": "semantic-tokens", "model": self.model,
            "preprocessing": self.preprocessing, "layer": str(self.layer),
            "grid": f"{self.grid[0]},{self.grid[1]}", "calibration": self.calibration,
            "image_size": f"{self.image_size[0]},{self.image_size[1]}", "semcodec_version": __version__,
        }
        return tensors, meta

    def to_bytes(self) -> bytes:
        """The tokens as a safetensors file (``tokens``, ``positions`` + metadata)."""
        tensors, meta = self._parts()
        return canonical_bytes(tensors, meta)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes :meth:`to_bytes` to ``path`` atomically (overwrites)."""
        return write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokens":
        """Reads a file written by :meth:`save`."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                if meta.get("kind") != "semantic-tokens":
                    raise InvalidInputError(f"{path} is not a semcodec tokens file")
                tokens, positions = f.get_tensor("tokens"), f.get_tensor("positions")
            gh, gw = (int(v) for v in meta["grid"].split(","))
            w, h = (int(v) for v in meta.get("image_size", "0,0").split(","))
        except (OSError, SafetensorError, KeyError, ValueError) as e:
            raise InvalidInputError(f"cannot read tokens file {path}: {e}") from None
        return cls(tokens=tokens, positions=positions, grid=(gh, gw), model=meta["model"],
                   preprocessing=meta.get("preprocessing", ""), layer=int(meta.get("layer", -2)),
                   calibration=meta.get("calibration", ""), image_size=(w, h))


def decode_tokens(data: bytes, calibration: Calibration | str | os.PathLike | None = None) -> Tokens:
    """Decodes the semantic tokens of a whole stream (layer 0 alone; no pixels, no vision tower).

    Only the stream's prefix up to the semantic chunk is read.

    Args:
        data: the stream.
        calibration: optional calibration (object or file); by default the one the
            header names is looked up with :func:`find_calibration`.

    Raises:
        MissingLayerError: the stream has no semantic layer.
        ModelNotAvailableError / ModelMismatchError: the calibration it needs is absent / different.
        StreamError subclasses: damaged stream.
    """
    from .bitstream.container import SEMANTIC_LAYER, read_container_prefix

    try:
        container = read_container_prefix(data, until=SEMANTIC_LAYER)
    except MissingLayerError:
        raise MissingLayerError("this stream has no semantic layer (layer 0); it was compressed without "
                                "--semantic, so it holds pixels only") from None
    h = container.header
    payload = container.layer(SEMANTIC_LAYER)
    if calibration is None:
        cal = load_calibration(find_calibration(h.semantic_model, h.calibration))
    elif isinstance(calibration, Calibration):
        cal = calibration
    else:
        cal = load_calibration(calibration)
    check_calibration(cal, h.semantic_model, h.calibration, h.preprocessing)
    dec = coder_for(cal).decode(payload, image_size=(h.width, h.height))
    return Tokens(tokens=dec.full, positions=dec.positions, grid=dec.grid, model=h.semantic_model,
                  preprocessing=h.preprocessing, layer=cal.layer, calibration=h.calibration.hex(),
                  image_size=(h.width, h.height))


def semantic_only_stream(tokens, calibration: Calibration, width: int, height: int, rate: int | None = None,
                         keep: int | None = None, max_bytes: int | None = None) -> bytes:
    """A complete stream holding layer 0 alone (container header + SEM0 chunk).

    Give either ``rate`` (and optionally ``keep``) or ``max_bytes``, a budget for
    the *whole* stream (container overhead included).

    Raises:
        RateControlError: ``max_bytes`` is below the smallest possible stream.
    """
    from .bitstream.container import SEMANTIC_LAYER, Chunk, Container, Header, write_container

    header = Header(codec_model="", codec_checkpoint=bytes(8), semantic_model=calibration.model,
                    calibration=calibration.hash8, preprocessing=calibration.preprocessing_id,
                    width=width, height=height, layers=(SEMANTIC_LAYER,))
    coder = coder_for(calibration)
    if max_bytes is not None:
        overhead = len(write_container(Container(header, (Chunk(SEMANTIC_LAYER, b""),))))
        if max_bytes - overhead < 1:
            raise RateControlError(f"a semantic-only stream needs more than {overhead} bytes; the budget is {max_bytes}")
        payload = coder.encode_to_budget(tokens, max_bytes - overhead, image_size=(width, height))
    else:
        if rate is None:
            raise InvalidInputError("give rate or max_bytes")
        payload = coder.encode(tokens, rate, keep=keep, image_size=(width, height))
    return write_container(Container(header, (Chunk(SEMANTIC_LAYER, payload),)))


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
