"""Hand-off of decoded semantic tokens to a Hugging Face LLaVA model (optional extra ``mllm``).

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

from typing import Sequence

import torch

from . import _compat  # noqa: F401  (transformers imports torchvision)
from .errors import InvalidInputError, ModelMismatchError
from .layers.semantic import Tokens

__all__ = ["llava_input_ids", "llava_inputs_embeds", "projector"]


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
    if image_placeholder not in prompt:
        raise InvalidInputError(f"the prompt has no {image_placeholder} placeholder")
    image_id = _image_token_id(config)
    n = tokens.tokens.shape[0]
    bos = getattr(tokenizer, "bos_token_id", None)
    ids: list[int] = [bos] if add_bos and bos is not None else []
    for i, part in enumerate(prompt.split(image_placeholder)):
        if i:
            ids.extend([image_id] * n)
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
    _require_transformers()
    items = [tokens] if isinstance(tokens, Tokens) else list(tokens)
    if not items:
        raise InvalidInputError("no tokens given")
    config = model.config
    if check:
        for t in items:
            _check_compatible(config, t)
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise InvalidInputError("input_ids must be a (batch, length) tensor")
    embed = model.get_input_embeddings()
    param = next(projector(model).parameters())
    input_ids = input_ids.to(embed.weight.device)
    image_id = _image_token_id(config)
    mask = input_ids == image_id
    expected = sum(t.tokens.shape[0] for t in items)
    if int(mask.sum()) != expected:
        raise InvalidInputError(f"input_ids hold {int(mask.sum())} image tokens, the tokens given fill {expected}; "
                                "expand each image placeholder into N image tokens (llava_input_ids)")
    with torch.no_grad():
        feats = torch.cat([t.tokens.to(param.device, param.dtype) for t in items])  # (sum N, D)
        feats = projector(model)(feats)                                             # (sum N, H)
        safe_ids = input_ids.masked_fill(mask, 0)  # the image token may lie outside the text vocabulary
        embeds = embed(safe_ids)                                                    # (B, L, H)
        embeds = embeds.masked_scatter(mask.unsqueeze(-1).expand_as(embeds), feats.to(embeds.dtype))
    return embeds
