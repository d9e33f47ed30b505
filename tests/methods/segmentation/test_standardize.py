"""Per-image z-score of the U-Net input: over the canvas (reference) or over the unclipped pixels."""
from __future__ import annotations

import pytest
import torch

from methods.segmentation.model import ModelSpec, UNetBackbone, build_model, standardize_images


def _hand(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.1 + 0.8 * torch.rand(1, 1, 40, 30, generator=g)


def test_canvas_is_the_plain_z_score():
    x = torch.cat([_hand(0), _hand(1)])
    z = standardize_images(x, "canvas")
    ref = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.var(dim=(2, 3), keepdim=True, unbiased=False) + 1e-6).sqrt()
    assert torch.allclose(z, ref)


def test_unclipped_ignores_saturated_frames_padding_and_shutters():
    x = _hand()
    framed = x.clone()
    framed[..., :8, :] = 1.0          # a CR plate's white collimation border
    framed[..., :, :5] = 0.0          # canvas padding / an electronic shutter
    inner = (slice(None), slice(None), slice(8, None), slice(5, None))
    z_plain = standardize_images(x[inner], "unclipped")
    z_framed = standardize_images(framed, "unclipped")
    assert torch.allclose(z_framed[inner], z_plain, atol=1e-5)   # the bones' z-values do not move
    assert z_framed[..., 0, 10].item() > z_framed[inner].max()    # and the frame stays brightest
    # the reference statistics do move: what made a wide white frame hide the bones
    assert not torch.allclose(standardize_images(framed, "canvas")[inner], z_plain, atol=0.1)


def test_too_few_unclipped_pixels_fall_back_to_the_canvas():
    x = torch.zeros(1, 1, 20, 20)
    x[..., :10, :] = 1.0
    x[..., 0, 0] = 0.5                 # one unclipped pixel: < 5 %
    assert torch.allclose(standardize_images(x, "unclipped"), standardize_images(x, "canvas"))


def test_spec_round_trip_and_old_specs():
    spec = ModelSpec(widths=(4, 8), canvas=(16, 16), standardize_over="unclipped")
    model = build_model(spec)
    assert model.backbone.standardize_over == "unclipped"
    old = spec.to_dict()
    del old["standardize_over"]        # a model.pt saved before the option: the reference z-score
    assert ModelSpec.from_dict(old).standardize_over == "canvas"
    with pytest.raises(ValueError, match="standardize_over"):
        UNetBackbone(1, (4, 8), 0.1, standardize_over="image")
