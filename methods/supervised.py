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
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import pandas as pd
import torch
from torch import nn

from bench.checkpoint import Resumer, loop_state, restore_loop
from bench.config import register_section
from bench.errors import BenchError
from bench.metrics import require_validation, select_best
from bench.progress import epoch_line
from methods.encoders import to_input
from methods.optim import adam
from methods.probe import ProbeResult, cross_entropy, subject_metrics
from methods.transfer import to_device_async


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

    def validate(self) -> None:
        """Raise BenchError naming the first bad option."""
        if self.epochs < 1 or self.batch_size < 1 or self.input_size < 8:
            raise BenchError("supervised.epochs and supervised.batch_size must be >= 1 and supervised.input_size "
                             f">= 8 (got {self.epochs}, {self.batch_size}, {self.input_size})")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise BenchError("supervised.lr must be > 0 and supervised.weight_decay >= 0")


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


#: (raw rows of the data tensor on the device, flip generator or None at evaluation) -> model input
PrepareFn = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def train_supervised(encoder: nn.Module, patches: torch.Tensor, index: pd.DataFrame, cfg: SupervisedConfig,
                     generator: torch.Generator, device: torch.device | str = "cpu",
                     resume: Resumer | None = None) -> ProbeResult:
    """Train encoder + head on the train rows of `index`; select by subject val macro-F1; score all rows."""
    return fit_end_to_end(Classifier(encoder), patches, index, cfg, generator, device, prepare=patch_prepare(cfg),
                          resume=resume)


def patch_prepare(cfg: SupervisedConfig) -> PrepareFn:
    """Stored patches → model input: :func:`to_input` at ``cfg.input_size``, flips when training
    (a generator is given), channels_last on CUDA."""
    def prepare(raw: torch.Tensor, flips: torch.Generator | None) -> torch.Tensor:
        x = to_input(raw, cfg.input_size)
        x = x if flips is None else flip_augment(x, cfg, flips)
        return x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x
    return prepare


def supervised_step(model: nn.Module, opt: torch.optim.Optimizer, sched: Any, loss_fn: Callable,
                    x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One step of the end-to-end loop: bf16 autocast on CUDA, loss, backward, Adam, LR schedule.

    Returns the detached loss on the device (no host synchronisation); shared with `bench perf suite`.
    """
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
        loss = loss_fn(model(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.detach()


def fit_end_to_end(model: nn.Module, data: torch.Tensor, index: pd.DataFrame, cfg: SupervisedConfig,
                   generator: torch.Generator, device: torch.device | str = "cpu", *, prepare: PrepareFn,
                   batch_size: int | None = None, eval_batch: int = 128,
                   resume: Resumer | None = None) -> ProbeResult:
    """The one end-to-end loop (module docstring): row i of `data` is sample i of `index`.

    `model` maps ``prepare(rows, generator)`` to 2 logits and has a ``head``; Adam + cosine decay,
    bf16 autocast on CUDA, the checkpoint with the best subject-level val macro-F1 scores every row.
    With `resume` (bench.checkpoint) an interrupted training continues from its last saved epoch.
    """
    device = torch.device(device)
    batch_size = batch_size or cfg.batch_size
    labels = pd.to_numeric(index["label"], errors="coerce")
    train_rows = ((index["split"] == "train") & labels.notna()).to_numpy(dtype=bool).copy()
    val_rows = ((index["split"] == "val") & labels.notna()).to_numpy(dtype=bool).copy()
    if labels[train_rows].nunique() < 2:
        raise BenchError("the train split holds samples of a single class; supervised training needs both")
    require_validation(int(val_rows.sum()), "supervised training")
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    data = data.to(device)
    y = torch.as_tensor(labels.fillna(0).astype(int).to_numpy().copy(), device=device)
    train_idx = torch.nonzero(torch.as_tensor(train_rows)).flatten().to(device)
    val_idx = torch.nonzero(torch.as_tensor(val_rows)).flatten().to(device)
    loss_fn = cross_entropy(y[train_idx], cfg.class_weight)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adam(params, device, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-len(train_idx) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    best_state = None
    first, parts, gens = 0, {"model": model, "opt": opt, "sched": sched}, {"train": generator}
    saved = resume.load(map_location=device) if resume is not None else None
    if saved is not None:
        first = restore_loop(saved, parts, gens)
        history, best_state = saved["history"], saved["best_state"]
    for epoch in range(first, cfg.epochs):
        started = time.perf_counter()
        model.train()
        order = train_idx[to_device_async(torch.randperm(len(train_idx), generator=generator), device)]
        total = torch.zeros((), device=device)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = supervised_step(model, opt, sched, loss_fn, prepare(data[batch], generator), y[batch])
            total += loss * len(batch)
        p_val = predict_positive(model, data[val_idx], prepare, device, eval_batch)
        val = subject_metrics(index[val_rows], p_val)
        history.append({"train_loss": float(total) / len(order), "val_macro_f1": val["macro_f1"],
                        "val_auc": val["auc"]})
        epoch_line("supervised", epoch, cfg.epochs, history[-1], time.perf_counter() - started)
        if select_best(history) == len(history) - 1:  # strictly better than every earlier epoch
            best_state = copy.deepcopy(model.state_dict())
        if resume is not None:
            resume.save_due(lambda: loop_state(epoch, parts, gens, history=history, best_state=best_state))
    best = select_best(history)
    model.load_state_dict(best_state)
    p_all = predict_positive(model, data, prepare, device, eval_batch)
    rows = index[["subject_id", "split", "bone"]].assign(y_true=labels.astype("Int64"), p_pos=p_all)
    return ProbeResult(rows.reset_index(drop=True), history, best, model.head)


def flip_augment(x: torch.Tensor, cfg: SupervisedConfig, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal and vertical flips per sample, drawn on the CPU generator (the same draws on
    every device) and applied on the device; on CUDA the draws travel through pinned memory without
    a host synchronisation."""
    if not cfg.flips:
        return x
    flips = to_device_async(torch.rand(2, x.shape[0], generator=generator), x.device) < 0.5
    x = torch.where(flips[0].view(-1, 1, 1, 1), x.flip(-1), x)
    return torch.where(flips[1].view(-1, 1, 1, 1), x.flip(-2), x)


@torch.no_grad()
def predict_positive(model: nn.Module, data: torch.Tensor, prepare: PrepareFn, device: torch.device,
                     batch: int = 128):
    """Softmax probability of the positive class for every row of `data` (no augmentation)."""
    model.eval()
    out = []
    for start in range(0, len(data), batch):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(torch.softmax(model(prepare(data[start:start + batch], None)).float(), dim=1)[:, 1])
    return torch.cat(out).cpu().numpy() if out else torch.zeros(0).numpy()
