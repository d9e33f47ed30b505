"""VICReg: variance-invariance-covariance regularisation (ssl.md §1.4; Bardes et al. 2022).

Two views Z, Z′ (n×d), official facebookresearch/vicreg convention:

    invariance  s    = MSE(Z, Z′), averaged over n·d
    variance    v(Z) = (1/d) Σ_j max(0, 1 − √(Var(Z_·j) + ε)),   unbiased Var, ε = 1e-4
                V    = (v(Z) + v(Z′)) / 2          ← the official code's average over the two branches
                                                     (half the paper's eq. 1 and solo-learn's sum)
    covariance  c(Z) = (1/d) Σ_{i≠j} Cov(Z)_ij²,   Cov = (Z − Z̄)ᵀ(Z − Z̄)/(n − 1)
                C    = c(Z) + c(Z′)
    total       L    = λ·s + μ·V + ν·C,   λ = μ = 25, ν = 1

:func:`vicreg` returns the total and the three *unweighted* terms (s, V, C) for logging.

Multi-crop recipe (none of the references defines one; this is lightly's VICRegL global term,
scaled so that two views give exactly :func:`vicreg`): with V views of which the first
``n_global`` are global,

    s = mean over the ordered pairs (g, v), g a global view, v ≠ g any view, of MSE(Z_g, Z_v)
    V = mean over all views of v(Z_v)
    C = (2/V) Σ_v c(Z_v)          (the mean over views, times the two branches of the official C)

so every crop (local ones included) is pulled toward both global crops and every view's
embedding is regularised. Computed in (at least) fp32 with autocast off.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from methods.ssl.loss_contrastive import upcast


class VICRegLoss(NamedTuple):
    """The weighted total and the unweighted terms (invariance s, variance V, covariance C)."""

    total: torch.Tensor
    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor


def variance_term(z: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """v(Z) = mean_j relu(1 − √(Var_j + ε)), unbiased variance over the batch."""
    std = torch.sqrt(z.var(dim=0, unbiased=True) + eps)
    return F.relu(1 - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """c(Z) = Σ_{i≠j} Cov_ij² / d with the unbiased covariance.

    Computed from the smaller of the two Gram matrices: Σ_ij Cov_ij² = ‖Z̃ᵀZ̃‖²_F / (n−1)² =
    ‖Z̃Z̃ᵀ‖²_F / (n−1)² (Z̃ the centred batch), and Cov_jj = Σ_i Z̃_ij² / (n−1). With the paper's
    8192-wide expander and a batch of 128 the n×n form costs 2n²d instead of 2nd² flops and
    64 KiB instead of a 256 MiB d×d matrix per view, forward and backward: the same value.
    """
    n, d = z.shape
    zc = z - z.mean(dim=0)
    gram = zc @ zc.T if n < d else zc.T @ zc
    diagonal = zc.pow(2).sum(dim=0)
    off = (gram.pow(2).sum() - diagonal.pow(2).sum()) / (n - 1) ** 2
    return off / d


def _check(views: Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    views = list(views)
    shape = views[0].shape if views else None
    if shape is None or any(v.dim() != 2 or v.shape != shape for v in views):
        raise BenchError(f"{name}: views must be B×D tensors of one shape, got {[tuple(v.shape) for v in views]}")
    if shape[0] < 2:
        raise BenchError(f"{name}: the variance and covariance terms need a batch of at least 2, got {shape[0]}")
    return [upcast(v) for v in views]


def vicreg(z_a: torch.Tensor, z_b: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
           cov_coeff: float = 1.0, eps: float = 1e-4) -> VICRegLoss:
    """Two-view VICReg, official convention (variance averaged over the branches)."""
    with torch.autocast(device_type=z_a.device.type, enabled=False):
        a, b = _check([z_a, z_b], "vicreg")
        inv = F.mse_loss(a, b)
        var = (variance_term(a, eps) + variance_term(b, eps)) / 2
        cov = covariance_term(a) + covariance_term(b)
        return VICRegLoss(sim_coeff * inv + std_coeff * var + cov_coeff * cov, inv, var, cov)


def vicreg_multicrop(views: Sequence[torch.Tensor], n_global: int = 2, sim_coeff: float = 25.0,
                     std_coeff: float = 25.0, cov_coeff: float = 1.0, eps: float = 1e-4) -> VICRegLoss:
    """VICReg over V ≥ 2 views (global first), the recipe in the module docstring."""
    if not isinstance(views, (list, tuple)) or len(views) < 2:
        raise BenchError("vicreg_multicrop needs a list of at least 2 view embeddings (each B×D)")
    if not 1 <= n_global <= len(views):
        raise BenchError(f"vicreg_multicrop: n_global = {n_global} must be between 1 and {len(views)}")
    with torch.autocast(device_type=views[0].device.type, enabled=False):
        zs = _check(views, "vicreg_multicrop")
        pairs = [F.mse_loss(zs[g], zs[v]) for g in range(n_global) for v in range(len(zs)) if v != g]
        inv = torch.stack(pairs).mean()
        var = torch.stack([variance_term(z, eps) for z in zs]).mean()
        cov = 2 * torch.stack([covariance_term(z) for z in zs]).mean()
        return VICRegLoss(sim_coeff * inv + std_coeff * var + cov_coeff * cov, inv, var, cov)


__all__ = ["VICRegLoss", "vicreg", "vicreg_multicrop", "variance_term", "covariance_term"]
