"""Image formation and the single-image renderer (`render_subject`).

Detected quanta N = N0 * heel(y) * shutter * exp(-p) with N0 = dose * pixel area; quantum noise
is Poisson, approximated by N + sqrt(N) z (float32); the scintillator blurs the quanta
(Gaussian: site detector blur, extra motion/focal-spot blur, and 0.4 px for pixel
integration); electronic noise is added after the blur. The log transform log(N0 / N) gives
a bone-bright image, windowed between percentiles of the exposed field (metal excluded), put
through the display contrast (gamma) and the site's look-up table, and stored as 16 bits.
Site A blacks out collimated areas (electronic shutter), site B leaves them bright (CR).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from bench.data.phantom.anatomy import Hand, build_hand
from bench.data.phantom.annotators import label_map
from bench.data.phantom.nuisance import SITES, Nuisance
from bench.data.phantom.presets import PhantomConfig
from bench.data.phantom.render import (BoneRaster, ExposedField, Grid, add_capsule, add_ellipsoid, add_metal, add_slab,
                                       add_tube, MU_SOFT)
from bench.data.phantom.subject import TARGETS, Subject
from bench.data.phantom.texture import TILE, TrabecularTexture

SHUTTER = 0.03           # transmission of the collimator blades (plus scatter)
P_MAX = 9.0              # line integrals beyond this are opaque (metal)


@dataclass
class Rendering:
    """One rendered radiograph with its exact geometry."""

    image: np.ndarray                         # uint16 H x W, bone bright
    truth: np.ndarray                         # uint8 H x W exact label map (present bones only)
    bones: list[BoneRaster]                   # present target bones (for annotators)
    present: dict[str, bool]                  # target bone -> annotatable
    field: ExposedField                       # exposed (collimated) field
    hand: Hand
    line_integral: np.ndarray | None = None   # p (float32), kept only on request
    extra: dict = field(default_factory=dict)


def exposed_field(grid: Grid, nz: Nuisance) -> ExposedField:
    """The nuisance's exposed field (box x0, y0, x1, y1 mm and blade) on the pixel grid."""
    s = grid.spacing
    x0, y0, x1, y1 = nz.field_mm
    j0, j1 = int(np.ceil(x0 / s - 0.5)), int(np.floor(x1 / s - 0.5)) + 1
    i0, i1 = int(np.ceil(y0 / s - 0.5)), int(np.floor(y1 / s - 0.5)) + 1
    o = nz.occluder
    plate = None if o is None else (*o.centre_mm, *o.axis, o.half_length_mm, o.half_width_mm)
    return ExposedField(max(i0, 0), max(j0, 0), min(i1, grid.height), min(j1, grid.width),
                        nz.blade, s, plate)


def line_integrals(subject: Subject, nuisance: Nuisance, grid: Grid, rng: np.random.Generator):
    """p = sum mu * path over the hand; returns (p, hand, target rasters)."""
    hand = build_hand(subject, nuisance.pose)
    p = np.zeros((grid.height, grid.width), dtype=np.float32)
    soft = np.zeros_like(p)
    for c in hand.capsules:
        add_capsule(soft, grid, c)
    for sl in hand.slabs:
        add_slab(soft, grid, sl)
    p += MU_SOFT * soft
    del soft
    texture = TrabecularTexture.generate(rng, float(np.mean(subject.trabecular_density)), grid.spacing)
    general = texture.pattern(float(np.mean(subject.trabecular_density)))
    rasters: list[BoneRaster] = []
    for t in hand.tubes:
        offset = tuple(int(o) for o in rng.integers(0, TILE, 2))
        pattern = texture.pattern(t.trabecular_density) if t.class_id else general
        keep = t.class_id > 0 and t.name != nuisance.missing_bone
        r = add_tube(p, grid, t, texture, pattern, offset, keep)
        if r is not None:
            rasters.append(r)
    for e in hand.ellipsoids:
        offset = tuple(int(o) for o in rng.integers(0, TILE, 2))
        add_ellipsoid(p, grid, e, texture, general, offset)
    add_metal(p, grid, hand, nuisance)
    np.clip(p, 0.0, P_MAX, out=p)
    return p, hand, rasters


def _lut(site: str, gamma: float) -> np.ndarray:
    x = np.linspace(0.0, 1.0, 65536)
    if SITES[site]["lut"] == "sigmoid":
        k = 4.0
        x = (np.tanh(k * (x - 0.5)) / np.tanh(k / 2) + 1.0) / 2.0
    return np.round(np.clip(x, 0, 1) ** gamma * 65535.0).astype(np.uint16)


def form_image(p: np.ndarray, grid: Grid, nz: Nuisance, rng: np.random.Generator,
               fld: ExposedField) -> np.ndarray:
    """Detected quanta -> noise -> blur -> log -> window -> LUT; uint16, bone bright."""
    site = SITES[nz.site]
    s = grid.spacing
    n0 = nz.dose_per_mm2 * s * s
    h, w = p.shape
    i0, j0, i1, j1 = fld.i0, fld.j0, fld.i1, fld.j1
    counts = np.negative(p)
    np.exp(counts, out=counts)
    gain = np.float32(n0) * (1.0 + nz.heel * (np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]))
    if site["grid_amp"]:
        rows_mm = (np.arange(h, dtype=np.float32) + 0.5) * s
        gain = gain * (1.0 + site["grid_amp"] * np.sin(2 * np.pi * rows_mm / 0.55))[:, None]
    counts *= gain
    if nz.collimated:
        fld.scale_outside(counts, SHUTTER)
    if nz.noise:
        z = rng.standard_normal(counts.shape, dtype=np.float32)
        z *= np.sqrt(counts)
        counts += z
        del z
    sigma_mm = float(np.hypot(site["blur_mm"], nz.blur_mm))
    sigma = float(np.hypot(sigma_mm / s, 0.4))
    counts = gaussian_filter(counts, sigma, truncate=3.0)
    if nz.noise:
        counts += rng.standard_normal(counts.shape, dtype=np.float32) * np.float32(site["electronic"] * s / 0.1)
    np.maximum(counts, 0.5, out=counts)
    np.log(counts, out=counts)
    logp = np.float32(np.log(n0)) - counts                     # bone bright
    step = max(1, int(np.sqrt((i1 - i0) * (j1 - j0) / 250_000)))
    sample = logp[i0:i1:step, j0:j1:step]
    if fld.blade is not None:                    # only the exposed side of an oblique blade
        nx, ny, c = fld.blade
        ys = (np.arange(i0, i1, step, dtype=np.float32)[:, None] + 0.5) * s
        xs = (np.arange(j0, j1, step, dtype=np.float32)[None, :] + 0.5) * s
        sample = sample[(xs * nx + ys * ny) < c]
    sample = sample.ravel()
    sample = sample[sample < 3.6]                # metal excluded from the window
    if sample.size < 16:
        sample = logp.ravel()[::step]
    lo, hi = np.percentile(sample, nz.window_pct)
    scale = np.float32(65535.0 / max(hi - lo, 1e-3))
    logp -= np.float32(lo)
    logp *= scale
    np.clip(logp, 0.0, 65535.0, out=logp)
    idx = (logp + 0.5).astype(np.uint16)
    image = _lut(nz.site, nz.gamma)[idx]
    if nz.collimated and site["shutter_black"]:
        fld.blank_outside(image, 0)
    return image


def render_subject(config: PhantomConfig, subject: Subject, nuisance: Nuisance,
                   rng: np.random.Generator, keep_line_integral: bool = False) -> Rendering:
    """Render one radiograph of `subject` under `nuisance` at the config's grid."""
    grid = Grid(config.height, config.width, config.pixel_spacing_mm)
    p, hand, rasters = line_integrals(subject, nuisance, grid, rng)
    fld = exposed_field(grid, nuisance)
    truth = label_map(p.shape, rasters, grid.spacing, fld)
    image = form_image(p, grid, nuisance, rng, fld)
    counts = np.bincount(truth.ravel(), minlength=8)
    present = {name: name != nuisance.missing_bone and counts[i + 1] > 0 for i, name in enumerate(TARGETS)}
    rasters = [r for r in rasters if present[r.name]]
    return Rendering(image=image, truth=truth, bones=rasters, present=present, field=fld, hand=hand,
                     line_integral=p if keep_line_integral else None,
                     extra={"pixels": {name: int(counts[i + 1]) for i, name in enumerate(TARGETS)}})
