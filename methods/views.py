"""SSL views of a batch with one resampling per view size (paper "Multi-crop data augmentation").

A view is what :func:`methods.multicrop.multicrop` then :func:`methods.augment.augment` make of a
patch: the crop box resized to the view, then flipped, rotated and shifted with zeros coming in
from outside the view, then brightness and contrast. Here the two affine maps are composed, so
each view pixel is interpolated once from the patch instead of twice, and all ``n`` crops of one
view size (and all their augmentations) are drawn at once and resampled by one ``grid_sample``:
two resamplings per batch instead of 2 × (n_global + n_local), and a few dozen small kernels per
view size instead of a few hundred per view (issue 9: the views were launch-bound on the GPU).

Semantics kept: the zeros that the second resampling brings in from outside the view are the
exact bilinear coverage of the view's footprint, w(t) = clamp((S(1 − |t|) + 1) / 2, 0, 1) per
axis, with t the normalised coordinate in the un-rotated view and S its side (the value a
bilinear rotation of an all-ones view takes); the views differ from the two-step ones only by
the second interpolation's blur (one bilinear interpolation instead of two). Brightness and
contrast follow :func:`methods.augment.adjust_intensity`. With ``augment.interpolation=nearest``
the two steps are kept (a nearest rotation of a bilinear resize is not one map).

The bone-aware rule (at least 10 % non-zero pixels) is applied to the crop box, as the paper
states it for the crop; the rotation (±30°) and shift (±10 %) drawn after it can move some bone
out of the view, so a few local views end below 10 % (1.7 % of the local views of synthetic
patches whose bone covers 10-19 %, 2026-11-28). Counting the fraction under the composed map
would need the augmentation drawn before the box; we keep the paper's order.

Random draws per view size, in order: the crop boxes of all n crops (B×n×T candidates), then
the augmentation parameters of the B·n views (patch-major).
"""
from __future__ import annotations

import torch

from bench.errors import BenchError
from methods.affine import affine_grid
from methods.augment import AugmentConfig, AugmentParams, adjust_intensity, affine_theta, augment, sample_params
from methods.multicrop import (Boxes, MultiCropConfig, Policy, centroid, check_patches, crop_group, multicrop,
                               nonzero_table, sample_crops, view_groups)


def view_geometry(boxes: Boxes, params: AugmentParams, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The composed sampling grid (B×n×S×S×2, patch-normalised) and the view coverage (B×n×S×S).

    `boxes` has fields B×n; `params` holds the B·n views' draws in patch-major order. Output pixel
    q → q' = F(R q + t) in the un-rotated view (``augment.affine_theta`` with the flips F folded in),
    → p = diag(w, h) q' + (2cx − 1, 2cy − 1) in the patch.
    """
    b, n = boxes.w.shape
    theta = affine_theta(params.angle_deg, params.shift, size, size)
    one = torch.ones_like(theta[:, 0, 0])
    fx = torch.where(params.hflip.to(theta.device), -one, one)
    fy = torch.where(params.vflip.to(theta.device), -one, one)
    theta = theta * torch.stack([fx, fy], dim=1).unsqueeze(-1)
    q = affine_grid(theta, size, size).view(b, n, size, size, 2)
    per_axis = q.abs().mul_(-size / 2).add_((size + 1) / 2).clamp_(0, 1)      # (S(1 − |t|) + 1) / 2
    coverage = per_axis[..., 0] * per_axis[..., 1]
    scale = torch.stack([boxes.w, boxes.h], dim=-1).to(q.dtype).view(b, n, 1, 1, 2)
    offset = torch.stack([2 * boxes.cx - 1, 2 * boxes.cy - 1], dim=-1).to(q.dtype).view(b, n, 1, 1, 2)
    return torch.addcmul(offset, q, scale), coverage


def augmented_crops(patches: torch.Tensor, boxes: Boxes, params: AugmentParams, aug: AugmentConfig,
                    size: int) -> torch.Tensor:
    """The B×n views of `boxes` with their drawn augmentations, in one resampling: B×n×S×S."""
    b, n = boxes.w.shape
    grid, coverage = view_geometry(boxes, params, size)
    views = crop_group(patches, grid.to(patches.dtype)) * coverage.to(patches.dtype)
    flat = adjust_intensity(views.view(b * n, 1, size, size), params.brightness, params.contrast,
                            aug.preserve_background)
    return flat.view(b, n, size, size)


def make_views(x: torch.Tensor, mc: MultiCropConfig, aug: AugmentConfig, policy: Policy,
               generator: torch.Generator) -> list[torch.Tensor]:
    """Multi-crop views of a batch B×1×P×P (globals first, each B×1×S×S), augmented, on its device."""
    if generator is None:
        raise BenchError("make_views needs an explicitly seeded torch.Generator (randomness is never global)")
    if aug.interpolation != "bilinear":
        return [augment(v, aug, generator) for v in multicrop(x, mc, policy, generator)]
    mc.validate()
    aug.validate()
    check_patches(x, policy)
    table = nonzero_table(x)
    centre = centroid(x) if policy == "bone-aware" and mc.recentre_fallback else None
    views: list[torch.Tensor] = []
    for n, scale, size in view_groups(mc):
        boxes, _ = sample_crops(x, n, scale, mc, policy, generator, table, centre)
        params = sample_params(x.shape[0] * n, aug, generator, x.device)
        views.extend(v.unsqueeze(1) for v in augmented_crops(x, boxes, params, aug, size).unbind(1))
    return views


__all__ = ["view_geometry", "augmented_crops", "make_views"]
