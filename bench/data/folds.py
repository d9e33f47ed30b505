"""k-fold cross-validation of the labelled dataset: the train/val/test splits of one fold.

The paper evaluates on one fixed 80/10/10 split; with a few hundred subjects its test set holds
about 20, so a test AUC moves by several points between splits. ``data.folds = K`` (``bench run
--folds K``) instead evaluates every subject once, out of fold, as is usual for small clinical
cohorts (e.g. Hsieh et al. 2021, Wang et al. 2022 in Table 8's baselines):

* folds: the dataset's ``fold`` column when it has one (``bench data split --kfold K`` writes it;
  it must hold exactly the values 0..K-1), else subject-grouped, label-stratified folds drawn
  in memory with ``data.fold_seed`` (scikit-learn's StratifiedGroupKFold, as that command);
* or, with ``data.fold_by = <column>`` (e.g. ``site``), one fold per value of that manifest column,
  in sorted order: leave-one-site-out, i.e. external validation on each site in turn (the models of
  fold k never saw an image of site k); K must be the number of values;
* fold k: its subjects are the test split; the others are split into train and val by subject,
  stratified by label, in the paper's 80:10 ratio (:func:`bench.data.splits.assign_splits`, seeded
  by (``data.fold_seed``, k)), so model selection never sees the fold's test subjects.

Only the `cls` dataset is cross-validated; the `seg` dataset keeps its own split, so the
segmentation and pretraining stages, which read no `cls` split, are shared by every fold.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.data.splits import assign_splits, kfold_splits

TRAIN_VAL_FRACTIONS: tuple[float, float, float] = (8 / 9, 1 / 9, 0.0)   # the paper's 80:10 within the other folds


def fold_of(manifest: pd.DataFrame, folds: int, seed: int, by: str = "") -> pd.Series:
    """Fold index (0..folds-1) per manifest row: one per value of column `by`, else the `fold` column if
    present, else drawn with `seed`."""
    if by:
        return _group_folds(manifest, folds, by)
    if "fold" not in manifest.columns or manifest["fold"].isna().all():
        return kfold_splits(manifest, folds, seed).astype(int)
    values = pd.to_numeric(manifest["fold"], errors="coerce")
    found = sorted(int(v) for v in values.dropna().unique()) if values.notna().all() else None
    if found != list(range(folds)) or not np.allclose(values, values.round()):
        raise BenchError(f"the dataset's fold column holds {sorted(map(str, manifest['fold'].unique()))}, "
                         f"not the folds 0..{folds - 1} that data.folds={folds} asks for; rewrite it with "
                         f"`bench data split DIR --kfold {folds}` or drop the column to draw folds in memory")
    _check_subjects_whole(manifest, values, "the fold column",
                          f"rewrite them with `bench data split DIR --kfold {folds}`")
    return values.astype(int).rename("fold")


def _group_folds(manifest: pd.DataFrame, folds: int, by: str) -> pd.Series:
    """One fold per value of column `by` (sorted): leave-one-group-out."""
    if by not in manifest.columns:
        raise BenchError(f"data.fold_by={by!r} is not a column of the `cls` manifest; columns: "
                         f"{', '.join(map(str, manifest.columns))}")
    values = manifest[by].astype("string").str.strip()
    if (values.isna() | (values == "")).any():
        raise BenchError(f"some `cls` images have no {by!r}; leave-one-{by}-out needs it on every row")
    groups = sorted(values.unique())
    if len(groups) != folds:
        raise BenchError(f"data.fold_by={by} makes one fold per value and the `cls` dataset has {len(groups)} "
                         f"({', '.join(groups)}): run with --folds {len(groups)}")
    fold = values.map({g: i for i, g in enumerate(groups)}).astype(int)
    _check_subjects_whole(manifest, fold, f"the {by!r} column", f"a subject must have one {by} to hold it out")
    return fold.rename("fold")


def _check_subjects_whole(manifest: pd.DataFrame, fold: pd.Series, source: str, fix: str) -> None:
    crossing = fold.groupby(manifest["subject_id"].astype(str)).nunique()
    if (crossing > 1).any():
        raise BenchError(f"subject {crossing[crossing > 1].index[0]!r} is in two folds of {source}; folds are "
                         f"subject-wise: {fix}")


def fold_names(manifest: pd.DataFrame, folds: int, by: str = "") -> list[str]:
    """What each fold holds out: the values of `by` (leave-one-group-out), else 'fold k'."""
    if by and by in manifest.columns:
        return sorted(manifest[by].astype("string").str.strip().dropna().unique())
    return [f"fold {k}" for k in range(folds)]


def cv_splits(manifest: pd.DataFrame, folds: int, fold: int, seed: int, by: str = "") -> pd.Series:
    """The split ('train' | 'val' | 'test') of every manifest row in fold `fold` of `folds`."""
    if not 0 <= fold < folds:
        raise BenchError(f"data.fold={fold} is not one of the folds 0..{folds - 1}")
    assigned = fold_of(manifest, folds, seed, by)
    test = (assigned == fold).to_numpy()
    split = pd.Series("test", index=manifest.index, name="split", dtype=object)
    rest = manifest.loc[~test]
    if len(rest):
        split.loc[~test] = assign_splits(rest, seed=seed * 1000 + fold + 1, fractions=TRAIN_VAL_FRACTIONS).to_numpy()
    return split


def apply_fold(manifest: pd.DataFrame, folds: int, fold: int, seed: int, by: str = "") -> pd.DataFrame:
    """A copy of `manifest` whose split column is that of the fold (the original is untouched)."""
    return manifest.assign(split=cv_splits(manifest, folds, fold, seed, by).to_numpy())
