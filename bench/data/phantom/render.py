"""Projection of the hand model: Beer-Lambert line integrals through 3-D cross sections.

For every pixel the line integral p = sum(mu * path length) is accumulated analytically:

* tubular bones: at perpendicular distance d from the (bowed) centre line, a ray crosses the
  outer ellipse of half-width R(u) in a chord 2 k sqrt(R^2 - d^2) (k: depth/width ratio) and
  the medullary cavity of radius r(u) = R(u) - cortical thickness in 2 k sqrt(r^2 - d^2); the
  cortical shell path is the difference. End caps are ellipsoidal. The medullary path carries
  trabecular bone (BV/TV times the strut texture) in the ends and mostly marrow in the shaft.
* carpals and sesamoids: nested ellipsoids (cortical shell, trabecular core).
* soft tissue: union (maximum) of the chords through the forearm, palm, eminence and finger
  envelopes; bone replaces the soft tissue it displaces (mu_bone - mu_soft).
* metal (rings, watches, lead markers, splint plates): very high attenuation.
Overlapping bones add up. Everything is vectorised over per-primitive bounding boxes.
Attenuation coefficients (1/mm) are those of a ~50 kVp hand exposure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.data.phantom.anatomy import Capsule, Ellipsoid, Hand, Slab, Tube
from bench.data.phantom.nuisance import Nuisance
from bench.data.phantom.texture import TrabecularTexture

MU_SOFT = 0.028        # soft tissue (water-like)
MU_BONE = 0.16         # fully mineralised bone tissue (cortex; trabeculae scaled by BV/TV)
MU_MARROW = 0.026      # marrow (fatty)
MU_METAL = 3.0         # gold / steel / lead: practically opaque over a millimetre
MASK_MARGIN_MM = 1.5   # bounding-box margin around bones (annotators dilate up to 0.6 mm)


@dataclass
class Grid:
    """Detector grid: pixel (i, j) has its centre at ((j + 0.5) s, (i + 0.5) s) mm."""

    height: int
    width: int
    spacing: float

    def window(self, lo: np.ndarray, hi: np.ndarray):
        """Rows, cols and pixel-centre coordinates (Y column, X row, float32 mm) of a box, or None."""
        s = self.spacing
        i0, i1 = max(int(math.floor(lo[1] / s)), 0), min(int(math.ceil(hi[1] / s)) + 1, self.height)
        j0, j1 = max(int(math.floor(lo[0] / s)), 0), min(int(math.ceil(hi[0] / s)) + 1, self.width)
        if i0 >= i1 or j0 >= j1:
            return None
        y = ((np.arange(i0, i1, dtype=np.float32) + 0.5) * s)[:, None]
        x = ((np.arange(j0, j1, dtype=np.float32) + 0.5) * s)[None, :]
        return slice(i0, i1), slice(j0, j1), y, x


@dataclass
class ExposedField:
    """The exposed (collimated) field: a pixel box, optionally cut by an oblique blade.

    A pixel is exposed if it lies in rows i0:i1, cols j0:j1 and, with a blade (nx, ny, c),
    its centre (x, y) in mm satisfies nx x + ny y < c.
    """

    i0: int
    j0: int
    i1: int
    j1: int
    blade: tuple[float, float, float] | None = None
    spacing: float = 1.0
    plate: tuple[float, float, float, float, float, float] | None = None   # opaque plate: cx, cy, ax, ay, half-length, half-width (mm)

    def blank_outside(self, a: np.ndarray, value) -> None:
        """Set every unexposed pixel of the full-size array `a` to `value` (in place)."""
        for sl in (np.s_[:self.i0, :], np.s_[self.i1:, :], np.s_[:, :self.j0], np.s_[:, self.j1:]):
            a[sl] = value
        if self.blade is not None:
            nx, ny, c = self.blade
            s = self.spacing
            y = ((np.arange(self.i0, self.i1, dtype=np.float32) + 0.5) * s)[:, None]
            x = ((np.arange(self.j0, self.j1, dtype=np.float32) + 0.5) * s)[None, :]
            inner = a[self.i0:self.i1, self.j0:self.j1]
            inner[(x * nx + y * ny) >= c] = value

    def blank_hidden(self, a: np.ndarray, value) -> None:
        """Set the pixels under the opaque plate (its core, where it is drawn at full opacity's half or
        more) of the full-size array `a` to `value` (in place): nothing under it can be seen or annotated."""
        if self.plate is None:
            return
        cx, cy, ax, ay, half_length, half_width = self.plate
        s = self.spacing
        y = ((np.arange(a.shape[0], dtype=np.float32) + 0.5) * s)[:, None]
        x = ((np.arange(a.shape[1], dtype=np.float32) + 0.5) * s)[None, :]
        uu = (x - cx) * ax + (y - cy) * ay
        vv = (y - cy) * ax - (x - cx) * ay
        a[(np.abs(uu) < half_length - 0.25) & (np.abs(vv) < half_width - 0.25)] = value

    def scale_outside(self, a: np.ndarray, factor: float) -> None:
        """Multiply every unexposed pixel of `a` by `factor` (in place)."""
        keep = np.ones(a.shape, dtype=bool)
        self.blank_outside(keep, False)
        a[~keep] *= factor


@dataclass
class BoneRaster:
    """Geometry of one target bone over its bounding box, for masks and annotators."""

    name: str
    class_id: int
    rows: slice
    cols: slice
    sd: np.ndarray           # approximate signed distance to the outer surface (mm, < 0 inside)
    u: np.ndarray            # position along the bone from its proximal tip (mm)
    head_start: float        # u beyond which lies the distal head / epiphysis


def _flare(x: np.ndarray) -> np.ndarray:
    """1 at x <= 0 falling smoothly (half cosine) to 0 at x >= 1."""
    return 0.5 * (1.0 + np.cos(np.pi * np.clip(x, 0.0, 1.0)))


def _profile(t: Tube, u: np.ndarray, end_dist) -> tuple[np.ndarray, np.ndarray]:
    """Outer radius R(u) and shaft weight (1 in the shaft, 0 at the ends)."""
    g0 = _flare((u - t.cap_prox) / t.flare_prox)
    g1 = _flare((end_dist - u) / t.flare_dist)
    radius = t.r_shaft + (t.r_prox - t.r_shaft) * g0 + (t.r_dist - t.r_shaft) * g1
    return radius, (1.0 - g0) * (1.0 - g1)


def tube_radius(t: Tube, u: np.ndarray) -> np.ndarray:
    """Outer radius at axial positions u (mm from the proximal tip), untilted end."""
    return _profile(t, np.asarray(u, dtype=float), t.length - t.cap_dist)[0]


def _chord(r: np.ndarray, rho2: np.ndarray, k: float) -> np.ndarray:
    out = r * r - rho2
    np.maximum(out, 0.0, out=out)
    np.sqrt(out, out=out)
    out *= 2.0 * k
    return out


def add_tube(p: np.ndarray, grid: Grid, t: Tube, texture: TrabecularTexture, pattern: np.ndarray,
             offset: tuple[int, int], keep: bool) -> BoneRaster | None:
    """Add a tubular bone's line integral to `p`; return its raster geometry if `keep`."""
    L = t.length
    rmax = max(t.r_shaft, t.r_prox, t.r_dist) + abs(t.bow_mm) + MASK_MARGIN_MM
    lo = np.minimum(t.p0, t.p1) - rmax
    hi = np.maximum(t.p0, t.p1) + rmax
    win = grid.window(lo, hi)
    if win is None:
        return None
    rows, cols, y, x = win
    a, n = t.axis.astype(np.float32), t.normal.astype(np.float32)
    dx, dy = x - np.float32(t.p0[0]), y - np.float32(t.p0[1])
    u = dx * a[0] + dy * a[1]
    v = dx * n[0] + dy * n[1]
    if t.bow_mm:
        tt = np.clip(u / L, 0.0, 1.0)
        v -= 4.0 * t.bow_mm * tt * (1.0 - tt)
        v /= np.sqrt(1.0 + (4.0 * t.bow_mm * (1.0 - 2.0 * tt) / L) ** 2)
    end_dist = (L - t.cap_dist) + t.tilt_dist * v if t.tilt_dist else L - t.cap_dist
    radius, w_shaft = _profile(t, u, end_dist)
    q0 = np.maximum(t.cap_prox - u, 0.0)
    q1 = np.maximum(u - end_dist, 0.0)
    v2 = v * v
    rho2 = v2 + (q0 * (radius / t.cap_prox)) ** 2 + (q1 * (radius / t.cap_dist)) ** 2
    c_out = _chord(radius, rho2, t.depth_ratio)
    t_shaft = t.cortical_index * t.r_shaft
    thick = t.end_cortex_mm + (t_shaft - t.end_cortex_mm) * w_shaft
    r_in = np.maximum(radius - thick, 0.05)
    cp_in, cd_in = max(t.cap_prox - t.end_cortex_mm, 0.3), max(t.cap_dist - t.end_cortex_mm, 0.3)
    rho2_in = v2 + (q0 * (r_in / cp_in)) ** 2 + (q1 * (r_in / cd_in)) ** 2
    c_in = _chord(r_in, rho2_in, t.depth_ratio)
    density = t.trabecular_density * (1.0 - 0.85 * w_shaft)
    if t.physis_mm:
        density = density + 0.4 * t.trabecular_density * np.exp(-((L - t.physis_mm - u) / 0.8) ** 2)
    tex = texture.sample(pattern, u, v, offset)
    mu_med = MU_BONE * density * tex + MU_MARROW * (1.0 - density) - MU_SOFT
    contrib = (MU_BONE - MU_SOFT) * (c_out - c_in) + mu_med * c_in
    p[rows, cols] += contrib.astype(np.float32, copy=False)
    if not keep:
        return None
    sd = (np.sqrt(rho2) - radius).astype(np.float32)
    return BoneRaster(t.name, t.class_id, rows, cols, sd, u.astype(np.float32), L - t.head_mm)


def add_ellipsoid(p: np.ndarray, grid: Grid, e: Ellipsoid, texture: TrabecularTexture,
                  pattern: np.ndarray, offset: tuple[int, int]) -> None:
    """Add a carpal/sesamoid: cortical shell around a trabecular core."""
    r = max(e.a, e.b)
    win = grid.window(e.centre - r, e.centre + r)
    if win is None:
        return
    rows, cols, y, x = win
    ca, sa = np.float32(math.cos(e.angle)), np.float32(math.sin(e.angle))
    dx, dy = x - np.float32(e.centre[0]), y - np.float32(e.centre[1])
    lu = dx * ca + dy * sa
    lv = dy * ca - dx * sa
    r2 = (lu / e.a) ** 2 + (lv / e.b) ** 2
    c_out = _chord(np.float32(e.c), r2 * np.float32(e.c * e.c), 1.0)
    ai, bi, ci = e.a - e.shell_mm, e.b - e.shell_mm, e.c - e.shell_mm
    r2i = (lu / ai) ** 2 + (lv / bi) ** 2
    c_in = _chord(np.float32(ci), r2i * np.float32(ci * ci), 1.0)
    tex = texture.sample(pattern, lu, lv, offset)
    mu_med = MU_BONE * e.trabecular_density * tex + MU_MARROW * (1.0 - e.trabecular_density) - MU_SOFT
    p[rows, cols] += (MU_BONE - MU_SOFT) * (c_out - c_in) + mu_med * c_in


def add_capsule(soft: np.ndarray, grid: Grid, c: Capsule) -> None:
    """Soft-tissue chord through a tapered capsule, united (maximum) into `soft`."""
    r = max(c.r0, c.r1)
    win = grid.window(np.minimum(c.p0, c.p1) - r, np.maximum(c.p0, c.p1) + r)
    if win is None:
        return
    rows, cols, y, x = win
    d = c.p1 - c.p0
    length = float(np.hypot(*d))
    a = (d / length).astype(np.float32)
    dx, dy = x - np.float32(c.p0[0]), y - np.float32(c.p0[1])
    tt = np.clip((dx * a[0] + dy * a[1]) / length, 0.0, 1.0)
    ex = dx - tt * (length * a[0])
    ey = dy - tt * (length * a[1])
    rad = c.r0 + (c.r1 - c.r0) * tt
    chord = _chord(rad, ex * ex + ey * ey, c.depth_ratio)
    np.maximum(soft[rows, cols], chord, out=soft[rows, cols])


def add_slab(soft: np.ndarray, grid: Grid, sl: Slab) -> None:
    """The palm: thickness with circular fillets of radius round_mm at the polygon edge."""
    vx = sl.vertices
    win = grid.window(vx.min(axis=0), vx.max(axis=0))
    if win is None:
        return
    rows, cols, y, x = win
    area = 0.5 * np.sum(vx[:, 0] * np.roll(vx[:, 1], -1) - np.roll(vx[:, 0], -1) * vx[:, 1])
    inside = None
    for i in range(len(vx)):
        p0, p1 = vx[i], vx[(i + 1) % len(vx)]
        e = (p1 - p0) / np.hypot(*(p1 - p0))
        nrm = np.array([-e[1], e[0]]) * (1.0 if area > 0 else -1.0)     # inward normal
        s = (x - np.float32(p0[0])) * np.float32(nrm[0]) + (y - np.float32(p0[1])) * np.float32(nrm[1])
        inside = s if inside is None else np.minimum(inside, s)
    q = 1.0 - np.clip(inside / sl.round_mm, 0.0, 1.0)
    path = sl.thickness * np.sqrt(np.maximum(1.0 - q * q, 0.0)) * (inside > 0)
    np.maximum(soft[rows, cols], path.astype(np.float32), out=soft[rows, cols])


def _segments_distance(x: np.ndarray, y: np.ndarray, segs: np.ndarray) -> np.ndarray:
    """Distance from pixel centres to the nearest of the segments (k, 2, 2)."""
    best = None
    for (ax, ay), (bx, by) in segs:
        ddx, ddy = bx - ax, by - ay
        ln2 = max(ddx * ddx + ddy * ddy, 1e-9)
        tt = np.clip(((x - ax) * ddx + (y - ay) * ddy) / ln2, 0.0, 1.0)
        d = np.hypot(x - ax - tt * ddx, y - ay - tt * ddy)
        best = d if best is None else np.minimum(best, d)
    return best


def _glyph(letter: str) -> np.ndarray:
    """Stroke segments of a lead marker letter in height units (x right, y down, centred)."""
    if letter == "L":
        segs = [((0, 0), (0, 1)), ((0, 1), (0.55, 1))]
    else:
        arc = [(0.3 + 0.25 * math.cos(a), 0.25 + 0.25 * math.sin(a)) for a in np.linspace(-math.pi / 2, math.pi / 2, 7)]
        segs = [((0, 0), (0, 1)), ((0, 0), (0.3, 0)), ((0.3, 0.5), (0, 0.5)), ((0.25, 0.5), (0.6, 1))]
        segs += [(arc[i], arc[i + 1]) for i in range(len(arc) - 1)]
    return np.array(segs, dtype=float) - np.array([0.3, 0.5])


def add_metal(p: np.ndarray, grid: Grid, hand: Hand, nz: Nuisance) -> None:
    """Rings, watch, lead marker and splint plate."""
    if nz.ring is not None:
        t = hand.target(f"P{nz.ring.finger}-prox")
        cap = hand.finger_capsules[nz.ring.finger]
        centre = t.centre_point(nz.ring.frac)
        tt = np.clip(np.dot(centre - cap.p0, cap.p1 - cap.p0) / np.sum((cap.p1 - cap.p0) ** 2), 0, 1)
        ri = 0.92 * (cap.r0 + (cap.r1 - cap.r0) * tt)
        ro = ri + nz.ring.thickness_mm
        _add_band(p, grid, centre, t.axis, nz.ring.width_mm / 2, ri, ro)
    if nz.watch is not None and hand.forearm is not None:
        rad, uln = hand.target("radius"), hand.target("ulna")
        axis = rad.axis
        centre = 0.5 * (rad.p1 + uln.p1) - axis * nz.watch.distance_mm
        _add_watch(p, grid, centre, axis, nz.watch, hand.forearm.r1 * 1.1)
    if nz.marker is not None:
        m = nz.marker
        h = m.height_mm
        c = np.array(m.centre_mm)
        win = grid.window(c - 1.2 * h, c + 1.2 * h)
        if win is not None:
            rows, cols, y, x = win
            ang = math.radians(m.angle_deg)
            rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
            segs = (_glyph(m.letter) * h) @ rot.T + c
            d = _segments_distance(x, y, segs)
            pen = 0.08 * h
            ink = np.clip((pen - d) / max(grid.spacing, 0.2) + 0.5, 0.0, 1.0)
            holder = ((np.abs(x - c[0]) < 0.55 * h) & (np.abs(y - c[1]) < 0.75 * h)).astype(np.float32)
            p[rows, cols] += 7.0 * ink + 0.25 * holder
    if nz.occluder is not None:
        o = nz.occluder
        c, a = np.array(o.centre_mm), np.array(o.axis)
        r = o.half_length_mm + o.half_width_mm
        win = grid.window(c - r, c + r)
        if win is not None:
            rows, cols, y, x = win
            uu = (x - c[0]) * a[0] + (y - c[1]) * a[1]
            vv = (y - c[1]) * a[0] - (x - c[0]) * a[1]
            edge = np.minimum(o.half_length_mm - np.abs(uu), o.half_width_mm - np.abs(vv))
            p[rows, cols] += 6.0 * np.clip(edge / 0.5, 0.0, 1.0)


def _add_band(p, grid, centre, axis, half_width, ri, ro) -> None:
    """A ring: cylindrical metal shell of radii ri < ro around an axis, |u| < half_width."""
    win = grid.window(centre - ro - half_width, centre + ro + half_width)
    if win is None:
        return
    rows, cols, y, x = win
    uu = (x - centre[0]) * axis[0] + (y - centre[1]) * axis[1]
    vv = (y - centre[1]) * axis[0] - (x - centre[0]) * axis[1]
    v2 = vv * vv
    path = _chord(np.float32(ro), v2, 1.0) - _chord(np.float32(ri), v2, 1.0)
    p[rows, cols] += MU_METAL * path * (np.abs(uu) < half_width)


def _add_watch(p, grid, centre, axis, watch, strap_half) -> None:
    r = max(watch.radius_mm, strap_half) + 2
    win = grid.window(centre - r, centre + r)
    if win is None:
        return
    rows, cols, y, x = win
    uu = (x - centre[0]) * axis[0] + (y - centre[1]) * axis[1]
    vv = (y - centre[1]) * axis[0] - (x - centre[0]) * axis[1]
    rr = np.hypot(uu, vv)
    case = np.clip((watch.radius_mm - rr) / 0.4, 0.0, 1.0)
    rim = np.clip(1.0 - np.abs(rr - watch.radius_mm + 1.2) / 1.0, 0.0, 1.0)
    mech = 0.8 * np.cos(rr * 2.1) ** 2
    strap = (np.abs(uu) < 9.0) & (np.abs(vv) < strap_half) & (rr > watch.radius_mm - 0.5)
    strap_mu = (2.5 + 1.5 * np.sign(np.sin(vv * 0.9))) if watch.metal_strap else 0.25
    p[rows, cols] += case * (3.5 + mech) + 3.0 * rim + strap * strap_mu
