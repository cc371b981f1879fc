"""semcodec: a two-layer semantic neural image codec.

Layer 0 carries the patch tokens of a CLIP-family vision transformer (what a
multimodal LLM consumes); layer 1 carries what the pixels need beyond them.

Public interface::

    semcodec.compress(image, quality=... | bpp=... | size=...) -> bytes
    semcodec.decompress(data) -> PIL.Image.Image
    semcodec.decode_tokens(data) -> Tokens (layer 0 only: MLLM-ready tokens)
    semcodec.inspect(data) -> StreamInfo

The API (and with it torch) is imported on first use, so that ``import semcodec``
and ``semcodec --help`` stay fast; ``inspect`` never imports torch.
"""

from .errors import (
    CorruptStreamError,
    InvalidInputError,
    MissingLayerError,
    ModelError,
    ModelMismatchError,
    ModelNotAvailableError,
    OutputClosedError,
    RateControlError,
    SemcodecError,
    StreamError,
    TargetAboveReachError,
    TrainingDivergedError,
    TruncatedStreamError,
    UnsupportedVersionError,
)
from .version import __version__

__all__ = ["CompressResult", "CorruptStreamError", "InvalidInputError", "MissingLayerError", "ModelError",
           "ModelMismatchError", "ModelNotAvailableError", "OutputClosedError", "RateControlError", "SemcodecError",
           "StreamError", "StreamInfo", "TargetAboveReachError", "TrainingDivergedError", "TruncatedStreamError", "UnsupportedVersionError",
           "__version__", "compress", "compress_image", "decode_tokens", "decompress", "inspect"]

_API_NAMES = {"CompressResult", "compress", "compress_image", "decode_tokens", "decompress"}
#: Parsing a stream needs no torch: these come from the light module.
_INFO_NAMES = {"StreamInfo", "inspect"}


def __getattr__(name: str):
    if name in _API_NAMES:
        from . import api

        return getattr(api, name)
    if name in _INFO_NAMES:
        from .bitstream import info

        return getattr(info, name)
    raise AttributeError(f"module 'semcodec' has no attribute {name!r}")
