"""What a tuning objective may read: test-free dataset views and the validation score (issue 8).

The test split is never touched while tuning. Objectives do not receive the datasets as opened
from disk but :func:`without_test` views of them: the manifest rows of the test split and their
annotations are dropped, so no stage run for a trial can read a test label, T-score or mask (the
images of test subjects are not seen either; SSL pretraining inside a downstream trial therefore
uses the `seg` train and val images only). Stage cache keys use :func:`view_fingerprint`, which
hashes exactly what the view exposes.

Downstream score (paper "Metrics": model selection by validation macro-F1, AUC as tie-break):
``round(macro_F1, 4) + 1e-5 * AUC`` over the validation subjects (eq. 10 aggregation of the
validation bones). Macro-F1 values rounded to 4 decimals differ by at least 1e-4 > 1e-5 * AUC,
so the order is exactly lexicographic: macro-F1 compared at 4 decimals, then AUC (a single-class
validation split has no AUC; it counts as 0).
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import pandas as pd

from bench.data.format import Dataset, mask_path
from bench.errors import BenchError
from bench.stage import stable_hash

F1_DECIMALS = 4          # macro-F1 is compared at this precision
AUC_WEIGHT = 1e-5        # weight of the AUC tie-break (< 10**-F1_DECIMALS)


def without_test(dataset: Dataset) -> Dataset:
    """The dataset without its test split: manifest rows and annotator rows of test images dropped."""
    keep = dataset.manifest["split"].astype(str) != "test"
    manifest = dataset.manifest[keep].reset_index(drop=True)
    ids = set(manifest["image_id"].astype(str))
    ann = dataset.annotators
    annotators = ann[ann["image_id"].astype(str).isin(ids)].reset_index(drop=True) if len(ann) else ann.copy()
    return Dataset(root=dataset.root, manifest=manifest, annotators=annotators, meta=dict(dataset.meta))


def view_fingerprint(view: Dataset) -> str:
    """Hash of what a view exposes: its manifest and annotator rows, and the sizes of its files."""
    files = []
    for image_id in view.manifest["image_id"].astype(str):
        p = view.image_path(image_id)
        files.append((image_id, p.stat().st_size if p.is_file() else -1))
    for image_id, annotator in view.annotators[["image_id", "annotator"]].astype(str).itertuples(index=False):
        p = mask_path(view.root, image_id, annotator)
        files.append((f"{image_id}/{annotator}", p.stat().st_size if p.is_file() else -1))
    return stable_hash({"view": "without-test", "manifest": view.manifest.to_csv(index=False),
                        "annotators": view.annotators.to_csv(index=False), "files": files})


def validation_score(predictions: pd.DataFrame) -> dict[str, Any]:
    """Score of a final stage's predictions from their validation rows only (module docstring).

    `predictions` holds bone rows (subject_id, split, bone, y_true, p_pos) or subject rows
    (subject_id, split, y_true, p_pos). Returns value, val_macro_f1, val_auc, val_n.
    """
    from bench.metrics import aggregate_subjects, classification_metrics

    if "split" not in predictions.columns:
        raise BenchError(f"predictions lack a split column (columns: {list(predictions.columns)})")
    val = predictions[predictions["split"].astype(str) == "val"]
    if val.empty:
        raise BenchError("the entry's predictions have no validation row; tuning needs a val split in the "
                         "`cls` dataset (see `bench data check`)")
    subjects = aggregate_subjects(val) if "bone" in val.columns else val
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a single-class validation split: AUC is NaN, handled below
        m = classification_metrics(subjects["y_true"], subjects["p_pos"])
    f1, auc = float(m["macro_f1"]), float(m["auc"])
    if math.isnan(f1):
        raise BenchError(f"no validation subject could be scored (n_unscored = {m['n_unscored']}, "
                         f"n_unlabeled = {m['n_unlabeled']}); the trial has no objective value")
    value = round(f1, F1_DECIMALS) + AUC_WEIGHT * (0.0 if math.isnan(auc) else auc)
    return {"value": value, "val_macro_f1": f1, "val_auc": auc, "val_n": int(m["n"])}
