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

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .bitstream.container import (
    RESIDUAL_LAYER,
    SEMANTIC_LAYER,
    Chunk,
    Container,
    Header,
    read_container,
    write_container,
)
from .checkpoints import file_digest, load_residual_checkpoint
from .errors import InvalidInputError, MissingLayerError, ModelMismatchError
from .imageio import load_rgb
from .models.registry import DEFAULT_CODEC_MODEL, require_checkpoint
from .ratecontrol import search_rate
from .residual_coder import ResidualCoder, image_to_tensor, tensor_to_image

#: Quality used when neither a quality nor a rate target is given.
DEFAULT_QUALITY = 75.0


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class LoadedCodec:
    """A codec model ready to code: its coder, registered name and checkpoint hash."""

    name: str
    checkpoint: Path
    digest8: bytes
    coder: ResidualCoder


@lru_cache(maxsize=4)
def load_codec(name: str = DEFAULT_CODEC_MODEL) -> LoadedCodec:
    """Load a registered codec model (cached per process).

    Raises:
        ModelNotAvailableError: its checkpoint is not on this machine.
        ModelError: the checkpoint is malformed.
    """
    path = require_checkpoint(name)
    model, _ = load_residual_checkpoint(path)
    return LoadedCodec(name=name, checkpoint=path, digest8=file_digest(path)[:8], coder=ResidualCoder(model))


def quality_to_rate(quality: float, levels: int) -> float:
    """Map a user quality in [0, 100] to the model's rate knob q in [0, levels - 1]."""
    if not 0 <= quality <= 100:
        raise InvalidInputError(f"quality must be between 0 and 100, got {quality}")
    return quality / 100 * (levels - 1)


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
                   max_size: bool = False, model: str = DEFAULT_CODEC_MODEL) -> CompressResult:
    """Compress an image and report how (see :func:`compress` for the arguments)."""
    targets = [t for t in (quality, bpp, size) if t is not None]
    if len(targets) > 1:
        raise InvalidInputError("give at most one of quality, bpp and size")
    pixels = load_rgb(image)                                     # (H, W, 3) uint8
    height, width = pixels.shape[:2]
    if bpp is not None:
        if not bpp > 0:
            raise InvalidInputError(f"bpp must be positive, got {bpp}")
        size = max(1, int(round(bpp * width * height / 8)))
    if size is not None and size <= 0:
        raise InvalidInputError(f"size must be a positive number of bytes, got {size}")
    codec = load_codec(model)
    header = Header(codec_model=codec.name, codec_checkpoint=codec.digest8, semantic_model="",
                    calibration=bytes(8), preprocessing="", width=width, height=height, layers=(RESIDUAL_LAYER,))
    y = codec.coder.analyze(image_to_tensor(pixels))              # (1, M, Hp/16, Wp/16), reused by every trial

    def encode(q: float) -> bytes:
        return write_container(Container(header, (Chunk(RESIDUAL_LAYER, codec.coder.encode_analyzed(y, q)),)))

    levels = codec.coder.levels
    if size is None:
        q = quality_to_rate(DEFAULT_QUALITY if quality is None else quality, levels)
        return CompressResult(encode(q), width, height, q, 1)
    found = search_rate(encode, size, 0.0, float(levels - 1), q_start=codec_rate_guess(size, width * height, levels),
                        never_above=max_size)
    return CompressResult(found.data, width, height, found.q, len(found.trials))


def codec_rate_guess(size: int, pixels: int, levels: int) -> float:
    """First guess of the rate knob for a size target: log-linear from ~0.1 bpp at q=0 to ~1.5 bpp at q=L-1."""
    bpp = size * 8 / pixels
    t = math.log(max(bpp, 1e-3) / 0.1) / math.log(15.0)
    return min(max(t, 0.0), 1.0) * (levels - 1)


def compress(image, *, quality: float | None = None, bpp: float | None = None, size: int | None = None,
             max_size: bool = False, model: str = DEFAULT_CODEC_MODEL) -> bytes:
    """Compress an image into a semcodec stream.

    Give at most one rate setting: ``quality`` (a fixed knob), ``bpp`` (target bits per
    pixel of the whole stream) or ``size`` (target bytes of the whole stream). A target is
    met within ±2 %, or never exceeded with ``max_size=True``.

    Args:
        image: a path, encoded image bytes, a PIL image or an (H, W, 3) uint8 array.
            Grayscale, 16-bit, transparent and EXIF-rotated images are converted as
            described in :mod:`semcodec.imageio`.
        quality: 0 (smallest) to 100 (best); default 75.
        bpp: target bits per pixel.
        size: target bytes.
        max_size: treat the target as a ceiling.
        model: registered codec model name.

    Returns:
        The stream bytes.

    Raises:
        InvalidInputError: unreadable image or bad settings.
        RateControlError: the target is outside the range this model reaches for this image.
    """
    return compress_image(image, quality=quality, bpp=bpp, size=size, max_size=max_size, model=model).data


# --------------------------------------------------------------------------- decompress
def decompress(data: bytes) -> Image.Image:
    """Decode the pixel layer of a semcodec stream into an RGB PIL image.

    Raises:
        MissingLayerError: the stream has no pixel layer (semantic-only).
        ModelMismatchError: the stream needs another checkpoint than the one installed.
        StreamError: the stream is truncated or corrupt.
    """
    container = read_container(data)
    h = container.header
    payload = container.layer(RESIDUAL_LAYER)
    if payload is None:
        raise MissingLayerError("this stream has no pixel layer (it is semantic-only); "
                                "use `semcodec tokens` to decode its tokens")
    codec = load_codec(h.codec_model)
    if codec.digest8 != h.codec_checkpoint:
        raise ModelMismatchError(f"the stream was made with {h.codec_model} checkpoint {h.codec_checkpoint.hex()}, "
                                 f"but {codec.checkpoint} is {codec.digest8.hex()}")
    x_hat = codec.coder.decode(payload, h.width, h.height)
    return Image.fromarray(tensor_to_image(x_hat), mode="RGB")


# --------------------------------------------------------------------------- inspect
@dataclass(frozen=True)
class StreamInfo:
    """What ``semcodec info`` prints: the header and the size of each layer."""

    format_version: str
    width: int
    height: int
    codec_model: str
    codec_checkpoint: str
    semantic_model: str
    calibration: str
    preprocessing: str
    entropy_coder: int
    layers: dict[str, int]          # chunk type → payload bytes, in stream order
    total_bytes: int

    @property
    def bpp(self) -> float:
        return self.total_bytes * 8 / (self.width * self.height)

    def to_dict(self) -> dict:
        return asdict(self) | {"bpp": round(self.bpp, 6)}

    def describe(self) -> str:
        """Human-readable multi-line summary."""
        rows = [
            ("format", self.format_version),
            ("image", f"{self.width}x{self.height}"),
            ("codec model", f"{self.codec_model or '-'}" + (f" (checkpoint {self.codec_checkpoint})" if self.codec_model else "")),
            ("semantic model", f"{self.semantic_model or '-'}" + (f" (calibration {self.calibration}, {self.preprocessing})" if self.semantic_model else "")),
            ("entropy coder", str(self.entropy_coder)),
        ]
        names = {"SEM0": "layer 0 (semantic)", "RES1": "layer 1 (pixels)"}
        rows += [(names.get(t, t), f"{n} bytes") for t, n in self.layers.items()]
        rows.append(("total", f"{self.total_bytes} bytes, {self.bpp:.4f} bpp"))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def inspect(data: bytes) -> StreamInfo:
    """Parse and validate a stream's container and report its header and layer sizes."""
    c = read_container(data)
    h = c.header
    return StreamInfo(
        format_version=f"{c.version[0]}.{c.version[1]}", width=h.width, height=h.height,
        codec_model=h.codec_model, codec_checkpoint=h.codec_checkpoint.hex() if h.codec_model else "",
        semantic_model=h.semantic_model, calibration=h.calibration.hex() if h.semantic_model else "",
        preprocessing=h.preprocessing, entropy_coder=h.entropy_coder,
        layers={ch.type.decode("ascii"): len(ch.payload) for ch in c.chunks}, total_bytes=len(data),
    )
