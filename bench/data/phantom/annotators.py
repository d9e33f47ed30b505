"""Annotators: M label maps per image derived from the exact bone geometry with annotator styles.

Each annotator j has a style drawn once per dataset:
* boundary offset: dilates (+) or erodes (-) the outline, |offset| <= 0.6 mm, applied to the
  signed distance to the exact surface, so it works at any pixel spacing (sub-pixel offsets
  flip the boundary pixels they should);
* ripple: a smooth wobble of the outline along the bone (hand-drawn contours);
* discrete mode: with the annotator's own probability the distal head / epiphysis is left out
  (metacarpal heads; distal epiphyses of radius and ulna), so the truth is multimodal; the
  probabilities spread over `PhantomConfig.head_exclusion` (default 0.05-0.35: the minority
  mode, so the annotators' beta-weighted majority still draws the exact bone);
* smoothing: the drawn mask is Gaussian-smoothed and re-thresholded (rounds corners).
Weights beta ~ Dirichlet(4, ..., 4) per image (they sum to 1), as in the paper's
(x_i, y_i^(j), beta_i^(j)) annotations. Masks are clipped to the exposed field, and bones made
absent (out of field, occluded) are never annotated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from bench.data.phantom.render import BoneRaster, ExposedField

MAX_OFFSET_MM = 0.6


@dataclass(frozen=True)
class AnnotatorStyle:
    name: str                    # "a1" ... "a4"
    offset_mm: float             # mean boundary offset (+ dilate, - erode)
    p_exclude_head: float        # probability of leaving the distal head / epiphysis out
    smoothing_mm: float          # Gaussian smoothing of the drawn mask (sigma)
    ripple_mm: float             # amplitude of the outline wobble


@dataclass(frozen=True)
class Annotation:
    """One annotator's choices on one image."""

    style: AnnotatorStyle
    weight: float                # beta
    offset_mm: float
    exclude_head: bool
    phases: tuple[float, ...]    # ripple phases (3 harmonics)


def annotator_styles(m: int, rng: np.random.Generator,
                     head_exclusion: tuple[float, float]) -> list[AnnotatorStyle]:
    """Styles of m annotators: offsets spread over +-0.45 mm, head-exclusion probabilities spread
    evenly over `head_exclusion` (low, high; one annotator: the midpoint)."""
    offsets = np.linspace(-0.45, 0.45, m) if m > 1 else np.zeros(1)
    offsets = rng.permutation(offsets) + rng.uniform(-0.1, 0.1, m)
    low, high = head_exclusion
    p_head = rng.permutation(np.linspace(low, high, m) if m > 1 else np.full(1, (low + high) / 2))
    return [AnnotatorStyle(name=f"a{j + 1}", offset_mm=float(np.clip(offsets[j], -0.5, 0.5)),
                           p_exclude_head=float(p_head[j]), smoothing_mm=float(rng.uniform(0.2, 0.8)),
                           ripple_mm=float(rng.uniform(0.05, 0.2)))
            for j in range(m)]


def draw_annotations(styles: list[AnnotatorStyle], rng: np.random.Generator) -> list[Annotation]:
    """Per-image choices of every annotator, with weights beta summing to 1."""
    beta = rng.dirichlet(np.full(len(styles), 4.0)) if len(styles) > 1 else np.ones(1)
    out = []
    for j, st in enumerate(styles):
        offset = float(np.clip(st.offset_mm + rng.normal(0.0, 0.08), -MAX_OFFSET_MM, MAX_OFFSET_MM))
        out.append(Annotation(style=st, weight=float(beta[j]), offset_mm=offset,
                              exclude_head=bool(rng.random() < st.p_exclude_head),
                              phases=tuple(float(x) for x in rng.uniform(0, 2 * np.pi, 3))))
    return out


def label_map(shape: tuple[int, int], bones: list[BoneRaster], spacing: float,
              field: ExposedField, annotation: Annotation | None = None) -> np.ndarray:
    """uint8 label map of the present target bones; `annotation=None` gives the exact truth."""
    labels = np.zeros(shape, dtype=np.uint8)
    depth = np.zeros(shape, dtype=np.float32)
    for b in bones:
        d = -b.sd
        if annotation is not None:
            st = annotation.style
            wobble = sum(st.ripple_mm / k * np.sin(2 * np.pi * k * b.u / 25.0 + ph)
                         for k, ph in enumerate(annotation.phases, start=1))
            d = d + (annotation.offset_mm + wobble)
        inside = d > 0
        if annotation is not None:
            if annotation.exclude_head:
                inside &= b.u < b.head_start
            sigma = annotation.style.smoothing_mm / spacing
            if sigma >= 0.3:
                inside = gaussian_filter(inside.astype(np.float32), sigma, truncate=3.0) > 0.5
            d = np.where(inside, np.maximum(d, 1e-3), 0.0)
        region = depth[b.rows, b.cols]
        upd = inside & (d > region)
        region[upd] = d[upd]
        labels[b.rows, b.cols][upd] = b.class_id
    field.blank_outside(labels, 0)
    field.blank_hidden(labels, 0)          # under an opaque plate nothing is visible, so nothing is annotated
    return labels
