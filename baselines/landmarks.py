"""Anatomical landmarks for the Hsieh / Wang baselines: the rule, heat-map targets, decoding, error.

Landmarks (one per bone of ``landmarks.bones``, named by the bone so ROI predictions aggregate
like bone patches):

* metacarpals M1-M5: the mid-shaft, i.e. the point of the bone's principal axis at
  ``metacarpal_fraction`` (0.5) of its extent (baselines.axis: largest component, PCA axis);
* radius and ulna: the distal shaft, ``forearm_offset_mm`` proximal of the distal end along the
  axis (their proximal part runs out of the field, so a fraction of the visible length would
  depend on the collimation).

An image's reference landmark is the β-weighted mean of its annotators' landmarks (over the
annotators whose mask has the bone); a bone no annotator drew has none (NaN) and is left out of
the loss and the error. The detector works on images resampled to ``landmarks.mm_per_px``, so
anatomy has the same size in pixels in both datasets. Targets are isotropic Gaussians of std
``sigma_mm``, normalised to a distribution over the map; the loss is the cross-entropy between
that distribution and the spatial softmax of the predicted heat map (heat-map regression as a
distribution match, as in integral / DSNT regression). Decoding: the argmax of the heat map,
refined by the soft-argmax over the pixels within 2σ of it. The error is the Euclidean distance
at native resolution times the pixel spacing (mm).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from bench.config import register_section
from bench.errors import BenchError
from baselines.axis import FOREARM, bone_axis
from baselines.common import check_bone_names


@dataclass
class LandmarkConfig:
    """Landmark definition and the heat-map detector trained on the `seg` dataset."""

    bones: tuple[str, ...] = ("ulna", "radius", "M1", "M2", "M3", "M4", "M5")  # one landmark per bone
    metacarpal_fraction: float = 0.5      # metacarpal landmark along the axis (0 proximal, 1 distal)
    forearm_offset_mm: float = 20.0       # radius/ulna landmark: this far proximal of the distal end
    mm_per_px: float = 1.0                # detector working resolution (images resampled to it)
    sigma_mm: float = 4.0                 # std of the Gaussian heat-map targets
    widths: tuple[int, ...] = (16, 32, 64, 128, 128)  # U-Net channels per level
    convs: int = 2                        # conv3x3+BN+ReLU per U-Net block
    epochs: int = 60                      # training epochs
    batch_size: int = 8                   # images per step
    lr: float = 3e-3                      # Adam learning rate (cosine-decayed)
    weight_decay: float = 1e-4            # Adam weight decay
    canonical_laterality: bool = True     # mirror left hands (manifest laterality L) to right hands
    flips: bool = False                   # random horizontal flips (mixes the sides: off when canonical)

    def validate(self) -> None:
        check_bone_names("landmarks.bones", self.bones)
        if self.mm_per_px <= 0 or self.sigma_mm <= 0:
            raise BenchError("landmarks.mm_per_px and landmarks.sigma_mm must be positive")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise BenchError(f"landmarks.epochs and landmarks.batch_size must be >= 1 and landmarks.lr > 0 "
                             f"(got {self.epochs}, {self.batch_size}, {self.lr})")


register_section("landmarks", LandmarkConfig, {
    "smoke": {"mm_per_px": 2.5, "sigma_mm": 6.0, "widths": (8, 16, 32, 32), "epochs": 20},
    "quick": {"mm_per_px": 1.25, "epochs": 60},
    "paper": {"mm_per_px": 1.0, "epochs": 100},
})


def landmark(labels: np.ndarray, bone: str, spacing_mm: float, cfg: LandmarkConfig) -> np.ndarray | None:
    """The (row, col) landmark of `bone` in a native label map by the rule above; None when absent."""
    axis = bone_axis(labels, bone)
    if axis is None:
        return None
    if bone in FOREARM:
        return axis.from_distal(cfg.forearm_offset_mm / spacing_mm)
    return axis.at_fraction(cfg.metacarpal_fraction)


def reference_landmarks(masks: Mapping[str, np.ndarray], weights: Mapping[str, float], spacing_mm: float,
                        cfg: LandmarkConfig) -> np.ndarray:
    """K×2 (row, col) β-weighted mean of the annotators' landmarks; NaN rows for undrawn bones."""
    out = np.full((len(cfg.bones), 2), np.nan)
    for k, bone in enumerate(cfg.bones):
        pts, ws = [], []
        for name, labels in masks.items():
            p = landmark(labels, bone, spacing_mm, cfg)
            if p is not None and weights.get(name, 0.0) > 0:
                pts.append(p)
                ws.append(weights[name])
        if pts:
            out[k] = np.average(np.array(pts), axis=0, weights=np.array(ws))
    return out


def gaussian_targets(points: torch.Tensor, shape: tuple[int, int], sigma_px: float) -> torch.Tensor:
    """B×K×2 (row, col) working-pixel points → B×K×H×W Gaussians normalised to sum 1 (NaN point: zeros)."""
    h, w = shape
    rows = torch.arange(h, dtype=torch.float32, device=points.device).view(1, 1, h, 1)
    cols = torch.arange(w, dtype=torch.float32, device=points.device).view(1, 1, 1, w)
    pr, pc = points[..., 0, None, None], points[..., 1, None, None]
    g = torch.exp(-((rows - pr) ** 2 + (cols - pc) ** 2) / (2 * sigma_px ** 2))
    g = torch.nan_to_num(g, nan=0.0)
    return g / g.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)


def heatmap_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of target distributions vs spatial softmax, mean over present (non-zero) targets."""
    logp = torch.log_softmax(logits.float().flatten(2), dim=-1)
    t = targets.flatten(2)
    present = t.sum(-1) > 0
    ce = -(t * logp).sum(-1)
    return (ce * present).sum() / present.sum().clamp_min(1)


def decode(logits: torch.Tensor, radius_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B×K×H×W heat maps → (B×K×2 (row, col) soft-argmax within `radius_px` of the argmax, B×K peak prob)."""
    b, k, h, w = logits.shape
    prob = torch.softmax(logits.float().flatten(2), dim=-1).view(b, k, h, w)
    flat = prob.flatten(2).argmax(-1)
    r0, c0 = (flat // w).float(), (flat % w).float()
    rows = torch.arange(h, dtype=torch.float32, device=logits.device).view(1, 1, h, 1)
    cols = torch.arange(w, dtype=torch.float32, device=logits.device).view(1, 1, 1, w)
    near = ((rows - r0[..., None, None]) ** 2 + (cols - c0[..., None, None]) ** 2) <= radius_px ** 2
    wgt = prob * near
    total = wgt.sum(dim=(2, 3)).clamp_min(1e-12)
    r = (wgt * rows).sum(dim=(2, 3)) / total
    c = (wgt * cols).sum(dim=(2, 3)) / total
    return torch.stack([r, c], dim=-1), prob.flatten(2).max(-1).values


def to_working(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Native (row, col) → working pixels for per-axis scales (working px per native px), pixel centres."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * np.asarray(scale) - 0.5


def to_native(points: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Inverse of :func:`to_working`."""
    return (np.asarray(points, dtype=np.float64) + 0.5) / np.asarray(scale) - 0.5


def landmark_errors(pred: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per (image_id, bone): Euclidean error in mm of native (row, col) points times pixel_spacing_mm.

    `pred` has image_id, bone, row, col; `truth` image_id, bone, row, col, pixel_spacing_mm; rows
    whose truth is NaN (bone not drawn) are dropped.
    """
    both = truth.merge(pred, on=["image_id", "bone"], suffixes=("_true", ""))
    both = both.dropna(subset=["row_true", "col_true", "row", "col"])
    d = np.hypot(both["row"] - both["row_true"], both["col"] - both["col_true"])
    return both.assign(error_mm=d * both["pixel_spacing_mm"])
