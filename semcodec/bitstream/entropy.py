"""Entropy coding: a thin, vectorized adapter over constriction's range coder.

This module turns *integer* entropy-model parameters into calls of
constriction's first-in-first-out range coder
(:class:`constriction.stream.queue.RangeEncoder` / ``RangeDecoder``). One
:class:`EntropyEncoder` collects several segments (for example the
hyper-latent ``z`` and then the latent ``y``) into one stream; one
:class:`EntropyDecoder` reads them back **in the same order with the same
parameters**. Every call hands whole numpy arrays to constriction; there is no
per-symbol Python loop.

Three kinds of models are supported:

* **Conditional Gaussian / Laplace** (:meth:`EntropyEncoder.encode_gaussian`):
  each symbol has an integer ``scale_index`` into a fixed :class:`ScaleTable`
  and, optionally, an integer ``mean_q`` with ``mean = mean_q / mean_grid``
  (``mean_grid`` a power of two, so the float is exact). Symbols are absolute
  integers in an explicit range ``[lo, hi]``; the mean only shifts the model.
* **Fixed categorical tables** (:meth:`EntropyEncoder.encode_categorical`): a
  :class:`CategoricalTables` holds integer frequency counts ``pmf (K, S)``; each
  symbol picks a table with ``table_index`` and has the value
  ``offset[table] + category``.
* **Learned non-parametric CDFs** (CompressAI's ``EntropyBottleneck`` after
  ``update()``): :meth:`CategoricalTables.from_entropy_bottleneck` converts its
  integer CDF buffers into the categorical form above, so the factorized prior
  codes through the same path.

Why the parameters are integers (determinism)
    A stream must decode identically on any machine. CompressAI compares
    float ``scales_hat`` against a float scale table and feeds float means to
    the coder; a last-bit difference between the encoding and the decoding
    machine then selects another model and the rest of the stream decodes to
    garbage (CompressAI issues #279 and #340). Here everything handed to
    constriction on the decoder side is derived from integers and constants
    only: ``table.scales[scale_index]`` (a fixed float64 table), ``mean_q *
    2**-k`` (exact) and integer frequency counts (exact in float64). Networks
    that predict parameters must be snapped to that grid with
    :meth:`ScaleTable.index_of` and :func:`snap_means` *on both sides* by a
    deterministic path; :func:`param_digest` gives a short hash of the integer
    parameters that a container can store so that a mismatch is reported as an
    error instead of silently producing garbage. constriction's own arithmetic
    is pinned by the ``constriction==0.5.0`` requirement and by a golden test,
    and ``Categorical`` is always built with an explicit ``perfect=False``.

Stream layout
    :meth:`EntropyEncoder.to_bytes` returns constriction's ``uint32`` words as
    little-endian bytes (``'<u4'``), so the length is always a multiple of 4.
    The stream carries no lengths, shapes or parameters: the caller (the
    container) knows them. Range decoding cannot always detect damage or
    truncation -- most garbage decodes to *some* symbols -- so integrity is the
    container's job (chunk length and CRC32). What this module guarantees is
    that decoding bad bytes raises nothing but :class:`~semcodec.errors.
    CorruptStreamError` (or returns symbols inside the declared range), and
    :meth:`EntropyDecoder.finish` rejects any data that is not exactly the
    encoding of the decoded symbols (left-over words included).

Example:
    >>> import numpy as np
    >>> from semcodec.bitstream.entropy import (
    ...     CategoricalTables, EntropyDecoder, EntropyEncoder, ScaleTable, snap_means)
    >>> table = ScaleTable.geometric(min=0.11, max=256.0, count=64)
    >>> scales = np.array([[0.5, 3.0], [12.0, 0.2]])          # predicted by a network
    >>> means = np.array([[0.1, -2.3], [7.9, 0.0]])
    >>> idx, mean_q = table.index_of(scales), snap_means(means, grid=16)
    >>> y = np.array([[0, -2], [9, 0]])
    >>> z_tables = CategoricalTables(pmf=np.array([[1, 6, 1], [3, 0, 5]]), offset=np.array([-1, 0]))
    >>> z, z_table = np.array([0, 2, 1]), np.array([0, 1, 0])
    >>> enc = EntropyEncoder()
    >>> enc.encode_categorical(z, z_tables, z_table)          # segment 1: hyper-latent
    >>> enc.encode_gaussian(y, idx, table, mean_q=mean_q, mean_grid=16)   # segment 2: latent
    >>> data = enc.to_bytes()
    >>> dec = EntropyDecoder(data)
    >>> dec.decode_categorical(z_tables, z_table).tolist()
    [0, 2, 1]
    >>> dec.decode_gaussian(idx, table, mean_q=mean_q, mean_grid=16).tolist()
    [[0, -2], [9, 0]]
    >>> dec.finish()
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import constriction
import numpy as np

from semcodec.errors import CorruptStreamError, InvalidInputError

__all__ = [
    "DEFAULT_HI",
    "DEFAULT_LO",
    "DEFAULT_MEAN_GRID",
    "MAX_FREQUENCY",
    "MAX_SYMBOL_SPAN",
    "CategoricalTables",
    "EntropyDecoder",
    "EntropyEncoder",
    "Family",
    "ScaleTable",
    "param_digest",
    "snap_means",
]

#: Default symbol range ``[DEFAULT_LO, DEFAULT_HI]`` of the Gaussian/Laplace path.
#: Callers should record the range they use (it changes the bits).
DEFAULT_LO = -1024
DEFAULT_HI = 1024
#: Default mean grid: ``mean = mean_q / 16``.
DEFAULT_MEAN_GRID = 16
#: Largest allowed ``hi - lo``; constriction cannot give every symbol of a much
#: larger support a nonzero probability (it panics from 2**23 on).
MAX_SYMBOL_SPAN = 2**20
#: Largest allowed mean grid (a power of two).
MAX_MEAN_GRID = 2**16
#: Frequency counts must be below this, so they are exact in float32 and float64.
MAX_FREQUENCY = 2**24
#: Bits of mantissa kept by :meth:`ScaleTable.geometric` (see there).
SCALE_MANTISSA_BITS = 20

Family = Literal["gaussian", "laplace"]
_FAMILIES = ("gaussian", "laplace")
_INT32_MAX = 2**31 - 1


# --------------------------------------------------------------------------- #
# Array helpers
# --------------------------------------------------------------------------- #


def _to_numpy(x: Any) -> np.ndarray:
    """Returns ``x`` as a numpy array; torch tensors are detached and moved to the CPU."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch.Tensor, without importing torch
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.dtype.itemsize < 4:
            x = x.float()  # numpy has no bfloat16; float16 -> float32 is exact
        return x.numpy()
    return np.asarray(x)


def _int_array(x: Any, name: str) -> np.ndarray:
    """Returns ``x`` as an integer numpy array (any shape), or raises InvalidInputError."""
    arr = _to_numpy(x)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(
            f"{name} must be an array of integers, got dtype {arr.dtype}."
        )
    return arr


def _check_range(arr: np.ndarray, lo: int, hi: int, name: str) -> None:
    """Raises InvalidInputError unless every element lies in ``[lo, hi]``."""
    if arr.size == 0:
        return
    amin, amax = int(arr.min()), int(arr.max())
    if amin < lo or amax > hi:
        bad = amin if amin < lo else amax
        raise InvalidInputError(
            f"{name} must lie in [{lo}, {hi}], found {bad} "
            f"(values span [{amin}, {amax}]); clamp it before coding."
        )


def _check_same_shape(arr: np.ndarray, ref: np.ndarray, name: str, ref_name: str) -> None:
    if arr.shape != ref.shape:
        raise InvalidInputError(
            f"{name} has shape {arr.shape} but {ref_name} has shape {ref.shape}; they must match."
        )


def _real_array(x: Any, name: str, predictor: str) -> np.ndarray:
    """A float64 copy/view of real-valued input, rejecting non-numbers and NaN with clear messages."""
    arr = _to_numpy(x)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidInputError(f"{name} must be real numbers, got dtype {arr.dtype}.")
    arr = arr.astype(np.float64, copy=False)
    if np.isnan(arr).any():
        raise InvalidInputError(f"{name} contain NaN; the {predictor} predictor produced invalid values.")
    return arr


def _int_scalar(value: Any, name: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}.")
    return int(value)


def _check_symbol_range(lo: Any, hi: Any) -> tuple[int, int]:
    lo, hi = _int_scalar(lo, "lo"), _int_scalar(hi, "hi")
    if lo > hi:
        raise InvalidInputError(f"The symbol range is empty: lo={lo} > hi={hi}.")
    if hi - lo > MAX_SYMBOL_SPAN:
        raise InvalidInputError(
            f"The symbol range [{lo}, {hi}] is too wide: hi - lo may be at most {MAX_SYMBOL_SPAN}."
        )
    if lo < -_INT32_MAX or hi > _INT32_MAX:
        raise InvalidInputError(f"The symbol range [{lo}, {hi}] must fit in int32.")
    return lo, hi


def _check_mean_grid(mean_grid: Any) -> int:
    grid = _int_scalar(mean_grid, "mean_grid")
    if grid < 1 or grid > MAX_MEAN_GRID or grid & (grid - 1):
        raise InvalidInputError(
            f"mean_grid must be a power of two in [1, {MAX_MEAN_GRID}] (so that "
            f"mean_q / mean_grid is exact), got {grid}."
        )
    return grid


def _check_family(family: Any) -> str:
    if family not in _FAMILIES:
        raise InvalidInputError(f"family must be one of {_FAMILIES}, got {family!r}.")
    return family


def _is_constriction_failure(exc: BaseException) -> bool:
    """True for errors constriction raises, including Rust panics.

    A Rust panic reaches Python as ``pyo3_runtime.PanicException``, which derives
    from ``BaseException`` (not ``Exception``) and cannot be imported by name.
    """
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        return False
    return isinstance(exc, Exception) or type(exc).__name__ == "PanicException"


# --------------------------------------------------------------------------- #
# Parameter tables and snapping helpers
# --------------------------------------------------------------------------- #


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.ascontiguousarray(arr)
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class ScaleTable:
    """A fixed, strictly increasing table of positive float64 scales.

    Symbols of the conditional path carry an integer index into this table
    instead of a float scale. For ``family="gaussian"`` an entry is the standard
    deviation; for ``family="laplace"`` it is the Laplace scale ``b`` (variance
    ``2 * b**2``).

    The table is part of the codec's definition: encoder and decoder must use
    bit-identical tables. Store :meth:`fingerprint` (or the scales themselves;
    Python's ``repr`` of a float64 round-trips exactly) next to the model.

    Args:
        scales: 1-D array of finite, positive, strictly increasing scales
            (at least one). It is copied to a read-only float64 array.

    Raises:
        InvalidInputError: if ``scales`` is not such an array.
    """

    scales: np.ndarray

    def __post_init__(self) -> None:
        s = _to_numpy(self.scales)
        if s.dtype == np.bool_ or not (
            np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)
        ):
            raise InvalidInputError(f"A scale table must hold real numbers, got dtype {s.dtype}.")
        s = s.astype(np.float64)
        if s.ndim != 1 or s.size == 0:
            raise InvalidInputError(f"A scale table must be a non-empty 1-D array, got shape {s.shape}.")
        if not np.all(np.isfinite(s)) or not np.all(s > 0):
            raise InvalidInputError("A scale table must hold finite, strictly positive scales.")
        if not np.all(np.diff(s) > 0):
            raise InvalidInputError("A scale table must be strictly increasing.")
        object.__setattr__(self, "scales", _readonly(s))

    @classmethod
    def geometric(cls, min: float = 0.11, max: float = 256.0, count: int = 64) -> ScaleTable:  # noqa: A002
        """Builds ``count`` geometrically spaced scales from ``min`` to ``max``.

        The formula is CompressAI's ``get_scale_table``,
        ``s_i = exp(log(min) + i * (log(max) - log(min)) / (count - 1))`` for
        ``i = 0 .. count - 1``, computed in float64 and then rounded to
        :data:`SCALE_MANTISSA_BITS` (20) significant bits:
        ``s_i = ldexp(rint(m_i * 2**20), e_i - 20)`` where ``(m_i, e_i) =
        frexp(s_i)``. ``exp``/``log`` are not correctly rounded and may differ in
        the last bit between math libraries; rounding to 20 bits (exact
        operations only) removes such differences except in vanishingly rare
        ties. The rounded endpoints differ from ``min``/``max`` by < 1e-6
        relative.

        Args:
            min: smallest scale, > 0.
            max: largest scale, > ``min`` (or == ``min`` with ``count == 1``).
            count: number of entries, >= 1.

        Returns:
            The table.

        Example:
            >>> t = ScaleTable.geometric(min=0.11, max=256, count=64)
            >>> len(t), round(float(t.scales[0]), 6), float(t.scales[-1])
            (64, 0.11, 256.0)
        """
        count = _int_scalar(count, "count")
        lo, hi = float(min), float(max)
        if count < 1 or not (0 < lo <= hi) or not math.isfinite(hi) or (count > 1 and lo == hi):
            raise InvalidInputError(
                f"ScaleTable.geometric needs 0 < min < max and count >= 1, got "
                f"min={min!r}, max={max!r}, count={count!r}."
            )
        if count == 1:
            s = np.array([lo], dtype=np.float64)
        else:
            i = np.arange(count, dtype=np.float64)
            log_lo, log_hi = math.log(lo), math.log(hi)
            s = np.exp(log_lo + i * ((log_hi - log_lo) / (count - 1)))
        m, e = np.frexp(s)
        s = np.ldexp(np.rint(m * 2.0**SCALE_MANTISSA_BITS), e - SCALE_MANTISSA_BITS)
        return cls(s)

    def __len__(self) -> int:
        return int(self.scales.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScaleTable):
            return NotImplemented
        return np.array_equal(self.scales, other.scales)

    def __hash__(self) -> int:
        return hash(self.scales.tobytes())

    def __repr__(self) -> str:
        return (
            f"ScaleTable(count={len(self)}, min={self.scales[0]!r}, max={self.scales[-1]!r}, "
            f"fingerprint={self.fingerprint()!r})"
        )

    def fingerprint(self) -> str:
        """Returns the first 16 hex digits of the SHA-256 of the scales as ``'<f8'`` bytes."""
        return hashlib.sha256(self.scales.astype("<f8").tobytes()).hexdigest()[:16]

    def index_of(self, scales: Any) -> np.ndarray:
        """Snaps predicted scales to table indices (encoder and decoder side).

        The index of a scale ``s`` is that of the **smallest table entry >= s**;
        scales above the largest entry map to the last index and scales at or
        below the first entry (including 0, negatives and ``-inf``) to index 0.
        This is CompressAI's ``GaussianConditional.build_indexes`` rule; rounding
        up never makes a model narrower than predicted.

        Args:
            scales: float array (numpy or torch, any shape). It is converted to
                float64 (exact for float16/32/64) before comparing.

        Returns:
            An ``int32`` array of the same shape with values in ``[0, len(self) - 1]``.

        Raises:
            InvalidInputError: if ``scales`` is not real-valued or contains NaN.

        Example:
            >>> t = ScaleTable(np.array([0.5, 1.0, 2.0]))
            >>> t.index_of(np.array([0.1, 0.5, 0.7, 2.0, 9.0])).tolist()
            [0, 0, 1, 2, 2]
        """
        arr = _real_array(scales, "scales", "scale")
        idx = np.minimum(np.searchsorted(self.scales, arr, side="left"), len(self) - 1)
        return np.asarray(idx, dtype=np.int32)


def snap_means(means: Any, grid: int = DEFAULT_MEAN_GRID) -> np.ndarray:
    """Snaps predicted means onto the grid ``1 / grid``: ``mean_q = rint(means * grid)``.

    Ties round to even (``np.rint``). The product is computed in float64,
    which is exact for float16/32 inputs and power-of-two grids. Results are
    clamped to the int32 range. Pass the result as ``mean_q`` with
    ``mean_grid=grid``; the coded mean is then exactly ``mean_q / grid``.

    Args:
        means: float array (numpy or torch, any shape).
        grid: a power of two in ``[1, 65536]``.

    Returns:
        An ``int32`` array of the same shape.

    Raises:
        InvalidInputError: for a bad grid, non-real input or NaN.

    Example:
        >>> snap_means(np.array([0.03, -1.5, 2.0]), grid=16).tolist()
        [0, -24, 32]
    """
    grid = _check_mean_grid(grid)
    arr = _real_array(means, "means", "mean")
    q = np.rint(arr * float(grid))
    np.clip(q, -_INT32_MAX, _INT32_MAX, out=q)
    return q.astype(np.int32)


def param_digest(*arrays: Any, size: int = 4) -> bytes:
    """Returns a short SHA-256 digest of integer entropy parameters.

    Each array is hashed as its dimensions and values in little-endian int64,
    so the digest does not depend on the integer dtype or the machine. A
    container can store it to detect encoder/decoder parameter mismatches
    (see DESIGN.md, "Determinism").

    Args:
        *arrays: integer arrays (numpy or torch), e.g. ``scale_index, mean_q``.
        size: digest length in bytes, 1..32.

    Returns:
        ``size`` bytes.

    Example:
        >>> param_digest(np.array([1, 2, 3], dtype=np.int8)) == param_digest([1, 2, 3])
        True
    """
    size = _int_scalar(size, "size")
    if not 1 <= size <= 32:
        raise InvalidInputError(f"size must be in [1, 32], got {size}.")
    h = hashlib.sha256(b"semcodec-param-digest-v1")
    for i, a in enumerate(arrays):
        arr = _int_array(a, f"arrays[{i}]")
        h.update(np.asarray([arr.ndim, *arr.shape], dtype="<i8").tobytes())
        h.update(arr.astype("<i8").tobytes())
    return h.digest()[:size]


@dataclass(frozen=True, eq=False)
class CategoricalTables:
    """``K`` fixed categorical distributions given by integer frequency counts.

    Table ``k`` covers the symbol values ``offset[k] + c`` for categories
    ``c = 0 .. length[k] - 1`` with probabilities proportional to
    ``pmf[k, c]``. Counts beyond ``length[k]`` are ignored (padding). Counts are
    passed to constriction as exact float64 values (``Categorical(...,
    perfect=False)``), which normalizes them and gives every category -- also
    those with count 0 -- at least the smallest representable probability, so
    every category in range can be coded. A table with ``length == 1`` holds a
    certain symbol and codes it in zero bits.

    Args:
        pmf: ``(K, S)`` integer counts, ``0 <= count < 2**24``; each table's
            counts over its length must sum to > 0.
        offset: ``(K,)`` integers, the value of category 0 of each table.
        length: optional ``(K,)`` integers in ``[1, S]``; defaults to ``S``.

    Raises:
        InvalidInputError: if the arrays do not satisfy the above.
    """

    pmf: np.ndarray
    offset: np.ndarray
    length: np.ndarray | None = None
    _models: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pmf = _int_array(self.pmf, "pmf")
        if pmf.ndim != 2 or pmf.shape[0] == 0 or pmf.shape[1] == 0:
            raise InvalidInputError(f"pmf must have shape (K, S) with K, S >= 1, got {pmf.shape}.")
        num_tables, width = pmf.shape
        _check_range(pmf, 0, MAX_FREQUENCY - 1, "pmf counts")
        offset = _int_array(self.offset, "offset")
        if offset.shape != (num_tables,):
            raise InvalidInputError(f"offset must have shape ({num_tables},), got {offset.shape}.")
        if self.length is None:
            length = np.full(num_tables, width, dtype=np.int64)
        else:
            length = _int_array(self.length, "length")
            if length.shape != (num_tables,):
                raise InvalidInputError(f"length must have shape ({num_tables},), got {length.shape}.")
            _check_range(length, 1, width, "length")
        _check_range(offset, -_INT32_MAX, _INT32_MAX - width, "offset")
        pmf = pmf.astype(np.int64)
        in_table = np.arange(width)[None, :] < length[:, None]
        totals = np.where(in_table, pmf, 0).sum(axis=1)
        if np.any(totals <= 0):
            bad = np.flatnonzero(totals <= 0).tolist()
            raise InvalidInputError(f"Categorical tables {bad[:8]} have no nonzero count.")
        object.__setattr__(self, "pmf", _readonly(pmf))
        object.__setattr__(self, "offset", _readonly(offset.astype(np.int64)))
        object.__setattr__(self, "length", _readonly(length.astype(np.int64)))

    @property
    def num_tables(self) -> int:
        """Number of tables ``K``."""
        return int(self.pmf.shape[0])

    def fingerprint(self) -> str:
        """Returns the first 16 hex digits of the SHA-256 of (pmf, offset, length)."""
        return param_digest(self.pmf, self.offset, self.length, size=8).hex()

    def _model(self, k: int) -> Any:
        """Returns the (cached) constriction model of table ``k``; None if it has one category."""
        try:
            return self._models[k]
        except KeyError:
            pass
        n = int(self.length[k])
        model = None
        if n > 1:
            # Counts < 2**24 are exact in float64; constriction normalizes them.
            probabilities = self.pmf[k, :n].astype(np.float64)
            model = constriction.stream.model.Categorical(probabilities, perfect=False)
        self._models[k] = model
        return model

    @classmethod
    def from_quantized_cdf(cls, quantized_cdf: Any, cdf_length: Any, offset: Any) -> CategoricalTables:
        """Converts CompressAI's integer CDF tables into frequency tables.

        CompressAI's table ``c`` holds ``cdf_length[c]`` increasing entries
        ``cdf[c, 0] = 0 .. cdf[c, cdf_length[c] - 1] = 2**precision``; the last
        interval is its overflow (escape) symbol, which is dropped here. So
        ``pmf[c, j] = cdf[c, j + 1] - cdf[c, j]`` for ``j < cdf_length[c] - 2``,
        ``length = cdf_length - 2`` and the symbol value is ``offset[c] + j``
        (CompressAI's convention). Symbols CompressAI would have escaped must be
        clamped into the table range by the caller.

        Args:
            quantized_cdf: ``(C, L)`` integers (``_quantized_cdf``).
            cdf_length: ``(C,)`` integers in ``[3, L]`` (``_cdf_length``).
            offset: ``(C,)`` integers (``_offset``).

        Returns:
            The tables.

        Raises:
            InvalidInputError: if the arrays are not a valid CDF table.
        """
        cdf = _int_array(quantized_cdf, "quantized_cdf")
        cdf_length = _int_array(cdf_length, "cdf_length").reshape(-1)
        offset = _int_array(offset, "offset").reshape(-1)
        if cdf.ndim != 2 or cdf.shape[0] == 0 or cdf.shape[1] < 3:
            raise InvalidInputError(
                f"quantized_cdf must have shape (C, L) with C >= 1 and L >= 3, got {cdf.shape}; "
                "was update() called on the entropy model?"
            )
        if cdf_length.shape != (cdf.shape[0],) or offset.shape != (cdf.shape[0],):
            raise InvalidInputError(
                f"cdf_length {cdf_length.shape} and offset {offset.shape} must both have shape "
                f"({cdf.shape[0]},) to match quantized_cdf {cdf.shape}."
            )
        _check_range(cdf_length, 3, cdf.shape[1], "cdf_length")
        cdf = cdf.astype(np.int64)
        pmf = np.diff(cdf, axis=1)[:, :-1]  # (C, L - 2): drop the overflow interval slot
        length = cdf_length.astype(np.int64) - 2
        in_table = np.arange(pmf.shape[1])[None, :] < length[:, None]
        if np.any(cdf[:, 0] != 0) or np.any(in_table & (pmf < 0)):
            raise InvalidInputError("quantized_cdf must start at 0 and be non-decreasing.")
        pmf = np.where(in_table, pmf, 0)
        return cls(pmf=pmf, offset=offset, length=length)

    @classmethod
    def from_entropy_bottleneck(cls, entropy_bottleneck: Any) -> CategoricalTables:
        """Converts a CompressAI ``EntropyBottleneck`` (after ``update()``).

        Code the factorized prior with ``table_index = channel`` and symbols
        ``round(y - medians)`` (CompressAI's ``quantize(y, "symbols", medians)``),
        clamped to ``[offset[c], offset[c] + length[c] - 1]``.

        Args:
            entropy_bottleneck: an object with CompressAI's ``_quantized_cdf``,
                ``_cdf_length`` and ``_offset`` buffers.

        Returns:
            The tables, one per channel.

        Raises:
            InvalidInputError: if the buffers are missing or empty (``update()``
                was not called).
        """
        try:
            cdf = entropy_bottleneck._quantized_cdf
            cdf_length = entropy_bottleneck._cdf_length
            offset = entropy_bottleneck._offset
        except AttributeError as exc:
            raise InvalidInputError(
                f"{type(entropy_bottleneck).__name__} has no CompressAI CDF buffers."
            ) from exc
        if cdf.numel() == 0 or cdf_length.numel() == 0 or offset.numel() == 0:
            raise InvalidInputError(
                "The entropy bottleneck has uninitialized CDFs; call update() before converting it."
            )
        return cls.from_quantized_cdf(cdf, cdf_length, offset)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CategoricalTables):
            return NotImplemented
        return (
            np.array_equal(self.pmf, other.pmf)
            and np.array_equal(self.offset, other.offset)
            and np.array_equal(self.length, other.length)
        )

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def __repr__(self) -> str:
        return (
            f"CategoricalTables(num_tables={self.num_tables}, width={self.pmf.shape[1]}, "
            f"fingerprint={self.fingerprint()!r})"
        )


# --------------------------------------------------------------------------- #
# Shared parameter preparation (encoder and decoder call the same code)
# --------------------------------------------------------------------------- #


def _family_model(family: str, lo: int, hi: int) -> Any:
    if family == "gaussian":
        return constriction.stream.model.QuantizedGaussian(lo, hi)
    return constriction.stream.model.QuantizedLaplace(lo, hi)


def _gaussian_params(
    scale_index: Any, table: ScaleTable, mean_q: Any, mean_grid: Any, lo: Any, hi: Any, family: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, str]:
    """Validates the integer parameters and derives constriction's float64 arrays.

    Returns ``(scale_index, means, scales, lo, hi, family)`` with the float
    arrays flattened. Only exact operations are used: a table lookup and a
    multiplication by a power of two.
    """
    if not isinstance(table, ScaleTable):
        raise InvalidInputError(f"table must be a ScaleTable, got {type(table).__name__}.")
    family = _check_family(family)
    lo, hi = _check_symbol_range(lo, hi)
    grid = _check_mean_grid(mean_grid)
    index = _int_array(scale_index, "scale_index")
    _check_range(index, 0, len(table) - 1, "scale_index")
    scales = table.scales[index.reshape(-1)]
    if mean_q is None:
        means = np.zeros(scales.shape, dtype=np.float64)
    else:
        mq = _int_array(mean_q, "mean_q")
        _check_same_shape(mq, index, "mean_q", "scale_index")
        _check_range(mq, -_INT32_MAX, _INT32_MAX, "mean_q")
        means = mq.reshape(-1).astype(np.float64) * (1.0 / grid)  # exact: grid is 2**k
    return index, means, scales, lo, hi, family


def _categorical_order(tables: CategoricalTables, table_index: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validates ``table_index`` and groups symbol positions by table.

    Returns ``(table_index, order, counts)``: symbols are coded table by table in
    increasing table order, each group in its original order (a stable sort).
    """
    if not isinstance(tables, CategoricalTables):
        raise InvalidInputError(f"tables must be CategoricalTables, got {type(tables).__name__}.")
    index = _int_array(table_index, "table_index")
    _check_range(index, 0, tables.num_tables - 1, "table_index")
    flat = index.reshape(-1).astype(np.intp, copy=False)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=tables.num_tables)
    return index, order, counts


# --------------------------------------------------------------------------- #
# Encoder / decoder
# --------------------------------------------------------------------------- #


class EntropyEncoder:
    """Collects segments of symbols into one range-coded stream.

    Segments are decoded first-in-first-out: decode them in the order they
    were encoded, with the same parameters.

    Example:
        >>> enc = EntropyEncoder()
        >>> table = ScaleTable.geometric()
        >>> enc.encode_gaussian(np.array([0, 3, -1]), np.array([5, 30, 10]), table)
        >>> data = enc.to_bytes()
        >>> EntropyDecoder(data).decode_gaussian(np.array([5, 30, 10]), table).tolist()
        [0, 3, -1]
    """

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()

    def encode_gaussian(
        self,
        symbols: Any,
        scale_index: Any,
        table: ScaleTable,
        mean_q: Any = None,
        mean_grid: int = DEFAULT_MEAN_GRID,
        lo: int = DEFAULT_LO,
        hi: int = DEFAULT_HI,
        family: Family = "gaussian",
    ) -> None:
        """Appends symbols coded with quantized Gaussian (or Laplace) models.

        Symbol ``i`` is coded with the distribution of ``family`` with mean
        ``mean_q[i] / mean_grid`` (0 without ``mean_q``) and scale
        ``table.scales[scale_index[i]]``, clipped to ``[lo - 0.5, hi + 0.5]``,
        renormalized and integrated over unit bins (constriction's
        ``QuantizedGaussian(lo, hi)`` / ``QuantizedLaplace(lo, hi)``).

        Args:
            symbols: integers in ``[lo, hi]`` (any shape; clamp them first).
            scale_index: integers in ``[0, len(table) - 1]``, same shape.
            table: the scale table.
            mean_q: optional integers (int32 range), same shape.
            mean_grid: power of two in ``[1, 65536]``.
            lo: smallest codable symbol.
            hi: largest codable symbol, ``0 <= hi - lo <= 2**20``. If
                ``lo == hi`` nothing is written.
            family: ``"gaussian"`` (scale = standard deviation) or
                ``"laplace"`` (scale = ``b``).

        Raises:
            InvalidInputError: for out-of-range symbols or indices, mismatched
                shapes, non-integer arrays or bad settings.
        """
        index, means, scales, lo, hi, family = _gaussian_params(
            scale_index, table, mean_q, mean_grid, lo, hi, family
        )
        sym = _int_array(symbols, "symbols")
        _check_same_shape(sym, index, "symbols", "scale_index")
        _check_range(sym, lo, hi, "symbols")
        if sym.size == 0 or lo == hi:
            return  # nothing to code: no symbols, or a certain one
        flat = np.ascontiguousarray(sym.reshape(-1), dtype=np.int32)
        self._encode(flat, _family_model(family, lo, hi), means, scales)

    def encode_categorical(self, symbols: Any, tables: CategoricalTables, table_index: Any) -> None:
        """Appends symbols coded with fixed categorical tables.

        Symbol ``i`` uses table ``table_index[i]``. Symbols are written grouped
        by table (increasing table index, original order within a table); the
        decoder reproduces the same grouping from ``table_index``.

        Args:
            symbols: integers (any shape); each must lie in
                ``[offset[k], offset[k] + length[k] - 1]`` of its table ``k``.
            tables: the frequency tables.
            table_index: integers in ``[0, K - 1]``, same shape as ``symbols``.

        Raises:
            InvalidInputError: for out-of-range symbols or indices, mismatched
                shapes or non-integer arrays.
        """
        index, order, counts = _categorical_order(tables, table_index)
        sym = _int_array(symbols, "symbols")
        _check_same_shape(sym, index, "symbols", "table_index")
        if sym.size == 0:
            return
        k_flat = index.reshape(-1)
        category = sym.reshape(-1).astype(np.int64) - tables.offset[k_flat]
        bad = (category < 0) | (category >= tables.length[k_flat])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            k = int(k_flat[i])
            first, last = int(tables.offset[k]), int(tables.offset[k] + tables.length[k] - 1)
            raise InvalidInputError(
                f"symbols must lie in the range of their table: symbol {int(sym.reshape(-1)[i])} "
                f"(flat position {i}) uses table {k}, whose range is [{first}, {last}]; "
                f"{int(bad.sum())} symbol(s) are out of range. Clamp them before coding."
            )
        grouped = np.ascontiguousarray(category[order], dtype=np.int32)
        start = 0
        for k in np.flatnonzero(counts):  # one call per table in use
            stop = start + int(counts[k])
            model = tables._model(int(k))
            if model is not None:
                self._encode(grouped[start:stop], model)
            start = stop

    def _encode(self, symbols: np.ndarray, model: Any, *params: np.ndarray) -> None:
        try:
            self._coder.encode(symbols, model, *params)
        except BaseException as exc:
            if not _is_constriction_failure(exc):
                raise
            # Validation above should make this unreachable.
            raise InvalidInputError(f"The entropy coder rejected the symbols: {exc}") from exc

    def num_bits(self) -> int:
        """Returns the size of the stream so far in bits (a multiple of 32, as written)."""
        return 32 * int(self._coder.get_compressed().shape[0])

    def to_bytes(self) -> bytes:
        """Returns the stream: constriction's ``uint32`` words as little-endian bytes.

        Encoding may continue afterwards; a later call returns the longer stream.
        """
        return self._coder.get_compressed().astype("<u4", copy=False).tobytes()


class EntropyDecoder:
    """Reads back the segments written by an :class:`EntropyEncoder`.

    Call the ``decode_*`` methods in the encoder's order with the same
    parameters. Any failure caused by the bytes raises
    :class:`~semcodec.errors.CorruptStreamError`; after one, the decoder
    refuses further calls. Bad *arguments* raise
    :class:`~semcodec.errors.InvalidInputError`.

    Args:
        data: the bytes from :meth:`EntropyEncoder.to_bytes`.

    Raises:
        CorruptStreamError: if ``len(data)`` is not a multiple of 4.
        InvalidInputError: if ``data`` is not bytes-like.
    """

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInputError(f"data must be bytes, got {type(data).__name__}.")
        data = bytes(data)
        if len(data) % 4:
            raise CorruptStreamError(
                f"The entropy-coded data is {len(data)} bytes long, which is not a multiple of 4; "
                "the stream is damaged."
            )
        self._words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(self._words)
        self._replay = constriction.stream.queue.RangeEncoder()  # re-encodes what was decoded (see finish)
        self._failed: str | None = None

    def decode_gaussian(
        self,
        scale_index: Any,
        table: ScaleTable,
        mean_q: Any = None,
        mean_grid: int = DEFAULT_MEAN_GRID,
        lo: int = DEFAULT_LO,
        hi: int = DEFAULT_HI,
        family: Family = "gaussian",
    ) -> np.ndarray:
        """Decodes a segment written by :meth:`EntropyEncoder.encode_gaussian`.

        Args:
            scale_index: the encoder's scale indices (their shape is the output shape).
            table: the encoder's scale table.
            mean_q: the encoder's ``mean_q`` (or None).
            mean_grid: the encoder's mean grid.
            lo: the encoder's ``lo``.
            hi: the encoder's ``hi``.
            family: the encoder's family.

        Returns:
            ``int32`` symbols with the shape of ``scale_index``, in ``[lo, hi]``.

        Raises:
            InvalidInputError: for bad parameters.
            CorruptStreamError: if the data cannot be decoded.
        """
        index, means, scales, lo, hi, family = _gaussian_params(
            scale_index, table, mean_q, mean_grid, lo, hi, family
        )
        self._check_usable()
        if index.size == 0 or lo == hi:
            return np.full(index.shape, lo, dtype=np.int32)
        flat = self._decode(_family_model(family, lo, hi), means, scales)
        return self._checked(flat, lo, hi, index.size).reshape(index.shape)

    def decode_categorical(self, tables: CategoricalTables, table_index: Any) -> np.ndarray:
        """Decodes a segment written by :meth:`EntropyEncoder.encode_categorical`.

        Args:
            tables: the encoder's tables.
            table_index: the encoder's table indices (their shape is the output shape).

        Returns:
            ``int32`` symbols with the shape of ``table_index``.

        Raises:
            InvalidInputError: for bad parameters.
            CorruptStreamError: if the data cannot be decoded.
        """
        index, order, counts = _categorical_order(tables, table_index)
        self._check_usable()
        grouped = np.empty(index.size, dtype=np.int64)
        start = 0
        for k in np.flatnonzero(counts):
            stop = start + int(counts[k])
            model = tables._model(int(k))
            if model is None:
                category = np.zeros(stop - start, dtype=np.int64)
            else:
                category = self._checked(
                    self._decode(model, stop - start), 0, int(tables.length[k]) - 1, stop - start
                )
            grouped[start:stop] = category + tables.offset[k]
            start = stop
        out = np.empty(index.size, dtype=np.int64)
        out[order] = grouped
        return out.astype(np.int32).reshape(index.shape)

    def finish(self) -> None:
        """Checks that the data is exactly the encoding of what was decoded.

        Call it after the last segment. Every decoded segment is re-encoded
        as it is read (the range encoder is deterministic), and the result
        must equal the input word for word. This catches data left over after
        the last symbol (even a single word, which the decoder's two-word
        look-ahead would hide) and any change of the bytes that still decodes
        to valid symbols. It costs one encoding pass, about as much as the
        decoding itself.

        Raises:
            CorruptStreamError: if data remains, the data is not the encoding
                of the decoded symbols, or decoding failed earlier.
        """
        self._check_usable()
        expected = self._replay.get_compressed()
        if np.array_equal(expected, self._words):
            return
        if expected.size < self._words.size and np.array_equal(expected, self._words[: expected.size]):
            extra = self._words.size - expected.size
            raise CorruptStreamError(
                f"The entropy-coded data continues for {extra} word(s) after the last expected symbol; "
                "the stream is damaged."
            )
        raise CorruptStreamError(
            "The entropy-coded data is not the encoding of the symbols it decodes to; the stream is damaged."
        )

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise CorruptStreamError(
                f"The entropy-coded data could not be decoded earlier ({self._failed}); "
                "the stream is damaged."
            )

    def _decode(self, model: Any, *params: Any) -> np.ndarray:
        """Decodes one segment (``params``: per-symbol parameter arrays, or one symbol count) and re-encodes it."""
        try:
            decoded = np.asarray(self._coder.decode(model, *params))
            model_params = params if params and isinstance(params[0], np.ndarray) else ()
            self._replay.encode(decoded.astype(np.int32, copy=False), model, *model_params)
            return decoded
        except BaseException as exc:
            if not _is_constriction_failure(exc):
                raise
            self._failed = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise CorruptStreamError(
                f"The entropy-coded data is invalid ({self._failed}); the stream is damaged."
            ) from exc

    def _checked(self, decoded: np.ndarray, lo: int, hi: int, n: int) -> np.ndarray:
        # Defensive: constriction only returns symbols of the model's support.
        if decoded.shape != (n,) or (n and (int(decoded.min()) < lo or int(decoded.max()) > hi)):
            self._failed = "decoded symbols outside the model's range"
            raise CorruptStreamError("The entropy-coded data decodes to impossible symbols; the stream is damaged.")
        return decoded
