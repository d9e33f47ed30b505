"""Principal axis of a bone in a label map, and the anatomical points defined on it.

Shared by the landmark rule (Hsieh / Wang ROIs) and radiogrammetry (2MCI). Conventions:

* Coordinates are (row, col) in native pixels, pixel centres at integer indices.
* A bone is the largest 8-connected component of its class in the label map (islands left by an
  annotator or a segmentation model are ignored); fewer than ``MIN_PIXELS`` pixels → absent.
* Its axis is the principal axis (eigenvector of the largest eigenvalue of the pixel-coordinate
  covariance) through the component's centroid; its extent ``[t_min, t_max]`` is the range of the
  pixels' projections on it (pixel centres, so a bar of n pixels has length n - 1).
* The axis points distally: towards the centroid of the metacarpals (classes M1-M5) for the
  radius and ulna, away from the centroid of radius and ulna for the metacarpals; with no such
  reference in the map, towards the image centre (forearm) or away from it (metacarpals).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bench.data.format import BONES

MIN_PIXELS = 10
FOREARM: tuple[str, ...] = ("ulna", "radius")
METACARPALS: tuple[str, ...] = ("M1", "M2", "M3", "M4", "M5")


@dataclass(frozen=True)
class BoneAxis:
    """The principal axis of one bone's largest component."""

    centre: np.ndarray      # (row, col) centroid, native px
    direction: np.ndarray   # unit (drow, dcol), pointing distally
    t_min: float            # proximal extent along the axis from the centre (px, <= 0)
    t_max: float            # distal extent (px, >= 0)
    pixels: int             # size of the component

    @property
    def length(self) -> float:
        return self.t_max - self.t_min

    @property
    def normal(self) -> np.ndarray:
        """Unit vector perpendicular to the axis (the axis rotated by +90 degrees)."""
        return np.array([-self.direction[1], self.direction[0]])

    def point(self, t: float) -> np.ndarray:
        """(row, col) at signed distance `t` px from the centre along the axis."""
        return self.centre + float(t) * self.direction

    def at_fraction(self, fraction: float) -> np.ndarray:
        """(row, col) at `fraction` of the extent, 0 = proximal end, 1 = distal end."""
        return self.point(self.t_min + fraction * self.length)

    def from_distal(self, distance_px: float) -> np.ndarray:
        """(row, col) `distance_px` proximal of the distal end, clipped to the extent."""
        return self.point(float(np.clip(self.t_max - distance_px, self.t_min, self.t_max)))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (empty mask → empty)."""
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n <= 1:
        return labelled > 0
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (int(np.argmax(sizes)) + 1)


def class_window(labels: np.ndarray, value: int) -> tuple[tuple[int, int], np.ndarray] | None:
    """((row0, col0), mask) of the bounding box of class `value`; None when absent.

    Work on a bone then touches its box, not the whole radiograph (a 3588 x 2515 clinical image
    holds each bone in a few percent of its pixels); every pixel of the class is inside, so
    components, centroids and axes are those of the whole map.
    """
    mask = labels == value
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return (int(rows[0]), int(cols[0])), mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def component_pixels(labels: np.ndarray, bone: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels of `bone`'s largest 8-connected component (empty when absent)."""
    found = class_window(labels, BONES[bone])
    if found is None:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    (r0, c0), mask = found
    rows, cols = np.nonzero(largest_component(mask))
    return rows + r0, cols + c0


def _centroid(labels: np.ndarray, names: tuple[str, ...]) -> np.ndarray | None:
    """Mean (row, col) of all pixels of the classes `names`; None when none is present."""
    total, sums = 0, np.zeros(2)
    for name in names:
        found = class_window(labels, BONES[name])
        if found is None:
            continue
        (r0, c0), mask = found
        rows, cols = np.nonzero(mask)
        total += rows.size
        sums += (rows.sum() + r0 * rows.size, cols.sum() + c0 * cols.size)
    return None if total == 0 else sums / total


def bone_axis(labels: np.ndarray, bone: str) -> BoneAxis | None:
    """Principal axis of `bone` (a name of bench.data.BONES) in a label map; None when absent."""
    rows, cols = component_pixels(labels, bone)
    if rows.size < MIN_PIXELS:
        return None
    pts = np.stack([rows, cols], axis=1).astype(np.float64)
    centre = pts.mean(axis=0)
    cov = np.cov((pts - centre).T)
    direction = np.linalg.eigh(cov)[1][:, -1]
    forearm = bone in FOREARM
    ref = _centroid(labels, METACARPALS if forearm else FOREARM)
    if ref is None:
        ref = (np.array(labels.shape, dtype=np.float64) - 1) / 2
    towards = ref - centre
    sign = 1.0 if forearm else -1.0   # forearm points at the reference, metacarpals away from it
    if sign * float(towards @ direction) < 0:
        direction = -direction
    t = (pts - centre) @ direction
    return BoneAxis(centre=centre, direction=direction, t_min=float(t.min()), t_max=float(t.max()),
                    pixels=int(rows.size))
