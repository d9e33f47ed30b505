"""Projection heads per SSL method, on top of the pooled encoder features (ssl.md §2).

* SimCLR and SupCon: Linear(in, hidden) – BN – ReLU – Linear(hidden, out), 2048 → 2048 → 128
  (SimCLR's 2-layer MLP; SupCon's official head is the same without BN, ``batch_norm=False``).
* SwAV: the same MLP to 128, L2-normalised, then K = 3000 prototypes (bias-free, unit rows);
  :class:`SwAVHead` returns both the normalised projection (for the queue) and the scores.
* VICReg: the official expander 8192-8192-8192: Linear–BN–ReLU twice, then a bias-free Linear.

Widths are options (:class:`HeadConfig`) so the smoke profile can use tiny heads;
:data:`HEAD_PROFILES` holds suggested per-profile values for whoever registers the config section.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError
from methods.ssl.loss_swav import SwAVPrototypes

METHODS = ("simclr", "supcon", "swav", "vicreg")


@dataclass
class HeadConfig:
    """Projection-head widths (paper profile defaults)."""

    hidden_dim: int = 2048                              # hidden width of the SimCLR / SupCon / SwAV projector
    out_dim: int = 128                                  # embedding width of SimCLR / SupCon / SwAV
    vicreg_dims: tuple[int, ...] = (8192, 8192, 8192)   # VICReg expander widths, the last is the embedding
    n_prototypes: int = 3000                            # SwAV prototypes K
    batch_norm: bool = True                             # BatchNorm1d after each hidden Linear

    def validate(self) -> None:
        """Raise BenchError naming the bad width."""
        widths = {"hidden_dim": self.hidden_dim, "out_dim": self.out_dim, "n_prototypes": self.n_prototypes}
        for name, value in widths.items():
            if value < 1:
                raise BenchError(f"heads.{name} = {value} must be >= 1")
        if not self.vicreg_dims or min(self.vicreg_dims) < 1:
            raise BenchError(f"heads.vicreg_dims = {self.vicreg_dims} must be a non-empty list of widths >= 1")


HEAD_PROFILES: dict[str, dict] = {
    "smoke": dict(hidden_dim=128, out_dim=64, vicreg_dims=(256, 256, 256), n_prototypes=64),
    "quick": dict(hidden_dim=2048, out_dim=128, vicreg_dims=(2048, 2048, 2048), n_prototypes=512),
    "paper": dict(hidden_dim=2048, out_dim=128, vicreg_dims=(8192, 8192, 8192), n_prototypes=3000),
}


def mlp(in_dim: int, dims: Sequence[int], batch_norm: bool = True, last_bias: bool = True) -> nn.Sequential:
    """Linear layers of widths `dims`; BN (optional) + ReLU after every layer but the last."""
    layers: list[nn.Module] = []
    prev = in_dim
    for i, width in enumerate(dims):
        last = i == len(dims) - 1
        layers.append(nn.Linear(prev, width, bias=last_bias or not last))
        if not last:
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(inplace=True))
        prev = width
    return nn.Sequential(*layers)


class SwAVHead(nn.Module):
    """Projector → L2-normalise → prototype scores. ``forward`` returns (z, scores)."""

    def __init__(self, in_dim: int, cfg: HeadConfig):
        super().__init__()
        self.projector = mlp(in_dim, (cfg.hidden_dim, cfg.out_dim), cfg.batch_norm)
        self.prototypes = SwAVPrototypes(cfg.out_dim, cfg.n_prototypes)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.normalize(self.projector(h), dim=1)
        return z, self.prototypes(z)


def build_head(method: str, in_dim: int = 2048, cfg: HeadConfig | None = None) -> nn.Module:
    """The projection head of `method` (simclr | supcon | swav | vicreg) on `in_dim` features."""
    cfg = cfg or HeadConfig()
    cfg.validate()
    if method in ("simclr", "supcon"):
        return mlp(in_dim, (cfg.hidden_dim, cfg.out_dim), cfg.batch_norm)
    if method == "swav":
        return SwAVHead(in_dim, cfg)
    if method == "vicreg":
        return mlp(in_dim, tuple(cfg.vicreg_dims), cfg.batch_norm, last_bias=False)
    raise BenchError(f"unknown SSL method {method!r}; choose one of {', '.join(METHODS)}")


__all__ = ["HeadConfig", "HEAD_PROFILES", "METHODS", "mlp", "SwAVHead", "build_head"]
