"""SSL views in one resampling: equal to multi-crop then augmentation of the same draws, up to the
second interpolation (exact where that interpolation is exact), seeded, nearest falls back."""
from __future__ import annotations

import math

import pytest
import torch

from methods.augment import AugmentConfig, AugmentParams, apply, augment, sample_params
from methods.multicrop import Boxes, MultiCropConfig, crop_resize, multicrop, sample_crops, view_groups
from methods.views import augmented_crops, make_views


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _two_step(x: torch.Tensor, boxes: Boxes, params: AugmentParams, aug: AugmentConfig, size: int) -> torch.Tensor:
    """The reference: crop + resize (bilinear), then flips + rotation + shift + intensity of each view."""
    b, n = boxes.w.shape
    crops = crop_resize(x, boxes, size).reshape(b * n, 1, size, size)          # patch-major, as the draws
    return apply(crops, params, aug).view(b, n, size, size)


def _inner_boxes(b: int, n: int, seed: int) -> Boxes:
    """Boxes at least 10 % of the side away from the patch edges (no patch padding in play)."""
    u = torch.rand(4, b, n, generator=_gen(seed))
    w, h = 0.3 + 0.2 * u[0], 0.3 + 0.2 * u[1]
    return Boxes(0.35 + 0.3 * u[2], 0.35 + 0.3 * u[3], w, h)


def test_constant_patch_equals_the_two_steps_including_the_zeros_brought_in():
    # a constant patch crops to a constant view, so the second interpolation adds nothing but the
    # zeros (and their bilinear blending at the border) that rotation and shift bring in
    x = torch.full((3, 1, 64, 64), 0.6)
    aug = AugmentConfig(brightness=(0.8, 1.2), contrast=(0.7, 1.3))
    boxes = _inner_boxes(3, 4, seed=1)
    params = sample_params(12, aug, _gen(2))
    fused = augmented_crops(x, boxes, params, aug, 24)
    ref = _two_step(x, boxes, params, aug, 24)
    assert bool((ref == 0).any()) and bool(((ref > 0) & (ref < 0.3)).any())    # corners and a blended rim
    torch.testing.assert_close(fused, ref, atol=2e-5, rtol=0)


def test_quarter_turns_and_flips_are_exact_on_any_image():
    x = torch.rand(4, 1, 32, 32, generator=_gen(3))
    whole = Boxes(*(torch.full((4, 1), v) for v in (0.5, 0.5, 1.0, 1.0)))
    params = AugmentParams(angle_deg=torch.tensor([90.0, -90.0, 180.0, 0.0]), shift=torch.zeros(4, 2),
                           hflip=torch.tensor([False, True, False, True]),
                           vflip=torch.tensor([False, False, True, True]),
                           brightness=torch.ones(4), contrast=torch.ones(4))
    aug = AugmentConfig()
    fused = augmented_crops(x, whole, params, aug, 32)[:, 0]
    torch.testing.assert_close(fused, _two_step(x, whole, params, aug, 32)[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(fused[0], torch.rot90(x[0, 0], 1), atol=1e-4, rtol=0)
    torch.testing.assert_close(fused[1], torch.rot90(x[1, 0].flip(-1), -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(fused[2], x[2, 0].flip(-2).rot90(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(fused[3], x[3, 0].flip(-1).flip(-2), atol=1e-5, rtol=0)


def test_smooth_patch_differs_from_the_two_steps_only_by_the_second_blur():
    p = 96
    c = (torch.arange(p, dtype=torch.float32) + 0.5) / p
    yy, xx = c.view(-1, 1), c.view(1, -1)
    smooth = 0.5 + 0.2 * torch.cos(2 * math.pi * 1.5 * xx) * torch.sin(2 * math.pi * yy + 0.3)
    x = torch.stack([smooth, smooth.T, smooth.flip(0)]).unsqueeze(1)
    aug = AugmentConfig(brightness=(1, 1), contrast=(1, 1))
    boxes = _inner_boxes(3, 2, seed=4)
    params = sample_params(6, aug, _gen(5))
    fused, ref = augmented_crops(x, boxes, params, aug, 48), _two_step(x, boxes, params, aug, 48)
    diff = (fused - ref).abs()
    assert float(diff.mean()) < 2e-3 and float(diff.max()) < 0.02
    # while another draw of the same views is far: the comparison bites
    other = _two_step(x, boxes, sample_params(6, aug, _gen(6)), aug, 48)
    assert float((other - ref).abs().mean()) > 20 * float(diff.mean())


def test_make_views_draws_crops_then_augmentations_per_view_size():
    x = torch.zeros(5, 1, 64, 64)
    x[:, :, 10:50, 20:40] = torch.rand(5, 1, 40, 20, generator=_gen(7)) * 0.8 + 0.1
    mc = MultiCropConfig(global_size=40, local_size=20)
    aug = AugmentConfig()
    views = make_views(x, mc, aug, "bone-aware", _gen(8))
    assert [tuple(v.shape) for v in views] == [(5, 1, 40, 40)] * 2 + [(5, 1, 20, 20)] * 4
    gen, expected = _gen(8), []
    for n, scale, size in view_groups(mc):                 # the documented order of the draws
        boxes, frac = sample_crops(x, n, scale, mc, "bone-aware", gen)
        assert bool((frac >= mc.min_fraction).all())
        params = sample_params(5 * n, aug, gen)
        expected.extend(augmented_crops(x, boxes, params, aug, size).unbind(1))
    for v, e in zip(views, expected):
        torch.testing.assert_close(v[:, 0], e, atol=0, rtol=0)
    again = make_views(x, mc, aug, "bone-aware", _gen(8))
    other = make_views(x, mc, aug, "bone-aware", _gen(9))
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    assert not all(torch.equal(a, b) for a, b in zip(views, other))
    assert all(bool((v >= 0).all() and (v <= 1).all()) for v in views)


def test_empty_patch_gives_empty_views_and_nearest_keeps_the_two_steps():
    zeros = make_views(torch.zeros(2, 1, 32, 32), MultiCropConfig(global_size=16, local_size=8), AugmentConfig(),
                       "bone-aware", _gen(0))
    assert all(bool((v == 0).all()) for v in zeros)
    x = torch.rand(3, 1, 32, 32, generator=_gen(1))
    mc, aug = MultiCropConfig(global_size=16, local_size=8), AugmentConfig(interpolation="nearest")
    got = make_views(x, mc, aug, "conventional", _gen(2))
    gen = _gen(2)
    ref = [augment(v, aug, gen) for v in multicrop(x, mc, "conventional", gen)]
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_views_without_host_synchronisation():
    x = torch.zeros(16, 1, 128, 128, device="cuda")
    x[:, :, 30:100, 50:80] = 0.5
    gen = _gen(0, "cuda")
    make_views(x, MultiCropConfig(), AugmentConfig(), "bone-aware", gen)      # warm-up (lazy init)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        views = make_views(x, MultiCropConfig(), AugmentConfig(), "bone-aware", gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.is_cuda for v in views) and len(views) == 6
