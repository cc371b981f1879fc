"""Whole streams and layer 0: the :class:`Tokens` an MLLM reads, :func:`decode_tokens`, :func:`semantic_only_stream`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import InvalidInputError, MissingLayerError, RateControlError
from ...safetensors_io import canonical_bytes, write_bytes_atomic
from ...version import __version__
from .calibration import Calibration, check_calibration, find_calibration, load_calibration
from .coder import coder_for

@dataclass
class Tokens:
    """The semantic tokens of a stream, ready for an MLLM.

    Attributes:
        tokens: ``(N, D)`` float32, all grid positions in row-major order.
        positions: ``(K,)`` int64 positions that were coded (the rest are reconstructed).
        grid: ``(gh, gw)``.
        model: semantic tower id (e.g. ``clip-l14-336``).
        preprocessing: preprocessing id (what the tokens describe, e.g. ``pad-square-336-openai``).
        layer: tower layer of the tokens (``-2`` = penultimate).
        calibration: hex of the calibration hash.
        image_size: ``(width, height)`` of the coded image.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    grid: tuple[int, int]
    model: str
    preprocessing: str
    layer: int = -2
    calibration: str = ""
    image_size: tuple[int, int] = (0, 0)

    def _parts(self) -> tuple[dict, dict]:
        tensors = {"tokens": self.tokens.contiguous().float(), "positions": self.positions.contiguous().long()}
        meta = {
            "format_version": "1", "kind": "semantic-tokens", "model": self.model,
            "preprocessing": self.preprocessing, "layer": str(self.layer),
            "grid": f"{self.grid[0]},{self.grid[1]}", "calibration": self.calibration,
            "image_size": f"{self.image_size[0]},{self.image_size[1]}", "semcodec_version": __version__,
        }
        return tensors, meta

    def to_bytes(self) -> bytes:
        """The tokens as a safetensors file (``tokens``, ``positions`` + metadata)."""
        tensors, meta = self._parts()
        return canonical_bytes(tensors, meta)

    def save(self, path: str | os.PathLike) -> Path:
        """Writes :meth:`to_bytes` to ``path`` atomically (overwrites)."""
        return write_bytes_atomic(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokens":
        """Reads a file written by :meth:`save`."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                if meta.get("kind") != "semantic-tokens":
                    raise InvalidInputError(f"{path} is not a semcodec tokens file")
                tokens, positions = f.get_tensor("tokens"), f.get_tensor("positions")
            gh, gw = (int(v) for v in meta["grid"].split(","))
            w, h = (int(v) for v in meta.get("image_size", "0,0").split(","))
        except (OSError, SafetensorError, KeyError, ValueError) as e:
            raise InvalidInputError(f"cannot read tokens file {path}: {e}") from None
        return cls(tokens=tokens, positions=positions, grid=(gh, gw), model=meta["model"],
                   preprocessing=meta.get("preprocessing", ""), layer=int(meta.get("layer", -2)),
                   calibration=meta.get("calibration", ""), image_size=(w, h))


def decode_tokens(data: bytes, calibration: Calibration | str | os.PathLike | None = None) -> Tokens:
    """Decodes the semantic tokens of a whole stream (layer 0 alone; no pixels, no vision tower).

    Only the stream's prefix up to the semantic chunk is read.

    Args:
        data: the stream.
        calibration: optional calibration (object or file); by default the one the
            header names is looked up with :func:`find_calibration`.

    Raises:
        MissingLayerError: the stream has no semantic layer.
        ModelNotAvailableError / ModelMismatchError: the calibration it needs is absent / different.
        StreamError subclasses: damaged stream.
    """
    from ...bitstream.container import SEMANTIC_LAYER, read_container_prefix

    try:
        container = read_container_prefix(data, until=SEMANTIC_LAYER)
    except MissingLayerError:
        raise MissingLayerError("this stream has no semantic layer (layer 0); it was compressed without "
                                "--semantic, so it holds pixels only") from None
    h = container.header
    payload = container.layer(SEMANTIC_LAYER)
    if calibration is None:
        cal = load_calibration(find_calibration(h.semantic_model, h.calibration))
    elif isinstance(calibration, Calibration):
        cal = calibration
    else:
        cal = load_calibration(calibration)
    check_calibration(cal, h.semantic_model, h.calibration, h.preprocessing)
    dec = coder_for(cal).decode(payload, image_size=(h.width, h.height))
    return Tokens(tokens=dec.full, positions=dec.positions, grid=dec.grid, model=h.semantic_model,
                  preprocessing=h.preprocessing, layer=cal.layer, calibration=h.calibration.hex(),
                  image_size=(h.width, h.height))


def semantic_only_stream(tokens, calibration: Calibration, width: int, height: int, rate: int | None = None,
                         keep: int | None = None, max_bytes: int | None = None,
                         grid: tuple[int, int] | None = None) -> bytes:
    """A complete stream holding layer 0 alone (container header + SEM0 chunk).

    Give either ``rate`` (and optionally ``keep``) or ``max_bytes``, a budget for
    the *whole* stream (container overhead included). ``grid``: the tokens' grid, required
    for a variable-grid calibration (``tower.grid(width, height)``).

    Raises:
        RateControlError: ``max_bytes`` is below the smallest possible stream.
    """
    from ...bitstream.container import SEMANTIC_LAYER, Chunk, Container, Header, write_container

    header = Header(codec_model="", codec_checkpoint=bytes(8), semantic_model=calibration.model,
                    calibration=calibration.hash8, preprocessing=calibration.preprocessing_id,
                    width=width, height=height, layers=(SEMANTIC_LAYER,))
    coder = coder_for(calibration)
    if max_bytes is not None:
        overhead = len(write_container(Container(header, (Chunk(SEMANTIC_LAYER, b""),))))
        if max_bytes - overhead < 1:
            raise RateControlError(f"a semantic-only stream needs more than {overhead} bytes; the budget is {max_bytes}")
        payload = coder.encode_to_budget(tokens, max_bytes - overhead, image_size=(width, height), grid=grid)
    else:
        if rate is None:
            raise InvalidInputError("give rate or max_bytes")
        payload = coder.encode(tokens, rate, keep=keep, image_size=(width, height), grid=grid)
    return write_container(Container(header, (Chunk(SEMANTIC_LAYER, payload),)))

