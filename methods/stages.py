"""Classification stages of the paper's method and its ablations (paper Fig. 4, second stage).

* ``probe``: linear probe on the frozen pretrained encoder over the `cls` bone patches; writes
  ``bone_predictions.parquet`` (the runner averages bones per subject, eq. 10) and the probe head.
* ``probe`` with ``whole_image=True`` (Table 4, no segmentation): "the classifier on the whole
  radiograph resized to the patch size, a single prediction": each `cls` radiograph is zero-padded
  to a square (anatomy keeps its aspect) and resized to the patch size; writes subject-level
  ``predictions.parquet``.
* ``supervised`` (Table 6): the same encoder trained end to end on the bone patches, no SSL and no
  multi-crop (methods.supervised).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bench.data.format import Dataset
from bench.metrics import average_images
from bench.stage import StageContext
from methods.encoders import build_encoder, extract_features
from methods.patch_store import PatchStore
from methods.probe import ProbeResult, train_probe
from methods.ssl.pretrain import load_encoder
from methods.supervised import train_supervised


def cls_patches(store: PatchStore) -> tuple[pd.DataFrame, np.ndarray]:
    """Index rows of the usable `cls` patches (with subject labels) and their array rows."""
    rows = store.present(role="cls").reset_index(drop=True)
    return rows, rows["row"].to_numpy()


def whole_images(dataset: Dataset, size: int) -> tuple[pd.DataFrame, torch.Tensor]:
    """Every radiograph zero-padded to a square and resized (antialiased) to size × size."""
    index = dataset.manifest[["subject_id", "split", "label"]].assign(bone="whole").reset_index(drop=True)
    images = []
    for image_id in dataset.image_ids:
        img = torch.from_numpy(dataset.image(image_id))
        h, w = img.shape
        side = max(h, w)
        img = F.pad(img, ((side - w) // 2, side - w - (side - w) // 2, (side - h) // 2, side - h - (side - h) // 2))
        images.append(F.interpolate(img[None, None], size=(size, size), mode="area")[0, 0])
    return index, torch.stack(images) if images else torch.zeros(0, size, size)


def _write(ctx: StageContext, result: ProbeResult, subject_level: bool) -> dict:
    for epoch, record in enumerate(result.history):
        for key, value in record.items():
            ctx.log(key, value, epoch=epoch)
    preds = result.bone_predictions      # one row per patch (or image): several images of a subject count once
    if subject_level:
        average_images(preds, ("subject_id", "split")).to_parquet(ctx.out_dir / "predictions.parquet", index=False)
    else:
        average_images(preds).to_parquet(ctx.out_dir / "bone_predictions.parquet", index=False)
    torch.save(result.head.state_dict(), ctx.out_dir / "head.pt")
    if result.feature_mean is not None:   # the probe's standardisation, for `bench export`
        torch.save({"mean": result.feature_mean.cpu(), "std": result.feature_std.cpu()},
                   ctx.out_dir / "feature_stats.pt")
    summary = {"best_epoch": result.best_epoch, "n_patches": int(len(preds))}
    (ctx.out_dir / "probe.json").write_text(json.dumps(summary))
    return {"metrics": {"best_epoch": float(result.best_epoch)}}


def probe_stage(ctx: StageContext) -> dict:
    """Stage `probe`: frozen-encoder features → linear head selected by subject val macro-F1."""
    encoder = load_encoder(ctx.inputs["pretrain"], ctx.device)
    size = ctx.config.multicrop.global_size
    if ctx.options.get("whole_image"):
        index, images = whole_images(ctx.datasets["cls"], ctx.config.patches.patch_size)
    else:
        store = PatchStore.open(ctx.inputs[ctx.options.get("patches", "extract")]).with_splits(ctx.datasets)
        index, rows = cls_patches(store)
        images = torch.from_numpy(np.ascontiguousarray(store.array[rows]).astype(np.float32) / 65535.0)
    features = extract_features(encoder, images, size, ctx.device)
    result = train_probe(features, index, ctx.config.probe, ctx.torch_generator("probe"), ctx.device)
    return _write(ctx, result, subject_level=bool(ctx.options.get("whole_image")))


def supervised_stage(ctx: StageContext) -> dict:
    """Stage `supervised`: the SSL encoder architecture trained end to end on the bone patches."""
    store = PatchStore.open(ctx.inputs[ctx.options.get("patches", "extract")]).with_splits(ctx.datasets)
    index, rows = cls_patches(store)
    patches = torch.from_numpy(np.ascontiguousarray(store.array[rows]).astype(np.float32) / 65535.0)
    encoder = build_encoder(ctx.options.get("encoder") or ctx.config.ssl.encoder)
    result = train_supervised(encoder, patches, index, ctx.config.supervised,
                              ctx.torch_generator("supervised"), ctx.device, resume=ctx.resumer())
    return _write(ctx, result, subject_level=False)
