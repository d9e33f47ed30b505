"""GED on the model's device, batched over images: the per-epoch validation of the segmentation loop.

The same distance and GED as methods.segmentation.evaluate (its docstring states the conventions:
mean over the present bone classes of 1 - IoU, d(empty, empty) = 0, the weighted V-statistic with
diagonal terms), computed for a batch of images at once: per class, the intersections of every
pair of maps are one batched matrix product of indicator images (float32 products of 0/1 values,
exact while an image has fewer than 2**24 pixels), the rest in float64. Pixels set to
:data:`IGNORE` (outside an image's area on the canvas) belong to no class. At the paper's canvas
(512 x 328, 16 samples, 3 annotators) the numpy form took about 56 ms of CPU per image, 200 epochs
x 116 validation images = 22 min per training; here it is a few batched products on the GPU.
"""
from __future__ import annotations

from typing import Sequence

import torch

from bench.data.format import BONE_IDS
from methods.segmentation.evaluate import IOU_EPS

IGNORE = 255          # label of the pixels no class claims (the canvas padding)


def pairwise_distances_batched(maps: torch.Tensor, classes: Sequence[int] = BONE_IDS) -> torch.Tensor:
    """B x K x K distances d(maps[b, i], maps[b, j]) of integer maps B x K x H x W (float64)."""
    b, k = maps.shape[:2]
    flat = maps.reshape(b, k, -1)
    dtype = torch.float32 if flat.shape[-1] < 2 ** 24 else torch.float64
    total = torch.zeros(b, k, k, dtype=torch.float64, device=maps.device)
    count = torch.zeros_like(total)
    for c in classes:
        ind = (flat == c).to(dtype)
        inter = torch.bmm(ind, ind.transpose(1, 2)).double()
        area = torch.diagonal(inter, dim1=1, dim2=2)
        union = area[:, :, None] + area[:, None, :] - inter
        present = union > 0
        total += torch.where(present, 1.0 - (inter + IOU_EPS) / (union + IOU_EPS), torch.zeros_like(inter))
        count += present
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def ged_terms_batched(samples: torch.Tensor, annotations: torch.Tensor, sample_weights: torch.Tensor,
                      annotation_weights: torch.Tensor, classes: Sequence[int] = BONE_IDS) -> torch.Tensor:
    """B x 3 terms of the squared GED per image, as ``evaluate.ged_components`` names them: ``cross``
    E d(s, y), ``sample_diversity`` E d(s, s'), ``annotation_diversity`` E d(y, y'), for B x N x H x W
    samples against B x M x H x W annotations with B x N and B x M non-negative weights (each row
    normalised to sum 1; a zero weight drops its map). NaN for an image whose weights sum to 0."""
    n = samples.shape[1]
    d = pairwise_distances_batched(torch.cat([samples, annotations.to(samples.dtype)], dim=1), classes)
    p = sample_weights.double()
    q = annotation_weights.double()
    p = p / p.sum(1, keepdim=True)
    q = q / q.sum(1, keepdim=True)

    def quad(a: torch.Tensor, m: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,bij,bj->b", a, m, c)
    return torch.stack([quad(p, d[:, :n, n:], q), quad(p, d[:, :n, :n], p), quad(q, d[:, n:, n:], q)], dim=1)


def ged_from_terms(terms: torch.Tensor) -> torch.Tensor:
    """GED = 2 cross - sample_diversity - annotation_diversity of ``ged_terms_batched``'s ... x 3 terms."""
    return 2.0 * terms[..., 0] - terms[..., 1] - terms[..., 2]


def ged_batched(samples: torch.Tensor, annotations: torch.Tensor, sample_weights: torch.Tensor,
                annotation_weights: torch.Tensor, classes: Sequence[int] = BONE_IDS) -> torch.Tensor:
    """Per image of the batch, the squared GED (arguments as :func:`ged_terms_batched`)."""
    return ged_from_terms(ged_terms_batched(samples, annotations, sample_weights, annotation_weights, classes))


__all__ = ["IGNORE", "ged_batched", "ged_from_terms", "ged_terms_batched", "pairwise_distances_batched"]
