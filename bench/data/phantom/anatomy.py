"""Anatomy of a PA hand and wrist radiograph, in millimetres (adult, canonical right hand).

Hand frame: origin at the centre of the radiocarpal joint, +y distal (towards the fingers),
+x ulnar. A right hand seen PA (palm on the detector) shows the thumb on the viewer's left,
so the canonical hand has the thumb at -x; a left hand is its mirror image.

Primitives (all later placed in image millimetres by :func:`build_hand`):

* :class:`Tube` - a tubular bone: curved centre line (a bowed chord), outer radius profile
  with a narrow shaft and flared ends closed by ellipsoidal end caps, elliptical cross
  section (depth/width ratio), a cortical shell whose shaft thickness is CI * outer radius
  (2MCI: CI = 1 - inner/outer diameter) thinning to a subchondral shell at the ends, and a
  medullary cavity holding trabecular bone in the ends and marrow in the shaft.
* :class:`Ellipsoid` - carpals and sesamoids: cortical shell around trabecular bone.
* :class:`Capsule` and :class:`Slab` - the soft-tissue envelope (forearm, palm, thenar and
  hypothenar eminences, fingers).

Sizes: a size-1.0 subject is an adult woman (M2 66.5 mm long with an 8 mm shaft, distal
radius 23 mm wide); men are 7 % larger on average (bench.data.phantom.subject).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bench.data.format import BONES
from bench.data.phantom.subject import TARGETS, Subject


@dataclass
class Tube:
    """A tubular bone between its proximal tip p0 and distal tip p1 (image mm)."""

    name: str                   # "M2", "radius", "P3-mid", ...
    class_id: int               # 1..7 for the target bones, 0 otherwise
    p0: np.ndarray              # proximal tip (x, y)
    p1: np.ndarray              # distal tip (x, y)
    r_shaft: float              # outer radius at mid-shaft
    r_prox: float               # outer radius at the proximal end
    r_dist: float               # outer radius at the distal end
    flare_prox: float           # length over which the proximal end flares (mm)
    flare_dist: float           # length over which the distal end flares (mm)
    cap_prox: float             # axial semi-axis of the proximal end cap (mm)
    cap_dist: float             # axial semi-axis of the distal end cap (mm)
    cortical_index: float       # shaft 1 - inner/outer diameter
    end_cortex_mm: float        # subchondral shell thickness at the ends
    trabecular_density: float   # BV/TV of the trabecular ends
    depth_ratio: float = 0.9    # depth / width of the cross section
    bow_mm: float = 0.0         # in-plane bow of the centre line at mid-length (+: towards n)
    tilt_dist: float = 0.0      # tan of the distal articular surface tilt (+: longer on the n side)
    head_mm: float = 0.0        # distal head / epiphysis length (annotators may leave it out)
    physis_mm: float = 0.0      # physeal scar distance from the distal tip (0: none)

    @property
    def length(self) -> float:
        return float(np.hypot(*(self.p1 - self.p0)))

    @property
    def axis(self) -> np.ndarray:
        d = self.p1 - self.p0
        return d / np.hypot(*d)

    @property
    def normal(self) -> np.ndarray:
        a = self.axis
        return np.array([-a[1], a[0]])

    def centre_point(self, frac: float) -> np.ndarray:
        """Point of the (bowed) centre line at fraction `frac` of the length."""
        bow = 4.0 * self.bow_mm * frac * (1.0 - frac)
        return self.p0 + frac * (self.p1 - self.p0) + bow * self.normal

    def radius_at(self, frac: float) -> float:
        """Outer radius at fraction `frac` of the length (same profile as the renderer)."""
        from bench.data.phantom.render import tube_radius

        return float(tube_radius(self, np.array([frac * self.length]))[0])


@dataclass
class Ellipsoid:
    """A carpal or sesamoid: in-plane semi-axes a, b (a along `angle`), depth semi-axis c."""

    name: str
    centre: np.ndarray
    a: float
    b: float
    c: float
    angle: float                # radians, direction of the a axis in the image
    shell_mm: float
    trabecular_density: float


@dataclass
class Capsule:
    """Soft tissue around a segment, radius tapering r0 -> r1, elliptical cross section."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    depth_ratio: float = 0.8


@dataclass
class Slab:
    """The palm: a convex polygon of given thickness with rounded (fillet) edges."""

    vertices: np.ndarray        # (k, 2), counter-clockwise or clockwise
    thickness: float
    round_mm: float


@dataclass
class Hand:
    """All primitives of one hand, in image millimetres."""

    tubes: list[Tube] = field(default_factory=list)
    ellipsoids: list[Ellipsoid] = field(default_factory=list)
    capsules: list[Capsule] = field(default_factory=list)
    slabs: list[Slab] = field(default_factory=list)
    finger_capsules: dict[int, Capsule] = field(default_factory=dict)   # finger 1..5
    forearm: Capsule | None = None                                      # soft tissue of the forearm

    def target(self, name: str) -> Tube:
        for t in self.tubes:
            if t.name == name:
                return t
        raise KeyError(name)


@dataclass(frozen=True)
class Pose:
    """Placement of the hand on the detector (the geometric nuisance)."""

    laterality: str = "R"                 # "R" | "L" (left = mirror image)
    rotation_deg: float = 0.0             # counter-clockwise in the displayed image
    scale: float = 1.0                    # geometric magnification
    centre_mm: tuple[float, float] = (0.0, 0.0)   # image position of the hand-frame point ANCHOR
    spread: float = 1.0                   # finger abduction factor (1 = relaxed)
    thumb_deg: float = 0.0                # extra thumb abduction
    finger_jitter_deg: tuple[float, ...] = (0.0,) * 5


ANCHOR = np.array([0.0, 88.0])            # hand-frame point placed at Pose.centre_mm (x size)

# name: (base (x, y), angle from +y in degrees, +: ulnar), base/head radius ratios to shaft.
METACARPALS = {
    "M1": ((-19.0, 30.0), -33.0, 1.55, 1.60),
    "M2": ((-9.5, 36.0), -7.0, 1.60, 1.70),
    "M3": ((0.5, 36.0), 0.0, 1.60, 1.70),
    "M4": ((10.0, 35.0), 6.0, 1.60, 1.70),
    "M5": ((18.5, 33.0), 13.0, 1.60, 1.65),
}
# finger: (proximal, middle, distal) lengths (mm, 0 = absent) and proximal phalanx shaft radius.
PHALANGES = {1: ((31.0, 0.0, 22.0), 4.2), 2: ((38.0, 22.0, 16.0), 3.9), 3: ((43.0, 27.0, 18.0), 4.1),
             4: ((40.0, 26.0, 17.0), 3.8), 5: ((31.0, 18.0, 15.0), 3.3)}
SPREAD_DEG = {1: 0.0, 2: -4.0, 3: 0.0, 4: 4.0, 5: 9.0}
# carpals: name, centre, a, b, c, angle (deg)
CARPALS = [("scaphoid", (-12.0, 12.0), 6.5, 11.0, 6.0, 45.0), ("lunate", (-1.0, 9.5), 7.0, 7.0, 7.0, 0.0),
           ("triquetrum", (9.0, 11.0), 6.0, 6.5, 6.0, 20.0), ("pisiform", (12.5, 13.0), 4.5, 5.0, 4.5, 0.0),
           ("trapezium", (-19.0, 24.0), 7.0, 7.0, 6.5, 30.0), ("trapezoid", (-10.0, 28.0), 5.0, 6.0, 5.5, 0.0),
           ("capitate", (0.0, 25.0), 6.5, 11.0, 7.0, 0.0), ("hamate", (10.5, 25.5), 7.0, 9.0, 7.0, -10.0)]
PALM = [(-22.0, 14.0), (-22.0, 60.0), (-20.0, 100.0), (-9.0, 112.0), (10.0, 108.0), (27.0, 97.0),
        (31.0, 62.0), (26.0, 14.0)]
JOINT_GAP = 2.0


def _rot(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _dir(angle_deg: float) -> np.ndarray:
    """Unit vector at `angle_deg` from +y, positive towards +x (ulnar)."""
    a = math.radians(angle_deg)
    return np.array([math.sin(a), math.cos(a)])


def canonical_hand(subject: Subject, pose: Pose) -> Hand:
    """The subject's right hand in the hand frame (finger spread and thumb from `pose`)."""
    s = subject.size
    hand = Hand()
    tb = {name: subject.bone(name) for name in TARGETS}
    ci_mean = float(np.mean(subject.cortical_index))
    rho_mean = float(np.mean(subject.trabecular_density))

    def tube(name, p0, p1, r, rp, rd, ci, rho, **kw) -> Tube:
        kw.setdefault("flare_prox", 0.22 * np.hypot(*(np.subtract(p1, p0))))
        kw.setdefault("flare_dist", 0.20 * np.hypot(*(np.subtract(p1, p0))))
        kw.setdefault("cap_prox", 0.45 * rp)
        kw.setdefault("cap_dist", 0.75 * rd)
        return Tube(name=name, class_id=BONES.get(name, 0), p0=np.asarray(p0, float),
                    p1=np.asarray(p1, float), r_shaft=r, r_prox=rp, r_dist=rd, cortical_index=ci,
                    end_cortex_mm=0.35 + 0.6 * ci * s, trabecular_density=rho, **kw)

    # forearm: radius and ulna enter from the bottom edge
    rad, uln = tb["radius"], tb["ulna"]
    r_tip = np.array([-9.0, 0.0]) * s
    d = _dir(-1.0)
    hand.tubes.append(tube("radius", r_tip - d * rad["length_mm"], r_tip, rad["outer_diameter_mm"] / 2,
                           8.0 * s, 11.5 * s, rad["cortical_index"], rad["trabecular_density"],
                           flare_prox=20 * s, flare_dist=30 * s, cap_prox=6 * s, cap_dist=4.0 * s,
                           depth_ratio=0.75, bow_mm=3.0 * s, tilt_dist=math.tan(math.radians(22)),
                           head_mm=10.0 * s, physis_mm=20.0 * s))
    u_tip = np.array([13.0, -2.0]) * s
    d = _dir(2.0)
    hand.tubes.append(tube("ulna", u_tip - d * uln["length_mm"], u_tip, uln["outer_diameter_mm"] / 2,
                           9.0 * s, 7.5 * s, uln["cortical_index"], uln["trabecular_density"],
                           flare_prox=20 * s, flare_dist=15 * s, cap_prox=6 * s, cap_dist=5.0 * s,
                           depth_ratio=0.9, bow_mm=-1.5 * s, head_mm=8.0 * s, physis_mm=15.0 * s))

    for name, xy, a, b, c, deg in CARPALS:
        hand.ellipsoids.append(Ellipsoid(name, np.array(xy) * s, a * s, b * s, c * s, math.radians(deg),
                                         0.3 + 0.5 * ci_mean * s, rho_mean))

    thumb_rot = _rot(-pose.thumb_deg)                  # abduct the thumb away from the palm (-x)
    for k, (mc, (base, ang, rb, rh)) in enumerate(METACARPALS.items(), start=1):
        p = tb[mc]
        base = np.array(base) * s
        direction = _dir(ang)
        if k == 1:
            direction = thumb_rot @ direction
        head = base + direction * p["length_mm"]
        r = p["outer_diameter_mm"] / 2
        hand.tubes.append(tube(mc, base, head, r, rb * r, rh * r, p["cortical_index"],
                               p["trabecular_density"], bow_mm=0.6 * s, head_mm=0.13 * p["length_mm"]))
        # phalanges: a chain along the finger direction (MC direction + spread at the MCP joint)
        lengths, r_pp = PHALANGES[k]
        f_dir = _rot(-(SPREAD_DEG[k] * pose.spread + pose.finger_jitter_deg[k - 1])) @ direction
        start = head + f_dir * JOINT_GAP * s
        tip = start
        for kind, ln, rscale, (rb2, rh2) in zip(("prox", "mid", "dist"), lengths, (1.0, 0.8, 0.62),
                                                 ((1.5, 1.25), (1.4, 1.2), (1.35, 1.3))):
            if ln <= 0:
                continue
            ln = ln * s
            rr = r_pp * rscale * s
            end = start + f_dir * ln
            hand.tubes.append(tube(f"P{k}-{kind}", start, end, rr, rb2 * rr, rh2 * rr, ci_mean * 0.9,
                                   rho_mean, cap_dist=(0.5 if kind == "dist" else 0.7) * rh2 * rr))
            tip = end
            start = end + f_dir * JOINT_GAP * s
        fr = (10.5 if k == 1 else 9.2 if k < 5 else 8.0) * s
        cap = Capsule(head - f_dir * 8 * s, tip + f_dir * 2.5 * s, fr, 0.78 * fr, 0.85)
        hand.capsules.append(cap)
        hand.finger_capsules[k] = cap
        if k == 1:   # sesamoids at the thumb MCP joint
            n = np.array([-direction[1], direction[0]])
            for side in (-1, 1):
                hand.ellipsoids.append(Ellipsoid("sesamoid", head - direction * 4 * s + side * n * 3.5 * s,
                                                 2.4 * s, 2.8 * s, 2.4 * s, 0.0, 0.3, rho_mean))

    m1 = hand.target("M1")
    hand.capsules.append(Capsule(np.array([-13.0, 20.0]) * s, m1.p1 - 4 * s * m1.axis, 14 * s, 11 * s, 0.75))
    hand.capsules.append(Capsule(np.array([21.0, 36.0]) * s, np.array([26.0, 86.0]) * s, 10 * s, 10 * s, 0.7))
    hand.forearm = Capsule(np.array([1.0, -320.0]) * s, np.array([2.0, 22.0]) * s, 31 * s, 27 * s, 0.72)
    hand.capsules.append(hand.forearm)
    hand.slabs.append(Slab(np.array(PALM) * s, 27.0 * s, 11.0 * s))
    return hand


def _place_point(p: np.ndarray, m: np.ndarray, t: np.ndarray) -> np.ndarray:
    return m @ p + t


def build_hand(subject: Subject, pose: Pose) -> Hand:
    """The subject's hand placed on the detector: mirror (left hand), rotate, scale, translate.

    Image millimetres: x to the right, y downwards (row direction).
    """
    hand = canonical_hand(subject, pose)
    flip = np.diag([1.0 if pose.laterality == "R" else -1.0, -1.0])     # hand +y -> image up
    theta = math.radians(pose.rotation_deg)
    rot = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    m = pose.scale * rot @ flip
    t = np.asarray(pose.centre_mm, float) - m @ (ANCHOR * subject.size)
    handed = float(np.sign(np.linalg.det(m)))       # mirror flips bow/tilt sides and angles
    for tube in hand.tubes:
        tube.p0, tube.p1 = _place_point(tube.p0, m, t), _place_point(tube.p1, m, t)
        for attr in ("r_shaft", "r_prox", "r_dist", "flare_prox", "flare_dist", "cap_prox",
                     "cap_dist", "end_cortex_mm", "head_mm", "physis_mm"):
            setattr(tube, attr, getattr(tube, attr) * pose.scale)
        tube.bow_mm *= pose.scale * handed
        tube.tilt_dist *= handed
    for e in hand.ellipsoids:
        e.centre = _place_point(e.centre, m, t)
        ax = m @ np.array([math.cos(e.angle), math.sin(e.angle)])
        e.angle = math.atan2(ax[1], ax[0])
        e.a, e.b, e.c, e.shell_mm = (v * pose.scale for v in (e.a, e.b, e.c, e.shell_mm))
    for c in hand.capsules:
        c.p0, c.p1 = _place_point(c.p0, m, t), _place_point(c.p1, m, t)
        c.r0, c.r1 = c.r0 * pose.scale, c.r1 * pose.scale
    for sl in hand.slabs:
        sl.vertices = sl.vertices @ m.T + t
        sl.thickness *= pose.scale
        sl.round_mm *= pose.scale
    return hand


def target_points(tube: Tube, forearm_mm: float = 60.0) -> np.ndarray:
    """Sample points of a target bone (centre line and both outer edges), image mm, (k, 2).

    Radius and ulna are sampled over their distal `forearm_mm` only: the part a hand
    radiograph is expected to show.
    """
    lo = 0.03
    if tube.name in ("radius", "ulna"):
        lo = max(0.0, 1.0 - forearm_mm / tube.length)
    fracs = np.linspace(lo, 0.97, 9)
    pts = []
    for f in fracs:
        c = tube.centre_point(f)
        r = tube.radius_at(f)
        pts.extend([c, c + r * tube.normal, c - r * tube.normal])
    return np.array(pts)
