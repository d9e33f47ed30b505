"""Batched augmentations: geometry against exact references, flips exact, background kept, seeded."""
from __future__ import annotations

import math

import pytest
import torch

from bench.errors import BenchError
from methods.augment import (AugmentConfig, adjust_intensity, apply, augment, flip, rotate_translate,
                             sample_params)


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _patches(b: int = 4, n: int = 32, seed: int = 0) -> torch.Tensor:
    """Random intensities inside a disk-ish bone region, exact zeros outside (like image ⊙ mask)."""
    g = _gen(seed)
    x = torch.rand(b, 1, n, n, generator=g) * 0.8 + 0.1
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    mask = ((yy - n / 2 + 3) ** 2 + (xx - n / 2) ** 2) < (n / 3) ** 2
    return x * mask


def test_rotation_by_90_matches_rot90():
    x = torch.rand(3, 1, 24, 24, generator=_gen(1))
    ccw = rotate_translate(x, torch.full((3,), 90.0), torch.zeros(3, 2))
    cw = rotate_translate(x, torch.full((3,), -90.0), torch.zeros(3, 2))
    torch.testing.assert_close(ccw, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4, rtol=0)
    torch.testing.assert_close(cw, torch.rot90(x, -1, dims=(-2, -1)), atol=1e-4, rtol=0)
    half = rotate_translate(x, torch.full((3,), 180.0), torch.zeros(3, 2))
    torch.testing.assert_close(half, torch.rot90(x, 2, dims=(-2, -1)), atol=1e-4, rtol=0)


def test_rotation_keeps_a_centred_disk_and_its_mass():
    n = 64
    yy, xx = torch.meshgrid(torch.arange(n) + 0.5, torch.arange(n) + 0.5, indexing="ij")
    r = torch.sqrt((yy - n / 2) ** 2 + (xx - n / 2) ** 2)
    disk = (1 - r / 20).clamp(min=0)[None, None].repeat(5, 1, 1, 1)  # smooth radial profile
    angles = torch.tensor([-30.0, -12.5, 7.0, 22.0, 30.0])
    out = rotate_translate(disk, angles, torch.zeros(5, 2))
    torch.testing.assert_close(out, disk, atol=0.02, rtol=0)            # rotation about the centre
    torch.testing.assert_close(out.sum((1, 2, 3)), disk.sum((1, 2, 3)), rtol=2e-3, atol=0)


def test_translation_moves_content_by_the_fraction_of_the_side():
    x = torch.rand(2, 1, 16, 20, generator=_gen(2))
    shift = torch.tensor([[0.25, 0.0], [0.0, -0.125]])   # +5 px right; 2 px up
    out = rotate_translate(x, torch.zeros(2), shift)
    ref0 = torch.zeros_like(x[0])
    ref0[..., 5:] = x[0, ..., :-5]
    ref1 = torch.zeros_like(x[1])
    ref1[..., :-2, :] = x[1, ..., 2:, :]
    torch.testing.assert_close(out[0], ref0, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], ref1, atol=1e-5, rtol=0)


def test_flips_are_exact():
    x = _patches(4)
    out = flip(x, torch.tensor([True, False, True, False]), torch.tensor([False, True, True, False]))
    assert torch.equal(out[0], x[0].flip(-1))
    assert torch.equal(out[1], x[1].flip(-2))
    assert torch.equal(out[2], x[2].flip(-1).flip(-2))
    assert torch.equal(out[3], x[3])
    # through augment(): geometry and intensity off, only the drawn flips remain, bit-exact
    cfg = AugmentConfig(rotation_deg=0, translate=0, brightness=(1, 1), contrast=(1, 1))
    x = _patches(16, seed=3)
    out = augment(x, cfg, _gen(7))
    p = sample_params(16, cfg, _gen(7))
    assert p.hflip.any() and (~p.hflip).any() and p.vflip.any() and (~p.vflip).any()
    assert torch.equal(out, flip(x, p.hflip, p.vflip))


def test_intensity_hand_computed_and_background_stays_zero():
    x = torch.tensor([0.2, 0.0, 0.4, 0.0, 0.6]).view(1, 1, 1, 5)
    y = adjust_intensity(x, torch.tensor([1.5]), torch.tensor([0.5]))
    # brightness: [0.3, ., 0.6, ., 0.9]; foreground mean 0.6; contrast 0.5 → 0.5·y + 0.3
    torch.testing.assert_close(y, torch.tensor([0.45, 0.0, 0.6, 0.0, 0.75]).view(1, 1, 1, 5))
    # torchvision semantics when asked: the mean over all pixels, the background moves
    y = adjust_intensity(x, torch.tensor([1.0]), torch.tensor([0.5]), preserve_background=False)
    torch.testing.assert_close(y, (0.5 * x + 0.5 * 0.24).clamp(0, 1))
    # clamped to [0, 1]
    y = adjust_intensity(torch.full((1, 1, 2, 2), 0.9), torch.tensor([1.5]), torch.tensor([1.0]))
    assert torch.equal(y, torch.ones(1, 1, 2, 2))


def test_full_augment_keeps_background_where_geometry_left_it():
    cfg = AugmentConfig()
    x = _patches(8, seed=4)
    p = sample_params(8, cfg, _gen(11))
    out = apply(x, p, cfg)
    geo = rotate_translate(flip(x, p.hflip, p.vflip), p.angle_deg, p.shift)
    fg = geo != 0
    assert bool((out[~fg] == 0).all())                      # zero background never lights up
    b, c = p.brightness.view(-1, 1, 1, 1), p.contrast.view(-1, 1, 1, 1)
    mu = (b * geo * fg).sum((1, 2, 3), keepdim=True) / fg.sum((1, 2, 3), keepdim=True)
    expected = torch.where(fg, (c * b * geo + (1 - c) * mu).clamp(0, 1), torch.zeros(()))
    torch.testing.assert_close(out, expected)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert bool((out != 0).sum() > 0.3 * (x != 0).sum())    # the bone is still there


def test_parameters_are_in_the_paper_ranges():
    cfg = AugmentConfig()
    p = sample_params(4000, cfg, _gen(5))
    assert float(p.angle_deg.abs().max()) <= 30 and float(p.angle_deg.abs().max()) > 29
    assert float(p.shift.abs().max()) <= 0.1 and float(p.shift.abs().max()) > 0.099
    for f in (p.brightness, p.contrast):
        assert 0.5 <= float(f.min()) < 0.51 and 1.49 < float(f.max()) <= 1.5
    assert abs(float(p.hflip.float().mean()) - 0.5) < 0.05
    assert abs(float(p.vflip.float().mean()) - 0.5) < 0.05


def test_same_seed_same_output_different_seed_differs():
    x = _patches(6, seed=6)
    a = augment(x, AugmentConfig(), _gen(42))
    b = augment(x, AugmentConfig(), _gen(42))
    c = augment(x, AugmentConfig(), _gen(43))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bad_input_raises():
    with pytest.raises(BenchError, match="B×1×H×W"):
        augment(torch.zeros(2, 3, 8, 8), AugmentConfig(), _gen(0))
    with pytest.raises(BenchError, match="float"):
        augment(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), AugmentConfig(), _gen(0))
    with pytest.raises(BenchError, match="Generator"):
        augment(torch.zeros(2, 1, 8, 8))
    with pytest.raises(BenchError, match="brightness"):
        augment(torch.zeros(2, 1, 8, 8), AugmentConfig(brightness=(1.5, 0.5)), _gen(0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_parameters():
    cfg = AugmentConfig()
    x = _patches(8, seed=8)
    p = sample_params(8, cfg, _gen(9))
    cpu = apply(x, p, cfg)
    pc = type(p)(**{k: v.cuda() for k, v in vars(p).items()})
    gpu = apply(x.cuda(), pc, cfg).cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=0)
    out = augment(x.cuda(), cfg, _gen(1, "cuda"))
    assert out.is_cuda and out.shape == x.shape
    assert math.isfinite(float(out.sum()))
