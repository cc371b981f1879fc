"""LLaVA hand-off with a tiny randomly initialized LLaVA built here (no download)."""

from __future__ import annotations

import pytest
import torch

import semcodec._compat  # noqa: F401  (before transformers, which imports torchvision)

transformers = pytest.importorskip("transformers", reason="the optional extra 'mllm' (transformers) is not installed")

from semcodec.errors import InvalidInputError, ModelMismatchError  # noqa: E402
from semcodec.layers.semantic import Calibration, decode_tokens, find_calibration, semantic_only_stream  # noqa: E402
from semcodec.mllm import llava_input_ids, llava_inputs_embeds, projector  # noqa: E402

IMAGE_TOKEN = 30


@pytest.fixture(scope="module")
def tokens():
    cal = Calibration.load(find_calibration("tiny"))
    stream = semantic_only_stream(cal.random_tokens(seed=3), cal, 64, 48, rate=40, keep=120)
    return decode_tokens(stream)


@pytest.fixture(scope="module")
def model():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=192, intermediate_size=256, num_hidden_layers=2, num_attention_heads=3,
                              image_size=224, patch_size=16)
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                         vision_feature_layer=-2, vision_feature_select_strategy="default")
    return LlavaForConditionalGeneration(config).eval()


def ids_with_image(n: int) -> torch.Tensor:
    return torch.tensor([[1, 5, 6] + [IMAGE_TOKEN] * n + [7, 8]])


def test_inputs_embeds_and_generation(model, tokens):
    n = tokens.tokens.shape[0]
    ids = ids_with_image(n)
    embeds = llava_inputs_embeds(model, tokens, ids)
    assert embeds.shape == (1, n + 5, 32)
    text = model.get_input_embeddings()(torch.tensor([[1, 5, 6]]))
    assert torch.allclose(embeds[:, :3], text)
    with torch.no_grad():
        expected = projector(model)(tokens.tokens)
    assert torch.allclose(embeds[0, 3:3 + n], expected, atol=1e-6)
    with torch.no_grad():
        out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(ids.shape, dtype=torch.long),
                             max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape[-1] >= 1 and out.dtype == torch.long


def test_two_images_in_a_batch(model, tokens):
    n = tokens.tokens.shape[0]
    ids = torch.cat([ids_with_image(n), ids_with_image(n)])
    embeds = llava_inputs_embeds(model, [tokens, tokens], ids)
    assert embeds.shape == (2, n + 5, 32) and torch.allclose(embeds[0], embeds[1])


def test_mismatches(model, tokens):
    n = tokens.tokens.shape[0]
    with pytest.raises(InvalidInputError, match="image tokens"):
        llava_inputs_embeds(model, tokens, ids_with_image(n - 1))
    other = type(tokens)(**{**tokens.__dict__, "layer": -1})
    with pytest.raises(ModelMismatchError, match="layer"):
        llava_inputs_embeds(model, other, ids_with_image(n))
    model.config.vision_feature_select_strategy = "full"
    try:
        with pytest.raises(ModelMismatchError, match="CLS"):
            llava_inputs_embeds(model, tokens, ids_with_image(n))
    finally:
        model.config.vision_feature_select_strategy = "default"


def test_prompt_ids(model, tokens):
    class CharTokenizer:  # stands in for a real tokenizer: one id per character
        bos_token_id = 1

        def __call__(self, text, add_special_tokens=False):
            return type("Enc", (), {"input_ids": [2 + ord(c) % 20 for c in text]})()

    n = tokens.tokens.shape[0]
    ids = llava_input_ids(CharTokenizer(), "Q: <image>\nA:", model.config, tokens)
    assert ids.shape == (1, 1 + 3 + n + 3) and ids[0, 0] == 1
    assert int((ids == IMAGE_TOKEN).sum()) == n
    assert llava_inputs_embeds(model, tokens, ids).shape == (1, ids.shape[1], 32)
    with pytest.raises(InvalidInputError):
        llava_input_ids(CharTokenizer(), "no image", model.config, tokens)
