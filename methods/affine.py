"""Sampling grids of 2-D affine maps, built without ``F.affine_grid``'s batched matrix product.

``F.affine_grid(theta, (B, C, H, W), align_corners=False)`` forms the grid as a batched
(H·W)×3 by 3×2 matrix product; on CUDA that is an fp32 GEMM with an inner dimension of 3, which
profiled at 1.6 ms of device time per SSL step (twelve grids at batch 128, 28 % of making the
views; H200, ``scripts/profile_ssl_step.py --views-kernels``). The same grid is two broadcast
multiply-adds per coordinate. Convention: ``align_corners=False`` (pixel centres at
(2i + 1)/n − 1), the one every caller in this package uses with ``F.grid_sample``.
"""
from __future__ import annotations

import torch


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """B×H×W×2 (x, y) grid equal to ``F.affine_grid(theta, [B, 1, height, width], align_corners=False)``.

    `theta` is B×2×3 and maps output normalised coordinates to input ones.
    """
    if theta.dim() != 3 or theta.shape[1:] != (2, 3):
        raise ValueError(f"theta must be B×2×3, got {tuple(theta.shape)}")
    xs = (torch.arange(width, device=theta.device, dtype=theta.dtype) * 2 + 1) / width - 1
    ys = ((torch.arange(height, device=theta.device, dtype=theta.dtype) * 2 + 1) / height - 1).unsqueeze(1)
    t = theta.unsqueeze(-1).unsqueeze(-1)                     # B×2×3×1×1, broadcast over H×W
    gx = t[:, 0, 0] * xs + (t[:, 0, 1] * ys + t[:, 0, 2])     # B×H×W
    gy = t[:, 1, 0] * xs + (t[:, 1, 1] * ys + t[:, 1, 2])
    return torch.stack((gx, gy), dim=-1)


__all__ = ["affine_grid"]
