"""Phantom rendering: analytic line integrals, cortical profiles, the paper's 224-px premise.

The profile tests render one clinical subject at full resolution (0.1 mm) without nuisance,
at two T-scores (same geometry), and measure the cortex across the M2 mid-shaft.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import map_coordinates

from bench.data.phantom import (PhantomConfig, clean_nuisance, render_subject, sample_nuisance,
                                sample_population, sample_subject)
from bench.data.phantom.anatomy import Ellipsoid, Tube
from bench.data.phantom.imaging import exposed_field, form_image
from bench.data.phantom.render import MU_BONE, MU_MARROW, MU_SOFT, Grid, add_ellipsoid, add_tube
from bench.data.phantom.subject import TARGETS, bone_geometry, latent_bones
from bench.data.phantom.texture import TrabecularTexture

CLINICAL_FULL = PhantomConfig.for_preset("clinical", "paper")


def _texture():
    return TrabecularTexture.generate(np.random.default_rng(0), 0.2, 0.1)


def test_tube_line_integral_matches_the_analytic_chords():
    """Mid-shaft of a long straight tube without trabeculae: p(d) from circle chords."""
    grid = Grid(200, 800, 0.1)
    t = Tube("M2", 4, np.array([5.05, 10.05]), np.array([75.05, 10.05]), r_shaft=4.0, r_prox=6.0,
             r_dist=6.0, flare_prox=10.0, flare_dist=10.0, cap_prox=3.0, cap_dist=3.0,
             cortical_index=0.5, end_cortex_mm=0.5, trabecular_density=0.0, depth_ratio=0.8)
    p = np.zeros((grid.height, grid.width), np.float32)
    tex = _texture()
    raster = add_tube(p, grid, t, tex, tex.pattern(0.2), (0, 0), keep=True)
    col = 400                                                 # x = 40.05 mm: mid-shaft
    R, r, k = 4.0, 2.0, 0.8
    for d in (0.0, 1.0, 2.0, 3.0, 3.9):
        row = 100 + int(round(d / 0.1))                       # y = 10.05 + d
        outer = 2 * k * np.sqrt(max(R * R - d * d, 0))
        inner = 2 * k * np.sqrt(max(r * r - d * d, 0))
        expected = (MU_BONE - MU_SOFT) * (outer - inner) + (MU_MARROW - MU_SOFT) * inner
        assert p[row, col] == pytest.approx(expected, rel=2e-3, abs=2e-4)
    assert p[100 + 45, col] == 0.0                              # outside the bone
    # the mask's signed distance is the distance to the outer surface
    assert raster.sd[100 - raster.rows.start, col - raster.cols.start] == pytest.approx(-4.0, abs=1e-3)
    assert raster.sd[130 - raster.rows.start, col - raster.cols.start] == pytest.approx(-1.0, abs=1e-3)
    # the cortical chord peaks at the inner radius: two peaks around a medullary dip
    profile = p[100:145, col]
    assert np.argmax(profile) == 20


def test_ellipsoid_line_integral_at_centre():
    grid = Grid(100, 100, 0.2)
    e = Ellipsoid("lunate", np.array([10.1, 10.1]), 5.0, 4.0, 3.0, 0.3, 0.5, 0.0)
    p = np.zeros((grid.height, grid.width), np.float32)
    tex = _texture()
    add_ellipsoid(p, grid, e, tex, tex.pattern(0.2), (0, 0))
    expected = (MU_BONE - MU_SOFT) * 2 * 0.5 + (MU_MARROW - MU_SOFT) * 2 * 2.5
    assert p[50, 50] == pytest.approx(expected, rel=1e-3)
    assert p[50, 50 + 26] == 0.0                                # beyond a = 5 mm


def test_image_is_bone_bright_and_monotone_in_attenuation():
    cfg = PhantomConfig.for_preset("public", "smoke")
    grid = Grid(cfg.height, cfg.width, cfg.pixel_spacing_mm)
    p = np.tile(np.linspace(0.0, 3.0, grid.width, dtype=np.float32), (grid.height, 1))
    nz = clean_nuisance(cfg)
    img = form_image(p, grid, nz, np.random.default_rng(0), exposed_field(grid, nz))
    row = img[grid.height // 2, 3:-3].astype(int)
    assert np.all(np.diff(row) >= 0) and row[-1] > row[0] + 30000


@pytest.fixture(scope="module")
def full_res():
    """The same clinical subject at T = +1 and T = -3, clean, at 0.1 mm."""
    subject = sample_subject(CLINICAL_FULL, np.random.default_rng(3), "x")
    out = {}
    for t in (1.0, -3.0):
        s = subject.with_t_score(t)
        r = render_subject(CLINICAL_FULL, s, clean_nuisance(CLINICAL_FULL), np.random.default_rng(0))
        out[t] = (s, r)
    return out


def _profile(image: np.ndarray, tube, spacing: tuple[float, float]):
    """Intensity along the normal through the mid-shaft, +-8 mm in 0.02 mm steps."""
    c, n = tube.centre_point(0.5), tube.normal
    ts = np.arange(-8.0, 8.0, 0.02)
    pts = c[None] + ts[:, None] * n[None]
    prof = map_coordinates(image, [pts[:, 1] / spacing[1] - 0.5, pts[:, 0] / spacing[0] - 0.5], order=1)
    return ts, prof


def _cortex(ts: np.ndarray, prof: np.ndarray, radius: float) -> float:
    """Mean distance between each cortical peak and the steepest outer edge beyond it (mm)."""
    grad = np.gradient(prof, ts)
    out = []
    for side in (-1, 1):
        near = (side * ts > 0) & (side * ts < radius + 1.5)
        ip = int(np.argmax(np.where(near, prof, -np.inf)))
        beyond = near & (side * ts > side * ts[ip])
        ie = int(np.argmax(np.where(beyond, -side * grad, -np.inf)))
        out.append(abs(ts[ie] - ts[ip]))
    return float(np.mean(out))


def test_metacarpal_profile_has_two_cortical_peaks_and_thins_with_t(full_res):
    thickness = {}
    for t, (s, r) in full_res.items():
        img = r.image.astype(np.float32) / 65535.0
        m2 = r.hand.target("M2")
        radius = m2.radius_at(0.5)
        ts, prof = _profile(img, m2, (0.1, 0.1))
        left = prof[(ts < 0) & (ts > -radius)].max()
        right = prof[(ts > 0) & (ts < radius)].max()
        centre = prof[np.abs(ts) < 0.3].mean()
        tissue = np.median(prof[(np.abs(ts) > radius + 1.0) & (np.abs(ts) < radius + 2.0)])
        assert centre < min(left, right) - 0.03                   # medullary dip
        assert tissue < centre                                    # bone above soft tissue
        thickness[t] = _cortex(ts, prof, radius)
        truth = s.bone("M2")["cortical_index"] * m2.r_shaft
        assert thickness[t] == pytest.approx(truth, abs=0.4)
    assert thickness[-3.0] < thickness[1.0] - 0.2                 # thinner cortex at low T


def test_downsized_image_loses_the_cortex_but_a_bone_patch_keeps_it(full_res):
    """Paper premise. A 224 x 224 resize of a 2515 x 3588 image has 1.12 x 1.60 mm pixels;
    a 224-px bone patch cut at native resolution (0.1 mm) keeps the cortex over 10 px."""
    cfg = CLINICAL_FULL
    px_resized = cfg.width * cfg.pixel_spacing_mm / 224          # across a near-vertical metacarpal
    pop = sample_population(cfg, 2000, np.random.default_rng(0))
    ci, _ = latent_bones(pop.t_score, pop.z, cfg.signal)
    diameter, _ = bone_geometry(pop)
    m2 = TARGETS.index("M2")
    cortex_mm = diameter[:, m2] / 2 * ci[:, m2]
    assert np.median(cortex_mm / px_resized) < 2.0
    assert np.percentile(cortex_mm / px_resized, 95) < 2.2
    assert np.percentile(cortex_mm / cfg.pixel_spacing_mm, 1) > 10.0
    # on the rendered image: the M2 cortex measured in a native 224-px crop and after resizing
    s, r = full_res[1.0]
    tube = r.hand.target("M2")
    radius = tube.radius_at(0.5)
    img = r.image.astype(np.float32) / 65535.0
    c = tube.centre_point(0.5) / cfg.pixel_spacing_mm
    i0, j0 = int(c[1]) - 112, int(c[0]) - 112
    crop = img[i0:i0 + 224, j0:j0 + 224]
    assert crop.shape == (224, 224)
    ts, prof = _profile(crop, _shifted(tube, j0 * 0.1, i0 * 0.1), (0.1, 0.1))
    assert _cortex(ts, prof, radius) / cfg.pixel_spacing_mm > 10.0
    small = np.asarray(Image.fromarray(img).resize((224, 224), Image.BOX))
    sx, sy = cfg.width * cfg.pixel_spacing_mm / 224, cfg.height * cfg.pixel_spacing_mm / 224
    ts, prof = _profile(small, tube, (sx, sy))
    assert _cortex(ts, prof, radius) / sx < 2.0


def _shifted(tube, dx: float, dy: float):
    import dataclasses

    off = np.array([dx, dy])
    return dataclasses.replace(tube, p0=tube.p0 - off, p1=tube.p1 - off)


MISSING_ALWAYS = PhantomConfig.for_preset("clinical", "smoke").replace(missing_rate=1.0)


def _missing_bone_draws(n: int):
    """(subject, nuisance, generator) of `n` smoke clinical draws, each with one bone made missing."""
    for i in range(n):
        rng = np.random.default_rng(i)
        s = sample_subject(MISSING_ALWAYS, rng, "x")
        yield s, sample_nuisance(MISSING_ALWAYS, s, rng), rng


def test_absent_bones_are_missing_from_the_exact_mask():
    cfg = MISSING_ALWAYS
    reasons = set()
    for s, nz, rng in _missing_bone_draws(8):
        r = render_subject(cfg, s, nz, rng)
        cid = TARGETS.index(nz.missing_bone) + 1
        assert not r.present[nz.missing_bone] and not np.any(r.truth == cid)
        assert sum(r.present.values()) == 6
        assert {TARGETS.index(b.name) + 1 for b in r.bones} == set(np.unique(r.truth)) - {0}
        reasons.add(nz.missing_reason)
        if nz.collimated:
            exposed = np.ones(r.truth.shape, bool)
            r.field.blank_outside(exposed, False)
            assert exposed.mean() < 1.0
            assert not np.any(r.truth[~exposed])                # labels only in the exposed field
    assert reasons == {"collimation", "occluder"}


def test_nothing_under_a_splint_plate_is_labelled_and_a_forearm_plate_hides_the_whole_bone():
    """phantom-1.2: the plate's core hides its bone whole and whatever of a neighbour it covers."""
    import copy
    import dataclasses

    from bench.data.phantom.annotators import label_map

    cfg = MISSING_ALWAYS
    seen = set()
    for s, nz, rng in _missing_bone_draws(40):
        if nz.missing_reason != "occluder":
            continue
        seen.add(nz.missing_bone in ("radius", "ulna"))
        r = render_subject(cfg, s, nz, copy.deepcopy(rng), keep_line_integral=True)
        clean = dataclasses.replace(nz, occluder=None, missing_bone="", missing_reason="")
        r0 = render_subject(cfg, s, clean, copy.deepcopy(rng), keep_line_integral=True)
        core = (r.line_integral - r0.line_integral) > 4.5      # the plate at full opacity (6 per unit)
        assert core.any()
        assert not r.truth[core].any()                           # no bone labelled under the plate
        exposed = np.ones(core.shape, bool)
        r.field.blank_outside(exposed, False)
        hidden_bone = r0.truth == TARGETS.index(nz.missing_bone) + 1
        assert not (hidden_bone & exposed & ~core).sum() > 0.01 * hidden_bone.sum()   # none of it left in view
        ann = label_map(r.truth.shape, r0.bones, cfg.pixel_spacing_mm, r.field)
        assert not ann[core].any()                               # an annotator's map too
        if seen == {True, False}:
            break
    assert seen == {True, False}                                 # a forearm and a metacarpal plate were tried
