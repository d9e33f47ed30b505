"""bench.stats: DeLong against an O(n²) Mann–Whitney reference, bootstrap replicates against
scikit-learn on explicit resamples, CI coverage by simulation, McNemar and Holm by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2, norm
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from bench import BenchError, stats
from bench.metrics import classification_metrics


# --------------------------------------------------------------------------- DeLong
def _psi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mann–Whitney kernel over all (positive, negative) pairs: 1 above, ½ tied, 0 below."""
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def _delong_reference(y, *scores):
    """DeLong (1988) from explicit placement values, O(m·n) per predictor."""
    pos = np.asarray(y) == 1
    v10, v01, aucs = [], [], []
    for s in scores:
        k = _psi(np.asarray(s)[pos], np.asarray(s)[~pos])
        v10.append(k.mean(axis=1))
        v01.append(k.mean(axis=0))
        aucs.append(k.mean())
    v10, v01 = np.array(v10), np.array(v01)
    m, n = v10.shape[1], v01.shape[1]
    s10 = (v10 - v10.mean(1, keepdims=True)) @ (v10 - v10.mean(1, keepdims=True)).T / (m - 1)
    s01 = (v01 - v01.mean(1, keepdims=True)) @ (v01 - v01.mean(1, keepdims=True)).T / (n - 1)
    return np.array(aucs), s10 / m + s01 / n


@pytest.mark.parametrize("seed,n,levels", [(0, 60, 4), (1, 151, 7), (2, 37, 3), (3, 300, 20)])
def test_delong_matches_quadratic_reference_with_ties(seed, n, levels):
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    y = rng.integers(0, 2, n)
    y[:2], y[2:4] = 1, 0
    a = rng.integers(0, levels, n) + y                       # integer scores: many ties
    b = np.round(a + rng.normal(0, 1.5, n)).clip(0, levels)  # correlated with a, also tied
    aucs, cov = _delong_reference(y, a, b)
    assert len(np.unique(a)) < n / 3  # ties really present
    r = stats.delong(y, a, b)
    np.testing.assert_allclose([r.auc_a, r.auc_b], aucs, rtol=1e-12)
    np.testing.assert_allclose([r.auc_a, r.auc_b], [roc_auc_score(y, a), roc_auc_score(y, b)], rtol=1e-12)
    np.testing.assert_allclose(r.cov, cov, rtol=1e-10, atol=1e-15)
    z = (aucs[0] - aucs[1]) / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    np.testing.assert_allclose(r.z, z, rtol=1e-9)
    np.testing.assert_allclose(r.p, 2 * norm.sf(abs(z)), rtol=1e-9)
    auc_a, cov3 = stats.auc_covariance(y, a, b, -a)
    np.testing.assert_allclose(cov3[:2, :2], cov, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(cov3[2, 2], cov[0, 0], rtol=1e-10)   # reversing a score keeps the variance


def test_delong_identical_predictors_z0_p1():
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(20), np.zeros(30)]
    s = rng.integers(0, 5, 50).astype(float)
    for other in (s.copy(), s * 3 + 1):          # same ranks: same AUC and placements
        r = stats.delong(y, s, other)
        assert (r.z, r.p) == (0.0, 1.0)
        assert r.auc_a == r.auc_b and r.se == 0.0
    perfect = y * 2.0
    assert tuple(stats.delong(y, perfect, perfect))[2:] == (0.0, 1.0)
    # documented degenerate case: a nonzero difference with zero estimated variance
    assert tuple(stats.delong(y, perfect, -perfect)) == (1.0, 0.0, np.inf, 0.0)


def test_delong_direction_fixed_and_input_errors():
    y = np.r_[np.ones(10), np.zeros(10)]
    s = np.r_[np.arange(10), np.arange(10, 20)].astype(float)   # positives lower: AUC 0, never flipped
    assert stats.delong(y, s, -s).auc_a == 0.0
    with pytest.raises(BenchError, match="at least 2 positives"):
        stats.delong(np.r_[1, np.zeros(9)], np.arange(10), np.arange(10))
    with pytest.raises(BenchError, match="NaN"):
        stats.delong(y, np.r_[np.nan, s[1:]], s)
    with pytest.raises(BenchError, match="one score per case"):
        stats.delong(y, s[:-1], s)
    with pytest.raises(BenchError, match="0 .*and 1"):
        stats.delong(y * 2, s, s)


def test_delong_ci_is_wald_interval_clipped():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 80)
    s = y + rng.normal(0, 1, 80)
    aucs, cov = _delong_reference(y, s)
    auc, lo, hi = stats.delong_ci(y, s)
    half = norm.ppf(0.975) * np.sqrt(cov[0, 0])
    np.testing.assert_allclose([auc, lo, hi], [aucs[0], aucs[0] - half, aucs[0] + half], rtol=1e-10)
    assert stats.delong_ci(y, y + 0.0) == (1.0, 1.0, 1.0)
    assert stats.delong_ci(y, s, alpha=0.5)[1] > lo


# --------------------------------------------------------------------------- bootstrap
def _toy(n_pos=25, n_neg=35, seed=0):
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    rng.shuffle(y)
    pa = np.round(1 / (1 + np.exp(-(2 * y - 1 + rng.normal(0, 1, y.size)))), 2)   # rounded: ties
    pb = np.round(1 / (1 + np.exp(-(y - 0.5 + rng.normal(0, 1, y.size)))), 2)
    return y, pa, pb


def test_bootstrap_replicates_equal_sklearn_on_explicit_resamples():
    y, pa, pb = _toy()
    B, seed = 40, 7
    res = stats.paired_bootstrap(y, pa, pb, metrics=("auc", "f1", "accuracy", "macro_f1"), n_boot=B, seed=seed)
    # the documented stream: positives' index matrix, then the negatives', from SeedSequence([seed, 0])
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    ip = rng.integers(0, pos.size, (B, pos.size))
    ineg = rng.integers(0, neg.size, (B, neg.size))
    for r in range(B):
        idx = np.r_[pos[ip[r]], neg[ineg[r]]]
        yt = y[idx]
        want = {"auc": roc_auc_score(yt, pa[idx]) - roc_auc_score(yt, pb[idx]),
                "f1": f1_score(yt, pa[idx] > 0.5) - f1_score(yt, pb[idx] > 0.5),
                "accuracy": accuracy_score(yt, pa[idx] > 0.5) - accuracy_score(yt, pb[idx] > 0.5),
                "macro_f1": f1_score(yt, pa[idx] > 0.5, average="macro")
                - f1_score(yt, pb[idx] > 0.5, average="macro")}
        for m, v in want.items():
            assert res[m].replicates[r] == pytest.approx(v, abs=1e-12), (m, r)


def test_bootstrap_observed_values_match_bench_metrics():
    y, pa, pb = _toy(seed=4)
    res = stats.paired_bootstrap(y, pa, pb, metrics=stats.BOOT_METRICS, n_boot=10)
    ref = classification_metrics(y, pa)
    for m in ("auc", "f1", "accuracy", "precision", "recall", "macro_f1"):
        assert res[m].value_a == pytest.approx(ref[m], abs=1e-12)
    assert res["specificity"].value_a == pytest.approx(np.mean(pa[y == 0] <= 0.5))
    assert res["auc"].delta == pytest.approx(roc_auc_score(y, pa) - roc_auc_score(y, pb))


def test_bootstrap_identical_predictors_and_determinism():
    y, pa, pb = _toy(seed=1)
    same = stats.paired_bootstrap(y, pa, pa.copy(), n_boot=200)
    for r in same.values():
        assert (r.delta, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0)
    r1 = stats.paired_bootstrap(y, pa, pb, n_boot=300, seed=3)
    r2 = stats.paired_bootstrap(y, pa, pb, n_boot=300, seed=3)
    r3 = stats.paired_bootstrap(y, pa, pb, n_boot=300, seed=4)
    assert r1["auc"].replicates.tobytes() == r2["auc"].replicates.tobytes()
    assert r1["auc"].replicates.tobytes() != r3["auc"].replicates.tobytes()
    d = r1["auc"].replicates
    k = d.size
    p = min(1.0, 2 * min(1 + (d <= 0).sum(), 1 + (d >= 0).sum()) / (k + 1))
    assert r1["auc"].p_value == pytest.approx(p)
    assert (r1["auc"].ci_low, r1["auc"].ci_high) == tuple(np.quantile(d, [0.025, 0.975]))


def test_bootstrap_input_errors():
    y, pa, pb = _toy()
    with pytest.raises(BenchError, match="both classes"):
        stats.paired_bootstrap(np.ones(5), pa[:5], pb[:5])
    with pytest.raises(BenchError, match="NaN"):
        stats.paired_bootstrap(y, np.r_[np.nan, pa[1:]], pb)
    with pytest.raises(BenchError, match="unknown metric"):
        stats.paired_bootstrap(y, pa, pb, metrics=("auroc",))
    with pytest.raises(BenchError, match="n_boot"):
        stats.paired_bootstrap(y, pa, pb, n_boot=0)


def test_bootstrap_ci_covers_true_difference_about_95_percent():
    """Binormal scores with a known ΔAUC and Δaccuracy; 200 data sets × 300 replicates."""
    n_pos, n_neg, mu_a, mu_b, rho = 60, 90, 1.2, 0.7, 0.5
    true_auc = norm.cdf(mu_a / np.sqrt(2)) - norm.cdf(mu_b / np.sqrt(2))
    # fixed class counts (stratified design): accuracy = (n_neg·P(neg ≤ 0) + n_pos·P(pos > 0)) / N
    true_acc = n_pos * (norm.cdf(mu_a) - norm.cdf(mu_b)) / (n_pos + n_neg)
    rng = np.random.default_rng(np.random.SeedSequence([2024, 1]))
    y = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    cover = {"auc": 0, "accuracy": 0}
    width = []
    n_sim = 200
    for i in range(n_sim):
        noise = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=y.size)
        pa = 1 / (1 + np.exp(-(noise[:, 0] + mu_a * y)))
        pb = 1 / (1 + np.exp(-(noise[:, 1] + mu_b * y)))
        res = stats.paired_bootstrap(y, pa, pb, metrics=("auc", "accuracy"), n_boot=300, seed=i)
        cover["auc"] += res["auc"].ci_low <= true_auc <= res["auc"].ci_high
        cover["accuracy"] += res["accuracy"].ci_low <= true_acc <= res["accuracy"].ci_high
        width.append(res["auc"].ci_high - res["auc"].ci_low)
    for m, c in cover.items():
        assert 0.90 <= c / n_sim <= 0.99, (m, c / n_sim)
    assert 0.05 < np.mean(width) < 0.3   # informative intervals, not trivially wide


# --------------------------------------------------------------------------- hierarchical
def _frame(seeds, subjects, y, scores):
    return pd.DataFrame([{"seed": s, "subject_id": subj, "y_true": yy, "p_pos": scores[i][j]}
                         for i, s in enumerate(seeds) for j, (subj, yy) in enumerate(zip(subjects, y))])


def test_hierarchical_with_one_seed_equals_paired_bootstrap():
    y, pa, pb = _toy(seed=2)
    subj = [f"s{i:03d}" for i in range(y.size)]
    h = stats.hierarchical_bootstrap(_frame([4], subj, y, [pa]), _frame([4], subj, y, [pb]), n_boot=250, seed=5)
    p = stats.paired_bootstrap(y, pa, pb, n_boot=250, seed=5)
    for m in p:
        assert h[m].replicates.tobytes() == p[m].replicates.tobytes()
        assert (h[m].delta, h[m].ci_low, h[m].ci_high, h[m].p_value) == \
            (p[m].delta, p[m].ci_low, p[m].ci_high, p[m].p_value)


def test_hierarchical_seed_level_distribution_by_hand():
    """B perfect in both seeds; A perfect in seed 0, inverted in seed 1. Subject resampling keeps
    every AUC (1 or 0), so Δ* = mean of two seeds of A drawn with replacement − 1 ∈ {0, −½, −1}
    with probabilities ¼, ½, ¼; point estimate −½, CI [−1, 0], p ≈ 2·¼."""
    y = np.r_[np.ones(8), np.zeros(12)]
    subj = [f"s{i}" for i in range(20)]
    good, bad = 0.2 + 0.6 * y, 0.8 - 0.6 * y
    fa, fb = _frame([0, 1], subj, y, [good, bad]), _frame([0, 1], subj, y, [good, good])
    r = stats.hierarchical_bootstrap(fa, fb, metrics=("auc",), n_boot=4000, seed=1)["auc"]
    assert (r.value_a, r.value_b, r.delta) == (0.5, 1.0, -0.5)
    d = r.replicates
    assert set(np.unique(d)) == {-1.0, -0.5, 0.0}
    np.testing.assert_allclose([(d == 0).mean(), (d == -0.5).mean(), (d == -1).mean()], [0.25, 0.5, 0.25], atol=0.03)
    assert (r.ci_low, r.ci_high) == (-1.0, 0.0)
    assert r.p_value == pytest.approx(0.5, abs=0.04)
    same = stats.hierarchical_bootstrap(fa, fa, metrics=("auc",), n_boot=500, paired_seeds=True)["auc"]
    assert (same.delta, same.p_value) == (0.0, 1.0) and not same.replicates.any()
    indep = stats.hierarchical_bootstrap(fa, fa, metrics=("auc",), n_boot=4000)["auc"]
    assert indep.replicates.std() > 0.3 and abs(indep.replicates.mean()) < 0.03 and indep.p_value == 1.0


def test_hierarchical_ties_survive_summation_order():
    """Entries sharing two seeds' predictions: a replicate that draws the same multiset of them for
    both has Δ* = 0 in reals, but the float means differ in the last bit when summed in another
    order (e.g. (0.1 + 0.7) + 0.2 vs (0.7 + 0.2) + 0.1). Such Δ* are ties, counted in both tails:
    the p-value equals the sign proportion of the replicates rounded to 12 decimals."""
    rng = np.random.default_rng(10)
    y = np.r_[np.ones(9), np.zeros(11)]
    subj = [f"s{i:02d}" for i in range(20)]
    preds = [np.clip(0.3 * y + rng.uniform(0, 0.7, 20), 0, 1) for _ in range(3)]
    worse = np.clip(0.1 * y + rng.uniform(0, 0.7, 20), 0, 1)
    fa, fb = _frame([0, 1, 2], subj, y, preds), _frame([0, 1, 2], subj, y, [preds[2], preds[1], worse])
    r = stats.hierarchical_bootstrap(fa, fb, metrics=("accuracy",), n_boot=2000, seed=3)["accuracy"]
    d = r.replicates

    def sign_p(x):
        return min(1.0, 2 * min(1 + np.sum(x <= 0), 1 + np.sum(x >= 0)) / (x.size + 1))

    assert ((d != 0) & (np.abs(d) < 1e-12)).sum() >= 5, "the case must hold float noise around zero"
    assert r.p_value == pytest.approx(sign_p(np.round(d, 12)), abs=1e-15)
    assert r.p_value > sign_p(d) + 0.005          # the noise alone would have moved it


def test_hierarchical_unequal_seed_counts_and_errors():
    y, pa, pb = _toy(seed=3)
    subj = [f"s{i:03d}" for i in range(y.size)]
    fa = _frame([0, 1, 2], subj, y, [pa, pb, pa])
    fb = _frame([0, 1], subj, y, [pb, pb])
    r = stats.hierarchical_bootstrap(fa, fb, metrics=("auc",), n_boot=50)["auc"]
    assert r.value_a == pytest.approx((2 * roc_auc_score(y, pa) + roc_auc_score(y, pb)) / 3)
    with pytest.raises(BenchError, match="different subjects"):
        stats.hierarchical_bootstrap(fa, fb[fb["subject_id"] != "s000"], n_boot=10)
    with pytest.raises(BenchError, match="seeds \\[1\\] lack a probability"):
        stats.hierarchical_bootstrap(fa.drop(index=y.size + 3), fb, n_boot=10)
    flipped = fb.assign(y_true=lambda f: 1 - f["y_true"])
    with pytest.raises(BenchError, match="disagree on y_true"):
        stats.hierarchical_bootstrap(fa, flipped, n_boot=10)
    with pytest.raises(BenchError, match="same seeds"):
        stats.hierarchical_bootstrap(fa, fb, n_boot=10, paired_seeds=True)


# --------------------------------------------------------------------------- McNemar, Holm
def _paired_preds(n11, b, c, n22):
    """Labels and predictions whose correctness table is [[n11, b], [c, n22]]."""
    right_a = np.r_[np.ones(n11), np.ones(b), np.zeros(c), np.zeros(n22)].astype(bool)
    right_b = np.r_[np.ones(n11), np.zeros(b), np.ones(c), np.zeros(n22)].astype(bool)
    y = np.arange(right_a.size) % 2
    return y, np.where(right_a, y, 1 - y), np.where(right_b, y, 1 - y)


def test_mcnemar_exact_and_chi2_match_statsmodels_and_hand_values():
    y, pa, pb = _paired_preds(30, 2, 8, 5)
    np.testing.assert_array_equal(stats.contingency(y, pa, pb), [[30, 2], [8, 5]])
    r = stats.mcnemar(y, pa, pb)
    assert r.exact and (r.b, r.c) == (2, 8)
    assert r.p == pytest.approx(2 * (1 + 10 + 45) / 1024)            # 2·P(X ≤ 2), X ~ Bin(10, ½)
    sm = sm_mcnemar([[30, 2], [8, 5]], exact=True)
    assert (r.statistic, r.p) == (pytest.approx(sm.statistic), pytest.approx(sm.pvalue))

    y, pa, pb = _paired_preds(40, 10, 30, 7)                           # 40 discordant: χ² with correction
    r = stats.mcnemar(y, pa, pb)
    assert not r.exact
    assert r.statistic == pytest.approx((abs(10 - 30) - 1) ** 2 / 40)  # 9.025
    assert r.p == pytest.approx(chi2.sf(9.025, 1))
    sm = sm_mcnemar([[40, 10], [30, 7]], exact=False, correction=True)
    assert (r.statistic, r.p) == (pytest.approx(sm.statistic), pytest.approx(sm.pvalue))
    assert stats.mcnemar(y, pa, pb, exact=True).p == pytest.approx(sm_mcnemar([[40, 10], [30, 7]], exact=True).pvalue)
    y, pa, _ = _paired_preds(10, 0, 0, 3)
    assert stats.mcnemar(y, pa, pa)[:2] == (0.0, 1.0)


def test_holm_hand_example():
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → max(0.06, 0.04) = 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.01, np.nan, 0.04]), [0.02, np.nan, 0.04])
    np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])
    assert stats.holm([]).shape == (0,)
    with pytest.raises(BenchError, match=r"\[0, 1\]"):
        stats.holm([0.2, 1.5])


def test_holm_matches_statsmodels(monkeypatch):
    """Families of 1-40 p-values with ties, zeros, ones and NaNs (left out of the family), in a 2-d shape.
    (statsmodels' full garbage collection per call, the reason bench has its own, is skipped here.)"""
    import gc

    from statsmodels.stats.multitest import multipletests

    monkeypatch.setattr(gc, "collect", lambda *args: 0)
    rng = np.random.default_rng(3)
    for trial in range(300):
        m = int(rng.integers(1, 41))
        p = rng.choice([rng.uniform(0, 1), 0.0, 1.0, 0.01, 0.05], size=m) if trial % 3 == 0 else rng.uniform(0, 0.2, m)
        p[rng.uniform(size=m) < 0.1] = np.nan
        ok = np.isfinite(p)
        want = np.full(m, np.nan)
        if ok.any():
            want[ok] = multipletests(p[ok], method="holm")[1]
        np.testing.assert_allclose(stats.holm(p), want, rtol=1e-12, atol=0)
        if m % 2 == 0:
            np.testing.assert_allclose(stats.holm(p.reshape(2, -1)), want.reshape(2, -1), rtol=1e-12, atol=0)
