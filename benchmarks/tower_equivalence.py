"""Full-size tower equivalence: semcodec's tokens against Hugging Face ``transformers``, same random weights.

For each tower the MLLM's own module is built at full size with random weights (no
download), its weights are written to a file that semcodec loads with ``--semantic-weights``
(``load_tower(name, weights=FILE)``), and both see the same image through the MLLM's own
processor:

* SigLIP towers (``siglip-so400m-384``, ``siglip-b16-224``): ``SiglipVisionModel`` with
  LLaVA-OneVision's cut (``L - 1`` layers, ``hidden_states[-1]``, all tokens), the file in
  Hugging Face naming; image through ``LlavaOnevisionImageProcessorPil`` (mean = std = 0.5,
  bicubic), base view ``pixel_values[0, 0]``.
* CLIP towers (``clip-l14-336``, ``clip-b16``): open_clip's ``VisionTransformer`` with random
  weights, copied into ``CLIPVisionModel``; ``hidden_states[-2][:, 1:]`` after
  ``LlavaImageProcessorPil(do_pad=True)`` (LLaVA-1.5).

Prints the max-abs and relative differences of the tokens and both forward times. Random
weights test the plumbing (layers, names, preprocessing), not meaning.

    python benchmarks/tower_equivalence.py [--towers siglip-b16-224,clip-b16] [--image FILE] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import semcodec._compat  # noqa: E402,F401  (before transformers, which may import torchvision)
from semcodec.models import semantic as sem  # noqa: E402


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere (HF's init leaves biases and norms trivial, which would hide naming errors):
    matrices ``N(0, 1 / fan_in)``, norm scales ``1 + N(0, 0.2²)``, other vectors ``N(0, 0.2²)``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(r / (p[0].numel() ** 0.5))
            else:
                p.copy_(0.2 * r + (1.0 if name.endswith("weight") else 0.0))


def siglip_case(name: str, image: Image.Image, folder: Path):
    from safetensors.torch import save_file
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil)

    spec = sem.semantic_spec(name)
    vc = spec.config["vision_cfg"]
    keep = vc["layers"] + spec.layer + 1  # LLaVA-OneVision keeps 26 of 27 layers and takes the last
    hf = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=vc["width"], intermediate_size=vc["mlp_dim"], num_hidden_layers=keep,
        num_attention_heads=vc["heads"], image_size=vc["image_size"], patch_size=vc["patch_size"],
        vision_use_head=False)).eval()
    randomize(hf, 0)
    path = folder / f"{name}-hf.safetensors"
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(path))
    S = spec.image_size
    processor = LlavaOnevisionImageProcessorPil(size={"height": S, "width": S}, image_mean=[0.5] * 3,
                                                image_std=[0.5] * 3, resample=3,
                                                image_grid_pinpoints=[[S, S], [S, 2 * S], [2 * S, S], [2 * S, 2 * S]])
    pixel = processor(images=[image], return_tensors="pt")["pixel_values"][:, 0]  # the base view
    t0 = time.perf_counter()
    with torch.no_grad():
        theirs = hf(pixel, output_hidden_states=True).hidden_states[-1][0]  # vision_feature_layer=-1, "full"
    t_hf = time.perf_counter() - t0
    return spec, path, theirs, t_hf


def clip_case(name: str, image: Image.Image, folder: Path):
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    spec = sem.semantic_spec(name)
    cfg = spec.config["vision_cfg"]
    visual = sem._build_visual(spec)
    randomize(visual, 0)
    path = folder / f"{name}-open_clip.safetensors"
    save_file({"visual." + k: v.contiguous() for k, v in visual.state_dict().items()}, str(path))
    width, layers = cfg["width"], cfg["layers"]
    hf = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=width // cfg.get("head_width", 64), image_size=cfg["image_size"],
        patch_size=cfg["patch_size"], hidden_act="quick_gelu" if spec.config["quick_gelu"] else "gelu")).eval()
    weights = open_clip_to_hf_clip(visual.state_dict(), layers)
    if not any(k.startswith("vision_model.") for k in hf.state_dict()):
        weights = {k[len("vision_model."):]: v for k, v in weights.items()}
    hf.load_state_dict(weights, strict=False)
    S = spec.image_size
    processor = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": S}, crop_size={"height": S, "width": S})
    pixel = processor(images=[image], return_tensors="pt")["pixel_values"]
    t0 = time.perf_counter()
    with torch.no_grad():
        theirs = hf(pixel, output_hidden_states=True).hidden_states[spec.layer][0, 1:]
    t_hf = time.perf_counter() - t0
    return spec, path, theirs, t_hf


def open_clip_to_hf_clip(sd: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` weights in ``CLIPVisionModel`` naming."""
    out = {"vision_model.embeddings.class_embedding": sd["class_embedding"],
           "vision_model.embeddings.patch_embedding.weight": sd["conv1.weight"],
           "vision_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "vision_model.pre_layrnorm.weight": sd["ln_pre.weight"], "vision_model.pre_layrnorm.bias": sd["ln_pre.bias"],
           "vision_model.post_layernorm.weight": sd["ln_post.weight"],
           "vision_model.post_layernorm.bias": sd["ln_post.bias"]}
    for i in range(layers):
        a, b = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = sd[a + f"attn.in_proj_{leaf}"].chunk(3)
            names = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v,
                     "self_attn.out_proj": sd[a + f"attn.out_proj.{leaf}"], "layer_norm1": sd[a + f"ln_1.{leaf}"],
                     "layer_norm2": sd[a + f"ln_2.{leaf}"], "mlp.fc1": sd[a + f"mlp.c_fc.{leaf}"],
                     "mlp.fc2": sd[a + f"mlp.c_proj.{leaf}"]}
            out.update({f"{b}{name}.{leaf}": t for name, t in names.items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--towers", default="siglip-b16-224",
                        help="comma-separated: siglip-so400m-384, siglip-b16-224, clip-l14-336, clip-b16")
    parser.add_argument("--image", type=Path, default=REPO.parent / "shared" / "data" / "kodak" / "kodim01.png")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image.is_file():
        image = Image.open(args.image).convert("RGB")
    else:  # no sample image here: a smooth random one, not square (exercises the preprocessing)
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)).resize((768, 512), Image.BICUBIC)
    print(f"image {args.image.name if args.image.is_file() else 'synthetic'} {image.size[0]}x{image.size[1]}, "
          f"{torch.get_num_threads()} threads, random weights")
    print(f"{'tower':<18} {'tokens':>10} {'max |diff|':>11} {'rel. diff':>10} {'max |token|':>11} "
          f"{'HF s':>7} {'semcodec s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in [t.strip() for t in args.towers.split(",") if t.strip()]:
            case = siglip_case if name.startswith("siglip") else clip_case
            spec, path, theirs, t_hf = case(name, image, Path(tmp))
            tower = sem.load_tower(name, weights=path)
            t0 = time.perf_counter()
            ours = tower.tokens([image])[0]
            t_ours = time.perf_counter() - t0
            if ours.shape != theirs.shape:
                sys.exit(f"{name}: semcodec gives {tuple(ours.shape)} tokens, transformers {tuple(theirs.shape)}")
            diff = float((ours - theirs).abs().max())
            rel = float((ours - theirs).norm() / theirs.norm())
            print(f"{name:<18} {'x'.join(map(str, ours.shape)):>10} {diff:>11.2e} {rel:>10.2e} "
                  f"{float(theirs.abs().max()):>11.2f} {t_hf:>7.2f} {t_ours:>10.2f}")
            path.unlink()


if __name__ == "__main__":
    main()
