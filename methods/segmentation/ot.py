"""Optimal-transport loss with imbalanced constraint relaxation (paper eq. 7-9; segmentation.md §3-5).

Per image, with prediction samples s_1..s_N (weights alpha_n = pi_k(n)(x) / S, expert-major
n = k*S + s) and annotations y_1..y_M (weights beta_m):

* cost (§3): C_nm = 1 - mean over the seven bone classes (background excluded) of the soft IoU
  (I + 1) / (U + 1), I = sum_px p*y, U = sum_px p + sum_px y - I (+1 smoothing, pixel units);
  two empty masks cost 0. Differentiable w.r.t. the probabilities. Optionally plus w times the
  mean pixel cross-entropy of the pair (:func:`pixel_ce_cost`, ``segmentation.ce_weight``; the
  reference's Cityscapes cost), which keeps a class with a saturated softmax learnable.
* coupling (§4.1): T* = argmin <T, C> over T >= 0 with row sums <= gamma and column sums = beta.
  pi(x) does not enter it. Feasible iff N * gamma >= sum(beta).
  - ``exact``: the LP, solved with POT's network simplex on the balanced problem with a zero-cost
    dummy column that absorbs the slack (§4.3 (a)): a = gamma * 1_N,
    b = [beta, N*gamma - sum(beta)], T* = emd(a, b, [C | 0])[:, :M]; float64 on the CPU.
  - ``greedy``: the MoSE reference heuristic (§4.2), exact for gamma = 1 and M = 1 only. It fills
    uniform column masses and rescales the columns to beta afterwards, so with unequal annotator
    weights its rows can exceed the cap gamma (an infeasible plan; a warning says so once).
  With gamma >= sum(beta) no cap can bind and both return the nearest assignment: each column's
  mass goes to its cheapest row (ties: the first row), which is an optimum of the LP.
* loss (§5, the reference normalisation):
      L = (1/B) sum_b <T*_b, C_b>  +  lam * (1/(B*N)) sum_b KL(t_b || alpha_b),
  t_b = row sums of T*_b, KL = sum_n t log t - t log(alpha + 1e-8) (0 log 0 = 0). T* is a
  constant: the cost's gradient reaches the segmentation samples through the first term; the
  routing network's log-weights are reached only through the KL term. An expert-level CE with
  "batchmean" needs lam/N to match this scale.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from bench.data.format import BONE_IDS
from bench.errors import BenchError, warn_once
from methods.segmentation.schedule import GammaScheduler, PlateauState, gamma_schedule

__all__ = ["OTLossOutput", "soft_iou_cost", "relaxed_coupling", "relaxed_couplings", "ot_loss",
           "gamma_schedule", "GammaScheduler", "PlateauState", "time_ot_solve", "SOLVERS"]

SOLVERS = ("exact", "greedy")
FEAS_TOL = 1e-6        # N*gamma may fall short of sum(beta) by this much (float32 round-off of beta)
KL_EPS = 1e-8          # reference: log(alpha + 1e-8) in the routing KL


@dataclass
class OTLossOutput:
    """Result of :func:`ot_loss`; every tensor but ``plan`` carries the graph."""

    loss: Tensor        # scalar: transport + lam * kl
    transport: Tensor   # scalar: (1/B) sum_b <T*_b, C_b>
    kl: Tensor          # scalar: (1/(B*N)) sum_b KL(t_b || alpha_b), before lam
    plan: Tensor        # B x N x M coupling T* (no grad), on the cost's device and dtype


# --------------------------------------------------------------------------------------- cost

def soft_iou_cost(probs: Tensor, onehot: Tensor, classes: Sequence[int] = BONE_IDS,
                  smooth: float = 1.0) -> Tensor:
    """B x N x M soft-IoU cost of every (sample, annotation) pair (segmentation.md §3).

    ``probs``: B x N x C x H x W softmax probabilities. ``onehot``: B x M x C x H x W one-hot
    annotations, or B x M x H x W integer label maps. Memory: all intersections come from one
    batched matmul of the (B, N*C, H*W) view of ``probs`` with the (B, H*W, M*C') annotation
    planes of the C' evaluated classes (the C x C' cross terms are computed and discarded, cheap
    next to H*W), so neither direction copies ``probs`` (unless it must be cast or is not
    contiguous); the backward allocates one gradient of its size. The result is float32 (float64
    for float64 input), computed outside autocast.
    """
    if probs.dim() != 5:
        raise BenchError(f"soft_iou_cost: probs must be B x N x C x H x W, got shape {tuple(probs.shape)}")
    b, n, c, h, w = probs.shape
    labels = onehot.dim() == 4
    if labels:
        ok = onehot.shape[0] == b and onehot.shape[2:] == (h, w) and not onehot.dtype.is_floating_point
    else:
        ok = onehot.dim() == 5 and onehot.shape[0] == b and onehot.shape[2:] == (c, h, w)
    if not ok:
        raise BenchError(f"soft_iou_cost: annotations of shape {tuple(onehot.shape)} ({onehot.dtype}) do not "
                         f"match probs {tuple(probs.shape)}; pass B x M x C x H x W one-hot or B x M x H x W "
                         "integer labels")
    classes = tuple(int(k) for k in classes)
    if not classes or min(classes) < 0 or max(classes) >= c:
        raise BenchError(f"soft_iou_cost: classes {classes} must be non-empty ids in [0, {c})")
    m, ck = onehot.shape[1], len(classes)
    dtype = torch.float64 if probs.dtype == torch.float64 else torch.float32
    idx = torch.tensor(classes, device=probs.device)
    with torch.autocast(device_type=probs.device.type, enabled=False):
        p = probs.to(dtype)
        if labels:
            y = torch.stack([onehot == k for k in classes], dim=2)            # B x M x C' x H x W
        else:
            y = onehot.index_select(2, idx)
        y = y.reshape(b, m * ck, h * w).to(dtype)
        gram = torch.bmm(p.reshape(b, n * c, h * w), y.transpose(1, 2))       # B x N*C x M*C'
        inter = gram.reshape(b, n, c, m, ck).index_select(2, idx).diagonal(dim1=2, dim2=4)  # B x N x M x C'
        p_mass = p.sum(dim=(3, 4)).index_select(2, idx)                        # B x N x C'
        y_mass = y.reshape(b, m, ck, h * w).sum(-1)                            # B x M x C'
        union = p_mass[:, :, None] + y_mass[:, None] - inter
        return 1.0 - ((inter + smooth) / (union + smooth)).mean(-1)


def pixel_ce_cost(logits: Tensor, labels: Tensor) -> Tensor:
    """B x N x M mean pixel cross-entropy of every (sample, annotation) pair: the reference's
    ``cost_fn='ce'`` (segmentation.md §3, its Cityscapes configuration), C_nm = mean over pixels of
    -log softmax(logits_n)[y_m]. ``logits``: B x N x C x H x W; ``labels``: B x M x H x W integers.
    Float32, outside autocast."""
    if logits.dim() != 5 or labels.dim() != 4 or labels.shape[0] != logits.shape[0] \
            or labels.shape[2:] != logits.shape[3:] or labels.dtype.is_floating_point:
        raise BenchError(f"pixel_ce_cost: logits B x N x C x H x W and integer labels B x M x H x W expected, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)} ({labels.dtype})")
    b, n, c, h, w = logits.shape
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logp = torch.log_softmax(logits.float(), dim=2).reshape(b, n, c, h * w)
        out = [-logp.gather(2, labels[:, j].reshape(b, 1, 1, h * w).long().expand(b, n, 1, h * w)).mean((2, 3))
               for j in range(labels.shape[1])]
        return torch.stack(out, dim=2)


# ----------------------------------------------------------------------------------- coupling

def _check_problem(cost: np.ndarray, beta: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray, float]:
    cost = np.asarray(cost, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] < 1 or cost.shape[1] < 1:
        raise BenchError(f"relaxed_coupling: cost must be an N x M matrix, got shape {cost.shape}")
    if beta.shape != (cost.shape[1],):
        raise BenchError(f"relaxed_coupling: beta has shape {beta.shape}, expected ({cost.shape[1]},) "
                         "(one weight per annotation, i.e. per cost column)")
    if not np.isfinite(cost).all():
        raise BenchError("relaxed_coupling: the cost matrix has NaN or infinite entries (diverged training? "
                         "lower the learning rate or check the probabilities)")
    if not np.isfinite(beta).all() or (beta < 0).any() or beta.sum() <= 0:
        raise BenchError(f"relaxed_coupling: annotation weights beta = {beta} must be finite, >= 0 and "
                         "have a positive sum")
    gamma = float(gamma)
    n = cost.shape[0]
    if not gamma > 0 or n * gamma < beta.sum() - FEAS_TOL:
        raise BenchError(f"relaxed_coupling: gamma = {gamma} is infeasible with N = {n} samples: the caps "
                         f"hold N*gamma = {n * gamma:.6g} < sum(beta) = {beta.sum():.6g}; raise gamma to at "
                         f"least {beta.sum() / n:.6g} or draw more samples")
    return cost, beta, gamma


def _nearest(cost: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Each column's mass to its cheapest row (ties: first row); optimal when no cap binds."""
    plan = np.zeros_like(cost)
    plan[np.argmin(cost, axis=0), np.arange(cost.shape[1])] = beta
    return plan


def _exact(cost: np.ndarray, beta: np.ndarray, gamma: float) -> np.ndarray:
    import ot

    n, m = cost.shape
    total = beta.sum()
    if gamma >= total:
        return _nearest(cost, beta)
    a = np.full(n, max(gamma, total / n))          # tight caps within FEAS_TOL: exactly N*gamma = sum
    b = np.append(beta, max(a.sum() - total, 0.0))
    full = np.zeros((n, m + 1))
    full[:, :m] = cost
    plan, log = ot.emd(a, b, full, log=True)
    if log.get("result_code", 1) != 1:
        raise RuntimeError(f"POT network simplex did not reach an optimum: {log.get('warning')}")
    return np.ascontiguousarray(plan[:, :m])


def _greedy(cost: np.ndarray, beta: np.ndarray, gamma: float, eps: float = 1e-12) -> np.ndarray:
    """MoSE ``get_coupling_matrix`` (segmentation.md §4.2).

    Zero-weight columns (absent annotators) are dropped first, so M counts real annotations;
    ``eps`` absorbs float round-off in the reference's ``< gamma`` and ``== 0`` tests.
    """
    plan = np.zeros_like(cost)
    keep = np.flatnonzero(beta > 0)
    c, bk = cost[:, keep], beta[keep]
    if gamma >= 1.0:
        plan[:, keep] = _nearest(c, bk)
        return plan
    n, m = c.shape
    sub = np.zeros((n, m))
    rows = np.zeros(n)
    rem = np.full(m, 1.0 / m)                      # uniform working masses, not beta
    for j in np.argsort(c.min(axis=0), kind="stable"):
        for i in np.argsort(c[:, j], kind="stable"):
            if rows[i] < gamma - eps:
                x = min(gamma - rows[i], rem[j])
                sub[i, j] = x
                rows[i] += x
                rem[j] -= x
                if rem[j] <= eps:
                    break
    plan[:, keep] = sub * (bk * m)                 # rescale columns to the true weights
    if plan.sum(axis=1).max() > gamma + 1e-9:
        warn_once("segmentation.ot_solver=greedy (the reference heuristic) breaks the cap gamma on a sample's "
                  "transported mass when annotator weights differ; segmentation.ot_solver=exact solves the "
                  "relaxed problem itself")
    return plan


def relaxed_coupling(cost: np.ndarray, beta: np.ndarray, gamma: float, solver: str = "exact") -> np.ndarray:
    """N x M plan T >= 0 minimising <T, C> s.t. T 1 <= gamma, T^T 1 = beta (module docstring).

    ``solver``: ``exact`` (LP via POT, dummy-sink form) or ``greedy`` (MoSE reference).
    Raises BenchError for N*gamma < sum(beta) (no plan exists) and for malformed input.
    """
    if solver not in SOLVERS:
        raise BenchError(f"unknown OT solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    cost, beta, gamma = _check_problem(cost, beta, gamma)
    return _exact(cost, beta, gamma) if solver == "exact" else _greedy(cost, beta, gamma)


def relaxed_couplings(cost: np.ndarray, beta: np.ndarray, gamma: float, solver: str = "exact") -> np.ndarray:
    """B x N x M plans for a batch: cost B x N x M, beta B x M (or M, shared)."""
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 3:
        raise BenchError(f"relaxed_couplings: cost must be B x N x M, got shape {cost.shape}")
    beta = np.asarray(beta, dtype=np.float64)
    beta = np.broadcast_to(beta, (cost.shape[0], cost.shape[2])) if beta.ndim == 1 else beta
    if beta.shape != (cost.shape[0], cost.shape[2]):
        raise BenchError(f"relaxed_couplings: beta has shape {beta.shape}, expected {(cost.shape[0], cost.shape[2])}")
    return np.stack([relaxed_coupling(cost[i], beta[i], gamma, solver) for i in range(cost.shape[0])]) \
        if cost.shape[0] else np.zeros_like(cost)


# --------------------------------------------------------------------------------------- loss

def ot_loss(cost: Tensor, log_alpha: Tensor, beta: Tensor | np.ndarray, gamma: float, lam: float,
            solver: str = "exact") -> OTLossOutput:
    """Paper eq. 7 with the reference normalisation (module docstring).

    ``cost``: B x N x M (from :func:`soft_iou_cost`, with grad); ``log_alpha``: B x N log sample
    weights log(pi_k / S); ``beta``: B x M (or M) annotation weights. The B coupling problems are
    solved on the CPU in float64 from one detached host copy of cost and beta (one device sync).
    """
    if cost.dim() != 3:
        raise BenchError(f"ot_loss: cost must be B x N x M, got shape {tuple(cost.shape)}")
    b, n, m = cost.shape
    if tuple(log_alpha.shape) != (b, n):
        raise BenchError(f"ot_loss: log_alpha has shape {tuple(log_alpha.shape)}, expected {(b, n)} "
                         "(log sample weights, expert-major)")
    beta_t = torch.as_tensor(beta).to(device=cost.device).detach()
    if beta_t.dim() == 1:
        beta_t = beta_t.expand(b, -1)
    if tuple(beta_t.shape) != (b, m):
        raise BenchError(f"ot_loss: beta has shape {tuple(beta_t.shape)}, expected {(b, m)}")
    host = torch.cat([cost.detach().reshape(b, n * m).double(), beta_t.double()], dim=1).cpu().numpy()
    plan_np = relaxed_couplings(host[:, :n * m].reshape(b, n, m), host[:, n * m:], gamma, solver)
    plan = torch.from_numpy(plan_np).to(device=cost.device, dtype=cost.dtype)
    transport = (plan * cost).sum(dim=(1, 2)).mean()
    t = plan.sum(-1).to(log_alpha.dtype)
    log_p = torch.logaddexp(log_alpha, torch.full_like(log_alpha, math.log(KL_EPS)))   # log(alpha + 1e-8)
    kl = (torch.xlogy(t, t) - t * log_p).sum() / (b * n)
    return OTLossOutput(transport + lam * kl, transport, kl, plan)


# ---------------------------------------------------------------------------------- benchmark

def time_ot_solve(batch: int = 16, n: int = 16, m: int = 3, repeats: int = 50, gamma: float = 0.5,
                  seed: int = 0) -> dict:
    """Wall time of solving one training step's B couplings (host side only), per solver.

    Costs are uniform in [0, 1), beta uniform; ``gamma`` is clipped up to 1/n if infeasible.
    Returns the sizes and, per solver, the median and mean milliseconds per step.
    """
    if min(batch, n, m, repeats) < 1:
        raise BenchError("time_ot_solve: batch, n, m and repeats must be >= 1")
    rng = np.random.default_rng(np.random.SeedSequence([seed, batch, n, m]))
    gamma = max(float(gamma), 1.0 / n)
    costs = rng.random((repeats, batch, n, m))
    beta = np.full(m, 1.0 / m)
    out: dict = {"batch": batch, "n": n, "m": m, "repeats": repeats, "gamma": gamma}
    for solver in SOLVERS:
        relaxed_couplings(costs[0], beta, gamma, solver)                    # warm-up (imports)
        times = []
        for r in range(repeats):
            start = time.perf_counter()
            relaxed_couplings(costs[r], beta, gamma, solver)
            times.append((time.perf_counter() - start) * 1e3)
        out[f"{solver}_ms_median"] = float(np.median(times))
        out[f"{solver}_ms_mean"] = float(np.mean(times))
    return out
