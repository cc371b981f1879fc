"""Semantic towers: the frozen CLIP-family vision transformers whose patch tokens are layer 0.

A *semantic tower* is an open_clip ``VisionTransformer`` plus the preprocessing a
multimodal LLM applies before it, plus the choice of layer whose patch tokens the
MLLM consumes::

    PIL image ─ preprocess (pad-square | resize-crop, S×S, mean/std) ─ x (B, 3, S, S)
      ─ conv1 (patch P) + pos. embedding + ln_pre ─ [CLS, p_1 … p_N]
      ─ block 0 … block L+layer ─ hidden state ─ drop CLS ─ tokens T (B, N, D)
                                                 (no ln_post, no projection)

For LLaVA-1.5 (``clip-l14-336``) this is exactly ``CLIPVisionModel(...,
output_hidden_states=True).hidden_states[-2][:, 1:]``: the output of the
second-to-last transformer block, 576 patch tokens of width 1024, after LLaVA's
``expand2square`` padding with the mean colour and a 336×336 bicubic resize.

Registered towers (see :func:`list_semantic_models`):

* ``clip-l14-336`` — open_clip ``ViT-L-14-336`` / ``openai``: LLaVA-1.5's tower,
  24×24 tokens × 1024. The default for users.
* ``clip-b16`` — open_clip ``ViT-B-16`` / ``openai``: 14×14 tokens × 768, lighter.
* ``siglip-so400m-384`` — open_clip ``ViT-SO400M-14-SigLIP-384`` / ``webli``: LLaVA-OneVision's
  tower, 27×27 tokens × 1152: the output of block 26 of 27 (``SiglipVisionModel`` with
  LLaVA-OneVision's 26 layers, ``hidden_states[-1]``, all tokens), after a bicubic
  squash-resize to 384×384 (the base view of OneVision's anyres processing), mean/std 0.5.
* ``siglip-b16-224`` — open_clip ``ViT-B-16-SigLIP`` / ``webli``: 14×14 tokens × 768, the
  same layer rule (penultimate block) and preprocessing at 224; lighter.

* ``qwen2.5-vl-7b`` — the vision encoder and patch merger of ``Qwen/Qwen2.5-VL-7B-Instruct``
  through ``transformers`` (:mod:`semcodec.models.qwen_vl`): Qwen's dynamic resolution, a
  token grid per image, tokens × 3584 = what its language model consumes.

SigLIP towers are computed by :mod:`semcodec.models.siglip` (plain torch, Hugging Face's
tanh GELU) from open_clip's or Hugging Face's weight files.
* ``tiny`` — a 6-block, width-192 ViT built by open_clip's own code from a config
  dict, with **random fixed-seed weights** shipped in
  ``checkpoints/semantic-tiny.safetensors``. It is **not semantic**: its tokens
  mean nothing to any MLLM. It exists so that every command, test and benchmark
  runs offline.

Any other open_clip ViT works through the same path by naming it ``Arch:tag``
(e.g. ``ViT-B-32:laion2b_s34b_b79k``); its stream id is the lower-case
``arch.tag`` (``vit-b-32.laion2b_s34b_b79k``). A non-default layer is written as
a ``.l<index>`` suffix (``clip-b16.l-1``): a different layer is a different
token space and needs its own calibration.

Weights of real towers come, in this order, from an explicit file
(``--semantic-weights FILE``), the local Hugging Face / open_clip cache, or a
download by open_clip when the hub answers a 2-second probe. Offline
(``HF_HUB_OFFLINE=1`` or no answer) with none of these, :func:`load_tower` raises
:class:`~semcodec.errors.ModelNotAvailableError` at once, naming the ways out.

Example:
    >>> from semcodec.models.semantic import load_tower
    >>> from PIL import Image
    >>> tower = load_tower("tiny")                      # offline, shipped weights
    >>> tower.tokens([Image.new("RGB", (64, 48))]).shape
    torch.Size([1, 196, 192])
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidInputError, ModelError, ModelMismatchError, ModelNotAvailableError
from .frozen_tower import FrozenTower, rgb_image
from .qwen_vl import QWEN25_VL_7B, QWEN_FAMILY

__all__ = [
    "DEFAULT_SEMANTIC_MODEL",
    "SemanticSpec",
    "SemanticTower",
    "list_semantic_models",
    "load_tower",
    "make_tiny_checkpoint",
    "semantic_spec",
    "weights_path",
]

#: The tower users get by default (LLaVA-1.5's).
DEFAULT_SEMANTIC_MODEL = "clip-l14-336"

#: Repository root (the parent of the package): shipped checkpoints live in ``<root>/checkpoints``.
REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
TINY_WEIGHTS = CHECKPOINT_DIR / "semantic-tiny.safetensors"

#: Layout version of ``semantic-*.safetensors`` tower files written by semcodec.
TOWER_FORMAT_VERSION = "1"
#: Seconds the hub reachability probe may take before we call the machine offline.
HUB_PROBE_TIMEOUT_S = 2.0

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # SigLIP's normalization (open_clip INCEPTION_MEAN/STD, HF SigLIP processors)
INCEPTION_STD = (0.5, 0.5, 0.5)
_PREPROCESSING_MODES = ("pad-square", "resize-crop", "squash")
_NAME_RE = re.compile(r"^[a-z0-9._-]{1,64}$")
_LAYER_SUFFIX_RE = re.compile(r"^(?P<base>.+)\.l(?P<layer>-?\d+)$")

# The tiny tower's architecture, as open_clip model config data (never inferred from tensor shapes).
_TINY_CONFIG = {
    "embed_dim": 128,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 224, "layers": 6, "width": 192, "head_width": 64, "patch_size": 16},
}
_TINY_SEED = 0


@dataclass(frozen=True)
class SemanticSpec:
    """What defines a semantic tower's token space (everything but the weights).

    Attributes:
        name: Registered name, also the stream's ``semantic_model`` id
            (``[a-z0-9._-]``, at most 64 characters).
        open_clip_arch: open_clip architecture (``ViT-L-14-336``, ``ViT-SO400M-14-SigLIP-384``), or
            ``semcodec-tiny-vit`` for the shipped random tower.
        pretrained: open_clip pretrained tag (``openai``); ``seed0`` for ``tiny``.
        layer: Which transformer block's output to take, as a negative index
            (``-2`` = penultimate, what LLaVA uses; ``-1`` = last block, still before ``ln_post``).
        image_size: Side ``S`` of the square tower input.
        grid: Patch grid ``(gh, gw)``; ``N = gh * gw`` tokens.
        token_dim: Token width ``D``.
        mean: Per-channel normalization mean (RGB, in [0, 1]).
        std: Per-channel normalization std.
        preprocessing: ``"pad-square"`` (LLaVA's ``expand2square``: pad to a
            square with the mean colour, centred, then bicubic resize to S×S) or
            ``"resize-crop"`` (open_clip's default: bicubic resize of the short
            side to S, centre crop) or ``"squash"`` (bicubic resize to S×S whatever
            the aspect ratio: SigLIP's, and LLaVA-OneVision's base view).
        preprocessing_id: Short id recorded in streams, e.g. ``pad-square-336-openai``.
        description: One line for ``semcodec models``.
        config_json: open_clip model config (``embed_dim``, ``vision_cfg``,
            ``quick_gelu``) as JSON; the architecture is built from it. SigLIP
            towers: ``{"family": "siglip", "vision_cfg": {image_size, patch_size,
            width, layers, heads, mlp_dim, ln_eps, timm_model_name}}``.
    """

    name: str
    open_clip_arch: str
    pretrained: str
    layer: int
    image_size: int
    grid: tuple[int, int]
    token_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    preprocessing: str
    preprocessing_id: str
    description: str
    config_json: str

    @property
    def num_tokens(self) -> int:
        """``N``, the number of patch tokens."""
        return self.grid[0] * self.grid[1]

    @property
    def token_shape(self) -> tuple[int, int]:
        """``(N, D)``."""
        return (self.num_tokens, self.token_dim)

    @property
    def config(self) -> dict:
        """The open_clip model config as a dict (a fresh copy)."""
        return json.loads(self.config_json)

    @property
    def num_layers(self) -> int:
        vc = self.config["vision_cfg"]
        return int(vc["depth"] if self.variable_grid else vc["layers"])

    @property
    def variable_grid(self) -> bool:
        """True for dynamic-resolution towers (Qwen2.5-VL): the grid depends on the image size, ``grid`` is
        ``(0, 0)`` and ``image_size`` 0."""
        return self.family == QWEN_FAMILY

    @property
    def is_tiny(self) -> bool:
        return self.open_clip_arch == "semcodec-tiny-vit"

    @property
    def family(self) -> str:
        """``"clip"`` (open_clip's ``VisionTransformer``), ``"siglip"`` (:mod:`semcodec.models.siglip`) or
        ``"qwen2_5_vl"`` (:mod:`semcodec.models.qwen_vl`)."""
        return self.config.get("family", "clip")


# --------------------------------------------------------------------------- registry


def _mean_tag(mean, std) -> str:
    if tuple(mean) == OPENAI_MEAN and tuple(std) == OPENAI_STD:
        return "openai"
    if tuple(mean) == (0.5, 0.5, 0.5) and tuple(std) == (0.5, 0.5, 0.5):
        return "inception"
    if tuple(mean) == (0.485, 0.456, 0.406) and tuple(std) == (0.229, 0.224, 0.225):
        return "imagenet"
    import hashlib

    return "m" + hashlib.sha256(repr((tuple(mean), tuple(std))).encode()).hexdigest()[:8]


def _make_spec(name: str, arch: str, tag: str, config: dict, layer: int, mean, std,
               preprocessing: str, description: str) -> SemanticSpec:
    vc = config["vision_cfg"]
    siglip = config.get("family") == "siglip"
    if not isinstance(vc.get("layers", 12), int) or (vc.get("timm_model_name") and not siglip) \
            or vc.get("attentional_pool"):
        raise InvalidInputError(
            f"open_clip model {arch} is not a plain VisionTransformer (ResNet, timm or attention-pooled "
            "towers have no CLIP patch tokens); semcodec supports open_clip ViT towers and the registered "
            "SigLIP towers (siglip-so400m-384, siglip-b16-224)")
    size = vc.get("image_size", 224)
    patch = vc.get("patch_size", 16)
    if isinstance(size, (list, tuple)) or isinstance(patch, (list, tuple)):
        if len(set(size if isinstance(size, (list, tuple)) else [size])) != 1 or \
                len(set(patch if isinstance(patch, (list, tuple)) else [patch])) != 1:
            raise InvalidInputError(f"open_clip model {arch} has a non-square input or patch; not supported")
        size = size[0] if isinstance(size, (list, tuple)) else size
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    num_layers = int(vc.get("layers", 12))
    if not -num_layers <= layer <= -1:
        raise InvalidInputError(f"layer {layer} is outside -{num_layers}..-1 for {arch} ({num_layers} blocks)")
    g = int(size) // int(patch)
    pid = f"{preprocessing}-{int(size)}-{_mean_tag(mean, std)}"
    return SemanticSpec(
        name=name, open_clip_arch=arch, pretrained=tag, layer=layer, image_size=int(size), grid=(g, g),
        token_dim=int(vc.get("width", 768)), mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std), preprocessing=preprocessing, preprocessing_id=pid,
        description=description, config_json=json.dumps(config, sort_keys=True))


def _make_qwen_spec(name: str, arch: str, tag: str, config: dict, description: str) -> SemanticSpec:
    """The spec of a dynamic-resolution Qwen2.5-VL tower: tokens = the merger output (``layer = -1``),
    grid and input size per image (``(0, 0)`` and 0 here); preprocessing id
    ``smart-resize-<factor>-<min>-<max>-openai``."""
    vc = config["vision_cfg"]
    factor = int(vc["patch_size"]) * int(vc["spatial_merge_size"])
    limits = f"{int(config['min_pixels'])}-{int(config['max_pixels'])}"
    pid = f"smart-resize-{factor}-{limits}-{_mean_tag(OPENAI_MEAN, OPENAI_STD)}"
    return SemanticSpec(
        name=name, open_clip_arch=arch, pretrained=tag, layer=-1, image_size=0, grid=(0, 0),
        token_dim=int(vc["out_hidden_size"]), mean=OPENAI_MEAN, std=OPENAI_STD, preprocessing="smart-resize",
        preprocessing_id=pid, description=description, config_json=json.dumps(config, sort_keys=True))


def _open_clip():
    """Imports open_clip (after the torchvision shim)."""
    from .. import _compat  # noqa: F401

    import open_clip

    return open_clip


def _open_clip_spec(name: str, arch: str, tag: str, layer: int, preprocessing: str, description: str) -> SemanticSpec:
    oc = _open_clip()
    from open_clip.factory import get_model_config
    from open_clip.pretrained import get_pretrained_cfg

    config = get_model_config(arch)
    if config is None:
        raise InvalidInputError(f"open_clip has no architecture named {arch!r}")
    pcfg = get_pretrained_cfg(arch, tag)
    if not pcfg:
        tags = oc.list_pretrained_tags_by_model(arch)
        raise InvalidInputError(f"open_clip has no pretrained tag {tag!r} for {arch}; known tags: {', '.join(tags) or 'none'}")
    config = {
        "embed_dim": config["embed_dim"],
        "vision_cfg": config["vision_cfg"],
        # QuickGELU belongs to the weights (open_clip #771): take it from the pretrained tag.
        "quick_gelu": bool(pcfg.get("quick_gelu", config.get("quick_gelu", False))),
    }
    mean = pcfg.get("mean") or OPENAI_MEAN
    std = pcfg.get("std") or OPENAI_STD
    return _make_spec(name, arch, tag, config, layer, mean, std, preprocessing, description)


# The registered real towers, as data copied from open_clip's model configs and pretrained table
# (a test checks them against open_clip), so that naming a tower or checking for its weights
# does not import open_clip.
_REGISTERED = {
    "clip-l14-336": {
        "arch": "ViT-L-14-336", "tag": "openai", "preprocessing": "pad-square",
        "description": "LLaVA-1.5's vision tower (open_clip ViT-L-14-336/openai), penultimate layer; default",
        "config": {"embed_dim": 768, "quick_gelu": True,
                   "vision_cfg": {"image_size": 336, "layers": 24, "width": 1024, "patch_size": 14}},
        "hf_hub": "timm/vit_large_patch14_clip_336.openai/",
        "url": "https://openaipublic.azureedge.net/clip/models/"
               "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
    },
    "clip-b16": {
        "arch": "ViT-B-16", "tag": "openai", "preprocessing": "pad-square",
        "description": "open_clip ViT-B-16/openai, penultimate layer; lighter",
        "config": {"embed_dim": 512, "quick_gelu": True,
                   "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16}},
        "hf_hub": "timm/vit_base_patch16_clip_224.openai/",
        "url": "https://openaipublic.azureedge.net/clip/models/"
               "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    },
    # SigLIP: the layer, token selection and preprocessing of LLaVA-OneVision (docs/semantic.md §1):
    # SiglipVisionModel cut to 26 of 27 layers, vision_feature_layer=-1, vision_feature_select_strategy="full",
    # base view resized to 384×384 (bicubic), mean = std = 0.5. The dims are those of the timm model
    # open_clip names (a test checks them against timm).
    "siglip-so400m-384": {
        "arch": "ViT-SO400M-14-SigLIP-384", "tag": "webli", "preprocessing": "squash",
        "description": "LLaVA-OneVision's vision tower (open_clip ViT-SO400M-14-SigLIP-384/webli), penultimate "
                       "block, all 729 tokens, its 384x384 base view",
        "config": {"family": "siglip",
                   "vision_cfg": {"image_size": 384, "patch_size": 14, "width": 1152, "layers": 27, "heads": 16,
                                  "mlp_dim": 4304, "ln_eps": 1e-6, "timm_model_name": "vit_so400m_patch14_siglip_384"}},
        "mean": INCEPTION_MEAN, "std": INCEPTION_STD,
        "hf_hub": "timm/ViT-SO400M-14-SigLIP-384/", "url": "",
    },
    "siglip-b16-224": {
        "arch": "ViT-B-16-SigLIP", "tag": "webli", "preprocessing": "squash",
        "description": "open_clip ViT-B-16-SigLIP/webli with LLaVA-OneVision's layer rule and preprocessing "
                       "(penultimate block, all tokens, 224x224 squash); lighter",
        "config": {"family": "siglip",
                   "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12, "heads": 12,
                                  "mlp_dim": 3072, "ln_eps": 1e-6, "timm_model_name": "vit_base_patch16_siglip_224"}},
        "mean": INCEPTION_MEAN, "std": INCEPTION_STD,
        "hf_hub": "timm/ViT-B-16-SigLIP/", "url": "",
    },
}
# Dynamic-resolution towers, through transformers (docs/semantic.md §1): the token grid depends on the image.
_QWEN_REGISTERED = {
    "qwen2.5-vl-7b": {
        "arch": "Qwen2.5-VL-7B-Instruct", "tag": "hf", "config": QWEN25_VL_7B,
        "description": "Qwen2.5-VL-7B-Instruct's vision encoder + patch merger (transformers), what its language "
                       "model consumes; a token grid per image (multiples of 28 px)",
        "hf_hub": "Qwen/Qwen2.5-VL-7B-Instruct/model.safetensors.index.json", "url": "",
    },
}
_HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"       # open_clip.constants.HF_WEIGHTS_NAME
_HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME
_TINY_DESCRIPTION = ("NOT semantic: a small ViT with random fixed-seed weights, shipped so that "
                     "everything runs offline (tests, benchmarks)")


def semantic_spec(name: str, layer: int | None = None) -> SemanticSpec:
    """Resolves a tower name to its spec (no weights are touched).

    Args:
        name: ``clip-l14-336``, ``clip-b16``, ``siglip-so400m-384``, ``siglip-b16-224``, ``tiny``, an
            open_clip ``Arch:tag`` (``ViT-B-32:laion2b_s34b_b79k``) or its stream id (``vit-b-32.laion2b_s34b_b79k``),
            optionally with a ``.l<layer>`` suffix.
        layer: Overrides the layer (negative block index); the name then gets a
            ``.l<layer>`` suffix unless it is the default ``-2``.

    Returns:
        The spec. Its ``name`` is the canonical stream id.

    Raises:
        InvalidInputError: unknown name, unknown open_clip architecture or tag, or
            a tower that has no ViT patch tokens.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInputError("a semantic tower name must be a non-empty string")
    base, suffix_layer = name, None
    m = _LAYER_SUFFIX_RE.match(name)
    if m:
        base, suffix_layer = m.group("base"), int(m.group("layer"))
    if layer is not None and suffix_layer is not None and layer != suffix_layer:
        raise InvalidInputError(f"{name} names layer {suffix_layer} but layer={layer} was asked for")
    layer = suffix_layer if layer is None else layer
    if base in _QWEN_REGISTERED:
        if layer not in (None, -1):
            raise InvalidInputError(f"{base}'s tokens are its patch merger's output (what the language model "
                                    "consumes); it has no other layer")
        r = _QWEN_REGISTERED[base]
        return _make_qwen_spec(base, r["arch"], r["tag"], r["config"], r["description"])
    if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool)):
        raise InvalidInputError(f"layer must be a negative integer, got {layer!r}")
    eff = -2 if layer is None else layer
    full = base if eff == -2 else f"{base}.l{eff}"

    if base == "tiny":
        return _make_spec(full, "semcodec-tiny-vit", f"seed{_TINY_SEED}", _TINY_CONFIG, eff, OPENAI_MEAN,
                          OPENAI_STD, "pad-square", _TINY_DESCRIPTION)
    if base in _REGISTERED:
        r = _REGISTERED[base]
        return _make_spec(full, r["arch"], r["tag"], r["config"], eff, r.get("mean", OPENAI_MEAN),
                          r.get("std", OPENAI_STD), r["preprocessing"], r["description"])

    arch, tag = _parse_open_clip_name(base)
    stream_id = f"{arch.lower()}.{tag.lower()}"
    full = stream_id if eff == -2 else f"{stream_id}.l{eff}"
    if not _NAME_RE.match(full):
        raise InvalidInputError(f"the stream id {full!r} of {name} is not a valid semantic model id "
                                "(at most 64 characters of a-z 0-9 . _ -)")
    return _open_clip_spec(full, arch, tag, eff, "resize-crop", f"open_clip {arch}/{tag}")


def _parse_open_clip_name(name: str) -> tuple[str, str]:
    oc = _open_clip()
    archs = {a.lower(): a for a in oc.list_models()}
    if ":" in name:
        arch, _, tag = name.partition(":")
        real = archs.get(arch.lower())
        if real is None:
            raise InvalidInputError(f"unknown semantic tower {name!r}: open_clip has no architecture {arch!r}")
        return real, tag
    # stream id form arch.tag: try every split point (architecture names may contain dots).
    for i in range(len(name) - 1, 0, -1):
        if name[i] == "." and name[:i].lower() in archs:
            return archs[name[:i].lower()], name[i + 1:]
    known = ", ".join(["tiny", *_REGISTERED, *_QWEN_REGISTERED])
    raise InvalidInputError(f"unknown semantic tower {name!r}; registered: {known}, or any open_clip "
                            "ViT as Arch:tag (e.g. ViT-B-32:laion2b_s34b_b79k)")


def list_semantic_models() -> list[dict]:
    """The registered towers and whether their weights and calibration are on this machine.

    Nothing is downloaded and no weights are loaded.

    Returns:
        One dict per tower: ``name``, ``arch``, ``pretrained``, ``layer``,
        ``token_shape`` (e.g. ``"576x1024 (24x24)"``), ``tokens``, ``token_dim``,
        ``preprocessing``, ``description``, ``weights_present``, ``weights``
        (path or None), ``weights_source`` (where they come from), ``calibration_present``,
        ``calibration`` (path or None).
    """
    from ..layers.semantic import find_calibration

    rows = []
    for name in (*_REGISTERED, *_QWEN_REGISTERED, "tiny"):
        spec = semantic_spec(name)
        weights = weights_path(spec)
        try:
            calibration = str(find_calibration(spec.name))
        except ModelError:
            calibration = None
        rows.append({
            "name": spec.name, "arch": spec.open_clip_arch, "pretrained": spec.pretrained, "layer": spec.layer,
            "token_shape": (f"Nx{spec.token_dim} (N per image)" if spec.variable_grid else
                            f"{spec.num_tokens}x{spec.token_dim} ({spec.grid[0]}x{spec.grid[1]})"),
            "weights_source": (f"{spec.config['hf_repo']} (its vision shards)" if spec.variable_grid else
                               f"open_clip {spec.open_clip_arch}/{spec.pretrained}"),
            "tokens": spec.num_tokens, "token_dim": spec.token_dim, "preprocessing": spec.preprocessing_id,
            "description": spec.description, "weights_present": weights is not None,
            "weights": str(weights) if weights else None,
            "calibration_present": calibration is not None, "calibration": calibration,
        })
    return rows


# --------------------------------------------------------------------------- weights


def _hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def _pretrained_cfg(spec: SemanticSpec) -> dict:
    """open_clip's pretrained-table entry of the tower's tag (from the registry for registered towers)."""
    base = _LAYER_SUFFIX_RE.sub(r"\g<base>", spec.name)
    if base in _REGISTERED:
        return _REGISTERED[base]
    if base in _QWEN_REGISTERED:
        return _QWEN_REGISTERED[base]
    _open_clip()
    from open_clip.pretrained import get_pretrained_cfg

    return get_pretrained_cfg(spec.open_clip_arch, spec.pretrained)


def _hub_files(spec: SemanticSpec) -> tuple[str | None, list[str]]:
    """(hf repo id, candidate filenames) of a tower's pretrained tag, per open_clip's pretrained table."""
    hub = _pretrained_cfg(spec).get("hf_hub", "")
    if not hub:
        return None, []
    repo, filename = os.path.split(hub)  # "org/repo/" -> default filename
    filename = filename or _HF_WEIGHTS_NAME
    names = [filename]
    if filename == _HF_WEIGHTS_NAME:
        names.insert(0, _HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def weights_path(spec: SemanticSpec | str) -> Path | None:
    """Where this machine already holds the tower's weights, or None (never downloads).

    ``tiny``: the shipped file. Real towers: the Hugging Face cache (the repo of
    the tag's ``hf_hub`` entry in open_clip's pretrained table), then open_clip's
    URL cache ``~/.cache/clip``.
    """
    if isinstance(spec, str):
        spec = semantic_spec(spec)
    if spec.is_tiny:
        return TINY_WEIGHTS if TINY_WEIGHTS.is_file() else None
    repo, names = _hub_files(spec)
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for filename in names:
            try:
                found = try_to_load_from_cache(repo, filename, cache_dir=str(_hub_cache_dir()))
            except Exception:  # a malformed cache entry is "not present"
                found = None
            if isinstance(found, str) and os.path.isfile(found):
                if spec.variable_grid and not all((Path(found).parent / f).is_file() for f in _visual_shards(found)):
                    return None  # the index without the shards that hold the vision encoder
                return Path(found)
    url = _pretrained_cfg(spec).get("url", "")
    if url:
        p = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)
        if p.is_file():
            return p
    return None


def _visual_shards(index: str | os.PathLike) -> list[str]:
    """The shard files of a sharded checkpoint's index that hold vision-encoder tensors (Qwen2.5-VL)."""
    from .qwen_vl import VISUAL_PREFIXES

    try:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["<unreadable index>"]
    return sorted({f for k, f in weight_map.items() if k.startswith(VISUAL_PREFIXES)}) or ["<no vision tensors>"]


def _offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """True if a TCP connection to the hub opens within ``timeout`` seconds (DNS included)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (80 if parsed.scheme == "http" else 443)
    ok = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    # getaddrinfo ignores socket timeouts; a daemon thread bounds the whole probe.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _not_available(spec: SemanticSpec, why: str) -> ModelNotAvailableError:
    cache = "the Hugging Face cache" if spec.family in ("siglip", QWEN_FAMILY) else "its cache"
    return ModelNotAvailableError(
        f"the weights of semantic tower {spec.name} (open_clip {spec.open_clip_arch}/{spec.pretrained}) are not "
        f"on this machine and {why}; either run once online (open_clip downloads them to {cache}), "
        f"pass --semantic-weights FILE, or use --semantic tiny (offline, not semantic)")


def _resolve_weights(spec: SemanticSpec) -> Path:
    found = weights_path(spec)
    if found is not None:
        return found
    if _offline_requested():
        raise _not_available(spec, "HF_HUB_OFFLINE is set")
    if not _hub_reachable():
        raise _not_available(spec, "the model hub cannot be reached")
    if spec.family in ("siglip", QWEN_FAMILY):
        return _download_from_hub(spec)
    _open_clip()
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    try:
        path = download_pretrained(get_pretrained_cfg(spec.open_clip_arch, spec.pretrained),
                                   cache_dir=str(_hub_cache_dir()))
    except Exception as e:  # network failures surface as many exception types
        raise _not_available(spec, f"downloading them failed ({type(e).__name__}: {str(e)[:200]})") from None
    if not path or not os.path.isfile(path):
        raise _not_available(spec, "open_clip returned no weights file")
    return Path(path)


def _download_from_hub(spec: SemanticSpec) -> Path:
    """Downloads a hub-hosted tower file (the one open_clip would fetch) without importing open_clip."""
    from huggingface_hub import hf_hub_download

    repo, names = _hub_files(spec)
    error: Exception | None = None
    for filename in names:
        try:
            path = Path(hf_hub_download(repo, filename, cache_dir=str(_hub_cache_dir())))
            if spec.variable_grid:  # a sharded checkpoint: fetch only the shards holding the vision encoder
                for shard in _visual_shards(path):
                    hf_hub_download(repo, shard, cache_dir=str(_hub_cache_dir()))
            return path
        except Exception as e:  # network failures and missing files surface as many exception types
            error = error or e
    raise _not_available(spec, f"downloading them failed ({type(error).__name__}: {str(error)[:200]})") from None


def _read_plain_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads a safetensors file or a torch state dict (tensors only, ``weights_only``) without open_clip."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except Exception as e:
        raise ModelError(f"cannot read weights file {path}: {type(e).__name__}: {str(e)[:200]}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelError(f"cannot read weights file {path}: not a state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Reads a tower or full-CLIP state dict (safetensors, torch, or an OpenAI TorchScript archive)."""
    _open_clip()
    from open_clip.factory import load_state_dict

    try:
        return load_state_dict(str(path), device="cpu", weights_only=True)
    except FileNotFoundError:
        raise InvalidInputError(f"{path}: no such file") from None
    except Exception as first:
        try:  # OpenAI's original .pt files are TorchScript archives
            sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
            raise ModelError(f"cannot read weights file {path}: {type(first).__name__}: {str(first)[:200]}") from None
        return {k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")}


def _visual_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    visual = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    return visual or dict(sd)  # a file with the vision tower alone


def _build_visual(spec: SemanticSpec) -> torch.nn.Module:
    """Builds the (randomly initialized) vision tower from the spec's config, via open_clip (SigLIP: in plain torch,
    up to the block whose tokens are taken)."""
    if spec.family == "siglip":
        from .siglip import SiglipTrunk

        return SiglipTrunk(spec.config["vision_cfg"], depth=spec.num_layers + spec.layer + 1)
    _open_clip()
    from open_clip.model import _build_vision_tower

    cfg = spec.config
    return _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=cfg["quick_gelu"])


def _load_visual(spec: SemanticSpec, path: Path) -> torch.nn.Module:
    if spec.is_tiny:
        return _load_tiny(spec, path)
    if spec.family == "siglip":
        return _load_siglip(spec, path)
    visual = _build_visual(spec)
    sd = _visual_state_dict(_read_state_dict(path))
    try:
        visual.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0][:300]
        raise ModelMismatchError(f"{path} does not hold the vision tower of {spec.open_clip_arch}: {first}") from None
    return visual


def check_tensors_present(own: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: str) -> None:
    """Every tensor of a built tower (``own``) must be in a weights file (``found``) with its shape.

    Raises:
        ModelMismatchError: ``"{where}: missing …"`` or ``"{where}: … has shape …, expected …"``.
    """
    missing = sorted(k for k in own if k not in found)
    if missing:
        more = f" and {len(missing) - 1} more" if missing[1:] else ""
        raise ModelMismatchError(f"{where}: missing {missing[0]}{more}")
    for k, v in own.items():
        if tuple(found[k].shape) != tuple(v.shape):
            raise ModelMismatchError(f"{where}: {k} has shape {tuple(found[k].shape)}, expected {tuple(v.shape)}")


def _load_siglip(spec: SemanticSpec, path: Path) -> torch.nn.Module:
    """A SigLIP trunk from open_clip's file (``visual.trunk.…``), its vision tower alone (``trunk.…``) or a Hugging
    Face SigLIP / LLaVA-OneVision file: every built parameter must be there with its shape; blocks past the
    selected one may be absent (LLaVA-OneVision keeps 26 of 27); anything else is a mismatch."""
    from .siglip import UNUSED_PREFIXES, to_trunk_names

    visual = _build_visual(spec)
    sd = to_trunk_names(_visual_state_dict(_read_plain_state_dict(path)))
    own = visual.state_dict()
    where = f"{path} does not hold the vision tower of {spec.open_clip_arch}"
    check_tensors_present(own, sd, where)
    block_re = re.compile(r"^trunk\.blocks\.(\d+)\.")
    for k in sd:
        m = block_re.match(k)
        unused_block = m is not None and len(visual.trunk.blocks) <= int(m.group(1)) < spec.num_layers
        if k not in own and not unused_block and not k.startswith(UNUSED_PREFIXES):
            raise ModelMismatchError(f"{where}: unexpected tensor {k}")
    visual.load_state_dict({k: sd[k].float() for k in own}, strict=True)
    return visual


def _load_tiny(spec: SemanticSpec, path: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    from ..safetensors_io import read_checked_metadata

    if not Path(path).is_file():
        raise ModelNotAvailableError(f"the tiny tower's weights {path} are missing; regenerate them with "
                                     "python -c 'from semcodec.models.semantic import make_tiny_checkpoint; "
                                     "make_tiny_checkpoint()'")
    meta = read_checked_metadata(path, "semantic-tower", TOWER_FORMAT_VERSION, "semantic-tower file")
    if meta.get("arch") != spec.open_clip_arch or json.loads(meta.get("config", "null")) != _TINY_CONFIG:
        raise ModelMismatchError(f"{path} holds tower {meta.get('arch')} with another config than {spec.name}")
    visual = _build_visual(spec)
    try:
        visual.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    except RuntimeError as e:
        raise ModelMismatchError(f"{path} does not match the tiny tower: {str(e).splitlines()[0][:300]}") from None
    return visual


def make_tiny_checkpoint(path: str | Path = TINY_WEIGHTS) -> Path:
    """(Re)creates the tiny tower's weights file: open_clip init from a fixed seed, stored as fp16.

    The shipped file is the reference (its sha256 names it in calibrations);
    regenerating it on another torch build may change the bits.
    """
    from ..safetensors_io import save_atomic
    from ..version import __version__

    spec = semantic_spec("tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        visual = _build_visual(spec)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in visual.state_dict().items()}
    meta = {
        "format_version": TOWER_FORMAT_VERSION, "kind": "semantic-tower", "name": "tiny",
        "arch": spec.open_clip_arch, "config": json.dumps(_TINY_CONFIG, sort_keys=True),
        "seed": str(_TINY_SEED), "semcodec_version": __version__,
        "note": "random weights from a fixed seed; NOT semantic; exists so that semcodec runs offline",
    }
    save_atomic(tensors, Path(path), meta)
    return Path(path)


# --------------------------------------------------------------------------- tower


def image_region(spec: SemanticSpec, width: int, height: int) -> tuple[float, float, float, float]:
    """Where a ``width × height`` image lies in the tower input, as fractions ``(top, left, height, width)``.

    ``pad-square`` centres the image on a square canvas (the rest is padding);
    ``resize-crop`` fills the whole input (its borders are cropped off the image).
    Needs only the spec, so decoders can use it without loading the tower.
    """
    if width < 1 or height < 1:
        raise InvalidInputError(f"image size {width}x{height} is empty")
    if spec.preprocessing != "pad-square" or width == height:
        return (0.0, 0.0, 1.0, 1.0)
    side = max(width, height)
    return ((side - height) // 2 / side, (side - width) // 2 / side, height / side, width / side)


def box_region(spec: SemanticSpec, width: int, height: int, top: int, left: int, box_height: int,
               box_width: int) -> tuple[float, float, float, float]:
    """Where a pixel box of a ``width × height`` image lies in the tower input, as fractions
    ``(top, left, height, width)`` (see :func:`image_region`). The box may extend past the
    image's right and bottom edges (e.g. the codec's padding)."""
    t0, l0, rh, rw = image_region(spec, width, height)
    return t0 + rh * top / height, l0 + rw * left / width, rh * box_height / height, rw * box_width / width


class SemanticTower(FrozenTower):
    """A loaded tower: preprocessing + frozen ViT, returning patch tokens of ``spec.layer``.

    Always eval mode, float32, CPU unless moved with :meth:`to`, no gradients.
    """

    def __init__(self, spec: SemanticSpec, visual: torch.nn.Module, weights: Path | None = None):
        super().__init__(spec, visual, weights)
        self._block = spec.num_layers + spec.layer  # absolute index of the block whose output we take

    # ---- preprocessing

    def _square(self, image: Image.Image) -> Image.Image:
        S = self.spec.image_size
        w, h = image.size
        if self.spec.preprocessing == "squash":  # SigLIP / LLaVA-OneVision base view: resize to S×S, any aspect
            return image.resize((S, S), Image.BICUBIC)
        if self.spec.preprocessing == "pad-square":
            if w != h:  # LLaVA's expand2square: centred on a canvas of the mean colour
                bg = tuple(int(m * 255) for m in self.spec.mean)
                side = max(w, h)
                canvas = Image.new("RGB", (side, side), bg)
                canvas.paste(image, ((side - w) // 2, (side - h) // 2))
                image = canvas
            return image.resize((S, S), Image.BICUBIC)
        # resize-crop: torchvision Resize(S) (short side, long side truncated) + CenterCrop(S)
        if w <= h:
            nw, nh = S, int(S * h / w)
        else:
            nw, nh = int(S * w / h), S
        image = image.resize((nw, nh), Image.BICUBIC)
        top, left = int(round((nh - S) / 2.0)), int(round((nw - S) / 2.0))
        return image.crop((left, top, left + S, top + S))

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One PIL image -> normalized tower input ``(3, S, S)`` float32."""
        image = rgb_image(image)
        x = torch.from_numpy(np.asarray(self._square(image), dtype=np.float32) / 255.0)  # (S, S, 3)
        return (x.permute(2, 0, 1) - self._mean) / self._std

    def region(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Where a ``width × height`` image lies in the tower input, as fractions ``(top, left, height, width)``.

        ``pad-square`` centres the image on a square canvas (the rest is padding);
        ``resize-crop`` fills the whole input (its borders are cropped off the image).
        """
        return image_region(self.spec, width, height)

    # ---- tokens

    @torch.inference_mode()
    def tokens_from_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens of preprocessed inputs.

        Args:
            x: ``(B, 3, S, S)`` float tensor, already normalized (see :meth:`preprocess`).

        Returns:
            ``(B, N, D)`` float32: the hidden state after block ``spec.layer``,
            without the CLS token, before ``ln_post`` and the projection.
        """
        S = self.spec.image_size
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (3, S, S):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InvalidInputError(f"tower input must be (B, 3, {S}, {S}), got {shape}")
        x = x.to(device=self.device, dtype=torch.float32)
        out = self.visual.forward_intermediates(
            x, indices=[self._block], stop_early=True, intermediates_only=True, output_fmt="NLC")
        return out["image_intermediates"][0].float().contiguous()  # (B, N, D)

    def tokens(self, images: list[Image.Image], batch_size: int = 8) -> torch.Tensor:
        """Patch tokens ``(B, N, D)`` of PIL images (see :meth:`tokens_from_tensor`)."""
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        if not images:
            raise InvalidInputError("no images given")
        outs = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.preprocess(im) for im in images[i:i + batch_size]])
            outs.append(self.tokens_from_tensor(x).cpu())
        return torch.cat(outs)

    def __repr__(self) -> str:
        return f"SemanticTower({self.spec.name}, {self.spec.num_tokens}x{self.spec.token_dim}, layer {self.spec.layer})"


def load_tower(name: str | SemanticSpec, weights: str | os.PathLike | None = None) -> SemanticTower:
    """Loads a semantic tower.

    Args:
        name: tower name or spec (see :func:`semantic_spec`).
        weights: optional weights file (safetensors, open_clip ``.bin``/``.pt`` or
            an OpenAI TorchScript ``.pt``; a full CLIP checkpoint or the vision
            tower alone; for ``qwen2.5-vl-7b`` a safetensors file or a sharded checkpoint's
            ``model.safetensors.index.json``). Without it: the shipped file (``tiny``), the
            local cache, or a download where the hub is reachable.

    Returns:
        The tower, in eval mode on the CPU: a :class:`SemanticTower`, or a
        :class:`~semcodec.models.qwen_vl.QwenVisionTower` for dynamic-resolution towers.

    Raises:
        ModelNotAvailableError: no weights here and no way to get them (offline);
            raised within ~2 s, never after a long network timeout.
        ModelMismatchError: the weights file holds another architecture.
        InvalidInputError: unknown name or missing weights file.
    """
    spec = name if isinstance(name, SemanticSpec) else semantic_spec(name)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise InvalidInputError(f"weights file {path} does not exist")
    elif spec.is_tiny:
        path = TINY_WEIGHTS
    else:
        path = _resolve_weights(spec)
    if spec.variable_grid:
        from .qwen_vl import QwenVisionTower, load_qwen_visual

        return QwenVisionTower(spec, load_qwen_visual(spec.config, path, spec.open_clip_arch), path)
    return SemanticTower(spec, _load_visual(spec, path), path)
