"""Subgroup metrics of a run: its subject predictions by a subject attribute of the `cls` manifest.

A screening model is reported per subgroup (sex, age band, site) as well as overall, since the
prevalence and the bone differ between them (the phantom, like the clinic, has far more women).
``bench show RUN --by sex`` (or ``site``, any manifest column, or ``age:65`` for a numeric column
cut at a threshold: ``<65`` and ``>=65``) prints, for the chosen split, each group's n, positives,
the paper's metrics plus specificity, and the AUC with its DeLong 95% CI.

Conventions: a subject's attribute is its first non-empty value over its images in the manifest
the run used (config.json ``data.cls``); subjects without one form the group ``unknown``. The
metrics are :func:`bench.metrics.classification_metrics` on the subject predictions of the group.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.metrics import classification_metrics
from bench.stats import auc_ci

MAX_VALUE_GROUPS = 10   # a numeric column with more distinct values needs a cut (column:VALUE)
COLUMNS: tuple[str, ...] = ("n", "n_pos", "auc", "auc 95% CI", "recall", "specificity", "precision", "f1",
                            "accuracy")


def auc_interval(subjects: pd.DataFrame) -> str:
    """DeLong 95% CI of the AUC of subject predictions as 'low-high' (bench.stats.auc_ci); '-' when undefined."""
    ci = auc_ci(pd.to_numeric(subjects["y_true"], errors="coerce"), pd.to_numeric(subjects["p_pos"], errors="coerce"))
    return "-" if ci is None else f"{ci[0]:.3f}-{ci[1]:.3f}"


def parse_by(spec: str) -> tuple[str, float | None]:
    """``column`` or ``column:threshold`` (a number) → (column, threshold or None)."""
    m = re.fullmatch(r"\s*([^:]+?)\s*(?::\s*([-+0-9.eE]+)\s*)?", spec or "")
    if not m:
        raise BenchError(f"subgroup {spec!r}: give a manifest column (sex, site, ...) or column:threshold (age:65)")
    if m.group(2) is None:
        return m.group(1), None
    try:
        return m.group(1), float(m.group(2))
    except ValueError as exc:
        raise BenchError(f"subgroup {spec!r}: {m.group(2)!r} is not a number") from exc


def subject_groups(manifest: pd.DataFrame, column: str, threshold: float | None = None) -> pd.Series:
    """subject_id → group label (module docstring)."""
    if column not in manifest.columns:
        raise BenchError(f"subgroup column {column!r}: the `cls` manifest has no such column; columns: "
                         f"{', '.join(map(str, manifest.columns))}")
    values = manifest[column]
    if threshold is not None:
        values = pd.to_numeric(values, errors="coerce")
        if values.notna().sum() == 0:
            raise BenchError(f"subgroups {column}:{threshold:g}: the column holds no numbers to cut")
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        distinct = numbers.dropna().nunique()
        if distinct > MAX_VALUE_GROUPS and numbers.notna().sum() == values.notna().sum():
            raise BenchError(f"subgroups by {column!r}: a numeric column with {distinct} distinct values; cut it "
                             f"in two with {column}:VALUE (e.g. {column}:{float(numbers.median()):g})")
        values = values.astype("string").str.strip().replace("", pd.NA)
    first = values.groupby(manifest["subject_id"].astype(str)).first()
    if threshold is None:
        return first.fillna("unknown").astype(str)
    cut = np.where(first < threshold, f"<{threshold:g}", f">={threshold:g}")
    return pd.Series(np.where(first.isna(), "unknown", cut), index=first.index)


def subgroup_table(predictions: pd.DataFrame, manifest: pd.DataFrame, by: str, split: str = "test",
                   metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per group (and ``all``) of the subject predictions of `split`: :data:`COLUMNS`, or n, n_pos
    and `metrics` (bench.metrics.METRIC_KEYS; the AUC followed by its 95 % CI)."""
    column, threshold = parse_by(by)
    groups = subject_groups(manifest, column, threshold)
    rows = predictions[predictions["split"].astype(str) == split]
    if rows.empty:
        raise BenchError(f"the run has no {split} predictions; splits: {sorted(set(predictions['split'].astype(str)))}")
    group = rows["subject_id"].astype(str).map(groups).fillna("unknown")
    out = {}
    for name, part in [("all", rows), *sorted(rows.groupby(group), key=lambda kv: str(kv[0]))]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # a single-class group: AUC NaN, shown as such
            m = classification_metrics(part["y_true"], part["p_pos"])
        out[str(name)] = {**m, "auc 95% CI": auc_interval(part)}
    columns = list(COLUMNS) if metrics is None else list(dict.fromkeys(
        ["n", "n_pos", *(c for k in metrics for c in ((k, "auc 95% CI") if k == "auc" else (k,)))]))
    return pd.DataFrame(out).T[columns]


def run_manifest(config: dict, run_path: Path) -> pd.DataFrame:
    """The `cls` manifest a run used (config.json ``data.cls``)."""
    from bench.data.format import Dataset

    folder = (config.get("data") or {}).get("cls")
    if not folder or not Path(folder).is_dir():
        raise BenchError(f"the `cls` dataset of {run_path} ({folder or 'not recorded'}) is not there any more; "
                         "subgroups need its manifest")
    return Dataset.open(folder).manifest
