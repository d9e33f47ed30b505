"""SwAV: Sinkhorn-Knopp codes, swapped prediction, prototypes and queue (ssl.md §1.3; Caron et al. 2020).

Conventions, those of the official facebookresearch/swav code:

* ``sinkhorn``: for prototype scores S (B×K, B samples, K prototypes), Q ∝ exp(S/ε)ᵀ (K×B) is
  alternately rescaled, ``iterations`` times, so that each prototype row sums to 1/K and then
  each sample column sums to 1/B; finally Q is multiplied by B, so every sample's code sums to
  1 (exactly) and every prototype receives ≈ B/K of the total mass (exactly at convergence).
  Computed in the log domain in fp32 with autocast off (mathematically identical to the
  official multiplicative form, but exp(S/ε) ≈ e^20 can neither overflow nor underflow).
* ``swav``: codes come from the ``n_global`` global crops only (detached, no gradient); each code
  q_c is predicted from every other crop v ≠ c by −Σ_k q_ck log softmax(s_v/τ)_k, averaged over
  the samples, then over the V−1 other crops, then over the code crops.
* Prototypes: K unit vectors (a bias-free linear layer) re-normalised before every step
  (:meth:`SwAVPrototypes.normalize`) and frozen during the first epoch
  (:meth:`SwAVPrototypes.set_frozen`: no gradient, hence no update and no weight decay).
* Queue (optional, for small batches): the last ``length`` projections of each global crop;
  their scores against the current prototypes are appended to the batch before Sinkhorn and
  only the batch's codes are kept. Push after computing the loss, so a step never sees its own
  samples twice.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from methods.ssl.loss_contrastive import upcast


def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV codes (B×K, rows sum to 1) from prototype scores B×K; fp32 (fp64 if given), no gradient."""
    if scores.dim() != 2:
        raise BenchError(f"sinkhorn expects prototype scores B×K, got shape {tuple(scores.shape)}")
    if epsilon <= 0 or iterations < 1:
        raise BenchError(f"sinkhorn needs epsilon > 0 and iterations >= 1, got {epsilon}, {iterations}")
    with torch.no_grad(), torch.autocast(device_type=scores.device.type, enabled=False):
        log_q = upcast(scores.detach()).T / epsilon           # K×B
        k, b = log_q.shape
        log_k, log_b = math.log(k), math.log(b)
        for _ in range(iterations):
            log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_k   # prototype rows: 1/K
            log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - log_b   # sample columns: 1/B
        return (log_q + log_b).exp().T


def swav(scores_per_view: Sequence[torch.Tensor], n_global: int = 2, temperature: float = 0.1,
         epsilon: float = 0.05, iterations: int = 3,
         queue_scores: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Swapped-prediction loss over V views' prototype scores (each B×K; global views first).

    `queue_scores`, when given, holds one L×K score tensor per global crop (from
    :meth:`SwAVQueue.scores`), appended to that crop's batch scores before Sinkhorn.
    """
    views = list(scores_per_view)
    if len(views) < 2:
        raise BenchError(f"swav needs at least 2 views' scores, got {len(views)}")
    if not 1 <= n_global <= len(views):
        raise BenchError(f"swav: n_global = {n_global} must be between 1 and the number of views ({len(views)})")
    shape = views[0].shape
    if any(v.dim() != 2 or v.shape != shape for v in views):
        raise BenchError(f"swav: every view's scores must be B×K of one shape, got {[tuple(v.shape) for v in views]}")
    if queue_scores is not None and len(queue_scores) != n_global:
        raise BenchError(f"swav: queue_scores must hold one tensor per global crop ({n_global}), "
                         f"got {len(queue_scores)}")
    if temperature <= 0:
        raise BenchError(f"swav: temperature = {temperature} must be > 0")
    b = shape[0]
    with torch.autocast(device_type=views[0].device.type, enabled=False):
        log_p = [F.log_softmax(upcast(v) / temperature, dim=1) for v in views]
        total = log_p[0].new_zeros(())
        for c in range(n_global):
            s = views[c]
            if queue_scores is not None:
                s = torch.cat([s.detach(), queue_scores[c].to(s.device)], dim=0)
            q = sinkhorn(s, epsilon, iterations)[:b]
            sub = sum(-(q * log_p[v]).sum(dim=1).mean() for v in range(len(views)) if v != c)
            total = total + sub / (len(views) - 1)
        return total / n_global


class SwAVPrototypes(nn.Module):
    """K prototype vectors on the unit sphere; scores = ẑ · cₖ (no bias, as the official SwAV)."""

    def __init__(self, dim: int = 128, n_prototypes: int = 3000):
        super().__init__()
        weight = torch.empty(n_prototypes, dim)
        nn.init.normal_(weight)
        self.weight = nn.Parameter(F.normalize(weight, dim=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Scores B×K of (already L2-normalised) projections z (B×dim)."""
        return z @ self.weight.T

    @torch.no_grad()
    def normalize(self) -> None:
        """Project the prototypes back onto the unit sphere (call before every optimiser step)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def set_frozen(self, frozen: bool) -> None:
        """Freeze (no gradient → no update, no weight decay) or unfreeze the prototypes."""
        self.weight.requires_grad_(not frozen)

    def freeze_for_epoch(self, epoch: int, freeze_epochs: int = 1) -> None:
        """The SwAV recipe: frozen while ``epoch < freeze_epochs`` (epochs counted from 0)."""
        self.set_frozen(epoch < freeze_epochs)


class SwAVQueue(nn.Module):
    """FIFO of the last `length` projections (detached) of each of the `n_global` global crops."""

    def __init__(self, n_global: int = 2, length: int = 3840, dim: int = 128):
        super().__init__()
        if length < 1 or n_global < 1:
            raise BenchError(f"SwAVQueue needs length >= 1 and n_global >= 1, got {length}, {n_global}")
        self.register_buffer("queue", torch.zeros(n_global, length, dim))
        self.count = 0                      # projections pushed so far (per crop), capped at length

    @property
    def full(self) -> bool:
        """True once `length` projections per crop have been pushed (the queue is used only then)."""
        return self.count >= self.queue.shape[1]

    @torch.no_grad()
    def push(self, z_globals: Sequence[torch.Tensor]) -> None:
        """Add this step's projections (one B×dim tensor per global crop), dropping the oldest."""
        n, length, dim = self.queue.shape
        if len(z_globals) != n or any(z.dim() != 2 or z.shape[1] != dim for z in z_globals):
            raise BenchError(f"SwAVQueue.push expects {n} tensors of shape B×{dim}, got "
                             f"{[tuple(z.shape) for z in z_globals]}")
        b = z_globals[0].shape[0]
        new = torch.stack([z.detach().to(self.queue.dtype) for z in z_globals])
        if b >= length:
            self.queue.copy_(new[:, :length])
        else:
            self.queue[:, b:] = self.queue[:, :-b].clone()
            self.queue[:, :b] = new
        self.count = min(length, self.count + b)

    @torch.no_grad()
    def scores(self, prototypes: SwAVPrototypes) -> list[torch.Tensor] | None:
        """Queue scores (one L×K tensor per global crop) against the current prototypes; None until full."""
        if not self.full:
            return None
        w = prototypes.weight.detach().to(self.queue.dtype)
        return [q @ w.T for q in self.queue]

    def get_extra_state(self) -> dict:
        return {"count": self.count}

    def set_extra_state(self, state: dict) -> None:
        self.count = int(state["count"])


__all__ = ["sinkhorn", "swav", "SwAVPrototypes", "SwAVQueue"]
