"""SigLIP vision trunk, written out in plain torch (no timm, no torchvision, no transformers).

The SigLIP towers of layer 0 (``siglip-so400m-384``, ``siglip-b16-224``) are the
vision trunks of open_clip's ``ViT-*-SigLIP*`` models, which open_clip builds
through timm. semcodec computes them here instead, for two reasons:

* **Exactness.** Google's SigLIP (big_vision) and Hugging Face's ``SiglipVisionModel``
  use the tanh approximation of GELU (``gelu_pytorch_tanh``); timm's
  ``vit_so400m_patch14_siglip_384`` and ``vit_base_patch16_siglip_224`` use the exact
  ``nn.GELU``. The MLLMs (LLaVA-OneVision, PaliGemma, ...) run Hugging Face's module,
  so only the tanh form gives *their* tokens.
* **Imports.** timm imports torchvision, whose PyPI wheel does not load next to a
  CPU-only torch build (see :mod:`semcodec._compat`); this module needs neither.

Dataflow (no CLS token, no pre-norm; pre-LN blocks)::

    x (B, 3, S, S) ─ patch_embed (conv P×P, stride P, bias) ─ (B, N, D) + pos_embed (1, N, D)
      ─ blocks[0] … blocks[k] ─ h (B, N, D)      # h = HF hidden_states[k + 1]
    block: h += attn(norm1(h)); h += fc2(gelu_tanh(fc1(norm2(h))))      (LayerNorm eps 1e-6)

Parameters carry open_clip's (timm's) names under ``trunk.`` so that open_clip's
``open_clip_model.safetensors`` loads directly; :func:`to_trunk_names` also accepts
Hugging Face naming (``vision_model.embeddings.patch_embedding.weight``, separate
``q_proj``/``k_proj``/``v_proj``), e.g. a ``google/siglip-*`` or LLaVA-OneVision checkpoint.
Only the blocks up to the selected one are built; the final norm and the attention-pooling
head (``trunk.norm``, ``trunk.attn_pool``) feed no patch token and are not loaded.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SiglipTrunk", "to_trunk_names", "UNUSED_PREFIXES"]

#: Parameters of a SigLIP vision tower that no patch token depends on (final norm, pooling head, projection).
UNUSED_PREFIXES = ("trunk.norm.", "trunk.fc_norm.", "trunk.attn_pool.", "trunk.head.", "head.")


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, h, N, hd)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # scale hd ** -0.5, no mask
        return self.proj(y.transpose(1, 2).reshape(B, N, D))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)  # "valid": 384 px / 14 -> 27 patches, 6 px unused


class _Trunk(nn.Module):
    def __init__(self, cfg: dict, depth: int):
        super().__init__()
        dim, patch = int(cfg["width"]), int(cfg["patch_size"])
        grid = int(cfg["image_size"]) // patch
        self.patch_embed = _PatchEmbed(patch, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, dim))
        self.blocks = nn.ModuleList(
            _Block(dim, int(cfg["heads"]), int(cfg["mlp_dim"]), float(cfg.get("ln_eps", 1e-6))) for _ in range(depth))


class SiglipTrunk(nn.Module):
    """The patch-token part of a SigLIP vision tower (see the module docstring).

    Args:
        vision_cfg: ``image_size``, ``patch_size``, ``width``, ``layers``, ``heads``,
            ``mlp_dim`` (and optionally ``ln_eps``).
        depth: How many blocks to build (the tokens of block ``depth - 1`` are the
            last ones this module can give); default all ``layers``.
    """

    def __init__(self, vision_cfg: dict, depth: int | None = None):
        super().__init__()
        layers = int(vision_cfg["layers"])
        depth = layers if depth is None else int(depth)
        if not 1 <= depth <= layers:
            raise ValueError(f"depth {depth} outside 1..{layers}")
        self.num_layers = layers
        self.trunk = _Trunk(vision_cfg, depth)

    def forward_intermediates(self, x: torch.Tensor, indices: list[int], stop_early: bool = True,
                              intermediates_only: bool = True, output_fmt: str = "NLC") -> dict:
        """Outputs of the blocks ``indices`` (0-based), as open_clip's ``forward_intermediates`` returns them.

        Only ``intermediates_only=True`` and ``output_fmt="NLC"`` are supported: the result is
        ``{"image_intermediates": [(B, N, D), ...]}`` (all ``N`` tokens: SigLIP has no CLS token).
        """
        if not intermediates_only or output_fmt != "NLC":
            raise ValueError("SiglipTrunk gives intermediates in NLC layout only")
        t = self.trunk
        if any(not 0 <= i < len(t.blocks) for i in indices):
            raise ValueError(f"block indices {indices} outside the {len(t.blocks)} built blocks")
        h = t.patch_embed.proj(x).flatten(2).transpose(1, 2) + t.pos_embed  # (B, N, D)
        out = []
        for i, block in enumerate(t.blocks[: max(indices) + 1]):
            h = block(h)
            if i in indices:
                out.append(h)
        return {"image_intermediates": out}


_HF_PATCH = "embeddings.patch_embedding.weight"
_HF_LAYER_RE = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_HF_LAYER_NAMES = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
                   "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}


def to_trunk_names(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A SigLIP vision state dict in open_clip naming (``trunk.…``), from open_clip or Hugging Face naming.

    open_clip's tower (keys ``trunk.…``, after removing ``visual.``) is returned as is.
    Hugging Face naming is recognised by ``…embeddings.patch_embedding.weight``; everything
    under that prefix (``vision_model.``, ``model.vision_tower.vision_model.``, ...) is renamed
    and ``q/k/v_proj`` are fused into ``qkv``. Keys outside the vision tower are dropped;
    ``post_layernorm`` and ``head`` map to the unused prefixes (:data:`UNUSED_PREFIXES`).
    """
    patch = [k for k in sd if k.endswith(_HF_PATCH)]
    if not patch:
        return dict(sd)
    prefix = min(patch, key=len)[: -len(_HF_PATCH)]
    hf = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in hf.items():
        if k.startswith("embeddings.patch_embedding."):
            out["trunk.patch_embed.proj." + k.rsplit(".", 1)[1]] = v
        elif k == "embeddings.position_embedding.weight":
            out["trunk.pos_embed"] = v.unsqueeze(0)
        elif k.startswith("post_layernorm."):
            out["trunk.norm." + k.rsplit(".", 1)[1]] = v
        elif k.startswith("head."):
            out["trunk.attn_pool.hf." + k[len("head."):]] = v
        elif (m := _HF_LAYER_RE.match(k)):
            i, rest = int(m.group(1)), m.group(2)
            module, _, leaf = rest.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((i, leaf), {})[module[len("self_attn."):len("self_attn.") + 1]] = v
            elif module in _HF_LAYER_NAMES:
                out[f"trunk.blocks.{i}.{_HF_LAYER_NAMES[module]}.{leaf}"] = v
            else:
                out[f"trunk.blocks.{i}.hf.{rest}"] = v  # unknown: left for the loader to refuse
        elif not k.startswith("embeddings.position_ids"):
            out["hf." + k] = v  # unknown: left for the loader to refuse
    for (i, leaf), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            out[f"trunk.blocks.{i}.hf.qkv_incomplete.{leaf}"] = next(iter(parts.values()))
        else:
            out[f"trunk.blocks.{i}.attn.qkv.{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
