"""Image encoders shared by the method and the baselines (timm backbones, one input channel).

The paper pretrains a ResNet-50 (section "Contrastive self-supervised pretraining"); DeepDXA uses a
ResNet-18 and the Table 8 baselines a VGG16. All are built here with ``timm.create_model(name,
num_classes=0, in_chans=1)`` so they return pooled features, never classifier logits, and are
initialised from scratch (the paper does not mention ImageNet weights, and SSL pretraining is
its point; no weights are downloaded).

Inputs are radiograph patches scaled to [0, 1] (uint16 / 65535) and resized to the encoder input
size (:func:`to_input`); no fixed mean/std normalisation is applied: a ResNet's first batch norm
absorbs the intensity scale. The plain VGGs of the Table 8 baselines (baselines.vgg) have no batch
norm and see the [0, 1] inputs as they are, under timm's Kaiming initialisation; ``vgg.name=vgg16_bn``
is the variant with batch norm.
"""
from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import BenchError


def check_encoder_name(name: str, option: str) -> None:
    """Raise BenchError unless `name` is a timm model (checked when the config is resolved, so a typo
    fails before a segmentation training, not hours later); `option` names the config key."""
    import timm

    if not timm.is_model(name):
        near = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise BenchError(f"{option} = {name!r} is not a timm model{hint} (any name of timm.list_models() "
                         "works, e.g. resnet18, resnet50, vgg16)")


def build_encoder(name: str = "resnet50", in_chans: int = 1, **kwargs) -> nn.Module:
    """A timm backbone returning pooled features; ``.num_features`` is their width."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown model names
        raise BenchError(f"unknown encoder {name!r}: {exc}; any timm model name works "
                         "(e.g. resnet18, resnet50, vgg16)") from exc
    return model


def to_input(patches: torch.Tensor, size: int) -> torch.Tensor:
    """uint8/uint16/float patches (B×H×W or B×1×H×W) → float B×1×size×size in [0, 1] (antialiased resize)."""
    x = patches
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.dtype in (torch.uint16, torch.int32, torch.int64, torch.int16):
        x = x.float() / 65535.0
    else:
        x = x.float()
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


@torch.no_grad()
def extract_features(encoder: nn.Module, patches: torch.Tensor, size: int, device: torch.device,
                     batch_size: int = 128) -> torch.Tensor:
    """Frozen-encoder features of many patches (eval mode; bf16 autocast and channels_last on CUDA)."""
    encoder = encoder.to(device).eval()
    cuda = device.type == "cuda"
    if cuda:
        encoder = encoder.to(memory_format=torch.channels_last)
    chunks = []
    for start in range(0, len(patches), batch_size):
        x = to_input(patches[start:start + batch_size].to(device, non_blocking=True), size)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            feats = encoder(x)
        chunks.append(feats.float())
    if not chunks:
        return torch.zeros(0, getattr(encoder, "num_features", 0), device=device)
    return torch.cat(chunks)
