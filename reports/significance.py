"""Significance markers of the tables: paired tests of each row against its reference.

Convention (issue 7, "a significance marker from the paired tests against the full method"):

* Each row of a table is compared with its reference (Tables 4, 5, 7: the entry's full-method
  parent; Tables 3, 6, 8: the best full-method entry) on the subjects of the test split, by
  ``bench.stats.hierarchical_bootstrap`` (subjects and seeds resampled together), for F1, AUC
  and accuracy; ``delta`` is row − reference.
* The two entries are paired on subjects; their seeds are resampled independently (the
  ``bench.stats`` default), as seed k of two entries is not one paired trial in general, and
  their seed counts may differ (``n_seeds``, ``n_seeds_reference``). A subject not scored in every seed of both entries is left
  out of both (and counted in ``note``).
* Holm's correction runs over the family of one table's comparisons of one metric (the rows of
  a metric column; statistics.md §2.5, as ``bench compare --all`` does per metric); a cell is
  marked when its Holm-adjusted p-value is below ``alpha`` (0.05).
* Each comparison gets its own bootstrap seed, derived from (seed, table, entry, reference), so
  adding a row never changes the resamples of another one.
"""
from __future__ import annotations

import importlib
import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from bench.errors import BenchError

SIG_METRICS: tuple[str, ...] = ("f1", "auc", "accuracy")
TEST_COLUMNS: tuple[str, ...] = ("table", "entry", "reference", "metric", "n_seeds", "n_seeds_reference",
                                 "n_subjects", "delta", "ci_low", "ci_high", "p_value", "p_holm", "note")


@dataclass
class Significance:
    """The outcome of every comparison, and how they were made (for the captions)."""

    frame: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(TEST_COLUMNS)))
    n_boot: int = 2000                   # bootstrap replicates per comparison
    alpha: float = 0.05                  # family-wise level after Holm
    available: bool = True               # False when bench.stats could not be imported

    def p_holm(self, table: str, entry: str, metric: str) -> float:
        """Holm-adjusted p-value of one cell (NaN when it was not tested)."""
        f = self.frame
        hit = f[(f["table"] == table) & (f["entry"] == entry) & (f["metric"] == metric)]
        return float(hit["p_holm"].iloc[0]) if len(hit) else math.nan

    def significant(self, table: str, entry: str, metric: str) -> bool:
        p = self.p_holm(table, entry, metric)
        return math.isfinite(p) and p < self.alpha

    def family_sizes(self, table: str) -> dict[str, int]:
        """Per metric, the number of comparisons of `table` that produced a p-value (Holm's families)."""
        f = self.frame[self.frame["table"] == table]
        tested = np.isfinite(f["p_value"].to_numpy(dtype=float))
        return {str(m): int(tested[(f["metric"] == m).to_numpy()].sum()) for m in pd.unique(f["metric"])}


def pair_seed(seed: int, *names: str) -> int:
    """A 32-bit bootstrap seed from the report seed and the names of a comparison (stable across runs)."""
    words = [int(seed)] + [zlib.crc32(n.encode("utf-8")) for n in names]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


def paired_frames(predictions: pd.DataFrame, entry: str, reference: str,
                  split: str = "test") -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Both entries' rows on the subjects that every seed of both scored: bootstrap frames, a note.

    Each entry keeps all its seeds (their numbers may differ); a subject without a probability in
    some seed of either entry is left out of both, so that every seed holds the same subjects.
    """
    cols = ["seed", "subject_id", "y_true", "p_pos"]
    sub = predictions[(predictions["split"] == split) & predictions["y_true"].notna()]
    a = sub.loc[sub["entry"] == entry, cols]
    b = sub.loc[sub["entry"] == reference, cols]
    labels = a.drop_duplicates("subject_id")[["subject_id", "y_true"]].merge(
        b.drop_duplicates("subject_id")[["subject_id", "y_true"]], on="subject_id", suffixes=("_a", "_b"))
    if (labels["y_true_a"].astype(int) != labels["y_true_b"].astype(int)).any():
        raise BenchError(f"{entry} and {reference} disagree on the labels of some {split} subjects; "
                         "they were not run on the same dataset")
    keep = None
    for frame in (a, b):
        for _, g in frame.groupby("seed"):
            scored = set(g.loc[g["p_pos"].notna(), "subject_id"])
            keep = scored if keep is None else keep & scored
    keep = keep or set()
    every = set(a["subject_id"]) | set(b["subject_id"])
    note = f"{len(every - keep)} subject(s) not scored in every seed of both entries left out" if every - keep else ""
    out = []
    for frame in (a, b):
        f = frame[frame["subject_id"].isin(keep)].sort_values(["seed", "subject_id"], kind="stable")
        out.append(f.assign(y_true=f["y_true"].astype(int), p_pos=f["p_pos"].astype(float)).reset_index(drop=True))
    return out[0], out[1], note


def run_tests(predictions: pd.DataFrame, pairs: Mapping[str, Sequence[tuple[str, str]]],
              metrics: Sequence[str] = SIG_METRICS, split: str = "test", n_boot: int = 2000,
              seed: int = 0, alpha: float = 0.05) -> Significance:
    """Test every (entry, reference) pair of every table; Holm within each table's metric column.

    `pairs` maps a table key to its (entry, reference) pairs. A comparison that cannot be made
    (no common subjects, a single class, ...) gets NaN p-values and the reason in ``note``.
    """
    if n_boot < 1:
        raise BenchError(f"n_boot must be a positive number of bootstrap replicates, got {n_boot}")
    try:
        stats = importlib.import_module("bench.stats")
    except ImportError as exc:
        warnings.warn(f"bench.stats is not available ({exc}); tables are built without significance markers",
                      stacklevel=2)
        return Significance(n_boot=n_boot, alpha=alpha, available=False)
    rows = []
    for table, table_pairs in pairs.items():
        start = len(rows)
        for entry, reference in table_pairs:
            base = {"table": table, "entry": entry, "reference": reference}
            try:
                fa, fb, note = paired_frames(predictions, entry, reference, split)
                if fa.empty:
                    raise BenchError(f"{entry} and {reference} share no scored {split} subject")
                result = stats.hierarchical_bootstrap(fa, fb, metrics=tuple(metrics), n_boot=n_boot,
                                                      seed=pair_seed(seed, table, entry, reference))
            except (BenchError, ValueError) as exc:
                rows += [{**base, "metric": m, "n_seeds": 0, "n_seeds_reference": 0, "n_subjects": 0,
                          "delta": math.nan,
                          "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
                          "note": f"not tested: {exc}"} for m in metrics]
                continue
            for m in metrics:
                r = result[m]
                rows.append({**base, "metric": m, "n_seeds": int(fa["seed"].nunique()),
                             "n_seeds_reference": int(fb["seed"].nunique()),
                             "n_subjects": int(fa["subject_id"].nunique()),
                             "delta": float(r.delta), "ci_low": float(r.ci_low), "ci_high": float(r.ci_high),
                             "p_value": float(r.p_value), "note": note})
        for m in metrics:
            family = [r for r in rows[start:] if r["metric"] == m]
            p = np.array([r["p_value"] for r in family], dtype=float)
            ok = np.isfinite(p)
            adjusted = np.full(len(p), math.nan)
            if ok.any():
                adjusted[ok] = np.asarray(stats.holm(p[ok]), dtype=float)
            for r, q in zip(family, adjusted):
                r["p_holm"] = float(q)
    frame = pd.DataFrame(rows, columns=list(TEST_COLUMNS))
    return Significance(frame=frame, n_boot=n_boot, alpha=alpha, available=True)
