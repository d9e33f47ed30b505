"""SimCLR's NT-Xent and SupCon's L_out over any number of views (ssl.md §1.1–1.2).

Both are one function of a positive mask. With V views of B patches, all M = V·B embeddings are
L2-normalised and every embedding is an anchor i with

    log p(i, j) = s_ij/τ − log Σ_{a ≠ i} exp(s_ia/τ)          (s the cosine similarity)
    ℓ_i        = −(1/|P(i)|) Σ_{j ∈ P(i)} log p(i, j)
    L          = mean over the M anchors.

This is the L_out form of Khosla et al. (eq. 2; official HobbitLong/SupContrast code with
τ_base = τ): the log-probabilities are averaged over the positives, the denominator holds every
other embedding (positives and negatives) of the batch.

* ``nt_xent``: P(i) = the other V−1 crops of the same patch. With two views each anchor has one
  positive and this is exactly the standard NT-Xent (SimCLR eq. 1, lightly's ``NTXentLoss``). With
  multi-crop (2 + 4) each anchor has 5 positives; we *average* their log-probabilities (L_out)
  rather than summing the exponentials inside the log as solo-learn does (L_in), so that
  ``nt_xent(views) == supcon(views, labels=all −1)`` and the two Table 3 rows differ only in
  what counts as a positive.
* ``supcon``: P(i) = every other view of every patch with the same label; patches labelled −1
  (unlabelled, e.g. the public ``seg`` dataset) have only their own crops as positives.

Computed in (at least) fp32 with autocast disabled (bf16 logits at τ = 0.1 lose the small differences).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from bench.errors import BenchError


def upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (bf16/fp16 → fp32; fp64 stays fp64, which the reference tests use)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def check_views(views: Sequence[torch.Tensor], name: str, min_views: int = 2) -> torch.Tensor:
    """Validate a list of B×D view embeddings and return them concatenated (V·B × D, fp32)."""
    if not isinstance(views, (list, tuple)) or len(views) < min_views:
        raise BenchError(f"{name} needs a list of at least {min_views} view embeddings (each B×D), "
                         f"got {type(views).__name__} of length {len(views) if hasattr(views, '__len__') else '?'}")
    shape = views[0].shape
    for v in views:
        if v.dim() != 2 or v.shape != shape:
            raise BenchError(f"{name}: every view must be a B×D tensor of the same shape; got "
                             f"{[tuple(v.shape) for v in views]}")
    return torch.cat([upcast(v) for v in views], dim=0)


def _autocast_off(x: torch.Tensor) -> torch.autocast:
    return torch.autocast(device_type=x.device.type, enabled=False)


def contrastive_loss(z: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """L_out over M embeddings (M×D) given an M×M boolean positive mask (diagonal ignored).

    Anchors without any positive are left out of the mean (they cannot occur with ≥ 2 views).
    """
    if temperature <= 0:
        raise BenchError(f"temperature = {temperature} must be > 0 (e.g. 0.1)")
    with _autocast_off(z):
        z = F.normalize(upcast(z), dim=1)
        logits = z @ z.T / temperature
        m = logits.shape[0]
        eye = torch.eye(m, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = positives & ~eye
        n_pos = pos.sum(dim=1)
        per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(dim=1) / n_pos.clamp_min(1)
        has = n_pos > 0
        return (per_anchor * has).sum() / has.sum().clamp_min(1)


def nt_xent(views: Sequence[torch.Tensor], temperature: float = 0.1) -> torch.Tensor:
    """SimCLR NT-Xent over V ≥ 2 views (each B×D); every other crop of a patch is a positive."""
    z = check_views(views, "nt_xent")
    b = views[0].shape[0]
    index = torch.arange(b, device=z.device).repeat(len(views))
    return contrastive_loss(z, index[:, None] == index[None, :], temperature)


def supcon(views: Sequence[torch.Tensor], labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SupCon L_out over V ≥ 2 views; positives share a label ≥ 0, a negative label (−1) means unlabelled."""
    z = check_views(views, "supcon")
    b = views[0].shape[0]
    labels = torch.as_tensor(labels, device=z.device)
    if labels.shape != (b,):
        raise BenchError(f"supcon: labels must be a vector of length B = {b} (−1 for unlabelled), "
                         f"got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise BenchError(f"supcon: labels must be integers (class id, −1 for unlabelled), got {labels.dtype}")
    index = torch.arange(b, device=z.device).repeat(len(views))
    lab = labels.long().repeat(len(views))
    same_patch = index[:, None] == index[None, :]
    same_label = (lab[:, None] == lab[None, :]) & (lab[:, None] >= 0)
    return contrastive_loss(z, same_patch | same_label, temperature)


__all__ = ["nt_xent", "supcon", "contrastive_loss", "check_views", "upcast"]
