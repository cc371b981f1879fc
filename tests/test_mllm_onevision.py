"""LLaVA-OneVision hand-off, end to end with a tiny random OneVision and SigLIP tower built here (no download).

The tiny model is the one of ``test_tower_equivalence.py`` (a 4-block SigLIP cut to 3 blocks, 56 px, 4×4 tokens).
Proof of the layout: for a square image, whose one-view preprocessing (pad-square) and semcodec's squash agree,
the ``inputs_embeds`` built from semcodec's tower tokens equal those LLaVA-OneVision builds itself from the
processor's pixels for an image of a multi-image prompt, and so do the logits.
"""

from __future__ import annotations

import pytest
import torch

import semcodec._compat  # noqa: F401  (before transformers, which imports torchvision)

transformers = pytest.importorskip("transformers", reason="the optional extra 'mllm' (transformers) is not installed")

from test_tower_equivalence import (SIGLIP_CFG, onevision_processor, photo, siglip_spec,  # noqa: E402
                                    tiny_onevision)

from semcodec.errors import InvalidInputError, ModelMismatchError  # noqa: E402
from semcodec.layers.semantic import Tokens, calibrate, decode_tokens, semantic_only_stream  # noqa: E402
from semcodec.mllm import (onevision_input_ids, onevision_inputs_embeds, onevision_num_image_tokens,  # noqa: E402
                           projector)
from semcodec.models.semantic import load_tower  # noqa: E402

IMAGE_TOKEN, VIDEO_TOKEN = 60, 61
TOWER_LAYERS = SIGLIP_CFG["vision_cfg"]["layers"]  # the spec's full tower; the model keeps one block less


@pytest.fixture(scope="module")
def model():
    return tiny_onevision(5)


@pytest.fixture(scope="module")
def tower(model, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("ov") / "llava-onevision.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return load_tower(siglip_spec(), weights=path)


@pytest.fixture(scope="module")
def processor():
    """``LlavaOnevisionProcessor`` with the tiny image processor and a word-level tokenizer built here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlavaOnevisionProcessor, PreTrainedTokenizerFast
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]"] + [chr(97 + i) for i in range(26)])}
    vocab.update({"<image>": IMAGE_TOKEN, "<video>": VIDEO_TOKEN})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"})
    return LlavaOnevisionProcessor(image_processor=onevision_processor(), tokenizer=tokenizer,
                                   video_processor=LlavaOnevisionVideoProcessor(), num_image_tokens=16,
                                   vision_feature_select_strategy="full")


def tower_tokens(tower, image) -> Tokens:
    """Uncoded tokens of the tower, as decode_tokens would return them."""
    t = tower.tokens([image])[0]
    return Tokens(tokens=t, positions=torch.arange(t.shape[0]), grid=tower.spec.grid, model=tower.spec.name,
                  preprocessing=tower.spec.preprocessing_id, layer=tower.spec.layer, image_size=image.size)


@pytest.fixture(scope="module")
def decoded(tower, tmp_path_factory):
    """Tokens decoded from a real SEM0 stream (calibrated on 12 images of the tiny tower)."""
    tmp = tmp_path_factory.mktemp("ovcal")
    paths = []
    for i in range(12):
        paths.append(tmp / f"im{i}.png")
        photo(40 + 9 * i, 90 - 4 * i, seed=200 + i).save(paths[-1])
    cal = calibrate(tower, paths)
    image = photo(90, 40, seed=9)
    stream = semantic_only_stream(tower.tokens([image])[0].numpy(), cal, 90, 40, rate=100)
    return decode_tokens(stream, cal)


def language_model_input(model, **inputs) -> torch.Tensor:
    """The ``inputs_embeds`` LLaVA-OneVision hands its language model, and the logits."""
    seen = {}

    def grab(module, args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"]

    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(**inputs).logits
    finally:
        hook.remove()
    return seen["embeds"], logits


def test_ids_and_counts_match_the_processor(model, tower, processor):
    a, b = photo(56, 56, seed=1), photo(70, 70, seed=2)
    prompt = "a <image> b <image> c"
    theirs = processor(images=[[a, b]], text=[prompt], return_tensors="pt")["input_ids"]
    ta, tb = tower_tokens(tower, a), tower_tokens(tower, b)
    assert onevision_num_image_tokens(ta) == 16 + 1
    ours = onevision_input_ids(processor.tokenizer, prompt, model.config, [ta, tb])
    assert torch.equal(ours, theirs)
    assert int((ours == IMAGE_TOKEN).sum()) == 2 * 17
    # A lone image is expanded by the processor into its anyres views, which layer 0 does not hold.
    lone = processor(images=[photo(90, 40, seed=3)], text=["a <image>"], return_tensors="pt")["input_ids"]
    assert int((lone == IMAGE_TOKEN).sum()) > 17


def test_embeds_and_logits_equal_the_models_own(model, tower, processor):
    a, b = photo(56, 56, seed=1), photo(80, 80, seed=4)  # square: OneVision's one-view pad-square = squash
    prompt = "x <image> y <image> z"
    inputs = processor(images=[[a, b]], text=[prompt], return_tensors="pt")
    theirs, logits = language_model_input(model, **inputs)
    ours = onevision_inputs_embeds(model, [tower_tokens(tower, a), tower_tokens(tower, b)], inputs["input_ids"],
                                   tower_layers=TOWER_LAYERS)
    assert ours.shape == theirs.shape == (1, inputs["input_ids"].shape[1], 32)
    assert (ours - theirs).abs().max() < 1e-4
    with torch.no_grad():
        ours_logits = model(inputs_embeds=ours, attention_mask=inputs["attention_mask"]).logits
    assert (ours_logits - logits).abs().max() < 1e-4
    # The newline row is the model's image_newline; the rows before it are the projected tokens.
    first = torch.nonzero(inputs["input_ids"][0] == IMAGE_TOKEN)[:, 0]
    assert torch.allclose(ours[0, first[16]], model.model.image_newline, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(ours[0, first[0]], projector(model)(tower_tokens(tower, a).tokens)[0], atol=1e-6)


def test_decoded_tokens_generate(model, processor, decoded):
    assert decoded.model == "siglip-test" and decoded.tokens.shape == (16, 64)
    ids = onevision_input_ids(processor.tokenizer, "q <image> what", model.config, decoded)
    assert ids.shape == (1, 1 + 17 + 1)
    embeds = onevision_inputs_embeds(model, decoded, ids, tower_layers=TOWER_LAYERS)
    with torch.no_grad():
        out = model.generate(inputs_embeds=embeds, attention_mask=torch.ones(ids.shape, dtype=torch.long),
                             max_new_tokens=4, do_sample=False, pad_token_id=1)
    assert out.dtype == torch.long and 1 <= out.shape[-1] <= 4


def test_onevision_mismatches(model, processor, decoded):
    ids = onevision_input_ids(processor.tokenizer, "q <image>", model.config, decoded)
    with pytest.raises(InvalidInputError, match="image tokens"):
        onevision_inputs_embeds(model, decoded, ids[:, :-1], tower_layers=TOWER_LAYERS)
    with pytest.raises(ModelMismatchError, match="block 2 .* block 1"):
        onevision_inputs_embeds(model, Tokens(**{**decoded.__dict__, "layer": -3}), ids, tower_layers=TOWER_LAYERS)
    with pytest.raises(ModelMismatchError, match="tower_layers"):
        onevision_inputs_embeds(model, decoded, ids)  # siglip-test is no registered tower
    with pytest.raises(ModelMismatchError, match="squash"):
        onevision_inputs_embeds(model, Tokens(**{**decoded.__dict__, "preprocessing": "squash-224-inception"}),
                                ids, tower_layers=TOWER_LAYERS)
    model.config.vision_feature_select_strategy = "default"
    try:
        with pytest.raises(ModelMismatchError, match="full"):
            onevision_inputs_embeds(model, decoded, ids, tower_layers=TOWER_LAYERS)
    finally:
        model.config.vision_feature_select_strategy = "full"
    with pytest.raises(InvalidInputError, match="placeholders"):
        onevision_input_ids(processor.tokenizer, "q <image> <image>", model.config, [decoded] * 3)
