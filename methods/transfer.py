"""Host → device copies that do not stall the host.

Random draws that must not depend on the device (flips drawn on a CPU ``torch.Generator``, so CPU
and GPU runs see the same augmentations) still have to reach the GPU each step. A plain
``.to("cuda")`` of a pageable tensor synchronises the host with the stream, so the host can no
longer queue work ahead of the GPU; a copy from pinned memory with ``non_blocking=True`` does not
(PyTorch's pinned-memory allocator keeps the buffer alive until the copy has run).
"""
from __future__ import annotations

import torch


def to_device_async(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` on `device`: through pinned memory without a host synchronisation on CUDA, as is elsewhere."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


__all__ = ["to_device_async"]
