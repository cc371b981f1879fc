"""The Python interface of semcodec: ``compress``, ``decompress``, ``decode_tokens``, ``inspect``.

Example:
    >>> import semcodec
    >>> data = semcodec.compress("assets/sample.png", quality=75)        # doctest: +SKIP
    >>> image = semcodec.decompress(data)                                # PIL.Image
    >>> semcodec.inspect(data).layers                                     # doctest: +SKIP
    {'SEM0': 812, 'RES1': 20931}

Models are loaded once per process and reused (see :func:`load_codec`).
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .bitstream.container import (
    CHUNK_OVERHEAD,
    LAYER_TYPES,
    REFINEMENT_LAYER,
    RESIDUAL_LAYER,
    RESIDUAL_TILES_VERSION,
    SEMANTIC_LAYER,
    Chunk,
    Container,
    Header,
    read_container,
    write_container,
)
from .bitstream.info import StreamInfo, inspect, stream_data  # noqa: F401 - StreamInfo and inspect are public API
from .bitstream.metadata import Metadata, icc_colour_space
from .errors import (
    CorruptStreamError,
    InvalidInputError,
    MissingLayerError,
    ModelMismatchError,
    RateControlError,
    SemcodecError,
    TargetAboveReachError,
)
from .fsutil import file_digest8
from .imageio import GRAY_TOLERANCE, channel_spread, gray_from_rgb, load_image
from .layers.pixels.checkpoint import load_residual_checkpoint
from .layers.pixels.coder import ResidualCoder, image_to_tensor
from .layers.pixels.payload import container_version, residual_is_conditioned
from .layers.pixels.refine import Latents, ProgressCallback, effort_iterations, refine_latents, search_device
from .models.registry import DEFAULT_CODEC_MODEL, earlier_checkpoints, require_checkpoint
from .models.residual import SemanticCondition
from .ratecontrol import RateCurve, search_rate
from .layers.refinement import STEP_ONE, RefinementCoder

#: Quality used when neither a quality nor a rate target is given.
DEFAULT_QUALITY = 75.0
#: Largest image the pixel layer codes. Decoding works tile by tile (memory bounded by a row of 1024-pixel
#: tiles, besides the decoded image); encoding holds the image and its latent (see the README's numbers).
MAX_PIXEL_LAYER_PIXELS = 256_000_000
#: Largest image whose latents the encoder refines (effort > 0): the refinement backpropagates through the
#: whole-image synthesis, about 0.65 GiB per megapixel on top of the plain encode with the bfloat16 synthesis,
#: 1.2 GiB without (measured peaks for a 1-megapixel image, process included: 1.23 and 1.79 GiB), and time in
#: proportion to the pixels. Larger images are coded at effort 0 with a note (refining them tile by tile is not
#: implemented).
MAX_REFINED_PIXELS = 8_000_000
#: Rate index of layer 0 when no semantic budget is given (see semcodec.layers.semantic).
DEFAULT_SEMANTIC_RATE = 48
#: Qualities above this add layer 2 (the refinement) to the pixel layer, whose knob keeps its meaning: its step
#: shrinks geometrically from REFINEMENT_STEPS[0] levels just above to REFINEMENT_STEPS[1] at quality 100.
REFINEMENT_QUALITY = 90.0
REFINEMENT_STEPS = (32.0, 4.0)
#: Quality of the pixel layer under a lossless layer 2 when none is given (the cheapest total on Kodak).
LOSSLESS_BASE_QUALITY = 82.0


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class LoadedCodec:
    """A codec model ready to code: its coder, registered name and checkpoint hash."""

    name: str
    checkpoint: Path
    digest8: bytes
    coder: ResidualCoder
    rate_curve: RateCurve


def load_codec(name: str = DEFAULT_CODEC_MODEL) -> LoadedCodec:
    """Load a registered codec model's current checkpoint (cached per process and file; see
    :func:`clear_codec_cache`).

    Raises:
        ModelNotAvailableError: its checkpoint is not on this machine.
        ModelError: the checkpoint is malformed.
    """
    return _load_codec_file(name, require_checkpoint(name))


def clear_codec_cache() -> None:
    """Forget the loaded codecs (after checkpoint files or ``$SEMCODEC_CHECKPOINTS`` changed)."""
    _load_codec_file.cache_clear()


@lru_cache(maxsize=4)
def _load_codec_file(name: str, path: Path) -> LoadedCodec:
    """The codec in checkpoint file ``path`` of model ``name``."""
    model, meta = load_residual_checkpoint(path)
    q_min, q_max = model.config.quality_range
    # Without a measured curve: log-linear from 0.1 bpp at q_min to 1.5 bpp at the top trained level.
    default = [(q_min, 0.1), (q_max, 1.5)] if q_max > q_min else [(q_min, 0.5)]
    curve = RateCurve.from_metadata(json.loads(meta["rate_curve"]) if "rate_curve" in meta else default)
    return LoadedCodec(name=name, checkpoint=path, digest8=file_digest8(path), coder=ResidualCoder(model),
                       rate_curve=curve)


def codec_for_stream(name: str, digest8: bytes) -> LoadedCodec:
    """The codec whose checkpoint wrote a stream: the current checkpoint of ``name``, or an earlier one
    kept beside it as ``<name>-<anything>.safetensors`` (see :func:`~semcodec.models.registry.earlier_checkpoints`).

    Raises:
        ModelNotAvailableError: no checkpoint of ``name`` is on this machine.
        ModelMismatchError: none of them has the checkpoint hash ``digest8`` the stream names.
    """
    codec = load_codec(name)
    if codec.digest8 == digest8:
        return codec
    for path in earlier_checkpoints(name):
        if file_digest8(path) == digest8:
            return _load_codec_file(name, path)
    raise ModelMismatchError(
        f"the stream was made with {name} checkpoint {digest8.hex()}, but {codec.checkpoint} is {codec.digest8.hex()}; "
        f"to decode it, put the checkpoint that wrote it (from that semcodec release) beside this one as "
        f"{codec.checkpoint.parent / f'{name}-{digest8.hex()}.safetensors'}")


def refinement_step(quality: float) -> int | None:
    """Step of layer 2 (sixteenths of a level) at a user quality, or None below :data:`REFINEMENT_QUALITY`."""
    if quality <= REFINEMENT_QUALITY:
        return None
    coarse, fine = REFINEMENT_STEPS
    t = (quality - REFINEMENT_QUALITY) / (100 - REFINEMENT_QUALITY)
    return max(STEP_ONE, round(STEP_ONE * coarse * (fine / coarse) ** t))


def step_of_knob(t: float) -> int:
    """Step of layer 2 (sixteenths of a level) at the refinement knob ``t`` in [0, 1] of size targets:
    64 levels at 0 down to 1 (lossless) at 1, geometrically."""
    return max(STEP_ONE, min(64 * STEP_ONE, round(STEP_ONE * 64 ** (1 - t))))


def quality_to_rate(quality: float, quality_range: tuple[float, float]) -> float:
    """Map a user quality in [0, 100] linearly onto the model's quality range ``(q_min, q_max)`` of the knob."""
    if not 0 <= quality <= 100:
        raise InvalidInputError(f"quality must be between 0 and 100, got {quality}")
    q_min, q_max = quality_range
    return q_min + quality / 100 * (q_max - q_min)


# --------------------------------------------------------------------------- compress
@dataclass(frozen=True)
class CompressResult:
    """A compressed image: the stream and how it was made."""

    data: bytes
    width: int
    height: int
    rate: float | None              # residual rate knob q actually used (None: no pixel layer)
    trials: int                     # encodes made (1 without a size target)
    notes: tuple[str, ...] = ()     # things the user should know (e.g. why layer 0 is absent)

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.width * self.height)


def compress_image(image, *, quality: float | None = None, bpp: float | None = None, size: int | None = None,
                   max_size: bool = False, model: str = DEFAULT_CODEC_MODEL, semantic: str | bool | None = None,
                   semantic_weights: str | Path | None = None, semantic_only: bool = False,
                   semantic_bytes: int | None = None, effort: int = 0, device: str = "cpu",
                   progress: ProgressCallback | None = None, strip_metadata: bool = False,
                   lossless: bool = False) -> CompressResult:
    """Compress an image and report how (see :func:`compress` for the arguments).

    ``progress(done, total)`` is called after each iteration of the latent refinement (effort > 0).
    """
    if sum(t is not None for t in (quality, bpp, size)) > 1:
        raise InvalidInputError("give at most one of quality, bpp and size")
    if lossless and (bpp is not None or size is not None or semantic_only):
        raise InvalidInputError("lossless takes no size target (its size is what the image needs) and needs "
                                "the pixel layer")
    quality, bpp = _number(quality, "quality"), _number(bpp, "bpp")
    size, semantic_bytes = _number(size, "size", whole=True), _number(semantic_bytes, "semantic_bytes", whole=True)
    effort = _number(effort, "effort", whole=True)
    steps = effort_iterations(effort)
    device = search_device(device)
    notes: list[str] = []                                        # things the user should know, one line each
    loaded = load_image(image, notes, metadata=not strip_metadata)
    pixels = loaded.pixels                                       # (H, W, 3) uint8
    height, width = pixels.shape[:2]
    spread = channel_spread(pixels)
    gray = spread <= GRAY_TOLERANCE                              # decoded as one channel
    if gray and spread:
        notes.append(f"nearly gray (its channels differ by at most {spread} level): decoded as grayscale")
    metadata = _stream_metadata(loaded.metadata, gray)           # META payload (None: no chunk)
    metadata_bytes = len(metadata) + CHUNK_OVERHEAD if metadata is not None else 0
    if bpp is not None:
        if not (bpp > 0 and math.isfinite(bpp)):
            raise InvalidInputError(f"bpp must be a positive finite number, got {bpp}")
        size = max(1, int(round(bpp * width * height / 8)))
    if size is not None and size <= 0:
        raise InvalidInputError(f"size must be a positive number of bytes, got {size}")
    if size is not None and metadata_bytes >= size and not strip_metadata:
        raise RateControlError(f"the image's metadata (EXIF, ICC profile, XMP) alone takes {metadata_bytes} bytes "
                               f"of the {size}-byte target; drop it with --strip (strip_metadata=True)")
    if semantic_bytes is not None and semantic_bytes <= 0:
        raise InvalidInputError(f"the semantic budget must be positive, got {semantic_bytes} bytes")

    if semantic_only and size is not None and semantic_bytes is not None:
        raise InvalidInputError("a --semantic-only stream is layer 0 alone: budget it with --size/--bpp or "
                                "--semantic-bytes, not both")
    tower_name = _choose_semantic(semantic, semantic_weights, semantic_only, semantic_bytes, notes)
    layer0 = None
    if tower_name is not None:
        whole_stream = semantic_only and size is not None
        layer0 = _encode_semantic(pixels, tower_name, semantic_weights,
                                  max_bytes=size if whole_stream else semantic_bytes, whole_stream=whole_stream,
                                  metadata=metadata, notes=notes, device=device)
    if semantic_only:
        if quality is not None:
            notes.append("--quality applies to the pixel layer and is ignored with --semantic-only")
        header = _header(width, height, layer0, None, gray)
        data = write_container(Container(header, (Chunk(SEMANTIC_LAYER, layer0.payload),), metadata=metadata))
        if size is not None and len(data) > size * (1 + 0.02) and not max_size:
            raise RateControlError(f"the smallest semantic-only stream is {len(data)} bytes; the target is {size}")
        return CompressResult(data, width, height, None, 1, tuple(notes))

    if width * height > MAX_PIXEL_LAYER_PIXELS:
        raise InvalidInputError(f"the pixel layer codes images of up to {MAX_PIXEL_LAYER_PIXELS // 10**6} megapixels; "
                                f"this one is {width}x{height}. Downscale it, or use --semantic-only")
    if steps and width * height > MAX_REFINED_PIXELS:
        notes.append(f"effort {effort}: the latent is refined only for images of up to "
                     f"{MAX_REFINED_PIXELS // 10**6} megapixels (0.7–1.2 GiB of memory each); coded at effort 0")
        steps = 0
    codec = load_codec(model)
    header = _header(width, height, layer0, codec, gray)
    chunks_before = (Chunk(SEMANTIC_LAYER, layer0.payload),) if layer0 else ()
    target2 = pixels[..., 0] if spread == 0 else pixels          # what layer 2 refines towards: gray when exact
    y = codec.coder.analyze_pixels(pixels)                        # (1, M, Hp/16, Wp/16), reused by every trial
    x = image_to_tensor(pixels) if steps else None                # (1, 3, H, W): the refinement's distortion

    condition = None
    if layer0 is not None and codec.coder.model.has_semantic_prior(layer0.model):
        _, coder0 = _semantic_models(tower_name, str(semantic_weights) if semantic_weights else None)
        decoded = coder0.decode(layer0.payload, image_size=(width, height))   # exactly what a decoder gets
        condition = semantic_condition(layer0.model, decoded.full, decoded.grid, width, height)

    def encoder_for(latents: Latents | None):
        """Stream at knob q of the refined latents, or of the plain analysis ``y`` (None)."""
        def encode(q: float) -> bytes:
            if latents is None:
                residual = codec.coder.encode_analyzed(y, q, condition)
            else:
                residual = latents.encode(codec.coder, q, condition)
            container = Container(header, chunks_before + (Chunk(RESIDUAL_LAYER, residual),), metadata=metadata)
            return write_container(replace(container, version=container_version(residual, container.version)))
        return encode

    def refined(q: float) -> Latents:
        return refine_latents(codec.coder, x, y, q, steps, condition, device=device, progress=progress)

    def with_refinement(stream: bytes):
        """Stream at step16 of layer 2 over the pixel layer of ``stream`` (its pixels decoded once)."""
        container = read_container(stream)
        base = _pixel_layer_pixels(codec, container, condition)
        header2 = replace(header, layers=header.layers + (REFINEMENT_LAYER,))

        def encode(step16: int) -> bytes:
            payload = RefinementCoder().encode(target2, base, step16)
            chunks = container.chunks + (Chunk(REFINEMENT_LAYER, payload),)
            return write_container(Container(header2, chunks, metadata=metadata))
        return encode

    rate_range = codec.coder.rate_range
    if size is None:
        quality = (LOSSLESS_BASE_QUALITY if lossless else DEFAULT_QUALITY) if quality is None else quality
        q = quality_to_rate(quality, codec.coder.quality_range)
        stream = encoder_for(refined(q) if steps else None)(q)
        step16 = STEP_ONE if lossless else refinement_step(quality)
        if step16 is not None:
            stream = with_refinement(stream)(step16)
        return CompressResult(stream, width, height, q, 1, tuple(notes))
    # First guess from the model's typical size curve, for the bytes left to the pixel layer.
    residual_bytes = max(size - (len(layer0.payload) if layer0 else 0) - metadata_bytes, 1)
    q0, slope = codec.rate_curve.guess(residual_bytes * 8 / (width * height), rate_range)
    try:
        found = search_rate(encoder_for(None), size, *rate_range, q_start=q0, slope=slope, never_above=max_size)
    except TargetAboveReachError:                                 # above what the pixel layer reaches
        return _refinement_to_size(encoder_for, refined if steps else None, with_refinement,
                                   quality_to_rate(100, codec.coder.quality_range), size, max_size, width, height,
                                   notes)
    trials = len(found.trials)
    if steps:
        # Refine once at the knob found for the plain latent, then search again around it with
        # the refined latent (cheap trials): a latent refined for q stays good near q.
        found = search_rate(encoder_for(refined(found.q)), size, *rate_range, q_start=found.q, slope=slope,
                            never_above=max_size)
        trials += len(found.trials)
    return CompressResult(found.data, width, height, found.q, trials, tuple(notes))


def _refinement_to_size(encoder_for, refined, with_refinement, q_top: float, size: int, max_size: bool, width: int,
                        height: int, notes: list[str]) -> CompressResult:
    """A size target above the pixel layer's reach: the pixel layer at quality 100 (its latents refined when
    ``refined`` is given) and layer 2 with the step that meets the target."""
    encode = with_refinement(encoder_for(refined(q_top) if refined else None)(q_top))
    try:
        found = search_rate(lambda t: encode(step_of_knob(t)), size, 0.0, 1.0, q_start=2 / 3, slope=3.0,
                            never_above=max_size, quantum=1 / 1024)
    except TargetAboveReachError as above:                        # the largest stream is the lossless one
        lossless = above.largest
        if not max_size:
            raise
        notes.append(f"the target is above the lossless size: the stream is lossless ({len(lossless)} bytes)")
        return CompressResult(lossless, width, height, q_top, 1, tuple(notes))
    notes.append(f"the target is above what the pixel layer reaches: layer 2 refines it with a step of "
                 f"{step_of_knob(found.q) / STEP_ONE:g} level(s)")
    return CompressResult(found.data, width, height, q_top, len(found.trials) + 1, tuple(notes))


def _pixel_layer_pixels(codec: LoadedCodec, container: Container, condition) -> np.ndarray:
    """The pixel layer of ``container`` decoded, as every decoder gets it: (H, W) for a gray image, else (H, W, 3)
    uint8. ``condition``: the semantic condition when the layer is conditioned on layer 0."""
    h = container.header
    payload = container.layer(RESIDUAL_LAYER)
    rgb = codec.coder.decode(payload, h.width, h.height, condition if residual_is_conditioned(payload) else None,
                             tiles_allowed=container.version >= RESIDUAL_TILES_VERSION)     # (H, W, 3) uint8
    # The image shares the decoded array's memory (no second copy of a large image).
    return gray_from_rgb(rgb) if h.gray else rgb


def _number(value, name: str, whole: bool = False):
    """``value`` checked to be a real number (an ``int`` for ``whole``), or None; a string, a bool or
    a fractional byte count is an :class:`InvalidInputError`, not a ``TypeError`` deep inside."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidInputError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    if whole:
        if not (math.isfinite(value) and value == int(value)):
            raise InvalidInputError(f"{name} must be a whole number, got {value}")
        return int(value)
    return value


@dataclass(frozen=True)
class _Layer0:
    """An encoded semantic layer and what the header needs to name it."""

    model: str
    calibration8: bytes
    preprocessing: str
    payload: bytes


def _header(width: int, height: int, layer0: _Layer0 | None, codec: LoadedCodec | None, gray: bool) -> Header:
    layers = ((SEMANTIC_LAYER,) if layer0 else ()) + ((RESIDUAL_LAYER,) if codec else ())
    return Header(codec_model=codec.name if codec else "", codec_checkpoint=codec.digest8 if codec else bytes(8),
                  semantic_model=layer0.model if layer0 else "", calibration=layer0.calibration8 if layer0 else bytes(8),
                  preprocessing=layer0.preprocessing if layer0 else "", width=width, height=height, layers=layers,
                  gray=gray)


def _stream_metadata(metadata: Metadata, gray: bool) -> bytes | None:
    """The META payload of a stream (None: no metadata chunk). An ICC profile is kept only for the colour space
    the image decodes to: an RGB profile of an image decoded as grayscale (or a gray one of an RGB image)
    would be invalid in the decoded file (PNG forbids it), and untagged pixels are sRGB anyway."""
    if metadata.icc_profile and icc_colour_space(metadata.icc_profile) != ("GRAY" if gray else "RGB"):
        metadata = Metadata(exif=metadata.exif, xmp=metadata.xmp)
    return metadata.to_payload() if metadata else None


def _choose_semantic(semantic, weights, semantic_only: bool, semantic_bytes: int | None,
                     notes: list[str]) -> str | None:
    """Which tower codes layer 0: an explicit one, the default when present here, or none (with a note).

    Weights, ``semantic_only`` or a layer-0 budget ask for layer 0: then the default tower
    is used, and an error (not a note) says why when it cannot be."""
    from .models.semantic import DEFAULT_SEMANTIC_MODEL, weights_path
    from .layers.semantic import find_calibration

    if semantic is False:
        if semantic_only or semantic_bytes is not None:
            raise InvalidInputError("--semantic-only and --semantic-bytes need a semantic tower")
        return None
    if semantic not in (None, True):
        return str(semantic)
    name = DEFAULT_SEMANTIC_MODEL
    if weights is not None or semantic_only or semantic_bytes is not None:
        return name
    have_weights = have_calibration = False
    try:
        have_weights = weights_path(name) is not None
        find_calibration(name)
        have_calibration = True
    except SemcodecError:
        pass
    if have_weights and have_calibration:
        return name
    missing = "weights are" if not have_weights else "calibration is"
    notes.append(f"no semantic layer: the default tower {name}'s {missing} not on this machine; "
                 f"pass --semantic tiny (offline, not semantic) or get {name} (see `semcodec models`)")
    return None


@lru_cache(maxsize=4)
def _semantic_models(name: str, weights: str | None):
    """Tower and coder for one semantic model (cached per process)."""
    from .models.semantic import load_tower
    from .layers.semantic import coder_for, find_calibration, load_calibration

    tower = load_tower(name, weights=weights)
    return tower, coder_for(load_calibration(find_calibration(tower.spec.name)))


def _encode_semantic(pixels: np.ndarray, name: str, weights, max_bytes: int | None,
                     whole_stream: bool = False, metadata: bytes | None = None,
                     notes: list[str] | None = None, device: torch.device | str = "cpu") -> _Layer0:
    """Run the tower on the image (once, on ``device``) and code its tokens, at the default rate or within
    ``max_bytes``: the rate search works on those tokens, on the CPU, so the stream depends only on them.

    With ``whole_stream``, ``max_bytes`` budgets the whole semantic-only stream (container and ``metadata``,
    the stream's META payload, included). A dynamic-resolution tower (Qwen2.5-VL) codes the image's own
    token grid, and adds a note to ``notes`` when the image lies outside its pixel limits.
    """
    tower, coder = _semantic_models(name, str(weights) if weights else None)
    cal = coder.calibration
    empty = _Layer0(cal.model, cal.hash8, cal.preprocessing_id, b"")
    height, width = pixels.shape[:2]
    if whole_stream:
        header = _header(width, height, empty, None, gray=False)      # the flag does not change the size
        overhead = len(write_container(Container(header, (Chunk(SEMANTIC_LAYER, b""),), metadata=metadata)))
        if max_bytes - overhead < 1:
            raise RateControlError(f"a semantic-only stream needs more than {overhead} bytes; the target is {max_bytes}")
        max_bytes -= overhead
    grid = None
    if getattr(tower, "variable_grid", False):                   # its token grid for this image size
        grid = tower.grid(width, height)
        note = tower.note(width, height)
        if note and notes is not None:
            notes.append(note)
    tower.to(device)                                             # a no-op when it is there already
    tokens = tower.tokens([Image.fromarray(pixels)])[0]          # (N, D) float32, on the CPU
    if max_bytes is not None:
        payload = coder.encode_to_budget(tokens, max_bytes, image_size=(width, height), grid=grid)
    else:
        payload = coder.encode(tokens, DEFAULT_SEMANTIC_RATE, image_size=(width, height), grid=grid)
    return _Layer0(empty.model, empty.calibration8, empty.preprocessing, payload)


def compress(image, *, quality: float | None = None, bpp: float | None = None, size: int | None = None,
             max_size: bool = False, model: str = DEFAULT_CODEC_MODEL, semantic: str | bool | None = None,
             semantic_weights: str | Path | None = None, semantic_only: bool = False,
             semantic_bytes: int | None = None, effort: int = 0, device: str = "cpu",
             strip_metadata: bool = False, lossless: bool = False) -> bytes:
    """Compress an image into a semcodec stream.

    Give at most one rate setting: ``quality`` (a fixed knob), ``bpp`` (target bits per
    pixel of the whole stream) or ``size`` (target bytes of the whole stream). A target is
    met within ±2 %, or never exceeded with ``max_size=True``.

    Args:
        image: a path, encoded image bytes, a binary file object, a PIL image or an
            (H, W), (H, W, 3) or (H, W, 4) uint8 array.
            Grayscale, 16-bit, transparent and EXIF-rotated images are converted as
            described in :mod:`semcodec.imageio`.
        quality: 0 (smallest) to 100 (best); default 75. Above 90 the pixel layer (its knob unchanged) gets
            layer 2, a refinement whose step shrinks from 32 levels to 4 at 100 (about 46 dB on Kodak).
        bpp: target bits per pixel.
        size: target bytes.
        max_size: treat the target as a ceiling.
        model: registered codec model name.
        semantic: tower of layer 0 (``"clip-l14-336"``, ``"clip-b16"``, ``"siglip-so400m-384"``,
            ``"siglip-b16-224"``, ``"tiny"``, any open_clip ``Arch:tag``); ``None`` uses the default tower when its weights and calibration are
            on this machine (else the stream holds pixels only, with a note); ``False``: no layer 0.
        semantic_weights: weights file of the tower (instead of the cache or a download).
        semantic_only: write layer 0 alone (``size``/``bpp`` then budget it).
        semantic_bytes: byte budget of layer 0 (default: a fixed rate).
        effort: encoder effort 0–3; above 0 the pixel layer's latents are refined for this image
            (:mod:`semcodec.layers.pixels.refine`: smaller streams at the same quality, slower encoding; see
            docs/benchmarks.md for the measured gain and time). Decoding is unchanged.
        device: where the semantic tower runs and the refinement searches (``"cpu"`` or ``"cuda"``); the
            layer-0 coder works on the CPU from the tower's tokens, and the stream is the same kind
            either way and decodes bit-exactly on any machine.
        strip_metadata: leave out the image's EXIF, ICC profile and XMP, which are kept by default
            (EXIF with orientation 1, an ICC profile only when it describes the coded pixels; see
            :mod:`semcodec.imageio`). Kept metadata counts in ``bpp``/``size`` targets.
        lossless: add a lossless layer 2: the stream decodes to exactly the 8-bit pixels coded (those of
            :mod:`semcodec.imageio`'s conversion), over a pixel layer at ``quality`` (default 82).

    Size targets above what the pixel layer reaches are met by layer 2 (pixel layer at quality 100).

    Returns:
        The stream bytes.

    Raises:
        InvalidInputError: unreadable image or bad settings.
        RateControlError: the target is outside the range this model reaches for this image.
    """
    return compress_image(image, quality=quality, bpp=bpp, size=size, max_size=max_size, model=model,
                          semantic=semantic, semantic_weights=semantic_weights, semantic_only=semantic_only,
                          semantic_bytes=semantic_bytes, effort=effort, device=device,
                          strip_metadata=strip_metadata, lossless=lossless).data


def decode_tokens(data):
    """Decode layer 0 of a stream (bytes, a path or a binary file object) into MLLM-ready tokens
    (no pixels, no vision transformer).

    Returns:
        :class:`semcodec.layers.semantic.Tokens`: ``tokens (N, D)``, ``positions`` of the coded
        tokens, ``grid``, tower id, preprocessing and calibration.

    Raises:
        MissingLayerError: the stream has no semantic layer.
    """
    from .layers.semantic import decode_tokens as _decode_tokens

    return _decode_tokens(stream_data(data))


# --------------------------------------------------------------------------- decompress
def decompress(data) -> Image.Image:
    """Decode the pixels of a semcodec stream (bytes, a path or a binary file object) into a PIL image: RGB, or
    8-bit grayscale (mode ``L``) for a gray image. The pixel layer, refined by layer 2 when the stream has it.

    The stream's metadata is in ``image.info`` as Pillow's readers put it: ``"exif"`` (with JPEG's
    ``Exif\\0\\0`` prefix, so ``image.getexif()`` and every Pillow writer take it), ``"icc_profile"`` and
    ``"xmp"`` (bytes); keys are absent for what the stream lacks.

    Raises:
        MissingLayerError: the stream has no pixel layer (semantic-only).
        ModelMismatchError: the stream needs another checkpoint than the one installed.
        StreamError: the stream is truncated or corrupt.
    """
    data = stream_data(data)
    container = read_container(data)
    h = container.header
    payload = container.layer(RESIDUAL_LAYER)
    if payload is None:
        raise MissingLayerError("this stream has no pixel layer (it is semantic-only); "
                                "use `semcodec tokens` to decode its tokens")
    if h.width * h.height > MAX_PIXEL_LAYER_PIXELS:
        raise CorruptStreamError(f"the stream's pixel layer claims {h.width}x{h.height} pixels, beyond the "
                                 f"{MAX_PIXEL_LAYER_PIXELS // 10**6} megapixels any semcodec encoder writes")
    codec = codec_for_stream(h.codec_model, h.codec_checkpoint)
    condition = None
    if residual_is_conditioned(payload):
        from .layers.semantic import decode_tokens as _decode_tokens

        tokens = _decode_tokens(data)      # raises a clear error when layer 0 or its calibration is missing
        condition = semantic_condition(h.semantic_model, tokens.tokens, tokens.grid, h.width, h.height)
    pixels = _pixel_layer_pixels(codec, container, condition)           # (H, W) or (H, W, 3) uint8
    refinement = container.layer(REFINEMENT_LAYER)
    if refinement is not None:
        pixels = RefinementCoder().decode(refinement, pixels)            # (H, W, C) uint8
        pixels = pixels[..., 0] if pixels.shape[2] == 1 else pixels
    mode = "L" if pixels.ndim == 2 else "RGB"
    image = Image.frombuffer(mode, (h.width, h.height), pixels, "raw", mode, 0, 1)
    image.info.update(container.image_metadata().image_info())
    return image


#: Layer numbers of the shell and their chunk types: a layer's number is its place in the stream order.
LAYER_NUMBERS = dict(enumerate(LAYER_TYPES))


def extract_layers(data, layers) -> bytes:
    """A stream with only some layers of another, without re-encoding: each prefix of a stream's layers is a
    valid stream (tokens; tokens and lossy pixels; …). Metadata is kept.

    Args:
        data: the stream (bytes, a path or a binary file object).
        layers: layer numbers to keep (0: semantic, 1: pixels, 2: refinement).

    Raises:
        InvalidInputError: an unknown layer number, none at all, layer 2 without layer 1, or layer 1 without the
            layer 0 its entropy model is conditioned on.
        MissingLayerError: the stream lacks a requested layer.
        StreamError: the stream is truncated or corrupt.
    """
    keep = set(layers)
    unknown = keep - set(LAYER_NUMBERS)
    if unknown or not keep:
        raise InvalidInputError(f"layers are numbered 0 (semantic), 1 (pixels) and 2 (refinement); got "
                                f"{sorted(keep, key=str) or 'none'}")
    container = read_container(stream_data(data))
    present = {n for n, t in LAYER_NUMBERS.items() if t in container.header.layers}
    if keep - present:
        raise MissingLayerError(f"the stream has no layer {', '.join(map(str, sorted(keep - present)))} "
                                f"(its layers: {', '.join(map(str, sorted(present)))})")
    if 2 in keep and 1 not in keep:
        raise InvalidInputError("layer 2 refines layer 1's pixels: keep layer 1 with it")
    if 1 in keep and 0 not in keep and residual_is_conditioned(container.layer(RESIDUAL_LAYER)):
        raise InvalidInputError("this stream's layer 1 is coded conditioned on layer 0: keep layer 0 with it")
    h = container.header
    chunks = tuple(c for c in container.chunks if c.type in {LAYER_NUMBERS[n] for n in keep})
    header = replace(h, layers=tuple(c.type for c in chunks),
                     **({} if 0 in keep else dict(semantic_model="", calibration=bytes(8), preprocessing="")),
                     **({} if 1 in keep else dict(codec_model="", codec_checkpoint=bytes(8))))
    out = Container(header, chunks, metadata=container.metadata)
    if 1 in keep:
        out = replace(out, version=container_version(container.layer(RESIDUAL_LAYER), out.version))
    return write_container(out)


def semantic_condition(model: str, tokens, grid, width: int, height: int) -> SemanticCondition:
    """Decoded layer-0 tokens (N, D) prepared for the pixel layer's semantic prior.

    The latent covers the image padded to the transforms' alignment (right and bottom),
    so its region in the tower input extends the image's by the padding.
    """
    from .models.semantic import box_region, semantic_spec
    from .layers.pixels.coder import padded_size

    padded_w, padded_h = padded_size(width, height)
    return SemanticCondition(model=model, tokens=tokens[None].float(), grid=tuple(grid),
                             region=box_region(semantic_spec(model), width, height, 0, 0, padded_h, padded_w))
