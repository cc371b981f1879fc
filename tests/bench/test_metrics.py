"""Tests of semcodec.bench.metrics on inputs whose answer is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from semcodec.bench.metrics import (
    ms_ssim,
    ms_ssim_db,
    ms_ssim_window,
    mse,
    psnr,
    psnr_from_mse,
    to_rgb_array,
    token_fidelity,
)


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish RGB test image (uint8)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 7.0)[..., None] * np.cos(y / 11.0)[..., None] * np.array([1.0, 0.7, -0.5])
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def test_psnr_of_a_known_mse():
    a = np.full((16, 24, 3), 100, np.uint8)
    b = a + np.uint8(10)                                     # every sample off by 10: MSE 100
    assert mse(a, b) == 100.0
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)
    assert psnr(a, b) == pytest.approx(28.130803608679, abs=1e-9)


def test_psnr_uses_no_uint8_wraparound_and_is_symmetric():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 255, np.uint8)
    assert mse(a, b) == 255.0**2 and psnr(a, b) == 0.0
    c = _image(20, 30, 1)
    d = _image(20, 30, 2)
    assert psnr(c, d) == psnr(d, c)


def test_psnr_single_changed_sample_and_identity():
    a = np.zeros((8, 8, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 16
    assert mse(a, b) == pytest.approx(256 / 192)
    assert psnr(a, a) == math.inf
    assert psnr_from_mse(0) == math.inf
    assert psnr_from_mse(255.0**2) == 0.0


def test_inputs_pil_and_grayscale():
    arr = _image(10, 12)
    assert np.array_equal(to_rgb_array(Image.fromarray(arr)), arr)
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert to_rgb_array(gray).shape == (3, 4, 3)
    assert psnr(Image.fromarray(arr), arr) == math.inf
    with pytest.raises(ValueError, match="differ in size"):
        psnr(arr, arr[:5])
    with pytest.raises(ValueError, match="uint8"):
        to_rgb_array(arr.astype(np.float32))


def test_ms_ssim_window_rule():
    assert ms_ssim_window(512) == 11
    assert ms_ssim_window(161) == 11
    assert ms_ssim_window(160) == 9               # (9 - 1) * 16 = 128 < 160
    assert ms_ssim_window(64) == 3
    assert ms_ssim_window(33) == 3
    assert ms_ssim_window(32) is None


def test_ms_ssim_identical_is_one_and_noise_lowers_it():
    a = _image(176, 192)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(3)
    slight = np.clip(a + rng.normal(0, 3, a.shape), 0, 255).astype(np.uint8)
    heavy = np.clip(a + rng.normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    s1, s2 = ms_ssim(a, slight), ms_ssim(a, heavy)
    assert 1.0 > s1 > s2 > 0.0


def test_ms_ssim_matches_pytorch_msssim_and_handles_small_images():
    from pytorch_msssim import ms_ssim as reference

    a, b = _image(170, 180, 4), _image(170, 180, 5)
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float()
    y = torch.from_numpy(b).permute(2, 0, 1)[None].float()
    assert ms_ssim(a, b) == pytest.approx(float(reference(x, y, data_range=255)), abs=1e-6)
    small = _image(40, 50)
    assert ms_ssim(small, small) == pytest.approx(1.0, abs=1e-6)     # reduced window
    assert math.isnan(ms_ssim(small[:20], small[:20]))                # too small for 5 scales


def test_ms_ssim_db():
    assert ms_ssim_db(0.99) == pytest.approx(20.0)
    assert ms_ssim_db(0.9) == pytest.approx(10.0)
    assert ms_ssim_db(1.0) == math.inf


def test_token_fidelity_known_cases():
    t = torch.randn(196, 32, generator=torch.Generator().manual_seed(0))
    same = token_fidelity(t, t)
    assert same.cosine == pytest.approx(1.0) and same.mse == 0.0
    flipped = token_fidelity(-t, t)
    assert flipped.cosine == pytest.approx(-1.0)
    assert flipped.mse == pytest.approx(float((4 * t.double() ** 2).mean()))
    scaled = token_fidelity(2 * t, t)                       # same direction, different length
    assert scaled.cosine == pytest.approx(1.0)
    assert scaled.mse == pytest.approx(float((t.double() ** 2).mean()))
    e = torch.zeros(2, 3)
    e[0, 0] = e[1, 1] = 1.0
    f = torch.zeros(2, 3)
    f[0, 1] = f[1, 1] = 1.0                                  # token 0 orthogonal, token 1 equal
    assert token_fidelity(f, e).cosine == pytest.approx(0.5)
    assert token_fidelity(t[None], t).cosine == pytest.approx(1.0)   # (1, N, D) accepted
    with pytest.raises(ValueError, match="shapes differ"):
        token_fidelity(t[:10], t)
