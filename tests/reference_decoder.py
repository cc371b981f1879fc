"""An independent decoder of semcodec's pixel layer (RES1), numpy only, written from docs/pixels.md.

It shares no code with semcodec, torch or constriction: it reads the container (docs/bitstream.md), the codec
checkpoint (safetensors: a u64 header length, a JSON header, raw little-endian bytes), and decodes the range-coded
payload with its own integer arithmetic. It exists to show that the documents specify the pixel layer completely:
``tests/test_reference_decoder.py`` checks that it computes the same scale-index digest that the payload stores and
pixels within one level of semcodec's on golden streams of the shipped model.

Scope: streams whose pixel layer is not conditioned on layer 0 (RES1 flag bit 0 clear), coded whole or by tiles
(format 1.3, flag bit 1; docs/pixels.md §6.4). The semantic prior needs layer 0's decoded tokens (docs/semantic.md)
and is specified in docs/pixels.md, but not implemented here.

Layer 2 (REF2, docs/refinement.md) has its own decoder here, :func:`decode_ref2`, written from that document and
pixels.md §5 alone (range decoder and encoder, QuantizedLaplace tables, scale table): it refines a given x̂₁ and
checks both CRCs of the payload and that its words are exactly the encoding of the decoded symbols.

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
    """constriction's RangeDecoder<u32, u64> with 24-bit probabilities (pixels.md §5.1), with the end check of
    pixels.md §5.2: each decoded symbol is encoded again (:class:`RangeEncoder`), and at the end the words must be
    exactly that encoding (:meth:`words_match`)."""

    def __init__(self, words: np.ndarray):
        self.words = [int(w) for w in words]
        self.replay = RangeEncoder()
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
        self.replay.encode(left, prob)
        return i

    def words_match(self) -> bool:
        """After the last symbol: whether the words are exactly the encoding of the decoded symbols."""
        return self.replay.flush() == self.words


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
    if not dec.words_match():
        raise ReferenceDecodeError("the pixel layer's words are not the encoding of its symbols")

    y_hat = y_sym.astype(np.float32) + means
    x = g_s(codec, y_hat * codec.gains("log_inv_gain", q, np.float32)[:, None, None])[:, :height, :width]
    pixels = np.floor(np.clip(x, 0, 1) * np.float32(255) + np.float32(0.5)).astype(np.uint8)
    return Decoded(pixels.transpose(1, 2, 0).copy(), tuple(digests), stored_digests, tiles, z_sym, y_sym, index,
                   rate, bytes(words))


class RangeEncoder:
    """constriction's RangeEncoder<u32, u64> with 24-bit probabilities (pixels.md §5.3), for the decoders' end check
    (pixels.md §5.2, refinement.md §4.6): the words must be exactly those that this encoder writes for the decoded
    symbols."""

    def __init__(self):
        self.lower, self.range = 0, MASK64
        self.words: list[int] = []
        self.inverted: tuple[int, int] | None = None          # (n, first) while a carry is pending

    def encode(self, left: int, prob: int) -> None:
        """Encode the symbol whose interval of 2**24 is ``[left, left + prob)``."""
        scale = self.range >> PRECISION
        self.range = scale * prob
        new = (self.lower + scale * left) & MASK64
        if self.inverted is not None and ((new + self.range) & MASK64) > new:
            n, first = self.inverted
            carry = new < self.lower
            self.words += [(first + carry) & 0xFFFFFFFF] + [0 if carry else 0xFFFFFFFF] * (n - 1)
            self.inverted = None
        self.lower = new
        if self.range < 1 << 32:
            self.range <<= 32
            word = self.lower >> 32
            self.lower = (self.lower << 32) & MASK64
            if self.inverted is not None:
                self.inverted = (self.inverted[0] + 1, self.inverted[1])
            elif ((self.lower + self.range) & MASK64) > self.lower:
                self.words.append(word)
            else:
                self.inverted = (1, word)

    def flush(self) -> list[int]:
        """The words, after the final flush."""
        if self.range == MASK64:
            return self.words
        point = (self.lower + 0xFFFFFFFF) & MASK64
        if self.inverted is not None:
            n, first = self.inverted
            up = point < self.lower
            self.words += [(first + up) & 0xFFFFFFFF] + [0 if up else 0xFFFFFFFF] * (n - 1)
        self.words.append(point >> 32)
        if ((self.lower + self.range) & MASK64) >> 32 == point >> 32:
            self.words.append(0)
        return self.words


# --------------------------------------------------------------------------- the REF2 decode (refinement.md)
REF2_VERSION = 1
REF2_STEP16 = (16, 1024)                 # Δ = step16 / 16, from 1 (lossless) to 64 levels
REF2_HEADER = 12                         # version, channels, step16, base_crc, pixels_crc
REF2_PAD = 2                             # planes are padded by 2 samples (the 5×5 window)
REF2_BUCKETS = 24                        # 6 activity classes × 4 gradient classes
REF2_NO_SCALE = 255                      # the scale index of a bucket no symbol falls in
REF2_WEIGHT_SHIFT = 8                    # weights: 12 fractional bits; means: 4 (a grid of 1/16)
#: The phases (row, column, stride) in coding order, and the offsets (dy, dx) of each one's neighbours
#: (refinement.md §4.2): four on the 4×4 grid (neighbours at distance 2), then three on the 2×2 grid.
REF2_PHASES = ((0, 0, 4), (2, 2, 4), (0, 2, 4), (2, 0, 4), (1, 1, 2), (0, 1, 2), (1, 0, 2))
_REF2_PATTERNS = ((),
                  ((-1, -1), (-1, 1), (1, -1), (1, 1)),
                  ((0, -1), (0, 1), (-1, 0), (1, 0)),
                  ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)))
REF2_NEIGHBOURS = tuple(tuple((2 * dy, 2 * dx) for dy, dx in pattern) for pattern in _REF2_PATTERNS) \
    + _REF2_PATTERNS[1:]
REF2_WINDOW = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)]       # 24 offsets
REF2_CROSS = [(dy, dx) for dy in range(-1, 2) for dx in range(-1, 2) if (dy, dx) != (0, 0)]        # 8 offsets


class ReferenceMismatchError(ReferenceDecodeError):
    """The layer-2 payload was coded over another pixel layer (``base_crc``; refinement.md §3)."""


@dataclass
class Ref2Group:
    phase: int
    channel: int
    weights: np.ndarray | None   # (K,) int64 with 12 fractional bits, or None (μ = 0)
    scales: np.ndarray           # (24,) int64 scale index per bucket, 255 where no symbol falls


@dataclass
class Ref2Payload:
    channels: int
    step16: int
    base_crc: int
    pixels_crc: int
    groups: list[Ref2Group]      # 4·C, phase-major
    words: np.ndarray            # (n,) uint32


def ref2_bound(step16: int) -> int:
    """``B = ceil(255 · 16 / step16)``: every symbol is in ``[−B, B]``."""
    return -(-255 * 16 // step16)


def ref2_dequantize(q: np.ndarray, step16: int) -> np.ndarray:
    """The decoded residual ``floor((step16 · q + 8) / 16)`` (refinement.md §2), int64."""
    return (q.astype(np.int64) * step16 + 8) >> 4


def ref2_feature_count(channels: int, phase: int, c: int) -> int:
    """``K = 1 + 24 + 8·(C − 1) + N + c·(1 + N)`` (refinement.md §4.3)."""
    n = len(REF2_NEIGHBOURS[phase])
    return 1 + len(REF2_WINDOW) + len(REF2_CROSS) * (channels - 1) + n + c * (1 + n)


def read_ref2(payload: bytes) -> Ref2Payload:
    """The fields of a REF2 payload, with the checks of refinement.md §3 that need no pixels."""
    if len(payload) < REF2_HEADER:
        raise ReferenceDecodeError("the refinement layer is shorter than its header")
    version, channels, step16, base_crc, pixels_crc = struct.unpack_from("<BBHII", payload)
    if version != REF2_VERSION:
        raise ReferenceDecodeError(f"refinement layer version {version} is unknown")
    if channels not in (1, 3):
        raise ReferenceDecodeError(f"the refinement layer has {channels} channels")
    if not REF2_STEP16[0] <= step16 <= REF2_STEP16[1]:
        raise ReferenceDecodeError(f"refinement step16 {step16} outside 16 … 1024")
    groups, at = [], REF2_HEADER
    for phase in range(len(REF2_PHASES)):
        for c in range(channels):
            if at >= len(payload):
                raise ReferenceDecodeError("the refinement layer ends inside its group records")
            flags, at = payload[at], at + 1
            if flags & ~1:
                raise ReferenceDecodeError(f"refinement group flags 0x{flags:02x} are unknown")
            weights = None
            if flags & 1:
                k = ref2_feature_count(channels, phase, c)
                if at + 2 * k > len(payload):
                    raise ReferenceDecodeError("the refinement layer ends inside its group records")
                weights = np.frombuffer(payload, dtype="<i2", count=k, offset=at).astype(np.int64)
                at += 2 * k
            if at + REF2_BUCKETS > len(payload):
                raise ReferenceDecodeError("the refinement layer ends inside its group records")
            scales = np.frombuffer(payload, dtype=np.uint8, count=REF2_BUCKETS, offset=at).astype(np.int64)
            at += REF2_BUCKETS
            if np.any((scales >= SCALE_COUNT) & (scales != REF2_NO_SCALE)):
                raise ReferenceDecodeError("a refinement scale index outside the table")
            groups.append(Ref2Group(phase, c, weights, scales))
    if (len(payload) - at) % 4:
        raise ReferenceDecodeError("damaged refinement layer (its words are not whole)")
    words = np.frombuffer(payload, dtype="<u4", offset=at).astype(np.uint32)
    return Ref2Payload(channels, step16, base_crc, pixels_crc, groups, words)


def reflect_pad(plane: np.ndarray, pad: int = REF2_PAD) -> np.ndarray:
    """(H, W) → (H + 2·pad, W + 2·pad), reflected about the edge samples: ``−i ↦ i``, ``n − 1 + i ↦ n − 1 − i``,
    clamped into ``[0, n)`` (so 0 when ``n = 1``)."""
    def index(n: int) -> np.ndarray:
        t = np.arange(-pad, n + pad)
        t = np.where(t < 0, -t, np.where(t > n - 1, 2 * (n - 1) - t, t))
        return np.clip(t, 0, n - 1)

    return plane[np.ix_(index(plane.shape[0]), index(plane.shape[1]))]


def phase_view(padded: np.ndarray, phase: int, shape: tuple[int, int], dy: int = 0, dx: int = 0) -> np.ndarray:
    """The samples at offset (dy, dx) from each position of ``phase`` in an (H, W) plane padded by 2, flattened in
    raster order: the padded plane at ``(i + dy + 2, j + dx + 2)``."""
    (py, px, stride), (h, w) = REF2_PHASES[phase], shape
    rows, cols = len(range(py, h, stride)), len(range(px, w, stride))
    r0, c0 = py + dy + REF2_PAD, px + dx + REF2_PAD
    return padded[r0:r0 + stride * rows:stride, c0:c0 + stride * cols:stride].reshape(-1)


def ref2_features(P: list[np.ndarray], Q: list[np.ndarray], phase: int, c: int, shape: tuple[int, int]) -> np.ndarray:
    """(n, K) int64 features of group (phase, c) (refinement.md §4.3) from the padded base planes ``P`` and the
    padded symbol planes ``Q``."""
    neighbours = REF2_NEIGHBOURS[phase]
    center = phase_view(P[c], phase, shape)
    columns = [np.ones_like(center)]
    columns += [phase_view(P[c], phase, shape, dy, dx) - center for dy, dx in REF2_WINDOW]
    for other in range(len(P)):
        if other != c:
            middle = phase_view(P[other], phase, shape)
            columns += [phase_view(P[other], phase, shape, dy, dx) - middle for dy, dx in REF2_CROSS]
    columns += [phase_view(Q[c], phase, shape, dy, dx) for dy, dx in neighbours]
    for earlier in range(c):
        columns += [phase_view(Q[earlier], phase, shape, dy, dx) for dy, dx in [(0, 0), *neighbours]]
    return np.stack(columns, axis=1)


def bitlen(v: np.ndarray) -> np.ndarray:
    """The number of bits of each non-negative integer (0 for 0)."""
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)          # exact below 2**53


def ref2_buckets(P: list[np.ndarray], Q: list[np.ndarray], phase: int, c: int, shape: tuple[int, int]) -> np.ndarray:
    """(n,) bucket ``4·A + G`` of each position of group (phase, c) (refinement.md §4.4)."""
    neighbours = REF2_NEIGHBOURS[phase]
    a = np.zeros(phase_view(P[c], phase, shape).shape, dtype=np.int64)
    for dy, dx in neighbours:
        a += np.abs(phase_view(Q[c], phase, shape, dy, dx)) * (8 // len(neighbours))
    for earlier in range(c):
        a += 8 * np.abs(phase_view(Q[earlier], phase, shape))
    g = (np.abs(phase_view(P[c], phase, shape, 0, 1) - phase_view(P[c], phase, shape, 0, -1))
         + np.abs(phase_view(P[c], phase, shape, 1, 0) - phase_view(P[c], phase, shape, -1, 0)))
    return 4 * np.minimum(bitlen(a >> 2), 5) + np.minimum(bitlen(g >> 2), 3)


def laplace_cdfs(mu: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """(n, 2B + 2) integer CDFs of constriction's ``QuantizedLaplace(−B, B)`` of means ``mu`` and scales ``b``
    (refinement.md §4.5, pixels.md §5.7): ``C[s + B] = trunc(fw · F(s − 0.5)) + (s + B)`` for ``−B < s ≤ B``."""
    free_weight = float((1 << PRECISION) - 1 - 2 * bound)
    x = np.arange(-bound + 1, bound + 1, dtype=np.float64)[None, :] - 0.5                   # (1, 2B), exact
    d = x - mu[:, None]                                                                    # (n, 2B), rounded once
    below = x <= mu[:, None]
    # F's exp argument is ≤ 0. Below −700, exp gives < 1e-304, so fw · F truncates to 0 and 1 − F/2 rounds to 1,
    # as the exact value would: clamping the argument changes no entry (and keeps it in fdlibm_exp's range).
    e = fdlibm_exp(np.maximum(np.where(below, d / b[:, None], -d / b[:, None]), -700.0))
    cdf = np.where(below, 0.5 * e, 1.0 - 0.5 * e)
    left = np.trunc(free_weight * cdf).astype(np.int64) + np.arange(1, 2 * bound + 1)
    n = len(mu)
    return np.concatenate([np.zeros((n, 1), np.int64), left, np.full((n, 1), 1 << PRECISION, np.int64)], axis=1)


@dataclass
class Ref2Decoded:
    pixels: np.ndarray           # (H, W) uint8 when C = 1, else (H, W, 3)
    symbols: np.ndarray          # (C, H, W) int64, q
    means: np.ndarray            # (C, H, W) int64, mean_q (μ · 16)
    scale_index: np.ndarray      # (C, H, W) int64
    header: Ref2Payload


def decode_ref2(payload: bytes, base: np.ndarray) -> Ref2Decoded:
    """Decode a REF2 payload over ``base`` = x̂₁ ((H, W) gray or (H, W, 3) uint8), as refinement.md §3–§4 say."""
    ref = read_ref2(payload)
    C, step16, bound = ref.channels, ref.step16, ref2_bound(ref.step16)
    base = np.asarray(base, dtype=np.uint8)
    if base.ndim == 2 or base.shape[2] == 1:
        base = base.reshape(base.shape[0], base.shape[1], 1)
        if C == 3:
            base = np.repeat(base, 3, axis=2)                      # a gray x̂₁ refined to RGB
    elif C == 1:
        raise ReferenceDecodeError("a one-channel refinement layer over an RGB pixel layer")
    if zlib.crc32(np.ascontiguousarray(base).tobytes()) != ref.base_crc:
        raise ReferenceMismatchError("the refinement layer was coded over another pixel layer (base CRC)")
    shape = base.shape[:2]
    P = [reflect_pad(base[:, :, c].astype(np.int64)) for c in range(C)]                          # (H+4, W+4)
    Q = [np.zeros((shape[0] + 2 * REF2_PAD, shape[1] + 2 * REF2_PAD), np.int64) for _ in range(C)]
    symbols, means, index = (np.zeros((C, *shape), np.int64) for _ in range(3))
    dec = RangeDecoder(ref.words)
    for group in ref.groups:
        phase, c = group.phase, group.channel
        (py, px, stride) = REF2_PHASES[phase]
        if group.weights is None:
            mean_q = np.zeros(phase_view(P[c], phase, shape).shape, np.int64)
        else:
            acc = ref2_features(P, Q, phase, c, shape) @ group.weights                              # exact int64
            mean_q = np.clip((acc + (1 << (REF2_WEIGHT_SHIFT - 1))) >> REF2_WEIGHT_SHIFT, -16 * bound, 16 * bound)
        k = group.scales[ref2_buckets(P, Q, phase, c, shape)]
        if np.any(k == REF2_NO_SCALE):
            raise ReferenceDecodeError("a refinement symbol falls in a bucket without a scale")
        cdfs = laplace_cdfs(mean_q / 16.0, SCALES[k], bound)
        q = np.empty(len(k), np.int64)
        for n, cdf in enumerate(cdfs):                               # raster order within the group
            q[n] = dec.decode(cdf) - bound
        rows, cols = slice(py, None, stride), slice(px, None, stride)
        symbols[c, rows, cols] = q.reshape(symbols[c, rows, cols].shape)
        means[c, rows, cols] = mean_q.reshape(symbols[c, rows, cols].shape)
        index[c, rows, cols] = k.reshape(symbols[c, rows, cols].shape)
        Q[c] = reflect_pad(symbols[c])                                 # padding recomputed from the interior
    if not dec.words_match():
        raise ReferenceDecodeError("the refinement layer's words are not the encoding of its symbols")
    residual = ref2_dequantize(symbols, step16).transpose(1, 2, 0)                               # (H, W, C)
    pixels = np.clip(base.astype(np.int64) + residual, 0, 255).astype(np.uint8)
    if zlib.crc32(pixels.tobytes()) != ref.pixels_crc:
        raise ReferenceDecodeError("the refined pixels do not match their CRC (damaged refinement layer)")
    return Ref2Decoded(pixels[:, :, 0] if C == 1 else pixels, symbols, means, index, ref)


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
