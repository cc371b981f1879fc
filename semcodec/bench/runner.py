"""Runs the benchmark: every codec setting on every image, one row per measurement.

::

    for each image (8-bit RGB as displayed, EXIF orientation applied):
        tokens T of the original              (semantic tower, once per image)
        for each setting (semcodec sweep, then each baseline's sweep):
            encode  ── timed, peak memory ── bytes
            decode  ── timed, peak memory ── image  ── PSNR, MS-SSIM, tower tokens T̂ (cos, MSE vs T)
            layer 0 (semcodec streams that carry one): decode tokens ── timed ── cos, MSE vs T
    speed section: the default setting on the first images, repeated: encode, pixel decode,
        pixel decode + tower forward, tokens-only decode (layer 0), tower on the GPU when present

Sections (``BenchConfig.sections``, ``semcodec bench --sections``): ``rd`` (the loop above),
``speed``, and the two that measure layer 2 (the refinement layer, high fidelity to lossless):

* ``lossless``: per image, semcodec ``lossless=True`` and PNG, WebP lossless (methods 4 and 6),
  JPEG XL lossless (effort 7): bytes, encode and decode time, peak memory; every decode is
  compared with the original pixels, and one that is not bit-exact is an error of its row
  (:data:`LOSSLESS_COLUMNS`).
* ``high-rate``: the rate–distortion loop with sweeps that reach 30–50 dB: semcodec qualities
  above the pixel layer's top (:data:`HIGH_RATE_QUALITIES`) and bpp targets above quality 100's
  rate (:data:`HIGH_RATE_BPPS`), the baselines' high-rate sweeps
  (:func:`~semcodec.bench.baselines.high_rate_baselines`); rows as in ``rd`` (:data:`COLUMNS`),
  without token fidelity.

semcodec settings are dicts of :func:`semcodec.api.compress_image` keyword
arguments (``{"quality": 50}``, ``{"quality": 50, "semantic": "tiny"}``); the
keys other than the rate (``quality``/``bpp``/``size``/``max_size``) name the
curve. A setting whose keywords ``compress_image`` does not accept is skipped
with a note (``semcodec bench --setting`` refuses it up front).

**Timing** is wall-clock (``time.perf_counter``) around one call, after a
warm-up of every setting on a 64×64 crop (models loaded, caches filled); the
thread count is fixed for torch, AVIF and JPEG XL (``--threads``). JPEG and WebP
encode and decode on one thread.

**Peak memory** (:class:`PeakMemory`) on Linux is the rise of the process's
peak resident set size during the call: glibc's free memory is returned to the
system (``malloc_trim(0)``), the kernel's high-water mark is reset
(``/proc/self/clear_refs`` ← 5), and afterwards ``VmHWM − VmRSS(before)`` is
read from ``/proc/self/status``. It counts every allocation (torch, codec
libraries, Python) but not memory that was already resident (loaded weights).
Elsewhere it falls back to ``tracemalloc``'s peak (Python and numpy
allocations only); the method is recorded in ``run.json``.
"""

from __future__ import annotations

import contextlib
import inspect as pyinspect
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from ..batch import IMAGE_SUFFIXES, files_in
from ..errors import InvalidInputError, SemcodecError
from .baselines import (Baseline, LosslessCodec, high_rate_baselines, lossless_codecs, select_baselines,
                        set_decoder_threads)
from .metrics import mismatch, ms_ssim, psnr, token_fidelity

__all__ = ["COLUMNS", "DEFAULT_SECTIONS", "LOSSLESS_COLUMNS", "SECTIONS", "SPEED_COLUMNS", "BenchConfig",
           "BenchResult", "PeakMemory", "Setting", "curve_name", "high_rate_settings", "list_images", "run_bench",
           "run_script", "semcodec_settings"]

#: Keys of compress_image kwargs that set the rate (the sweep); the other keys name the curve.
RATE_KEYS = ("quality", "bpp", "size", "max_size")
#: semcodec quality sweeps of the rate–distortion section: the pixel layer's range, 0–90 (above 90 a quality adds
#: layer 2, which the high-rate section measures); the default quality (75) is what the speed section uses.
SEMCODEC_QUALITIES = (0, 18, 36, 54, 72, 90)
SEMCODEC_QUICK_QUALITIES = (0, 30, 60, 90)
SPEED_QUALITY = 75.0
#: Sections of a run, in the order they are reported; a run without ``--sections`` has the default ones.
SECTIONS = ("rd", "speed", "lossless", "high-rate")
DEFAULT_SECTIONS = ("rd", "speed")
#: semcodec in the high-rate section: qualities (above 90 they add layer 2) and bpp targets above quality 100's
#: rate (met by layer 2), full and --quick. On Kodak quality 100 averages 5.0 bpp (at most 7.2) and lossless needs
#: 8.07 bpp at least (kodim03): every target, +2 %, stays below each image's lossless size, so every image is in
#: every mean (a target above it is a RateControlError row, one that lands on lossless has an infinite PSNR).
HIGH_RATE_QUALITIES = (80, 90, 92, 94, 96, 98, 100)
HIGH_RATE_QUICK_QUALITIES = (80, 94, 100)
HIGH_RATE_BPPS = (6, 7, 7.5)
HIGH_RATE_QUICK_BPPS = (7,)

#: Columns of ``measurements.csv`` (one row per image and setting).
COLUMNS = ("image", "width", "height", "codec", "family", "param", "setting", "bytes", "bpp", "psnr", "ms_ssim",
           "token_cos", "token_mse", "layer0_bytes", "layer0_cos", "layer0_mse", "enc_s", "dec_s",
           "tokens_dec_s", "enc_peak_mib", "dec_peak_mib", "error")
#: Columns of ``lossless.csv`` (one row per image and lossless codec); ``exact`` is ``yes`` or ``no``.
LOSSLESS_COLUMNS = ("image", "width", "height", "codec", "family", "bytes", "bpp", "exact", "enc_s", "dec_s",
                    "enc_peak_mib", "dec_peak_mib", "error")
#: Columns of ``speed.csv``.
SPEED_COLUMNS = ("image", "width", "height", "what", "device", "threads", "repeats", "median_s", "min_s",
                 "bytes", "mpix_per_s", "note")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One point of one curve.

    Attributes:
        codec: curve id (``semcodec-ms192``, ``semcodec-ms192+semantic=tiny``, ``jpeg420``, …).
        family: ``semcodec``, ``pillow`` or ``compressai``.
        param: the knob value (quality).
        kwargs: semcodec: ``compress_image`` keywords; baselines: ``{"quality": value}``.
        label: human-readable curve description.
        baseline: the baseline codec (None for semcodec).
    """

    codec: str
    family: str
    param: float
    kwargs: dict
    label: str
    baseline: Baseline | None = field(default=None, repr=False, compare=False)

    @property
    def setting_json(self) -> str:
        return json.dumps(self.kwargs, sort_keys=True)


def semcodec_settings(model: str, semantic: str | None = None, quick: bool = False) -> list[dict]:
    """The default semcodec sweep: quality, and the same with a semantic layer when a tower is given.

    Where ``compress_image`` takes ``semantic``, the pixels-only curve passes ``semantic=False``
    explicitly (otherwise it would get the default tower's layer 0 on machines that have its weights).
    """
    qualities = SEMCODEC_QUICK_QUALITIES if quick else SEMCODEC_QUALITIES
    plain = {"semantic": False} if not unsupported_keywords({"semantic": False}) else {}
    out = [{"quality": float(q), "model": model, **plain} for q in qualities]
    if semantic:
        out += [{"quality": float(q), "model": model, "semantic": semantic} for q in qualities]
    return out


def high_rate_settings(model: str, quick: bool = False) -> list[dict]:
    """The semcodec sweep of the high-rate section: pixels only (as :func:`semcodec_settings`), qualities from the
    pixel layer's upper range into layer 2, then bpp targets above what quality 100 reaches."""
    plain = {"semantic": False} if not unsupported_keywords({"semantic": False}) else {}
    qualities = HIGH_RATE_QUICK_QUALITIES if quick else HIGH_RATE_QUALITIES
    bpps = HIGH_RATE_QUICK_BPPS if quick else HIGH_RATE_BPPS
    return ([{"quality": float(q), "model": model, **plain} for q in qualities]
            + [{"bpp": float(b), "model": model, **plain} for b in bpps])


def curve_name(kwargs: dict) -> str:
    """Curve id of a semcodec setting: the model name plus every non-rate keyword (``+key=value``).

    Keywords set to None or False (an option turned off) do not change the name.
    """
    from ..models.registry import DEFAULT_CODEC_MODEL

    extras = sorted((k, v) for k, v in kwargs.items()
                    if k not in RATE_KEYS and k != "model" and v is not None and v is not False)
    return kwargs.get("model", DEFAULT_CODEC_MODEL) + "".join(f"+{k}={v}" for k, v in extras)


def _rate_param(kwargs: dict) -> float:
    for key in ("quality", "bpp", "size"):
        if kwargs.get(key) is not None:
            return float(kwargs[key])
    return math.nan


def compress_image_keywords() -> list[str]:
    """The keyword arguments of this build's ``compress_image`` (what a semcodec setting may name)."""
    from ..api import compress_image

    params = pyinspect.signature(compress_image).parameters.values()
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY]


def unsupported_keywords(kwargs: dict) -> list[str]:
    """The keywords of a semcodec setting that this build's ``compress_image`` does not accept."""
    accepted = compress_image_keywords()
    return [k for k in kwargs if k not in accepted]


# --------------------------------------------------------------------------- measurement helpers


class PeakMemory:
    """Peak memory of a block of code, in MiB (see the module doc for the method).

    Example:
        >>> probe = PeakMemory()
        >>> with probe.measure() as m:
        ...     x = bytearray(64 << 20)
        >>> m.peak_mib > 32                                   # doctest: +SKIP
        True
    """

    def __init__(self, method: str | None = None):
        self.method = method or ("rss-hwm" if self._hwm_works() else "tracemalloc")
        self._trim = None
        if self.method == "rss-hwm":
            try:
                import ctypes
                self._trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):  # not glibc
                self._trim = None

    @staticmethod
    def _status_kib(field_name: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        raise OSError(f"{field_name} not in /proc/self/status")

    @classmethod
    def _hwm_works(cls) -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            cls._status_kib("VmHWM")
            return True
        except OSError:
            return False

    @contextlib.contextmanager
    def measure(self) -> Iterator["_Peak"]:
        peak = _Peak()
        if self.method == "rss-hwm":
            if self._trim is not None:
                self._trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            before = self._status_kib("VmRSS")
            try:
                yield peak
            finally:
                peak.peak_mib = max(0, self._status_kib("VmHWM") - before) / 1024
        else:
            import tracemalloc

            started = not tracemalloc.is_tracing()
            if started:
                tracemalloc.start()
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            try:
                yield peak
            finally:
                peak.peak_mib = max(0, tracemalloc.get_traced_memory()[1] - base) / 2**20
                if started:
                    tracemalloc.stop()


@dataclass
class _Peak:
    peak_mib: float = math.nan


def _timed(fn: Callable, memory: PeakMemory | None = None):
    """(result, seconds, peak MiB) of one call."""
    if memory is None:
        t0 = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t0, math.nan
    with memory.measure() as m:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, seconds, m.peak_mib


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily run torch on ``n`` threads."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _repeat(fn: Callable, repeats: int) -> tuple[float, float, object]:
    """(median, min, last result) of ``repeats`` timed calls."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def _decode_tokens_fn() -> Callable | None:
    """The tokens-only decoder of this build (``api.decode_tokens`` or the semantic coder's), or None."""
    from .. import api

    fn = getattr(api, "decode_tokens", None)
    if fn is None:
        try:
            from ..layers.semantic import decode_tokens as fn
        except ImportError:
            return None
    return fn


def _token_tensor(decoded):
    """``(N, D)`` tokens from whatever the tokens decoder returns (a Tokens object or a tensor)."""
    return getattr(decoded, "tokens", decoded)


def list_images(folder: Path, limit: int | None = None, quick: bool = False, quick_count: int = 4) -> list[Path]:
    """Image files of a folder, sorted; ``quick`` keeps ``quick_count`` evenly spaced ones.

    Raises:
        InvalidInputError: ``folder`` does not exist or is not a folder.
    """
    files = files_in(folder, IMAGE_SUFFIXES, role="image folder")
    if quick and len(files) > quick_count:
        n = len(files)
        files = [files[round(i * (n - 1) / (quick_count - 1))] for i in range(quick_count)]
    return files[:limit] if limit else files


def run_script(main: Callable[[], object]) -> None:
    """Run a ``benchmarks/`` script's ``main``: a semcodec error (a missing image folder or model)
    ends it with a one-line message and exit status 2 instead of a traceback."""
    try:
        main()
    except SemcodecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


# --------------------------------------------------------------------------- run


@dataclass
class BenchConfig:
    """What to run.

    Attributes:
        images: image files.
        model: codec model of the semcodec curves.
        semantic: semantic tower for token fidelity (and for the semantic-layer curve), or None.
        baselines: names from :data:`~semcodec.bench.baselines.BASELINE_NAMES`.
        threads: torch / AVIF / JPEG XL threads.
        quick: shorter sweeps.
        seed: seeds Python, numpy and torch (nothing here should be random; recorded anyway).
        settings: semcodec settings (compress_image kwargs); None = :func:`semcodec_settings`.
        speed_images: images of the speed section (the first ones).
        speed_repeats: repeats per speed measurement (median reported).
        hub_dir: torch hub folder searched for CompressAI weights (None = torch's).
        sections: which of :data:`SECTIONS` to run.
    """

    images: list[Path]
    model: str
    semantic: str | None = "tiny"
    baselines: Sequence[str] = ("jpeg420", "jpeg444", "webp", "avif", "jxl", "compressai")
    threads: int = 1
    quick: bool = False
    seed: int = 0
    settings: list[dict] | None = None
    speed_images: int = 4
    speed_repeats: int = 3
    hub_dir: str | None = None
    sections: Sequence[str] = DEFAULT_SECTIONS


@dataclass
class BenchResult:
    """Everything a run measured, plus what the report needs to describe it.

    ``rows``/``settings``/``labels``/``families`` belong to the ``rd`` section, ``high_rate*`` to the
    ``high-rate`` section (rows with the same columns), ``lossless*`` to the ``lossless`` section.
    """

    rows: list[dict]
    speed: list[dict]
    settings: list[Setting]
    notes: list[str]
    labels: dict[str, str]            # curve id → label
    families: dict[str, str]          # curve id → family
    memory_method: str
    tower: str | None
    seconds: float
    sections: tuple[str, ...] = DEFAULT_SECTIONS
    high_rate: list[dict] = field(default_factory=list)
    high_rate_labels: dict[str, str] = field(default_factory=dict)
    lossless: list[dict] = field(default_factory=list)
    lossless_labels: dict[str, str] = field(default_factory=dict)


def _semcodec_setting_objects(config: BenchConfig, notes: list[str], kwargs_list: list[dict] | None = None
                              ) -> list[Setting]:
    if kwargs_list is None:
        kwargs_list = config.settings if config.settings is not None else semcodec_settings(
            config.model, config.semantic, config.quick)
    out, skipped = [], {}
    for kw in kwargs_list:
        kw = {"model": config.model} | dict(kw)
        bad = unsupported_keywords(kw)
        name = curve_name(kw)
        if bad:
            skipped.setdefault(name, bad)
            continue
        label = name if name.startswith("semcodec") else f"semcodec {name}"
        out.append(Setting(name, "semcodec", _rate_param(kw), kw, label))
    for name, bad in skipped.items():
        notes.append(f"{name}: skipped, compress_image does not accept {', '.join(map(repr, bad))} in this build")
    return out


def _baseline_setting_objects(baselines: list[Baseline], quick: bool) -> list[Setting]:
    return [Setting(b.name, b.family, float(v), {b.param: v}, b.label, b)
            for b in baselines for v in (b.quick_sweep if quick else b.sweep)]


class _Runner:
    """Holds the loaded models and measures one (image, setting) at a time."""

    def __init__(self, config: BenchConfig, tower, memory: PeakMemory):
        from .. import api

        self.api, self.config, self.tower, self.memory = api, config, tower, memory
        self.decode_tokens = _decode_tokens_fn()

    def encode(self, s: Setting, image: Image.Image) -> bytes:
        if s.baseline is not None:
            return s.baseline.encode(image, s.param, self.config.threads)
        return self.api.compress_image(image, **s.kwargs).data

    def decode(self, s: Setting, data: bytes) -> Image.Image | None:
        if s.baseline is not None:
            return s.baseline.decode(data, s.param)
        from ..errors import MissingLayerError

        try:
            return self.api.decompress(data)
        except MissingLayerError:   # a tokens-only stream
            return None

    def layer0_bytes(self, s: Setting, data: bytes) -> int:
        if s.family != "semcodec":
            return 0
        return int(self.api.inspect(data).layers.get("SEM0", 0))

    def measure(self, path: Path, image: Image.Image, tokens, s: Setting) -> dict:
        w, h = image.size
        row = dict.fromkeys(COLUMNS, "")
        row.update(image=path.name, width=w, height=h, codec=s.codec, family=s.family, param=s.param,
                   setting=s.setting_json)
        try:
            data, row["enc_s"], row["enc_peak_mib"] = _timed(lambda: self.encode(s, image), self.memory)
            decoded, row["dec_s"], row["dec_peak_mib"] = _timed(lambda: self.decode(s, data), self.memory)
            row["bytes"] = len(data)
            row["bpp"] = len(data) * 8 / (w * h)
            sem_bytes = self.layer0_bytes(s, data)
            t_hat = None
            if sem_bytes:
                row["layer0_bytes"] = sem_bytes
                if self.decode_tokens is not None:
                    out, row["tokens_dec_s"], _ = _timed(lambda: self.decode_tokens(data))
                    t_hat = _token_tensor(out)
            # Metrics are not timed; on one thread they are 2-3x faster on a busy machine.
            with _torch_threads(1):
                if decoded is not None:
                    original = np.asarray(image)
                    row["psnr"] = psnr(original, decoded)
                    row["ms_ssim"] = ms_ssim(original, decoded)
                    if tokens is not None:
                        f = token_fidelity(self.tower.tokens([decoded])[0], tokens)
                        row["token_cos"], row["token_mse"] = f.cosine, f.mse
                if t_hat is not None and tokens is not None and tuple(t_hat.shape[-2:]) == tuple(tokens.shape[-2:]):
                    f = token_fidelity(t_hat, tokens)
                    row["layer0_cos"], row["layer0_mse"] = f.cosine, f.mse
        except Exception as e:  # one failing point must not lose the run; the row says why
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return row

    def measure_lossless(self, path: Path, image: Image.Image, codec: LosslessCodec) -> dict:
        """One row of the lossless section; a decode that is not bit-exact is the row's error."""
        w, h = image.size
        row = dict.fromkeys(LOSSLESS_COLUMNS, "")
        row.update(image=path.name, width=w, height=h, codec=codec.name, family=codec.family)
        try:
            data, row["enc_s"], row["enc_peak_mib"] = _timed(lambda: codec.encode(image, self.config.threads),
                                                             self.memory)
            decoded, row["dec_s"], row["dec_peak_mib"] = _timed(lambda: codec.decode(data), self.memory)
            row["bytes"] = len(data)
            row["bpp"] = len(data) * 8 / (w * h)
            why = mismatch(np.asarray(image), decoded)
            row["exact"] = "no" if why else "yes"
            if why:
                row["error"] = why
        except Exception as e:  # one failing codec must not lose the run; the row says why
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return row


def _semcodec_lossless(config: BenchConfig, notes: list[str]) -> list[LosslessCodec]:
    """semcodec ``lossless=True`` (pixels only) as a lossless codec, or none (with a note) in a build without it."""
    from .. import api

    kw = {"lossless": True, "model": config.model}
    kw |= {"semantic": False} if not unsupported_keywords({"semantic": False}) else {}
    if unsupported_keywords(kw):
        notes.append("lossless: compress_image has no lossless= in this build; semcodec skipped")
        return []
    return [LosslessCodec(config.model, f"{config.model} (compress_image lossless=True: layer 1 + layer 2)",
                          lambda image, threads: api.compress_image(image, **kw).data, api.decompress,
                          family="semcodec")]


def _warm_up_lossless(runner: _Runner, codecs: list[LosslessCodec], image: Image.Image) -> None:
    """Codes a 64×64 crop with every lossless codec (loads models); a failure shows in its rows later."""
    crop = image.crop((0, 0, min(64, image.width), min(64, image.height)))
    for codec in codecs:
        try:
            codec.decode(codec.encode(crop, runner.config.threads))
        except Exception:  # measure_lossless() records it if it fails for real
            pass


def _warm_up(runner: _Runner, settings: list[Setting], image: Image.Image, notes: list[str]) -> list[Setting]:
    """Runs every setting once on a small crop (loads models); drops settings that cannot run at all."""
    crop = image.crop((0, 0, min(64, image.width), min(64, image.height)))
    ok, failed = [], {}
    for s in settings:
        try:
            data = runner.encode(s, crop)
            runner.decode(s, data)
            ok.append(s)
        except TypeError as e:   # an option this build does not have
            failed.setdefault(s.codec, f"{type(e).__name__}: {e}")
        except Exception:        # may fail on the crop only; measure() records it if it fails for real
            ok.append(s)
    for codec, why in failed.items():
        notes.append(f"{codec}: skipped ({why[:200]})")
    return ok


def _semantic_stream(runner: _Runner, image: Image.Image, tokens) -> tuple[bytes | None, str]:
    """A stream with a semantic layer for the tokens-only decode timing, and how it was made."""
    api, cfg = runner.api, runner.config
    if not cfg.semantic:
        return None, "no semantic tower (--semantic none)"
    if not unsupported_keywords({"semantic": cfg.semantic}):
        r = api.compress_image(image, quality=SPEED_QUALITY, model=cfg.model, semantic=cfg.semantic)
        return r.data, f"compress_image(quality={SPEED_QUALITY:g}, semantic={cfg.semantic!r})"
    try:  # until compress_image takes semantic=: a semantic-only stream from the layer-0 coder
        from ..bitstream.container import SEMANTIC_LAYER, Chunk, Container, Header, write_container
        from ..layers.semantic import SemanticCoder, find_calibration, load_calibration

        cal = load_calibration(find_calibration(runner.tower.spec.name))
        coder = SemanticCoder(cal)
        rate = coder.rate_range[len(coder.rate_range) // 2]
        header = Header(codec_model="", codec_checkpoint=bytes(8), semantic_model=cal.model,
                        calibration=cal.hash8, preprocessing=cal.preprocessing_id, width=image.width,
                        height=image.height, layers=(SEMANTIC_LAYER,))
        extra = {"image_size": image.size} if "image_size" in pyinspect.signature(coder.encode).parameters else {}
        payload = coder.encode(tokens, rate=rate, **extra)
        data = write_container(Container(header, (Chunk(SEMANTIC_LAYER, payload),)))
        runner.decode_tokens(data)     # it must decode, or there is nothing to time
        return data, f"semantic-only stream from SemanticCoder (rate index {rate}; compress_image has no semantic= yet)"
    except Exception as e:  # the layer-0 coder is absent or changed: no tokens-only timing
        return None, f"no semantic stream available ({type(e).__name__}: {str(e)[:120]})"


def _speed_section(runner: _Runner, images: list[tuple[Path, Image.Image, object]], progress) -> list[dict]:
    import torch

    cfg, api = runner.config, runner.api
    rows = []

    def add(path, image, what, median, minimum, nbytes="", device="cpu", note=""):
        w, h = image.size
        rows.append(dict(image=path.name, width=w, height=h, what=what, device=device, threads=cfg.threads,
                         repeats=cfg.speed_repeats, median_s=median, min_s=minimum, bytes=nbytes,
                         mpix_per_s=w * h / 1e6 / median if median > 0 else math.nan, note=note))

    for path, image, tokens in images:
        progress(f"speed: {path.name}")
        kw = {"quality": SPEED_QUALITY, "model": cfg.model}
        med, mn, result = _repeat(lambda: api.compress_image(image, **kw), cfg.speed_repeats)
        data = result.data
        add(path, image, f"encode (q={SPEED_QUALITY:g})", med, mn, len(data))
        med, mn, decoded = _repeat(lambda: api.decompress(data), cfg.speed_repeats)
        add(path, image, "decode pixels", med, mn, len(data))
        if runner.tower is None:
            continue
        tower = runner.tower
        med, mn, _ = _repeat(lambda: tower.tokens([decoded]), cfg.speed_repeats)
        add(path, image, f"tower forward ({tower.spec.name})", med, mn)
        med, mn, _ = _repeat(lambda: tower.tokens([api.decompress(data)]), cfg.speed_repeats)
        add(path, image, f"decode pixels + tower ({tower.spec.name})", med, mn, len(data))
        stream, how = _semantic_stream(runner, image, tokens) if runner.decode_tokens is not None else (
            None, "this build has no tokens decoder")
        if stream is not None:
            med, mn, _ = _repeat(lambda: runner.decode_tokens(stream), cfg.speed_repeats)
            add(path, image, "decode tokens (layer 0 only)", med, mn, len(stream), note=how)
        else:
            add(path, image, "decode tokens (layer 0 only)", math.nan, math.nan, note=how)
        if torch.cuda.is_available():
            tower.to("cuda")
            try:
                def on_gpu():
                    out = tower.tokens([decoded])
                    torch.cuda.synchronize()
                    return out
                on_gpu()
                med, mn, _ = _repeat(on_gpu, cfg.speed_repeats)
                add(path, image, f"tower forward ({tower.spec.name})", med, mn,
                    device=torch.cuda.get_device_name(0))
            finally:
                tower.to("cpu")
    return rows


def run_bench(config: BenchConfig, progress: Callable[[str], None] = lambda msg: None) -> BenchResult:
    """Measures the sections of ``config`` on every image: every setting of the ``rd`` and ``high-rate`` sweeps,
    every lossless codec, then the speed section.

    Raises:
        SemcodecError: the codec model or the semantic tower is not available.
        ValueError: no images, an unknown section or an unknown baseline name.
    """
    import torch

    from ..imageio import load_rgb
    from ..models.registry import require_checkpoint

    if not config.images:
        raise ValueError("no images to benchmark")
    sections = tuple(s for s in SECTIONS if s in config.sections)
    unknown = [s for s in config.sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(SECTIONS)}")
    start = time.perf_counter()
    require_checkpoint(config.model)           # fail fast with the registry's message
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    set_decoder_threads(config.threads)
    try:
        notes: list[str] = []
        tower = None
        if config.semantic and ("rd" in sections or "speed" in sections):
            from ..models.semantic import load_tower
            tower = load_tower(config.semantic)
            if tower.spec.is_tiny:
                notes.append("token fidelity uses the tiny tower: random fixed-seed weights, NOT semantic "
                             "(it checks the plumbing, not meaning); pass --semantic clip-l14-336 for real tokens")
        settings: list[Setting] = []
        if "rd" in sections:
            baselines, baseline_notes = select_baselines(list(config.baselines), config.hub_dir)
            notes += baseline_notes
            settings = _semcodec_setting_objects(config, notes) + _baseline_setting_objects(baselines, config.quick)
        high: list[Setting] = []
        if "high-rate" in sections:
            baselines, baseline_notes = high_rate_baselines(list(config.baselines))
            notes += [f"high-rate: {n}" for n in baseline_notes]
            high = (_semcodec_setting_objects(config, notes, high_rate_settings(config.model, config.quick))
                    + _baseline_setting_objects(baselines, config.quick))
        lossless: list[LosslessCodec] = []
        if "lossless" in sections:
            lossless = _semcodec_lossless(config, notes) + (lossless_codecs() if list(config.baselines) else [])
        memory = PeakMemory()
        runner = _Runner(config, tower, memory)
        loaded = []
        rows: list[dict] = []
        high_rows: list[dict] = []
        lossless_rows: list[dict] = []
        speed_images = config.speed_images if "speed" in sections else 0
        for i, path in enumerate(config.images):
            image = Image.fromarray(load_rgb(path))
            tokens = None
            if tower is not None and "rd" in sections:
                with _torch_threads(1):
                    tokens = tower.tokens([image])[0]                  # (N, D)
            if i == 0:
                settings = _warm_up(runner, settings, image, notes)
                high = _warm_up(runner, high, image, notes)
                _warm_up_lossless(runner, lossless, image)
            done = []
            for name, items, measure, out in (
                    ("rd", settings, lambda s: runner.measure(path, image, tokens, s), rows),
                    ("lossless", lossless, lambda c: runner.measure_lossless(path, image, c), lossless_rows),
                    ("high-rate", high, lambda s: runner.measure(path, image, None, s), high_rows)):
                if not items:
                    continue
                t0 = time.perf_counter()
                out.extend(measure(item) for item in items)
                done.append(f"{name} {len(items)} {'codecs' if name == 'lossless' else 'settings'} "
                            f"{time.perf_counter() - t0:.1f} s")
            progress(f"[{i + 1}/{len(config.images)}] {path.name}: {'; '.join(done) or 'nothing to measure'}")
            if i < speed_images:
                loaded.append((path, image, tokens))
        for what, measured in (("", rows), ("high-rate: ", high_rows), ("lossless: ", lossless_rows)):
            failed = sum(bool(r["error"]) for r in measured)
            if failed:
                where = "lossless.csv" if measured is lossless_rows else (
                    "high_rate.csv" if measured is high_rows else "measurements.csv")
                notes.append(f"{what}{failed} of {len(measured)} measurements failed (see the error column of {where})")
        speed = _speed_section(runner, loaded, progress) if speed_images else []
        return BenchResult(
            rows=rows, speed=speed, settings=settings, notes=notes,
            labels={s.codec: s.label for s in settings}, families={s.codec: s.family for s in settings},
            memory_method=memory.method, tower=tower.spec.name if tower is not None else None,
            seconds=time.perf_counter() - start, sections=sections, high_rate=high_rows,
            high_rate_labels={s.codec: s.label for s in high}, lossless=lossless_rows,
            lossless_labels={c.name: c.label for c in lossless})
    finally:
        torch.set_num_threads(old_threads)
        set_decoder_threads(None)
