"""The one registry of codec (layer 1) models.

Architectures are data-only JSON files in ``semcodec/models/configs/`` (one per
model name). Weights are self-describing safetensors named ``<name>.safetensors``,
looked up in, in order: the folders of ``$SEMCODEC_CHECKPOINTS`` (``os.pathsep``
separated), the repository's ``checkpoints/`` folder, and
``~/.cache/semcodec/checkpoints``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import ModelError, ModelNotAvailableError
from .config import ResidualConfig

CONFIG_DIR = Path(__file__).with_name("configs")
REPO_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"
USER_CHECKPOINTS = Path.home() / ".cache" / "semcodec" / "checkpoints"

#: The model ``semcodec compress`` uses without ``--model``.
DEFAULT_CODEC_MODEL = "semcodec-ms192"


@dataclass(frozen=True)
class CodecModelEntry:
    """A registered codec model: its name, description and architecture."""

    name: str
    description: str
    config: ResidualConfig


def checkpoint_dirs() -> list[Path]:
    """Folders searched for checkpoints, in order."""
    extra = [Path(p) for p in os.environ.get("SEMCODEC_CHECKPOINTS", "").split(os.pathsep) if p]
    return [*extra, REPO_CHECKPOINTS, USER_CHECKPOINTS]


@lru_cache(maxsize=None)
def codec_models() -> dict[str, CodecModelEntry]:
    """All registered codec models, by name."""
    out = {}
    for path in sorted(CONFIG_DIR.glob("*.json")):
        d = json.loads(path.read_text())
        if d.get("arch") != "residual":
            raise ModelError(f"{path.name}: unknown arch {d.get('arch')!r}")
        out[path.stem] = CodecModelEntry(path.stem, d["description"], ResidualConfig.from_dict(d["config"]))
    return out


def find_checkpoint(name: str) -> Path | None:
    """Path of ``<name>.safetensors`` in the checkpoint folders, or None."""
    for folder in checkpoint_dirs():
        p = folder / f"{name}.safetensors"
        if p.is_file():
            return p
    return None


def earlier_checkpoints(name: str) -> list[Path]:
    """Other checkpoints of model ``name`` kept beside the current one (``<name>-<anything>.safetensors``
    in the checkpoint folders, e.g. ``semcodec-ms192-3bb5aabd.safetensors``): a decoder looks among them
    for the checkpoint that wrote a stream when the current one did not."""
    return [p for folder in checkpoint_dirs() for p in sorted(folder.glob(f"{name}-*.safetensors")) if p.is_file()]


def require_checkpoint(name: str) -> Path:
    """Like :func:`find_checkpoint` but raises a helpful error when the file is absent."""
    p = find_checkpoint(name)
    if p is None:
        where = ", ".join(str(d) for d in checkpoint_dirs())
        raise ModelNotAvailableError(f"codec model {name!r} is not available: no {name}.safetensors in {where}")
    return p
