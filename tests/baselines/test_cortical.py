"""2MCI edges on hand-built profiles (exact), on an analytically projected tube, and the logistic helper."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.data.format import BONES
from bench.errors import BenchError
from baselines.cortical import measure_bone, profile_edges
from baselines.logistic import fit_logistic


def _step_profile(shift: float = 0.0):
    """Samples every 0.5: background 0.1, cortex 1.0 for 3.25 < |u - shift| < 8.25, cavity 0.5 inside."""
    u = np.arange(-20.0, 20.001, 0.5)
    d = np.abs(u - shift)
    p = np.where(d < 3.25, 0.5, np.where(d < 8.25, 1.0, 0.1))
    mask = (d < 8.25).astype(float)
    return u, p, mask


@pytest.mark.parametrize("shift", [0.0, 1.5, -2.0])
@pytest.mark.parametrize("outer", ["intensity", "mask"])
def test_step_profile_edges_are_exact(shift, outer):
    u, p, mask = _step_profile(shift)
    e = profile_edges(u, p, mask, outer_edge=outer, margin=1.0)
    # every step lies halfway between two samples: the forward-difference edges find it exactly
    assert (e.outer_left, e.outer_right) == pytest.approx((shift - 8.25, shift + 8.25), abs=1e-12)
    assert (e.inner_left, e.inner_right) == pytest.approx((shift - 3.25, shift + 3.25), abs=1e-12)
    assert e.cortical_index == pytest.approx(1 - 6.5 / 16.5, abs=1e-12)


def test_neighbouring_bone_outside_the_mask_is_ignored():
    u, p, mask = _step_profile()
    p = np.where((u > 12.0) & (u < 16.0), 1.5, p)   # a brighter neighbour just beyond the margin
    e = profile_edges(u, p, mask, margin=1.0)
    assert (e.outer_left, e.outer_right) == pytest.approx((-8.25, 8.25))
    e_blind = profile_edges(u, p, None)              # without the mask the neighbour's fall wins
    assert e_blind.outer_right == pytest.approx(15.75)   # the neighbour ends between 15.5 and 16.0


def test_solid_bone_has_no_cavity():
    u = np.arange(-10.0, 10.001, 0.5)
    p = np.where(np.abs(u) < 5.25, 1.0, 0.0)
    e = profile_edges(u, p, (np.abs(u) < 5.25).astype(float))
    assert np.isnan(e.cortical_index)


def _tube_image(R: float, r: float, angle_deg: float, spacing: float = 0.1):
    """Analytic projection of a hollow tube (no blur) and its mask (class M2), centred at (200, 200)."""
    yy, xx = np.mgrid[0:400, 0:400].astype(float)
    a = np.deg2rad(angle_deg)
    t = (yy - 200) * np.cos(a) + (xx - 200) * np.sin(a)
    d = -(yy - 200) * np.sin(a) + (xx - 200) * np.cos(a)
    chord = lambda rad: 2 * np.sqrt(np.clip(rad ** 2 - d ** 2, 0, None))   # noqa: E731
    image = 0.1 + 0.004 * (chord(R) - chord(r)) + 0.001 * chord(r)
    inside = np.abs(t) <= 150
    image[~inside] = 0.1
    labels = np.zeros((400, 400), np.uint8)
    labels[(np.abs(d) <= R) & inside] = BONES["M2"]
    return image.astype(np.float32), labels


@pytest.mark.parametrize("angle", [0.0, 30.0, 75.0])
def test_projected_tube_cortical_index(angle):
    image, labels = _tube_image(40.0, 24.0, angle)
    m = measure_bone(image, labels, "M2", 0.1)
    assert m.profiles == 9
    assert m.cortical_index == pytest.approx(0.4, abs=0.01)
    assert m.outer_mm == pytest.approx(8.0, abs=0.15) and m.inner_mm == pytest.approx(4.8, abs=0.15)
    missing = measure_bone(image, labels, "M3", 0.1)
    assert np.isnan(missing.cortical_index) and missing.profiles == 0


def test_fit_logistic_selects_c_on_validation():
    rng = np.random.default_rng(0)
    n = 200
    x = rng.normal(size=n)
    table = pd.DataFrame({"split": np.where(np.arange(n) % 10 < 7, "train", np.where(np.arange(n) % 10 < 9, "val", "test")),
                          "y_true": (x + 0.5 * rng.normal(size=n) < -0.5).astype(int), "a": x, "b": np.nan})
    table.loc[3, "a"] = np.nan                      # imputed with the train median
    fit = fit_logistic(table, ["a", "b"], (0.001, 1.0))
    assert fit.c == 1.0 and len(fit.history) == 2   # C = 0.001 shrinks to the majority class on val
    assert fit.p_pos[table["a"].idxmin()] > 0.9 and fit.p_pos[table["a"].idxmax()] < 0.1
    with pytest.raises(BenchError, match="single class"):
        fit_logistic(table.assign(y_true=0), ["a"])


def test_smoothing_is_a_gaussian_of_physical_width_with_a_small_bias_on_a_clean_tube(monkeypatch):
    import baselines.cortical as cortical
    from scipy import ndimage

    image, labels = _tube_image(40.0, 24.0, 30.0)
    seen = []
    original = cortical.profile_edges
    monkeypatch.setattr(cortical, "profile_edges", lambda u, p, *a, **k: seen.append(p) or original(u, p, *a, **k))
    raw = measure_bone(image, labels, "M2", 0.1)
    smooth = measure_bone(image, labels, "M2", 0.1, smooth_mm=0.2)
    # σ = 0.2 mm at 0.1 mm/px sampled every 0.25 px: 8 samples
    np.testing.assert_allclose(seen[1], ndimage.gaussian_filter1d(seen[0], 8.0, mode="nearest"))
    assert raw.cortical_index == pytest.approx(0.4, abs=0.01)
    assert 0.0 < smooth.cortical_index - raw.cortical_index < 0.03     # the endosteal cusp moves inward a little
