"""`wang` baseline (Wang et al., IEEE TMI 2022): anatomy-aware multi-ROI VGG16 + transformer.

Wang et al. embed each landmark ROI with a CNN and let a transformer attend across the ROIs.
Here: the landmark ROIs of baselines.hsieh (one per bone, from the shared `landmarks` stage) →
one shared VGG (baselines.vgg) per ROI → a linear projection to ``wang.d_model`` plus a learned
embedding of the ROI's anatomical position (which landmark it is) → a CLS token prepended →
``torch.nn.TransformerEncoder`` (pre-norm) → the CLS token (or the token mean) → a linear head to
2 logits; one prediction per radiograph, averaged per subject (``predictions.parquet``).

Training is the shared loop methods.supervised.fit_end_to_end (same config section ``supervised``: epochs, Adam + cosine
decay, weight decay, input size, flips only, class weights; bf16 autocast and channels_last on
CUDA, data resident on the device) with radiographs instead of patches as samples (``wang.batch_size``
per step), and keeps the epoch with the best subject validation macro-F1 (bench.metrics.select_best).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from torch import nn

from bench.checkpoint import Resumer
from bench.config import register_section
from bench.errors import BenchError
from bench.stage import StageContext
from baselines.common import require_labels, subject_predictions, write_history
from baselines.hsieh import landmark_metrics, landmark_rois
from baselines.vgg import build_vgg
from methods.encoders import to_input
from methods.probe import ProbeResult
from methods.supervised import PrepareFn, SupervisedConfig, fit_end_to_end, flip_augment


@dataclass
class WangConfig:
    """Transformer across the landmark ROIs (Wang et al.)."""

    d_model: int = 256                        # token width
    heads: int = 4                            # attention heads
    layers: int = 2                           # transformer encoder layers
    dropout: float = 0.1                      # dropout in the encoder layers
    pooling: Literal["cls", "mean"] = "cls"   # subject token: the CLS token | the mean ROI token
    batch_size: int = 8                       # radiographs per step (each with all its ROIs)

    def validate(self) -> None:
        """Raise BenchError naming the first bad option (before any stage runs)."""
        if min(self.d_model, self.heads, self.layers, self.batch_size) < 1:
            raise BenchError("wang.d_model, heads, layers and batch_size must be >= 1 (got "
                             f"{self.d_model}, {self.heads}, {self.layers}, {self.batch_size})")
        if self.d_model % self.heads:
            raise BenchError(f"wang.d_model = {self.d_model} must be a multiple of wang.heads = {self.heads} "
                             "(each attention head gets d_model / heads channels)")
        if not 0 <= self.dropout < 1:
            raise BenchError(f"wang.dropout = {self.dropout} must lie in [0, 1)")


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


def train_wang(model: MultiRoiTransformer, rois: torch.Tensor, index: pd.DataFrame, cfg: SupervisedConfig,
               batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu",
               resume: Resumer | None = None) -> ProbeResult:
    """Train on the train radiographs of `index` (one row per N of `rois`: N×K×H×W) with the shared
    end-to-end loop (methods.supervised.fit_end_to_end); flips are drawn per ROI."""
    return fit_end_to_end(model, rois, index.assign(bone="roi"), cfg, generator, device,
                          prepare=roi_prepare(cfg), batch_size=batch_size, eval_batch=16, resume=resume)


def roi_prepare(cfg: SupervisedConfig) -> PrepareFn:
    """N×K×H×W stored ROIs → N×K×1×size×size model input, flips drawn per ROI when training."""
    size = cfg.input_size

    def prepare(raw: torch.Tensor, flips: torch.Generator | None) -> torch.Tensor:
        b, k = raw.shape[:2]
        flat = to_input(raw.flatten(0, 1), size)
        flat = flat if flips is None else flip_augment(flat, cfg, flips)
        return flat.view(b, k, 1, size, size)
    return prepare


def wang_stage(ctx: StageContext) -> dict:
    """Stage `wang`: landmark ROIs → VGG tokens → transformer → one prediction per radiograph."""
    require_labels(ctx, "Wang")
    sup, cfg = ctx.config.supervised, ctx.config.section("wang")
    index, rois, bones = landmark_rois(ctx, ctx.inputs["landmarks"], sup.input_size)
    n, k = len(index) // max(len(bones), 1), len(bones)
    per_image = index.iloc[::k].reset_index(drop=True) if k else index
    rois = rois.view(n, k, *rois.shape[1:])
    model = MultiRoiTransformer(build_vgg(ctx.config.vgg), k, cfg)
    result = train_wang(model, rois, per_image, sup, cfg.batch_size, ctx.torch_generator("train"), ctx.device,
                        resume=ctx.resumer())
    write_history(ctx, result.history)
    subject_predictions(result.bone_predictions).to_parquet(ctx.out_dir / "predictions.parquet", index=False)
    return {"metrics": {"best_epoch": float(result.best_epoch), **landmark_metrics(ctx.inputs["landmarks"])}}
