"""An independent decoder of semcodec's pixel layer (RES1), numpy only, written from docs/pixels.md.

It shares no code with semcodec, torch or constriction: it reads the container (docs/bitstream.md), the codec
checkpoint (safetensors: a u64 header length, a JSON header, raw little-endian bytes), and decodes the range-coded
payload with its own integer arithmetic. It exists to show that the documents specify the pixel layer completely:
``tests/test_reference_decoder.py`` checks that it computes the same scale-index digest that the payload stores and
pixels within one level of semcodec's on golden streams of the shipped model.

Scope: streams whose pixel layer is not conditioned on layer 0 (RES1 flag bit 0 clear), coded whole or by tiles
(format 1.3, flag bit 1; docs/pixels.md §6.4). The semantic prior needs layer 0's decoded tokens (docs/semantic.md)
and is specified in docs/pixels.md, but not implemented here.

Each step is one function named after its section of docs/pixels.md. A latent coded whole is the one-tile case of
the tiled decode: :func:`tile_parameters` of the whole latent is its entropy-parameter path.

Usage::

    python tests/reference_decoder.py stream.smc checkpoints/semcodec-ms192.safetensors out.png
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------- constants of format 1 (pixels.md §1)
ALIGN = 64                    # the image is padded to multiples of 64 pixels
RATE_ONE = 4096               # rate knob q = rate / 4096
RATE_BELOW, RATE_ABOVE = 4.0, 2.0
RATE_KNOB_MAX = 32767 / RATE_ONE
Y_LO, Y_HI = -4096, 4096      # symbol range of y
PRECISION = 24                # probabilities are integers summing to 2**24
SCALE_MIN, SCALE_MAX, SCALE_COUNT, SCALE_BITS = 0.11, 256.0, 64, 20
DIGEST_PREFIX = b"semcodec-param-digest-v1"
LEAKY_SLOPE = 0.01
FLAG_SEMANTIC = 0x01
FLAG_TILED = 0x02             # format 1.3: entropy parameters by tiles (pixels.md §6.4)
TILES_VERSION = (1, 3)        # the container version from which the tiled flag exists
PARAM_TILE, PARAM_MARGIN = 64, 8                       # tile side and margin of ẑ, latent positions
MAX_UNTILED_PIXELS = 64_000_000                        # no encoder coded a larger image whole
MIN_BITS_PER_Y_SYMBOL = -math.log2(1 - (Y_HI - Y_LO) / 2**PRECISION)   # the fewest bits a y symbol costs
MAGIC = b"\x89SMC\r\n\x1a\n"
MASK64 = (1 << 64) - 1


class ReferenceDecodeError(Exception):
    """The stream cannot be decoded (damaged, unsupported, or another checkpoint)."""


# --------------------------------------------------------------------------- container (bitstream.md)
@dataclass
class Container:
    width: int
    height: int
    gray: bool
    codec_model: str
    codec_checkpoint: bytes
    layers: dict[str, bytes]
    version: tuple[int, int]     # (major, minor)


def read_container(data: bytes) -> Container:
    """The header fields and the listed layers' payloads of a format-1 stream (optional chunks are skipped)."""
    if data[:8] != MAGIC or len(data) < 16:
        raise ReferenceDecodeError("not a semcodec stream")
    major, minor, flags, hlen = struct.unpack_from("<BBHI", data, 8)
    if major != 1:
        raise ReferenceDecodeError(f"format {major}.x is not format 1")
    header = data[16:16 + hlen]
    if zlib.crc32(data[:16 + hlen]) != struct.unpack_from("<I", data, 16 + hlen)[0]:
        raise ReferenceDecodeError("header CRC mismatch")
    pos = 0

    def str8() -> str:
        nonlocal pos
        n = header[pos]
        pos += 1 + n
        return header[pos - n:pos].decode("ascii")

    def raw(n: int) -> bytes:
        nonlocal pos
        pos += n
        return header[pos - n:pos]

    codec_model, codec_checkpoint = str8(), raw(8)
    str8(), raw(8), str8()                                   # semantic model, calibration, preprocessing
    width, height, _coder, count = struct.unpack("<IIBB", raw(10))
    listed = [raw(4).decode("ascii") for _ in range(count)]
    layers, at = {}, 16 + hlen + 4
    while at < len(data):
        kind, n = data[at:at + 4].decode("ascii"), struct.unpack_from("<I", data, at + 4)[0]
        if zlib.crc32(data[at:at + 8 + n]) != struct.unpack_from("<I", data, at + 8 + n)[0]:
            raise ReferenceDecodeError(f"chunk {kind} CRC mismatch")
        if kind in listed:
            layers[kind] = data[at + 8:at + 8 + n]
        at += 12 + n
    return Container(width, height, bool(flags & 1), codec_model, codec_checkpoint, layers, (major, minor))


# --------------------------------------------------------------------------- checkpoint (pixels.md §3)
def read_safetensors(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors (numpy, their stored dtype) and the ``__metadata__`` of a safetensors file."""
    data = Path(path).read_bytes()
    n = struct.unpack_from("<Q", data)[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    dtypes = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8", "U8": "u1"}
    base = 8 + n
    tensors = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        tensors[name] = np.frombuffer(data, dtype=dtypes[t["dtype"]], count=(b - a) // np.dtype(
            dtypes[t["dtype"]]).itemsize, offset=base + a).reshape(t["shape"])
    return tensors, meta


class Codec:
    """The decoder side of a codec checkpoint: config, weights (float64, exact from fp16), z tables."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.sha256 = hashlib.sha256(path.read_bytes()).digest()
        tensors, meta = read_safetensors(path)
        if meta.get("kind") != "residual" or meta.get("format_version") != "1":
            raise ReferenceDecodeError(f"{path} is not a format-1 residual checkpoint")
        config = json.loads(meta["config"])
        self.N, self.M, self.levels = config["N"], config["M"], len(config["lambdas"])
        self.context = config.get("context", "none") == "checkerboard"
        self.w = {k: v.astype(np.float64) for k, v in tensors.items()}
        self.z_medians = tensors["entropy_bottleneck.quantiles"][:, 0, 1].astype(np.float32)          # (N,)
        cdf = tensors["entropy_bottleneck._quantized_cdf"].astype(np.int64)                           # (N, Lmax)
        length = tensors["entropy_bottleneck._cdf_length"].astype(np.int64) - 2                      # (N,)
        self.z_offset = tensors["entropy_bottleneck._offset"].astype(np.int64)                        # (N,)
        # One CDF per channel over its categories (pixels.md §5.3); None for a one-category channel.
        self.z_cdfs = [categorical_cdf(np.diff(cdf[c, :length[c] + 1])) if length[c] > 1 else None
                       for c in range(self.N)]

    @property
    def rate_range(self) -> tuple[float, float]:
        if self.levels == 1:
            return 0.0, 0.0
        return -RATE_BELOW, min(self.levels - 1 + RATE_ABOVE, RATE_KNOB_MAX)

    def gains(self, name: str, q: float, dtype=np.float64) -> np.ndarray:
        """The gain vector ``name`` (log_gain, log_inv_gain, log_hyper_gain, log_hyper_inv_gain) at knob q."""
        table = self.w[name].astype(dtype)                                                       # (L, C)
        if self.levels == 1:
            return np.exp(table[0])
        lo = min(max(int(np.floor(q)), 0), self.levels - 2)
        t = dtype(q - lo)
        return np.exp(table[lo] * (dtype(1) - t) + table[lo + 1] * t)


# --------------------------------------------------------------------------- networks (pixels.md §2)
def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1) -> np.ndarray:
    """PyTorch's Conv2d with zero padding k // 2: x (C, H, W), w (O, C, k, k) → (O, ⌈H/s⌉, ⌈W/s⌉)."""
    k = w.shape[-1]
    p = k // 2
    C, H, W = x.shape
    Ho, Wo = (H + 2 * p - k) // stride + 1, (W + 2 * p - k) // stride + 1
    xp = np.zeros((C, H + 2 * p, W + 2 * p), dtype=x.dtype)
    xp[:, p:p + H, p:p + W] = x
    out = np.zeros((w.shape[0], Ho * Wo), dtype=x.dtype)
    for ky in range(k):
        for kx in range(k):
            patch = xp[:, ky:ky + stride * (Ho - 1) + 1:stride, kx:kx + stride * (Wo - 1) + 1:stride]
            out += w[:, :, ky, kx] @ patch.reshape(C, -1)
    return out.reshape(-1, Ho, Wo) + b[:, None, None]


def conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PyTorch's ConvTranspose2d(kernel 5, stride 2, padding 2, output_padding 1): x (C, H, W), w (C, O, 5, 5)
    → (O, 2H, 2W), ``out[o, 2i + ky - 2, 2j + kx - 2] += w[c, o, ky, kx] · x[c, i, j]``."""
    C, H, W = x.shape
    O, k = w.shape[1], w.shape[-1]
    full = np.zeros((O, 2 * H + k - 2, 2 * W + k - 2), dtype=x.dtype)
    flat = x.reshape(C, -1)
    for ky in range(k):
        for kx in range(k):
            full[:, ky:ky + 2 * H:2, kx:kx + 2 * W:2] += (w[:, :, ky, kx].T @ flat).reshape(O, H, W)
    return full[:, 2:2 + 2 * H, 2:2 + 2 * W] + b[:, None, None]


def leaky_relu(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, x * LEAKY_SLOPE)


def inverse_gdn(x: np.ndarray, w: dict, prefix: str) -> np.ndarray:
    """IGDN: ``x_i · sqrt(β_i + Σ_j γ_ij x_j²)`` with β, γ from their stored reparametrization."""
    def reparam(name: str) -> np.ndarray:
        v = np.maximum(w[f"{prefix}.{name}"], w[f"{prefix}.{name}_reparam.lower_bound.bound"][0])
        return v * v - w[f"{prefix}.{name}_reparam.pedestal"][0]

    beta, gamma = reparam("beta").astype(x.dtype), reparam("gamma").astype(x.dtype)
    C = x.shape[0]
    norm = (gamma @ (x * x).reshape(C, -1)).reshape(x.shape) + beta[:, None, None]
    return x * np.sqrt(norm)


def h_s(codec: Codec, z_hat: np.ndarray) -> np.ndarray:
    """Hyper-synthesis (N, a, b) → (2M, 4a, 4b) = (scales ‖ means), in the input's dtype."""
    w = codec.w
    x = leaky_relu(conv_transpose2d(z_hat, w["h_s.0.weight"], w["h_s.0.bias"]))
    x = leaky_relu(conv_transpose2d(x, w["h_s.2.weight"], w["h_s.2.bias"]))
    return conv2d(x, w["h_s.4.weight"], w["h_s.4.bias"])


def g_s(codec: Codec, y: np.ndarray) -> np.ndarray:
    """Synthesis (M, h, w) → (3, 16h, 16w), float32 weights and activations."""
    w = {k: v.astype(np.float32) for k, v in codec.w.items() if k.startswith("g_s.")}
    x = y
    for i in (0, 2, 4):
        x = inverse_gdn(conv_transpose2d(x, w[f"g_s.{i}.weight"], w[f"g_s.{i}.bias"]), w, f"g_s.{i + 1}")
    return conv_transpose2d(x, w["g_s.6.weight"], w["g_s.6.bias"])


def anchors_mask(h: int, w: int) -> np.ndarray:
    """(h, w) bool: the checkerboard's anchors, row + column even."""
    return (np.arange(h)[:, None] + np.arange(w)[None, :]) % 2 == 0


def context_correction(codec: Codec, y_hat_anchors: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The checkerboard context's additive correction (2M, h, w) of (scales ‖ means), float64."""
    w, M = codec.w, codec.M
    taps = [dy * 5 + dx for dy in range(5) for dx in range(5) if (dy + dx) % 2 == 1]
    kernel = np.zeros((M, M, 25))
    kernel[:, :, taps] = w["context.context_weight"]
    context = conv2d(y_hat_anchors, kernel.reshape(M, M, 5, 5), w["context.context_bias"])        # (M, h, w)
    x = np.concatenate([params, context])                                                       # (3M, h, w)
    x = leaky_relu(conv2d(x, w["context.fuse.0.weight"], w["context.fuse.0.bias"]))
    return conv2d(x, w["context.fuse.2.weight"], w["context.fuse.2.bias"])


# --------------------------------------------------------------------------- entropy parameters (pixels.md §4)
def scale_table() -> np.ndarray:
    """The 64 scales of format 1: geometric from 0.11 to 256, rounded to 20 significant bits."""
    i = np.arange(SCALE_COUNT, dtype=np.float64)
    lo, hi = np.log(SCALE_MIN), np.log(SCALE_MAX)
    s = np.exp(lo + i * ((hi - lo) / (SCALE_COUNT - 1)))
    m, e = np.frexp(s)
    return np.ldexp(np.rint(m * 2.0**SCALE_BITS), e - SCALE_BITS)


SCALES = scale_table()


def scale_index(sigma: np.ndarray) -> np.ndarray:
    """Index of the smallest table scale ≥ σ (the last one above the table)."""
    if np.isnan(sigma).any():
        raise ReferenceDecodeError("the entropy parameters contain NaN")
    return np.minimum(np.searchsorted(SCALES, sigma, side="left"), SCALE_COUNT - 1).astype(np.int64)


def param_digest(index: np.ndarray) -> bytes:
    """First 4 bytes of SHA-256(prefix ‖ rank, shape as <i8 ‖ values as <i8)."""
    h = hashlib.sha256(DIGEST_PREFIX)
    h.update(np.asarray([index.ndim, *index.shape], dtype="<i8").tobytes())
    h.update(index.astype("<i8").tobytes())
    return h.digest()[:4]


def entropy_parameters(codec: Codec, z_hat: np.ndarray, q: float) -> np.ndarray:
    """(scales ‖ means) (2M, 4a, 4b) float64 of y from ẑ (N, a, b), before the context."""
    return h_s(codec, z_hat.astype(np.float64) * codec.gains("log_hyper_inv_gain", q)[:, None, None])


def param_tiles(h: int, w: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The (rows, columns) ``[start, end)`` spans of the entropy-parameter tiles of an (h, w) latent, in coding
    order (rows of tiles top to bottom, left to right in a row): edges at multiples of 64, the last ones shorter."""
    def spans(n: int) -> list[tuple[int, int]]:
        return [(start, min(start + PARAM_TILE, n)) for start in range(0, n, PARAM_TILE)]

    return [(rows, cols) for rows in spans(h) for cols in spans(w)]


def tile_parameters(codec: Codec, z_hat: np.ndarray, q: float, latent: tuple[int, int], rows: tuple[int, int],
                    cols: tuple[int, int]) -> np.ndarray:
    """(scales ‖ means) (2M, tile h, tile w) float64 of the tile ``rows`` × ``cols`` of an (h, w) latent, before
    the context: ``h_s`` of ẑ (N, h/4, w/4) over the tile's area widened by the margin and clipped to the latent,
    cropped to the tile. For the whole latent as one tile, the whole-latent parameters."""
    (h, w), (r0, r1), (c0, c1) = latent, rows, cols
    a0, a1 = max(r0 - PARAM_MARGIN, 0), min(r1 + PARAM_MARGIN, h)           # multiples of 4
    b0, b1 = max(c0 - PARAM_MARGIN, 0), min(c1 + PARAM_MARGIN, w)
    area = entropy_parameters(codec, z_hat[:, a0 // 4:a1 // 4, b0 // 4:b1 // 4], q)  # (2M, a1 - a0, b1 - b0)
    return area[:, r0 - a0:r1 - a0, c0 - b0:c1 - b0]


def context_parameters(codec: Codec, params: np.ndarray, y_sym: np.ndarray) -> np.ndarray:
    """Parameters after the anchors' symbols ``y_sym`` (M, h, w) are known: the non-anchors corrected. On a tile,
    the tile alone (its border is zero-padded like the latent's)."""
    anchors = anchors_mask(*params.shape[1:])
    y_hat = (y_sym.astype(np.float64) + params[codec.M:]) * anchors
    return np.where(anchors, params, params + context_correction(codec, y_hat, params))


# --------------------------------------------------------------------------- range coder (pixels.md §5)
def _high_word(x: np.ndarray) -> np.ndarray:
    return (x.view(np.uint64) >> np.uint64(32)).astype(np.int64)


def fdlibm_exp(x: np.ndarray) -> np.ndarray:
    """FreeBSD msun e_exp.c (Rust libm's ``exp``) for finite |x| < 708, bit for bit, float64."""
    hx = _high_word(x) & 0x7FFFFFFF
    sign = (_high_word(x) >> 31) & 1
    big = hx >= 0x3FF0A2B2                                      # |x| >= 1.5 ln2
    k_big = np.trunc(1.44269504088896338700e+00 * x + np.where(sign == 1, -0.5, 0.5))
    k = np.where(hx > 0x3FD62E42, np.where(big, k_big, 1 - 2 * sign), 0).astype(np.float64)
    hi = np.where(hx > 0x3FD62E42, x - k * 6.93147180369123816490e-01, x)
    lo = k * 1.90821492927058770002e-10
    r = np.where(hx > 0x3FD62E42, hi - lo, x)
    xx = r * r
    c = r - xx * (1.66666666666666019037e-01 + xx * (-2.77777777770155933842e-03 + xx * (
        6.61375632143793436117e-05 + xx * (-1.65339022054652515390e-06 + xx * 4.13813679705723846039e-08))))
    y = 1.0 + (r * c / (2.0 - c) - lo + hi)
    y = np.where(hx > 0x3E300000, y, 1.0 + x)
    return np.ldexp(y, k.astype(np.int64))


# Coefficients of s_erf.c, lowest power first (the constant 1 of each denominator included).
_ERF_PP = (1.28379167095512558561e-01, -3.25042107247001499370e-01, -2.84817495755985104766e-02,
           -5.77027029648944159157e-03, -2.37630166566501626084e-05)
_ERF_QQ = (1.0, 3.97917223959155352819e-01, 6.50222499887672944485e-02, 5.08130628187576562776e-03,
           1.32494738004321644526e-04, -3.96022827877536812320e-06)
_ERF_PA = (-2.36211856075265944077e-03, 4.14856118683748331666e-01, -3.72207876035701323847e-01,
           3.18346619901161753674e-01, -1.10894694282396677476e-01, 3.54783043256182359371e-02,
           -2.16637559486879084300e-03)
_ERF_QA = (1.0, 1.06420880400844228286e-01, 5.40397917702171048937e-01, 7.18286544141962662868e-02,
           1.26171219808761642112e-01, 1.36370839120290507362e-02, 1.19844998467991074170e-02)
_ERF_RA = (-9.86494403484714822705e-03, -6.93858572707181764372e-01, -1.05586262253232909814e+01,
           -6.23753324503260060396e+01, -1.62396669462573470355e+02, -1.84605092906711035994e+02,
           -8.12874355063065934246e+01, -9.81432934416914548592e+00)
_ERF_SA = (1.0, 1.96512716674392571292e+01, 1.37657754143519042600e+02, 4.34565877475229228821e+02,
           6.45387271733267880336e+02, 4.29008140027567833386e+02, 1.08635005541779435134e+02,
           6.57024977031928170135e+00, -6.04244152148580987438e-02)
_ERF_RB = (-9.86494292470009928597e-03, -7.99283237680523006574e-01, -1.77579549177547519889e+01,
           -1.60636384855821916062e+02, -6.37566443368389627722e+02, -1.02509513161107724954e+03,
           -4.83519191608651397019e+02)
_ERF_SB = (1.0, 3.03380607434824582924e+01, 3.25792512996573918826e+02, 1.53672958608443695994e+03,
           3.19985821950859553908e+03, 2.55305040643316442583e+03, 4.74528541206955367215e+02,
           -2.24409524465858183362e+01)
_ERX = 8.45062911510467529297e-01
_EFX8 = 1.02703333676410069053e+00


def _horner(z: np.ndarray, coefficients: tuple[float, ...]) -> np.ndarray:
    """``c0 + z·(c1 + z·(c2 + …))``, evaluated innermost first as the C source does (the order is part of the bits)."""
    acc = np.full_like(z, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        acc = c + z * acc
    return acc


def fdlibm_erf(x: np.ndarray) -> np.ndarray:
    """musl's ``erf`` as Rust's libm 0.2.16 has it (from FreeBSD msun s_erf.c), bit for bit, float64, finite x."""
    x = np.asarray(x, dtype=np.float64)
    ix = _high_word(x) & 0x7FFFFFFF
    sign = ((_high_word(x) >> 31) & 1) == 1
    ax = np.abs(x)
    z = x * x                                                   # |x| < 0.84375: x + x·R(x²)
    small = x + x * (_horner(z, _ERF_PP) / _horner(z, _ERF_QQ))
    tiny = 0.125 * (8.0 * x + _EFX8 * x)                        # |x| < 2**-28
    s1 = ax - 1.0                                               # 0.84375 <= |x| < 1.25: erfc1
    erfc_1 = 1.0 - _ERX - _horner(s1, _ERF_PA) / _horner(s1, _ERF_QA)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        s2 = 1.0 / (ax * ax)                                    # 1.25 <= |x| < 6: erfc2
        near = ix < 0x4006DB6D                                  # |x| < 1/0.35
        r = np.where(near, _horner(s2, _ERF_RA), _horner(s2, _ERF_RB))
        s = np.where(near, _horner(s2, _ERF_SA), _horner(s2, _ERF_SB))
        zz = (ax.view(np.uint64) & np.uint64(0xFFFFFFFF00000000)).view(np.float64)     # low word cleared
        mid = ix < 0x40180000
        arg1 = np.where(mid, -zz * zz - 0.5625, 0.0)
        arg2 = np.where(mid, (zz - ax) * (zz + ax) + r / s, 0.0)
        erfc_2 = fdlibm_exp(arg1) * fdlibm_exp(arg2) / ax
    erfc_big = np.where(ix < 0x3FF40000, erfc_1, erfc_2)
    y = np.where(ix < 0x40180000, 1.0 - erfc_big, 1.0 - 2.0**-1022)
    y = np.where(sign, -y, y)
    return np.where(ix < 0x3FEB0000, np.where(ix < 0x3E300000, tiny, small), y)


def gaussian_cdf(sigma: float, lo: int = Y_LO, hi: int = Y_HI) -> np.ndarray:
    """The integer CDF ``C`` (length hi - lo + 2) of a zero-mean Gaussian of std σ quantized to [lo, hi]:
    symbol s has the interval ``[C[s - lo], C[s - lo + 1])`` of 2**24 (constriction's LeakyQuantizer)."""
    free_weight = float((1 << PRECISION) - 1 - (hi - lo))
    s = np.arange(lo + 1, hi + 1, dtype=np.float64)                                  # symbols above lo
    cdf = (1.0 + fdlibm_erf((s - 0.5) / (sigma * 1.4142135623730951))) / 2.0
    left = np.trunc(free_weight * cdf).astype(np.int64) + np.arange(1, hi - lo + 1)
    return np.concatenate([[0], left, [1 << PRECISION]])


def categorical_cdf(counts: np.ndarray) -> np.ndarray:
    """The integer CDF (length n + 1) of constriction's ``Categorical(counts, perfect=False)``."""
    counts = counts.astype(np.float64)
    n = len(counts)
    scale = float((1 << PRECISION) - n) / float(counts.sum())       # the sum is exact (integer counts < 2**53)
    before = np.concatenate([[0.0], np.cumsum(counts)[:-1]])         # exact partial sums
    return np.concatenate([np.trunc(before * scale).astype(np.int64) + np.arange(n), [1 << PRECISION]])


class RangeDecoder:
    """constriction's RangeDecoder<u32, u64> with 24-bit probabilities (pixels.md §5.1)."""

    def __init__(self, words: np.ndarray):
        self.words = [int(w) for w in words]
        self.pos = 0
        self.lower, self.range = 0, MASK64
        self.point = 0
        for _ in range(2):
            self.point = (self.point << 32) | self._read()
        # (fewer than two words: the missing ones read as zero, as in constriction)

    def _read(self) -> int:
        if self.pos < len(self.words):
            self.pos += 1
            return self.words[self.pos - 1]
        return 0

    def decode(self, cdf: np.ndarray) -> int:
        """Decode one symbol with the integer CDF ``cdf`` (cdf[0] = 0, cdf[-1] = 2**24); returns its index."""
        scale = self.range >> PRECISION
        quantile = ((self.point - self.lower) & MASK64) // scale
        if quantile >= 1 << PRECISION:
            raise ReferenceDecodeError("invalid range-coder data")
        i = int(np.searchsorted(cdf, quantile, side="right")) - 1
        left, prob = int(cdf[i]), int(cdf[i + 1] - cdf[i])
        self.lower = (self.lower + scale * left) & MASK64
        self.range = scale * prob
        if self.range < 1 << 32:
            self.lower = (self.lower << 32) & MASK64
            self.range <<= 32
            self.point = ((self.point << 32) & MASK64) | self._read()
        return i

    def maybe_exhausted(self) -> bool:
        return self.pos >= len(self.words) and (
            self.range == MASK64 or ((self.point - self.lower) & MASK64) < (1 << 33) - 1)


# --------------------------------------------------------------------------- the RES1 decode (pixels.md §6)
@dataclass
class Decoded:
    pixels: np.ndarray           # (H, W, 3) uint8
    digests: tuple[bytes, ...]   # param_digest of each tile's scale indices, as this decoder computed them
    stored_digests: tuple[bytes, ...]    # the payload's (one when coded whole)
    tiles: list                  # (rows, columns) spans of the tiles, in coding order ([whole latent] when untiled)
    z_symbols: np.ndarray        # (N, a, b)
    y_symbols: np.ndarray        # (M, h, w)
    scale_index: np.ndarray      # (M, h, w)
    rate: int
    words: bytes                 # the range-coded data (after the digest table)


def decode_res1(codec: Codec, payload: bytes, width: int, height: int, check_digest: bool = True,
                version: tuple[int, int] = TILES_VERSION) -> Decoded:
    """Decode a RES1 payload of a ``width × height`` image (not conditioned on layer 0) from a stream of format
    ``version``, in the order of pixels.md §6.2 and §6.4."""
    if len(payload) < 7:
        raise ReferenceDecodeError("the pixel layer is shorter than its prefix")
    rate, flags, stored = struct.unpack_from("<hB4s", payload)
    q_min, q_max = codec.rate_range
    if not q_min * RATE_ONE <= rate <= q_max * RATE_ONE:
        raise ReferenceDecodeError(f"rate knob {rate / RATE_ONE} outside the model's range")
    known = FLAG_SEMANTIC | (FLAG_TILED if version >= TILES_VERSION else 0)
    if flags & ~known:
        raise ReferenceDecodeError(f"the pixel layer has unknown flags 0x{flags:02x}")
    q = rate / RATE_ONE
    hp, wp = -(-height // ALIGN) * ALIGN, -(-width // ALIGN) * ALIGN
    h, w, M = hp // 16, wp // 16, codec.M
    tiles = param_tiles(h, w)
    stored_digests, start = (stored,), 7
    if flags & FLAG_TILED:
        if len(tiles) < 2:
            raise ReferenceDecodeError("the tiled flag is set, but the latent fits one tile")
        start += 4 * (len(tiles) - 1)
        if len(payload) < start:
            raise ReferenceDecodeError("the pixel layer ends inside its table of tile digests")
        stored_digests += tuple(payload[i:i + 4] for i in range(7, start, 4))
    words = payload[start:]
    if len(words) % 4:
        raise ReferenceDecodeError("damaged pixel layer (its words are not whole)")
    if flags & FLAG_SEMANTIC:
        raise ReferenceDecodeError("a pixel layer conditioned on layer 0 (not implemented by this reference)")
    if len(words) * 8 + 64 < M * h * w * MIN_BITS_PER_Y_SYMBOL:
        raise ReferenceDecodeError("the pixel layer's coded data is too short for the image it claims")
    if not flags & FLAG_TILED:
        if len(tiles) > 1 and width * height > MAX_UNTILED_PIXELS:
            raise ReferenceDecodeError("a pixel layer above 64 megapixels that is not coded by tiles")
        tiles = [((0, h), (0, w))]                                   # coded whole (every stream before 1.3)
    dec = RangeDecoder(np.frombuffer(words, dtype="<u4"))

    # z: raster order, one categorical table per channel
    z_sym = np.zeros((codec.N, hp // ALIGN, wp // ALIGN), dtype=np.int64)
    for c in range(codec.N):
        for r in range(z_sym.shape[1]):
            for col in range(z_sym.shape[2]):
                index = 0 if codec.z_cdfs[c] is None else dec.decode(codec.z_cdfs[c])
                z_sym[c, r, col] = codec.z_offset[c] + index
    z_hat = z_sym.astype(np.float32) + codec.z_medians[:, None, None]                 # float32 sum

    # y: tile after tile; within a tile the anchors, then the others (or everything at once without the context)
    y_sym = np.zeros((M, h, w), dtype=np.int64)
    index = np.zeros((M, h, w), dtype=np.int64)
    means = np.zeros((M, h, w), dtype=np.float32)
    cdfs: dict[int, np.ndarray] = {}
    digests = []
    for t, (((r0, r1), (c0, c1)), expected) in enumerate(zip(tiles, stored_digests)):
        params = tile_parameters(codec, z_hat, q, (h, w), (r0, r1), (c0, c1))           # (2M, th, tw)
        tile_sym = np.zeros((M, r1 - r0, c1 - c0), dtype=np.int64)
        tile_index = scale_index(params[:M])

        def decode_y(mask: np.ndarray) -> None:
            for c, r, col in zip(*np.nonzero(mask)):
                k = int(tile_index[c, r, col])
                if k not in cdfs:
                    cdfs[k] = gaussian_cdf(float(SCALES[k]))
                tile_sym[c, r, col] = Y_LO + dec.decode(cdfs[k])

        passes = [np.ones(tile_sym.shape, dtype=bool)]
        if codec.context:
            anchors = np.broadcast_to(anchors_mask(r1 - r0, c1 - c0), tile_sym.shape)
            decode_y(anchors)
            params = context_parameters(codec, params, tile_sym)
            tile_index = scale_index(params[:M])
            passes = [~anchors]
        digests.append(param_digest(tile_index[None]))
        if check_digest and digests[-1] != expected:
            where = f"tile {t + 1} of {len(tiles)}" if len(tiles) > 1 else "the whole latent"
            raise ReferenceDecodeError(f"computed other entropy parameters than the encoder ({where}: digest mismatch)")
        for mask in passes:
            decode_y(mask)
        y_sym[:, r0:r1, c0:c1], index[:, r0:r1, c0:c1] = tile_sym, tile_index
        means[:, r0:r1, c0:c1] = params[M:].astype(np.float32)
    if not dec.maybe_exhausted():
        raise ReferenceDecodeError("data left after the last symbol")

    y_hat = y_sym.astype(np.float32) + means
    x = g_s(codec, y_hat * codec.gains("log_inv_gain", q, np.float32)[:, None, None])[:, :height, :width]
    pixels = np.floor(np.clip(x, 0, 1) * np.float32(255) + np.float32(0.5)).astype(np.uint8)
    return Decoded(pixels.transpose(1, 2, 0).copy(), tuple(digests), stored_digests, tiles, z_sym, y_sym, index,
                   rate, bytes(words))


def decode_stream(data: bytes, checkpoint: str | Path | Codec) -> tuple[Decoded, Container]:
    """Decode a whole stream's pixel layer with the checkpoint its header names."""
    container = read_container(data)
    if "RES1" not in container.layers:
        raise ReferenceDecodeError("the stream has no pixel layer")
    codec = checkpoint if isinstance(checkpoint, Codec) else Codec(checkpoint)
    if codec.sha256[:8] != container.codec_checkpoint:
        raise ReferenceDecodeError("the stream was written with another checkpoint")
    return decode_res1(codec, container.layers["RES1"], container.width, container.height,
                       version=container.version), container


def gray(pixels: np.ndarray) -> np.ndarray:
    """The one channel of a stream with the gray flag: floor((r + g + b + 1) / 3)."""
    return ((pixels.astype(np.int64).sum(axis=2) + 1) // 3).astype(np.uint8)


if __name__ == "__main__":
    import sys

    from PIL import Image

    decoded, container = decode_stream(Path(sys.argv[1]).read_bytes(), sys.argv[2])
    image = gray(decoded.pixels) if container.gray else decoded.pixels
    Image.fromarray(image).save(sys.argv[3])
