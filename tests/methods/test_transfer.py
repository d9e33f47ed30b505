import pytest
import torch

from methods.supervised import SupervisedConfig, flip_augment
from methods.transfer import to_device_async


def test_to_device_async_keeps_values_on_cpu():
    t = torch.rand(3, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(to_device_async(t, "cpu"), t)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flips_reach_the_gpu_without_a_host_sync():
    """The same CPU-generator draws as on the CPU, and no synchronising call (sync debug mode 'error')."""
    x = torch.rand(8, 1, 6, 5, generator=torch.Generator().manual_seed(1))
    cfg = SupervisedConfig()
    ref = flip_augment(x, cfg, torch.Generator().manual_seed(2))
    xc = x.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = flip_augment(xc, cfg, torch.Generator().manual_seed(2))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(out.cpu(), ref)
