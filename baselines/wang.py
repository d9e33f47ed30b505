"""`wang` baseline (Wang et al., IEEE TMI 2022): anatomy-aware multi-ROI VGG16 + transformer.

Wang et al. embed each landmark ROI with a CNN and let a transformer attend across the ROIs.
Here: the landmark ROIs of baselines.hsieh (one per bone, from the shared `landmarks` stage) →
one shared VGG (baselines.vgg) per ROI → a linear projection to ``wang.d_model`` plus a learned
embedding of the ROI's anatomical position (which landmark it is) → a CLS token prepended →
``torch.nn.TransformerEncoder`` (pre-norm) → the CLS token (or the token mean) → a linear head to
2 logits; one prediction per radiograph, averaged per subject (``predictions.parquet``).

Training mirrors methods.supervised (same config section ``supervised``: epochs, Adam + cosine
decay, weight decay, input size, flips only, class weights; bf16 autocast and channels_last on
CUDA, data resident on the device) with radiographs instead of patches as samples (``wang.batch_size``
per step), and keeps the epoch with the best subject validation macro-F1 (bench.metrics.select_best).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from torch import nn

from bench.config import register_section
from bench.errors import BenchError
from bench.metrics import select_best
from bench.stage import StageContext
from baselines.common import require_labels, subject_predictions, write_history
from baselines.hsieh import landmark_metrics, landmark_rois
from baselines.vgg import build_vgg
from methods.encoders import to_input
from methods.probe import ProbeResult, cross_entropy, subject_metrics
from methods.supervised import SupervisedConfig, flip_augment


@dataclass
class WangConfig:
    """Transformer across the landmark ROIs (Wang et al.)."""

    d_model: int = 256                        # token width
    heads: int = 4                            # attention heads
    layers: int = 2                           # transformer encoder layers
    dropout: float = 0.1                      # dropout in the encoder layers
    pooling: Literal["cls", "mean"] = "cls"   # subject token: the CLS token | the mean ROI token
    batch_size: int = 8                       # radiographs per step (each with all its ROIs)


register_section("wang", WangConfig, {"smoke": {"d_model": 32, "heads": 2, "layers": 1}})


class MultiRoiTransformer(nn.Module):
    """B×K×1×S×S ROIs → B×2 logits (module docstring)."""

    def __init__(self, backbone: nn.Module, rois: int, cfg: WangConfig):
        super().__init__()
        self.backbone = backbone
        self.pooling = cfg.pooling
        self.proj = nn.Linear(backbone.num_features, cfg.d_model)
        self.position = nn.Parameter(torch.zeros(rois, cfg.d_model))
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.d_model))
        nn.init.trunc_normal_(self.position, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, dim_feedforward=4 * cfg.d_model,
                                           dropout=cfg.dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, 2)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """B×K×d ROI tokens: projected CNN features plus the ROI-position embedding."""
        b, k = x.shape[:2]
        flat = x.flatten(0, 1)
        if flat.is_cuda:
            flat = flat.contiguous(memory_format=torch.channels_last)
        return self.proj(self.backbone(flat).view(b, k, -1)) + self.position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.tokens(x)
        if self.pooling == "cls":
            t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        h = self.norm(self.encoder(t))
        return self.head(h[:, 0] if self.pooling == "cls" else h.mean(dim=1))


def _inputs(rois: torch.Tensor, size: int) -> torch.Tensor:
    """B×K×H×W ROIs → B×K×1×size×size float in [0, 1]."""
    b, k = rois.shape[:2]
    return to_input(rois.flatten(0, 1), size).view(b, k, 1, size, size)


@torch.no_grad()
def _predict(model: MultiRoiTransformer, rois: torch.Tensor, size: int, device: torch.device, batch: int = 16):
    model.eval()
    out = []
    for start in range(0, len(rois), batch):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(torch.softmax(model(_inputs(rois[start:start + batch], size)).float(), dim=1)[:, 1])
    return torch.cat(out).cpu().numpy() if out else torch.zeros(0).numpy()


def train_wang(model: MultiRoiTransformer, rois: torch.Tensor, index: pd.DataFrame, cfg: SupervisedConfig,
               batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu") -> ProbeResult:
    """Train on the train radiographs of `index` (one row per N of `rois`: N×K×H×W); select by subject val macro-F1."""
    device = torch.device(device)
    labels = pd.to_numeric(index["label"], errors="coerce")
    train_rows = ((index["split"] == "train") & labels.notna()).to_numpy(dtype=bool).copy()
    val_rows = ((index["split"] == "val") & labels.notna()).to_numpy(dtype=bool).copy()
    if labels[train_rows].nunique() < 2:
        raise BenchError("the train split holds radiographs of a single class; supervised training needs both")
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    data = rois.to(device)
    y = torch.as_tensor(labels.fillna(0).astype(int).to_numpy().copy(), device=device)
    train_idx = torch.nonzero(torch.as_tensor(train_rows)).flatten().to(device)
    val_idx = torch.nonzero(torch.as_tensor(val_rows)).flatten().to(device)
    loss_fn = cross_entropy(y[train_idx], cfg.class_weight)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    steps = max(1, -(-len(train_idx) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
    history: list[dict[str, float]] = []
    best_state = None
    k, size = rois.shape[1], cfg.input_size
    for _epoch in range(cfg.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator).to(device)]
        total = torch.zeros((), device=device)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            flat = flip_augment(to_input(data[idx].flatten(0, 1), size), cfg, generator)  # flips per ROI
            x = flat.view(len(idx), k, 1, size, size)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(x).float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(idx)
        val = subject_metrics(index[val_rows], _predict(model, data[val_idx], size, device))
        history.append({"train_loss": float(total) / len(order), "val_macro_f1": val["macro_f1"],
                        "val_auc": val["auc"]})
        if select_best(history) == len(history) - 1:  # strictly better than every earlier epoch
            best_state = copy.deepcopy(model.state_dict())
    best = select_best(history)
    model.load_state_dict(best_state)
    p_all = _predict(model, data, size, device)
    preds = index[["subject_id", "split"]].assign(bone="roi", y_true=labels.astype("Int64"), p_pos=p_all)
    return ProbeResult(preds.reset_index(drop=True), history, best, model.head)


def wang_stage(ctx: StageContext) -> dict:
    """Stage `wang`: landmark ROIs → VGG tokens → transformer → one prediction per radiograph."""
    require_labels(ctx, "Wang")
    sup, cfg = ctx.config.supervised, ctx.config.section("wang")
    index, rois, bones = landmark_rois(ctx, ctx.inputs["landmarks"], sup.input_size)
    n, k = len(index) // max(len(bones), 1), len(bones)
    per_image = index.iloc[::k].reset_index(drop=True) if k else index
    rois = rois.view(n, k, *rois.shape[1:])
    model = MultiRoiTransformer(build_vgg(ctx.config.vgg), k, cfg)
    result = train_wang(model, rois, per_image, sup, cfg.batch_size, ctx.torch_generator("train"), ctx.device)
    write_history(ctx, result.history)
    subject_predictions(result.bone_predictions).to_parquet(ctx.out_dir / "predictions.parquet", index=False)
    return {"metrics": {"best_epoch": float(result.best_epoch), **landmark_metrics(ctx.inputs["landmarks"])}}
