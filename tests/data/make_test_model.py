"""Regenerate the test codecs in tests/data/checkpoints (tiny, untrained, fixed-seed).

``semcodec-test`` has no semantic prior; ``semcodec-test-cond`` has a random one for the
``tiny`` tower; ``semcodec-test-ctx`` has that prior and a random checkerboard context. They are not trained: they exist so that golden streams and round trips
test the coding paths quickly and independently of the shipped model. Run:
``python tests/data/make_test_model.py`` (changes every golden stream that uses it).
"""

from pathlib import Path

import torch

from semcodec.layers.pixels.checkpoint import freeze_for_shipping, save_residual_checkpoint
from semcodec.models.residual import ResidualCodec, ResidualConfig

HERE = Path(__file__).parent


def make(name: str, conditioned: bool, context: str = "none") -> None:
    """Build, freeze and save one test codec; ``conditioned`` adds a (random) semantic prior for ``tiny``."""
    torch.manual_seed(1234)
    model = ResidualCodec(ResidualConfig(N=16, M=24, lambdas=(0.005, 0.05), prior_channels=8, context=context))
    if conditioned:
        prior = model.add_semantic_prior("tiny", token_dim=192)
        torch.nn.init.normal_(prior.refine[-1].weight, std=0.05)   # non-zero, so the prior changes the rates
    if model.context is not None:
        torch.nn.init.normal_(model.context.fuse[-1].weight, std=0.05)  # non-zero, so the anchors matter
    tmp = HERE / "checkpoints" / f"{name}.train.safetensors"
    save_residual_checkpoint(model, tmp)
    freeze_for_shipping(tmp, HERE / "checkpoints" / f"{name}.safetensors", name)
    tmp.unlink()


def main() -> None:
    make("semcodec-test", conditioned=False)
    make("semcodec-test-cond", conditioned=True)
    make("semcodec-test-ctx", conditioned=True, context="checkerboard")


if __name__ == "__main__":
    main()
