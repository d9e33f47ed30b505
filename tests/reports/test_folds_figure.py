"""The report's cross-validation figure: each fold's own AUC per seed and the pooled AUC (reports.figures)."""
from __future__ import annotations

import pandas as pd
import pytest

from reports.figures import FigureConfig, fold_aucs, folds_figure


def _metrics(cv: bool) -> pd.DataFrame:
    rows = []
    for entry, base in (("a", 0.8), ("b", 0.6)):
        for seed in (0, 1):
            rows.append(("s", entry, seed, "test", "auc", base + 0.01 * seed))
            rows.append(("s", entry, seed, "test", "f1", 0.5))
            if cv:
                rows += [("s", entry, seed, f"fold{k}", "auc", base + 0.02 * k - 0.01 * seed) for k in range(3)]
    return pd.DataFrame(rows, columns=["suite", "entry", "seed", "split", "metric", "value"])


def test_fold_points_and_pooled_means(tmp_path):
    points, pooled = fold_aucs(_metrics(cv=True))
    assert len(points) == 2 * 2 * 3 and set(points["fold"]) == {0, 1, 2}
    row = points[(points["entry"] == "a") & (points["seed"] == 1) & (points["fold"] == 2)]
    assert row["auc"].item() == pytest.approx(0.8 + 0.04 - 0.01)
    assert pooled == {"a": pytest.approx(0.805), "b": pytest.approx(0.605)}
    item = folds_figure(_metrics(cv=True), [("a", "A"), ("b", "B")], tmp_path, FigureConfig())
    assert item is not None and (tmp_path / "folds_auc.png").is_file() and (tmp_path / "folds_auc.pdf").is_file()


def test_no_figure_without_folds(tmp_path):
    assert folds_figure(_metrics(cv=False), [("a", "A")], tmp_path, FigureConfig()) is None
    assert not (tmp_path / "folds_auc.png").exists()
