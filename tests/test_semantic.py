"""Semantic tower registry, tiny tower tokens, weights resolution (offline), calibrate CLI."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch
from PIL import Image

from semcodec.errors import InvalidInputError, ModelMismatchError, ModelNotAvailableError
from semcodec.models import semantic as sem
from semcodec.models.semantic import list_semantic_models, load_tower, semantic_spec


@pytest.fixture(scope="module")
def tiny():
    return load_tower("tiny")


def test_registry_lists_the_towers():
    rows = {r["name"]: r for r in list_semantic_models()}
    assert set(rows) == {"clip-l14-336", "clip-b16", "siglip-so400m-384", "siglip-b16-224", "qwen2.5-vl-7b", "tiny"}
    assert rows["qwen2.5-vl-7b"]["token_shape"] == "Nx3584 (N per image)"
    assert rows["qwen2.5-vl-7b"]["preprocessing"] == "smart-resize-28-3136-12845056-openai"
    assert rows["clip-l14-336"]["token_shape"] == "576x1024 (24x24)"
    assert rows["clip-b16"]["token_shape"] == "196x768 (14x14)"
    assert rows["siglip-so400m-384"]["token_shape"] == "729x1152 (27x27)"
    assert rows["siglip-so400m-384"]["preprocessing"] == "squash-384-inception"
    assert "LLaVA-OneVision" in rows["siglip-so400m-384"]["description"]
    assert rows["siglip-b16-224"]["token_shape"] == "196x768 (14x14)"
    assert rows["tiny"]["token_shape"] == "196x192 (14x14)"
    assert rows["tiny"]["weights_present"] and rows["tiny"]["calibration_present"]
    assert "NOT semantic" in rows["tiny"]["description"]


def test_registry_data_matches_open_clip():
    sem._open_clip()
    from open_clip.factory import get_model_config
    from open_clip.pretrained import get_pretrained_cfg

    for name, r in sem._REGISTERED.items():
        oc = get_model_config(r["arch"])
        pc = get_pretrained_cfg(r["arch"], r["tag"])
        if r["config"].get("family") == "siglip":
            check_siglip_entry(r, oc, pc)
            continue
        assert r["config"]["vision_cfg"] == oc["vision_cfg"] and r["config"]["embed_dim"] == oc["embed_dim"], name
        assert r["config"]["quick_gelu"] == pc.get("quick_gelu", False), name
        assert (r["hf_hub"], r["url"]) == (pc["hf_hub"], pc["url"]), name
        assert tuple(pc.get("mean", sem.OPENAI_MEAN)) == sem.OPENAI_MEAN


def check_siglip_entry(r: dict, oc: dict, pc: dict) -> None:
    """A SigLIP entry: open_clip's timm model, pretrained hub file and preprocessing; the dims are timm's."""
    import timm
    from open_clip.timm_model import TimmModel

    vc = r["config"]["vision_cfg"]
    assert oc["vision_cfg"]["timm_model_name"] == vc["timm_model_name"]
    assert oc["vision_cfg"]["image_size"] == vc["image_size"]
    assert (pc["hf_hub"], pc["resize_mode"], pc["interpolation"]) == (r["hf_hub"], "squash", "bicubic")
    assert tuple(pc["mean"]) == r["mean"] and tuple(pc["std"]) == r["std"]
    assert r["preprocessing"] == "squash"
    with torch.device("meta"):
        trunk = timm.create_model(vc["timm_model_name"], pretrained=False, num_classes=0)
        visual = TimmModel(vc["timm_model_name"], oc["embed_dim"], image_size=vc["image_size"], pool="map",
                           proj="none")
    assert (trunk.patch_embed.patch_size[0], trunk.embed_dim, len(trunk.blocks), trunk.blocks[0].attn.num_heads,
            trunk.blocks[0].mlp.fc1.out_features, trunk.norm.eps) == \
        (vc["patch_size"], vc["width"], vc["layers"], vc["heads"], vc["mlp_dim"], vc["ln_eps"])
    assert not trunk.cls_token and trunk.patch_embed.grid_size == (vc["image_size"] // vc["patch_size"],) * 2
    # semcodec's parameters are open_clip's, by name and shape (the unused head and final norm aside).
    from semcodec.models.siglip import UNUSED_PREFIXES, SiglipTrunk

    ours = {k: tuple(v.shape) for k, v in SiglipTrunk(vc).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in visual.state_dict().items() if not k.startswith(UNUSED_PREFIXES)}
    assert ours == theirs


def test_listing_does_not_import_open_clip():
    import subprocess
    import sys

    code = ("import sys; from semcodec.models.semantic import list_semantic_models; list_semantic_models(); "
            "assert 'open_clip' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_specs_and_names():
    s = semantic_spec("clip-l14-336")
    assert (s.open_clip_arch, s.pretrained, s.layer, s.image_size, s.grid, s.token_dim) == \
        ("ViT-L-14-336", "openai", -2, 336, (24, 24), 1024)
    assert s.preprocessing == "pad-square" and s.preprocessing_id == "pad-square-336-openai"
    assert s.config["quick_gelu"] is True  # openai weights were trained with QuickGELU
    other = semantic_spec("ViT-B-32:laion2b_s34b_b79k")
    assert other.name == "vit-b-32.laion2b_s34b_b79k" and other.preprocessing == "resize-crop"
    assert semantic_spec(other.name) == other
    assert semantic_spec("clip-b16", layer=-1).name == "clip-b16.l-1"
    assert semantic_spec("clip-b16.l-1").layer == -1
    for bad in ("nope", "ViT-B-32:nope", "RN50:openai", "tiny.l-9", "tiny.l0"):
        with pytest.raises(InvalidInputError):
            semantic_spec(bad)


def manual_tokens(tower, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Patch tokens by a hand-written forward: embeddings, blocks up to `layer`, drop CLS."""
    v = tower.visual
    with torch.no_grad():
        h = v._embeds(x)
        blocks = v.transformer.resblocks
        for blk in blocks[: len(blocks) + layer + 1]:
            h = blk(h)
    return h[:, 1:]


def test_tiny_tokens_shape_and_layer(tiny):
    images = [Image.new("RGB", (64, 48), (200, 30, 30)), Image.linear_gradient("L").convert("RGB")]
    t = tiny.tokens(images)
    assert t.shape == (2, 196, 192) and t.dtype == torch.float32
    x = torch.stack([tiny.preprocess(im) for im in images])
    assert torch.allclose(t, manual_tokens(tiny, x, -2), atol=1e-5)
    assert not torch.allclose(t, manual_tokens(tiny, x, -1), atol=1e-3)
    last = load_tower(semantic_spec("tiny", layer=-1))
    assert torch.allclose(last.tokens_from_tensor(x), manual_tokens(tiny, x, -1), atol=1e-5)
    assert torch.equal(tiny.tokens(images), t)  # deterministic


def test_pad_square_preprocessing_and_region(tiny):
    im = Image.new("RGB", (200, 100), (255, 255, 255))
    x = tiny.preprocess(im)
    assert x.shape == (3, 224, 224)
    # Top rows are padding with LLaVA's background int(mean*255): normalized ~0.
    assert x[:, :40].abs().max() < 0.02
    assert x[:, 112].min() > 1.5  # white image in the middle
    assert tiny.region(200, 100) == (0.25, 0.0, 0.5, 1.0)
    assert tiny.region(100, 200) == (0.0, 0.25, 1.0, 0.5)
    assert tiny.region(50, 50) == (0.0, 0.0, 1.0, 1.0)
    crop = load_tower(dataclasses.replace(tiny.spec, preprocessing="resize-crop"), weights=sem.TINY_WEIGHTS)
    assert crop.region(200, 100) == (0.0, 0.0, 1.0, 1.0)
    assert crop.preprocess(im).shape == (3, 224, 224)


def test_offline_failure_is_immediate(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as e:
        load_tower("clip-l14-336")
    assert time.monotonic() - t0 < 3
    msg = str(e.value)
    assert "--semantic-weights" in msg and "--semantic tiny" in msg and "online" in msg
    assert not list_semantic_models()[0]["weights_present"]


@pytest.mark.parametrize("name", ["siglip-so400m-384", "siglip-b16-224"])
def test_siglip_weights_missing_or_cached(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(ModelNotAvailableError) as e:
        load_tower(name)
    assert time.monotonic() - t0 < 3
    msg = str(e.value)
    assert "\n" not in msg and name in msg and "--semantic-weights" in msg and "--semantic tiny" in msg
    repo, names = sem._hub_files(semantic_spec(name))
    assert repo.startswith("timm/ViT-") and "SigLIP" in repo and names[0] == "open_clip_model.safetensors"
    snap = tmp_path / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    (snap / names[0]).write_bytes(b"x")
    assert sem.weights_path(name) == snap / names[0]


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    # No network: the probe goes to a closed local port (connection refused at once).
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    t0 = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match="cannot be reached"):
        load_tower("clip-b16")
    assert time.monotonic() - t0 < 3


def test_cached_weights_are_found(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    spec = semantic_spec("clip-b16")
    repo, names = sem._hub_files(spec)
    assert repo == "timm/vit_base_patch16_clip_224.openai" and names[0] == "open_clip_model.safetensors"
    # Lay out a hub cache entry the way huggingface_hub does.
    folder = tmp_path / "hub" / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("abc123")
    (snap / names[0]).write_bytes(b"x")
    assert sem.weights_path(spec) == snap / names[0]


def test_weights_file_path_and_mismatch(tmp_path):
    from safetensors.torch import save_file

    tiny = load_tower("tiny")
    full = tmp_path / "clip.safetensors"  # a full-CLIP style file: tower under "visual."
    save_file({"visual." + k: v.contiguous() for k, v in tiny.visual.state_dict().items()}, str(full))
    spec = dataclasses.replace(tiny.spec, name="custom", open_clip_arch="ViT-custom", pretrained="x")
    tower = load_tower(spec, weights=full)
    x = torch.zeros(1, 3, 224, 224)
    assert torch.equal(tower.tokens_from_tensor(x), tiny.tokens_from_tensor(x))
    wrong = dataclasses.replace(spec, config_json=spec.config_json.replace('"width": 192', '"width": 128'))
    with pytest.raises(ModelMismatchError):
        load_tower(wrong, weights=full)
    with pytest.raises(InvalidInputError):
        load_tower("tiny", weights=tmp_path / "missing.safetensors")


def test_bad_inputs(tiny):
    with pytest.raises(InvalidInputError):
        tiny.tokens_from_tensor(torch.zeros(1, 3, 64, 64))
    with pytest.raises(InvalidInputError):
        tiny.preprocess(np.zeros((4, 4, 3)))
    with pytest.raises(InvalidInputError):
        tiny.tokens([])


def test_calibrate_cli(tmp_path):
    from click.testing import CliRunner

    from semcodec.cli.main import SemcodecGroup
    from semcodec.cli.semantic import calibrate
    from semcodec.layers.semantic import Calibration

    group = SemcodecGroup(commands={"calibrate": calibrate})
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "cal.safetensors"
    args = ["calibrate", "--semantic", "tiny", "--images", str(folder), "-o", str(out), "--no-progress"]
    r = CliRunner().invoke(group, args)
    assert r.exit_code == 0, r.output
    cal = Calibration.load(out)
    assert cal.model == "tiny" and cal.stats["num_images"] == 3
    r = CliRunner().invoke(group, args)  # exists, no --force
    assert r.exit_code == 2 and "--force" in r.output
    r = CliRunner().invoke(group, ["calibrate", "--semantic", "tiny", "--images", str(tmp_path / "none"), "-o",
                                   str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2 and f"--images {tmp_path / 'none'} does not exist" in r.output
    r = CliRunner().invoke(group, ["calibrate", "--semantic", "tiny", "--images", str(folder / "0.png"), "-o",
                                   str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2 and "is a file" in r.output
    r = CliRunner().invoke(group, args[:-3] + ["-o", str(tmp_path / "cal.png"), "--no-progress"])
    assert r.exit_code == 2 and "name it .safetensors, not '.png'" in r.output and not (tmp_path / "cal.png").exists()
