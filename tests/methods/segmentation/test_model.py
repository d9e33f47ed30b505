"""MoSE U-Net and single-decoder model: architecture, sample order, weights, priors, gradients."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.errors import BenchError
from methods.segmentation.config import SegmentationConfig
from methods.segmentation.model import (FusionHead, ModelSpec, MoSEUNet, binary_code_init, build_model,
                                        count_parameters)
from methods.segmentation.single import SingleUNet, ce_dice_loss

LIDC = (32, 64, 128, 192, 192, 192, 192)


def small_spec(**kw) -> ModelSpec:
    base = dict(widths=(6, 8, 10), experts=3, samples=2, latent=2, classes=4, canvas=(24, 16),
                bn_momentum=0.1)
    base.update(kw)
    return ModelSpec(**base)


def test_reference_parameter_counts_and_bottleneck():
    """segmentation.md T10: the LIDC and Cityscapes configurations of the reference code."""
    lidc = build_model(ModelSpec(classes=2, latent=1, experts=4, widths=LIDC))
    assert count_parameters(lidc) == 9_321_195
    city = build_model(ModelSpec(in_channels=4, classes=25, latent=5, experts=35, widths=LIDC))
    assert count_parameters(city) == 9_329_628
    u_g, u_d = lidc.backbone(torch.zeros(2, 1, 128, 128))
    assert u_g.shape == (2, 192, 2, 2) and u_d.shape == (2, 32, 128, 128)


def test_binary_code_init():
    """segmentation.md T11: rows r < 2^L are r in binary, MSB first; others U[0, 1)."""
    mu = binary_code_init(4, 1, torch.Generator().manual_seed(0))
    assert mu[0, 0] == 0 and mu[1, 0] == 1 and ((mu[2:] >= 0) & (mu[2:] < 1)).all()
    assert torch.equal(binary_code_init(4, 2), torch.tensor([[0., 0.], [0., 1.], [1., 0.], [1., 1.]]))
    mu35 = binary_code_init(35, 5)
    assert mu35[5].tolist() == [0, 0, 1, 0, 1] and mu35[31].tolist() == [1, 1, 1, 1, 1]
    assert ((mu35[32:] >= 0) & (mu35[32:] < 1)).all()
    model = build_model(ModelSpec(experts=4, latent=2, widths=(4, 4)))
    assert torch.equal(model.mu.detach(), binary_code_init(4, 2))
    assert torch.allclose(model.log_sigma.exp(), torch.full((4, 2), 0.125))


@pytest.mark.parametrize("head", ["shared", "per_expert"])
def test_shapes_expert_major_order_and_weights(head):
    spec = small_spec(head=head)
    model = build_model(spec, seed=1)
    with torch.no_grad():
        model.log_sigma.fill_(-30.0)        # z = mu_k (+1e-8 eps): samples of one expert coincide
        model.mu.add_(1.0)                  # away from mu = 0, where the modulation scale is ~1e-5
    x = torch.rand(5, 1, 24, 16)
    out = model(x, generator=torch.Generator().manual_seed(0))
    k, s = spec.experts, spec.samples
    assert out.logits.shape == (5, k * s, 4, 24, 16)
    assert out.probs.shape == (5, k * s, 4, 24, 16)
    assert torch.allclose(out.probs.sum(2), torch.ones(5, k * s, 24, 16), atol=1e-5)
    assert torch.allclose(out.weights.sum(1), torch.ones(5), atol=1e-6)
    # expert-major: sample n = k*S + s carries weight pi_k / S and expert k's latent
    pi = out.log_pi.exp()
    for kk in range(k):
        for ss in range(s):
            n = kk * s + ss
            assert torch.allclose(out.weights[:, n], pi[:, kk] / s, atol=1e-6)
            assert torch.allclose(out.logits[:, n], out.logits[:, kk * s], atol=1e-5)
        if kk:
            assert not torch.allclose(out.logits[:, kk * s], out.logits[:, 0], atol=1e-3)
    mean = out.mean_probs()
    assert torch.allclose(mean.sum(1), torch.ones(5, 24, 16), atol=1e-5)


def test_per_expert_head_equals_separate_heads():
    """The grouped per-expert head is exactly K independent shared-form heads (BN statistics too)."""
    k, s, c, lat, cl = 3, 2, 5, 2, 4
    per = FusionHead(c, lat, cl, k, per_expert=True, momentum=0.1)
    u_d = torch.randn(2, c, 7, 6)
    z = torch.randn(2, k, s, lat)
    y = per(u_d, z)
    for kk in range(k):
        one = FusionHead(c, lat, cl, 1, per_expert=False, momentum=0.1)
        with torch.no_grad():
            for name in ("w_bias", "w_scale", "b_bias", "b_scale"):
                getattr(one, name).copy_(getattr(per, name)[kk:kk + 1])
            for (_, p_one), (_, p_per) in zip(one.stack.named_parameters(), per.stack.named_parameters()):
                n_out = p_one.shape[0]
                p_one.copy_(p_per[kk * n_out:(kk + 1) * n_out])
        y1 = one(u_d, z[:, kk:kk + 1])
        assert torch.allclose(y[:, kk], y1[:, 0], atol=1e-5)


def test_standard_form_draws_from_the_experts():
    for head in ("shared", "per_expert"):
        model = build_model(small_spec(head=head), seed=2)
        with torch.no_grad():
            model.log_sigma.fill_(-30.0)
        model.eval()
        x = torch.rand(2, 1, 24, 16)
        with torch.no_grad():
            compact = model(x, samples=1)
            std = model.sample_standard(x, 7, generator=torch.Generator().manual_seed(3))
        assert std.logits.shape == (2, 7, 4, 24, 16)
        assert torch.allclose(std.weights, torch.full((2, 7), 1 / 7))
        for b in range(2):
            for n in range(7):
                d = (compact.logits[b] - std.logits[b, n][None]).abs().flatten(1).amax(1)
                assert d.min() < 1e-4, "every standard-form sample is one expert's output"


def test_gradients_reach_gating_only_through_kl():
    from methods.segmentation.data import one_hot
    from methods.segmentation.ot import ot_loss, soft_iou_cost

    model = build_model(small_spec(classes=8), seed=0)
    x = torch.rand(2, 1, 24, 16)
    labels = torch.randint(0, 8, (2, 3, 24, 16), dtype=torch.uint8)
    beta = torch.tensor([[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    out = model(x, generator=torch.Generator().manual_seed(0))
    cost = soft_iou_cost(out.probs, one_hot(labels, 8))
    res = ot_loss(cost, out.log_weights, beta, gamma=0.5, lam=1.0, solver="exact")
    gate = list(model.gate.parameters())
    seg_grads = torch.autograd.grad(res.transport, gate + [model.mu], retain_graph=True, allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in seg_grads[:-1])
    assert seg_grads[-1] is not None and torch.count_nonzero(seg_grads[-1]) > 0   # rsample path to mu
    kl_grads = torch.autograd.grad(res.kl, gate, retain_graph=True, allow_unused=True)
    assert all(g is not None for g in kl_grads) and torch.count_nonzero(kl_grads[-1]) > 0
    head_grads = torch.autograd.grad(res.kl, list(model.head.parameters()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in head_grads)


def test_build_model_is_seeded():
    a, b, c = (build_model(small_spec(), seed=s) for s in (5, 5, 6))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_single_model_output_and_loss_by_hand():
    model = build_model(small_spec(kind="single", classes=3), seed=0)
    assert isinstance(model, SingleUNet)
    out = model(torch.rand(2, 1, 24, 16))
    assert out.logits.shape == (2, 1, 3, 24, 16) and torch.allclose(out.weights, torch.ones(2, 1))
    # uniform prediction over 3 classes on a 1 x 4 image, two annotators with beta (0.25, 0.75)
    logits = torch.zeros(1, 3, 1, 4)
    labels = torch.tensor([[[[1, 1, 0, 0]], [[2, 0, 0, 0]]]], dtype=torch.uint8)
    beta = torch.tensor([[0.25, 0.75]])
    loss, ce, dice = ce_dice_loss(logits, labels, beta)
    # annotator 1: class 1 has I = 2/3, |P| = 4/3, |Y| = 2 -> (4/3 + 1) / (10/3 + 1) = 7/13;
    #              class 2 has I = 0, |Y| = 0 -> 1 / (4/3 + 1) = 3/7
    # annotator 2: class 1 -> 1 / (7/3) = 3/7; class 2: I = 1/3, |Y| = 1 -> (2/3 + 1) / (7/3 + 1) = 1/2
    d1 = 1 - (7 / 13 + 3 / 7) / 2
    d2 = 1 - (3 / 7 + 1 / 2) / 2
    assert ce.item() == pytest.approx(math.log(3), rel=1e-6)
    assert dice.item() == pytest.approx(0.25 * d1 + 0.75 * d2, rel=1e-6)
    assert loss.item() == pytest.approx(math.log(3) + 0.25 * d1 + 0.75 * d2, rel=1e-6)
    # a perfect, confident prediction of the only annotation has (almost) zero loss
    perfect = torch.nn.functional.one_hot(labels[:, 0].long(), 3).permute(0, 3, 1, 2).float() * 40
    loss0, _, _ = ce_dice_loss(perfect, labels[:, :1], torch.ones(1, 1))
    assert loss0.item() < 1e-6


def test_moseunet_is_module_type():
    assert isinstance(build_model(small_spec()), MoSEUNet)
    assert np.isclose(math.log(0.125), build_model(small_spec()).log_sigma[0, 0].item())


def test_config_profiles_and_validation():
    import methods.segmentation.config  # noqa: F401  (registers the section)
    from bench.config import resolve
    from bench.errors import BenchError

    paper = resolve("paper").segmentation
    assert paper.widths == LIDC and paper.working_size == 512 and paper.epochs == 200
    assert (paper.experts, paper.samples, paper.gamma0, paper.lam) == (4, 4, 0.5, 1.0)
    smoke = resolve("smoke").segmentation
    assert smoke.widths == (16, 32, 64, 64, 64) and 96 <= smoke.working_size <= 128
    for bad in ({"segmentation.model": "unet3"}, {"segmentation.head": "many"},
                {"segmentation.gamma0": 0.1, "segmentation.samples": 1},   # 0.1 * 4 * 1 < 1: no coupling
                {"segmentation.eval_splits": "val,holdout"}):
        with pytest.raises(BenchError):
            resolve("smoke", sets=bad).segmentation.validate()


def test_isotropic_prior_has_one_sigma_per_expert_and_old_specs_read_as_diagonal():
    model = build_model(small_spec(prior="isotropic", experts=3, latent=2))
    assert model.log_sigma.shape == (3, 1)
    with torch.no_grad():
        model.log_sigma.copy_(torch.tensor([[0.0], [-1.0], [1.0]]))
    eps = torch.randn(2, 3, 4, 2, generator=torch.Generator().manual_seed(0))
    z = model.latent_grid(2, 4, eps=eps)
    scale = (z - model.mu[None, :, None]) / eps                       # B x K x S x L: sigma_k + 1e-8 everywhere
    expected = (torch.tensor([0.0, -1.0, 1.0]).exp() + 1e-8)[None, :, None, None].expand_as(scale)
    assert torch.allclose(scale, expected, rtol=1e-5)
    draws = model.sample_standard(torch.randn(2, 1, 24, 16), 5, torch.Generator().manual_seed(1))
    assert draws.logits.shape[:2] == (2, 5)
    spec = small_spec().to_dict()
    spec.pop("prior")                                                 # a model.pt saved before the option
    assert build_model(ModelSpec.from_dict(spec)).log_sigma.shape == (3, 2)
    assert SegmentationConfig().prior == "isotropic" and ModelSpec().prior == "diagonal"
    with pytest.raises(BenchError, match="segmentation.prior must be one of isotropic, diagonal"):
        SegmentationConfig(prior="spherical").validate()
