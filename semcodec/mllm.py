"""Hand-off of decoded semantic tokens to Hugging Face LLaVA models (optional extra ``mllm``).

::

    stream ─ decode_tokens ─ Tokens (N, D) ─ model.multi_modal_projector ─ (N, H)
                                                  │
    input_ids (B, L) with N image tokens per image ┴─ embed_tokens, splice at image-token positions
                                                  └─ inputs_embeds (B, L, H) → model.generate(inputs_embeds=...)

The tokens replace what LLaVA computes as
``vision_tower(pixel_values, output_hidden_states=True).hidden_states[vision_feature_layer][:, 1:]``
(``vision_feature_select_strategy="default"``): the patch tokens of the layer the
calibration names, without CLS, before the projector. No pixels are decoded and
the vision tower does not run.

**LLaVA-OneVision** (:func:`onevision_input_ids`, :func:`onevision_inputs_embeds`): the
tokens of a SigLIP tower (``siglip-so400m-384``) are one 384×384 view; they go in as
OneVision lays out an image of one view (``pack_image_features`` for a single patch, the
path of images in multi-image prompts): the ``N`` projected tokens, then the model's
learned ``image_newline``, i.e. ``N + 1`` image tokens (730), what
``LlavaOnevisionProcessor`` expands an image of a multi-image prompt into. The anyres
tiles OneVision adds to a lone image (2,709 image tokens in all for a 768×512 photo) are
not in layer 0: OneVision sees the coarse base view only (docs/semantic.md §4).

**Qwen2.5-VL** (:func:`qwen_input_ids`, :func:`qwen_inputs`): the tokens of ``qwen2.5-vl-7b``
are the merger output, what the language model consumes, so they are spliced as they are
(no projector) at the ``<|image_pad|>`` positions, ``gh·gw`` of them per image, and the
model gets ``image_grid_thw = (1, 2·gh, 2·gw)`` (the patch grid) and ``mm_token_type_ids``
so that it lays out its 3D (M-RoPE) positions exactly as for pixels.

Requires ``transformers`` (``pip install semcodec[mllm]``).

Example:
    >>> from transformers import AutoProcessor, LlavaForConditionalGeneration   # doctest: +SKIP
    >>> model = LlavaForConditionalGeneration.from_pretrained("llava-hf/llava-1.5-7b-hf")  # doctest: +SKIP
    >>> processor = AutoProcessor.from_pretrained("llava-hf/llava-1.5-7b-hf")             # doctest: +SKIP
    >>> tokens = semcodec.decode_tokens(open("photo.smc", "rb").read())                   # doctest: +SKIP
    >>> ids = llava_input_ids(processor.tokenizer, "USER: <image>\\nWhat is shown? ASSISTANT:",
    ...                       model.config, tokens)                                      # doctest: +SKIP
    >>> embeds = llava_inputs_embeds(model, tokens, ids)                                  # doctest: +SKIP
    >>> model.generate(inputs_embeds=embeds, max_new_tokens=40)                           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from . import _compat  # noqa: F401  (transformers imports torchvision)
from .errors import InvalidInputError, ModelMismatchError
from .layers.semantic import Tokens

__all__ = ["llava_input_ids", "llava_inputs_embeds", "onevision_input_ids", "onevision_inputs_embeds",
           "onevision_num_image_tokens", "projector", "qwen_input_ids", "qwen_inputs"]


def _checked_items(tokens: Tokens | Sequence[Tokens], check: Callable[[Tokens], None] | None) -> list[Tokens]:
    """The adapters' common start: transformers present, the tokens as a non-empty list, each passed to ``check``
    (which raises for a token space the model does not consume) unless it is None."""
    _require_transformers()
    items = [tokens] if isinstance(tokens, Tokens) else list(tokens)
    if not items:
        raise InvalidInputError("no tokens given")
    if check is not None:
        for t in items:
            check(t)
    return items


def _require_transformers() -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise InvalidInputError("the MLLM adapter needs transformers: pip install 'semcodec[mllm]'") from None


def _image_token_id(config) -> int:
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise InvalidInputError("the model config names no image token (image_token_id)")


def projector(model) -> torch.nn.Module:
    """The model's multi-modal projector (``model.multi_modal_projector`` or ``model.model.multi_modal_projector``)."""
    for owner in (model, getattr(model, "model", None)):
        proj = getattr(owner, "multi_modal_projector", None) if owner is not None else None
        if isinstance(proj, torch.nn.Module):
            return proj
    raise InvalidInputError(f"{type(model).__name__} has no multi_modal_projector; is it a LLaVA model?")


def _check_compatible(config, tokens: Tokens) -> None:
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    if strategy != "default":
        raise ModelMismatchError(f"the model uses vision_feature_select_strategy={strategy!r} (CLS included); "
                                 "semcodec tokens are patch tokens only ('default')")
    layer = getattr(config, "vision_feature_layer", -2)
    if not isinstance(layer, int):
        raise ModelMismatchError(f"the model concatenates several vision layers {layer}; semcodec tokens hold one")
    if layer != tokens.layer:
        raise ModelMismatchError(f"the model consumes vision layer {layer}, the tokens come from layer {tokens.layer}")
    hidden = getattr(getattr(config, "vision_config", None), "hidden_size", None)
    if hidden is not None and hidden != tokens.tokens.shape[-1]:
        raise ModelMismatchError(f"the model's vision tower has width {hidden}, the tokens have "
                                 f"{tokens.tokens.shape[-1]} ({tokens.model})")


def llava_input_ids(tokenizer, prompt: str, config, tokens: Tokens, image_placeholder: str = "<image>",
                    add_bos: bool = True) -> torch.Tensor:
    """Tokenizes a prompt and expands each ``<image>`` placeholder into N image tokens.

    Args:
        tokenizer: the model's tokenizer (called as ``tokenizer(text, add_special_tokens=False).input_ids``).
        prompt: text with one ``<image>`` per image, e.g. ``"USER: <image>\nWhat is shown? ASSISTANT:"``.
        config: the model config (for the image token id).
        tokens: the decoded tokens (for N).
        add_bos: start with the tokenizer's BOS token, as LLaVA's processor does.

    Returns:
        ``(1, L)`` int64 input ids.
    """
    return _expand_prompt(tokenizer, prompt, _image_token_id(config), tokens.tokens.shape[0], image_placeholder,
                          add_bos)


def _expand_prompt(tokenizer, prompt: str, image_id: int, counts: int | list[int], image_placeholder: str,
                   add_bos: bool) -> torch.Tensor:
    """``(1, L)`` ids of ``prompt`` with the ``i``-th placeholder expanded into ``counts[i]`` image tokens."""
    if image_placeholder not in prompt:
        raise InvalidInputError(f"the prompt has no {image_placeholder} placeholder")
    parts = prompt.split(image_placeholder)
    if isinstance(counts, int):
        counts = [counts] * (len(parts) - 1)
    if len(counts) != len(parts) - 1:
        raise InvalidInputError(f"the prompt has {len(parts) - 1} {image_placeholder} placeholders for "
                                f"{len(counts)} images")
    bos = getattr(tokenizer, "bos_token_id", None)
    ids: list[int] = [bos] if add_bos and bos is not None else []
    for i, part in enumerate(parts):
        if i:
            ids.extend([image_id] * counts[i - 1])
        if part:
            ids.extend(tokenizer(part, add_special_tokens=False).input_ids)
    return torch.tensor([ids], dtype=torch.long)


def llava_inputs_embeds(model, tokens: Tokens | Sequence[Tokens], input_ids: torch.Tensor,
                        check: bool = True) -> torch.Tensor:
    """Projects semantic tokens with the model's projector and splices them into the text embeddings.

    Args:
        model: a ``transformers`` ``LlavaForConditionalGeneration`` (or ``LlavaModel``).
        tokens: the decoded tokens of one image, or a list (one per image
            placeholder, in the order they appear in ``input_ids``, row by row).
        input_ids: ``(B, L)`` ids in which every image is represented by ``N``
            copies of the image token (see :func:`llava_input_ids`).
        check: verify that the model consumes this token space (layer, width,
            patch-only selection).

    Returns:
        ``inputs_embeds`` ``(B, L, H)`` in the model's dtype and device, for
        ``model(inputs_embeds=...)`` or ``model.generate(inputs_embeds=...)``.

    Raises:
        InvalidInputError: the number of image tokens in ``input_ids`` differs from the tokens given.
        ModelMismatchError: the model consumes another layer or width.
    """
    items = _checked_items(tokens, (lambda t: _check_compatible(model.config, t)) if check else None)
    param = next(projector(model).parameters())
    with torch.no_grad():
        feats = torch.cat([t.tokens.to(param.device, param.dtype) for t in items])  # (sum N, D)
        feats = projector(model)(feats)                                             # (sum N, H)
    return _splice(model, input_ids, feats, "llava_input_ids")


def _splice(model, input_ids: torch.Tensor, feats: torch.Tensor, helper: str) -> torch.Tensor:
    """Text embeddings of ``input_ids`` with the image-token positions replaced, in order, by the rows of ``feats``."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise InvalidInputError("input_ids must be a (batch, length) tensor")
    embed = model.get_input_embeddings()
    input_ids = input_ids.to(embed.weight.device)
    mask = input_ids == _image_token_id(model.config)
    if int(mask.sum()) != feats.shape[0]:
        raise InvalidInputError(f"input_ids hold {int(mask.sum())} image tokens, the tokens given fill "
                                f"{feats.shape[0]}; expand each image placeholder with {helper}")
    with torch.no_grad():
        safe_ids = input_ids.masked_fill(mask, 0)  # the image token may lie outside the text vocabulary
        embeds = embed(safe_ids)                                                    # (B, L, H)
        embeds = embeds.masked_scatter(mask.unsqueeze(-1).expand_as(embeds), feats.to(embeds.device, embeds.dtype))
    return embeds


# --------------------------------------------------------------------------- LLaVA-OneVision


def _onevision_block(config) -> int:
    """The 0-based index of the vision block whose output a LLaVA-OneVision model projects."""
    layer = getattr(config, "vision_feature_layer", -1)
    if not isinstance(layer, int):
        raise ModelMismatchError(f"the model concatenates several vision layers {layer}; semcodec tokens hold one")
    depth = int(config.vision_config.num_hidden_layers)
    block = depth + layer if layer < 0 else layer - 1  # hidden_states[0] is the embedding output
    if not 0 <= block < depth:
        raise ModelMismatchError(f"the model projects vision_feature_layer={layer}, which is no block's output")
    return block


def _check_onevision(config, tokens: Tokens, tower_layers: int | None) -> None:
    strategy = getattr(config, "vision_feature_select_strategy", "full")
    if strategy != "full":
        raise ModelMismatchError(f"the model uses vision_feature_select_strategy={strategy!r} (drops the first "
                                 "token); semcodec's SigLIP tokens are all of the view's tokens ('full')")
    vc = config.vision_config
    if tower_layers is None:
        from .models.semantic import semantic_spec

        try:
            tower_layers = semantic_spec(tokens.model).num_layers
        except Exception:
            raise ModelMismatchError(f"cannot tell which block the tokens of {tokens.model} come from; pass "
                                     "tower_layers (the number of blocks of the full tower)") from None
    ours, theirs = tower_layers + tokens.layer, _onevision_block(config)
    if ours != theirs:
        raise ModelMismatchError(f"the model projects the output of vision block {theirs} (0-based), the tokens "
                                 f"come from block {ours} ({tokens.model}, layer {tokens.layer})")
    if int(vc.hidden_size) != tokens.tokens.shape[-1]:
        raise ModelMismatchError(f"the model's vision tower has width {vc.hidden_size}, the tokens have "
                                 f"{tokens.tokens.shape[-1]} ({tokens.model})")
    side = int(vc.image_size) // int(vc.patch_size)
    if tuple(tokens.grid) != (side, side) or tokens.tokens.shape[0] != side * side:
        raise ModelMismatchError(f"the model's view is a {side}x{side} token grid, the tokens are "
                                 f"{tokens.grid[0]}x{tokens.grid[1]} ({tokens.model})")
    mode, _, size = tokens.preprocessing.rpartition("-")[0].rpartition("-")  # "squash-384-inception"
    if mode not in ("squash", "pad-square") or size != str(vc.image_size):
        raise ModelMismatchError(f"the tokens were made with preprocessing {tokens.preprocessing}; a LLaVA-OneVision "
                                 f"view is a {vc.image_size}x{vc.image_size} squash (or pad-square) resize")


def onevision_num_image_tokens(tokens: Tokens) -> int:
    """How many image tokens one image of decoded tokens fills in a LLaVA-OneVision prompt: ``N + 1``.

    The ``N`` tokens of the one view, then the model's ``image_newline``: what
    ``LlavaOnevisionModel.pack_image_features`` gives an image of one view and what
    ``LlavaOnevisionProcessor`` expands an image of a multi-image prompt into
    (``num_image_tokens + 1``; 730 for ``siglip-so400m-384``).
    """
    return int(tokens.tokens.shape[0]) + 1


def onevision_input_ids(tokenizer, prompt: str, config, tokens: Tokens | Sequence[Tokens],
                        image_placeholder: str = "<image>", add_bos: bool = False) -> torch.Tensor:
    """Tokenizes a LLaVA-OneVision prompt and expands each ``<image>`` into :func:`onevision_num_image_tokens` tokens.

    Args:
        tokenizer: the model's tokenizer (called as ``tokenizer(text, add_special_tokens=False).input_ids``).
        prompt: text with one ``<image>`` per image, e.g. the chat template's
            ``"<|im_start|>user <image>\nWhat is shown?<|im_end|><|im_start|>assistant\n"``.
        config: the model config (for the image token id).
        tokens: the decoded tokens of one image (used for every placeholder) or one per placeholder, in order.
        add_bos: start with the tokenizer's BOS token (OneVision's Qwen2 tokenizer has none).

    Returns:
        ``(1, L)`` int64 input ids.
    """
    items = [tokens] if isinstance(tokens, Tokens) else list(tokens)
    if not items:
        raise InvalidInputError("no tokens given")
    counts: int | list[int] = [onevision_num_image_tokens(t) for t in items]
    if len(items) == 1:
        counts = counts[0]
    return _expand_prompt(tokenizer, prompt, _image_token_id(config), counts, image_placeholder, add_bos)


def onevision_inputs_embeds(model, tokens: Tokens | Sequence[Tokens], input_ids: torch.Tensor, check: bool = True,
                            tower_layers: int | None = None) -> torch.Tensor:
    """Feeds decoded SigLIP tokens to LLaVA-OneVision as one view per image, and splices them into the text.

    For each image: ``multi_modal_projector(tokens)`` ``(N, H)`` followed by the model's
    ``image_newline`` ``(1, H)``, exactly what ``LlavaOnevisionModel`` computes for an image of one
    view (``pack_image_features``), here from the decoded tokens instead of the vision tower.

    Args:
        model: a ``transformers`` ``LlavaOnevisionForConditionalGeneration`` (or ``LlavaOnevisionModel``).
        tokens: the decoded tokens of one image, or a list (one per image placeholder, in the order they
            appear in ``input_ids``, row by row).
        input_ids: ``(B, L)`` ids in which every image is ``N + 1`` image tokens (:func:`onevision_input_ids`).
        check: verify that the model consumes this token space: the same block of the same tower
            (``vision_feature_layer`` over the model's cut tower), ``"full"`` selection, width, grid,
            and a ``squash`` / ``pad-square`` view of the model's input size.
        tower_layers: the number of blocks of the tower the tokens' ``layer`` counts from; by default that
            of the registered tower named by the tokens (27 for ``siglip-so400m-384``).

    Returns:
        ``inputs_embeds`` ``(B, L, H)`` in the model's dtype and device, for ``model(inputs_embeds=...)``
        or ``model.generate(inputs_embeds=...)``.

    Raises:
        InvalidInputError: the number of image tokens in ``input_ids`` differs from ``sum(N + 1)``.
        ModelMismatchError: the model consumes another block, width, grid or selection.
    """
    items = _checked_items(tokens, (lambda t: _check_onevision(model.config, t, tower_layers)) if check else None)
    newline = None
    for owner in (model, getattr(model, "model", None)):
        value = getattr(owner, "image_newline", None) if owner is not None else None
        if isinstance(value, torch.Tensor):
            newline = value
            break
    if newline is None:
        raise InvalidInputError(f"{type(model).__name__} has no image_newline; is it a LLaVA-OneVision model?")
    proj = projector(model)
    param = next(proj.parameters())
    with torch.no_grad():
        feats = []
        for t in items:
            x = proj(t.tokens.to(param.device, param.dtype))                            # (N, H)
            feats.append(torch.cat([x, newline[None].to(x)]))                           # (N + 1, H)
    return _splice(model, input_ids, torch.cat(feats), "onevision_input_ids")


# --------------------------------------------------------------------------- Qwen2.5-VL


def _check_qwen(config, tokens: Tokens) -> None:
    vc = config.vision_config
    factor = int(vc.patch_size) * int(vc.spatial_merge_size)
    if not tokens.preprocessing.startswith(f"smart-resize-{factor}-"):
        raise ModelMismatchError(f"the tokens were made with preprocessing {tokens.preprocessing}; Qwen2.5-VL "
                                 f"consumes its merger's output on a smart-resize grid of {factor} px")
    if tokens.layer != -1:
        raise ModelMismatchError(f"the tokens come from layer {tokens.layer}; Qwen2.5-VL consumes its merger's "
                                 "output (layer -1)")
    if int(vc.out_hidden_size) != tokens.tokens.shape[-1]:
        raise ModelMismatchError(f"the model's vision merger gives width {vc.out_hidden_size}, the tokens have "
                                 f"{tokens.tokens.shape[-1]} ({tokens.model})")
    gh, gw = tokens.grid
    if gh * gw != tokens.tokens.shape[0]:
        raise InvalidInputError(f"the tokens hold {tokens.tokens.shape[0]} rows for a {gh}x{gw} grid")


def qwen_input_ids(tokenizer, prompt: str, config, tokens: Tokens | Sequence[Tokens],
                   image_placeholder: str = "<|image_pad|>") -> torch.Tensor:
    """Tokenizes a Qwen2.5-VL prompt and expands each ``<|image_pad|>`` into the image's ``gh·gw`` image tokens.

    Args:
        tokenizer: the model's tokenizer (called as ``tokenizer(text, add_special_tokens=False).input_ids``).
        prompt: text with one placeholder per image, as the chat template writes it:
            ``"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n..."``.
        config: the model config (for the image token id).
        tokens: the decoded tokens of one image (used for every placeholder) or one per placeholder, in order.

    Returns:
        ``(1, L)`` int64 input ids, what ``Qwen2_5_VLProcessor`` gives for the same prompt and image sizes.
    """
    items = [tokens] if isinstance(tokens, Tokens) else list(tokens)
    if not items:
        raise InvalidInputError("no tokens given")
    counts: int | list[int] = [int(t.grid[0]) * int(t.grid[1]) for t in items]
    if len(items) == 1:
        counts = counts[0]
    return _expand_prompt(tokenizer, prompt, _image_token_id(config), counts, image_placeholder, add_bos=False)


def qwen_inputs(model, tokens: Tokens | Sequence[Tokens], input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None, check: bool = True) -> dict:
    """Everything ``Qwen2_5_VLForConditionalGeneration`` needs to run on decoded tokens instead of pixels.

    The tokens are spliced into the text embeddings at the image-token positions as they are (they are
    the merger's output, which the model splices itself for pixels). ``image_grid_thw`` and
    ``mm_token_type_ids`` let the model compute its 3D rotary positions (``get_rope_index``) as for pixels.

    Args:
        model: a ``transformers`` ``Qwen2_5_VLForConditionalGeneration`` (or ``Qwen2_5_VLModel``).
        tokens: the decoded tokens of one image, or a list (one per image, in the order of ``input_ids``, row
            by row).
        input_ids: ``(B, L)`` ids in which every image is ``gh·gw`` image tokens (:func:`qwen_input_ids`).
        attention_mask: optional ``(B, L)`` mask (default all ones).
        check: verify that the model consumes this token space (merger width, smart-resize grid, layer).

    Returns:
        ``{"input_ids", "inputs_embeds", "attention_mask", "image_grid_thw", "mm_token_type_ids"}`` for
        ``model(**inputs)`` or ``model.generate(**inputs, max_new_tokens=...)``.

    Raises:
        InvalidInputError: the number of image tokens in ``input_ids`` differs from ``Σ gh·gw``.
        ModelMismatchError: the model consumes another width or preprocessing.
    """
    config = model.config
    items = _checked_items(tokens, (lambda t: _check_qwen(config, t)) if check else None)
    embed = model.get_input_embeddings()
    feats = torch.cat([t.tokens.to(embed.weight.device, embed.weight.dtype) for t in items])  # (Σ N, H)
    embeds = _splice(model, input_ids, feats, "qwen_input_ids")
    input_ids = input_ids.to(embeds.device)
    merge = int(config.vision_config.spatial_merge_size)
    grid_thw = torch.tensor([[1, int(t.grid[0]) * merge, int(t.grid[1]) * merge] for t in items], dtype=torch.long,
                            device=embeds.device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    types = (input_ids == _image_token_id(config)).to(torch.int32)  # text 0, image 1 (as the processor marks them)
    return {"input_ids": input_ids, "inputs_embeds": embeds, "attention_mask": attention_mask.to(embeds.device),
            "image_grid_thw": grid_thw, "mm_token_type_ids": types}
