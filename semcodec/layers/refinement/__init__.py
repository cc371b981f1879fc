"""Layer 2, chunk ``REF2``: from high fidelity to lossless, on top of the pixel layer.

The residual between the image and the decoded pixel layer, quantized with a step from 64 levels down to 1
(lossless) and range-coded with Laplace models whose means and scales come from integer features of what the
decoder already has (specified in docs/refinement.md).

Modules:

* :mod:`.payload` — the bytes of ``REF2``: prefix, per-group weights and scale buckets, the words.
* :mod:`.coder` — :class:`RefinementCoder`: quantization, features, prediction, the range coder.
"""

from .coder import RefinementCoder, dequantize, quantize
from .payload import STEP_ONE, RefinementPayload

__all__ = ["STEP_ONE", "RefinementCoder", "RefinementPayload", "dequantize", "quantize"]
