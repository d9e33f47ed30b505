"""DeLong's test for correlated AUCs (DeLong, DeLong & Clarke-Pearson 1988), fast algorithm of
Sun & Xu (2014, IEEE SPL 21(11):1389-1393), as pROC's ``roc.test(method="delong")``.

Conventions:

* Direction is fixed: a higher score means the positive class (label 1). An AUC below 0.5 is
  reported as such, never flipped (pROC flips it by default; a classifier harness must not).
* Ties count one half, through mid-ranks (``scipy.stats.rankdata(method="average")``).
* Covariances of the placement values use ``ddof=1``, as DeLong (1988) and pROC.
* The variance of a difference is computed from the differences of the placement values (equal
  to ``L S Lᵀ``), so identical predictors give exactly zero variance: then z = 0 and p = 1.
  A nonzero difference with zero estimated variance (tiny, degenerate samples) gives
  z = ±inf and p = 0, which is what the test's own variance estimate implies.
* The CI of one AUC is the plain (untransformed) Wald interval ``AUC ± z·SE`` clipped to
  [0, 1], as pROC's ``ci.auc(method="delong")``.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import norm, rankdata

from bench.errors import BenchError

#: A variance at or below this is treated as zero (identical or perfectly tied predictors).
ZERO_VARIANCE = 1e-24
#: A difference of AUCs within this is treated as zero.
ZERO_DIFFERENCE = 1e-12


class _DeLongFields(NamedTuple):
    auc_a: float
    auc_b: float
    z: float          # (auc_a - auc_b) / SE of the difference
    p: float          # two-sided, standard normal


class DeLongResult(_DeLongFields):
    """``(auc_a, auc_b, z, p)``; also ``.cov`` (2×2 covariance of the two AUCs) and ``.se``
    (standard error of ``auc_a - auc_b``)."""

    cov: np.ndarray
    se: float

    def __new__(cls, auc_a: float, auc_b: float, z: float, p: float, cov: np.ndarray | None = None,
                se: float = math.nan) -> "DeLongResult":
        self = super().__new__(cls, auc_a, auc_b, z, p)
        self.cov = cov
        self.se = se
        return self

    def diff_ci(self, alpha: float = 0.05) -> tuple[float, float]:
        """Wald CI of ``auc_a - auc_b``: difference ± z₁₋α/₂ · SE."""
        half = float(norm.ppf(1 - alpha / 2)) * self.se
        d = self.auc_a - self.auc_b
        return d - half, d + half


def _labels_scores(y_true: Any, scores: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Validated 0/1 labels (n,) and a (k, n) float score matrix."""
    y = np.asarray(y_true, dtype=float).ravel()
    if y.size == 0:
        raise BenchError("DeLong needs labelled cases; y_true is empty")
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise BenchError("y_true must hold only 0 (normal) and 1 (osteoporosis); drop unlabelled cases first")
    rows = [np.asarray(s, dtype=float).ravel() for s in scores]
    for r in rows:
        if r.size != y.size:
            raise BenchError(f"y_true has {y.size} values but a score vector has {r.size}; "
                             "give one score per case, in the same order")
    mat = np.vstack(rows)
    if not np.isfinite(mat).all():
        raise BenchError("scores hold NaN or infinite values; drop unscored cases from both predictors first")
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos < 2 or n_neg < 2:
        raise BenchError(f"DeLong's variance needs at least 2 positives and 2 negatives; got {n_pos} "
                         f"positive(s) and {n_neg} negative(s)")
    return y.astype(bool), mat


def placement_values(y_true: Any, *scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k,), positives' placements V10 (k, m) and negatives' placements V01 (k, n) (Sun & Xu).

    V10[i] is the fraction of negatives that positive i outranks (ties ½); V01[j] the fraction of
    positives that outrank negative j. AUC = mean V10 = mean V01. Three mid-rank passes, O(n log n).
    """
    pos, mat = _labels_scores(y_true, list(scores))
    x, yneg = mat[:, pos], mat[:, ~pos]
    m, n = x.shape[1], yneg.shape[1]
    tx = rankdata(x, method="average", axis=1)
    ty = rankdata(yneg, method="average", axis=1)
    tz = rankdata(np.hstack([x, yneg]), method="average", axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    return aucs, v10, v01


def auc_covariance(y_true: Any, *scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance matrix (k, k): S10/m + S01/n (ddof = 1)."""
    aucs, v10, v01 = placement_values(y_true, *scores)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10, ddof=1)) / m + np.atleast_2d(np.cov(v01, ddof=1)) / n
    return aucs, cov


def delong(y_true: Any, score_a: Any, score_b: Any) -> DeLongResult:
    """Paired DeLong test of AUC(a) = AUC(b) on the same cases; z = (AUC_a - AUC_b) / SE."""
    aucs, v10, v01 = placement_values(y_true, score_a, score_b)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10, ddof=1)) / m + np.atleast_2d(np.cov(v01, ddof=1)) / n
    var = float(np.var(v10[0] - v10[1], ddof=1) / m + np.var(v01[0] - v01[1], ddof=1) / n)
    diff = float(aucs[0] - aucs[1])
    if var <= ZERO_VARIANCE:
        if abs(diff) <= ZERO_DIFFERENCE:
            z, p = 0.0, 1.0
        else:
            z, p = math.copysign(math.inf, diff), 0.0
        se = 0.0
    else:
        se = math.sqrt(var)
        z = diff / se
        p = float(min(1.0, 2.0 * norm.sf(abs(z))))
    return DeLongResult(float(aucs[0]), float(aucs[1]), float(z), p, cov, se)


def delong_ci(y_true: Any, score: Any, alpha: float = 0.05) -> tuple[float, float, float]:
    """(AUC, low, high): plain Wald interval AUC ± z₁₋α/₂·SE_DeLong, clipped to [0, 1] (pROC's ci.auc)."""
    if not 0.0 < alpha < 1.0:
        raise BenchError(f"alpha must be in (0, 1), got {alpha!r}")
    aucs, cov = auc_covariance(y_true, score)
    auc = float(aucs[0])
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    half = float(norm.ppf(1 - alpha / 2)) * se
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def auc_ci(y_true: Any, score: Any, alpha: float = 0.05) -> tuple[float, float] | None:
    """:func:`delong_ci`'s (low, high), or None where DeLong's variance is undefined (fewer than two
    subjects of a class; NaN labels or scores are left out)."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(score, dtype=float)
    keep = np.isfinite(y) & np.isfinite(p)
    y, p = y[keep].astype(int), p[keep]
    if min(int((y == 1).sum()), int((y == 0).sum())) < 2:
        return None
    _, low, high = delong_ci(y, p, alpha)
    return low, high
