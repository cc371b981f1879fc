"""Qwen2.5-VL's vision encoder as a semantic tower: dynamic resolution, a token grid per image.

The tower ``qwen2.5-vl-7b`` is the vision transformer *and patch merger* of
``Qwen/Qwen2.5-VL-7B-Instruct``, run through ``transformers``'
``Qwen2_5_VisionTransformerPretrainedModel`` (the module ``Qwen2_5_VLModel.visual``), with
the preprocessing of Qwen's image processor (``Qwen2VLImageProcessor``). Its tokens are
exactly what the language model consumes: ``get_image_features(...).pooler_output``,
spliced at the ``<|image_pad|>`` positions with no further projection::

    PIL image ─ RGB ─ smart_resize (h, w multiples of 28, min_pixels ≤ h·w ≤ max_pixels) ─ bicubic
      ─ /255, mean/std (OpenAI CLIP) ─ patchify: (gh·gw, 3·2·14·14) in 2×2-merge order, grid_thw (1, gh, gw)
      ─ Conv3d patch embed ─ 32 blocks (2D RoPE; window attention 112 px, full attention in 7, 15, 23, 31)
      ─ merger: RMSNorm, 2×2 patches → MLP → (gh/2 · gw/2, 3584)   tokens, row-major on the merged grid

Unlike the CLIP and SigLIP towers the grid is not fixed: a 768×512 photo becomes an 18×27
(rows × columns) merged grid, 486 tokens; a 1920×1080 one 39×69, 2,691 tokens. An image below
``min_pixels`` or above ``max_pixels`` is resized within the limits (what Qwen's
processor does); :func:`resize_note` says so in one line.

Weights: the ``visual.*`` (or ``model.visual.*``) tensors of the checkpoint, read from
a safetensors file or a sharded checkpoint's ``model.safetensors.index.json`` (only the
shards that hold them are opened); never inferred from tensor shapes. This module imports
``transformers`` only when a tower is built.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidInputError, ModelError, ModelMismatchError
from .frozen_tower import FrozenTower, rgb_image

__all__ = ["QwenVisionTower", "QWEN_FAMILY", "load_qwen_visual", "qwen_grid", "resize_note", "smart_resize"]

QWEN_FAMILY = "qwen2_5_vl"
#: Prefixes under which checkpoints hold the vision encoder (original Qwen files; transformers 5 saves).
VISUAL_PREFIXES = ("visual.", "model.visual.")

#: ``Qwen/Qwen2.5-VL-7B-Instruct``: ``config.json``'s ``vision_config`` and ``preprocessor_config.json``.
QWEN25_VL_7B = {
    "family": QWEN_FAMILY,
    "hf_repo": "Qwen/Qwen2.5-VL-7B-Instruct",
    "vision_cfg": {"depth": 32, "hidden_size": 1280, "hidden_act": "silu", "intermediate_size": 3420,
                   "num_heads": 16, "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
                   "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112, "out_hidden_size": 3584,
                   "fullatt_block_indexes": [7, 15, 23, 31]},
    "min_pixels": 3136,        # 56 * 56
    "max_pixels": 12845056,    # 28 * 28 * 16384
}


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's ``smart_resize``: ``(h, w)`` multiples of ``factor``, ``min_pixels ≤ h·w ≤ max_pixels``, aspect kept.

    The same arithmetic as ``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize``
    (Python ``round`` is round-half-to-even there too).
    """
    if max(height, width) / min(height, width) > 200:
        raise InvalidInputError(f"a {width}x{height} image is too elongated for Qwen2.5-VL (aspect ratio above 200)")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _cfg(config: dict) -> tuple[int, int, int, int]:
    vc = config["vision_cfg"]
    return int(vc["patch_size"]), int(vc["spatial_merge_size"]), int(config["min_pixels"]), int(config["max_pixels"])


def qwen_grid(config: dict, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((resized_h, resized_w), (gh, gw))`` for a ``width × height`` image: the tower input size and the
    token grid after the 2×2 merge (``gh·gw`` tokens)."""
    if width < 1 or height < 1:
        raise InvalidInputError(f"image size {width}x{height} is empty")
    patch, merge, lo, hi = _cfg(config)
    h, w = smart_resize(height, width, patch * merge, lo, hi)
    return (h, w), (h // (patch * merge), w // (patch * merge))


def resize_note(config: dict, width: int, height: int) -> str | None:
    """One line when an image lies outside the tower's pixel limits (it is then scaled within them), else None."""
    _, _, lo, hi = _cfg(config)
    if lo <= width * height <= hi:
        return None
    (h, w), (gh, gw) = qwen_grid(config, width, height)
    which = "fewer" if width * height < lo else "more"
    return (f"{width}x{height} has {which} pixels than Qwen2.5-VL's limits ({lo}..{hi}): its tower sees it resized "
            f"to {w}x{h} ({gh}x{gw} tokens)")


def _visual_config(vision_cfg: dict):
    from .. import _compat  # noqa: F401  (transformers may import torchvision)
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    return Qwen2_5_VLVisionConfig(**vision_cfg)


def build_qwen_visual(vision_cfg: dict, init: bool = True) -> torch.nn.Module:
    """``Qwen2_5_VisionTransformerPretrainedModel`` for ``vision_cfg`` (float32, eval); ``init=False`` skips the
    random initialization (the weights are loaded next)."""
    from .. import _compat  # noqa: F401
    from transformers.initialization import no_init_weights
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    config = _visual_config(vision_cfg)
    if init:
        return Qwen2_5_VisionTransformerPretrainedModel(config).float().eval()
    with no_init_weights():
        return Qwen2_5_VisionTransformerPretrainedModel(config).float().eval()


def _strip_visual(keys) -> dict[str, str]:
    """{file key: module key} for the vision encoder's tensors (prefixed or bare)."""
    out = {}
    for k in keys:
        for prefix in VISUAL_PREFIXES:
            if k.startswith(prefix):
                out[k] = k[len(prefix):]
                break
    if not out:  # a file with the vision encoder alone
        out = {k: k for k in keys if k.startswith(("patch_embed.", "blocks.", "merger."))}
    return out


def _read_visual_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The vision encoder's tensors of a safetensors file or a sharded checkpoint's index (module naming)."""
    from safetensors import safe_open

    try:
        if path.suffix == ".json":
            weight_map = json.loads(path.read_text())["weight_map"]
            names = _strip_visual(weight_map)
            shards: dict[str, list[str]] = {}
            for k in names:
                shards.setdefault(weight_map[k], []).append(k)
            files = [(path.parent / shard, keys) for shard, keys in sorted(shards.items())]
        else:
            with safe_open(str(path), framework="pt") as f:
                names = _strip_visual(list(f.keys()))
            files = [(path, list(names))]
        out = {}
        for file, keys in files:
            with safe_open(str(file), framework="pt") as f:
                for k in keys:
                    out[names[k]] = f.get_tensor(k)
    except FileNotFoundError as e:
        raise ModelError(f"cannot read weights {path}: missing file {Path(e.filename or '').name or e}") from None
    except Exception as e:  # safetensors, JSON and OS errors: a damaged or foreign file
        raise ModelError(f"cannot read weights file {path}: {type(e).__name__}: {str(e)[:200]}") from None
    return out


def load_qwen_visual(config: dict, path: Path, arch: str) -> torch.nn.Module:
    """The vision encoder of ``config`` with the weights of ``path``: every parameter present with its shape and
    nothing else (the language model's tensors of a full checkpoint are not read)."""
    from .semantic import check_tensors_present          # semantic imports this module

    sd = _read_visual_tensors(Path(path))
    visual = build_qwen_visual(config["vision_cfg"], init=False)
    own = visual.state_dict()
    where = f"{path} does not hold the vision encoder of {arch}"
    check_tensors_present(own, sd, where)
    extra = sorted(k for k in sd if k not in own)
    if extra:
        raise ModelMismatchError(f"{where}: unexpected tensor {extra[0]}")
    visual.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return visual


class QwenVisionTower(FrozenTower):
    """A loaded Qwen2.5-VL vision encoder: Qwen's preprocessing + ViT + merger, one token grid per image.

    The same interface as :class:`~semcodec.models.semantic.SemanticTower` where it makes sense, but
    :meth:`tokens` returns one ``(N_i, D)`` tensor per image (``N_i`` varies) and :meth:`grid` gives an
    image's token grid. Always eval mode, float32, CPU unless moved with :meth:`to`, no gradients.
    """

    variable_grid = True

    def __init__(self, spec, visual: torch.nn.Module, weights: Path | None = None):
        super().__init__(spec, visual, weights)
        self.config = spec.config

    def grid(self, width: int, height: int) -> tuple[int, int]:
        """The token grid ``(gh, gw)`` of a ``width × height`` image."""
        return qwen_grid(self.config, width, height)[1]

    def note(self, width: int, height: int) -> str | None:
        """See :func:`resize_note`."""
        return resize_note(self.config, width, height)

    def preprocess(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """One PIL image -> ``(pixel_values (gh·gw·4, 3·T·P·P) float32, grid_thw (1, 3) int64)``, laid out as
        ``Qwen2VLImageProcessor`` lays them out (patch grid ``2gh × 2gw``, 2×2 merge groups contiguous, the
        frame repeated ``T = temporal_patch_size`` times)."""
        image = rgb_image(image)
        vc = self.config["vision_cfg"]
        patch, merge, temporal = int(vc["patch_size"]), int(vc["spatial_merge_size"]), int(vc["temporal_patch_size"])
        (h, w), _ = qwen_grid(self.config, image.width, image.height)
        if (w, h) != image.size:
            image = image.resize((w, h), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)   # (3, h, w)
        x = (x - self._mean) / self._std
        gh, gw = h // patch, w // patch
        x = x.reshape(3, gh // merge, merge, patch, gw // merge, merge, patch)
        x = x.permute(1, 4, 2, 5, 0, 3, 6)                                      # (gh/m, gw/m, m, m, 3, P, P)
        x = x.unsqueeze(5).expand(*x.shape[:5], temporal, patch, patch)          # (…, 3, T, P, P)
        pixel_values = x.reshape(gh * gw, 3 * temporal * patch * patch).contiguous()
        return pixel_values, torch.tensor([[1, gh, gw]], dtype=torch.long)

    @torch.inference_mode()
    def tokens_from_pixels(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Merger output ``(Σ t·gh·gw/4, D)`` float32 of preprocessed images (several may be concatenated)."""
        out = self.visual(pixel_values.to(self.device, torch.float32), grid_thw=grid_thw.to(self.device))
        return out.pooler_output.float().contiguous()

    def tokens(self, images: list[Image.Image], batch_size: int = 1) -> list[torch.Tensor]:
        """One ``(N_i, D)`` float32 tensor per image, row-major on its grid :meth:`grid` (``batch_size`` is
        accepted for interface compatibility; images are run one by one)."""
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        if not images:
            raise InvalidInputError("no images given")
        return [self.tokens_from_pixels(*self.preprocess(im)).cpu() for im in images]

    def __repr__(self) -> str:
        return f"QwenVisionTower({self.spec.name}, variable grid x{self.spec.token_dim})"
