"""SSL pretraining stage: encoder + projection head on bone patches (paper Fig. 4, first stage).

Data (paper "Hand X-ray datasets"): the non-missing patches of the `seg` dataset; for SupCon
(``ssl.cls_train=auto``) also the `cls` train-split patches with their subject labels, the `seg`
patches being unlabeled (−1: only their own crops are positives). The patch store is moved to the
device once (uint16); every step indexes a batch there, draws the multi-crop views (bone-aware or
conventional) and the paper's augmentations on the device (:func:`methods.views.make_views`, one
resampling per view size), runs the encoder once per view size, and applies the method's loss.
SwAV can keep a queue of earlier global-crop projections (``ssl.swav_queue``).
LARC + warm-up + cosine decay; bf16 autocast and channels_last on CUDA, optionally a compiled
encoder (``ssl.compile``); the loss is read back once per epoch, not per step; an interrupted
pretraining resumes from its last saved epoch (bench.checkpoint). The step is
:func:`pretrain_step` (:func:`gather` + :func:`make_views` + :func:`train_step` on a
:class:`Pretrainer`), the same function ``bench perf ssl`` times (methods.ssl.perf).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bench.checkpoint import loop_state, restore_loop
from bench.errors import BenchError
from bench.progress import epoch_line
from bench.stage import StageContext
from methods.augment import AugmentConfig
from methods.compiling import compile_module
from methods.encoders import build_encoder
from methods.multicrop import MultiCropConfig
from methods.patch_store import PatchStore
from methods.ssl.config import SSLConfig  # importing it registers the config sections
from methods.ssl.heads import HeadConfig, build_head
from methods.ssl.lars import LARC, LARS, cosine_schedule, param_groups, set_lr
from methods.ssl.losses import SwAVQueue, nt_xent, supcon, swav, vicreg_multicrop
from methods.views import make_views

ENCODER_FILE = "encoder.pt"


def pretraining_set(store: PatchStore, use_cls_train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the store used for pretraining and their SupCon labels (−1 = unlabeled)."""
    index = store.index
    usable = ~index["missing"].astype(bool)
    seg = usable & (index["role"] == "seg")
    rows = index.loc[seg, "row"].to_numpy()
    labels = np.full(len(rows), -1, dtype=np.int64)
    if use_cls_train:
        cls = usable & (index["role"] == "cls") & (index["split"] == "train") & index["label"].notna()
        rows = np.concatenate([rows, index.loc[cls, "row"].to_numpy()])
        labels = np.concatenate([labels, index.loc[cls, "label"].astype(int).to_numpy()])
    if len(rows) == 0:
        raise BenchError("no usable bone patches to pretrain on: every patch is missing; check the "
                         "segment_eval stage's eval.json and the `patches` thresholds")
    return rows, labels


def _loss(p: Pretrainer, feats: list[torch.Tensor], labels: torch.Tensor, n_global: int) -> torch.Tensor:
    """The method's loss on pooled features; SwAV with a queue also pushes this step's global projections."""
    cfg, head = p.cfg, p.head
    if cfg.method == "swav":
        head.prototypes.normalize()
        out = [head(h) for h in feats]
        queue = p.queue.scores(head.prototypes) if p.queue is not None and p.queue_on else None
        loss = swav([s for _, s in out], n_global=n_global, temperature=cfg.temperature, epsilon=cfg.swav_epsilon,
                    iterations=cfg.swav_iterations, queue_scores=queue)
        if p.queue is not None:       # filled from the first step, after its use: a step never sees itself twice
            p.queue.push([z for z, _ in out[:n_global]])
        return loss
    z = [head(h) for h in feats]
    if cfg.method == "simclr":
        return nt_xent(z, cfg.temperature)
    if cfg.method == "supcon":
        return supcon(z, labels, cfg.temperature)
    return vicreg_multicrop(z, n_global=n_global, sim_coeff=cfg.vicreg_sim, std_coeff=cfg.vicreg_std,
                            cov_coeff=cfg.vicreg_cov).total


@dataclass
class Pretrainer:
    """Encoder, head and optimiser of one pretraining run: the state :func:`train_step` updates.

    Built by :func:`build_pretrainer`; shared by :func:`pretrain_stage` and ``bench perf ssl``
    (methods.ssl.perf), so the benchmark times the stage's own step. ``fast`` = bf16 autocast and,
    with ``ssl.channels_last``, the channels-last layout (the stage uses it exactly on CUDA; the
    benchmark's conventional reference turns it off to get eager fp32). ``queue``: the SwAV queue
    (``ssl.swav_queue`` > 0, else None), its scores used while ``queue_on`` (set by :meth:`start_epoch`).
    """

    cfg: SSLConfig
    encoder: nn.Module
    head: nn.Module
    model: nn.ModuleDict
    opt: torch.optim.Optimizer
    device: torch.device
    fast: bool
    queue: SwAVQueue | None = None
    queue_on: bool = False

    @property
    def channels_last(self) -> bool:
        return self.fast and self.cfg.channels_last

    def start_epoch(self, epoch: int) -> None:
        """Train mode; SwAV keeps its prototypes frozen for the first ``ssl.swav_freeze_epochs`` and
        uses its queue (when full) from epoch ``ssl.swav_queue_start`` on (epochs counted from 0)."""
        self.model.train()
        if self.cfg.method == "swav":
            self.head.prototypes.freeze_for_epoch(epoch, self.cfg.swav_freeze_epochs)
            self.queue_on = epoch >= self.cfg.swav_queue_start


def build_pretrainer(cfg: SSLConfig, heads: HeadConfig, device: torch.device | str, fast: bool | None = None,
                     n_global: int = 2) -> Pretrainer:
    """Encoder + the method's head on `device` and the configured optimiser (LARC/LARS foreach, AdamW foreach);
    for SwAV with ``ssl.swav_queue`` > 0 a queue of that length for each of the `n_global` global crops.

    `fast` defaults to ``device.type == "cuda"`` (bf16 autocast + ``ssl.channels_last`` only on a GPU).
    With ``ssl.compile`` other than ``off`` the encoder is compiled in place (:func:`compile_encoder`).
    """
    device = torch.device(device)
    fast = device.type == "cuda" if fast is None else fast
    encoder = build_encoder(cfg.encoder).to(device)
    head = build_head(cfg.method, encoder.num_features, heads).to(device)
    model = nn.ModuleDict({"encoder": encoder, "head": head})
    if fast and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    compile_encoder(encoder, cfg.compile)
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    else:
        opt = (LARC if cfg.optimizer == "larc" else LARS)(groups, lr=cfg.lr, momentum=0.9)
    queue = None
    if cfg.method == "swav" and cfg.swav_queue > 0:
        queue = SwAVQueue(n_global, cfg.swav_queue, heads.out_dim).to(device)
    return Pretrainer(cfg, encoder, head, model, opt, device, fast, queue)


def compile_encoder(encoder: nn.Module, mode: str) -> None:
    """``torch.compile`` the encoder in place with ``ssl.compile`` (methods.compiling: modes, static
    shapes, one graph per view size; ``bench perf ssl`` reports the first step's ``compile_s``)."""
    compile_module(encoder, mode)


def resident_store(store: PatchStore, device: torch.device | str) -> torch.Tensor:
    """The whole store on `device` as uint16, viewed as bit-identical int16 for gathering (see :func:`gather`)."""
    return store.tensor(device).view(torch.int16)


def gather(data16: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows of a resident int16-viewed uint16 store → float B×1×P×P in [0, 1], all on its device.

    (uint16 indexing kernels are sparse on CUDA: gather through the int16 view, widen, unwrap.)
    """
    return ((data16.index_select(0, rows).to(torch.int32) & 0xFFFF).float() / 65535.0).unsqueeze(1)


def train_step(p: Pretrainer, views: list[torch.Tensor], labels: torch.Tensor, lr: float, n_global: int
               ) -> torch.Tensor:
    """One optimiser step on ready views: encoder per view size, method loss, backward, update.

    Returns the detached loss on the device (no host synchronisation).
    """
    set_lr(p.opt, lr)
    with torch.autocast(device_type=p.device.type, dtype=torch.bfloat16, enabled=p.fast):
        feats = _encode(p.encoder, views, n_global, p.channels_last)
    loss = _loss(p, [f.float() for f in feats], labels, n_global)
    p.opt.zero_grad(set_to_none=True)
    loss.backward()
    p.opt.step()
    return loss.detach()


def pretrain_step(p: Pretrainer, data16: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor,
                  mc: MultiCropConfig, aug: AugmentConfig, generator: torch.Generator, lr: float) -> torch.Tensor:
    """The stage's whole step: gather `rows` from the resident store, views, :func:`train_step`."""
    views = make_views(gather(data16, rows), mc, aug, p.cfg.crop_policy, generator)
    return train_step(p, views, labels, lr, mc.n_global)


def steps_per_epoch(cfg: SSLConfig, n_patches: int) -> tuple[int, int]:
    """(batch, steps per epoch) for `n_patches` pretraining patches: full batches, capped by max_steps_per_epoch."""
    batch = min(cfg.batch_size, n_patches)
    steps = n_patches // batch
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    return batch, steps


def pretrain_stage(ctx: StageContext) -> dict:
    """Stage `pretrain`: writes encoder.pt (timm name + state dict) and logs the loss per epoch."""
    cfg, mc, aug, heads = ctx.config.ssl, ctx.config.multicrop, ctx.config.augment, ctx.config.heads
    store = PatchStore.open(ctx.inputs[ctx.options.get("patches", "extract")]).with_splits(ctx.datasets)
    rows, labels = pretraining_set(store, cfg.uses_cls_train)
    device = ctx.device
    # the store stays resident on the device as uint16; batches are gathered and augmented there
    data16 = resident_store(store, device)
    rows_dev = torch.as_tensor(rows.copy(), device=device)
    targets = torch.as_tensor(labels, device=device)
    p = build_pretrainer(cfg, heads, device, n_global=mc.n_global)
    batch, steps = steps_per_epoch(cfg, len(rows))
    total, step, first = cfg.epochs * steps, 0, 0
    gen = ctx.torch_generator("pretrain", device=device)
    resume = ctx.resumer()                   # continue an interrupted pretraining (bench.checkpoint)
    parts, gens = {"model": p.model, "opt": p.opt}, {"pretrain": gen}
    if p.queue is not None:
        parts["queue"] = p.queue              # the SwAV queue's projections and fill count resume with it
    saved = resume.load(map_location=device)
    if saved is not None:
        first, step = restore_loop(saved, parts, gens), saved["step"]
    for epoch in range(first, cfg.epochs):
        started = time.perf_counter()
        p.start_epoch(epoch)
        order = torch.randperm(len(rows), generator=gen, device=device)
        running = torch.zeros((), device=device)
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            lr = cosine_schedule(step, total, cfg.lr, warmup=cfg.warmup_epochs * steps)
            running += pretrain_step(p, data16, rows_dev[idx], targets[idx], mc, aug, gen, lr)
            step += 1
        loss = float(running) / max(steps, 1)             # the epoch's one read-back
        ctx.log("ssl_loss", loss, epoch=epoch)
        epoch_line(f"ssl pretraining ({cfg.method})", epoch, cfg.epochs, {"ssl_loss": loss},
                   time.perf_counter() - started)
        resume.save_due(lambda: loop_state(epoch, parts, gens, step=step))
    torch.save({"encoder": cfg.encoder, "state_dict": p.encoder.state_dict()}, ctx.out_dir / ENCODER_FILE)
    (ctx.out_dir / "pretrain.json").write_text(json.dumps({"patches": int(len(rows)), "steps": int(total)}))
    return {"patches": int(len(rows)), "steps": int(total)}


def _encode(encoder: nn.Module, views: list[torch.Tensor], n_global: int, channels_last: bool) -> list[torch.Tensor]:
    """Pooled features per view, one encoder pass per view resolution (globals, then locals)."""
    out: list[torch.Tensor] = []
    for group in (views[:n_global], views[n_global:]):
        if not group:
            continue
        x = torch.cat(group)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out.extend(encoder(x).chunk(len(group)))
    return out


def load_encoder(stage_dir, device: torch.device | str = "cpu") -> nn.Module:
    """The pretrained encoder saved by :func:`pretrain_stage`."""
    saved = torch.load(stage_dir / ENCODER_FILE, map_location=device, weights_only=True)
    encoder = build_encoder(saved["encoder"])
    encoder.load_state_dict(saved["state_dict"])
    return encoder.to(device)
