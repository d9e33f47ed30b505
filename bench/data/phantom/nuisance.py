"""Acquisition nuisance: pose, exposure, detector/site, collimation, markers, metal, missing bones.

Every draw here is independent of the T-score and label (the sampler never looks at them);
the only dependence on the subject is through its size (placement must keep the hand in the
field), so the label cannot be decoded from the nuisance beyond what age and sex carry.

Missing bones (paper: "fewer than seven target image segments ... unusual positioning of the
hand or the presence of accessories or medical apparatus"): with probability `missing_rate`
one target bone is made unannotatable, either by a collimator edge cutting it out of the
exposed field or by an opaque apparatus (splint plate) over it. Otherwise the placement is
re-drawn until all seven target bones lie inside the exposed field, so the realised rate of
images with fewer than seven bones equals `missing_rate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bench.data.phantom.anatomy import Pose, build_hand, target_points
from bench.data.phantom.presets import PhantomConfig
from bench.data.phantom.subject import TARGETS, Subject

#: Detector characteristics of the two acquisition sites.
SITES: dict[str, dict] = {
    # DR flat panel: sharp, low electronic noise, electronic shutter blacks out collimated areas
    "A": dict(blur_mm=0.09, electronic=1.5, grid_amp=0.0, shutter_black=True, lut="linear"),
    # CR plate: blurrier, noisier, visible anti-scatter grid lines, film-like sigmoid LUT
    "B": dict(blur_mm=0.16, electronic=4.0, grid_amp=0.015, shutter_black=False, lut="sigmoid"),
}
FOREARM_EDGE_MM = 35.0          # radius/ulna: the distal part that must be in the field


@dataclass(frozen=True)
class Ring:
    finger: int                 # 2..5
    frac: float                 # position along the proximal phalanx
    width_mm: float             # band width along the finger
    thickness_mm: float         # metal thickness


@dataclass(frozen=True)
class Watch:
    distance_mm: float          # centre, proximal to the radiocarpal joint along the forearm
    radius_mm: float            # case radius
    metal_strap: bool


@dataclass(frozen=True)
class Marker:
    letter: str                 # "L" | "R"
    centre_mm: tuple[float, float]
    angle_deg: float
    height_mm: float


@dataclass(frozen=True)
class Occluder:
    """An opaque apparatus (splint plate) over a target bone."""

    centre_mm: tuple[float, float]
    axis: tuple[float, float]
    half_length_mm: float
    half_width_mm: float


@dataclass(frozen=True)
class Nuisance:
    pose: Pose = field(default_factory=Pose)
    site: str = "A"                                  # acquisition site (detector)
    dose_per_mm2: float = 6.0e4                      # detected quanta per mm^2 (unattenuated)
    gamma: float = 1.0                               # display contrast exponent
    window_pct: tuple[float, float] = (0.5, 99.7)    # display window percentiles (exposure)
    blur_mm: float = 0.0                             # extra blur (motion, focal spot), sigma
    heel: float = 0.0                                # relative top-to-bottom intensity ramp
    field_mm: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)   # exposed x0, y0, x1, y1
    blade: tuple[float, float, float] | None = None  # oblique collimator blade: exposed if nx x + ny y < c
    collimated: bool = False
    marker: Marker | None = None
    ring: Ring | None = None
    watch: Watch | None = None
    occluder: Occluder | None = None
    missing_bone: str = ""                           # target bone absent from the masks ("" none)
    missing_reason: str = ""                         # "collimation" | "occluder" | ""
    noise: bool = True                               # quantum and electronic noise

    def summary(self) -> dict:
        """Flat, CSV-friendly description (truth/subjects.csv)."""
        p = self.pose
        return dict(laterality=p.laterality, rotation_deg=round(p.rotation_deg, 3), scale=round(p.scale, 4),
                    centre_x_mm=round(p.centre_mm[0], 2), centre_y_mm=round(p.centre_mm[1], 2),
                    spread=round(p.spread, 3), thumb_deg=round(p.thumb_deg, 2), site=self.site,
                    dose_per_mm2=round(self.dose_per_mm2, 1), gamma=round(self.gamma, 4),
                    window_lo_pct=round(self.window_pct[0], 3), window_hi_pct=round(self.window_pct[1], 3),
                    blur_mm=round(self.blur_mm, 4), heel=round(self.heel, 4), collimated=self.collimated,
                    blade=self.blade is not None,
                    marker=self.marker.letter if self.marker else "", ring=self.ring.finger if self.ring else 0,
                    watch=self.watch is not None, occluder=self.occluder is not None,
                    missing_bone=self.missing_bone, missing_reason=self.missing_reason)


def clean_nuisance(config: PhantomConfig) -> Nuisance:
    """No nuisance: right hand, centred, unrotated, site A, no noise, no metal, full field."""
    h, w = config.field_mm
    return Nuisance(pose=Pose(centre_mm=(w / 2, h / 2)), field_mm=(0.0, 0.0, w, h), noise=False)


def _all_target_points(hand) -> dict[str, np.ndarray]:
    return {name: target_points(hand.target(name), FOREARM_EDGE_MM) for name in TARGETS}


def _inside(pts: np.ndarray, box: tuple[float, float, float, float], margin: float,
            blade: tuple[float, float, float] | None = None) -> np.ndarray:
    x0, y0, x1, y1 = box
    ok = ((pts[:, 0] >= x0 + margin) & (pts[:, 0] <= x1 - margin)
          & (pts[:, 1] >= y0 + margin) & (pts[:, 1] <= y1 - margin))
    if blade is not None:
        ok &= pts[:, 0] * blade[0] + pts[:, 1] * blade[1] < blade[2] - margin
    return ok


def _place(config: PhantomConfig, subject: Subject, rng: np.random.Generator):
    """Draw a pose that keeps all target bones inside the image (rejection sampling)."""
    h, w = config.field_mm
    full = (0.0, 0.0, w, h)
    laterality = "L" if rng.random() < config.p_left else "R"
    spread = float(rng.uniform(0.3, 2.2))
    thumb = float(rng.uniform(-8.0, 15.0))
    jitter = tuple(float(x) for x in rng.normal(0.0, 2.5, 5))
    shrink = 1.0
    for attempt in range(80):
        if attempt and attempt % 10 == 0:
            shrink *= 0.8
        pose = Pose(laterality=laterality,
                    rotation_deg=float(rng.uniform(-1, 1) * config.max_rotation_deg * shrink),
                    scale=float(1.0 + rng.uniform(-1, 1) * config.scale_range * shrink),
                    centre_mm=(w / 2 + float(rng.uniform(-1, 1)) * config.translate_frac * w * shrink,
                               h / 2 + float(rng.uniform(-1, 1)) * config.translate_frac * h * shrink),
                    spread=spread, thumb_deg=thumb, finger_jitter_deg=jitter)
        hand = build_hand(subject, pose)
        pts = _all_target_points(hand)
        if all(_inside(p, full, 2.0).all() for p in pts.values()):
            return pose, hand, pts
    pose = Pose(laterality=laterality, centre_mm=(w / 2, h / 2), spread=spread, thumb_deg=thumb)
    hand = build_hand(subject, pose)
    return pose, hand, _all_target_points(hand)


def _blade_cut(bone: str, pts: dict[str, np.ndarray], box: list[float],
               rng: np.random.Generator) -> tuple[float, float, float] | None:
    """A straight collimator blade (any angle) that leaves at most 20 % of `bone` exposed and at
    least 90 % of every other target bone; None if no direction works."""
    mine = pts[bone]
    valid = []
    for theta in np.linspace(0.0, 2 * np.pi, 36, endpoint=False):
        n = np.array([np.cos(theta), np.sin(theta)])
        blade = (float(n[0]), float(n[1]), float(np.quantile(mine @ n, 0.15)))
        if _inside(mine, tuple(box), 0.0, blade).mean() > 0.2:
            continue
        if all(_inside(p, tuple(box), 0.0, blade).mean() >= 0.9 for k, p in pts.items() if k != bone):
            valid.append(blade)
    return valid[int(rng.integers(len(valid)))] if valid else None


def _occluder(hand, bone: str) -> Occluder:
    """A plate over the whole of `bone` (its whole length, so no part of it stays visible in the field);
    what it covers of a neighbour is removed from the masks too (ExposedField.blank_hidden)."""
    t = hand.target(bone)
    frac, half = 0.5, 0.5 * t.length + (5.0 if bone in ("radius", "ulna") else 2.0)
    c = t.centre_point(frac)
    r = max(t.r_prox if bone not in ("radius", "ulna") else t.r_shaft, t.r_dist)
    return Occluder(centre_mm=(float(c[0]), float(c[1])), axis=(float(t.axis[0]), float(t.axis[1])),
                    half_length_mm=float(half), half_width_mm=float(r + 2.5))


def sample_nuisance(config: PhantomConfig, subject: Subject, rng: np.random.Generator) -> Nuisance:
    """Draw the acquisition nuisance of one image (clean if `config.nuisance` is False)."""
    if not config.nuisance:
        return clean_nuisance(config)
    h, w = config.field_mm
    pose, hand, pts = _place(config, subject, rng)
    site = "B" if rng.random() < config.p_site_b else "A"
    lo, hi = np.log(config.dose_range)
    dose = float(np.exp(rng.uniform(lo, hi)))
    gamma = float(rng.uniform(0.75, 1.3))
    window = (float(rng.uniform(0.1, 2.0)), float(rng.uniform(99.0, 99.95)))
    blur = float(rng.uniform(0.0, 0.12))
    heel = float(rng.uniform(-0.12, 0.12))

    box = [0.0, 0.0, w, h]
    collimated = rng.random() < config.p_collimation
    if collimated:
        every = np.concatenate(list(pts.values()))
        inset = rng.uniform(0.0, 0.12, 4) * np.array([w, h, w, h])
        box = [min(inset[0], every[:, 0].min() - 4.0), min(inset[1], every[:, 1].min() - 4.0),
               max(w - inset[2], every[:, 0].max() + 4.0), max(h - inset[3], every[:, 1].max() + 4.0)]
        box = [max(box[0], 0.0), max(box[1], 0.0), min(box[2], w), min(box[3], h)]

    missing, reason, occluder, blade = "", "", None, None
    if rng.random() < config.missing_rate:
        missing = TARGETS[int(rng.integers(len(TARGETS)))]
        blade = _blade_cut(missing, pts, box, rng) if rng.random() < 0.5 else None
        if blade is not None:
            collimated, reason = True, "collimation"
        else:
            occluder, reason = _occluder(hand, missing), "occluder"

    ring = None
    if rng.random() < config.p_ring:
        ring = Ring(finger=int(rng.choice([2, 3, 4, 5], p=[0.15, 0.15, 0.55, 0.15])),
                    frac=float(rng.uniform(0.3, 0.6)), width_mm=float(rng.uniform(2.0, 6.0)),
                    thickness_mm=float(rng.uniform(1.0, 2.0)))
    watch = None
    if rng.random() < config.p_watch:
        watch = Watch(distance_mm=float(rng.uniform(22.0, 50.0)), radius_mm=float(rng.uniform(14.0, 20.0)),
                      metal_strap=bool(rng.random() < 0.4))

    marker = None
    if rng.random() < config.p_marker:
        height = float(rng.uniform(9.0, 14.0))
        every = np.concatenate([np.concatenate(list(pts.values()))]
                               + [np.array([t.p0, t.p1]) for t in hand.tubes])
        corners = []
        for cx, cy in ((box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])):
            px = cx + (1 if cx == box[0] else -1) * (height + 4.0)
            py = cy + (1 if cy == box[1] else -1) * (height + 4.0)
            far = np.min(np.hypot(every[:, 0] - px, every[:, 1] - py)) > 2.0 * height
            if far and _inside(np.array([[px, py]]), tuple(box), 0.0, blade).all():
                corners.append((px, py))
        if corners:
            px, py = corners[int(rng.integers(len(corners)))]
            marker = Marker(letter=pose.laterality, centre_mm=(float(px), float(py)),
                            angle_deg=float(rng.uniform(-12.0, 12.0)), height_mm=height)

    return Nuisance(pose=pose, site=site, dose_per_mm2=dose, gamma=gamma, window_pct=window,
                    blur_mm=blur, heel=heel, field_mm=tuple(float(b) for b in box), blade=blade,
                    collimated=collimated,
                    marker=marker, ring=ring, watch=watch, occluder=occluder, missing_bone=missing,
                    missing_reason=reason, noise=True)
