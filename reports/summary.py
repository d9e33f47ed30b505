"""Per-entry summaries of a suite's metrics: mean ± std over seeds, and the best full-method entry.

Conventions (the paper says "averaged over three trials" and prints mean ± std):

* ``std`` is the sample standard deviation over seeds (``ddof=1``); with a single seed it is NaN
  and a cell shows the mean alone.
* A seed whose value is NaN (e.g. AUC of a single-class test split) is left out of that metric's
  mean and std, and ``n`` counts the seeds that were used.
* The *best full-method entry* (Table 6's reference, Table 8's "Ours") is the ``kind="full"``
  entry with the highest mean ``best_metric`` on ``best_split``, ties broken by mean F1, then by
  name. The default (test AUC) is what the paper does when it calls SimCLR its best model from
  Table 3; set ``best_split="val"`` to avoid choosing on the test set.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.registry import Entry

SUMMARY_COLUMNS: tuple[str, ...] = ("entry", "split", "metric", "mean", "std", "n")


def summarise(metrics: pd.DataFrame) -> pd.DataFrame:
    """Tidy metrics (``bench.results.load_metrics``) → one row per (entry, split, metric).

    Columns: entry, split, metric, mean, std (ddof=1, NaN for one seed), n (finite seeds).
    """
    missing = [c for c in ("entry", "seed", "split", "metric", "value") if c not in metrics.columns]
    if missing:
        raise BenchError(f"metrics lack columns {missing}; pass what bench.results.load_metrics returns")
    if metrics.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if c in ("mean", "std") else object)
                             for c in SUMMARY_COLUMNS})
    finite = metrics[np.isfinite(metrics["value"].to_numpy(dtype=float))]
    keys = metrics[["entry", "split", "metric"]].drop_duplicates()
    agg = (finite.groupby(["entry", "split", "metric"], sort=True)["value"]
           .agg(mean="mean", std=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan, n="count")
           .reset_index())
    out = keys.merge(agg, on=["entry", "split", "metric"], how="left")
    out["n"] = out["n"].fillna(0).astype(np.int64)
    return out.sort_values(["entry", "split", "metric"], kind="stable").reset_index(drop=True)[
        list(SUMMARY_COLUMNS)]


def lookup(summary: pd.DataFrame, entry: str, metric: str, split: str = "test") -> tuple[float, float, int]:
    """(mean, std, n) of one entry's metric; (NaN, NaN, 0) when absent."""
    hit = summary[(summary["entry"] == entry) & (summary["split"] == split) & (summary["metric"] == metric)]
    if hit.empty:
        return math.nan, math.nan, 0
    row = hit.iloc[0]
    return float(row["mean"]), float(row["std"]), int(row["n"])


def best_full_entry(summary: pd.DataFrame, registry: Mapping[str, Entry], metric: str = "auc",
                    split: str = "test") -> str | None:
    """The ``kind="full"`` entry with the highest mean `metric` on `split` (ties: F1, then name).

    Entries without a finite value of `metric` are ranked last; None when no full entry has results.
    """
    present = set(summary["entry"])
    full = [n for n, e in registry.items() if e.kind == "full" and n in present]
    if not full:
        return None

    def score(name: str) -> tuple[float, float, str]:
        m = lookup(summary, name, metric, split)[0]
        f1 = lookup(summary, name, "f1", split)[0]
        return (-(m if math.isfinite(m) else -math.inf), -(f1 if math.isfinite(f1) else -math.inf), name)

    return min(full, key=score)
