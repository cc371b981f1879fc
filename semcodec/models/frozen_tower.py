"""What every loaded semantic tower shares: frozen float32 weights, its normalization, and where it runs."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..errors import InvalidInputError


def rgb_image(image: Image.Image) -> Image.Image:
    """A tower's input image in RGB (palette and gray+alpha images through RGBA, as Pillow converts them).

    Raises:
        InvalidInputError: not a PIL image, or an empty one.
    """
    if not isinstance(image, Image.Image):
        raise InvalidInputError(f"expected a PIL image, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise InvalidInputError("the image is empty")
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB") if image.mode in ("P", "LA", "PA") else image.convert("RGB")
    return image


class FrozenTower:
    """A vision tower ready to run: eval mode, float32, no gradients, CPU unless moved with :meth:`to`.

    Args:
        spec: the tower's spec (its ``mean`` and ``std`` normalize the input).
        visual: the network.
        weights: the file its weights came from (None: built in).
    """

    def __init__(self, spec, visual: torch.nn.Module, weights: Path | None = None):
        self.spec = spec
        self.weights = weights
        self.visual = visual.float().eval().requires_grad_(False)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)

    def to(self, device) -> "FrozenTower":
        """Moves the network to ``device`` (a no-op when it is there); returns the tower."""
        self.visual.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.visual.parameters()).device
