"""What this process may use of the machine: its cores and the torch device a run asks for."""
from __future__ import annotations

import os

from bench.config import check_device_name
from bench.errors import BenchError


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_device(name: str, check: bool = True):
    """`auto` → cuda when available else cpu; `cuda` without a GPU is a user error.

    With ``check=False`` (a cluster driver that may have no GPU itself) `cuda` is taken as given.
    """
    import torch

    check_device_name(name)
    if not check and name != "auto":
        return torch.device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


__all__ = ["resolve_device", "usable_cores"]
