"""The layers of a semcodec stream: one subpackage per layer of the container.

A stream is a container (:mod:`semcodec.bitstream.container`) of independently
decodable layers. Each layer has one place here that holds its coder, the format
of its payload and the handling of the model file it needs (a calibration or a
checkpoint):

* :mod:`semcodec.layers.semantic` — layer 0, chunk ``SEM0``: the semantic tokens
  an MLLM reads (``payload``: the bytes; ``calibration``: the tower's calibration
  file; ``coder``: :class:`~semcodec.layers.semantic.SemanticCoder`; ``tokens``:
  whole streams to tokens).
* :mod:`semcodec.layers.pixels` — layer 1, chunk ``RES1``: the pixels beyond the tokens (``payload``: the
  bytes; ``coder``: :class:`~semcodec.layers.pixels.ResidualCoder`; ``checkpoint``: the codec checkpoint
  file; ``refine``: the encoder's per-image search of the latents).
* :mod:`semcodec.layers.refinement` — layer 2, chunk ``REF2``: the refinement of layer 1's pixels up to
  lossless (``payload``: the bytes; ``coder``: :class:`~semcodec.layers.refinement.RefinementCoder`).

What the layers share lives elsewhere: the networks in :mod:`semcodec.models`,
the container and the entropy coder in :mod:`semcodec.bitstream`. This package
imports none of its subpackages, so importing one layer never loads another.
"""
