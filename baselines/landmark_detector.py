"""The `landmarks` stage shared by Hsieh and Wang: a heat-map landmark detector (baselines.landmarks).

A small U-Net (methods.segmentation.model.UNetBackbone: per-image z-scored input, conv blocks,
bilinear decoder) with a 1×1 convolution to one heat map per landmark, trained on the `seg`
train split against the annotators' reference landmarks: Adam with cosine decay, random
horizontal flips only when asked (``landmarks.flips``; left
hands are mirrored to right hands instead, ``landmarks.canonical_laterality``, so a landmark's
identity never depends on the side), bf16 autocast and channels_last on CUDA, images resident on the device. The
epoch with the lowest mean landmark error on the `seg` val split is kept (the last epoch without
val images). Outputs:

* ``landmarks.parquet``: every image of both datasets: role, image_id, subject_id, split, bone,
  row, col (detected, native pixels), score (peak probability), and where the image has masks
  row_true, col_true, error_mm. ``split`` is the `seg` split; it is empty for `cls` images, whose
  split is the run's (``--folds``, ``bench data split``) and not part of this stage's key;
* ``landmark_error.json``: mean error (mm) on the `seg` test split (overall and per landmark), and
  on the `cls` images with masks when there are any;
* ``model.pt``: the detector's weights and settings.

Its stage is one Stage object in both entries (baselines.entries.LANDMARKS), so it is trained once per seed.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from bench.checkpoint import Resumer, loop_state, restore_loop
from bench.data.format import Dataset
from bench.errors import BenchError
from bench.parallel import thread_map
from bench.progress import epoch_line
from bench.stage import StageContext
from baselines.landmarks import (LandmarkConfig, decode, gaussian_targets, heatmap_loss, landmark_errors,
                                 reference_landmarks, to_native, to_working)
from methods.optim import adam
from methods.segmentation.data import side_of
from methods.segmentation.model import UNetBackbone
from methods.transfer import to_device_async


class LandmarkNet(nn.Module):
    """U-Net backbone + 1×1 conv to K heat-map logits at the input resolution.

    The input z-score takes its statistics from the unclipped pixels (methods.segmentation.model
    ``standardize_images``): training batches zero-pad images of other sizes to a common one, detection
    sees each image alone, and the padding must not move the bones' z-values between the two."""

    def __init__(self, landmarks: int, widths: tuple[int, ...], convs: int):
        super().__init__()
        self.backbone = UNetBackbone(1, tuple(widths), momentum=0.1, standardize=True, convs=convs,
                                     standardize_over="unclipped")
        self.head = nn.Conv2d(widths[0], landmarks, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)[1])


def resample(image: np.ndarray, spacing_mm: float, mm_per_px: float) -> tuple[torch.Tensor, tuple[float, float]]:
    """Native image → 1×h×w tensor at `mm_per_px`, and the per-axis scale (working px per native px)."""
    h, w = image.shape
    f = spacing_mm / mm_per_px
    size = (max(8, round(h * f)), max(8, round(w * f)))
    t = F.interpolate(torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None], size=size,
                      mode="bilinear", antialias=True, align_corners=False)[0]
    return t, (size[0] / h, size[1] / w)


def _spacing(rec: dict, role: str) -> float:
    s = float(rec["pixel_spacing_mm"]) if pd.notna(rec["pixel_spacing_mm"]) else float("nan")
    if not np.isfinite(s) or s <= 0:
        raise BenchError(f"{role} image {rec['image_id']!r} has no pixel_spacing_mm; the landmark detector "
                         "works in millimetres: fill the manifest column (mm per pixel)")
    return s


def load_images(dataset: Dataset, role: str, cfg: LandmarkConfig, threads: int | None = None) -> list[dict]:
    """Per image: working tensor, scale, spacing, reference landmarks (NaN where no masks) and keys.

    Images load in `threads` threads (bench.parallel; default: the usable cores, at most 8): PNG decoding, resampling
    and most of the axis arithmetic release the GIL; each image's result depends on it alone.
    """
    def one(rec: dict) -> dict:
        image_id = str(rec["image_id"])
        spacing = _spacing(rec, role)
        mirror = cfg.canonical_laterality and side_of(rec.get("laterality")) == "L"   # the segmenter's reading
        tensor, scale = resample(dataset.image(image_id), spacing, cfg.mm_per_px)
        weights = dataset.annotator_weights(image_id)
        truth = (reference_landmarks(dataset.masks(image_id), weights, spacing, cfg) if weights
                 else np.full((len(cfg.bones), 2), np.nan))
        return {"image_id": image_id, "subject_id": str(rec["subject_id"]),
                "split": str(rec["split"]) if role == "seg" else "",      # module docstring
                "role": role, "tensor": tensor.flip(-1) if mirror else tensor, "scale": scale,
                "spacing": spacing, "truth": truth, "mirror": mirror}

    return list(thread_map(one, dataset.manifest.to_dict("records"), threads))


def working_points(item: dict) -> np.ndarray:
    """An image's reference landmarks in its (possibly mirrored) working tensor."""
    pts = to_working(item["truth"], item["scale"])
    if item["mirror"]:
        pts[:, 1] = item["tensor"].shape[-1] - 1 - pts[:, 1]
    return pts


def native_points(pts: np.ndarray, item: dict) -> np.ndarray:
    """Working-tensor points of an image → native (row, col) (undoing the mirroring)."""
    pts = np.array(pts, dtype=np.float64)
    if item["mirror"]:
        pts[:, 1] = item["tensor"].shape[-1] - 1 - pts[:, 1]
    return to_native(pts, item["scale"])


def batch(items: list[dict], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (bottom/right) to a common size: B×1×H×W images and B×K×2 working-pixel targets."""
    h = max(i["tensor"].shape[1] for i in items)
    w = max(i["tensor"].shape[2] for i in items)
    x = torch.zeros(len(items), 1, h, w)
    for j, i in enumerate(items):
        x[j, :, :i["tensor"].shape[1], :i["tensor"].shape[2]] = i["tensor"]
    pts = torch.tensor(np.stack([working_points(i) for i in items]), dtype=torch.float32)
    return x.to(device), pts.to(device)


@torch.no_grad()
def detect(model: LandmarkNet, items: list[dict], cfg: LandmarkConfig, device: torch.device) -> pd.DataFrame:
    """Detected native (row, col) and peak score of every landmark of every image (one image at a time)."""
    model.eval()
    cuda = device.type == "cuda"
    radius = 2 * cfg.sigma_mm / cfg.mm_per_px
    rows = []
    for item in items:
        x = item["tensor"][None].to(device)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(x)
        pts, score = decode(logits.float(), radius)
        native = native_points(pts[0].cpu().numpy(), item)
        for k, bone in enumerate(cfg.bones):
            rows.append({"role": item["role"], "image_id": item["image_id"], "subject_id": item["subject_id"],
                         "split": item["split"], "bone": bone, "row": float(native[k, 0]),
                         "col": float(native[k, 1]), "score": float(score[0, k])})
    return pd.DataFrame(rows)


def truth_frame(items: list[dict], bones: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame([{"image_id": i["image_id"], "bone": b, "row": i["truth"][k, 0], "col": i["truth"][k, 1],
                          "pixel_spacing_mm": i["spacing"]} for i in items for k, b in enumerate(bones)])


def mean_error(model: LandmarkNet, items: list[dict], cfg: LandmarkConfig, device: torch.device) -> float:
    if not items:
        return float("nan")
    errors = landmark_errors(detect(model, items, cfg, device), truth_frame(items, cfg.bones))
    return float(errors["error_mm"].mean()) if len(errors) else float("nan")


def landmark_step(model: LandmarkNet, opt: torch.optim.Optimizer, sched, x: torch.Tensor, pts: torch.Tensor,
                  cfg: LandmarkConfig, generator: torch.Generator) -> torch.Tensor:
    """One step: flips (CPU-generator draws, no host sync), Gaussian targets, bf16 autocast and
    channels_last on CUDA, heat-map loss, Adam, LR schedule. Returns the detached loss on the device;
    shared with `bench perf suite`."""
    cuda = x.is_cuda
    pts = pts.clone()
    if cfg.flips:
        flip = to_device_async(torch.rand(len(x), generator=generator), x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        pts[..., 1] = torch.where(flip.view(-1, 1), x.shape[-1] - 1 - pts[..., 1], pts[..., 1])
    target = gaussian_targets(pts, x.shape[-2:], cfg.sigma_mm / cfg.mm_per_px)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=cuda):
        logits = model(x)
    loss = heatmap_loss(logits, target)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.detach()


def train_detector(train: list[dict], val: list[dict], cfg: LandmarkConfig, generator: torch.Generator,
                   device: torch.device, log=None, resume: Resumer | None = None) -> LandmarkNet:
    """Train on `train` (images with at least one reference landmark); keep the best val-error epoch.

    With `resume` (bench.checkpoint) an interrupted training continues from its last saved epoch."""
    train = [i for i in train if np.isfinite(i["truth"]).any()]
    if not train:
        raise BenchError("no `seg` train image has annotator masks to derive landmarks from; the landmark "
                         "detector needs masks/<image_id>/<annotator>.png")
    cuda = device.type == "cuda"
    model = LandmarkNet(len(cfg.bones), cfg.widths, cfg.convs).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    x_all, p_all = batch(train, device)
    opt = adam(model.parameters(), device, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, -(-len(train) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
    best, best_state, first = float("inf"), None, 0
    parts, gens = {"model": model, "opt": opt, "sched": sched}, {"train": generator}
    saved = resume.load(map_location=device) if resume is not None else None
    if saved is not None:
        first = restore_loop(saved, parts, gens)
        best, best_state = saved["best"], saved["best_state"]
    for epoch in range(first, cfg.epochs):
        started = time.perf_counter()
        model.train()
        order = to_device_async(torch.randperm(len(train), generator=generator), device)
        total = torch.zeros((), device=device)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            total += landmark_step(model, opt, sched, x_all[idx], p_all[idx], cfg, generator) * len(idx)
        err = mean_error(model, val, cfg, device)
        epoch_line("landmark detector", epoch, cfg.epochs, {"train_loss": float(total) / len(train),
                                                             "val_error_mm": err}, time.perf_counter() - started)
        if log is not None:
            log("landmark_train_loss", float(total) / len(train), epoch)
            log("landmark_val_error_mm", err, epoch)
        if best_state is None or (np.isfinite(err) and err < best) or not val:
            best, best_state = (err if np.isfinite(err) else best), copy.deepcopy(model.state_dict())
        if resume is not None:
            resume.save_due(lambda: loop_state(epoch, parts, gens, best=best, best_state=best_state))
    model.load_state_dict(best_state)
    return model


def landmark_stage(ctx: StageContext) -> dict:
    """Stage `landmarks`: train on `seg` (train/val), report the `seg` test error, detect on every image."""
    cfg: LandmarkConfig = ctx.config.section("landmarks")
    cfg.validate()
    items = {role: load_images(ctx.datasets[role], role, cfg) for role in ("seg", "cls") if role in ctx.datasets}
    seg = items["seg"]
    model = train_detector([i for i in seg if i["split"] == "train"],
                           [i for i in seg if i["split"] == "val" and np.isfinite(i["truth"]).any()],
                           cfg, ctx.torch_generator("train"), ctx.device, ctx.log, resume=ctx.resumer())
    detected, report = [], {}
    for role, role_items in items.items():
        found = detect(model, role_items, cfg, ctx.device)
        errors = landmark_errors(found, truth_frame(role_items, cfg.bones))
        found = found.merge(errors[["image_id", "bone", "row_true", "col_true", "error_mm"]],
                            on=["image_id", "bone"], how="left")
        detected.append(found)
        scored = errors[errors["image_id"].isin([i["image_id"] for i in role_items if role == "cls"
                                                 or i["split"] == "test"])]
        if len(scored):
            key = "seg_test" if role == "seg" else "cls"
            report[key] = {"mean_mm": float(scored["error_mm"].mean()), "n": int(len(scored)),
                           "per_landmark_mm": {b: float(v) for b, v in scored.groupby("bone")["error_mm"].mean().items()}}
    pd.concat(detected, ignore_index=True).to_parquet(ctx.out_dir / "landmarks.parquet", index=False)
    (ctx.out_dir / "landmark_error.json").write_text(json.dumps(report, indent=2))
    torch.save({"state_dict": model.state_dict(), "config": dataclasses.asdict(cfg)}, ctx.out_dir / "model.pt")
    metrics = {f"landmark_error_mm_{k}": v["mean_mm"] for k, v in report.items()}
    for key, value in metrics.items():
        ctx.log(key, value)
    return {"metrics": metrics}
