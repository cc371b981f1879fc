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
jxl        JPEG XL (libjxl through pillow-jxl-plugin), ``effort=7``       quality
=========  ===========================================================  ==========

Each has a quality sweep whose Kodak mean spans about 0.05–2 bpp (as far as the
codec reaches: JPEG and JPEG XL cannot go below ~0.1 bpp on Kodak) and a
shorter sweep for ``--quick``.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

__all__ = ["Baseline", "BASELINE_NAMES", "compressai_baselines", "compressai_weights", "pillow_baselines",
           "select_baselines", "set_decoder_threads"]

#: Names accepted by ``--baselines`` (``compressai`` = every zoo model whose weights are here).
BASELINE_NAMES = ("jpeg420", "jpeg444", "webp", "avif", "jxl", "compressai")


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
    try:
        import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)

        out["jxl"] = Baseline("jxl", f"JPEG XL (pillow-jxl-plugin {v['jxl']}, effort 7)",
                              (0, 10, 20, 35, 50, 65, 80, 90), (5, 35, 65, 90),
                              _pillow_encoder("JXL", threads_key="num_threads", effort=7), _pillow_decode)
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
