"""SSL losses against hand-computed values and independent reference implementations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.errors import BenchError
from methods.ssl.heads import HeadConfig, SwAVHead, build_head
from methods.ssl.loss_vicreg import covariance_term
from methods.ssl.losses import (SwAVPrototypes, SwAVQueue, nt_xent, sinkhorn, supcon, swav, vicreg,
                                vicreg_multicrop)

# a 3×2 example: three patches, two-dimensional embeddings, two (or three) views
V1 = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-0.5, 0.5]], dtype=torch.float64)
V2 = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, -0.2]], dtype=torch.float64)
V3 = torch.tensor([[0.9, -0.1], [0.3, 0.7], [-0.2, 0.9]], dtype=torch.float64)


def _loop_contrastive(views, tau, labels=None):
    """L_out with explicit Python loops over plain floats (independent of the implementation)."""
    emb, ids = [], []
    for v in views:
        for i, row in enumerate(v.tolist()):
            n = math.sqrt(sum(c * c for c in row))
            emb.append([c / n for c in row])
            ids.append(i)
    m = len(emb)
    total = 0.0
    for a in range(m):
        sims = [sum(x * y for x, y in zip(emb[a], emb[k])) / tau for k in range(m)]
        denom = sum(math.exp(sims[k]) for k in range(m) if k != a)
        pos = [p for p in range(m) if p != a and (ids[p] == ids[a] or (
            labels is not None and labels[ids[a]] >= 0 and labels[ids[p]] == labels[ids[a]]))]
        total += -sum(math.log(math.exp(sims[p]) / denom) for p in pos) / len(pos)
    return total / m


# --------------------------------------------------------------------------- NT-Xent / SupCon
def test_nt_xent_closed_form():
    e = torch.eye(2)
    # every anchor: one positive at similarity 1, two negatives at 0 → log(1 + 2 e^{-1/τ})
    assert float(nt_xent([e, e], temperature=0.5)) == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    assert float(nt_xent([e[:1], e[:1]], temperature=0.1)) == pytest.approx(0.0, abs=1e-7)


def test_nt_xent_two_views_is_standard_nt_xent():
    assert float(nt_xent([V1, V2], 0.1)) == pytest.approx(_loop_contrastive([V1, V2], 0.1), rel=1e-9)
    # a second independent form: lightly's cross-entropy over 2N−1 logits, label = the partner
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    za, zb = F.normalize(a, dim=1), F.normalize(b, dim=1)
    rows = []
    for x, y in ((za, zb), (zb, za)):
        cross = x @ y.T / 0.2
        own = (x @ x.T / 0.2).masked_fill(torch.eye(8, dtype=torch.bool), float("-inf"))
        rows.append(F.cross_entropy(torch.cat([cross, own], 1), torch.arange(8), reduction="none"))
    assert float(nt_xent([a, b], 0.2)) == pytest.approx(float(torch.cat(rows).mean()), rel=1e-9)


def test_nt_xent_multicrop_averages_over_positives():
    ref = _loop_contrastive([V1, V2, V3], 0.1)
    assert float(nt_xent([V1, V2, V3], 0.1)) == pytest.approx(ref, rel=1e-9)
    # not the solo-learn L_in form (sum inside the log), which is smaller
    z = F.normalize(torch.cat([V1, V2, V3]), dim=1)
    s = (z @ z.T / 0.1).masked_fill(torch.eye(9, dtype=torch.bool), float("-inf"))
    ids = torch.arange(3).repeat(3)
    pos = (ids[:, None] == ids[None]) & ~torch.eye(9, dtype=torch.bool)
    l_in = -(torch.logsumexp(s.masked_fill(~pos, float("-inf")), 1) - torch.logsumexp(s, 1)).mean()
    assert float(l_in) < ref - 1e-3


def test_supcon_hand_computed_and_reduces_to_simclr():
    e = torch.eye(2)
    # both patches share a label: three positives (sims 1, 0, 0) over the same denominator
    expected = math.log(math.exp(2) + 2) - 2 / 3
    assert float(supcon([e, e], torch.tensor([0, 0]), 0.5)) == pytest.approx(expected, rel=1e-6)
    labels = [1, -1, 1]
    ref = _loop_contrastive([V1, V2, V3], 0.1, labels)
    assert float(supcon([V1, V2, V3], torch.tensor(labels), 0.1)) == pytest.approx(ref, rel=1e-9)
    # unlabelled patches have only their own crops: all −1 (or all distinct) is SimCLR
    unl = supcon([V1, V2, V3], torch.tensor([-1, -1, -1]), 0.1)
    assert float(unl) == pytest.approx(float(nt_xent([V1, V2, V3], 0.1)), rel=1e-12)
    assert float(supcon([V1, V2], torch.tensor([4, 7, 9]), 0.1)) == pytest.approx(float(nt_xent([V1, V2], 0.1)))


def test_contrastive_gradients_flow_and_bad_input():
    a = V1.clone().requires_grad_(True)
    nt_xent([a, V2], 0.1).backward()
    assert a.grad is not None and bool(a.grad.abs().sum() > 0)
    with pytest.raises(BenchError, match="at least 2"):
        nt_xent([V1], 0.1)
    with pytest.raises(BenchError, match="same shape"):
        nt_xent([V1, V2[:2]], 0.1)
    with pytest.raises(BenchError, match="length B"):
        supcon([V1, V2], torch.tensor([0, 1]), 0.1)
    with pytest.raises(BenchError, match="temperature"):
        nt_xent([V1, V2], 0.0)


# --------------------------------------------------------------------------- SwAV
def _official_sinkhorn(out: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """facebookresearch/swav ``distributed_sinkhorn`` transcribed to numpy (single process)."""
    q = np.exp(out / eps).T
    b, k = q.shape[1], q.shape[0]
    q = q / q.sum()
    for _ in range(iters):
        q = q / q.sum(axis=1, keepdims=True) / k
        q = q / q.sum(axis=0, keepdims=True) / b
    return (q * b).T


def _scores(b=8, k=5, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, d, generator=g), dim=1)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    return z @ c.T


def test_sinkhorn_marginals():
    s = _scores(12, 5)
    q = sinkhorn(s, 0.05, 3)
    assert q.dtype == torch.float32 and q.shape == (12, 5) and bool((q >= 0).all())
    torch.testing.assert_close(q.sum(1), torch.ones(12), atol=1e-6, rtol=0)   # each code sums to 1
    # prototype marginals approach the uniform B/K with every iteration (3 is a partial balance)
    dev = [float((sinkhorn(s, 0.05, it).sum(0) - 12 / 5).abs().max()) for it in (1, 3, 10, 50)]
    assert dev[0] > dev[1] > dev[2] > dev[3] and dev[3] < 0.01
    q = sinkhorn(s, 0.05, 500)
    torch.testing.assert_close(q.sum(0), torch.full((5,), 12 / 5), atol=1e-4, rtol=0)  # equipartition
    torch.testing.assert_close(q.sum(1), torch.ones(12), atol=1e-6, rtol=0)


def test_sinkhorn_matches_official_and_pot():
    ot = pytest.importorskip("ot")
    s = _scores(10, 6, seed=1).double()
    ref = _official_sinkhorn(s.numpy(), 0.05, 3)
    q = sinkhorn(s, 0.05, 3)
    np.testing.assert_allclose(q.numpy(), ref, rtol=1e-5, atol=1e-7)
    # POT's Sinkhorn-Knopp on the same kernel exp(S/ε) with uniform marginals, same iteration order
    b, k = s.shape
    plan = ot.sinkhorn(np.full(b, 1 / b), np.full(k, 1 / k), -s.numpy(), 0.05, numItermax=3, stopThr=0,
                       warn=False)
    np.testing.assert_allclose(q.numpy(), plan * b, rtol=1e-5, atol=1e-7)
    converged = ot.sinkhorn(np.full(b, 1 / b), np.full(k, 1 / k), -s.numpy(), 0.05, numItermax=5000,
                            stopThr=1e-12, warn=False)
    np.testing.assert_allclose(sinkhorn(s, 0.05, 5000).numpy(), converged * b, rtol=1e-4, atol=1e-6)


def test_sinkhorn_is_stable_and_fp32():
    s = _scores(6, 4) * 40.0                   # unnormalised scores: exp(S/ε) would overflow
    q = sinkhorn(s.bfloat16(), 0.05, 3)
    assert q.dtype == torch.float32 and bool(torch.isfinite(q).all())
    torch.testing.assert_close(sinkhorn(_scores(6, 4) + 3.0), sinkhorn(_scores(6, 4)))  # shift-invariant
    x = _scores(6, 4).requires_grad_(True)
    assert not sinkhorn(x).requires_grad


def _loop_swav(views, n_global, tau, eps, iters, queue=None):
    b = views[0].shape[0]
    total = 0.0
    for c in range(n_global):
        s = views[c].numpy()
        if queue is not None:
            s = np.concatenate([s, queue[c].numpy()])
        q = _official_sinkhorn(s, eps, iters)[:b]
        sub = 0.0
        for v in range(len(views)):
            if v == c:
                continue
            p = views[v].numpy() / tau
            for i in range(b):
                logz = math.log(sum(math.exp(x) for x in p[i]))
                sub += -sum(q[i, k] * (p[i, k] - logz) for k in range(p.shape[1])) / b
        total += sub / (len(views) - 1)
    return total / n_global


def test_swav_swapped_prediction_hand_reference():
    views = [_scores(4, 3, seed=s).double() for s in range(5)]       # 2 global + 3 local
    ref = _loop_swav(views, 2, 0.1, 0.05, 3)
    assert float(swav(views, n_global=2)) == pytest.approx(ref, rel=1e-5)
    queue = [_scores(6, 3, seed=10 + s).double() for s in range(2)]
    ref_q = _loop_swav(views, 2, 0.1, 0.05, 3, queue)
    assert float(swav(views, 2, queue_scores=queue)) == pytest.approx(ref_q, rel=1e-5)
    assert abs(ref_q - ref) > 1e-4                                     # the queue matters
    # codes carry no gradient: only the predictions do
    x = [v.clone().float().requires_grad_(True) for v in views]
    swav(x, 2).backward()
    assert all(t.grad is not None for t in x)


def test_swav_collapse_value_is_log_k():
    # identical scores everywhere: uniform codes and predictions → loss = log K
    s = torch.zeros(8, 16)
    assert float(swav([s, s, s], 2)) == pytest.approx(math.log(16), rel=1e-6)


def test_prototypes_normalise_freeze_and_queue():
    torch.manual_seed(0)
    protos = SwAVPrototypes(dim=4, n_prototypes=7)
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(7))
    with torch.no_grad():
        protos.weight.mul_(3.0)
    protos.normalize()
    torch.testing.assert_close(protos.weight.norm(dim=1), torch.ones(7))
    z = F.normalize(torch.randn(5, 4), dim=1).requires_grad_(True)
    protos.freeze_for_epoch(0)
    protos(z).sum().backward()
    assert protos.weight.grad is None and z.grad is not None
    protos.freeze_for_epoch(1)
    protos(z).sum().backward()
    assert protos.weight.grad is not None

    queue = SwAVQueue(n_global=2, length=5, dim=4)
    assert queue.scores(protos) is None
    batches = [[torch.full((2, 4), float(10 * s + c)) for c in range(2)] for s in range(3)]
    for s, batch in enumerate(batches):
        queue.push(batch)
        assert queue.full == (s == 2)
    # newest first: batch 2 (2 rows), batch 1 (2 rows), one row of batch 0
    assert queue.queue[0, :, 0].tolist() == [20.0, 20.0, 10.0, 10.0, 0.0]
    assert queue.queue[1, :, 0].tolist() == [21.0, 21.0, 11.0, 11.0, 1.0]
    scores = queue.scores(protos)
    torch.testing.assert_close(scores[1], queue.queue[1] @ protos.weight.detach().T)
    clone = SwAVQueue(2, 5, 4)
    clone.load_state_dict(queue.state_dict())
    assert clone.full and torch.equal(clone.queue, queue.queue)


# --------------------------------------------------------------------------- VICReg
def test_vicreg_terms_separately():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 6, generator=g, dtype=torch.float64)
    out = vicreg(z, z.clone())
    assert float(out.invariance) == 0.0                                   # identical → no invariance
    const = torch.ones(10, 4, dtype=torch.float64)
    out = vicreg(const, 2 * const)
    assert float(out.variance) == pytest.approx(1 - math.sqrt(1e-4))     # std 0 → hinge 1 − √ε
    assert float(out.covariance) == 0.0
    assert float(out.invariance) == pytest.approx(1.0)
    assert float(out.total) == pytest.approx(25 * 1.0 + 25 * (1 - math.sqrt(1e-4)))
    # decorrelated, unit-variance columns (a Hadamard design): covariance and variance terms 0
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)
    d = torch.cat([h[:, 1:], -h[:, 1:]]) * math.sqrt(7 / 8) * 1.5          # 8 rows, zero-mean columns
    out = vicreg(d, d)
    assert float(out.covariance) == pytest.approx(0.0, abs=1e-12)
    assert float(out.variance) == pytest.approx(0.0, abs=1e-12)


def test_vicreg_hand_computed_3x2():
    a, b = V1, V2
    n, d = 3, 2

    def var_term(z):
        tot = 0.0
        for j in range(d):
            col = [z[i][j] for i in range(n)]
            m = sum(col) / n
            var = sum((c - m) ** 2 for c in col) / (n - 1)
            tot += max(0.0, 1 - math.sqrt(var + 1e-4))
        return tot / d

    def cov_term(z):
        means = [sum(z[i][j] for i in range(n)) / n for j in range(d)]
        tot = 0.0
        for j in range(d):
            for k in range(d):
                if j != k:
                    c = sum((z[i][j] - means[j]) * (z[i][k] - means[k]) for i in range(n)) / (n - 1)
                    tot += c * c
        return tot / d

    al, bl = a.tolist(), b.tolist()
    inv = sum((al[i][j] - bl[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)
    var = (var_term(al) + var_term(bl)) / 2
    cov = cov_term(al) + cov_term(bl)
    out = vicreg(a, b)
    assert float(out.invariance) == pytest.approx(inv, rel=1e-6)
    assert float(out.variance) == pytest.approx(var, rel=1e-6)
    assert float(out.covariance) == pytest.approx(cov, rel=1e-6)
    assert float(out.total) == pytest.approx(25 * inv + 25 * var + cov, rel=1e-6)
    # the multi-crop recipe reduces to the two-view loss, and averages as documented with 3 views
    two = vicreg_multicrop([a, b])
    for x, y in zip(two, out):
        assert float(x) == pytest.approx(float(y), rel=1e-9)
    three = vicreg_multicrop([V1, V2, V3], n_global=2)
    vs = [V1.tolist(), V2.tolist(), V3.tolist()]
    mse = lambda p, q: sum((p[i][j] - q[i][j]) ** 2 for i in range(n) for j in range(d)) / (n * d)  # noqa: E731
    inv3 = (mse(vs[0], vs[1]) + mse(vs[0], vs[2]) + mse(vs[1], vs[0]) + mse(vs[1], vs[2])) / 4
    assert float(three.invariance) == pytest.approx(inv3, rel=1e-6)
    assert float(three.variance) == pytest.approx(sum(var_term(v) for v in vs) / 3, rel=1e-6)
    assert float(three.covariance) == pytest.approx(2 * sum(cov_term(v) for v in vs) / 3, rel=1e-6)


@pytest.mark.parametrize("n,d", [(6, 40), (40, 6), (8, 8)])
def test_vicreg_covariance_matches_the_explicit_d_by_d_matrix(n, d):
    """The Gram form (n×n when n < d) gives torch.cov's off-diagonal sum and its gradient."""
    g = torch.Generator().manual_seed(n * d)
    z = (torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g,
                                                                           dtype=torch.float64)).requires_grad_()
    z_ref = z.detach().clone().requires_grad_()
    cov = torch.cov(z_ref.T)                                     # unbiased, d×d
    expected = (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d
    value = covariance_term(z)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0.0)
    value.backward()
    expected.backward()
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-10, atol=1e-12)


def test_vicreg_bad_input():
    with pytest.raises(BenchError, match="at least 2"):
        vicreg(V1[:1], V2[:1])
    with pytest.raises(BenchError, match="one shape"):
        vicreg(V1, V2[:, :1])


# --------------------------------------------------------------------------- heads
def test_heads_shapes_and_structure():
    cfg = HeadConfig(hidden_dim=16, out_dim=8, vicreg_dims=(12, 12, 10), n_prototypes=5)
    h = torch.randn(4, 32)
    assert build_head("simclr", 32, cfg)(h).shape == (4, 8)
    assert build_head("supcon", 32, cfg)(h).shape == (4, 8)
    vic = build_head("vicreg", 32, cfg)
    assert vic(h).shape == (4, 10)
    linears = [m for m in vic if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [12, 12, 10] and linears[-1].bias is None
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in vic) == 2
    sw = build_head("swav", 32, cfg)
    assert isinstance(sw, SwAVHead)
    z, scores = sw(h)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    assert scores.shape == (4, 5) and float(scores.detach().abs().max()) <= 1 + 1e-5   # cosines to unit prototypes
    paper = HeadConfig()
    assert (paper.hidden_dim, paper.out_dim, paper.vicreg_dims, paper.n_prototypes) == (2048, 128, (8192,) * 3, 3000)
    with pytest.raises(BenchError, match="unknown SSL method"):
        build_head("byol", 32, cfg)
