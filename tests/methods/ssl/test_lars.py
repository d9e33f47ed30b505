"""LARS/LARC: hand-computed trust ratios, apex-LARC reference, exclusions, schedule."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from bench.errors import BenchError
from methods.ssl.lars import LARC, LARS, cosine_schedule, param_groups, set_lr


def _single(w, g, **kw):
    p = nn.Parameter(torch.tensor(w, dtype=torch.float64))
    p.grad = torch.tensor(g, dtype=torch.float64)
    return p


def test_trust_ratio_on_a_single_tensor_lars():
    # ‖w‖ = 5, ‖g‖ = 0.5 (3-4-5 triangles), λ = 0.1, η = 0.001, lr = 2
    p = _single([3.0, 4.0], [0.3, -0.4])
    opt = LARS([p], lr=2.0, momentum=0.0, weight_decay=0.1, trust_coefficient=0.001)
    opt.step()
    r = 0.001 * 5 / (0.5 + 0.1 * 5 + 1e-8)                    # = 0.005
    assert r == pytest.approx(0.005, rel=1e-6)
    expected = [3.0 - 2.0 * r * (0.3 + 0.1 * 3.0), 4.0 - 2.0 * r * (-0.4 + 0.1 * 4.0)]
    assert p.detach().tolist() == pytest.approx(expected, rel=1e-12)
    assert float(opt.state[p]["trust_ratio"]) == pytest.approx(r)


@pytest.mark.parametrize("lr, effective", [(0.1, 0.05), (0.01, 0.01)])
def test_larc_clip_gives_min_of_ratio_and_lr(lr, effective):
    # η = 0.02, ‖w‖ = 5, ‖g‖ = 2, no decay: r = 0.05; clipped step = min(r, lr)·g
    p = _single([3.0, 4.0], [1.2, 1.6])
    opt = LARC([p], lr=lr, momentum=0.0)
    assert opt.defaults["trust_coefficient"] == 0.02 and opt.defaults["clip"] is True
    opt.step()
    assert p.detach().tolist() == pytest.approx([3.0 - effective * 1.2, 4.0 - effective * 1.6], rel=1e-9)


def test_momentum_two_steps_by_hand():
    p = _single([3.0, 4.0], [0.3, -0.4])
    opt = LARS([p], lr=1.0, momentum=0.9, trust_coefficient=0.001)
    r1 = 0.001 * 5 / (0.5 + 1e-8)
    opt.step()
    w1 = [3.0 - r1 * 0.3, 4.0 + r1 * 0.4]
    assert p.detach().tolist() == pytest.approx(w1, rel=1e-12)
    p.grad = torch.tensor([0.6, 0.8], dtype=torch.float64)          # ‖g‖ = 1
    r2 = 0.001 * math.hypot(*w1) / (1.0 + 1e-8)
    opt.step()
    v = [0.9 * r1 * 0.3 + r2 * 0.6, 0.9 * -r1 * 0.4 + r2 * 0.8]
    assert p.detach().tolist() == pytest.approx([w1[0] - v[0], w1[1] - v[1]], rel=1e-12)


def test_zero_norm_tensor_is_not_scaled_and_not_decayed():
    p = _single([0.0, 0.0], [1.0, 2.0])
    LARS([p], lr=0.5, momentum=0.0, weight_decay=0.1).step()
    assert p.detach().tolist() == pytest.approx([-0.5, -1.0])


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 3), nn.LayerNorm(3))


def _grads(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 1, 8, 8, generator=g)
    model.zero_grad()
    model(x).pow(2).sum().backward()


def test_param_groups_split_by_ndim():
    model = _model()
    groups = param_groups(model, weight_decay=1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in groups[0]["params"])
    excluded = sorted(names[id(p)] for p in groups[1]["params"])
    assert decayed == ["0.weight", "4.weight"]
    assert excluded == ["0.bias", "1.bias", "1.weight", "4.bias", "5.bias", "5.weight"]
    assert groups[0]["weight_decay"] == 1e-4 and groups[1]["weight_decay"] == 0.0
    assert groups[1]["lars_exclude"] and not groups[0]["lars_exclude"]


def test_larc_leaves_bias_and_norm_parameters_as_plain_sgd():
    model = _model()
    ref = copy.deepcopy(model)
    opt = LARC(param_groups(model, 1e-4), lr=0.3, momentum=0.9)
    sgd = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=0.9)
    g = torch.Generator().manual_seed(4)
    for _ in range(3):                      # the same gradients for both (momentum included)
        for p, q in zip(model.parameters(), ref.parameters()):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        sgd.step()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if p.ndim <= 1:
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)          # unscaled: same as SGD
        else:
            assert (p - q).abs().max() > 1e-4, name                           # weights are adapted


class _ApexLARC:
    """NVIDIA apex ``LARC`` transcribed: fold weight decay and the trust ratio into the gradient,
    then step the wrapped optimiser with its weight decay switched off."""

    def __init__(self, optimizer, trust_coefficient=0.02, clip=True, eps=1e-8):
        self.optim, self.trust, self.clip, self.eps = optimizer, trust_coefficient, clip, eps

    @torch.no_grad()
    def step(self):
        saved = []
        for group in self.optim.param_groups:
            wd = group["weight_decay"]
            saved.append(wd)
            group["weight_decay"] = 0
            for p in group["params"]:
                if p.grad is None:
                    continue
                pn, gn = torch.norm(p.data), torch.norm(p.grad.data)
                if pn != 0 and gn != 0:
                    adaptive = self.trust * pn / (gn + pn * wd + self.eps)
                    if self.clip:
                        adaptive = min(adaptive / group["lr"], 1)
                    p.grad.data += wd * p.data
                    p.grad.data *= adaptive
        self.optim.step()
        for group, wd in zip(self.optim.param_groups, saved):
            group["weight_decay"] = wd


@pytest.mark.parametrize("clip, trust, lr", [(True, 0.02, 0.3), (True, 0.02, 0.001), (False, 0.001, 2.0)])
def test_matches_apex_larc_on_adapted_weights(clip, trust, lr):
    model = _model()
    ref = copy.deepcopy(model)
    ours = LARS(param_groups(model, 1e-3), lr=lr, momentum=0.9, trust_coefficient=trust, clip=clip)
    # apex applies LARC to every tensor it is given: hand it only the weights, SGD for the rest
    weights = [p for p in ref.parameters() if p.ndim > 1]
    others = [p for p in ref.parameters() if p.ndim <= 1]
    apex = _ApexLARC(torch.optim.SGD(weights, lr=lr, momentum=0.9, weight_decay=1e-3), trust, clip)
    sgd = torch.optim.SGD(others, lr=lr, momentum=0.9)
    for step in range(4):
        _grads(model, step)
        _grads(ref, step)
        ours.step()
        apex.step()
        sgd.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_frozen_parameters_are_skipped():
    model = _model()
    before = model[4].weight.detach().clone()
    model[4].weight.requires_grad_(False)
    opt = LARC(param_groups(model, 1e-4), lr=0.3)
    _grads(model)
    opt.step()
    assert torch.equal(model[4].weight, before)


def test_cosine_schedule_values():
    base, total, warm = 0.8, 100, 10
    assert cosine_schedule(0, total, base, warm) == pytest.approx(0.08)
    assert cosine_schedule(9, total, base, warm) == pytest.approx(0.8)
    assert cosine_schedule(10, total, base, warm) == pytest.approx(0.8)
    assert cosine_schedule(55, total, base, warm) == pytest.approx(0.4)          # half-way: the mean
    assert cosine_schedule(100, total, base, warm) == 0.0
    assert cosine_schedule(55, total, base, warm, end_lr=0.2) == pytest.approx(0.5)
    lrs = [cosine_schedule(t, total, base, warm) for t in range(warm, total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert cosine_schedule(0, 10, 1.0, 0) == 1.0
    with pytest.raises(BenchError, match="warmup"):
        cosine_schedule(0, 10, 1.0, 20)
    opt = LARC(param_groups(_model(), 0.0), lr=1.0)
    set_lr(opt, 0.25)
    assert all(g["lr"] == 0.25 for g in opt.param_groups)


def test_bad_options_raise():
    with pytest.raises(BenchError, match="trust_coefficient"):
        LARS(_model().parameters(), lr=0.1, trust_coefficient=0.0)
