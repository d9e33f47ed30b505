"""Adam for the end-to-end loops: the fused CUDA kernel on a GPU, the foreach implementation on the
CPU (issue 9: fused or foreach optimiser updates; the same choice as the segmentation loop)."""
from __future__ import annotations

from typing import Iterable

import torch


def adam(params: Iterable[torch.nn.Parameter], device: torch.device | str, lr: float,
         weight_decay: float = 0.0) -> torch.optim.Adam:
    """``torch.optim.Adam`` (L2 weight decay) with ``fused=True`` on CUDA, ``foreach=True`` elsewhere."""
    cuda = torch.device(device).type == "cuda"
    impl = {"fused": True} if cuda else {"foreach": True}
    return torch.optim.Adam(list(params), lr=lr, weight_decay=weight_decay, **impl)


__all__ = ["adam"]
