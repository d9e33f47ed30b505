"""Occluded-bone augmentation (methods.segmentation.occlusion)."""
from __future__ import annotations

import math

import pytest
import torch

from bench.config import resolve
from bench.errors import BenchError
import methods.segmentation.config  # noqa: F401  (registers the section)
from methods.segmentation.appearance import WHITE
from methods.segmentation.occlusion import _bar, occlude_bones


def _oriented(h: int, w: int, centre: tuple[float, float], angle_deg: float, half_len: float,
              half_wid: float) -> torch.Tensor:
    """H x W bool: the rectangle of half sides (half_len along, half_wid across) at `angle_deg` from the row axis."""
    rows = torch.arange(h, dtype=torch.float64).view(h, 1) - centre[0]
    cols = torch.arange(w, dtype=torch.float64).view(1, w) - centre[1]
    a = math.radians(angle_deg)
    u = rows * math.cos(a) + cols * math.sin(a)
    v = cols * math.cos(a) - rows * math.sin(a)
    return (u.abs() <= half_len) & (v.abs() <= half_wid)


def _hand(b: int = 1, annotators: int = 2) -> torch.Tensor:
    """B x M x 64 x 48 uint8 labels: seven separated bars, class c in rows 6c..6c+2, columns 5..39."""
    y = torch.zeros(b, annotators, 64, 48, dtype=torch.uint8)
    for c in range(1, 8):
        y[:, :, 6 * c:6 * c + 3, 5:40] = c
    return y


@pytest.mark.parametrize("angle", [0.0, 30.0, -65.0, 90.0])
def test_bar_is_the_bones_oriented_box_widened_by_the_margin(angle):
    bone = _oriented(96, 96, (48.0, 47.0), angle, half_len=20.0, half_wid=4.0)
    bar = _bar(bone[None], margin=3)[0]
    assert bool((bar | ~bone).all())                                          # holds every bone pixel
    outer = _oriented(96, 96, (48.0, 47.0), angle, half_len=20.0 + 3 + 1.5, half_wid=4.0 + 3 + 1.5)
    inner = _oriented(96, 96, (48.0, 47.0), angle, half_len=20.0 + 3 - 1.5, half_wid=4.0 + 3 - 1.5)
    assert bool((~bar | outer).all()) and bool((bar | ~inner).all())          # and is that box, to a pixel
    assert not bool(_bar(torch.zeros(1, 96, 96, dtype=torch.bool), margin=3).any())


def test_one_bone_is_covered_and_unannotated_the_rest_untouched():
    y = _hand(b=16)
    x = torch.rand(16, 1, 64, 48) * 0.5
    x2, y2 = occlude_bones(x, y, p=1.0, margin=1, generator=torch.Generator().manual_seed(0))
    for k in range(16):
        gone = [c for c in range(1, 8) if not bool((y2[k] == c).any())]
        assert len(gone) == 1                                                  # exactly one bone removed
        c = gone[0]
        assert torch.equal(y2[k][y[k] != c], y[k][y[k] != c])                  # every other label kept
        assert bool((y2[k][y[k] == c] == 0).all())
        changed = x2[k, 0] != x[k, 0]
        bone = (y[k] == c).any(dim=0)
        assert bool(changed[bone].all())                                       # the bone is hidden
        level = x2[k, 0][changed].unique()
        assert level.numel() == 1 and WHITE[0] <= float(level) <= WHITE[1]     # by one opaque level
        assert int(changed.sum()) == 5 * 37                                    # its box, widened by 1 px


def test_the_bone_is_drawn_uniformly_among_those_present_with_frequency_p():
    y = torch.zeros(4000, 1, 24, 24, dtype=torch.uint8)
    for c, row in ((2, 2), (5, 10), (7, 18)):
        y[:, :, row:row + 3, 3:20] = c
    y[:200] = 0                                                                # 5 % without any bone
    _, y2 = occlude_bones(torch.rand(4000, 1, 24, 24), y, p=0.4, generator=torch.Generator().manual_seed(1))
    removed = (y2 != y).flatten(1).any(dim=1)
    assert not bool(removed[:200].any())                                       # nothing to occlude
    share = removed[200:].float().mean().item()
    assert abs(share - 0.4) < 0.03
    counts = {c: int(((y == c) & (y2 == 0)).flatten(1).any(dim=1).sum()) for c in range(1, 8)}
    assert counts[1] == counts[3] == counts[4] == counts[6] == 0
    n = sum(counts.values())
    assert n == int(removed.sum())
    for c in (2, 5, 7):
        assert abs(counts[c] / n - 1 / 3) < 0.04


def test_probability_zero_draws_nothing_and_changes_nothing():
    y, x = _hand(b=3), torch.rand(3, 1, 64, 48)
    g = torch.Generator().manual_seed(5)
    x2, y2 = occlude_bones(x, y, p=0.0, generator=g)
    assert x2 is x and y2 is y
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=torch.Generator().manual_seed(5)))


def test_option_is_validated():
    with pytest.raises(BenchError, match="occlude_p must lie in"):
        resolve("smoke", sets={"segmentation.occlude_p": "1.5"})
    assert resolve("smoke", sets={"segmentation.occlude_p": "0.2"}).segmentation.occlude_p == 0.2
