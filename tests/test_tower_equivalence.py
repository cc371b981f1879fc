"""semcodec's tower tokens equal what the MLLM feeds its projector (Hugging Face ``transformers``), for the same
weights and the same image through that MLLM's own processor; small random configs built here, no download.

* SigLIP / LLaVA-OneVision: the input of ``multi_modal_projector`` for the base view, captured inside
  ``LlavaOnevisionModel.get_image_features`` (vision tower cut to ``L - 1`` layers, ``vision_feature_layer=-1``,
  ``"full"``), against ``load_tower`` of a ``squash`` SigLIP spec given the OneVision checkpoint itself.
* CLIP / LLaVA-1.5: ``CLIPVisionModel(...).hidden_states[-2][:, 1:]`` after ``LlavaImageProcessor(do_pad=True)``,
  against open_clip's ``VisionTransformer`` carrying the same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import semcodec._compat  # noqa: F401  (before transformers, which may import torchvision)
from semcodec.errors import ModelMismatchError
from semcodec.models import semantic as sem
from semcodec.models.semantic import SemanticTower, load_tower

transformers = pytest.importorskip("transformers", reason="the optional extra 'mllm' (transformers) is not installed")

#: float32 rounding through a few blocks of width 64 (measured differences are ~1e-6).
ATOL = 2e-5


def photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random RGB image (a photo-like input, not flat noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BICUBIC)


# --------------------------------------------------------------------------- SigLIP / LLaVA-OneVision

SIGLIP_CFG = {"family": "siglip", "vision_cfg": {"image_size": 56, "patch_size": 14, "width": 64, "layers": 4,
                                                 "heads": 4, "mlp_dim": 96, "ln_eps": 1e-6}}


def siglip_spec(layer: int = -2):
    return sem._make_spec("siglip-test", "ViT-test-SigLIP", "random", SIGLIP_CFG, layer, sem.INCEPTION_MEAN,
                          sem.INCEPTION_STD, "squash", "test tower")


def tiny_onevision(seed: int):
    """A tiny LLaVA-OneVision whose SigLIP tower keeps 3 of the spec's 4 layers (as the real one keeps 26 of 27),
    every parameter random (``seed``); image token 60, video token 61."""
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, Qwen2Config,
                              SiglipVisionConfig)

    torch.manual_seed(seed)
    vc = SIGLIP_CFG["vision_cfg"]
    vision = SiglipVisionConfig(hidden_size=vc["width"], intermediate_size=vc["mlp_dim"], num_hidden_layers=3,
                                num_attention_heads=vc["heads"], image_size=vc["image_size"],
                                patch_size=vc["patch_size"], vision_use_head=False)
    text = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=60, video_token_index=61,
                                  image_grid_pinpoints=[[56, 56], [56, 112], [112, 56], [112, 112]])
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    for p in model.parameters():  # HF's init leaves biases, norms and image_newline trivial: randomize everything
        p.data.normal_(0, 0.2 if p.ndim > 1 else 0.5)
    return model


@pytest.fixture(scope="module")
def onevision():
    return tiny_onevision(0)


def onevision_processor():
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    # The settings of llava-hf/llava-onevision-*-hf's preprocessor_config.json (google/siglip's), at 56 px.
    return LlavaOnevisionImageProcessorPil(size={"height": 56, "width": 56}, image_mean=[0.5] * 3,
                                           image_std=[0.5] * 3, resample=3,
                                           image_grid_pinpoints=[[56, 56], [56, 112], [112, 56], [112, 112]])


def onevision_projector_input(model, image: Image.Image) -> torch.Tensor:
    """What LLaVA-OneVision feeds its projector for the base view of one image: (N, D)."""
    inputs = onevision_processor()(images=[image], return_tensors="pt")
    seen = []
    hook = model.model.multi_modal_projector.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    finally:
        hook.remove()
    assert inputs["pixel_values"].shape[1] > 1  # anyres: the base view plus tiles
    return seen[0][0]  # row 0 = the base view (the processor puts it first)


@pytest.fixture(scope="module")
def onevision_file(onevision, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("ov") / "llava-onevision.safetensors"
    save_file({k: v.contiguous() for k, v in onevision.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize("size", [(56, 56), (90, 40), (33, 120)])
def test_siglip_tokens_equal_llava_onevision(onevision, onevision_file, size):
    assert onevision.config.vision_feature_layer == -1 and onevision.config.vision_feature_select_strategy == "full"
    tower = load_tower(siglip_spec(), weights=onevision_file)
    image = photo(*size, seed=size[0])
    ours = tower.tokens([image])[0]
    theirs = onevision_projector_input(onevision, image)
    assert ours.shape == theirs.shape == (16, 64)
    assert (ours - theirs).abs().max() < ATOL
    # The processor's base view and semcodec's preprocessing are the same tensor.
    pixel = onevision_processor()(images=[image], return_tensors="pt")["pixel_values"][0, 0]
    assert (tower.preprocess(image) - pixel).abs().max() < 1e-6


def test_siglip_layer_and_activation_matter(onevision, onevision_file):
    """The comparison can fail: another layer, or timm's exact GELU, gives other tokens."""
    image = photo(70, 50, seed=1)
    theirs = onevision_projector_input(onevision, image)
    last = load_tower(siglip_spec(layer=-3), weights=onevision_file).tokens([image])[0]
    assert (last - theirs).abs().max() > 1e-2
    tower = load_tower(siglip_spec(), weights=onevision_file)
    exact = SemanticTower(tower.spec, tower.visual)
    for block in exact.visual.trunk.blocks:
        block.mlp.forward = lambda x, m=block.mlp: m.fc2(torch.nn.functional.gelu(m.fc1(x)))
    assert (exact.tokens([image])[0] - theirs).abs().max() > 1e-4


def test_siglip_open_clip_naming_and_mismatch(onevision_file, tmp_path):
    """The same tower from open_clip's naming (``visual.trunk.…``, q/k/v fused), and refused when it does not fit."""
    from safetensors.torch import save_file

    tower = load_tower(siglip_spec(), weights=onevision_file)
    sd = {"visual." + k: v.contiguous() for k, v in tower.visual.state_dict().items()}
    sd["visual.trunk.norm.weight"] = torch.ones(64)  # unused parts of the tower are accepted
    path = tmp_path / "open_clip_model.safetensors"
    save_file(sd, str(path))
    x = torch.randn(2, 3, 56, 56)
    assert torch.equal(load_tower(siglip_spec(), weights=path).tokens_from_tensor(x), tower.tokens_from_tensor(x))
    del sd["visual.trunk.blocks.1.attn.qkv.weight"]
    save_file(sd, str(path))
    with pytest.raises(ModelMismatchError, match="missing trunk.blocks.1.attn.qkv.weight"):
        load_tower(siglip_spec(), weights=path)
    wide = {"visual.trunk.pos_embed": torch.zeros(1, 16, 32)}
    save_file(wide, str(path))
    with pytest.raises(ModelMismatchError):
        load_tower(siglip_spec(), weights=path)


def test_siglip_matches_timm_trunk_with_tanh_gelu():
    """semcodec's trunk is timm's SigLIP ViT (open_clip's trunk: same parameter names) with the tanh GELU."""
    timm = pytest.importorskip("timm")
    vc = SIGLIP_CFG["vision_cfg"]
    torch.manual_seed(1)
    trunk = timm.models.vision_transformer.VisionTransformer(
        img_size=56, patch_size=14, embed_dim=64, depth=4, num_heads=4, mlp_ratio=vc["mlp_dim"] / 64,
        class_token=False, global_pool="map", act_layer="gelu_tanh", num_classes=0).eval()
    from semcodec.models.siglip import SiglipTrunk

    ours = SiglipTrunk(vc, depth=3)
    sd = {"trunk." + k: v for k, v in trunk.state_dict().items()}
    ours.load_state_dict({k: sd[k] for k in ours.state_dict()}, strict=True)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        ref = trunk.forward_intermediates(x, indices=[2], intermediates_only=True, output_fmt="NLC")[0]
        got = ours.forward_intermediates(x, indices=[2])["image_intermediates"][0]
    assert (got - ref).abs().max() < ATOL


# --------------------------------------------------------------------------- CLIP / LLaVA-1.5

CLIP_CFG = {"embed_dim": 32, "quick_gelu": True,
            "vision_cfg": {"image_size": 56, "layers": 3, "width": 64, "head_width": 16, "patch_size": 14}}


def open_clip_to_hf_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` weights in ``CLIPVisionModel`` naming (written out here, independently)."""
    out = {"vision_model.embeddings.class_embedding": sd["class_embedding"],
           "vision_model.embeddings.patch_embedding.weight": sd["conv1.weight"],
           "vision_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "vision_model.pre_layrnorm.weight": sd["ln_pre.weight"], "vision_model.pre_layrnorm.bias": sd["ln_pre.bias"],
           "vision_model.post_layernorm.weight": sd["ln_post.weight"],
           "vision_model.post_layernorm.bias": sd["ln_post.bias"]}
    for i in range(CLIP_CFG["vision_cfg"]["layers"]):
        a, b = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = sd[a + f"attn.in_proj_{leaf}"].chunk(3)
            names = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v,
                     "self_attn.out_proj": sd[a + f"attn.out_proj.{leaf}"], "layer_norm1": sd[a + f"ln_1.{leaf}"],
                     "layer_norm2": sd[a + f"ln_2.{leaf}"], "mlp.fc1": sd[a + f"mlp.c_fc.{leaf}"],
                     "mlp.fc2": sd[a + f"mlp.c_proj.{leaf}"]}
            out.update({f"{b}{name}.{leaf}": t for name, t in names.items()})
    return out


@pytest.mark.parametrize("size", [(56, 56), (90, 40), (33, 120)])
def test_clip_tokens_equal_llava_1_5(size):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    spec = sem._make_spec("clip-test", "ViT-test", "random", CLIP_CFG, -2, sem.OPENAI_MEAN, sem.OPENAI_STD,
                          "pad-square", "test tower")
    torch.manual_seed(2)
    visual = sem._build_visual(spec)
    for p in visual.parameters():
        p.data.normal_(0, 0.2 if p.ndim > 1 else 0.5)
    tower = SemanticTower(spec, visual)
    hf = CLIPVisionModel(CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                          num_attention_heads=4, image_size=56, patch_size=14,
                                          hidden_act="quick_gelu")).eval()
    weights = open_clip_to_hf_clip(visual.state_dict())
    if not any(k.startswith("vision_model.") for k in hf.state_dict()):  # transformers 5 drops the prefix
        weights = {k[len("vision_model."):]: v for k, v in weights.items()}
    missing, unexpected = hf.load_state_dict(weights, strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    # LLaVA-1.5: expand2square with the mean colour, CLIP's resize (short side) and centre crop.
    processor = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    image = photo(*size, seed=size[1])
    pixel = processor(images=[image], return_tensors="pt")["pixel_values"]
    assert (tower.preprocess(image) - pixel[0]).abs().max() < 1e-6
    with torch.no_grad():
        theirs = hf(pixel, output_hidden_states=True).hidden_states[-2][0, 1:]
    ours = tower.tokens([image])[0]
    assert ours.shape == theirs.shape == (16, 64)
    assert (ours - theirs).abs().max() < ATOL
    with torch.no_grad():
        assert (hf(pixel, output_hidden_states=True).hidden_states[-1][0, 1:] - ours).abs().max() > 1e-2


def test_siglip_tower_calibrates_and_codes(onevision_file, tmp_path):
    """A ``squash`` tower goes through calibration, the SEM0 coder and decode_tokens (no padding tokens)."""
    from semcodec.layers.semantic import Calibration, calibrate, decode_tokens, semantic_only_stream

    tower = load_tower(siglip_spec(), weights=onevision_file)
    paths = []
    for i in range(12):
        path = tmp_path / f"im{i}.png"
        photo(40 + 9 * i, 90 - 4 * i, seed=100 + i).save(path)
        paths.append(path)
    cal = calibrate(tower, paths)
    assert (cal.preprocessing, cal.preprocessing_id, cal.grid, cal.token_dim) == ("squash", "squash-56-inception",
                                                                                 (4, 4), 64)
    assert cal.stats["padding_tokens"] == 0
    cal.save(tmp_path / "cal.safetensors")
    cal = Calibration.load(tmp_path / "cal.safetensors")
    image = photo(90, 40, seed=7)
    t = tower.tokens([image])[0]
    stream = semantic_only_stream(t.numpy(), cal, 90, 40, rate=120)
    decoded = decode_tokens(stream, cal)
    assert decoded.model == "siglip-test" and decoded.preprocessing == "squash-56-inception"
    assert decoded.tokens.shape == (16, 64) and list(decoded.positions) == list(range(16))
    err = float(((torch.as_tensor(decoded.tokens) - t) ** 2).mean() / (t ** 2).mean())
    assert err < 0.05
