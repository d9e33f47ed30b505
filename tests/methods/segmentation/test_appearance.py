"""Appearance augmentation of segmentation batches: collimation frames and intensity gamma."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.errors import BenchError
from methods.segmentation.appearance import (BLACK, FRAME_MARGIN, WHITE, augment_appearance, collimation_frames,
                                             random_gamma)
from methods.segmentation.config import SegmentationConfig


def _batch(b: int = 64, h: int = 48, w: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images in (0.1, 0.8) with one random annotated rectangle each (two annotators, the second's
    box shifted by a pixel)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.7 * torch.rand(b, 1, h, w, generator=g)
    y = torch.zeros(b, 2, h, w, dtype=torch.uint8)
    for i in range(b):
        r0, c0 = (int(v) for v in torch.randint(2, 20, (2,), generator=g))
        r1, c1 = r0 + int(torch.randint(3, 20, (1,), generator=g)), c0 + int(torch.randint(3, 10, (1,), generator=g))
        y[i, 0, r0:r1, c0:c1] = 3
        y[i, 1, r0 + 1:r1 + 1, c0:c1] = 5
    return x, y


def _field(changed: np.ndarray) -> tuple[int, int, int, int] | None:
    """The unchanged pixels' bounding box (rows lo, hi, cols lo, hi), None when all changed."""
    keep = ~changed
    if not keep.any():
        return None
    r, c = np.where(keep)
    return r.min(), r.max(), c.min(), c.max()


def test_frame_is_the_complement_of_a_box_around_the_bones_at_one_level():
    x, y = _batch()
    out = collimation_frames(x, y, p=1.0, generator=torch.Generator().manual_seed(1))
    levels = []
    for i in range(x.shape[0]):
        changed = (out[i, 0] != x[i, 0]).numpy()
        r0, r1, c0, c1 = _field(changed)
        box = np.zeros_like(changed)
        box[r0:r1 + 1, c0:c1 + 1] = True
        assert np.array_equal(~changed, box)                     # the exposed field is one axis-aligned box
        fg_r, fg_c = np.where((y[i] > 0).any(0).numpy())
        h, w = changed.shape
        assert r0 <= max(fg_r.min() - FRAME_MARGIN, 0) and r1 >= min(fg_r.max() + FRAME_MARGIN, h - 1)
        assert c0 <= max(fg_c.min() - FRAME_MARGIN, 0) and c1 >= min(fg_c.max() + FRAME_MARGIN, w - 1)
        if changed.any():
            vals = out[i, 0].numpy()[changed]
            assert np.ptp(vals) == 0.0                           # one level
            v = float(vals[0])
            assert WHITE[0] <= v <= WHITE[1] or BLACK[0] <= v <= BLACK[1]
            levels.append(v > 0.5)
    # half white, half black; nearly every image framed (an edge draw may land on the canvas border)
    assert len(levels) >= 0.9 * x.shape[0]
    assert 0.3 < np.mean(levels) < 0.7


def test_frame_edges_span_the_whole_range_between_canvas_and_bones():
    x = torch.full((4000, 1, 40, 30), 0.5)
    y = torch.zeros(4000, 1, 40, 30, dtype=torch.uint8)
    y[:, 0, 15:25, 10:20] = 1
    out = collimation_frames(x, y, p=1.0, generator=torch.Generator().manual_seed(2))
    changed = (out[:, 0] != 0.5).numpy()
    tops = np.array([_field(c)[0] for c in changed])
    bottoms = np.array([_field(c)[1] for c in changed])
    lo = 15 - FRAME_MARGIN                                        # top edge uniform on 0 .. 11
    assert tops.min() == 0 and tops.max() == lo
    counts = np.bincount(tops, minlength=lo + 1)
    assert counts.min() > 0.6 * counts.mean()
    assert bottoms.min() == 24 + FRAME_MARGIN and bottoms.max() == 39


def test_frame_probability_and_unannotated_images():
    x, y = _batch(b=2000)
    out = collimation_frames(x, y, p=0.3, generator=torch.Generator().manual_seed(3))
    framed = (out != x).flatten(1).any(1).float().mean().item()
    assert 0.25 < framed < 0.33                                  # p, less the draws that touch no pixel
    y[:] = 0
    assert torch.equal(collimation_frames(x, y, p=1.0, generator=torch.Generator().manual_seed(3)), x)
    assert torch.equal(collimation_frames(x, _batch(b=2000)[1], p=0.0), x)


def test_gamma_follows_nnunet_draw():
    x = torch.linspace(0.05, 0.95, 50).repeat(3000, 1, 1, 1)      # 3000 x 1 x 1 x 50
    out = random_gamma(x, p=1.0, g_min=0.7, g_max=1.5, generator=torch.Generator().manual_seed(4))
    g = (out.log() / x.log()).numpy().reshape(3000, 50)
    assert np.allclose(g, g[:, :1], atol=1e-4)                   # one exponent per image
    g = g[:, 0]
    assert g.min() >= 0.7 - 1e-4 and g.max() <= 1.5 + 1e-4
    below = g < 1.0
    assert 0.46 < below.mean() < 0.54                             # half the draws below 1
    assert np.mean(g[below]) == pytest.approx(0.85, abs=0.01)     # uniform on [0.7, 1)
    assert np.mean(g[~below]) == pytest.approx(1.25, abs=0.01)    # uniform on [1, 1.5]
    fixed = random_gamma(x[:2], p=1.0, g_min=2.0, g_max=2.0)
    assert torch.allclose(fixed, x[:2] ** 2)
    some = random_gamma(x, p=0.3, g_min=0.7, g_max=1.5, generator=torch.Generator().manual_seed(5))
    assert 0.27 < (some != x).flatten(1).any(1).float().mean().item() < 0.33
    assert torch.equal(random_gamma(x, p=0.0, g_min=0.7, g_max=1.5), x)


def test_zero_probabilities_draw_nothing():
    x, y = _batch(b=4)
    g = torch.Generator().manual_seed(6)
    out = augment_appearance(x, y, frame_p=0.0, gamma_p=0.0, gamma_min=0.7, gamma_max=1.5, generator=g)
    assert torch.equal(out, x)
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("field,value", [("frame_p", 1.5), ("intensity_gamma_p", -0.1),
                                         ("intensity_gamma_min", 0.0), ("intensity_gamma_max", 0.5)])
def test_bad_appearance_options_are_refused(field, value):
    with pytest.raises(BenchError, match=r"frame_p|intensity_gamma"):
        SegmentationConfig(**{field: value}).validate()
