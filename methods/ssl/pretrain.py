"""SSL pretraining stage: encoder + projection head on bone patches (paper Fig. 4, first stage).

Data (paper "Hand X-ray datasets"): the non-missing patches of the `seg` dataset; for SupCon
(``ssl.cls_train=auto``) also the `cls` train-split patches with their subject labels, the `seg`
patches being unlabeled (−1: only their own crops are positives). The patch store is moved to the
device once (uint16); every step indexes a batch there, draws the multi-crop views (bone-aware or
conventional) and the paper's augmentations on the device, runs the encoder once per view size,
and applies the method's loss. LARC + warm-up + cosine decay; bf16 autocast and channels_last on
CUDA; the loss is read back once per epoch, not per step.
"""
from __future__ import annotations

import json

import numpy as np
import torch
from torch import nn

from bench.errors import BenchError
from bench.stage import StageContext
from methods.augment import augment
from methods.encoders import build_encoder
from methods.multicrop import multicrop
from methods.patch_store import PatchStore
from methods.ssl import config as _config  # noqa: F401  (registers the config sections)
from methods.ssl.heads import build_head
from methods.ssl.lars import LARC, LARS, cosine_schedule, param_groups, set_lr
from methods.ssl.losses import nt_xent, supcon, swav, vicreg_multicrop

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
                         "segmentation stage's eval.json and the `patches` thresholds")
    return rows, labels


def _loss(method: str, cfg, head: nn.Module, feats: list[torch.Tensor], labels: torch.Tensor, n_global: int):
    if method == "swav":
        head.prototypes.normalize()
        scores = [head(h)[1] for h in feats]
        return swav(scores, n_global=n_global, temperature=cfg.temperature, epsilon=cfg.swav_epsilon,
                    iterations=cfg.swav_iterations)
    z = [head(h) for h in feats]
    if method == "simclr":
        return nt_xent(z, cfg.temperature)
    if method == "supcon":
        return supcon(z, labels, cfg.temperature)
    return vicreg_multicrop(z, n_global=n_global, sim_coeff=cfg.vicreg_sim, std_coeff=cfg.vicreg_std,
                            cov_coeff=cfg.vicreg_cov).total


def pretrain_stage(ctx: StageContext) -> dict:
    """Stage `pretrain`: writes encoder.pt (timm name + state dict) and logs the loss per epoch."""
    cfg, mc, aug, heads = ctx.config.ssl, ctx.config.multicrop, ctx.config.augment, ctx.config.heads
    store = PatchStore.open(ctx.inputs[ctx.options.get("patches", "extract")])
    use_cls = cfg.cls_train == "always" or (cfg.cls_train == "auto" and cfg.method == "supcon")
    rows, labels = pretraining_set(store, use_cls)
    device = ctx.device
    cuda = device.type == "cuda"
    # the store stays resident as uint16; batches are gathered through the bit-identical int16 view
    # (uint16 indexing kernels are sparse on CUDA) and widened on the device
    data16 = store.tensor(device).view(torch.int16)
    rows_dev = torch.as_tensor(rows.copy(), device=device)
    targets = torch.as_tensor(labels, device=device)
    encoder = build_encoder(cfg.encoder).to(device)
    head = build_head(cfg.method, encoder.num_features, heads).to(device)
    model = nn.ModuleDict({"encoder": encoder, "head": head})
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    groups = param_groups(model, cfg.weight_decay)
    if cfg.optimizer == "adam":
        opt = torch.optim.AdamW(groups, lr=cfg.lr, foreach=True)
    else:
        opt = (LARC if cfg.optimizer == "larc" else LARS)(groups, lr=cfg.lr, momentum=0.9)
    batch = min(cfg.batch_size, len(rows))
    steps = len(rows) // batch
    if cfg.max_steps_per_epoch:
        steps = min(steps, cfg.max_steps_per_epoch)
    total, step = cfg.epochs * steps, 0
    gen = ctx.torch_generator("pretrain", device=device)
    for epoch in range(cfg.epochs):
        model.train()
        if cfg.method == "swav":
            head.prototypes.freeze_for_epoch(epoch, cfg.swav_freeze_epochs)
        order = torch.randperm(len(rows), generator=gen, device=device)
        running = torch.zeros((), device=device)
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            x = ((data16.index_select(0, rows_dev[idx]).to(torch.int32) & 0xFFFF).float() / 65535.0).unsqueeze(1)
            views = [augment(v, aug, gen) for v in multicrop(x, mc, cfg.crop_policy, gen)]
            set_lr(opt, cosine_schedule(step, total, cfg.lr, warmup=cfg.warmup_epochs * steps))
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
                feats = _encode(encoder, views, mc.n_global, cuda)
            loss = _loss(cfg.method, cfg, head, [f.float() for f in feats], targets[idx], mc.n_global)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.detach()
            step += 1
        ctx.log("ssl_loss", float(running) / max(steps, 1), epoch=epoch)
    torch.save({"encoder": cfg.encoder, "state_dict": encoder.state_dict()}, ctx.out_dir / ENCODER_FILE)
    (ctx.out_dir / "pretrain.json").write_text(json.dumps({"patches": int(len(rows)), "steps": int(total)}))
    return {"patches": int(len(rows)), "steps": int(total)}


def _encode(encoder: nn.Module, views: list[torch.Tensor], n_global: int, cuda: bool) -> list[torch.Tensor]:
    """Pooled features per view, one encoder pass per view resolution (globals, then locals)."""
    out: list[torch.Tensor] = []
    for group in (views[:n_global], views[n_global:]):
        if not group:
            continue
        x = torch.cat(group)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        out.extend(encoder(x).chunk(len(group)))
    return out


def load_encoder(stage_dir, device: torch.device | str = "cpu") -> nn.Module:
    """The pretrained encoder saved by :func:`pretrain_stage`."""
    saved = torch.load(stage_dir / ENCODER_FILE, map_location=device, weights_only=True)
    encoder = build_encoder(saved["encoder"])
    encoder.load_state_dict(saved["state_dict"])
    return encoder.to(device)
