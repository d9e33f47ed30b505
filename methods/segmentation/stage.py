"""The `segment` stage: train on `seg`, predict every image of `seg` and `cls` (issue 4); its companion
`segment_eval` (methods.segmentation.eval_stage) evaluates the model on the `seg` splits.

Output folder::

    model.pt                          weights + ModelSpec (+ training notes), see predict.load_model
    labels/<role>/<image_id>.png      predicted uint8 label map at native resolution, every image
    confidence/<role>.parquet         image_id, bone, confidence, area_px, present
    uncertainty/<role>/<image_id>.png entropy of the mixture mean, 8 bit (255 = log 8 nats), working size
    uncertainty/<role>.parquet        image_id, mean_entropy, mean_mutual_info (nats, image area)

The single-decoder ablation is this stage with ``segmentation.model=single``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.data.format import BONES, Dataset
from bench.errors import BenchError
from bench.predict import json_safe
from bench.stage import StageContext
from methods.segmentation.config import SegmentationConfig  # importing it registers the section
from methods.segmentation.data import manifest_sides, training_splits
from methods.segmentation.predict import entropy_png, predict_many, save_model
from methods.segmentation.train import train_segmentation

ROLES = ("seg", "cls")


def _write_png(path: Path, array: np.ndarray) -> None:
    from bench.data.imageio import write_label_map

    path.parent.mkdir(parents=True, exist_ok=True)
    write_label_map(path, array)


def out_of_memory(cfg: SegmentationConfig, canvas: tuple[int, int]) -> BenchError:
    """What to do when a training step does not fit the device: halve the micro-batch."""
    per_pass = min(cfg.micro_batch or cfg.batch_size, cfg.batch_size)
    samples = cfg.experts * cfg.samples if cfg.model == "mose" else 1
    if per_pass == 1:
        advice = ("lower segmentation.working_size or segmentation.samples, or use a device with more memory")
    else:
        advice = (f"run with --set segmentation.micro_batch={max(1, per_pass // 2)} (gradient accumulation over "
                  "the same batch; `bench perf seg --set segmentation.micro_batch=N` prints each choice's peak memory)")
    return BenchError(f"the segmentation training ran out of device memory with {per_pass} images x {samples} "
                      f"samples per pass on a {canvas[0]}x{canvas[1]} canvas: {advice}")


def predict_dataset(model: torch.nn.Module, dataset: Dataset, role: str, out_dir: Path, *, batch_size: int,
                    draws: int = 0) -> None:
    """Write labels, uncertainty and confidence of every image (`draws` latent draws per expert, 0: the
    training S; the manifest's sides given)."""
    ids = dataset.image_ids
    conf_rows, unc_rows = [], []
    images = (dataset.image(i) for i in ids)
    sides = manifest_sides(dataset)
    for image_id, pred in zip(ids, predict_many(model, images, batch_size=batch_size, samples=draws,
                                                laterality=[sides[i] for i in ids])):
        _write_png(out_dir / "labels" / role / f"{image_id}.png", pred.labels)
        _write_png(out_dir / "uncertainty" / role / f"{image_id}.png", entropy_png(pred.entropy))
        for bone in BONES:
            conf_rows.append({"image_id": image_id, "bone": bone, "confidence": pred.confidence[bone],
                              "area_px": pred.area_px[bone], "present": pred.area_px[bone] > 0})
        unc_rows.append({"image_id": image_id, "mean_entropy": float(pred.entropy.mean()),
                         "mean_mutual_info": float(pred.mutual_info.mean())})
    (out_dir / "confidence").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(conf_rows, columns=["image_id", "bone", "confidence", "area_px", "present"]).to_parquet(
        out_dir / "confidence" / f"{role}.parquet", index=False)
    pd.DataFrame(unc_rows, columns=["image_id", "mean_entropy", "mean_mutual_info"]).to_parquet(
        out_dir / "uncertainty" / f"{role}.parquet", index=False)


def segment_stage(ctx: StageContext) -> dict[str, Any]:
    """Train the configured segmentation model and write the outputs listed in the module docstring."""
    cfg: SegmentationConfig = ctx.config.segmentation
    cfg.validate()
    seg = ctx.datasets["seg"]
    canvas, train, val = training_splits(seg, cfg, ctx.device)
    try:
        result = train_segmentation(cfg, train, val if len(val) else None, seed=ctx.seed, device=ctx.device,
                                    log=ctx.log, progress=sys.stderr.isatty(), resume=ctx.resumer())
    except torch.cuda.OutOfMemoryError as exc:
        raise out_of_memory(cfg, canvas) from exc
    model = result.model
    train_info = {"best_epoch": result.best_epoch, "best_val_ged": result.best_val_ged,
                  "epochs": result.epochs, "seconds_per_epoch": result.seconds_per_epoch,
                  "canvas": list(canvas), "n_train": len(train), "n_val": len(val),
                  "annotators": train.annotators, "model": cfg.model, "compile": result.compile}
    save_model(model, ctx.out_dir / "model.pt", extra={"train": train_info})
    for role in ROLES:
        if role in ctx.datasets:
            predict_dataset(model, ctx.datasets[role], role, ctx.out_dir, batch_size=cfg.predict_batch,
                            draws=cfg.predict_draws)
    return json_safe({"best_epoch": result.best_epoch, "best_val_ged": result.best_val_ged,
                      "seconds_per_epoch": result.seconds_per_epoch})
