"""Regenerate tests/data/checkpoints/semcodec-test.safetensors (a tiny, untrained, fixed-seed codec).

The model is not trained: it exists so that golden streams and round trips test the
coding path quickly and independently of the shipped model. Run:
``python tests/data/make_test_model.py`` (changes every golden stream that uses it).
"""

from pathlib import Path

import torch

from semcodec.checkpoints import freeze_for_shipping, save_residual_checkpoint
from semcodec.models.residual import ResidualCodec, ResidualConfig

HERE = Path(__file__).parent


def main() -> None:
    torch.manual_seed(1234)
    model = ResidualCodec(ResidualConfig(N=16, M=24, lambdas=(0.005, 0.05), prior_channels=8))
    tmp = HERE / "checkpoints" / "semcodec-test.train.safetensors"
    save_residual_checkpoint(model, tmp)
    freeze_for_shipping(tmp, HERE / "checkpoints" / "semcodec-test.safetensors", "semcodec-test")
    tmp.unlink()


if __name__ == "__main__":
    main()
