import pytest
import torch
import torch.nn.functional as F

from methods.affine import affine_grid


@pytest.mark.parametrize("size", [(224, 224), (96, 96), (320, 208), (7, 3), (1, 5)])
def test_affine_grid_equals_torch(size):
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(6, 2, 3, generator=gen)
    h, w = size
    ours = affine_grid(theta, h, w)
    ref = F.affine_grid(theta, [6, 1, h, w], align_corners=False)
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=2e-6, rtol=0)


def test_affine_grid_identity_samples_exactly():
    x = torch.rand(2, 1, 9, 13, generator=torch.Generator().manual_seed(1))
    theta = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
    out = F.grid_sample(x, affine_grid(theta, 9, 13), mode="bilinear", align_corners=False)
    assert torch.allclose(out, x, atol=1e-6)


def test_affine_grid_rejects_bad_theta():
    with pytest.raises(ValueError, match="B×2×3"):
        affine_grid(torch.zeros(2, 3, 3), 4, 4)
