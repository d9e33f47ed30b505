"""Logistic regression on a few subject-level measurements, C chosen on validation macro-F1.

The selection rule of the paper ("Metrics") applied to the classical baselines: fit on the
labelled train subjects for every C of the grid, keep the C with the best validation macro-F1
(ties: validation AUC, then the smaller C, i.e. the earlier grid entry); the test split is only
scored. Missing measurements are imputed with the train median, then features are standardised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.errors import BenchError
from bench.metrics import classification_metrics, require_validation, select_best

C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)


@dataclass
class LogisticFit:
    model: Pipeline
    c: float
    p_pos: np.ndarray                  # positive probability of every row of the table
    history: list[dict[str, float]]    # per C: val_macro_f1, val_auc
    features: list[str]                # the features fitted (those some train subject has), in coefficient order


def fit_logistic(table: pd.DataFrame, features: Sequence[str], c_grid: Sequence[float] = C_GRID,
                 log: Callable[[str, float, int], None] | None = None) -> LogisticFit:
    """Fit on train rows of `table` (columns split, y_true, *features); select C on val; score all rows."""
    features = list(features)
    labelled = table["y_true"].notna()
    train = table[labelled & (table["split"] == "train")]
    val = table[labelled & (table["split"] == "val")]
    if train["y_true"].nunique() < 2:
        raise BenchError("the train split of the `cls` dataset holds a single class; cannot fit")
    require_validation(len(val), "the logistic baseline")
    usable = [f for f in features if train[f].notna().any()]
    if not usable:
        raise BenchError(f"none of the measurements {features} is available for any train subject")
    history, models = [], []
    for i, c in enumerate(c_grid):
        model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                              LogisticRegression(C=float(c), max_iter=1000))
        model.fit(train[usable].to_numpy(dtype=float), train["y_true"].astype(int).to_numpy())
        p_val = model.predict_proba(val[usable].to_numpy(dtype=float))[:, 1]
        m = classification_metrics(val["y_true"].astype(int).to_numpy(), p_val)
        history.append({"val_macro_f1": m["macro_f1"], "val_auc": m["auc"]})
        models.append(model)
        if log is not None:
            log("val_macro_f1", m["macro_f1"], i)
    best = select_best(history)
    p = models[best].predict_proba(table[usable].to_numpy(dtype=float))[:, 1]
    return LogisticFit(models[best], float(c_grid[best]), p, history, usable)
