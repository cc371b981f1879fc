"""Layer 1, chunk ``RES1``: the pixels beyond the tokens.

A learned transform codec (mean-scale hyperprior, checkerboard context, continuous-rate
gain vectors; networks in :mod:`semcodec.models.residual`) whose entropy model may be
conditioned on the decoded layer-0 tokens::

    x ─ g_a ─ y · gain(q) ─ h_a ─ z ─ round ─ ẑ ─ h_s (float64) (+ semantic prior) ─ (μ, σ) anchors
                                                     checkerboard context ─ (μ, σ) others
    RES1 = rate knob, flags, digest of the scale indices, range-coder words (z, y anchors, y others)
    decoder: ŷ = symbols + μ ─ ÷ gain(q) ─ g_s ─ x̂

Modules:

* :mod:`.payload` — the bytes of ``RES1``: prefix, flags, the scale table, the symbol range
  (specified in docs/pixels.md).
* :mod:`.coder` — :class:`ResidualCoder`: the entropy-parameter path, the range coder, the
  tiled transforms.
* :mod:`.checkpoint` — the codec checkpoint file (safetensors): load, save, freeze for shipping.
* :mod:`.refine` — encoder effort: per-image search of the latents (decoder unchanged).
"""

from .coder import ResidualCoder, image_to_tensor, padded_size, tensor_to_image
from .payload import ResidualPayload, rate_to_fixed, residual_is_conditioned

__all__ = ["ResidualCoder", "ResidualPayload", "image_to_tensor", "padded_size", "rate_to_fixed",
           "residual_is_conditioned", "tensor_to_image"]
