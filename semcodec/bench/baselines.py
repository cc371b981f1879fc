"""The codecs semcodec is compared with, measured in the same run on the same images.

Pillow codecs (always measured when the Pillow build has them):

=========  ===========================================================  ==========
name       what (encoder settings; everything else Pillow's default)    knob
=========  ===========================================================  ==========
jpeg420    JPEG, libjpeg-turbo, 4:2:0 chroma subsampling, optimized      quality
           Huffman tables (``optimize=True``), baseline
jpeg444    the same without chroma subsampling (4:4:4)                   quality
webp       WebP (libwebp), lossy, ``method=4``                            quality
avif       AVIF (libavif through Pillow), 4:2:0, ``speed=6``              quality
avif444    the same with 4:4:4 chroma                                     quality
jxl        JPEG XL (libjxl through pillow-jxl-plugin), ``effort=7``       quality
=========  ===========================================================  ==========

Each has a quality sweep whose Kodak mean spans about 0.05–2 bpp (as far as the
codec reaches: JPEG and JPEG XL cannot go below ~0.1 bpp on Kodak) and a
shorter sweep for ``--quick``.

``avif444`` is AVIF with 4:4:4 chroma (otherwise as ``avif``); it is not in the default list of
the rate–distortion section, and the high-rate section adds it wherever ``avif`` is asked for.

**High-rate section** (:func:`high_rate_baselines`): the same codecs with sweeps from about
34 dB to their top on Kodak (JPEG and WebP quality up to 100, AVIF up to 100, JPEG XL by
butteraugli *distance* down to 0.11: libjxl maps quality ``q`` to distance
``0.1 + (100 − q) · 0.09`` and refuses the lossy distance 0 of quality 100).

**Lossless section** (:func:`lossless_codecs`): PNG (Pillow, ``optimize=True``), WebP lossless
(``method=4`` and ``method=6``, Pillow's default ``quality=80``, which for lossless WebP is the
compression effort) and JPEG XL lossless (``lossless=True``, ``effort=7``).

CompressAI zoo models (``compressai-<arch>``, MSE-optimized) are measured only
when their pretrained weights are already in torch hub's cache
(``<torch.hub.get_dir()>/checkpoints/<file name of the zoo URL>``); nothing is
ever downloaded. Their stream is CompressAI's entropy-coded strings behind a
small header (image size, latent shape, string lengths), so bpp counts every
byte needed to decode.

Example:
    >>> b = pillow_baselines()["jpeg420"]                     # doctest: +SKIP
    >>> data = b.encode(image, 50); b.decode(data).size       # doctest: +SKIP
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

__all__ = ["Baseline", "BASELINE_NAMES", "HIGH_RATE_SWEEPS", "LosslessCodec", "compressai_baselines",
           "compressai_weights", "high_rate_baselines", "jxl_quality_of_distance", "lossless_codecs",
           "pillow_baselines", "select_baselines", "set_decoder_threads"]

#: Names accepted by ``--baselines`` (``compressai`` = every zoo model whose weights are here).
BASELINE_NAMES = ("jpeg420", "jpeg444", "webp", "avif", "avif444", "jxl", "compressai")

#: Sweeps of the high-rate section, (full, ``--quick``), low to high rate. Qualities, except JPEG XL's
#: butteraugli distances. Kodak means reach about 34 dB at the low end; the top is each codec's.
HIGH_RATE_SWEEPS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "jpeg420": ((75, 80, 85, 90, 93, 95, 97, 98, 99, 100), (80, 93, 98, 100)),
    "jpeg444": ((75, 80, 85, 90, 93, 95, 97, 98, 99, 100), (80, 93, 98, 100)),
    "webp": ((60, 70, 80, 85, 90, 93, 95, 97, 99, 100), (70, 90, 95, 100)),
    "avif": ((50, 60, 70, 80, 85, 90, 93, 95, 98, 100), (60, 85, 95, 100)),
    "avif444": ((50, 60, 70, 80, 85, 90, 93, 95, 98, 100), (60, 85, 95, 100)),
    "jxl": ((2.0, 1.5, 1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.13, 0.11), (1.5, 0.5, 0.18, 0.11)),
}


@dataclass(frozen=True)
class Baseline:
    """One codec with a rate knob.

    Attributes:
        name: short id used in tables, CSV and ``--baselines``.
        label: what it is, with library versions and settings.
        sweep: knob values of a full run (low to high rate).
        quick_sweep: knob values of a ``--quick`` run.
        encoder: ``(image, value, threads) -> bytes``.
        decoder: ``(bytes, value) -> PIL image`` (the knob value the stream was made with;
            Pillow formats ignore it, a CompressAI stream needs it to pick the model).
        param: the knob's name.
        family: ``"pillow"`` or ``"compressai"``.
    """

    name: str
    label: str
    sweep: tuple[float, ...]
    quick_sweep: tuple[float, ...]
    encoder: Callable[[Image.Image, float, int], bytes] = field(repr=False)
    decoder: Callable[[bytes, float], Image.Image] = field(repr=False)
    param: str = "quality"
    family: str = "pillow"

    def encode(self, image: Image.Image, value: float, threads: int = 1) -> bytes:
        return self.encoder(image, value, threads)

    def decode(self, data: bytes, value: float) -> Image.Image:
        return self.decoder(data, value)


# --------------------------------------------------------------------------- Pillow


def _pillow_encoder(fmt: str, threads_key: str | None = None, **options) -> Callable[[Image.Image, float, int], bytes]:
    def encode(image: Image.Image, value: float, threads: int) -> bytes:
        buf = io.BytesIO()
        extra = {threads_key: threads} if threads_key else {}
        image.save(buf, format=fmt, quality=int(value), **options, **extra)
        return buf.getvalue()

    return encode


def _pillow_decode(data: bytes, value: float = 0) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.convert("RGB")


def set_decoder_threads(threads: int | None) -> None:
    """Let the AVIF and JPEG XL decoders use ``threads`` threads (None: their defaults, all cores).

    JPEG and WebP always decode on one thread.
    """
    try:
        from PIL import AvifImagePlugin
        AvifImagePlugin.DEFAULT_MAX_THREADS = 0 if threads is None else max(1, threads)   # 0 = all cores
    except ImportError:  # Pillow without AVIF
        pass
    try:
        from pillow_jxl import JpegXLImagePlugin
        # -1 = all cores, 0 = no parallelism
        JpegXLImagePlugin.DECODE_THREADS = -1 if threads is None else (threads if threads > 1 else 0)
    except ImportError:
        pass


def _versions() -> dict[str, str]:
    from PIL import __version__ as pillow_version
    from PIL import features

    v = {"pillow": pillow_version}
    for key, feature in (("jpeg", "libjpeg_turbo"), ("webp", "webp"), ("avif", "avif")):
        try:
            v[key] = features.version(feature) or ""
        except Exception:  # unknown feature in this Pillow
            v[key] = ""
    try:
        from importlib.metadata import version
        v["jxl"] = version("pillow-jxl-plugin")
    except Exception:
        v["jxl"] = ""
    return v


def pillow_baselines() -> dict[str, Baseline]:
    """The Pillow codecs this Pillow build can run, by name."""
    from PIL import features

    v = _versions()
    out = {
        "jpeg420": Baseline("jpeg420", f"JPEG 4:2:0 (libjpeg-turbo {v['jpeg']}, optimize)",
                            (3, 5, 10, 20, 40, 60, 80, 90), (5, 20, 60, 90),
                            _pillow_encoder("JPEG", subsampling=2, optimize=True), _pillow_decode),
        "jpeg444": Baseline("jpeg444", f"JPEG 4:4:4 (libjpeg-turbo {v['jpeg']}, optimize)",
                            (2, 5, 10, 20, 40, 60, 80, 88), (5, 20, 60, 85),
                            _pillow_encoder("JPEG", subsampling=0, optimize=True), _pillow_decode),
    }
    if features.check("webp"):
        out["webp"] = Baseline("webp", f"WebP (libwebp {v['webp']}, method 4)",
                               (0, 5, 15, 30, 50, 70, 85, 90), (0, 30, 70, 90),
                               _pillow_encoder("WEBP", method=4), _pillow_decode)
    if features.check("avif"):
        out["avif"] = Baseline("avif", f"AVIF 4:2:0 (libavif {v['avif']}, speed 6)",
                               (0, 10, 20, 35, 50, 65, 75, 85), (10, 35, 65, 85),
                               _pillow_encoder("AVIF", threads_key="max_threads", speed=6, subsampling="4:2:0"),
                               _pillow_decode)
        out["avif444"] = Baseline("avif444", f"AVIF 4:4:4 (libavif {v['avif']}, speed 6)",
                                  (0, 10, 20, 35, 50, 65, 75, 85), (10, 35, 65, 85),
                                  _pillow_encoder("AVIF", threads_key="max_threads", speed=6, subsampling="4:4:4"),
                                  _pillow_decode)
    try:
        import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)

        out["jxl"] = Baseline("jxl", f"JPEG XL (pillow-jxl-plugin {v['jxl']}, effort 7)",
                              (0, 10, 20, 35, 50, 65, 80, 90), (5, 35, 65, 90),
                              _pillow_encoder("JXL", threads_key="num_threads", effort=7), _pillow_decode)
    except ImportError:
        pass
    return out


def jxl_quality_of_distance(distance: float) -> float:
    """The pillow-jxl-plugin quality that libjxl turns into this butteraugli distance (0.1 < distance ≤ 6.4).

    libjxl's ``JxlEncoderDistanceFromQuality`` maps quality ``q`` in [30, 100) to ``0.1 + (100 − q) · 0.09``;
    the plugin passes its ``quality`` through it, so a distance is asked for by its quality.
    """
    if not 0.1 < distance <= 6.4:
        raise ValueError(f"a JPEG XL distance for the quality mapping must be in (0.1, 6.4], got {distance}")
    return 100.0 - (distance - 0.1) / 0.09


def _jxl_distance_encoder(image: Image.Image, distance: float, threads: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JXL", quality=jxl_quality_of_distance(distance), effort=7, num_threads=threads)
    return buf.getvalue()


def high_rate_baselines(names: Sequence[str]) -> tuple[list[Baseline], list[str]]:
    """The requested baselines with their high-rate sweeps (:data:`HIGH_RATE_SWEEPS`), and one note per
    requested one that has none here. ``avif`` brings ``avif444`` with it: at high fidelity 4:2:0 chroma
    caps AVIF's PSNR, and 4:4:4 is the mode it would be used in.

    Raises:
        ValueError: an unknown name.
    """
    chosen, notes = select_baselines([n for n in names if n != "compressai"])
    if "compressai" in names:
        notes.append("compressai: not in the high-rate section (the zoo's MSE models end near 37 dB on Kodak)")
    by_name = {b.name: b for b in chosen}
    if "avif" in by_name and "avif444" not in by_name:
        extra = pillow_baselines().get("avif444")
        if extra is not None:
            chosen.append(extra)
    out = []
    for b in chosen:
        sweep, quick = HIGH_RATE_SWEEPS[b.name]
        if b.name == "jxl":
            v = _versions()
            b = Baseline("jxl", f"JPEG XL (pillow-jxl-plugin {v['jxl']}, effort 7, by distance)", sweep, quick,
                         _jxl_distance_encoder, _pillow_decode, param="distance")
        else:
            b = replace(b, sweep=sweep, quick_sweep=quick)
        out.append(b)
    return out, notes


# --------------------------------------------------------------------------- lossless


@dataclass(frozen=True)
class LosslessCodec:
    """A lossless codec of the lossless section.

    Attributes:
        name: short id used in tables and CSV.
        label: what it is, with library versions and settings.
        encoder: ``(image, threads) -> bytes``.
        decoder: ``bytes -> PIL image``.
        family: ``"pillow"`` or ``"semcodec"``.
    """

    name: str
    label: str
    encoder: Callable[[Image.Image, int], bytes] = field(repr=False)
    decoder: Callable[[bytes], Image.Image] = field(repr=False)
    family: str = "pillow"

    def encode(self, image: Image.Image, threads: int = 1) -> bytes:
        return self.encoder(image, threads)

    def decode(self, data: bytes) -> Image.Image:
        return self.decoder(data)


def _lossless_encoder(fmt: str, threads_key: str | None = None, **options) -> Callable[[Image.Image, int], bytes]:
    def encode(image: Image.Image, threads: int) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **options, **({threads_key: threads} if threads_key else {}))
        return buf.getvalue()

    return encode


def lossless_codecs() -> list[LosslessCodec]:
    """PNG, WebP lossless (methods 4 and 6) and JPEG XL lossless (effort 7), as far as this Pillow build has them."""
    from PIL import features

    v = _versions()
    out = [LosslessCodec("png", "PNG (Pillow, optimize=True)", _lossless_encoder("PNG", optimize=True),
                         _pillow_decode)]
    if features.check("webp"):
        for method in (4, 6):
            out.append(LosslessCodec(f"webp-lossless-m{method}",
                                     f"WebP lossless (libwebp {v['webp']}, method {method}, quality 80)",
                                     _lossless_encoder("WEBP", lossless=True, method=method, quality=80),
                                     _pillow_decode))
    try:
        import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)

        out.append(LosslessCodec("jxl-lossless-e7", f"JPEG XL lossless (pillow-jxl-plugin {v['jxl']}, effort 7)",
                                 _lossless_encoder("JXL", threads_key="num_threads", lossless=True, effort=7),
                                 _pillow_decode))
    except ImportError:
        pass
    return out


# --------------------------------------------------------------------------- CompressAI

_HEADER = struct.Struct("<HHHHB")   # image height, width, latent h, w, number of string groups


def compressai_weights(hub_dir: str | Path | None = None) -> dict[str, dict[int, Path]]:
    """Pretrained MSE zoo weights already in torch hub's cache: ``{arch: {quality: file}}``."""
    import os

    from .. import _compat  # noqa: F401  (torchvision shim; must precede compressai)

    try:
        from compressai.zoo.image import model_urls
    except Exception:  # compressai missing or broken: no zoo baselines
        return {}
    if hub_dir is None:
        import torch
        hub_dir = torch.hub.get_dir()
    folder = Path(hub_dir) / "checkpoints"
    found: dict[str, dict[int, Path]] = {}
    for arch, metrics in model_urls.items():
        for quality, url in sorted(metrics.get("mse", {}).items()):
            path = folder / os.path.basename(url)
            if path.is_file():
                found.setdefault(arch, {})[quality] = path
    return found


class _ZooCodec:
    """Loads zoo models lazily (one per quality) and codes images with them on the CPU."""

    def __init__(self, arch: str, files: dict[int, Path]):
        self.arch, self.files, self._nets = arch, files, {}

    def net(self, quality: int):
        if quality not in self._nets:
            import torch
            from compressai.zoo.image import model_architectures
            from compressai.zoo.pretrained import load_pretrained

            state = torch.load(self.files[quality], map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state:
                state = state["state_dict"]
            net = model_architectures[self.arch].from_state_dict(load_pretrained(state)).eval()
            net.update()                       # no-op when the file carries the CDF tables
            self._nets[quality] = net
        return self._nets[quality]

    def encode(self, image: Image.Image, value: float, threads: int) -> bytes:
        import numpy as np
        import torch
        import torch.nn.functional as F

        net = self.net(int(value))
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        h, w = x.shape[2:]
        ph, pw = (-h) % 64, (-w) % 64
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))   # zero padding, as CompressAI's eval
        with torch.inference_mode():
            out = net.compress(x)
        strings = [s[0] for s in out["strings"]]                       # batch of one
        shape = tuple(out["shape"])
        parts = [_HEADER.pack(h, w, shape[0], shape[1], len(strings))]
        parts += [struct.pack("<I", len(s)) for s in strings]
        return b"".join(parts + strings)

    def decode(self, data: bytes, value: float) -> Image.Image:
        import numpy as np
        import torch

        h, w, sh, sw, n = _HEADER.unpack_from(data)
        offset = _HEADER.size
        lengths = struct.unpack_from(f"<{n}I", data, offset)
        offset += 4 * n
        strings = []
        for length in lengths:
            strings.append([data[offset:offset + length]])
            offset += length
        with torch.inference_mode():
            x_hat = self.net(int(value)).decompress(strings, (sh, sw))["x_hat"]    # (1, 3, Hp, Wp)
        ph, pw = x_hat.shape[2] - h, x_hat.shape[3] - w
        x_hat = x_hat[:, :, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w].clamp(0, 1)
        pixels = (x_hat[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        return Image.fromarray(np.ascontiguousarray(pixels))


def compressai_baselines(hub_dir: str | Path | None = None) -> dict[str, Baseline]:
    """One baseline per zoo architecture whose weights are cached locally (possibly none).

    The stream does not name its model: the decoder is told the quality (``value``).
    """
    found = compressai_weights(hub_dir)
    if not found:
        return {}
    import compressai

    out = {}
    for arch, files in found.items():
        codec = _ZooCodec(arch, files)
        qualities = tuple(sorted(files))
        quick = qualities if len(qualities) <= 4 else tuple(qualities[i] for i in (0, len(qualities) // 3,
                                                                                   2 * len(qualities) // 3, -1))
        name = f"compressai-{arch}"
        out[name] = Baseline(name, f"{arch} (CompressAI {compressai.__version__} zoo, MSE, measured)",
                             qualities, quick, codec.encode, codec.decode, family="compressai")
    return out


def select_baselines(names: Sequence[str], hub_dir: str | Path | None = None) -> tuple[list[Baseline], list[str]]:
    """The requested baselines that can run here, and one note per requested one that cannot.

    Raises:
        ValueError: an unknown name.
    """
    unknown = [n for n in names if n not in BASELINE_NAMES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINE_NAMES)}")
    available = pillow_baselines()
    chosen, notes = [], []
    for n in names:
        if n == "compressai":
            zoo = compressai_baselines(hub_dir)
            if not zoo:
                notes.append("compressai: no zoo weights in the local torch hub cache (never downloaded); "
                             "only the published CompressAI curves are shown")
            chosen.extend(zoo.values())
        elif n in available:
            chosen.append(available[n])
        else:
            notes.append(f"{n}: this Pillow build cannot encode it; skipped")
    return chosen, notes
