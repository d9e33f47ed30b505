"""Paired comparison of two entries' test predictions (issue 7, deliverable 2; statistics.md §2.6).

Rows: one per scope × metric, scopes in order ``seed<k>`` (each seed alone), ``ensemble``
(when there are several seeds: each entry's mean probability per subject over its seeds) and
``pooled`` (the primary result). Columns: :data:`COMPARE_COLUMNS`.

* Pairing: both entries must have the same seeds (or be restricted to common ``seeds``) and,
  in each seed, the same subjects of the split with the same labels; otherwise BenchError
  naming the difference. Subjects without a label or a probability in either entry are left
  out of that seed (and of the ensemble and pooled scopes), said so in ``note``.
* ``delta = value_a - value_b``. Per seed and ensemble: the stratified paired bootstrap;
  ``pooled``: the hierarchical bootstrap (subjects and seeds resampled together; seeds drawn
  independently per entry), whose estimand is mean-over-seeds metric(a) − metric(b), with
  ``value_a``/``value_b`` the means over seeds. Every scope uses the same bootstrap seed, so
  the subject resamples coincide across scopes.
* ``p_delong`` (auc rows) and ``p_mcnemar`` (accuracy rows) answer the per-model question and
  are given for the seed and ensemble scopes only (the ensemble answers "is the seed-ensemble
  of a better", a different question from the pooled one); pooled rows leave them NaN.
* Thresholded metrics use ``p_pos > 0.5`` (``bench.metrics.DECISION_THRESHOLD``).
* :func:`compare_all` adds Holm-adjusted columns, the family being a's comparisons with every
  other entry within one (scope, metric).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.metrics import DECISION_THRESHOLD
from bench.stats.bootstrap import DEFAULT_METRICS, check_metrics, hierarchical_bootstrap, paired_bootstrap
from bench.stats.delong import delong
from bench.stats.mcnemar import holm, mcnemar

COMPARE_COLUMNS: tuple[str, ...] = ("entry_a", "entry_b", "scope", "metric", "value_a", "value_b", "delta",
                                    "ci_low", "ci_high", "p_bootstrap", "p_delong", "p_mcnemar", "n_subjects",
                                    "n_pos", "n_seeds", "note")
HOLM_COLUMNS: dict[str, str] = {"p_bootstrap": "p_holm", "p_delong": "p_delong_holm", "p_mcnemar": "p_mcnemar_holm"}
P_VALUE_RULE = "two-sided bootstrap sign proportion min(1, 2 min(1+#{d*<=0}, 1+#{d*>=0})/(B+1))"


def find_suite(results: Path, entries: Sequence[str]) -> str:
    """The one suite folder under `results` in which every entry has a complete run."""
    from bench.results import list_runs

    runs = list_runs(results)
    runs = runs[runs["status"] == "complete"]
    holding = [s for s, g in runs.groupby("suite") if set(entries) <= set(g["entry"])]
    if len(holding) == 1:
        return str(holding[0])
    names = " and ".join(entries)
    unknown = [e for e in entries if e not in set(runs["entry"])]
    if unknown:
        raise BenchError(f"entries {unknown} have no complete run in any suite under {results}; entries there: "
                         f"{sorted(runs['entry'].unique())}")
    if not holding:
        raise BenchError(f"no suite under {results} has results for {names}; suites there: "
                         f"{sorted(runs['suite'].unique())}. Check the names (`bench show {results}`) or give --suite")
    raise BenchError(f"several suites under {results} hold {names}: {holding}; choose one with --suite")


def compare_entries(results: Path, suite: str, a: str, b: str, metrics: Sequence[str] = DEFAULT_METRICS,
                    split: str = "test", n_boot: int = 2000, seed: int = 0, seeds: Sequence[int] | None = None,
                    threshold: float = DECISION_THRESHOLD) -> pd.DataFrame:
    """Entry `a` against `b` on the `split` predictions of `suite`: rows per scope × metric (module doc)."""
    from bench.results import load_predictions

    metrics = check_metrics(metrics)
    if a == b:
        raise BenchError(f"compare needs two different entries, got {a!r} twice")
    preds = load_predictions(results, suite, [a, b])
    frame = _compare(preds, a, b, metrics, split, n_boot, seed, seeds, threshold)
    frame.attrs["compare"] = method_info(suite, split, metrics, n_boot, seed, threshold)
    return frame


def compare_all(results: Path, suite: str, a: str, metrics: Sequence[str] = DEFAULT_METRICS, split: str = "test",
                n_boot: int = 2000, seed: int = 0, seeds: Sequence[int] | None = None,
                threshold: float = DECISION_THRESHOLD) -> pd.DataFrame:
    """`a` against every other entry with complete runs in `suite`, plus Holm-adjusted p-values."""
    from bench.results import list_runs, load_predictions

    metrics = check_metrics(metrics)
    runs = list_runs(results, suite)
    entries = list(dict.fromkeys(runs.loc[runs["status"] == "complete", "entry"]))
    if a not in entries:
        raise BenchError(f"entry {a!r} has no complete run in {Path(results) / suite}; entries there: {entries}")
    others = [e for e in entries if e != a]
    if not others:
        raise BenchError(f"{a!r} is the only entry with results in {Path(results) / suite}; nothing to compare with")
    preds = load_predictions(results, suite, [a, *others])
    frame = pd.concat([_compare(preds, a, b, metrics, split, n_boot, seed, seeds, threshold) for b in others],
                      ignore_index=True)
    for col, out in HOLM_COLUMNS.items():
        frame[out] = np.nan
        for _, idx in frame.groupby(["scope", "metric"], sort=False).groups.items():
            frame.loc[idx, out] = holm(frame.loc[idx, col].to_numpy(dtype=float))
    frame.attrs["compare"] = {**method_info(suite, split, metrics, n_boot, seed, threshold),
                              "holm_family": "a against every other entry, within one (scope, metric)"}
    return frame


def method_info(suite: str, split: str, metrics: Sequence[str], n_boot: int, seed: int,
                threshold: float) -> dict[str, Any]:
    """How the numbers were made (saved next to the table)."""
    return {"suite": suite, "split": split, "metrics": list(metrics), "n_boot": int(n_boot), "seed": int(seed),
            "threshold": float(threshold), "delta": "value_a - value_b",
            "bootstrap": "stratified (positives and negatives resampled separately), paired",
            "pooled": "hierarchical bootstrap: subjects and seeds resampled together, seeds independently per entry",
            "ci": "95% percentile", "p_bootstrap": P_VALUE_RULE,
            "p_delong": "DeLong (Sun & Xu 2014), per seed and on the seed-ensemble",
            "p_mcnemar": "McNemar, exact binomial when discordant pairs < 25, else chi2 with continuity correction"}


# --------------------------------------------------------------------------- pairing
def _paired(preds: pd.DataFrame, a: str, b: str, split: str,
            seeds: Sequence[int] | None) -> tuple[list[int], pd.DataFrame]:
    """Common seeds and a frame seed, subject_id, y_true, p_a, p_b of the split (unscored rows kept as NaN)."""
    part = preds[preds["split"].astype(str) == split]
    sets = {}
    for e in (a, b):
        rows = part[part["entry"] == e]
        if rows.empty:
            have = sorted(preds.loc[preds["entry"] == e, "split"].astype(str).unique())
            raise BenchError(f"entry {e!r} has no {split!r} predictions (splits there: {have}); choose --split")
        sets[e] = sorted(int(s) for s in rows["seed"].unique())
    if seeds is not None:
        seeds = sorted({int(s) for s in seeds})
        for e in (a, b):
            lack = [s for s in seeds if s not in sets[e]]
            if lack:
                raise BenchError(f"entry {e!r} has no complete run for seeds {lack} (it has {sets[e]}); "
                                 "run them or choose other --seeds")
    elif sets[a] != sets[b]:
        raise BenchError(f"{a!r} was run with seeds {sets[a]} but {b!r} with {sets[b]}; run the missing seeds "
                         "or restrict the comparison to common ones with --seeds")
    else:
        seeds = sets[a]
    cols = ["seed", "subject_id", "y_true", "p_pos"]
    fa = part.loc[(part["entry"] == a) & part["seed"].isin(seeds), cols]
    fb = part.loc[(part["entry"] == b) & part["seed"].isin(seeds), cols]
    for e, f in ((a, fa), (b, fb)):
        if f.duplicated(["seed", "subject_id"]).any():
            raise BenchError(f"entry {e!r} has several {split} rows for one subject in a seed; its predictions are corrupt")
    for s in seeds:
        sa = set(fa.loc[fa["seed"] == s, "subject_id"].astype(str))
        sb = set(fb.loc[fb["seed"] == s, "subject_id"].astype(str))
        if sa != sb:
            raise BenchError(f"{a!r} and {b!r} were not run on the same {split} subjects (seed {s}): "
                             f"{len(sa - sb)} only in {a!r} (e.g. {sorted(sa - sb)[:5]}), {len(sb - sa)} only in "
                             f"{b!r} (e.g. {sorted(sb - sa)[:5]}); run both on the same dataset")
    merged = fa.merge(fb, on=["seed", "subject_id"], suffixes=("_a", "_b"))
    la = merged["y_true_a"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    lb = merged["y_true_b"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    clash = ~np.isnan(la) & ~np.isnan(lb) & (la != lb)
    if clash.any():
        raise BenchError(f"{a!r} and {b!r} disagree on the labels of {split} subjects such as "
                         f"{sorted(merged.loc[clash, 'subject_id'].astype(str).unique())[:5]}; "
                         "they were not run on the same dataset")
    out = pd.DataFrame({"seed": merged["seed"].astype(np.int64), "subject_id": merged["subject_id"],
                        "y_true": np.where(np.isnan(la), lb, la),
                        "p_a": merged["p_pos_a"].astype(float), "p_b": merged["p_pos_b"].astype(float)})
    out = out.sort_values(["seed", "subject_id"], kind="stable").reset_index(drop=True)
    return list(seeds), out


# --------------------------------------------------------------------------- rows
def _compare(preds: pd.DataFrame, a: str, b: str, metrics: tuple[str, ...], split: str, n_boot: int, seed: int,
             seeds: Sequence[int] | None, threshold: float) -> pd.DataFrame:
    seed_list, pairs = _paired(preds, a, b, split, seeds)
    unusable = pairs[["y_true", "p_a", "p_b"]].isna().any(axis=1)
    usable = pairs[~unusable]
    rows: list[dict[str, Any]] = []
    base = {"entry_a": a, "entry_b": b}
    for s in seed_list:
        g = usable[usable["seed"] == s]
        rows += _scope_rows(base, f"seed{s}", g["y_true"], g["p_a"], g["p_b"], metrics, n_boot, seed, threshold, 1,
                            _unusable_note(int(unusable[pairs["seed"] == s].sum())))
    complete = _complete_subjects(pairs, len(seed_list))
    pooled = usable[usable["subject_id"].isin(complete)]
    left = sorted(set(usable["subject_id"]) - set(complete))
    note = "; ".join(n for n in (_unusable_note(int(unusable.sum()), over_seeds=True),
                                 f"{len(left)} subjects unscored in some seed left out" if left else "") if n)
    if len(seed_list) > 1:
        ens = pooled.groupby("subject_id", sort=True).agg(y_true=("y_true", "first"), p_a=("p_a", "mean"),
                                                          p_b=("p_b", "mean"))
        rows += _scope_rows(base, "ensemble", ens["y_true"], ens["p_a"], ens["p_b"], metrics, n_boot, seed,
                            threshold, len(seed_list), note)
    rows += _pooled_rows(base, pooled, metrics, n_boot, seed, threshold, len(seed_list), note)
    return pd.DataFrame(rows, columns=list(COMPARE_COLUMNS))


def _unusable_note(n: int, over_seeds: bool = False) -> str:
    """The note of a scope from which `n` rows without a label or a probability were left out."""
    if not n:
        return ""
    return f"{n} (seed, subject) rows without a label or a probability left out" if over_seeds else \
        f"{n} subjects without a label or a probability left out"


def _complete_subjects(pairs: pd.DataFrame, n_seeds: int) -> list:
    """Subjects with a label and both probabilities in every seed."""
    ok = pairs.dropna(subset=["y_true", "p_a", "p_b"]).groupby("subject_id")["seed"].nunique()
    return sorted(ok[ok == n_seeds].index)


def _empty_row(base: dict, scope: str, metric: str, n_seeds: int, note: str) -> dict[str, Any]:
    return {**base, "scope": scope, "metric": metric, "value_a": math.nan, "value_b": math.nan,
            "delta": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_bootstrap": math.nan,
            "p_delong": math.nan, "p_mcnemar": math.nan, "n_subjects": 0, "n_pos": 0, "n_seeds": n_seeds,
            "note": note}


def _scope_rows(base: dict, scope: str, y: Any, pa: Any, pb: Any, metrics: tuple[str, ...], n_boot: int,
                seed: int, threshold: float, n_seeds: int, note: str = "") -> list[dict[str, Any]]:
    """Rows of one scope (a seed or the ensemble): paired bootstrap, DeLong, McNemar."""
    y, pa, pb = (np.asarray(v, dtype=float) for v in (y, pa, pb))
    try:
        boot = paired_bootstrap(y, pa, pb, metrics, n_boot=n_boot, seed=seed, threshold=threshold)
    except BenchError as exc:
        return [_empty_row(base, scope, m, n_seeds, "; ".join(x for x in (note, f"not tested: {exc}") if x))
                for m in metrics]
    extra: dict[str, float] = {}
    notes = [note] if note else []
    if "auc" in metrics:
        try:
            extra["p_delong"] = delong(y, pa, pb).p
        except BenchError as exc:
            notes.append(f"no DeLong: {exc}")
    if "accuracy" in metrics:
        extra["p_mcnemar"] = mcnemar(y, pa > threshold, pb > threshold).p
    rows = []
    for m in metrics:
        r = boot[m]
        rows.append({**base, "scope": scope, "metric": m, "value_a": r.value_a, "value_b": r.value_b,
                     "delta": r.delta, "ci_low": r.ci_low, "ci_high": r.ci_high, "p_bootstrap": r.p_value,
                     "p_delong": extra.get("p_delong", math.nan) if m == "auc" else math.nan,
                     "p_mcnemar": extra.get("p_mcnemar", math.nan) if m == "accuracy" else math.nan,
                     "n_subjects": int(y.size), "n_pos": int(y.sum()), "n_seeds": n_seeds,
                     "note": "; ".join(notes)})
    return rows


def _pooled_rows(base: dict, pooled: pd.DataFrame, metrics: tuple[str, ...], n_boot: int, seed: int,
                 threshold: float, n_seeds: int, note: str) -> list[dict[str, Any]]:
    """Rows of the pooled scope: hierarchical bootstrap over subjects and seeds."""
    fa = pooled[["seed", "subject_id", "y_true", "p_a"]].rename(columns={"p_a": "p_pos"})
    fb = pooled[["seed", "subject_id", "y_true", "p_b"]].rename(columns={"p_b": "p_pos"})
    try:
        if pooled.empty:
            raise BenchError("no subject is scored in every seed by both entries")
        boot = hierarchical_bootstrap(fa, fb, metrics, n_boot=n_boot, seed=seed, threshold=threshold)
    except BenchError as exc:
        return [_empty_row(base, "pooled", m, n_seeds, "; ".join(x for x in (note, f"not tested: {exc}") if x))
                for m in metrics]
    y = pooled.drop_duplicates("subject_id")["y_true"].to_numpy(dtype=float)
    return [{**base, "scope": "pooled", "metric": m, "value_a": r.value_a, "value_b": r.value_b, "delta": r.delta,
             "ci_low": r.ci_low, "ci_high": r.ci_high, "p_bootstrap": r.p_value, "p_delong": math.nan,
             "p_mcnemar": math.nan, "n_subjects": int(y.size), "n_pos": int(y.sum()), "n_seeds": n_seeds,
             "note": note} for m, r in boot.items()]
