"""Multi-crop: view layout, summed-area fractions, bone-aware rejection sampling with its cap."""
from __future__ import annotations

import pytest
import torch

from bench.errors import BenchError
from methods.multicrop import (Boxes, MultiCropConfig, box_fractions, candidates, centroid, choose, crop_resize,
                               draw_boxes, multicrop, nonzero_table, sample_crops)


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _corner_bone(b: int = 6, p: int = 64, side: int = 20) -> torch.Tensor:
    """A side×side bone in a different corner of each patch (~10 % of the patch), zeros elsewhere.

    Global crops (≥ 40 % of the area) covering the whole patch have < 10 % bone; those around
    the bone pass. Most local crops miss the bone. So some draws fail and some pass.
    """
    x = torch.zeros(b, 1, p, p)
    g = _gen(0)
    for i in range(b):
        y0 = 0 if i % 2 == 0 else p - side
        x0 = 0 if (i // 2) % 2 == 0 else p - side
        x[i, 0, y0:y0 + side, x0:x0 + side] = torch.rand(side, side, generator=g) * 0.8 + 0.2
    return x


def test_views_layout_and_sizes():
    cfg = MultiCropConfig()
    views = multicrop(_corner_bone(3), cfg, "conventional", _gen(1))
    assert [tuple(v.shape) for v in views] == [(3, 1, 224, 224)] * 2 + [(3, 1, 96, 96)] * 4
    small = MultiCropConfig(n_global=1, n_local=2, global_size=32, local_size=16)
    views = multicrop(_corner_bone(3), small, "bone-aware", _gen(1))
    assert [tuple(v.shape[-2:]) for v in views] == [(32, 32), (16, 16), (16, 16)]


def test_summed_area_fractions_match_brute_force():
    g = _gen(2)
    x = (torch.rand(3, 1, 40, 30, generator=g) > 0.7).float() * torch.rand(3, 1, 40, 30, generator=g)
    table = nonzero_table(x)
    boxes = draw_boxes(3, 25, (0.02, 1.0), (0.5, 2.0), 40, 30, _gen(3), x.device)
    frac = box_fractions(table, boxes)
    for i in range(3):
        for t in range(25):
            x0 = min(max(round(float(boxes.cx[i, t] - boxes.w[i, t] / 2) * 30), 0), 29)
            x1 = max(min(max(round(float(boxes.cx[i, t] + boxes.w[i, t] / 2) * 30), 1), 30), x0 + 1)
            y0 = min(max(round(float(boxes.cy[i, t] - boxes.h[i, t] / 2) * 40), 0), 39)
            y1 = max(min(max(round(float(boxes.cy[i, t] + boxes.h[i, t] / 2) * 40), 1), 40), y0 + 1)
            region = x[i, 0, y0:y1, x0:x1]
            assert float(frac[i, t]) == pytest.approx(float((region != 0).float().mean()), abs=1e-6)


def test_boxes_follow_the_scale_and_stay_inside():
    p = 512                                   # boxes are snapped to whole pixels: ±1 px per side
    for scale in ((0.4, 1.0), (0.05, 0.4)):
        bx = draw_boxes(50, 40, scale, (3 / 4, 4 / 3), p, p, _gen(4), torch.device("cpu"))
        area = bx.w * bx.h
        assert float(area.min()) >= scale[0] - 4 / p and float(area.max()) <= scale[1] + 4 / p
        assert float(area.min()) < scale[0] + 0.02 and float(area.max()) > scale[1] - 0.05
        assert float((bx.cx - bx.w / 2).min()) >= -1e-6 and float((bx.cx + bx.w / 2).max()) <= 1 + 1e-6
        assert float((bx.cy - bx.h / 2).min()) >= -1e-6 and float((bx.cy + bx.h / 2).max()) <= 1 + 1e-6
        for edge in (bx.cx - bx.w / 2, bx.cy + bx.h / 2):   # on pixel boundaries
            torch.testing.assert_close(edge * p, torch.round(edge * p), atol=1e-3, rtol=0)
        aspect = (bx.w / bx.h)[area < 0.7]    # larger boxes may be clamped to the patch side
        assert float(aspect.min()) >= 0.75 * 0.97 and float(aspect.max()) <= 4 / 3 * 1.03


def test_crop_resize_samples_the_box():
    x = torch.rand(2, 1, 32, 32, generator=_gen(5))
    quad = Boxes(torch.full((2,), 0.25), torch.full((2,), 0.25), torch.full((2,), 0.5), torch.full((2,), 0.5))
    torch.testing.assert_close(crop_resize(x, quad, 16), x[..., :16, :16], atol=1e-5, rtol=0)
    whole = Boxes(torch.full((2,), 0.5), torch.full((2,), 0.5), torch.ones(2), torch.ones(2))
    torch.testing.assert_close(crop_resize(x, whole, 32), x, atol=1e-5, rtol=0)
    br = Boxes(torch.full((2,), 0.75), torch.full((2,), 0.75), torch.full((2,), 0.5), torch.full((2,), 0.5))
    torch.testing.assert_close(crop_resize(x, br, 16), x[..., 16:, 16:], atol=1e-5, rtol=0)
    # boxes with fields B×n: one resampling gives each crop's own view
    group = Boxes(*(torch.stack([a, b], dim=1) for a, b in zip(vars(quad).values(), vars(br).values())))
    views = crop_resize(x, group, 16)
    assert views.shape == (2, 2, 16, 16)
    torch.testing.assert_close(views[:, :1], crop_resize(x, quad, 16), atol=0, rtol=0)
    torch.testing.assert_close(views[:, 1:], crop_resize(x, br, 16), atol=0, rtol=0)
    # upsampling 2x: every other output pixel on a source pixel boundary is the mean of two
    up = crop_resize(x, quad, 32)
    torch.testing.assert_close(up[..., 1:-1:2, 1:-1:2], x[..., :15, :15] * 0.5625 + x[..., 1:16, :15] * 0.1875
                               + x[..., :15, 1:16] * 0.1875 + x[..., 1:16, 1:16] * 0.0625, atol=1e-5, rtol=0)


def test_choose_first_passing_else_best():
    frac = torch.tensor([[0.05, 0.12, 0.30, 0.11],
                         [0.02, 0.09, 0.04, 0.01],
                         [0.50, 0.01, 0.02, 0.03]])
    assert choose(frac, 0.10).tolist() == [1, 1, 0]


def test_bone_aware_views_have_at_least_ten_percent_bone():
    x = _corner_bone(8)
    cfg = MultiCropConfig(global_size=64, local_size=32)
    views, fracs = multicrop(x, cfg, "bone-aware", _gen(6), return_fractions=True)
    for v, f in zip(views, fracs):
        assert bool((f >= 0.10).all()), f
        # the views themselves: bilinear resampling of the box keeps its non-zero fraction up to one
        # view row when it shrinks the box (here up to 45 px → 32 px); it only grows it otherwise
        assert bool(((v != 0).float().mean((1, 2, 3)) >= 0.10 - 1 / v.shape[-1]).all())
    # the same patches under the conventional policy: many first draws fail, so the test bites
    views, fracs = multicrop(x, cfg, "conventional", _gen(6), return_fractions=True)
    failed = sum(int((f < 0.10).sum()) for f in fracs)
    assert failed >= 10


def test_hopeless_patch_returns_the_best_draw_without_hanging():
    x = torch.zeros(4, 1, 48, 48)
    x[:, 0, 24, 24] = 1.0                       # one bone pixel: no crop reaches 10 %
    x[1] = 0                                    # an all-zero patch
    cfg = MultiCropConfig(max_tries=16)
    table = nonzero_table(x)
    boxes, frac = sample_crops(x, 1, cfg.local_scale, cfg, "bone-aware", _gen(7), table)
    assert boxes.w.shape == frac.shape == (4, 1)
    frac = frac[:, 0]
    cand = candidates(4, cfg.local_scale, cfg, "bone-aware", 48, 48, _gen(7), x.device, centroid(x))
    assert cand.w.shape == (4, 32)                          # 16 draws + their re-centred copies
    all_frac = box_fractions(table, cand)
    torch.testing.assert_close(frac, all_frac.max(dim=1).values)
    assert float(frac[1]) == 0.0
    # the best box holds the bone pixel: the smallest re-centred box, 1/area of it
    i = int(all_frac[0].argmax())
    assert float(frac[0]) == pytest.approx(1 / float(cand.w[0, i] * cand.h[0, i] * 48 * 48), rel=1e-5)
    assert float(frac[0]) == pytest.approx(float(1 / (cand.w[0] * cand.h[0] * 48 * 48).min()), rel=1e-5)
    views = multicrop(x, cfg, "bone-aware", _gen(8))
    assert len(views) == 6 and all(bool(torch.isfinite(v).all()) for v in views)


def test_passing_patch_takes_the_first_passing_draw():
    x = _corner_bone(4)
    cfg = MultiCropConfig()
    table = nonzero_table(x)
    boxes, frac = sample_crops(x, 3, cfg.global_scale, cfg, "bone-aware", _gen(9), table)
    cand = draw_boxes(4, (3, cfg.max_tries), cfg.global_scale, cfg.ratio, 64, 64, _gen(9), x.device)
    all_frac = box_fractions(table, cand)                   # the random draws come first, crop by crop
    first = (all_frac >= 0.1).to(torch.uint8).argmax(-1)
    assert bool((all_frac >= 0.1).any(-1).all())
    torch.testing.assert_close(boxes.cx, cand.cx.gather(-1, first[..., None]).squeeze(-1))
    torch.testing.assert_close(frac, all_frac.gather(-1, first[..., None]).squeeze(-1))
    for j in range(3):                                      # each crop chose among its own candidates only
        torch.testing.assert_close(frac[:, j], box_fractions(table, Boxes(
            *(t[:, j] for t in (cand.cx, cand.cy, cand.w, cand.h)))).gather(1, first[:, j:j + 1]).squeeze(1))


def test_recentre_fallback_rescues_a_small_bone():
    p = 96
    x = torch.zeros(16, 1, p, p)
    g = _gen(11)
    for i in range(16):             # a 20×20 bone somewhere (4.3 % of the patch, ≥ 10 % of any local crop
        y0, x0 = (int(v) for v in torch.randint(0, p - 20, (2,), generator=g))   # centred on it)
        x[i, 0, y0:y0 + 20, x0:x0 + 20] = 0.5
    cen = centroid(x[:1])
    ys, xs = torch.nonzero(x[0, 0], as_tuple=True)
    torch.testing.assert_close(cen[0], torch.stack([(xs + 0.5).mean() / p, (ys + 0.5).mean() / p]))
    few = MultiCropConfig(global_size=32, local_size=32, max_tries=4, recentre_fallback=False)
    _, fr = multicrop(x, few, "bone-aware", _gen(12), return_fractions=True)
    assert sum(int((f < 0.10).sum()) for f in fr[2:]) > 0          # random draws alone miss it
    rescued = MultiCropConfig(global_size=32, local_size=32, max_tries=4)
    views, fr = multicrop(x, rescued, "bone-aware", _gen(12), return_fractions=True)
    for v, f in zip(views[2:], fr[2:]):                              # local crops can hold 10 %
        assert bool((f >= 0.10).all())
        assert bool(((v != 0).float().mean((1, 2, 3)) >= 0.10 - 1 / 32).all())


def test_seeded_and_policies_differ():
    x = _corner_bone(4)
    cfg = MultiCropConfig(global_size=48, local_size=24)
    a = multicrop(x, cfg, "bone-aware", _gen(10))
    b = multicrop(x, cfg, "bone-aware", _gen(10))
    c = multicrop(x, cfg, "conventional", _gen(10))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_bad_input_raises():
    x = _corner_bone(2)
    with pytest.raises(BenchError, match="policy"):
        multicrop(x, MultiCropConfig(), "random", _gen(0))
    with pytest.raises(BenchError, match="B×1×P×P"):
        multicrop(x[:, 0], MultiCropConfig(), "bone-aware", _gen(0))
    with pytest.raises(BenchError, match="local_scale"):
        multicrop(x, MultiCropConfig(local_scale=(0.5, 0.1)), "bone-aware", _gen(0))
    with pytest.raises(BenchError, match="Generator"):
        multicrop(x, MultiCropConfig(), "bone-aware")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bone_aware():
    x = _corner_bone(8).cuda()
    views, fracs = multicrop(x, MultiCropConfig(), "bone-aware", _gen(6, "cuda"), return_fractions=True)
    assert all(v.is_cuda for v in views)
    for v, f in zip(views, fracs):
        assert bool((f >= 0.10).all())
        assert bool(((v != 0).float().mean((1, 2, 3)) >= 0.10 - 1 / v.shape[-1]).all())
