"""`hsieh` baseline (Hsieh et al., Nat. Commun. 2021): landmark-based ROIs, one VGG16 shared by the ROI types.

Hsieh et al. detect anatomical landmarks automatically and crop ROIs around them. Here the
detector of the `landmarks` stage (trained on the `seg` dataset, baselines.landmark_detector)
finds one landmark per bone on every `cls` radiograph; a square of ``roi.size_mm`` around each is
cropped at native resolution and resized to ``supervised.input_size``. One VGG (shared weights;
the ROI type is the index's ``bone``) is trained end to end on all ROIs with the shared loop
(methods.supervised), and the runner averages the ROI probabilities per subject (eq. 10 style;
``bone_predictions.parquet``, ROI types named by their bone). The detector's mean landmark error
(mm) on the `seg` test split is carried into this stage's metrics.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.errors import BenchError
from bench.parallel import thread_map
from bench.metrics import average_images
from bench.stage import StageContext
from baselines.common import require_labels, write_history
from baselines.roi import centred_box, crop_box
from baselines.vgg import build_vgg
from methods.supervised import train_supervised


def landmark_rois(ctx: StageContext, landmarks_dir: Path, size: int) -> tuple[pd.DataFrame, torch.Tensor, list[str]]:
    """ROIs of every `cls` image, image-major and in landmark order.

    Returns the index (image_id, subject_id, split, bone, label), the N·K × size × size crops and
    the K landmark names, so ``crops.view(N, K, size, size)`` groups them by image.
    """
    dataset = ctx.datasets["cls"]
    found = pd.read_parquet(Path(landmarks_dir) / "landmarks.parquet")
    found = found[found["role"] == "cls"]
    bones = list(dict.fromkeys(found["bone"]))
    by_image = {k: g.set_index("bone") for k, g in found.groupby("image_id", sort=False)}
    side_mm = ctx.config.roi.size_mm

    def one(rec: dict) -> tuple[list[dict], list[np.ndarray]]:
        image_id = str(rec["image_id"])
        points = by_image.get(image_id)
        if points is None:
            raise BenchError(f"the landmarks stage output {landmarks_dir} has no landmarks for cls image "
                             f"{image_id!r}; it was computed for another dataset: clear it and rerun")
        image = dataset.image(image_id)
        side = side_mm / float(rec["pixel_spacing_mm"])
        rows = [{"image_id": image_id, "subject_id": str(rec["subject_id"]), "split": str(rec["split"]),
                 "bone": bone, "label": rec["label"]} for bone in bones]
        return rows, [crop_box(image, centred_box((points.loc[b]["row"], points.loc[b]["col"]), side), size)
                      for b in bones]

    rows, crops = [], []
    for image_rows, image_crops in thread_map(one, dataset.manifest.to_dict("records")):   # images in threads
        rows += image_rows
        crops += image_crops
    stack = torch.from_numpy(np.stack(crops)) if crops else torch.zeros(0, size, size)
    return pd.DataFrame(rows), stack, bones


def landmark_metrics(landmarks_dir: Path) -> dict[str, float]:
    """The detector's mean errors (mm) from ``landmark_error.json``, for the run's metrics."""
    path = Path(landmarks_dir) / "landmark_error.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    return {f"landmark_error_mm_{k}": float(v["mean_mm"]) for k, v in report.items()}


def hsieh_stage(ctx: StageContext) -> dict:
    """Stage `hsieh`: landmark ROIs → one VGG trained end to end → per-ROI predictions."""
    require_labels(ctx, "Hsieh")
    sup = ctx.config.supervised
    index, rois, _ = landmark_rois(ctx, ctx.inputs["landmarks"], sup.input_size)
    result = train_supervised(build_vgg(ctx.config.vgg), rois, index, sup, ctx.torch_generator("train"), ctx.device,
                              resume=ctx.resumer())
    write_history(ctx, result.history)
    preds = result.bone_predictions
    preds = average_images(preds)        # several images of a subject: one row per (subject, ROI type)
    preds.to_parquet(ctx.out_dir / "bone_predictions.parquet", index=False)
    return {"metrics": {"best_epoch": float(result.best_epoch), **landmark_metrics(ctx.inputs["landmarks"])}}
