"""Occluded-bone augmentation of segmentation batches (ours; the paper is silent).

Why: a bone hidden by an opaque object (a metal plate, a splint, a marker) is not annotated, and a
model that names the metacarpals by counting them then names the visible ones wrongly. On 100
held-out smoke phantom images the 256-row MoSE of seed 0 (2026-11-27) segmented pub-00092-1, whose
M3 lies under an opaque bar and is absent from the truth, with Dice 0.38: ulna 0.95 and radius 0.88,
but M1 0.21, M2 0.00, M4 0.01, M5 0.61, the visible metacarpals labelled one place off.

:func:`occlude_bones` shows the model such images: with probability ``p`` one annotated bone of an
image, drawn uniformly among those present, is covered by an opaque bar, the rectangle along the
bone's principal axis that holds all of its pixels, widened by ``margin`` pixels on every side, at
one white level (uniform in [0.85, 1]); the bone's label is removed from every annotator's map, as
annotators leave out what they cannot see (the phantom's convention). Other bones keep their
labels, also where the bar covers them. Batched on the device, no host synchronisation.
"""
from __future__ import annotations

import torch

from bench.data.format import BONES
from methods.segmentation.appearance import WHITE

N_BONES = len(BONES)             # class ids 1..7


def default_margin(height: int) -> int:
    """Bar margin in canvas pixels: 1 % of the canvas height, at least 1 (about the phantom's 2.5 mm)."""
    return max(1, round(0.01 * height))


def _bar(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """B x H x W bool: the rectangle along each mask's principal axis holding all of it, widened by
    `margin` pixels (empty where a mask is)."""
    b, h, w = mask.shape
    m = mask.to(torch.float32)
    n = m.sum(dim=(1, 2)).clamp(min=1.0).view(b, 1, 1)
    rows = torch.arange(h, device=mask.device, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, device=mask.device, dtype=torch.float32).view(1, 1, w)
    dr = rows - (m * rows).sum(dim=(1, 2), keepdim=True) / n
    dc = cols - (m * cols).sum(dim=(1, 2), keepdim=True) / n
    srr, scc, src = ((m * dr * dr).sum(dim=(1, 2)), (m * dc * dc).sum(dim=(1, 2)), (m * dr * dc).sum(dim=(1, 2)))
    theta = 0.5 * torch.atan2(2.0 * src, srr - scc)                                  # principal axis angle
    cos, sin = theta.cos().view(b, 1, 1), theta.sin().view(b, 1, 1)
    u, v = dr * cos + dc * sin, dc * cos - dr * sin                                  # along, across the axis
    half_u = torch.where(mask, u.abs(), 0.0).amax(dim=(1, 2), keepdim=True)
    half_v = torch.where(mask, v.abs(), 0.0).amax(dim=(1, 2), keepdim=True)
    inside = (u.abs() <= half_u + margin) & (v.abs() <= half_v + margin)
    return inside & mask.flatten(1).any(dim=1).view(b, 1, 1)


def occlude_bones(images: torch.Tensor, labels: torch.Tensor, *, p: float, margin: int | None = None,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B x 1 x H x W in [0, 1]) and labels (B x M x H x W, 0 = background) with one bone of each
    image occluded and unannotated with probability `p` (module docstring). `margin` defaults to
    :func:`default_margin`; a probability of 0 draws nothing from `generator`."""
    if p <= 0.0:
        return images, labels
    b, _, h, _ = images.shape
    dev = images.device
    u = torch.rand(b, N_BONES + 2, generator=generator, device=dev)
    present = torch.zeros(b, N_BONES + 1, dtype=torch.bool, device=dev).scatter_(
        1, labels.flatten(1).long(), True)[:, 1:]                                  # B x 7: which bones occur
    chosen = torch.where(present, u[:, :N_BONES], -1.0).argmax(dim=1) + 1          # uniform among present
    apply = (u[:, N_BONES] < p) & present.any(dim=1)
    bone = (labels == chosen.view(b, 1, 1, 1).to(labels.dtype)) & apply.view(b, 1, 1, 1)
    bar = _bar(bone.any(dim=1), default_margin(h) if margin is None else margin)
    level = (WHITE[0] + (WHITE[1] - WHITE[0]) * u[:, N_BONES + 1]).to(images.dtype).view(b, 1, 1, 1)
    images = torch.where(bar.unsqueeze(1), level, images)
    labels = torch.where(bone, torch.zeros((), dtype=labels.dtype, device=dev), labels)
    return images, labels


__all__ = ["occlude_bones", "default_margin"]
