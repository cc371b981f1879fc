"""Shared fixtures: the tiny test codec, CliRunner, optional ../shared data."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from helpers import KODAK, TEST_DATA, TEST_MODEL


@pytest.fixture
def test_codec(monkeypatch):
    """Make the tiny fixed-seed test codec (tests/data/checkpoints) loadable; returns its name."""
    monkeypatch.setenv("SEMCODEC_CHECKPOINTS", str(TEST_DATA / "checkpoints"))
    from semcodec.api import clear_codec_cache

    clear_codec_cache()
    yield TEST_MODEL
    clear_codec_cache()


@pytest.fixture
def photos(tmp_path):
    """A folder of three random 96×80 training photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def kodak() -> list[Path]:
    """The Kodak images from ../shared; skips when ../shared is absent."""
    if not KODAK.is_dir():
        pytest.skip(f"needs the Kodak images in {KODAK} (../shared is absent)")
    return sorted(KODAK.glob("*.png"))

