"""Small helpers shared by the baselines' stages (history logging, subject averaging, option checks)."""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from bench.data.format import BONES
from bench.errors import BenchError
from bench.metrics import average_images
from bench.stage import StageContext


def require_labels(ctx: StageContext, baseline: str) -> None:
    """A supervised baseline needs DXA labels in the `cls` dataset."""
    if not ctx.datasets["cls"].has_labels:
        raise BenchError(f"the `cls` dataset has no labels; the {baseline} baseline needs DXA labels "
                         "(manifest column `label`, 0 normal / 1 osteoporosis)")


def write_history(ctx: StageContext, history: list[dict[str, float]]) -> None:
    """Log every per-epoch record (train_loss, val_macro_f1, val_auc) of a training run."""
    for epoch, record in enumerate(history):
        for key, value in record.items():
            ctx.log(key, value, epoch=epoch)


def subject_predictions(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean p_pos per subject (several images of a subject count once): subject_id, split, y_true, p_pos."""
    return average_images(per_image, ("subject_id", "split")).sort_values("subject_id", ignore_index=True)


def check_bone_names(option: str, names: Sequence[str]) -> None:
    """A baseline's list of bones: known names, at least one, none twice."""
    unknown = [b for b in names if b not in BONES]
    if unknown or not names:
        raise BenchError(f"{option} has unknown names {unknown}; use names of {list(BONES)}" if unknown
                         else f"{option} is empty; give at least one of {list(BONES)}")
    twice = sorted({b for b in names if list(names).count(b) > 1})
    if twice:
        raise BenchError(f"{option} names {twice} more than once; give each bone once")


def check_c_grid(option: str, values: Sequence[float]) -> None:
    """Inverse regularisation strengths to select from on val: at least one, each finite and > 0."""
    if not values:
        raise BenchError(f"{option} is empty; give the inverse regularisation strengths to try, e.g. 0.1,1,10")
    bad = [v for v in values if not 0 < v < math.inf]
    if bad:
        raise BenchError(f"{option} holds {bad}; every value must be a finite number > 0")
