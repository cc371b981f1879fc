"""The ``qwen2.5-vl-7b`` tower family: semcodec's tokens equal what Qwen2.5-VL's language model consumes
(``Qwen2_5_VLModel.get_image_features(...).pooler_output``) for the same weights and the same image through
Qwen's own image processor; a tiny random Qwen2.5-VL built here (no download)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

import semcodec._compat  # noqa: F401  (before transformers, which may import torchvision)
from semcodec.errors import InvalidInputError, ModelError, ModelMismatchError, ModelNotAvailableError
from semcodec.models import semantic as sem
from semcodec.models.qwen_vl import QWEN25_VL_7B, qwen_grid, smart_resize
from semcodec.models.semantic import load_tower, semantic_spec

transformers = pytest.importorskip("transformers", reason="the optional extra 'mllm' (transformers) is not installed")

ATOL = 2e-5
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 30
VISION_CFG = {"depth": 4, "hidden_size": 64, "hidden_act": "silu", "intermediate_size": 96, "num_heads": 4,
              "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
              "tokens_per_second": 2, "window_size": 56, "out_hidden_size": 32, "fullatt_block_indexes": [1, 3]}
QWEN_TEST = {"family": "qwen2_5_vl", "hf_repo": "test/qwen-test", "vision_cfg": VISION_CFG,
             "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
SIZES = [(100, 80), (90, 200), (300, 200), (40, 30)]  # the last two: above max_pixels, below min_pixels


def photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)


def qwen_spec():
    return sem._make_qwen_spec("qwen-test", "Qwen-test", "random", QWEN_TEST, "test tower")


def tiny_qwen_config():
    from transformers import Qwen2_5_VLConfig

    text = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]}}
    return Qwen2_5_VLConfig(vision_config=VISION_CFG, text_config=text, image_token_id=60, video_token_id=61,
                            vision_start_token_id=62, vision_end_token_id=63)


@pytest.fixture(scope="module")
def qwen():
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_config()).eval()
    for p in model.parameters():  # HF's init leaves biases and norms trivial: randomize everything
        p.data.normal_(0, 0.2 if p.ndim > 1 else 0.5)
    return model


@pytest.fixture(scope="module")
def qwen_file(qwen, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("qwen") / "model.safetensors"
    save_file({k: v.contiguous() for k, v in qwen.state_dict().items()}, str(path))
    return path


def qwen_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)


def hf_tokens(model, image):
    inputs = qwen_processor()(images=[image], return_tensors="pt")
    with torch.no_grad():
        out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    return out.pooler_output[0], inputs


def test_7b_registry_entry():
    s = semantic_spec("qwen2.5-vl-7b")
    assert s.variable_grid and (s.grid, s.image_size, s.layer, s.token_dim) == ((0, 0), 0, -1, 3584)
    assert s.preprocessing_id == "smart-resize-28-3136-12845056-openai" and s.config == QWEN25_VL_7B
    assert s.mean == sem.OPENAI_MEAN and s.num_layers == 32
    with pytest.raises(InvalidInputError, match="merger"):
        semantic_spec("qwen2.5-vl-7b.l-2")
    # Qwen's processor defaults are the 7B's preprocessor_config.json values except max_pixels.
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    for h, w in [(512, 768), (1080, 1920), (20, 30), (5000, 4000), (3, 500)]:
        assert smart_resize(h, w, 28, 3136, 12845056) == hf_smart_resize(h, w, 28, 3136, 12845056)
    assert qwen_grid(QWEN25_VL_7B, 768, 512)[1] == (18, 27)


@pytest.mark.parametrize("size", SIZES)
def test_qwen_tokens_equal_transformers(qwen, qwen_file, size):
    tower = load_tower(qwen_spec(), weights=qwen_file)
    image = photo(*size, seed=size[0])
    theirs, inputs = hf_tokens(qwen, image)
    pixels, grid_thw = tower.preprocess(image)
    assert torch.equal(grid_thw, inputs["image_grid_thw"])
    assert (pixels - inputs["pixel_values"]).abs().max() < 1e-5
    ours = tower.tokens([image])[0]
    gh, gw = tower.grid(*size)
    assert (gh * 2, gw * 2) == tuple(grid_thw[0, 1:].tolist())
    assert ours.shape == theirs.shape == (gh * gw, 32)
    assert (ours - theirs).abs().max() < ATOL
    in_limits = MIN_PIXELS <= size[0] * size[1] <= MAX_PIXELS
    assert (tower.note(*size) is None) == in_limits
    if not in_limits:
        assert "resized" in tower.note(*size) and "\n" not in tower.note(*size)


def test_qwen_comparison_can_fail(qwen, qwen_file):
    tower = load_tower(qwen_spec(), weights=qwen_file)
    image = photo(100, 80, seed=3)
    theirs, _ = hf_tokens(qwen, image)
    with torch.no_grad():
        tower.visual.blocks[2].mlp.down_proj.bias.add_(0.05)
    assert (tower.tokens([image])[0] - theirs).abs().max() > 1e-3


def test_qwen_sharded_checkpoint_and_mismatch(qwen, tmp_path):
    """Original Qwen naming (``visual.*``) in a two-shard checkpoint; the language model's shard is not read."""
    from safetensors.torch import save_file

    sd = {k.replace("model.visual.", "visual.", 1): v.contiguous() for k, v in qwen.state_dict().items()}
    visual = {k: v for k, v in sd.items() if k.startswith("visual.")}
    save_file(visual, str(tmp_path / "model-00001-of-00002.safetensors"))
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"not read")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in visual}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    tower = load_tower(qwen_spec(), weights=index)
    image = photo(90, 200, seed=4)
    assert (tower.tokens([image])[0] - hf_tokens(qwen, image)[0]).abs().max() < ATOL
    del visual["visual.merger.mlp.2.weight"]
    save_file(visual, str(tmp_path / "model-00001-of-00002.safetensors"))
    with pytest.raises(ModelMismatchError, match="missing merger.mlp.2.weight"):
        load_tower(qwen_spec(), weights=tmp_path / "model-00001-of-00002.safetensors")
    with pytest.raises(ModelError, match="cannot read"):
        load_tower(qwen_spec(), weights=index)  # the index names a tensor its shard lacks
    save_file({k: v for k, v in sd.items() if k.startswith("visual.")},
              str(tmp_path / "model-00001-of-00002.safetensors"))
    with pytest.raises(ModelMismatchError, match="does not hold the vision encoder of Qwen2.5-VL-7B"):
        load_tower("qwen2.5-vl-7b", weights=index)  # the 7B's shapes


def test_qwen_weights_missing_or_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as e:
        load_tower("qwen2.5-vl-7b")
    assert time.monotonic() - t0 < 3
    msg = str(e.value)
    assert "\n" not in msg and "qwen2.5-vl-7b" in msg and "--semantic-weights" in msg
    repo, names = sem._hub_files(semantic_spec("qwen2.5-vl-7b"))
    assert (repo, names) == ("Qwen/Qwen2.5-VL-7B-Instruct", ["model.safetensors.index.json"])
    snap = tmp_path / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    weight_map = {"visual.patch_embed.proj.weight": "model-00001-of-00005.safetensors",
                  "model.embed_tokens.weight": "model-00002-of-00005.safetensors"}
    (snap / names[0]).write_text(json.dumps({"weight_map": weight_map}))
    assert sem.weights_path("qwen2.5-vl-7b") is None  # the index alone: the vision shard is missing
    (snap / "model-00001-of-00005.safetensors").write_bytes(b"x")
    assert sem.weights_path("qwen2.5-vl-7b") == snap / names[0]


# --------------------------------------------------------------------------- variable-grid coding (SEM0 version 2)


@pytest.fixture(scope="module")
def qwen_tower(qwen_file):
    return load_tower(qwen_spec(), weights=qwen_file)


@pytest.fixture(scope="module")
def qwen_cal(qwen_tower, tmp_path_factory):
    from semcodec.layers.semantic import Calibration, calibrate

    tmp = tmp_path_factory.mktemp("qwencal")
    paths = []
    for i in range(10):
        paths.append(tmp / f"im{i}.png")
        photo(60 + 17 * i, 150 - 9 * i, seed=300 + i).save(paths[-1])
    cal = calibrate(qwen_tower, paths)
    cal.save(tmp / "calibration-qwen-test.safetensors")
    return Calibration.load(tmp / "calibration-qwen-test.safetensors")


def test_variable_grid_calibration(qwen_cal):
    assert qwen_cal.variable_grid and qwen_cal.grid == (0, 0) and qwen_cal.input_size == 0
    assert qwen_cal.position_mean.shape == (1, 32) and qwen_cal.klt.shape == (32, 32)
    assert qwen_cal.preprocessing == "smart-resize" and qwen_cal.preprocessing_id.startswith("smart-resize-28-")
    s = qwen_cal.stats
    assert s["num_images"] == 10 and s["tokens_per_image_min"] < s["tokens_per_image_max"]
    assert "a grid per image" in qwen_cal.describe()


@pytest.mark.parametrize("size", [(100, 80), (90, 200), (300, 200)])
def test_variable_grid_streams_round_trip(qwen_tower, qwen_cal, size):
    from semcodec.bitstream.container import SEMANTIC_LAYER, read_container_prefix
    from semcodec.layers.semantic import decode_tokens, semantic_only_stream

    image = photo(*size, seed=size[1])
    t = qwen_tower.tokens([image])[0]
    grid = qwen_tower.grid(*size)
    stream = semantic_only_stream(t, qwen_cal, *size, rate=130, grid=grid)
    payload = bytes(read_container_prefix(stream, until=SEMANTIC_LAYER).layer(SEMANTIC_LAYER))
    assert payload[0] == 2 and int.from_bytes(payload[5:7], "little") == grid[0] \
        and int.from_bytes(payload[7:9], "little") == grid[1]
    decoded = decode_tokens(stream, qwen_cal)
    assert decoded.grid == grid and decoded.tokens.shape == t.shape
    err = float(((decoded.tokens - t) ** 2).mean() / (t ** 2).mean())
    assert err < 0.05
    # Fewer tokens kept: the others are predicted on the image's own grid.
    few = decode_tokens(semantic_only_stream(t, qwen_cal, *size, rate=130, grid=grid, keep=t.shape[0] // 2),
                        qwen_cal)
    assert few.positions.numel() == t.shape[0] // 2 and few.tokens.shape == t.shape
    budget = semantic_only_stream(t, qwen_cal, *size, max_bytes=300, grid=grid)
    assert len(budget) <= 300 and decode_tokens(budget, qwen_cal).grid == grid


def test_variable_grid_errors(qwen_tower, qwen_cal):
    from semcodec.errors import CorruptStreamError, SemcodecError, TruncatedStreamError
    from semcodec.layers.semantic import coder_for

    coder = coder_for(qwen_cal)
    t = qwen_tower.tokens([photo(100, 80, seed=1)])[0]
    grid = qwen_tower.grid(100, 80)
    with pytest.raises(InvalidInputError, match="grid"):
        coder.encode(t, 100)
    with pytest.raises(InvalidInputError, match="shape"):
        coder.encode(t, 100, grid=(grid[0] + 1, grid[1]))
    payload = coder.encode(t, 100, keep=t.shape[0] - 3, grid=grid)
    assert coder.decode(payload).grid == grid
    with pytest.raises(TruncatedStreamError, match="grid"):
        coder.decode(payload[:7])
    with pytest.raises(CorruptStreamError, match="grid"):
        coder.decode(payload[:5] + (200).to_bytes(2, "little") * 2 + payload[9:])  # 40000 tokens
    with pytest.raises(CorruptStreamError, match="fixed-grid payload"):
        coder.decode(b"\x01" + payload[1:])
    rng = np.random.default_rng(0)
    for _ in range(100):
        bad = bytearray(payload)
        for i in rng.integers(0, len(bad), size=rng.integers(1, 4)):
            bad[i] = int(rng.integers(0, 256))
        try:
            d = coder.decode(bytes(bad))
            assert torch.isfinite(d.full).all() and d.full.shape[0] == d.grid[0] * d.grid[1]
        except SemcodecError:
            pass


# --------------------------------------------------------------------------- hand-off to Qwen2.5-VL


@pytest.fixture(scope="module")
def qwen_processor_full():
    """``Qwen2_5_VLProcessor`` with the tiny image processor and a word-level tokenizer built here."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]"] + [chr(97 + i) for i in range(26)])}
    vocab.update({"<|image_pad|>": 60, "<|video_pad|>": 61, "<|vision_start|>": 62, "<|vision_end|>": 63})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    special = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        additional_special_tokens=special)
    return Qwen2_5_VLProcessor(image_processor=qwen_processor(), tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor())


def tokens_of(tower, image):
    from semcodec.layers.semantic import Tokens

    t = tower.tokens([image])[0]
    return Tokens(tokens=t, positions=torch.arange(t.shape[0]), grid=tower.grid(*image.size), model=tower.spec.name,
                  preprocessing=tower.spec.preprocessing_id, layer=tower.spec.layer, image_size=image.size)


PROMPT = "a <|vision_start|><|image_pad|><|vision_end|> b c <|vision_start|><|image_pad|><|vision_end|> d"


def test_qwen_handoff_equals_the_models_own(qwen, qwen_tower, qwen_processor_full):
    from semcodec.mllm import qwen_input_ids, qwen_inputs

    images = [photo(100, 80, seed=5), photo(300, 200, seed=6)]  # different grids, one resized within the limits
    theirs = qwen_processor_full(images=images, text=[PROMPT], return_tensors="pt")
    items = [tokens_of(qwen_tower, im) for im in images]
    ids = qwen_input_ids(qwen_processor_full.tokenizer, PROMPT, qwen.config, items)
    assert torch.equal(ids, theirs["input_ids"])
    inputs = qwen_inputs(qwen, items, ids)
    assert torch.equal(inputs["image_grid_thw"], theirs["image_grid_thw"])
    assert torch.equal(inputs["mm_token_type_ids"], theirs["mm_token_type_ids"].to(torch.int32))
    with torch.no_grad():
        ref = qwen(**theirs).logits
        got = qwen(**inputs).logits
    assert ref.shape == got.shape and (got - ref).abs().max() < 1e-4
    with torch.no_grad():  # greedy generation continues the same way (3D positions carried over by rope_deltas)
        gen_ref = qwen.generate(**theirs, max_new_tokens=5, do_sample=False, pad_token_id=1)
        gen = qwen.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=1)
    assert torch.equal(gen, gen_ref) and gen.shape[1] > ids.shape[1]
    # The 3D positions matter: without image_grid_thw the model falls back to 1D positions.
    with torch.no_grad():
        flat = qwen(inputs_embeds=inputs["inputs_embeds"], attention_mask=inputs["attention_mask"]).logits
    assert (flat - ref).abs().max() > 1e-3


def test_qwen_decoded_tokens_generate(qwen, qwen_tower, qwen_cal, qwen_processor_full):
    from semcodec.errors import ModelMismatchError
    from semcodec.layers.semantic import decode_tokens, semantic_only_stream
    from semcodec.mllm import qwen_input_ids, qwen_inputs

    image = photo(90, 200, seed=8)
    grid = qwen_tower.grid(90, 200)
    stream = semantic_only_stream(qwen_tower.tokens([image])[0], qwen_cal, 90, 200, rate=110, grid=grid)
    decoded = decode_tokens(stream, qwen_cal)
    prompt = "q <|vision_start|><|image_pad|><|vision_end|> what"
    ids = qwen_input_ids(qwen_processor_full.tokenizer, prompt, qwen.config, decoded)
    expected = qwen_processor_full(images=[image], text=[prompt], return_tensors="pt")["input_ids"]
    assert torch.equal(ids, expected) and int((ids == 60).sum()) == grid[0] * grid[1]
    with torch.no_grad():
        out = qwen.generate(**qwen_inputs(qwen, decoded, ids), max_new_tokens=4, do_sample=False, pad_token_id=1)
    assert out.dtype == torch.long and out.shape[0] == 1 and out.shape[1] >= 1
    with pytest.raises(InvalidInputError, match="image tokens"):
        qwen_inputs(qwen, decoded, ids[:, :-3])
    from semcodec.layers.semantic import Tokens

    with pytest.raises(ModelMismatchError, match="width"):
        qwen_inputs(qwen, Tokens(**{**decoded.__dict__, "tokens": decoded.tokens[:, :16]}), ids)
    with pytest.raises(ModelMismatchError, match="smart-resize"):
        qwen_inputs(qwen, Tokens(**{**decoded.__dict__, "preprocessing": "squash-56-inception"}), ids)
