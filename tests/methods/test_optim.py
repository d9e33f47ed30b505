"""methods.optim.adam: foreach on the CPU, fused on CUDA; both take the step torch's reference Adam takes."""
from __future__ import annotations

import pytest
import torch

from methods.optim import adam


def _steps(opt_of, device: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).to(device)
    opt = opt_of(model)
    x = torch.randn(8, 5, device=device)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return [p.detach().cpu() for p in model.parameters()]


def test_cpu_adam_is_foreach_and_takes_the_reference_step():
    opt = adam(torch.nn.Linear(2, 2).parameters(), "cpu", lr=1e-2, weight_decay=1e-3)
    assert opt.defaults["foreach"] is True and not opt.defaults.get("fused")
    ours = _steps(lambda m: adam(m.parameters(), "cpu", lr=1e-2, weight_decay=1e-3), "cpu")
    ref = _steps(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3, foreach=False), "cpu")
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_adam_is_fused_and_takes_the_reference_step():
    opt = adam(torch.nn.Linear(2, 2).cuda().parameters(), "cuda", lr=1e-2)
    assert opt.defaults["fused"] is True
    ours = _steps(lambda m: adam(m.parameters(), "cuda", lr=1e-2, weight_decay=1e-3), "cuda")
    ref = _steps(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-3, foreach=False), "cuda")
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
