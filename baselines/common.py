"""Small helpers shared by the supervised baselines' stages (history logging, subject averaging)."""
from __future__ import annotations

import pandas as pd

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
