"""`clinical` baseline (beyond the paper): logistic regression on age and sex alone.

What any image model must beat. Fitted on the train subjects of the `cls` dataset; the inverse
regularisation strength C is chosen by validation macro-F1 (the paper's selection rule), ties
by validation AUC; the test split is only scored.
"""
from __future__ import annotations

import pandas as pd

from baselines.logistic import C_GRID, fit_logistic
from bench.errors import BenchError
from bench.stage import StageContext


def subject_covariates(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per subject: split, y_true, age, female (0/1)."""
    if manifest["label"].isna().all():
        raise BenchError("the `cls` dataset has no labels; the clinical baseline needs DXA labels")
    grouped = manifest.groupby("subject_id", sort=True)
    table = pd.DataFrame({
        "split": grouped["split"].first(),
        "y_true": grouped["label"].max(),
        "age": grouped["age"].first().astype(float),
        "female": grouped["sex"].first().map(_female),
    }).reset_index()
    return table            # missing ages and sexes stay NaN: fit_logistic imputes the train median


def _female(sex: object) -> float:
    """F -> 1, M -> 0, anything else (missing, other) -> NaN."""
    text = str(sex).strip().upper() if isinstance(sex, str) else ""
    return 1.0 if text.startswith("F") else 0.0 if text.startswith("M") else float("nan")


def fit_clinical(ctx: StageContext) -> dict:
    """Stage: fit on train, select C on val, write subject-level predictions for every split."""
    table = subject_covariates(ctx.datasets["cls"].manifest)
    fit = fit_logistic(table, ["age", "female"], ctx.options.get("c_grid", C_GRID), ctx.log)
    out = table[["subject_id", "split", "y_true"]].assign(p_pos=fit.p_pos)
    out.to_parquet(ctx.out_dir / "predictions.parquet", index=False)
    coef = fit.model[-1].coef_[0]
    return {"metrics": {"C": fit.c, **{f"coef_{name}": float(c) for name, c in zip(fit.features, coef)}}}
