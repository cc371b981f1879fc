"""Layer 0: calibration and transform coding of semantic tokens (the ``SEM0`` payload).

::

    tokens T (N, D) ── − μ (per position; padding tokens of pad-square: their own mean)
      ── · U (KLT, D×D) ── c (N, D)
      │ keep K of N (greedy: drop the tokens best predicted by kept neighbours)
      │ θ = σ₀²·2^(−r/8) (one integer rate index r); components with σᵢ² ≤ θ cost 0 bits
      └ s = round(c / Δ), Δ = √(12θ), for the M components with σᵢ² > θ
          └ range coder, 5 hierarchical passes over the token grid; each symbol's
            model is a Laplace/Gaussian whose scale index and mean (on a 1/16 grid)
            are integer functions of the calibration, r, a gain byte, the image
            size (padding tokens) and the symbols of already decoded neighbours
    decoder: ĉ = (s moved toward its model mean by the bin-centroid offset)·Δ for kept tokens,
             dropped tokens = α_ρ · mean of kept neighbours within ρ,
             T̂ = μ + ĉ · U[:, :M]ᵀ

The modules of this package:

* :mod:`.payload` — what defines the bytes: the format constants, the payload
  header, the pass map, the integer helpers, the scale tables and the rank of the
  kept positions.
* :mod:`.calibration` — :class:`Calibration` (``semcodec calibrate``), its file
  format and caps, :func:`calibrate`, :func:`padding_mask`, and finding, loading
  and checking calibrations.
* :mod:`.coder` — :class:`SemanticCoder` (the integer plan both sides derive, the
  passes, encoding to a rate or a byte budget, decoding), :func:`coder_for`.
* :mod:`.tokens` — whole streams: :class:`Tokens`, :func:`decode_tokens`,
  :func:`semantic_only_stream`.

A :class:`Calibration` is part of the codec model: its file hash is stored in the
stream header and a decoder refuses another one. The payload format and the
algorithms are specified in ``docs/semantic.md``.

Determinism: everything that reaches the entropy coder on the decoder side is an
integer computed with integer arithmetic from the calibration's integer tensors
(``log2_std_q``, ``log2_cstd_q``, ``alpha_q``), the payload's header fields and
previously decoded symbols. Floats appear only in the reconstruction (float64,
then rounded to float32).

Example:
    >>> from semcodec.layers.semantic import SemanticCoder, find_calibration, Calibration
    >>> coder = SemanticCoder(Calibration.load(find_calibration("tiny")))
    >>> import torch; tokens = coder.calibration.random_tokens(seed=0)
    >>> payload = coder.encode(tokens, rate=40, image_size=(768, 512))
    >>> coder.decode(payload, image_size=(768, 512)).full.shape
    torch.Size([196, 192])
"""

from .calibration import (
    Calibration,
    calibrate,
    calibration_dirs,
    check_calibration,
    find_calibration,
    load_calibration,
    padding_mask,
)
from .coder import DecodedTokens, SemanticCoder, coder_for
from .tokens import Tokens, decode_tokens, semantic_only_stream

__all__ = [
    "Calibration",
    "DecodedTokens",
    "SemanticCoder",
    "Tokens",
    "calibrate",
    "calibration_dirs",
    "check_calibration",
    "coder_for",
    "decode_tokens",
    "find_calibration",
    "load_calibration",
    "padding_mask",
    "semantic_only_stream",
]
