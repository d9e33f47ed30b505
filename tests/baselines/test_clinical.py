"""The `clinical` reference baseline: age + sex logistic regression, C chosen on validation."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench import registry, results as store
from bench.data.format import write_manifest
from bench.data.splits import assign_splits
from bench.runner import Runner


def _age_driven_dataset(root, n=300, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 95, n)
    female = rng.random(n) < 0.88
    t = -0.06 * (age - 50) - 0.8 * female + rng.normal(0, 1.0, n)
    df = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "subject_id": [f"s{i}" for i in range(n)],
                       "path": "", "sex": np.where(female, "F", "M"), "age": age.round(1), "t_score": t.round(2),
                       "label": (t < -2.5).astype(int), "laterality": "L", "pixel_spacing_mm": 0.1, "site": "A"})
    df["split"] = assign_splits(df, seed)
    root.mkdir(parents=True)
    write_manifest(df, root / "manifest.csv")
    return root, df


def test_clinical_matches_sklearn_and_selects_on_validation(tmp_path):
    data, df = _age_driven_dataset(tmp_path / "d")
    registry.load_entries()
    out = Runner(tmp_path / "r", suite="s", data_seg=str(data), data_cls=str(data), device="cpu",
                 progress=False).run(["clinical"], [0])[0]
    assert out.status == "done", out.error
    run = store.read_run(store.run_dir(tmp_path / "r", "s", "clinical", 0))
    c = run.metrics["extra"]["C"]
    train = df[df.split == "train"]
    X = np.c_[train.age, (train.sex == "F").astype(float)]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(X, train.label)
    test = df[df.split == "test"].set_index("subject_id")
    preds = run.predictions[run.predictions.split == "test"].set_index("subject_id").loc[test.index]
    expected = model.predict_proba(np.c_[test.age, (test.sex == "F").astype(float)])[:, 1]
    np.testing.assert_allclose(preds.p_pos.to_numpy(), expected, rtol=1e-6)
    assert run.metrics["test"]["auc"] == roc_auc_score(test.label, expected)
    assert run.metrics["test"]["auc"] > 0.75  # age carries the signal here
    assert run.metrics["extra"]["coef_age"] > 0  # older → more likely osteoporotic


def test_missing_covariates_are_imputed_from_train_only_and_a_missing_sex_is_not_male():
    from baselines.clinical import subject_covariates
    from baselines.logistic import fit_logistic

    manifest = pd.DataFrame({
        "subject_id": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "split": ["train"] * 4 + ["val"] * 2 + ["test"] * 2,
        "label": [0, 1, 0, 1, 0, 1, 0, 1],
        "age": [50.0, 70.0, np.nan, 60.0, 40.0, 80.0, 90.0, 95.0],
        "sex": ["F", "M", "F", None, "M", "F", "", "F"]})
    table = subject_covariates(manifest).set_index("subject_id")
    assert np.isnan(table.loc["c", "age"])                   # not the all-subject median 70
    assert table.loc[["a", "b", "c", "e", "f", "h"], "female"].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    assert np.isnan(table.loc["d", "female"]) and np.isnan(table.loc["g", "female"])
    fit = fit_logistic(table.reset_index(), ["age", "female"], (1.0,))
    imputer = fit.model[0]
    assert imputer.statistics_.tolist() == [60.0, 1.0]       # medians of train ages 50, 70, 60 and sexes F, M, F
    assert fit.features == ["age", "female"]


def test_no_labelled_validation_subject_is_an_error():
    import pytest

    from baselines.logistic import fit_logistic
    from bench.errors import BenchError

    table = pd.DataFrame({"subject_id": list("abcd"), "split": ["train", "train", "test", "test"],
                          "y_true": [0, 1, 0, 1], "age": [50.0, 70.0, 60.0, 65.0]})
    with pytest.raises(BenchError, match="no labelled subject"):
        fit_logistic(table, ["age"])
