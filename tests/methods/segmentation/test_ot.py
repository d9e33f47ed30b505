"""OT loss: soft-IoU cost, relaxed coupling (vs HiGHS and the reference cases T1-T8, T12), gradients, gamma."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog

from bench.errors import BenchError
from methods.segmentation.ot import (GammaScheduler, gamma_schedule, ot_loss, relaxed_coupling,
                                     relaxed_couplings, soft_iou_cost, time_ot_solve)

C4 = np.array([[.10, .20, .60, .70],
               [.15, .25, .55, .65],
               [.50, .40, .20, .30],
               [.60, .50, .25, .10]])
C6 = np.array([[.1, .1, .2, .3],
               [.5, .6, .7, .8],
               [.9, .9, .9, .9],
               [.4, .5, .3, .6]])
Q4 = np.full(4, .25)
BOTH = ("exact", "greedy")


def lp_optimum(cost: np.ndarray, beta: np.ndarray, gamma: float) -> float:
    """<T, C> of the relaxed problem solved by scipy's HiGHS LP."""
    n, m = cost.shape
    a_ub = np.kron(np.eye(n), np.ones((1, m)))          # row sums <= gamma
    a_eq = np.kron(np.ones((1, n)), np.eye(m))          # column sums = beta
    res = linprog(cost.ravel(), A_ub=a_ub, b_ub=np.full(n, gamma), A_eq=a_eq, b_eq=beta,
                  bounds=(0, None), method="highs")
    assert res.status == 0
    return float(res.fun)


def assert_feasible(plan: np.ndarray, beta: np.ndarray, gamma: float, tol: float = 1e-9) -> None:
    assert plan.min() >= -tol
    assert (plan.sum(1) <= gamma + tol).all()
    np.testing.assert_allclose(plan.sum(0), beta, atol=tol)


# ----------------------------------------------------------------------------------- cost (T7)

def test_soft_iou_cost_t7_hand_values():
    fg = torch.tensor([[.9, .8, .1, 0.], [0., 0., 0., 0.], [.5, 0., 0., 0.]], dtype=torch.float64)
    probs = torch.stack([1 - fg, fg], dim=1).reshape(1, 3, 2, 1, 4)            # B N C H W
    y = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]).reshape(1, 2, 1, 4)          # B M H W labels
    cost = soft_iou_cost(probs, y, classes=(1,))
    assert cost.dtype == torch.float64 and cost.shape == (1, 3, 2)
    assert cost[0, 0, 0].item() == pytest.approx(1 - 2.7 / 3.1, abs=1e-12)     # 0.129032
    assert cost[0, 1, 1].item() == pytest.approx(0.0, abs=1e-12)              # both empty
    assert cost[0, 2, 1].item() == pytest.approx(1 / 3, abs=1e-12)            # empty annotation, mass .5


def test_soft_iou_cost_matches_bruteforce_and_label_form():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(2, 3, 8, 5, 6, generator=gen, dtype=torch.float64), dim=2)
    labels = torch.randint(0, 8, (2, 2, 5, 6), generator=gen)
    onehot = torch.nn.functional.one_hot(labels, 8).permute(0, 1, 4, 2, 3).double()
    cost = soft_iou_cost(probs, onehot)
    expect = np.zeros((2, 3, 2))
    for b in range(2):
        for n in range(3):
            for m in range(2):
                ious = []
                for c in range(1, 8):                                          # background excluded
                    p, y = probs[b, n, c].numpy(), (labels[b, m] == c).numpy()
                    inter = (p * y).sum()
                    ious.append((inter + 1) / (p.sum() + y.sum() - inter + 1))
                expect[b, n, m] = 1 - np.mean(ious)
    np.testing.assert_allclose(cost.numpy(), expect, atol=1e-12)
    np.testing.assert_allclose(soft_iou_cost(probs, labels).numpy(), expect, atol=1e-12)
    # low-precision probabilities are accumulated in float32
    assert soft_iou_cost(probs.bfloat16(), labels).dtype == torch.float32


def test_soft_iou_cost_is_differentiable_gradcheck():
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(1, 2, 3, 2, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    onehot = torch.nn.functional.one_hot(torch.randint(0, 3, (1, 2, 2, 3), generator=gen), 3)
    onehot = onehot.permute(0, 1, 4, 2, 3).double()
    assert torch.autograd.gradcheck(lambda p: soft_iou_cost(p, onehot, classes=(1, 2)), (probs,))


def test_soft_iou_cost_rejects_bad_shapes():
    with pytest.raises(BenchError):
        soft_iou_cost(torch.rand(1, 2, 8, 4, 4), torch.zeros(1, 2, 8, 4, 5))
    with pytest.raises(BenchError):
        soft_iou_cost(torch.rand(1, 2, 3, 4, 4), torch.zeros(1, 2, 4, 4, dtype=torch.long))   # class 7 >= C


# ------------------------------------------------------------------------- coupling: T1-T6, T12

@pytest.mark.parametrize("solver", BOTH)
def test_t1_gamma_one_is_nearest_assignment(solver):
    c = np.array([[.2, .9], [.1, .8], [.7, .3], [.6, .4]])
    plan = relaxed_coupling(c, [.5, .5], 1.0, solver)
    np.testing.assert_allclose(plan, [[0, 0], [.5, 0], [0, .5], [0, 0]], atol=1e-12)
    assert (plan * c).sum() == pytest.approx(0.20, abs=1e-12)


def test_t2_greedy_is_suboptimal():
    c = np.array([[0, .1], [.2, 1.0]])
    exact = relaxed_coupling(c, [.5, .5], .5, "exact")
    greedy = relaxed_coupling(c, [.5, .5], .5, "greedy")
    np.testing.assert_allclose(exact, [[0, .5], [.5, 0]], atol=1e-12)
    np.testing.assert_allclose(greedy, [[.5, 0], [0, .5]], atol=1e-12)
    assert (exact * c).sum() == pytest.approx(0.15, abs=1e-12)
    assert (greedy * c).sum() == pytest.approx(0.50, abs=1e-12)


@pytest.mark.parametrize("solver", BOTH)
def test_t3_single_annotation_is_split(solver):
    c = np.array([[.3], [.1], [.2], [.9]])
    plan = relaxed_coupling(c, [1.0], .5, solver)
    np.testing.assert_allclose(plan[:, 0], [0, .5, .5, 0], atol=1e-12)
    assert (plan * c).sum() == pytest.approx(0.15, abs=1e-12)


@pytest.mark.parametrize("solver", BOTH)
@pytest.mark.parametrize("gamma", [.5, 1.0])
def test_t4_lidc_like(solver, gamma):
    plan = relaxed_coupling(C4, Q4, gamma, solver)
    expect = np.array([[.25, .25, 0, 0], [0, 0, 0, 0], [0, 0, .25, 0], [0, 0, 0, .25]])
    np.testing.assert_allclose(plan, expect, atol=1e-12)
    assert (plan * C4).sum() == pytest.approx(0.150, abs=1e-12)


def test_t5_perfect_matching():
    c = C4.copy()
    c[1, 1] = .30
    exact = relaxed_coupling(c, Q4, .25, "exact")
    np.testing.assert_allclose(exact, .25 * np.eye(4)[[1, 0, 2, 3]], atol=1e-12)   # n0->m1, n1->m0
    assert (exact * c).sum() == pytest.approx(0.1625, abs=1e-12)
    greedy = relaxed_coupling(c, Q4, .25, "greedy")
    np.testing.assert_allclose(greedy, .25 * np.eye(4), atol=1e-12)
    assert (greedy * c).sum() == pytest.approx(0.175, abs=1e-12)
    # unmodified T4 at gamma 1/4 has tied optima: compare costs only
    assert (relaxed_coupling(C4, Q4, .25, "exact") * C4).sum() == pytest.approx(0.1625, abs=1e-12)


@pytest.mark.parametrize("solver", BOTH)
def test_t6_collapse_versus_relaxation(solver):
    one = relaxed_coupling(C6, Q4, 1.0, solver)
    assert (one * C6).sum() == pytest.approx(0.175, abs=1e-12)
    np.testing.assert_allclose(one.sum(1), [1, 0, 0, 0], atol=1e-12)
    half = relaxed_coupling(C6, Q4, .5, solver)
    np.testing.assert_allclose(half, [[.25, .25, 0, 0], [0] * 4, [0] * 4, [0, 0, .25, .25]], atol=1e-12)
    assert (half * C6).sum() == pytest.approx(0.275, abs=1e-12)


@pytest.mark.parametrize("solver", BOTH)
def test_t12_infeasible_gamma_raises(solver):
    with pytest.raises(BenchError, match="infeasible"):
        relaxed_coupling(C4, Q4, 1 / 8, solver)
    # exactly tight caps (N * gamma = 1) are feasible and force one quarter per row
    assert_feasible(relaxed_coupling(C4, Q4, 1 / 4, solver), Q4, 1 / 4)


@pytest.mark.parametrize("bad", [dict(cost=np.full((2, 2), np.nan), beta=[.5, .5]),
                                 dict(cost=np.zeros((2, 2)), beta=[.5, .5, 0]),
                                 dict(cost=np.zeros((2, 2)), beta=[1.5, -.5]),
                                 dict(cost=np.zeros(3), beta=[1.0])])
def test_malformed_input_raises(bad):
    with pytest.raises(BenchError):
        relaxed_coupling(gamma=1.0, **bad)
    with pytest.raises(BenchError, match="solver"):
        relaxed_coupling(C4, Q4, .5, "sinkhorn")


# ------------------------------------------------------------------- coupling: random vs HiGHS

def test_exact_matches_highs_on_random_instances():
    rng = np.random.default_rng(np.random.SeedSequence([4, 2]))
    for trial in range(150):
        n, m = int(rng.integers(1, 17)), int(rng.integers(1, 6))
        cost = rng.random((n, m))
        if trial % 5 == 0:
            cost = np.round(cost, 1)                              # ties
        beta = rng.dirichlet(np.ones(m))
        if trial % 7 == 0 and m > 1:
            beta[0] = 0.0                                         # an absent annotator
            beta /= beta.sum()
        gamma = [1.0 / n, rng.uniform(1.0 / n, 1.0), 1.0][trial % 3]
        plan = relaxed_coupling(cost, beta, gamma, "exact")
        assert_feasible(plan, beta, gamma)
        assert abs((plan * cost).sum() - lp_optimum(cost, beta, gamma)) < 1e-9
        greedy = relaxed_coupling(cost, np.full(m, 1 / m), gamma, "greedy")     # uniform beta: feasible
        assert_feasible(greedy, np.full(m, 1 / m), gamma)
        assert (greedy * cost).sum() >= lp_optimum(cost, np.full(m, 1 / m), gamma) - 1e-9


def test_greedy_with_unequal_annotator_weights_breaks_the_cap_and_says_so():
    import bench.errors

    cost = np.array([[0.1, 0.9], [0.8, 0.2], [0.7, 0.6], [0.9, 0.9]])
    beta, gamma = np.array([0.8, 0.2]), 0.25
    bench.errors._SAID.clear()
    with pytest.warns(UserWarning, match="breaks the cap gamma"):
        plan = relaxed_coupling(cost, beta, gamma, "greedy")
    assert plan.sum(axis=1).max() > gamma + 0.1                        # the reference's rescaled columns
    assert_feasible(relaxed_coupling(cost, beta, gamma, "exact"), beta, gamma)


@pytest.mark.parametrize("solver", BOTH)
def test_gamma_one_reduces_to_nearest_assignment(solver):
    rng = np.random.default_rng(np.random.SeedSequence([4, 3]))
    for _ in range(20):
        cost = rng.random((16, 3))
        beta = rng.dirichlet(np.ones(3))
        plan = relaxed_coupling(cost, beta, 1.0, solver)
        expect = np.zeros_like(cost)
        expect[cost.argmin(0), np.arange(3)] = beta
        np.testing.assert_allclose(plan, expect, atol=1e-15)


def test_greedy_single_annotation_is_exact():
    """The reference heuristic is exact for M = 1 (segmentation.md §4.2)."""
    rng = np.random.default_rng(np.random.SeedSequence([4, 4]))
    for gamma in (1 / 16, 1 / 5, 1 / 3, .5, .7):
        cost = rng.random((16, 1))
        plan = relaxed_coupling(cost, [1.0], gamma, "greedy")
        assert_feasible(plan, np.ones(1), gamma)
        assert abs((plan * cost).sum() - lp_optimum(cost, np.ones(1), gamma)) < 1e-9


def test_batched_couplings_equal_per_image():
    rng = np.random.default_rng(np.random.SeedSequence([4, 5]))
    cost, beta = rng.random((3, 8, 2)), rng.dirichlet(np.ones(2), size=3)
    plans = relaxed_couplings(cost, beta, .25)
    for i in range(3):
        np.testing.assert_array_equal(plans[i], relaxed_coupling(cost[i], beta[i], .25))


# -------------------------------------------------------------------------------- loss (T8)

def test_t8_reference_loss_value():
    pi = torch.tensor([.7, .3], dtype=torch.float64)
    log_alpha = torch.log(pi / 2).repeat_interleave(2)[None]          # p = (.35, .35, .15, .15)
    cost = torch.tensor(C4)[None]
    out = ot_loss(cost, log_alpha, torch.tensor(Q4)[None], gamma=.5, lam=1.0)
    np.testing.assert_allclose(out.plan[0].numpy(), relaxed_coupling(C4, Q4, .5), atol=0)
    assert out.transport.item() == pytest.approx(0.150, abs=1e-12)
    assert out.kl.item() == pytest.approx(0.433750 / 4, abs=1e-6)     # reference mean over B*N
    assert out.loss.item() == pytest.approx(0.258438, abs=1e-6)
    assert not out.plan.requires_grad


def test_transport_is_batch_mean_of_per_image_sums():
    rng = np.random.default_rng(np.random.SeedSequence([4, 6]))
    cost = torch.tensor(rng.random((3, 4, 2)))
    out = ot_loss(cost, torch.full((3, 4), math.log(.25), dtype=torch.float64), torch.full((3, 2), .5),
                  gamma=.5, lam=0.0, solver="greedy")
    plans = relaxed_couplings(cost.numpy(), np.full(2, .5), .5, "greedy")
    assert out.transport.item() == pytest.approx((plans * cost.numpy()).sum((1, 2)).mean(), abs=1e-12)


def _routed_loss(lam: float):
    """probs -> soft-IoU cost, routing logits -> log(pi_k / S); B=2, K=2, S=2, M=2."""
    gen = torch.Generator().manual_seed(3)
    b, k, s = 2, 2, 2
    probs = torch.softmax(torch.randn(b, k * s, 8, 6, 6, generator=gen, dtype=torch.float64), 2)
    probs.requires_grad_(True)
    logits = torch.randn(b, k, generator=gen, dtype=torch.float64, requires_grad=True)
    log_alpha = (torch.log_softmax(logits, -1) - math.log(s)).repeat_interleave(s, dim=1)
    labels = torch.randint(0, 8, (b, 2, 6, 6), generator=gen)
    out = ot_loss(soft_iou_cost(probs, labels), log_alpha, torch.full((b, 2), .5), gamma=.5, lam=lam)
    out.loss.backward()
    return out, probs, logits


def test_routing_gradient_only_through_kl():
    out0, probs0, logits0 = _routed_loss(0.0)
    assert torch.count_nonzero(logits0.grad) == 0                   # lam = 0: no signal to the router
    assert probs0.grad.abs().sum() > 0                              # the cost's gradient reaches probs
    lam = 2.0
    out, probs, logits = _routed_loss(lam)
    # d/dr of lam/(B N) sum_b -sum_k tau_k log pi_k = lam/(B N) (pi - tau), tau = expert row mass
    tau = out.plan.sum(-1).reshape(2, 2, 2).sum(-1)
    pi = torch.softmax(logits.detach(), -1)
    np.testing.assert_allclose(logits.grad.numpy(), (lam / (2 * 4) * (pi - tau)).numpy(), atol=1e-6)
    torch.testing.assert_close(probs.grad, probs0.grad)             # the KL does not touch the samples


def test_cost_gradient_is_plan_over_batch():
    cost = torch.tensor(np.stack([C4, C6]), requires_grad=True)
    out = ot_loss(cost, torch.full((2, 4), math.log(.25), dtype=torch.float64), torch.tensor(Q4),
                  gamma=.5, lam=1.0)
    out.loss.backward()
    torch.testing.assert_close(cost.grad, out.plan / 2)


def test_ot_loss_rejects_bad_shapes_and_infeasible_gamma():
    cost = torch.rand(2, 4, 3)
    with pytest.raises(BenchError):
        ot_loss(cost, torch.zeros(2, 5), torch.full((2, 3), 1 / 3), gamma=.5, lam=1.0)
    with pytest.raises(BenchError):
        ot_loss(cost, torch.zeros(2, 4), torch.full((2, 2), .5), gamma=.5, lam=1.0)
    with pytest.raises(BenchError, match="infeasible"):
        ot_loss(cost, torch.zeros(2, 4), torch.full((2, 3), 1 / 3), gamma=.2, lam=1.0)


# ----------------------------------------------------------------------------------- gamma

def test_plateau_switch_follows_reference_counter():
    sched = GammaScheduler("plateau", .5, patience=2)
    gammas = []
    for epoch, metric in enumerate([5, 4, 4, 4, 4, 3, 2]):
        gammas.append(sched.gamma)
        sched.step(epoch, metric)
    # epochs 2, 3, 4 do not improve: the counter exceeds 2 after epoch 4, so epoch 5 uses 1
    assert gammas == [.5, .5, .5, .5, .5, 1.0, 1.0]
    assert sched.gamma == 1.0                                       # never switches back
    again = GammaScheduler("plateau", .5, patience=2)
    again.load_state_dict(sched.state_dict())
    assert again.gamma == 1.0 and again.epoch == 7


def test_anneal_schedules_hand_values():
    lin = [gamma_schedule("linear", .5, e, anneal_epochs=4) for e in (0, 1, 2, 4, 10)]
    assert lin == pytest.approx([.5, .625, .75, 1.0, 1.0])
    cos = [gamma_schedule("cosine", .5, e, anneal_epochs=4) for e in (0, 1, 2, 4)]
    assert cos == pytest.approx([.5, .5 + .25 * (1 - math.cos(math.pi / 4)), .75, 1.0])
    assert gamma_schedule("constant", .3, 99) == .3
    assert gamma_schedule("linear", .5, 0, anneal_epochs=0) == 1.0
    sched = GammaScheduler("linear", .5, anneal_epochs=4)
    assert [sched.gamma] + [sched.step(e, 0.0) for e in range(4)] == pytest.approx([.5, .625, .75, .875, 1.0])
    with pytest.raises(BenchError):
        GammaScheduler("exponential", .5)
    with pytest.raises(BenchError):
        gamma_schedule("linear", 0.0, 1)


def test_time_ot_solve_reports_both_solvers():
    res = time_ot_solve(batch=2, n=4, m=2, repeats=2)
    assert (res["batch"], res["n"], res["m"], res["repeats"]) == (2, 4, 2, 2)
    for key in ("exact_ms_median", "exact_ms_mean", "greedy_ms_median", "greedy_ms_mean"):
        assert math.isfinite(res[key]) and res[key] > 0


# --------------------------------------------------------------------------- CE cost (reference cost_fn='ce')
def test_pixel_ce_cost_matches_torch_cross_entropy_per_pair():
    import torch.nn.functional as F

    from methods.segmentation.ot import pixel_ce_cost

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 5, 4, generator=gen, requires_grad=True)
    labels = torch.randint(0, 8, (2, 2, 5, 4), generator=gen)
    cost = pixel_ce_cost(logits, labels)
    assert cost.shape == (2, 3, 2)
    for b in range(2):
        for n in range(3):
            for m in range(2):
                ref = F.cross_entropy(logits[b, n][None], labels[b, m][None])
                assert abs(float(cost[b, n, m].detach()) - float(ref.detach())) < 1e-5
    cost.sum().backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0


def test_pixel_ce_cost_rejects_float_labels():
    from methods.segmentation.ot import pixel_ce_cost

    with pytest.raises(BenchError, match="integer labels"):
        pixel_ce_cost(torch.zeros(1, 2, 8, 4, 4), torch.zeros(1, 1, 4, 4))
