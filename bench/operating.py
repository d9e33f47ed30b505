"""Screening operating points chosen on the validation split (``bench show RUN --operating-point``).

A screening study fixes its decision threshold in advance, for a target sensitivity or
specificity, and reports the other rates on unseen subjects. Here the threshold is chosen on the
run's `val` subjects and applied to its `test` subjects; for a pooled cross-validation run
(bench.cv) each fold's threshold comes from that fold's own `val` split and is applied to its own
test fold, and the pooled row counts every subject's decision at its fold's threshold.

Threshold convention (decisions are ``p > t``, as everywhere in bench.metrics): the candidates are
the midpoints between consecutive distinct validation scores, plus one just below the lowest and
one just above the highest score; for ``sensitivity:L`` the largest candidate whose validation sensitivity is at
least L (the most specific such rule), for ``specificity:L`` the smallest whose validation
specificity is at least L. Midpoints, rather than the scores themselves, keep a new subject
scoring exactly a validation score from deciding which side it falls.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError

TARGETS = ("sensitivity", "specificity")
COLUMNS = ("threshold", "sensitivity", "sensitivity 95% CI", "specificity", "specificity 95% CI", "ppv", "npv", "n",
           "n_pos")


def parse_target(spec: str) -> tuple[str, float]:
    """``sensitivity:0.9`` or ``specificity:0.95`` (also ``sens``/``spec``) → (target, level)."""
    m = re.fullmatch(r"\s*(sens(?:itivity)?|spec(?:ificity)?)\s*[:=]\s*(\d*\.?\d+)\s*", spec or "")
    level = float(m.group(2)) if m else -1.0
    if not 0.0 < level <= 1.0:
        raise BenchError(f"operating point {spec!r}: give sensitivity:LEVEL or specificity:LEVEL with LEVEL in "
                         "(0, 1], e.g. sensitivity:0.9")
    return ("sensitivity" if m.group(1).startswith("sens") else "specificity"), level


def _labelled(subjects: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    y = pd.to_numeric(subjects["y_true"], errors="coerce").to_numpy(dtype=float)
    p = pd.to_numeric(subjects["p_pos"], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(y) & np.isfinite(p)
    return y[keep].astype(np.int64), p[keep]


def choose_threshold(y_true: np.ndarray, p_pos: np.ndarray, target: str, level: float) -> float:
    """The threshold of the module docstring on (y_true, p_pos); BenchError without both classes."""
    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(p_pos, dtype=float)
    if target not in TARGETS:
        raise BenchError(f"operating point target {target!r} is not one of {', '.join(TARGETS)}")
    if not ((y == 1).any() and (y == 0).any()):
        raise BenchError(f"the validation split has {int((y == 1).sum())} positive and {int((y == 0).sum())} "
                         "negative scored subjects; choosing a threshold needs both")
    scores = np.unique(p)
    candidates = np.concatenate([[scores[0] - 1e-6], (scores[:-1] + scores[1:]) / 2, [scores[-1] + 1e-6]])
    calls = p[None, :] > candidates[:, None]                                   # candidates x subjects
    if target == "sensitivity":
        ok = calls[:, y == 1].mean(axis=1) >= level - 1e-12
        return float(candidates[ok].max())                                     # the lowest candidate always qualifies
    ok = (~calls[:, y == 0]).mean(axis=1) >= level - 1e-12
    return float(candidates[ok].min())                                         # the highest candidate always qualifies


def wilson_interval(successes: int, total: int, alpha: float = 0.05) -> str:
    """Wilson score interval of a proportion as 'low-high' (statsmodels), '-' without any trial."""
    from statsmodels.stats.proportion import proportion_confint

    if total == 0:
        return "-"
    low, high = proportion_confint(successes, total, alpha=alpha, method="wilson")
    return f"{low:.3f}-{high:.3f}"


def rates(y_true: np.ndarray, decisions: np.ndarray) -> dict[str, float | str]:
    """Sensitivity, specificity, PPV, NPV (NaN where undefined) with Wilson 95% intervals of the first
    two, and the counts of binary decisions."""
    y, d = np.asarray(y_true, dtype=bool), np.asarray(decisions, dtype=bool)
    tp, fp, fn, tn = (int(v) for v in ((y & d).sum(), (~y & d).sum(), (y & ~d).sum(), (~y & ~d).sum()))

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return {"sensitivity": ratio(tp, tp + fn), "sensitivity 95% CI": wilson_interval(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "specificity 95% CI": wilson_interval(tn, tn + fp),
            "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn), "n": len(y), "n_pos": int(y.sum())}


def _split(predictions: pd.DataFrame, split: str) -> pd.DataFrame:
    return predictions[predictions["split"].astype(str) == split]


def operating_table(predictions: pd.DataFrame, target: str, level: float) -> pd.DataFrame:
    """Rows ``val`` and ``test`` of one run at the threshold chosen on its val split."""
    val = _labelled(_split(predictions, "val"))
    if not len(val[0]):
        raise BenchError("this run has no labelled val subjects to choose a threshold on (an external evaluation "
                         "has only test subjects): choose it on the run the model came from, e.g. `bench show "
                         "RUN --operating-point ...`, and pass it with --threshold")
    t = choose_threshold(*val, target, level)
    rows = {}
    for split in ("val", "test"):
        y, p = _labelled(_split(predictions, split))
        rows[split] = {"threshold": t, **rates(y, p > t)}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(COLUMNS))


def pooled_operating_table(pooled: Path, config: dict, target: str, level: float) -> pd.DataFrame:
    """Rows ``fold<k>`` (fold k's test at its own val threshold) and ``test`` (every fold's decisions pooled)."""
    from bench import results as store
    from bench.cv import fold_run_dirs

    rows, ys, ds = {}, [], []
    for fold, folder, _ in fold_run_dirs(pooled, config):
        if not (folder / "predictions.parquet").is_file():
            raise BenchError(f"fold {fold}'s run {folder} is missing; the operating point is chosen on each fold's "
                             "val split: rerun the cross-validation")
        predictions = store.read_run(folder).predictions
        t = choose_threshold(*_labelled(_split(predictions, "val")), target, level)
        y, p = _labelled(_split(predictions, "test"))
        rows[f"fold{fold}"] = {"threshold": t, **rates(y, p > t)}
        ys.append(y)
        ds.append(p > t)
    rows["test"] = {"threshold": float("nan"), **rates(np.concatenate(ys), np.concatenate(ds))}
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=list(COLUMNS))
