"""A run's reported numbers from its last stage: subject predictions (paper eq. 10) and metrics per split."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError
from bench.metrics import aggregate_subjects, average_images, split_metrics
from bench.stage import STAGE_MARKER


def evaluate(stage_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Subject predictions and metrics per split from a final stage's outputs (paper eq. 10)."""
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
    metrics: dict[str, Any] = split_metrics(subjects)
    marker = stage_dir / STAGE_MARKER
    if marker.is_file():
        extra = json.loads(marker.read_text()).get("summary", {}).get("metrics")
        if extra:
            metrics["extra"] = extra
    return subjects, metrics
