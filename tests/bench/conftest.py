"""Fixtures of the benchmark tests."""

from __future__ import annotations

import pytest
from helpers import SAMPLE
from PIL import Image


@pytest.fixture
def small_images(tmp_path):
    """Two small PNG crops of the sample photo (128×96 and 96×96)."""
    folder = tmp_path / "images"
    folder.mkdir()
    im = Image.open(SAMPLE).convert("RGB")
    im.crop((0, 0, 128, 96)).save(folder / "a.png")
    im.crop((200, 100, 296, 196)).save(folder / "b.png")
    return folder

