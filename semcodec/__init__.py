"""semcodec: a two-layer semantic neural image codec.

Layer 0 carries the patch tokens of a CLIP-family vision transformer (what a
multimodal LLM consumes); layer 1 carries what the pixels need beyond them.

Public interface::

    semcodec.compress(image, quality=...) -> bytes
    semcodec.decompress(data) -> PIL.Image.Image
    semcodec.inspect(data) -> StreamInfo
"""

from . import _compat  # noqa: F401  (must run before torchvision / compressai / open_clip are imported)
from .api import StreamInfo, compress, decompress, inspect
from .errors import SemcodecError
from .version import __version__

__all__ = ["SemcodecError", "StreamInfo", "__version__", "compress", "decompress", "inspect"]
