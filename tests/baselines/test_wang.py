"""The VGG backbone's feature width, and the multi-ROI transformer's shapes and ROI-position semantics."""
from __future__ import annotations

import torch
from torch import nn

from baselines.vgg import VGGConfig, build_vgg
from baselines.wang import MultiRoiTransformer, WangConfig
from methods.supervised import Classifier


def test_vgg_backbone_reports_the_width_it_returns():
    backbone = build_vgg(VGGConfig(name="vgg11", mlp_ratio=1 / 64))
    assert backbone.model.num_features == 512           # timm's attribute: the last conv width
    out = backbone(torch.rand(2, 1, 32, 32))
    assert out.shape == (2, 4096) == (2, backbone.num_features)   # fc7 output, what forward() returns
    assert Classifier(backbone)(torch.rand(2, 1, 32, 32)).shape == (2, 2)


class TinyCNN(nn.Module):
    num_features = 6

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def _model(pooling: str) -> MultiRoiTransformer:
    torch.manual_seed(0)
    model = MultiRoiTransformer(TinyCNN(), rois=5, cfg=WangConfig(d_model=8, heads=2, layers=2, dropout=0.0,
                                                                     pooling=pooling))
    return model.eval()


def test_shapes_and_roi_position_embedding():
    for pooling in ("cls", "mean"):
        model = _model(pooling)
        x = torch.rand(3, 5, 1, 16, 16)
        logits = model(x)
        assert logits.shape == (3, 2) and model.tokens(x).shape == (3, 5, 8)
        perm = torch.tensor([3, 0, 4, 1, 2])
        # the encoder is permutation-equivariant: reordering the ROIs together with their position
        # embeddings changes nothing ...
        with torch.no_grad():
            model.position.copy_(model.position[perm].clone())
            torch.testing.assert_close(model(x[:, perm]), logits, rtol=1e-5, atol=1e-6)
            # ... while reordering the ROIs alone does: the embedding tells the model which bone it sees
            model.position.copy_(model.position[torch.argsort(perm)].clone())
            assert not torch.allclose(model(x[:, perm]), logits, atol=1e-4)


def test_rois_of_a_sample_interact_but_samples_do_not():
    model = _model("cls")
    x = torch.rand(2, 5, 1, 16, 16)
    base = model(x)
    y = x.clone()
    y[0, 2] = torch.rand(1, 16, 16)                     # change one ROI of the first radiograph
    out = model(y)
    assert not torch.allclose(out[0], base[0]) and torch.allclose(out[1], base[1])
