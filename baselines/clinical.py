"""`clinical` baseline (beyond the paper): logistic regression on age and sex alone.

What any image model must beat. Fitted on the train subjects of the `cls` dataset; the inverse
regularisation strength C is chosen by validation macro-F1 (the paper's selection rule), ties
by validation AUC; the test split is only scored.
"""
from __future__ import annotations

import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.errors import BenchError
from bench.metrics import classification_metrics, select_best
from bench.stage import StageContext

C_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)


def subject_covariates(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per subject: split, y_true, age, female (0/1)."""
    if manifest["label"].isna().all():
        raise BenchError("the `cls` dataset has no labels; the clinical baseline needs DXA labels")
    grouped = manifest.groupby("subject_id", sort=True)
    table = pd.DataFrame({
        "split": grouped["split"].first(),
        "y_true": grouped["label"].max(),
        "age": grouped["age"].first().astype(float),
        "female": grouped["sex"].first().astype(str).str.upper().str.startswith("F").astype(float),
    }).reset_index()
    table["age"] = table["age"].fillna(table["age"].median())
    return table


def fit_clinical(ctx: StageContext) -> dict:
    """Stage: fit on train, select C on val, write subject-level predictions for every split."""
    table = subject_covariates(ctx.datasets["cls"].manifest)
    labelled = table["y_true"].notna()
    train = table[labelled & (table["split"] == "train")]
    val = table[labelled & (table["split"] == "val")]
    if train["y_true"].nunique() < 2:
        raise BenchError("the train split of the `cls` dataset holds a single class; cannot fit")
    features = ["age", "female"]
    history, models = [], []
    for i, c in enumerate(ctx.options.get("c_grid", C_GRID)):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000))
        model.fit(train[features].to_numpy(), train["y_true"].astype(int).to_numpy())
        p_val = model.predict_proba(val[features].to_numpy())[:, 1]
        m = classification_metrics(val["y_true"].astype(int).to_numpy(), p_val)
        history.append({"val_macro_f1": m["macro_f1"], "val_auc": m["auc"]})
        models.append(model)
        ctx.log("val_macro_f1", m["macro_f1"], epoch=i)
    best = select_best(history)
    p = models[best].predict_proba(table[features].to_numpy())[:, 1]
    out = table[["subject_id", "split", "y_true"]].assign(p_pos=p)
    out.to_parquet(ctx.out_dir / "predictions.parquet", index=False)
    coef = models[best][-1].coef_[0]
    return {"metrics": {"C": float(ctx.options.get("c_grid", C_GRID)[best]),
                        "coef_age": float(coef[0]), "coef_female": float(coef[1])}}
