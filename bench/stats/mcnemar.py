"""McNemar's test of paired accuracy (Dietterich 1998) and Holm's step-down correction (Holm 1979).

Conventions (statistics.md §2.4, §2.5):

* Table over cases: ``[[both right, a right & b wrong], [a wrong & b right, both wrong]]``;
  only the discordant cells b (a right, b wrong) and c (a wrong, b right) matter.
* ``exact=None`` (default) chooses the exact binomial test when b + c < 25 and otherwise the
  χ² test with continuity correction (R's ``mcnemar.test`` default); both via statsmodels.
  No discordant pair at all: statistic 0, p = 1.
* Holm: what ``statsmodels.stats.multitest.multipletests(method="holm")`` computes (statistics.md
  §2.5; the default there is Holm–Šidák), written out in numpy: statsmodels' Holm branch runs
  ``gc.collect()`` on every call, a full collection that took 0.17 s in a small process and about
  0.8 s in a test process holding torch models, and `bench compare --all` and the report adjust
  one family per scope, metric and table. tests/bench/test_stats.py checks it against statsmodels.
  NaN p-values (comparisons that could not be made) stay NaN and are not counted in the family.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from bench.errors import BenchError

#: Below this many discordant pairs the exact binomial test is used.
EXACT_BELOW = 25


class McNemarResult(NamedTuple):
    statistic: float     # exact: min(b, c); χ²: (|b - c| - 1)² / (b + c)
    p: float
    b: int               # a right, b wrong
    c: int               # a wrong, b right
    exact: bool


def _binary(values: Any, n: int | None, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    if np.isnan(v).any() or not np.isin(v, (0.0, 1.0)).all():
        raise BenchError(f"{name} must hold only 0 and 1 (drop unlabelled or unscored cases first)")
    if n is not None and v.size != n:
        raise BenchError(f"{name} has {v.size} values but y_true has {n}; give one per case, in the same order")
    return v.astype(bool)


def contingency(y_true: Any, pred_a: Any, pred_b: Any) -> np.ndarray:
    """2×2 table [[both right, a right & b wrong], [a wrong & b right, both wrong]]."""
    y = _binary(y_true, None, "y_true")
    ra = _binary(pred_a, y.size, "pred_a") == y
    rb = _binary(pred_b, y.size, "pred_b") == y
    return np.array([[np.sum(ra & rb), np.sum(ra & ~rb)], [np.sum(~ra & rb), np.sum(~ra & ~rb)]], dtype=np.int64)


def mcnemar(y_true: Any, pred_a: Any, pred_b: Any, exact: bool | None = None) -> McNemarResult:
    """McNemar's test of equal accuracy of two paired 0/1 predictions (module doc)."""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    table = contingency(y_true, pred_a, pred_b)
    b, c = int(table[0, 1]), int(table[1, 0])
    use_exact = (b + c < EXACT_BELOW) if exact is None else bool(exact)
    if b + c == 0:
        return McNemarResult(0.0, 1.0, 0, 0, use_exact)
    res = sm_mcnemar(table, exact=use_exact, correction=True)
    return McNemarResult(float(res.statistic), float(min(1.0, res.pvalue)), b, c, use_exact)


def holm(pvalues: Any) -> np.ndarray:
    """Holm-adjusted p-values (same shape); NaN entries stay NaN and are left out of the family.

    The i-th smallest of m p-values becomes max over j <= i of (m - j + 1) p_(j), capped at 1 (Holm 1979).
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    flat, res = p.ravel(), out.ravel()
    ok = np.isfinite(flat)
    if ((flat[ok] < 0) | (flat[ok] > 1)).any():
        raise BenchError(f"p-values must lie in [0, 1]; got {flat[ok][(flat[ok] < 0) | (flat[ok] > 1)][:3]}")
    if ok.any():
        family = flat[ok]
        order = np.argsort(family, kind="stable")
        m = len(family)
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(1.0, np.maximum.accumulate(family[order] * np.arange(m, 0, -1)))
        res[ok] = adjusted
    return res.reshape(p.shape)
