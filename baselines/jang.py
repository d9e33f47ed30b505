"""`jang` baseline (Jang et al., Sci. Rep. 2021): VGG16 on one "manually" cropped ROI per radiograph.

Jang et al. trained a VGG16 on hand-cropped hip radiographs. Here the ROI is the box around the
wrist and the metacarpals, drawn by a simulated human (baselines.roi: union of the annotators'
masks, loose margin, seeded jitter of every side); where an image has no annotator masks the
segment stage's predicted labels stand in (``roi.source``). The crop is taken at native
resolution, zero-padded to a square and resized to ``supervised.input_size``; the VGG is trained
end to end with the shared loop (methods.supervised: flips only, Adam + cosine, selection by
subject validation macro-F1). One prediction per image, averaged per subject
(``predictions.parquet``).
"""
from __future__ import annotations

import types

import numpy as np
import pandas as pd
import torch

from bench.data.format import Dataset
from bench.errors import BenchError
from bench.parallel import thread_map
from bench.stage import StageContext
from baselines.common import require_labels, subject_predictions, write_history
from baselines.roi import RoiConfig, crop_box, jitter_box, wrist_box
from baselines.vgg import build_vgg
from methods.extract import label_source
from methods.supervised import train_supervised


def roi_label_maps(ctx: StageContext, dataset: Dataset, cfg: RoiConfig, image_id: str) -> list[np.ndarray]:
    """The label maps Jang's box is drawn from (RoiConfig.source)."""
    source = cfg.source
    if source == "auto":
        source = "annotator" if dataset.annotator_weights(image_id) else "predicted"
    if source == "annotator":
        masks = dataset.masks(image_id)
        if not masks:
            raise BenchError(f"roi.source=annotator but image {image_id!r} of {dataset.root} has no masks; "
                             "use roi.source=auto or predicted")
        return list(masks.values())
    labels, _ = label_source(ctx, types.SimpleNamespace(source=source, annotator=""), "cls", dataset)(image_id)
    return [labels]


def jang_rois(ctx: StageContext, cfg: RoiConfig, size: int) -> tuple[pd.DataFrame, torch.Tensor, pd.DataFrame]:
    """One jittered wrist ROI per `cls` image: index (subject_id, split, bone="roi", label), N×size×size, boxes.

    Images in threads (bench.parallel): each box's jitter is seeded by its image id, so the ROIs do
    not depend on the number of threads."""
    dataset = ctx.datasets["cls"]

    def one(rec: dict) -> tuple[dict, np.ndarray, dict]:
        image_id = str(rec["image_id"])
        image = dataset.image(image_id)
        spacing = float(rec["pixel_spacing_mm"]) if pd.notna(rec["pixel_spacing_mm"]) else float("nan")
        if not np.isfinite(spacing):
            raise BenchError(f"cls image {image_id!r} has no pixel_spacing_mm; Jang's box keeps roi.forearm_mm "
                             "of the forearm: fill the manifest column (mm per pixel)")
        box = wrist_box(roi_label_maps(ctx, dataset, cfg, image_id), spacing, cfg.forearm_mm)
        if box is None:   # no bone found: the drawer falls back to the whole radiograph
            box = (0.0, 0.0, float(image.shape[0]), float(image.shape[1]))
        box = jitter_box(box, ctx.rng(f"jitter/{image_id}"), cfg.margin, cfg.jitter)
        row = {"image_id": image_id, "subject_id": str(rec["subject_id"]), "split": str(rec["split"]),
               "bone": "roi", "label": rec["label"]}
        return row, crop_box(image, box, size), {"image_id": image_id, "row0": box[0], "col0": box[1],
                                                 "row1": box[2], "col1": box[3]}

    found = list(thread_map(one, dataset.manifest.to_dict("records")))
    rows, crops, boxes = ([f[i] for f in found] for i in range(3))
    stack = torch.from_numpy(np.stack(crops)) if crops else torch.zeros(0, size, size)
    return pd.DataFrame(rows), stack, pd.DataFrame(boxes)


def jang_stage(ctx: StageContext) -> dict:
    """Stage `jang`: jittered wrist ROI → VGG trained end to end → subject predictions."""
    require_labels(ctx, "Jang")
    roi_cfg: RoiConfig = ctx.config.section("roi")
    sup = ctx.config.supervised
    index, rois, boxes = jang_rois(ctx, roi_cfg, sup.input_size)
    boxes.to_csv(ctx.out_dir / "boxes.csv", index=False)
    result = train_supervised(build_vgg(ctx.config.vgg), rois, index, sup, ctx.torch_generator("train"), ctx.device,
                              resume=ctx.resumer())
    write_history(ctx, result.history)
    subject_predictions(result.bone_predictions).to_parquet(ctx.out_dir / "predictions.parquet", index=False)
    return {"metrics": {"best_epoch": float(result.best_epoch)}}
