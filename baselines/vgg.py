"""The VGG backbone of the Table 8 baselines (Jang, Hsieh, Wang), built through methods.encoders.

``timm.create_model("vgg16", num_classes=0)`` returns the pooled 4096-d output of fc7 (timm keeps
VGG's fc6/fc7 as a 7x7 + 1x1 convolutional MLP, ``pre_logits``, and adaptively pools feature maps
smaller than 7x7 up to it), but its ``num_features`` attribute is 512, the width of the last
convolution. :class:`Backbone` exposes the true output width as ``num_features`` (measured once
with a dummy forward), so methods.supervised.Classifier and the Wang model size their heads
right. The paper's baselines use VGG16 with its fully connected layers; the smoke profile swaps in
VGG11 with a narrow fc6 (``vgg.mlp_ratio``) so it trains in seconds on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.config import register_section
from bench.errors import BenchError
from methods.encoders import build_encoder, check_encoder_name


@dataclass
class VGGConfig:
    """VGG backbone of the Jang / Hsieh / Wang baselines."""

    name: str = "vgg16"         # timm model name (vgg11 | vgg13 | vgg16 | vgg19 | *_bn)
    mlp_ratio: float = 1.0      # width of fc6 relative to 4096 (timm's VGG mlp_ratio)

    def validate(self) -> None:
        """Raise BenchError naming the first bad option (before any stage runs)."""
        if not self.mlp_ratio > 0:
            raise BenchError(f"vgg.mlp_ratio = {self.mlp_ratio} must be > 0 (width of fc6 relative to 4096)")
        check_encoder_name(self.name, "vgg.name")


register_section("vgg", VGGConfig, {
    "smoke": {"name": "vgg11", "mlp_ratio": 1 / 32},
    "quick": {"name": "vgg16", "mlp_ratio": 1.0},
    "paper": {"name": "vgg16", "mlp_ratio": 1.0},
})


class Backbone(nn.Module):
    """A timm feature extractor whose ``num_features`` is the width of what forward() returns."""

    def __init__(self, model: nn.Module, probe_size: int = 64):
        super().__init__()
        self.model = model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.num_features = int(model(torch.zeros(1, 1, probe_size, probe_size)).shape[-1])
        model.train(was_training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def build_vgg(cfg: VGGConfig) -> Backbone:
    """The configured VGG, one input channel, no classifier, from scratch."""
    kwargs = {"mlp_ratio": cfg.mlp_ratio} if cfg.name.startswith("vgg") else {}
    return Backbone(build_encoder(cfg.name, **kwargs))
