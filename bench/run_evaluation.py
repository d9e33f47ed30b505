"""A run's reported numbers from its last stage: subject predictions (paper eq. 10) and metrics per split.

Every subject of the run's `cls` dataset counts: one the last stage gave no prediction (all its
bones missing, the paper's "fewer than seven" taken to none) keeps a row with p_pos NaN, so it is
counted in ``n_unscored`` and named in a warning instead of silently leaving the split's ``n``
(entries would then be scored on different subjects; bench.stats pairs only subjects both scored).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError
from bench.metrics import NoUsableBoneWarning, aggregate_subjects, average_images, split_metrics
from bench.stage import STAGE_MARKER


def evaluate(stage_dir: Path, manifest: pd.DataFrame | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Subject predictions and metrics per split from a final stage's outputs (paper eq. 10).

    `manifest`: the `cls` dataset's (subject_id, split, label) rows; its subjects the stage left out, in
    the splits the stage predicted, are added unscored (module docstring).
    """
    bone_file = stage_dir / "bone_predictions.parquet"
    subject_file = stage_dir / "predictions.parquet"
    if bone_file.is_file():     # several images of a subject count once, whatever entry wrote the file
        subjects = aggregate_subjects(average_images(pd.read_parquet(bone_file)))
    elif subject_file.is_file():
        subjects = pd.read_parquet(subject_file)
        missing = {"subject_id", "split", "y_true", "p_pos"} - set(subjects.columns)
        if missing:
            raise BenchError(f"{subject_file} lacks columns {sorted(missing)}")
        if subjects.duplicated(["subject_id", "split"]).any():      # one row per image: their mean
            subjects = average_images(subjects, ("subject_id", "split"))
        if "y_pred" not in subjects.columns:
            subjects["y_pred"] = (subjects["p_pos"] > 0.5).astype("Int64")
        if "n_bones" not in subjects.columns:
            subjects["n_bones"] = 0
    else:
        raise BenchError(f"the last stage wrote neither bone_predictions.parquet nor predictions.parquet "
                         f"into {stage_dir}")
    if manifest is not None:
        subjects = with_unscored(subjects, manifest, stage_dir)
    metrics: dict[str, Any] = split_metrics(subjects)
    marker = stage_dir / STAGE_MARKER
    if marker.is_file():
        extra = json.loads(marker.read_text()).get("summary", {}).get("metrics")
        if extra:
            metrics["extra"] = extra
    return subjects, metrics


def with_unscored(subjects: pd.DataFrame, manifest: pd.DataFrame, stage_dir: Path) -> pd.DataFrame:
    """`subjects` plus an unscored row (p_pos NaN, y_pred NA, n_bones 0) for each subject of `manifest`
    it lacks in the splits it holds; a warning names them."""
    known = manifest[["subject_id", "split", "label"]].drop_duplicates("subject_id")
    known = known.assign(subject_id=known["subject_id"].astype(str), split=known["split"].astype(str))
    have = set(subjects["subject_id"].astype(str))
    lacking = known[~known["subject_id"].isin(have) & known["split"].isin(set(subjects["split"].astype(str)))]
    if lacking.empty:
        return subjects
    names = ", ".join(lacking["subject_id"].head(10)) + (f" … ({len(lacking)} in all)" if len(lacking) > 10 else "")
    warnings.warn(f"{len(lacking)} subject(s) got no prediction from {stage_dir.parent.name} (no usable bone); "
                  f"they count as unscored (n_unscored): {names}", NoUsableBoneWarning, stacklevel=2)
    labels = pd.to_numeric(lacking["label"], errors="coerce").astype("Int64")
    added = pd.DataFrame({"subject_id": lacking["subject_id"].to_numpy(), "split": lacking["split"].to_numpy(),
                          "y_true": labels.to_numpy(), "p_pos": float("nan"),
                          "y_pred": pd.array([pd.NA] * len(lacking), dtype="Int64"), "n_bones": 0})
    out = pd.concat([subjects, added], ignore_index=True)
    for column in ("y_true", "y_pred"):
        out[column] = out[column].astype("Int64")
    return out
