"""Stratified paired bootstrap of metric differences, and its two-level (subjects × seeds) version.

Conventions (statistics.md §2.3 and §2.6; pROC's ``boot.stratified=TRUE``, ``boot.n=2000``):

* ``delta = metric(a) - metric(b)``: positive means *a* scores higher.
* Stratified: each replicate resamples the positives and the negatives separately, with
  replacement, so every replicate keeps both classes and the class counts of the data.
* Paired: one resample of the cases per replicate, applied to both predictors (and, in the
  hierarchical version, to every seed of both entries).
* CI: percentile interval of the replicate differences (``numpy.quantile``, linear).
* p-value: inversion of the percentile interval (the bootstrap sign proportion),
  ``p = min(1, 2·min(1 + #{Δ* ≤ 0}, 1 + #{Δ* ≥ 0}) / (B + 1))`` over the valid replicates;
  ``p < α`` exactly when 0 lies outside the (1 − α) interval (up to the +1). Identical
  predictors give p = 1; the smallest attainable p is 2/(B + 1). A Δ* within ``TIE_TOLERANCE``
  of zero counts as a tie (in both tails): means of the same seed values summed in another order
  differ by ~1e-16, which must not decide a side.
* Thresholded metrics use ``p_pos > threshold`` (strict, as ``bench.metrics``); precision and
  F1 follow scikit-learn's ``zero_division=0``.
* Vectorised: replicate index matrices become per-case count matrices (``bincount``); AUC of a
  replicate is the count-weighted sum of mid-rank placement values (exact Mann–Whitney with
  ties ½), from cumulative negative counts at each positive's rank; no per-replicate loop.
* Randomness: case resamples come from ``default_rng(SeedSequence([seed, 0]))``, seed
  resamples from ``SeedSequence([seed, 1])``; so with one seed per entry the hierarchical
  bootstrap equals the paired one, replicate for replicate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from bench.errors import BenchError

#: Metrics the bootstrap knows (positive label 1).
BOOT_METRICS: tuple[str, ...] = ("auc", "f1", "accuracy", "precision", "recall", "specificity", "macro_f1")
DEFAULT_METRICS: tuple[str, ...] = ("auc", "f1", "accuracy")
#: |Δ*| at or below this (times max(1, |Δ*|max)) is a tie in the p-value's sign counts (module doc).
TIE_TOLERANCE = 1e-12
#: Bound on the size of one block of count matrices (replicates × cases), to bound memory.
BLOCK_CELLS = 4_000_000


@dataclass(frozen=True)
class BootstrapResult:
    """One metric's paired comparison; ``delta = value_a - value_b``."""

    metric: str
    value_a: float          # metric of a on the data (hierarchical: mean over a's seeds)
    value_b: float
    delta: float            # value_a - value_b
    ci_low: float           # percentile CI of delta
    ci_high: float
    p_value: float          # two-sided, percentile-interval inversion (see module doc)
    n_boot: int             # replicates drawn
    n_boot_valid: int       # replicates with a finite difference
    se: float               # sd of the replicate differences (ddof = 1)
    level: float = 0.95     # CI level
    replicates: np.ndarray = field(default=None, repr=False, compare=False)  # (B,) Δ*


# --------------------------------------------------------------------------- validation
def check_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in BOOT_METRICS]
    if unknown or not metrics:
        raise BenchError(f"unknown metric(s) {unknown or '(none given)'}; choose from {list(BOOT_METRICS)}")
    return metrics


def _check_common(n_boot: int, alpha: float, threshold: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise BenchError(f"n_boot must be a positive integer number of replicates, got {n_boot!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise BenchError(f"alpha must be in (0, 1), got {alpha!r}")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise BenchError(f"threshold must be a finite number, got {threshold!r}")


def _labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true, dtype=float).ravel()
    if np.isnan(y).any() or not np.isin(y, (0.0, 1.0)).all():
        raise BenchError("y_true must hold only 0 and 1; drop unlabelled cases before the bootstrap")
    pos = y.astype(bool)
    if pos.all() or not pos.any():
        raise BenchError(f"the stratified bootstrap needs both classes; got {int(pos.sum())} positive(s) "
                         f"and {int((~pos).sum())} negative(s)")
    return pos


def _scores(p: Any, n: int, name: str) -> np.ndarray:
    s = np.asarray(p, dtype=float).ravel()
    if s.size != n:
        raise BenchError(f"{name} has {s.size} values but y_true has {n}; give one probability per case")
    if not np.isfinite(s).all():
        raise BenchError(f"{name} holds NaN or infinite values; drop unscored cases from both predictors first")
    return s


# --------------------------------------------------------------------------- resampling
def case_count_blocks(n_pos: int, n_neg: int, n_boot: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stratified resampling counts, block by block: (counts of positives (b, n_pos), of negatives (b, n_neg)).

    Each block draws an index matrix for the positives, then one for the negatives, from
    ``default_rng(SeedSequence([seed, 0]))``; counts[r, i] is how often case i is in replicate r.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
    block = max(1, min(n_boot, BLOCK_CELLS // max(n_pos + n_neg, 1)))
    done = 0
    while done < n_boot:
        b = min(block, n_boot - done)
        idx_pos = rng.integers(0, n_pos, size=(b, n_pos))
        idx_neg = rng.integers(0, n_neg, size=(b, n_neg))
        yield _counts(idx_pos, n_pos), _counts(idx_neg, n_neg)
        done += b


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(b, k) indices in [0, n) → (b, n) occurrence counts."""
    b = idx.shape[0]
    flat = (idx + (np.arange(b) * n)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


class _Scorer:
    """Metrics of one predictor on count-weighted resamples (positives x, negatives y)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, threshold: float) -> None:
        self.m, self.n = x.size, y.size
        order = np.argsort(y, kind="stable")
        self.neg_order = order
        uniq, starts = np.unique(y[order], return_index=True)
        self.starts = starts
        self.lo = np.searchsorted(uniq, x, side="left")   # negatives strictly below x_i: cum[lo]
        self.hi = np.searchsorted(uniq, x, side="right")  # below or tied: cum[hi]
        self.pred_pos = (x > threshold).astype(np.float64)
        self.pred_neg = (y > threshold).astype(np.float64)

    def auc(self, cpos: np.ndarray, cneg: np.ndarray) -> np.ndarray:
        w = np.add.reduceat(cneg[:, self.neg_order], self.starts, axis=1)   # counts per unique negative score
        cum = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w, axis=1)], axis=1)
        below = np.take(cum, self.lo, axis=1)
        tied = np.take(cum, self.hi, axis=1) - below
        return ((below + 0.5 * tied) * cpos).sum(axis=1) / (self.m * self.n)

    def metrics(self, cpos: np.ndarray, cneg: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if "auc" in names:
            out["auc"] = self.auc(cpos, cneg)
        tp = cpos @ self.pred_pos
        fp = cneg @ self.pred_neg
        fn, tn = self.m - tp, self.n - fp
        with np.errstate(divide="ignore", invalid="ignore"):
            f1_pos = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
            f1_neg = np.where(2 * tn + fp + fn > 0, 2 * tn / (2 * tn + fp + fn), 0.0)
            values = {"f1": f1_pos, "accuracy": (tp + tn) / (self.m + self.n),
                      "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0), "recall": tp / self.m,
                      "specificity": tn / self.n, "macro_f1": (f1_pos + f1_neg) / 2}
        out.update({k: values[k] for k in names if k != "auc"})
        return out

    def observed(self, names: Sequence[str]) -> dict[str, float]:
        ones = (np.ones((1, self.m)), np.ones((1, self.n)))
        return {k: float(v[0]) for k, v in self.metrics(*ones, names).items()}


def _replicate_metrics(pos: np.ndarray, runs: Sequence[np.ndarray], metrics: Sequence[str], n_boot: int,
                       seed: int, threshold: float) -> tuple[list[dict[str, float]], list[dict[str, np.ndarray]]]:
    """Observed metrics and (B,) replicate metrics of each score vector in `runs` (shared resamples)."""
    scorers = [_Scorer(r[pos], r[~pos], threshold) for r in runs]
    observed = [s.observed(metrics) for s in scorers]
    chunks: list[list[dict[str, np.ndarray]]] = [[] for _ in runs]
    for cpos, cneg in case_count_blocks(int(pos.sum()), int((~pos).sum()), n_boot, seed):
        for i, s in enumerate(scorers):
            chunks[i].append(s.metrics(cpos, cneg, metrics))
    reps = [{k: np.concatenate([c[k] for c in ch]) for k in metrics} for ch in chunks]
    return observed, reps


def summarise(metric: str, value_a: float, value_b: float, diffs: np.ndarray, alpha: float) -> BootstrapResult:
    """Percentile CI and sign-proportion p-value of the replicate differences (module doc)."""
    valid = diffs[np.isfinite(diffs)]
    k = valid.size
    if k == 0:
        lo = hi = p = se = math.nan
    else:
        lo, hi = (float(q) for q in np.quantile(valid, [alpha / 2, 1 - alpha / 2]))
        signed = np.where(np.abs(valid) <= TIE_TOLERANCE * max(1.0, float(np.abs(valid).max())), 0.0, valid)
        p = min(1.0, 2.0 * min(1 + np.sum(signed <= 0), 1 + np.sum(signed >= 0)) / (k + 1))
        se = float(np.std(valid, ddof=1)) if k > 1 else math.nan
    return BootstrapResult(metric, float(value_a), float(value_b), float(value_a - value_b), lo, hi, float(p),
                           int(diffs.size), int(k), se, 1 - alpha, diffs)


# --------------------------------------------------------------------------- public API
def paired_bootstrap(y_true: Any, p_a: Any, p_b: Any, metrics: Sequence[str] = DEFAULT_METRICS,
                     n_boot: int = 2000, seed: int = 0, threshold: float = 0.5,
                     alpha: float = 0.05) -> dict[str, BootstrapResult]:
    """Stratified paired bootstrap of ``metric(a) - metric(b)`` on the same cases (module doc)."""
    metrics = check_metrics(metrics)
    _check_common(n_boot, alpha, threshold)
    pos = _labels(y_true)
    sa, sb = _scores(p_a, pos.size, "p_a"), _scores(p_b, pos.size, "p_b")
    observed, reps = _replicate_metrics(pos, [sa, sb], metrics, n_boot, seed, threshold)
    return {m: summarise(m, observed[0][m], observed[1][m], reps[0][m] - reps[1][m], alpha) for m in metrics}


def seed_matrix(frame: pd.DataFrame, name: str) -> tuple[list[int], list[Any], np.ndarray, np.ndarray]:
    """A (seed, subject_id, y_true, p_pos) frame → seeds, subjects (sorted), labels (n,), scores (S, n).

    Every seed must score the same subjects once, with one label per subject.
    """
    missing = [c for c in ("seed", "subject_id", "y_true", "p_pos") if c not in frame.columns]
    if missing:
        raise BenchError(f"{name} lacks columns {missing}; give one row per (seed, subject_id) with y_true, p_pos")
    if frame.empty:
        raise BenchError(f"{name} has no rows")
    frame = frame.assign(y_true=pd.to_numeric(frame["y_true"].astype(object), errors="coerce").astype(float),
                         p_pos=pd.to_numeric(frame["p_pos"].astype(object), errors="coerce").astype(float))
    if frame["y_true"].isna().any() or frame["p_pos"].isna().any():
        raise BenchError(f"{name} has rows without a 0/1 y_true or a numeric p_pos; drop unlabelled and unscored "
                         "subjects (from every seed) first")
    dup = frame.duplicated(["seed", "subject_id"], keep=False)
    if dup.any():
        r = frame.loc[dup].iloc[0]
        raise BenchError(f"{name} has several rows for seed {r['seed']}, subject {r['subject_id']!r}")
    wide = frame.pivot(index="subject_id", columns="seed", values="p_pos").sort_index()
    holes = wide.isna()
    if holes.to_numpy().any():
        seed_col = holes.any(axis=0)
        bad = [int(s) for s in seed_col[seed_col].index]
        subj = list(holes.index[holes.any(axis=1)].astype(str))[:5]
        raise BenchError(f"{name}: seeds {bad} lack a probability for subjects such as {subj}; every seed must "
                         "score the same subjects (drop unscored subjects from all seeds first)")
    labels = frame.groupby("subject_id")["y_true"].agg(["min", "max"]).sort_index()
    if (labels["min"] != labels["max"]).any():
        raise BenchError(f"{name}: subjects {list(labels.index[labels['min'] != labels['max']].astype(str))[:5]} "
                         "have different y_true in different seeds")
    seeds = [int(s) for s in wide.columns]
    return seeds, list(wide.index), labels["min"].to_numpy(dtype=float), wide.to_numpy(dtype=float).T


def hierarchical_bootstrap(frame_a: pd.DataFrame, frame_b: pd.DataFrame, metrics: Sequence[str] = DEFAULT_METRICS,
                           n_boot: int = 2000, seed: int = 0, threshold: float = 0.5, alpha: float = 0.05,
                           paired_seeds: bool = False) -> dict[str, BootstrapResult]:
    """Two-level paired bootstrap over seeds (statistics.md §2.6): estimand mean_s metric(a_s) − mean_s metric(b_s).

    Each replicate draws one stratified resample of the subjects, shared by every seed of both
    entries, then S_a seeds of a and S_b seeds of b with replacement, independently (seeds of two
    training procedures are not paired), or with the same seed indices when ``paired_seeds`` (both
    entries must then have the same seeds). Δ* = mean over a's drawn seeds − mean over b's.
    ``value_a``/``value_b`` are the means over each entry's seeds on the data.
    """
    metrics = check_metrics(metrics)
    _check_common(n_boot, alpha, threshold)
    seeds_a, subj_a, y_a, sa = seed_matrix(frame_a, "frame_a")
    seeds_b, subj_b, y_b, sb = seed_matrix(frame_b, "frame_b")
    if subj_a != subj_b:
        only_a = sorted(set(map(str, subj_a)) - set(map(str, subj_b)))[:5]
        only_b = sorted(set(map(str, subj_b)) - set(map(str, subj_a)))[:5]
        raise BenchError(f"the two frames score different subjects (only in a: {only_a}, only in b: {only_b}); "
                         "pair them on common subjects first")
    if not np.array_equal(y_a, y_b):
        raise BenchError("the two frames disagree on y_true of some subjects; they are not the same test set")
    if paired_seeds and seeds_a != seeds_b:
        raise BenchError(f"paired_seeds needs the same seeds in both frames; a has {seeds_a}, b has {seeds_b}")
    pos = _labels(y_a)
    observed, reps = _replicate_metrics(pos, [*sa, *sb], metrics, n_boot, seed, threshold)
    na, nb = len(seeds_a), len(seeds_b)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    ja = rng.integers(0, na, size=(n_boot, na))
    jb = ja if paired_seeds else rng.integers(0, nb, size=(n_boot, nb))
    rows = np.arange(n_boot)[:, None]
    out = {}
    for m in metrics:
        ma = np.stack([reps[i][m] for i in range(na)], axis=1)          # (B, S_a)
        mb = np.stack([reps[na + i][m] for i in range(nb)], axis=1)     # (B, S_b)
        diffs = ma[rows, ja].mean(axis=1) - mb[rows, jb].mean(axis=1)
        va = float(np.mean([observed[i][m] for i in range(na)]))
        vb = float(np.mean([observed[na + i][m] for i in range(nb)]))
        out[m] = summarise(m, va, vb, diffs, alpha)
    return out
