"""Subject-wise, label-stratified splits (DESIGN.md "Data contracts"; paper: 80/10/10 subject-wise).

No subject ever crosses splits. Within each stratum (label, or one stratum when unlabeled) the
subjects are shuffled by a generator seeded from `seed` and allocated by largest remainder, so
small strata still get val/test subjects when the fractions allow it. k-fold is an option via
scikit-learn's StratifiedGroupKFold.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.errors import BenchError

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def subject_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per subject with its label (max over its images; NA when none is labeled)."""
    if "subject_id" not in manifest.columns:
        raise BenchError("manifest has no subject_id column; splits are subject-wise")
    labels = pd.to_numeric(manifest.get("label"), errors="coerce")
    table = (pd.DataFrame({"subject_id": manifest["subject_id"].astype(str), "label": labels})
             .groupby("subject_id", sort=True)["label"].max().reset_index())
    return table


def check_fractions(fractions: tuple[float, ...]) -> tuple[float, float, float]:
    """The (train, val, test) fractions as floats; BenchError unless three finite non-negative
    numbers summing to 1 with a positive train fraction."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        values = ()
    shown = " ".join(map(str, fractions)) if isinstance(fractions, (tuple, list)) else repr(fractions)
    if (len(values) != 3 or not all(np.isfinite(values)) or min(values) < 0 or values[0] <= 0
            or abs(sum(values) - 1) > 1e-6):
        raise BenchError(f"split fractions {shown} (train val test) must be three non-negative numbers "
                         f"summing to 1, train above 0; e.g. --fractions {' '.join(map(str, DEFAULT_FRACTIONS))}")
    return values  # type: ignore[return-value]


def _allocate(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Largest-remainder allocation of n items to (train, val, test)."""
    raw = np.asarray(fractions, dtype=float) * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    return int(counts[0]), int(counts[1]), int(counts[2])


def assign_splits(manifest: pd.DataFrame, seed: int,
                  fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> pd.Series:
    """Return a `split` value ('train' | 'val' | 'test') for every manifest row.

    Stratified by subject label (unlabeled subjects form their own stratum); fixed by `seed`.
    """
    fractions = check_fractions(fractions)
    subjects = subject_table(manifest)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B117]))
    split_of: dict[str, str] = {}
    strata = subjects["label"].fillna(-1).astype(int)
    for value in sorted(strata.unique()):
        ids = subjects.loc[strata == value, "subject_id"].to_numpy()
        ids = ids[rng.permutation(len(ids))]
        n_train, n_val, _ = _allocate(len(ids), fractions)
        for i, sid in enumerate(ids):
            split_of[sid] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return manifest["subject_id"].astype(str).map(split_of).rename("split")


def kfold_splits(manifest: pd.DataFrame, k: int, seed: int) -> pd.Series:
    """Fold index (0..k-1) per manifest row: subject-grouped, label-stratified (StratifiedGroupKFold)."""
    subjects = subject_table(manifest)
    if k < 2 or k > len(subjects):
        raise BenchError(f"k={k} folds needs 2 <= k <= number of subjects ({len(subjects)})")
    y = subjects["label"].fillna(-1).astype(int).to_numpy()
    from sklearn.model_selection import StratifiedGroupKFold   # here: importing it takes seconds (`bench --help`)

    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_of: dict[str, int] = {}
    ids = subjects["subject_id"].to_numpy()
    for fold, (_, test_idx) in enumerate(cv.split(ids, y, groups=ids)):
        for sid in ids[test_idx]:
            fold_of[sid] = fold
    return manifest["subject_id"].astype(str).map(fold_of).rename("fold")
