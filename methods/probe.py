"""Linear probe on a frozen encoder, per bone (paper "Supervised fine-tuning", eq. 10, "Metrics").

Each bone patch of the `cls` dataset is labelled with its subject's label. Features of the frozen
encoder are computed once; a single linear layer (2 logits) is trained on the train-split bones.
After every epoch the per-bone probabilities of the validation subjects are averaged per subject
(eq. 10, exactly as the reported results are: :func:`subject_probabilities`) and the epoch with the
best subject-level validation macro-F1 (ties: AUC, then the earliest) is kept (paper "Metrics").
The kept head scores every bone of every split.

Conventions where the paper is silent (our choices): features are standardised with the train-split
mean and std (as MAE's affine-free BatchNorm before its linear head); a zero-initialised head;
Adam at a constant LR (solo-learn and lightly train their probes with SGD on augmented images;
here the features are computed once, without augmentation); cross-entropy without class weights unless
``probe.class_weight=balanced``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from bench.config import register_section
from bench.errors import BenchError
from bench.data import BONES
from bench.metrics import (aggregate_subjects, average_images, classification_metrics, require_validation,
                           select_best)


@dataclass
class ProbeConfig:
    """Linear probe on frozen features."""

    epochs: int = 100                                  # training epochs of the linear head
    lr: float = 1e-3                                   # Adam learning rate
    weight_decay: float = 0.0                          # L2 on the head weights
    batch_size: int = 256                              # bones per step
    class_weight: Literal["none", "balanced"] = "none" # cross-entropy class weights
    standardize: bool = True                           # z-score features with train statistics

    def validate(self) -> None:
        """Raise BenchError naming the first bad option (before any stage runs)."""
        if self.epochs < 1 or self.batch_size < 1:
            raise BenchError(f"probe.epochs and probe.batch_size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise BenchError(f"probe.lr must be > 0 and probe.weight_decay >= 0 (got {self.lr}, {self.weight_decay})")


register_section("probe", ProbeConfig, {"smoke": {"epochs": 30}, "quick": {"epochs": 100},
                                        "paper": {"epochs": 100}})


@dataclass
class ProbeResult:
    bone_predictions: pd.DataFrame      # subject_id, split, bone, y_true, p_pos (every split)
    history: list[dict[str, float]]     # per epoch: train_loss, val_macro_f1, val_auc
    best_epoch: int
    head: nn.Linear
    feature_mean: torch.Tensor | None = None    # train-split feature standardisation (None: standardize off)
    feature_std: torch.Tensor | None = None


def cross_entropy(train_labels: torch.Tensor, class_weight: str) -> nn.CrossEntropyLoss:
    """Cross-entropy, optionally with 'balanced' class weights n / (2 n_c) from the train labels."""
    if class_weight != "balanced":
        return nn.CrossEntropyLoss()
    counts = torch.bincount(train_labels, minlength=2).float()
    return nn.CrossEntropyLoss(weight=counts.sum() / (2 * counts.clamp_min(1)))


def train_probe(features: torch.Tensor, index: pd.DataFrame, cfg: ProbeConfig, generator: torch.Generator,
                device: torch.device | str = "cpu") -> ProbeResult:
    """Fit the head on train bones, select by subject-level val macro-F1, score all bones.

    `index` rows align with `features` and carry subject_id, split, bone, label (0/1).
    """
    device = torch.device(device)
    need = {"subject_id", "split", "bone", "label"}
    if need - set(index.columns):
        raise BenchError(f"probe index lacks columns {sorted(need - set(index.columns))}")
    labels = pd.to_numeric(index["label"], errors="coerce")
    train_mask = torch.as_tensor(((index["split"] == "train") & labels.notna()).to_numpy(dtype=bool).copy())
    val_mask = torch.as_tensor(((index["split"] == "val") & labels.notna()).to_numpy(dtype=bool).copy())
    if labels[train_mask.numpy()].nunique() < 2:
        raise BenchError("the train split holds bones of a single class; the probe needs both labels")
    require_validation(int(val_mask.sum()), "the linear probe")
    x = features.to(device, torch.float32)
    mean = std = None
    if cfg.standardize:
        mean = x[train_mask.to(device)].mean(0, keepdim=True)
        std = x[train_mask.to(device)].std(0, keepdim=True).clamp_min(1e-6)
        x = (x - mean) / std
    y = torch.as_tensor(labels.fillna(0).astype(int).to_numpy().copy(), device=device)
    train_idx = torch.nonzero(train_mask).flatten().to(device)
    head = nn.Linear(x.shape[1], 2).to(device)
    nn.init.zeros_(head.weight)  # convex problem: a zero start makes the probe depend on the generator only
    nn.init.zeros_(head.bias)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = cross_entropy(y[train_idx], cfg.class_weight)
    val_rows = index[val_mask.numpy()]
    history: list[dict[str, float]] = []
    states: list[dict[str, torch.Tensor]] = []
    for _epoch in range(cfg.epochs):
        head.train()
        order = train_idx[torch.randperm(len(train_idx), generator=generator).to(device)]
        total = torch.zeros((), device=device)
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start:start + cfg.batch_size]
            loss = loss_fn(head(x[batch]), y[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(batch)
        head.eval()
        with torch.no_grad():
            p_val = torch.softmax(head(x[val_mask.to(device)]), dim=1)[:, 1].cpu().numpy()
        val = subject_metrics(val_rows, p_val)
        history.append({"train_loss": float(total) / len(order), "val_macro_f1": val["macro_f1"],
                        "val_auc": val["auc"]})
        states.append({k: v.detach().clone() for k, v in head.state_dict().items()})
    best = select_best(history)
    head.load_state_dict(states[best])
    head.eval()
    with torch.no_grad():
        p_pos = torch.softmax(head(x), dim=1)[:, 1].cpu().numpy()
    bones = index[["subject_id", "split", "bone"]].assign(y_true=labels.astype("Int64"), p_pos=p_pos)
    return ProbeResult(bones.reset_index(drop=True), history, best, head, mean, std)


def subject_probabilities(rows: pd.DataFrame, p_pos: np.ndarray) -> pd.DataFrame:
    """Per-patch probabilities → one row per (subject_id, split) with y_true and p_pos, aggregated as the
    reported results are (bench.run_evaluation.evaluate), so model selection sees the numbers that are reported.

    Bone rows (names of ``bench.data.BONES``): :func:`average_images` per (subject, split, bone), so a
    subject's two radiographs count each bone once, then :func:`aggregate_subjects` (eq. 10, the mean
    over the bones present). Other rows (one whole-image or ROI prediction per radiograph): the mean
    per subject, as the subject-level ``predictions.parquet`` is averaged.
    """
    missing = sorted({"subject_id", "split", "bone", "label"} - set(rows.columns))
    if missing:
        raise BenchError(f"subject aggregation needs columns subject_id, split, bone, label; missing {missing}")
    frame = pd.DataFrame({"subject_id": rows["subject_id"].to_numpy(), "split": rows["split"].to_numpy(),
                          "bone": rows["bone"].astype(str).to_numpy(), "p_pos": p_pos,
                          "y_true": rows["label"].astype(int).to_numpy()})
    if frame["bone"].isin(BONES).all():
        return aggregate_subjects(average_images(frame))
    return average_images(frame, ("subject_id", "split"))


def subject_metrics(rows: pd.DataFrame, p_pos: np.ndarray) -> dict[str, float]:
    """Subject-level metrics of per-patch probabilities (:func:`subject_probabilities`, eq. 10).

    `rows` carry subject_id, split, bone and label; works for bones and whole-image predictions alike.
    """
    import warnings

    subjects = subject_probabilities(rows, p_pos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a single-class validation split is reported by the final metrics
        return classification_metrics(subjects["y_true"].to_numpy(dtype=float), subjects["p_pos"].to_numpy())
