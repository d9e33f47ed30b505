"""LARS / LARC optimiser, parameter groups and the warm-up + cosine schedule (ssl.md §3–4).

The paper trains with "the LARC optimizer" and cosine annealing at batch 128. LARC is NVIDIA
apex's ``LARC`` wrapper around SGD (used by the official SwAV); we implement its semantics
directly, vectorised with ``torch._foreach_*`` per (device, dtype):

    r    = η‖w‖ / (‖g‖ + λ‖w‖ + eps)               local (trust) rate of a tensor
    clip : r ← min(r / lr, 1)                      (LARC: the effective step is min(r, lr))
    d    = r · (g + λw)                            only when ‖w‖ > 0 and ‖g‖ > 0, else d = g
    v    ← μ v + d ;  w ← w − lr · v               SGD with momentum (v starts at 0, as torch SGD)

Defaults: :class:`LARC` = apex's defaults (η = 0.02, clip on; solo-learn's small-batch setting),
:class:`LARS` = η = 0.001, no clip (lightly, official VICReg/SwAV trust value). Parameter groups
with ``lars_exclude=True`` (biases and norm parameters, see :func:`param_groups`) are updated by
plain SGD with momentum: no trust ratio, and the weight decay they carry (0 from
:func:`param_groups`). Tensors whose norm or gradient norm is zero get neither scaling nor weight
decay (apex). The last applied multiplier of each adapted tensor (r, or min(r/lr, 1) with clip;
1 for a clipped tensor means it moved like plain SGD) is kept in ``state[p]["trust_ratio"]`` (a 0-d
tensor, no host sync) for logging.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Iterable

import torch
from torch import nn

from bench.errors import BenchError


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratios (LARS; ``clip=True`` gives LARC)."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, clip: bool = False, eps: float = 1e-8):
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0 or eps < 0:
            raise BenchError(f"LARS needs lr, momentum, weight_decay, eps >= 0 and trust_coefficient > 0; "
                             f"got lr={lr}, momentum={momentum}, weight_decay={weight_decay}, "
                             f"trust_coefficient={trust_coefficient}, eps={eps}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        clip=clip, eps=eps, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_kind: dict[tuple, list[torch.Tensor]] = defaultdict(list)
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise BenchError("LARS does not support sparse gradients")
                    by_kind[(p.device, p.dtype)].append(p)
            for params in by_kind.values():
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
        grads = [p.grad for p in params]
        if group["lars_exclude"]:
            d = torch._foreach_add(grads, params, alpha=wd) if wd else [g.clone() for g in grads]
        else:
            acc = params[0].dtype if params[0].dtype in (torch.float32, torch.float64) else torch.float32
            w_norm = torch.stack(torch._foreach_norm(params)).to(acc)
            g_norm = torch.stack(torch._foreach_norm(grads)).to(acc)
            ratio = group["trust_coefficient"] * w_norm / (g_norm + wd * w_norm + group["eps"])
            if group["clip"]:
                ratio = torch.clamp(ratio / lr, max=1.0) if lr > 0 else torch.ones_like(ratio)
            ok = (w_norm > 0) & (g_norm > 0)
            ratio = torch.where(ok, ratio, torch.ones_like(ratio))
            decay = torch.where(ok, torch.full_like(ratio, wd), torch.zeros_like(ratio))
            ratios = list(ratio.to(params[0].dtype).unbind())
            d = torch._foreach_add(grads, torch._foreach_mul(params, list(decay.to(params[0].dtype).unbind())))
            torch._foreach_mul_(d, ratios)
            for p, r in zip(params, ratio.unbind()):
                self.state[p]["trust_ratio"] = r
        if mu:
            bufs = []
            for p, di in zip(params, d):
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, mu)
            torch._foreach_add_(bufs, d)
            d = bufs
        torch._foreach_add_(params, d, alpha=-lr)


class LARC(LARS):
    """LARC with apex's defaults: trust coefficient 0.02, clipping on (effective step min(r, lr))."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.02, clip: bool = True, eps: float = 1e-8):
        super().__init__(params, lr, momentum, weight_decay, trust_coefficient, clip, eps)


def param_groups(model: nn.Module, weight_decay: float, exclude_1d: bool = True) -> list[dict]:
    """Two groups: weights (decayed, adapted) and biases + norm parameters (``ndim <= 1``: no decay,
    ``lars_exclude=True``), the official VICReg / solo-learn ``exclude_bias_n_norm`` rule.

    All parameters are listed, frozen ones included (an optimiser skips tensors without a
    gradient), so the SwAV prototypes can be unfrozen after the first epoch.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if exclude_1d and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars_exclude": False}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def cosine_schedule(step: int, total: int, base_lr: float, warmup: int = 0, end_lr: float = 0.0) -> float:
    """Learning rate at `step` (0-based): linear warm-up base·(t+1)/warmup, then cosine to `end_lr`.

    After warm-up: end + ½(base − end)(1 + cos(π(t − warmup)/(total − warmup))); steps at or past
    `total` give `end_lr`. The +1 in the warm-up (lightly) makes step 0 non-zero.
    """
    if total < 1 or warmup < 0 or warmup > total:
        raise BenchError(f"cosine_schedule needs total >= 1 and 0 <= warmup <= total, got total={total}, "
                         f"warmup={warmup}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    if step >= total:
        return end_lr
    progress = (step - warmup) / max(1, total - warmup)
    return end_lr + 0.5 * (base_lr - end_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (e.g. from :func:`cosine_schedule`)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


__all__ = ["LARS", "LARC", "param_groups", "cosine_schedule", "set_lr"]
