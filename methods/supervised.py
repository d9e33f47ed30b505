"""End-to-end supervised training of an encoder + linear head on patches (paper Table 6 and Table 8).

Used by the `supervised` ablation (ResNet-50 on bone patches, no SSL, no multi-crop) and by the
supervised baselines (DeepDXA ResNet-18, the VGG16 models), so they share one training loop.
Each patch carries its subject's label; after every epoch the subject-level validation macro-F1
of eq. 10 selects the checkpoint (paper "Metrics"). "Without enhanced augmentation" (Table 8) is
read as: random flips only (``supervised.flips``), no rotation/intensity jitter, no multi-crop.
Adam with cosine decay; bf16 autocast and channels_last on CUDA; the patch tensor stays on the
device and batches are indexed there.
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
from methods.encoders import to_input
from methods.probe import ProbeResult, cross_entropy, subject_metrics


@dataclass
class SupervisedConfig:
    """End-to-end supervised training (no SSL)."""

    epochs: int = 100                                   # training epochs
    lr: float = 1e-4                                    # Adam learning rate (cosine-decayed)
    weight_decay: float = 1e-5                          # Adam weight decay
    batch_size: int = 32                                # patches per step
    input_size: int = 224                               # encoder input side in pixels
    flips: bool = True                                  # random horizontal/vertical flips (the only augmentation)
    class_weight: Literal["none", "balanced"] = "none"  # cross-entropy class weights


register_section("supervised", SupervisedConfig, {
    "smoke": {"epochs": 3, "input_size": 64, "batch_size": 16},
    "quick": {"epochs": 30, "input_size": 160},
    "paper": {"epochs": 100, "input_size": 224},
})


class Classifier(nn.Module):
    """Encoder followed by a linear layer to 2 logits."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.num_features, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def train_supervised(encoder: nn.Module, patches: torch.Tensor, index: pd.DataFrame, cfg: SupervisedConfig,
                     generator: torch.Generator, device: torch.device | str = "cpu") -> ProbeResult:
    """Train encoder + head on the train rows of `index`; select by subject val macro-F1; score all rows."""
    device = torch.device(device)
    labels = pd.to_numeric(index["label"], errors="coerce")
    train_rows = ((index["split"] == "train") & labels.notna()).to_numpy(dtype=bool).copy()
    val_rows = ((index["split"] == "val") & labels.notna()).to_numpy(dtype=bool).copy()
    if labels[train_rows].nunique() < 2:
        raise BenchError("the train split holds patches of a single class; supervised training needs both")
    cuda = device.type == "cuda"
    model = Classifier(encoder).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    data = patches.to(device)
    y = torch.as_tensor(labels.fillna(0).astype(int).to_numpy().copy(), device=device)
    train_idx = torch.nonzero(torch.as_tensor(train_rows)).flatten().to(device)
    val_idx = torch.nonzero(torch.as_tensor(val_rows)).flatten().to(device)
    loss_fn = cross_entropy(y[train_idx], cfg.class_weight)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    steps_per_epoch = max(1, -(-len(train_idx) // cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    best_state = None
    for _epoch in range(cfg.epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator).to(device)]
        total = torch.zeros((), device=device)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            x = flip_augment(to_input(data[batch], cfg.input_size), cfg, generator)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = loss_fn(model(x).float(), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(batch)
        p_val = _predict(model, data[val_idx], cfg, device)
        val = subject_metrics(index[val_rows], p_val)
        history.append({"train_loss": float(total) / len(order), "val_macro_f1": val["macro_f1"],
                        "val_auc": val["auc"]})
        if select_best(history) == len(history) - 1:  # strictly better than every earlier epoch
            best_state = copy.deepcopy(model.state_dict())
    best = select_best(history)
    model.load_state_dict(best_state)
    p_all = _predict(model, data, cfg, device)
    bones = index[["subject_id", "split", "bone"]].assign(y_true=labels.astype("Int64"), p_pos=p_all)
    return ProbeResult(bones.reset_index(drop=True), history, best, model.head)


def flip_augment(x: torch.Tensor, cfg: SupervisedConfig, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips per sample (drawn on the CPU generator, applied on device)."""
    if not cfg.flips:
        return x
    flips = torch.rand(2, x.shape[0], generator=generator).to(x.device) < 0.5
    x = torch.where(flips[0].view(-1, 1, 1, 1), x.flip(-1), x)
    return torch.where(flips[1].view(-1, 1, 1, 1), x.flip(-2), x)


@torch.no_grad()
def _predict(model: Classifier, patches: torch.Tensor, cfg: SupervisedConfig, device: torch.device):
    model.eval()
    cuda = device.type == "cuda"
    out = []
    for start in range(0, len(patches), 128):
        x = to_input(patches[start:start + 128], cfg.input_size)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            out.append(torch.softmax(model(x).float(), dim=1)[:, 1])
    return torch.cat(out).cpu().numpy() if out else torch.zeros(0).numpy()
