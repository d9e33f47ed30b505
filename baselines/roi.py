"""Regions of interest of the Table 8 baselines: boxes, human-like jitter, native-resolution crops.

* Jang et al. crop one ROI per radiograph by hand. Here the "manual" box is the bounding box of
  the seven target bones (union over every annotator's mask), where the radius and ulna count only
  over their distal ``roi.forearm_mm`` (measured along their axis, baselines.axis): the wrist and
  the metacarpals, not the whole visible forearm. A human draws it loosely and inconsistently:
  the box grows by ``roi.margin`` of its side on each side, then each of its four sides moves
  independently by a uniform amount in ±``roi.jitter`` of that side's length (top/bottom: of the
  height, left/right: of the width), drawn from a generator seeded by (run seed, image id).
* Hsieh et al. and Wang et al. crop a square of ``roi.size_mm`` around each detected landmark.

Crops are taken at native resolution (zeros outside the image), zero-padded to a square (centred)
and resized with antialiasing to the network input size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import register_section
from bench.data.format import BONES
from bench.errors import BenchError
from baselines.axis import FOREARM, bone_axis, component_pixels

Box = tuple[float, float, float, float]   # (row0, col0, row1, col1), row1/col1 exclusive


@dataclass
class RoiConfig:
    """ROIs of the Jang (box) and Hsieh / Wang (landmark) baselines."""

    source: Literal["auto", "annotator", "predicted", "truth"] = "auto"  # Jang's masks: auto = the annotators' where an image has them, else predicted
    forearm_mm: float = 40.0    # distal length of radius and ulna inside Jang's box
    margin: float = 0.05        # Jang's box grows by this fraction of its side on every side
    jitter: float = 0.08        # each side of Jang's box moves uniformly within ± this fraction of the side
    size_mm: float = 40.0       # side of the square landmark ROI (Hsieh, Wang)

    def validate(self) -> None:
        """Raise BenchError naming the first bad option (before any stage runs)."""
        if not (self.forearm_mm > 0 and self.size_mm > 0):
            raise BenchError(f"roi.forearm_mm and roi.size_mm must be > 0 mm (got {self.forearm_mm}, {self.size_mm})")
        if not (self.margin >= 0 and 0 <= self.jitter < 0.5):
            raise BenchError(f"roi.margin must be >= 0 and roi.jitter in [0, 0.5) (fractions of a side; "
                             f"got {self.margin}, {self.jitter})")


register_section("roi", RoiConfig)


def wrist_box(label_maps: Iterable[np.ndarray], spacing_mm: float, forearm_mm: float) -> Box | None:
    """Bounding box of the seven bones over all label maps (radius/ulna: distal `forearm_mm` only)."""
    r0 = c0 = np.inf
    r1 = c1 = -np.inf
    for labels in label_maps:
        keep = np.isin(labels, [BONES[b] for b in BONES if b not in FOREARM])
        for bone in FOREARM:
            axis = bone_axis(labels, bone)
            if axis is None:
                continue
            rows, cols = component_pixels(labels, bone)
            t = (np.stack([rows, cols], 1) - axis.centre) @ axis.direction
            part = t >= axis.t_max - forearm_mm / spacing_mm
            keep[rows[part], cols[part]] = True
        rows, cols = np.nonzero(keep)
        if rows.size:
            r0, c0 = min(r0, rows.min()), min(c0, cols.min())
            r1, c1 = max(r1, rows.max() + 1), max(c1, cols.max() + 1)
    if not np.isfinite(r0):
        return None
    return float(r0), float(c0), float(r1), float(c1)


def jitter_box(box: Box, rng: np.random.Generator, margin: float, jitter: float) -> Box:
    """Grow by `margin` of the side, then move each side by U(-jitter, jitter) of its side length."""
    r0, c0, r1, c1 = box
    h, w = r1 - r0, c1 - c0
    r0, c0, r1, c1 = r0 - margin * h, c0 - margin * w, r1 + margin * h, c1 + margin * w
    h, w = r1 - r0, c1 - c0
    d = rng.uniform(-jitter, jitter, size=4) * np.array([h, w, h, w])
    out = (r0 + d[0], c0 + d[1], r1 + d[2], c1 + d[3])
    if out[2] - out[0] < 1 or out[3] - out[1] < 1:   # a degenerate draw keeps the grown box
        return r0, c0, r1, c1
    return out


def centred_box(centre: tuple[float, float] | np.ndarray, side_px: float) -> Box:
    """The square of side `side_px` centred on (row, col)."""
    r, c = float(centre[0]), float(centre[1])
    return r - side_px / 2, c - side_px / 2, r + side_px / 2, c + side_px / 2


def crop_box(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    """Native-resolution crop of `box` (zeros outside the image), padded to a square, resized to size²."""
    h, w = image.shape
    r0, c0 = int(np.floor(box[0])), int(np.floor(box[1]))
    r1, c1 = max(int(np.ceil(box[2])), r0 + 1), max(int(np.ceil(box[3])), c0 + 1)
    crop = np.zeros((r1 - r0, c1 - c0), dtype=np.float32)
    sr0, sc0, sr1, sc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
    if sr1 > sr0 and sc1 > sc0:
        crop[sr0 - r0:sr1 - r0, sc0 - c0:sc1 - c0] = image[sr0:sr1, sc0:sc1]
    ch, cw = crop.shape
    side = max(ch, cw)
    top, left = (side - ch) // 2, (side - cw) // 2
    square = np.zeros((side, side), dtype=np.float32)
    square[top:top + ch, left:left + cw] = crop
    t = torch.from_numpy(square)[None, None]
    if side != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0, 0].clamp(0.0, 1.0).numpy()
