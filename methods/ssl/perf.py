"""`bench perf ssl`: SSL pretraining throughput against its ceiling and a conventional pipeline (issue 9).

In one process, on one device, the same architecture, loss and optimiser (one
:class:`methods.ssl.pretrain.Pretrainer` step), three feeds:

(a) ``end_to_end``: the harness's own step, :func:`methods.ssl.pretrain.pretrain_step`: the patch
    store resident on the device (uint16), batches gathered, bone-aware multi-crop and augmented
    there, bf16 autocast + channels_last on CUDA;
(b) ``model_only``: :func:`methods.ssl.pretrain.train_step` on views generated beforehand and
    already on the device (a pool of ``pool`` batches, cycled): the ceiling of (a);
(c) ``conventional``: eager fp32 (no autocast, no channels_last, no ``ssl.compile``), the views made per sample on the
    CPU with torchvision transforms (RandomResizedCrop, flips, RandomAffine rotation + translation,
    ColorJitter brightness + contrast) in a ``DataLoader`` with ``workers`` processes (default: all
    usable cores) and pinned memory, copied with ``non_blocking=True``; ``loader_only`` is that
    loader alone.

samples/s = batch / mean step time (:func:`bench.perf_timing.time_steps`: warm-up excluded, the
device synchronised before and after the timed steps). A sample is one patch (with all its views).
The data is a real patch store (``--patches DIR``, its pretraining rows) or a synthetic
store of the profile's size (:func:`synthetic_store`: the public phantom's images × 7 bones, each a
textured ellipse on a zero background, so bone-aware rejection sampling does realistic work).
Conventional views of sample i are a function of (seed, i) only (the global RNG is forked and
seeded per sample), so they do not depend on the worker that made them.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bench.config import Config
from bench.errors import BenchError
from bench.hardware import usable_cores
from bench.perf_timing import device_name, seeded_build, time_steps
from bench.stage import derive_seed
from methods.augment import AugmentConfig
from methods.multicrop import MultiCropConfig
from methods.patch_store import PatchStore
from methods.ssl.config import SSLConfig
from methods.ssl.pretrain import build_pretrainer, gather, pretrain_step, pretraining_set, train_step
from methods.views import make_views

UINT16_MAX = 65535
FEEDS = ("end_to_end", "model_only", "conventional")


def synthetic_store(n: int, size: int, seed: int = 0) -> np.ndarray:
    """N × size × size uint16 bone-like patches: a rotated textured ellipse per patch, zeros outside."""
    if n < 1 or size < 8:
        raise BenchError(f"a synthetic patch store needs n >= 1 patches of side >= 8, got n={n}, size={size}")
    gen = torch.Generator().manual_seed(seed)
    out = np.empty((n, size, size), dtype=np.uint16)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    yy, xx = coords.view(1, -1, 1), coords.view(1, 1, -1)
    for start in range(0, n, 256):
        b = min(256, n - start)
        r = torch.rand(b, 6, generator=gen).view(b, 6, 1, 1)
        angle = r[:, 0] * math.pi
        major, minor = 0.30 + 0.15 * r[:, 1], 0.07 + 0.13 * r[:, 2]
        cy, cx = 0.1 * (r[:, 3] - 0.5), 0.1 * (r[:, 4] - 0.5)
        u = (xx - cx) * torch.cos(angle) + (yy - cy) * torch.sin(angle)
        v = -(xx - cx) * torch.sin(angle) + (yy - cy) * torch.cos(angle)
        inside = (u / major) ** 2 + (v / minor) ** 2 <= 1.0
        texture = 0.3 + 0.4 * r[:, 5] + 0.1 * torch.rand(b, size, size, generator=gen)
        patch = torch.where(inside, texture.clamp(1 / UINT16_MAX, 1.0), torch.zeros(()))
        out[start:start + b] = (patch * UINT16_MAX).round().to(torch.int32).numpy().astype(np.uint16)
    return out


# --------------------------------------------------------------------------- conventional pipeline
def conventional_transform(size: int, scale: tuple[float, float], ratio: tuple[float, float], aug: AugmentConfig):
    """torchvision per-sample transform of one view (float 1×P×P in [0, 1] → 1×size×size)."""
    from torchvision.transforms import v2 as T

    return T.Compose([
        T.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True),
        T.RandomHorizontalFlip(aug.hflip_p),
        T.RandomVerticalFlip(aug.vflip_p),
        T.RandomAffine(degrees=aug.rotation_deg, translate=(aug.translate, aug.translate)),
        T.ColorJitter(brightness=tuple(aug.brightness), contrast=tuple(aug.contrast)),
    ])


class ConventionalViews(Dataset):
    """Per-sample multi-crop views on the CPU (module docstring, (c)); item i → (views, label)."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, labels: np.ndarray, mc: MultiCropConfig,
                 aug: AugmentConfig, seed: int = 0):
        self.array, self.rows, self.labels, self.seed = array, np.asarray(rows), np.asarray(labels), seed
        self.n_global, self.n_local = mc.n_global, mc.n_local
        self.global_tf = conventional_transform(mc.global_size, mc.global_scale, mc.ratio, aug)
        self.local_tf = conventional_transform(mc.local_size, mc.local_scale, mc.ratio, aug)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[list[torch.Tensor], int]:
        x = torch.from_numpy(np.asarray(self.array[self.rows[i]], dtype=np.float32) / UINT16_MAX).unsqueeze(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "conventional", int(i)))
            views = [self.global_tf(x) for _ in range(self.n_global)] + [self.local_tf(x) for _ in range(self.n_local)]
        return views, int(self.labels[i])


def conventional_loader(dataset: ConventionalViews, batch: int, workers: int, pin: bool, seed: int = 0) -> DataLoader:
    """Shuffled, full batches, `workers` processes (0: in this process), pinned memory when asked."""
    return DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                      pin_memory=pin, persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),
                      prefetch_factor=4 if workers > 0 else None)


def _forever(loader: DataLoader):
    while True:
        yield from loader


# --------------------------------------------------------------------------- benchmark
def _steady_epoch(cfg: SSLConfig) -> int:
    """An epoch past SwAV's early phases: prototypes trainable and the queue (``ssl.swav_queue``) in use once full."""
    return max(cfg.swav_freeze_epochs, cfg.swav_queue_start if cfg.swav_queue else 0)


def _result(step_s: float, batch: int, steps: int) -> dict[str, float]:
    return {"step_ms": step_s * 1e3, "samples_per_s": batch / step_s, "steps": steps}


def benchmark_ssl(config: Config, device: torch.device | str, *, batch: int = 128, steps: int = 10, warmup: int = 3,
                  store: PatchStore | None = None, n_patches: int = 0, workers: int | None = None, pool: int = 2,
                  seed: int = 0, feeds: tuple[str, ...] = FEEDS) -> dict[str, Any]:
    """Measure the `feeds` (module docstring) with ``config.ssl`` / ``multicrop`` / ``augment`` / ``heads``."""
    cfg, mc, aug = config.ssl, config.multicrop, config.augment
    device = torch.device(device)
    if batch < 2 or steps < 1 or warmup < 0 or pool < 1:
        raise BenchError(f"bench perf ssl needs batch >= 2, steps >= 1, warmup >= 0, pool >= 1; got batch={batch}, "
                         f"steps={steps}, warmup={warmup}, pool={pool}")
    unknown = set(feeds) - set(FEEDS)
    if unknown:
        raise BenchError(f"unknown feeds {sorted(unknown)}; choose from end_to_end, model_only, conventional")
    if store is not None:
        rows, labels = pretraining_set(store, cfg.method == "supcon")
        array, source = store.array, f"patch store {store.root}"
    else:
        array = synthetic_store(n_patches, config.patches.patch_size, seed)
        rows, labels = np.arange(len(array)), np.full(len(array), -1, dtype=np.int64)
        source = f"synthetic store of {len(array)} patches"
    if len(rows) < batch:
        raise BenchError(f"{source} has {len(rows)} usable patches, fewer than the batch of {batch}; "
                         "lower --batch-size or use a larger store")
    out: dict[str, Any] = {"device": device_name(device), "method": cfg.method, "encoder": cfg.encoder,
                           "batch": batch, "source": source, "patch_size": int(array.shape[-1]),
                           "views": f"{mc.n_global}x{mc.global_size} + {mc.n_local}x{mc.local_size}"}
    gen = torch.Generator(device=device).manual_seed(seed)
    lr = cfg.lr
    if {"end_to_end", "model_only"} & set(feeds):
        p = seeded_build(lambda: build_pretrainer(cfg, config.heads, device, n_global=mc.n_global), seed)
        p.start_epoch(_steady_epoch(cfg))                   # SwAV prototypes trainable (queue on), as after warm-up
        data16 = torch.from_numpy(np.require(array, requirements=["C", "W"])).to(device).view(torch.int16)
        rows_dev = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device)
        targets = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
        order = torch.randperm(len(rows), generator=gen, device=device)
        per_epoch = len(rows) // batch

        def idx(i: int) -> torch.Tensor:
            s = i % per_epoch
            return order[s * batch:(s + 1) * batch]

        if "end_to_end" in feeds:
            if cfg.compile != "off":                        # the first step compiles: timed on its own
                out["first_step_s"] = time_steps(lambda i: pretrain_step(p, data16, rows_dev[idx(i)], targets[idx(i)],
                                                                         mc, aug, gen, lr), 1, 0, device)
            step_s = time_steps(lambda i: pretrain_step(p, data16, rows_dev[idx(i)], targets[idx(i)], mc, aug, gen, lr),
                                steps, warmup, device)
            out["end_to_end"] = _result(step_s, batch, steps)
        if "model_only" in feeds:
            ready = [(make_views(gather(data16, rows_dev[idx(k)]), mc, aug, cfg.crop_policy, gen), targets[idx(k)])
                     for k in range(pool)]
            step_s = time_steps(lambda i: train_step(p, *ready[i % pool], lr, mc.n_global), steps, warmup, device)
            out["model_only"] = _result(step_s, batch, steps)
            del ready
        del p, data16
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "conventional" in feeds:
        workers = usable_cores() if workers is None else workers
        out.update(_conventional(config, device, array, rows, labels, batch, steps, warmup, workers, seed, lr))
    if "end_to_end" in out and "model_only" in out:
        out["end_to_end_over_model_only"] = out["end_to_end"]["samples_per_s"] / out["model_only"]["samples_per_s"]
    if "end_to_end" in out and "conventional" in out:
        out["end_to_end_over_conventional"] = out["end_to_end"]["samples_per_s"] / out["conventional"]["samples_per_s"]
    return out


def _conventional(config: Config, device: torch.device, array: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                  batch: int, steps: int, warmup: int, workers: int, seed: int, lr: float) -> dict[str, Any]:
    """(c) and the loader alone: eager fp32 fed by per-sample CPU transforms in a DataLoader."""
    mc = config.multicrop
    dataset = ConventionalViews(array, rows, labels, mc, config.augment, seed)
    pin = device.type == "cuda"
    loader = conventional_loader(dataset, batch, workers, pin, seed)
    batches = _forever(loader)
    loader_s = time_steps(lambda i: next(batches), steps, warmup, "cpu")
    eager = dataclasses.replace(config.ssl, compile="off")
    p = seeded_build(lambda: build_pretrainer(eager, config.heads, device, fast=False, n_global=mc.n_global), seed)
    p.start_epoch(_steady_epoch(eager))

    def step(i: int) -> torch.Tensor:
        views, y = next(batches)
        views = [v.to(device, non_blocking=True) for v in views]
        return train_step(p, views, y.to(device, non_blocking=True), lr, mc.n_global)

    step_s = time_steps(step, steps, warmup, device)
    return {"conventional": {**_result(step_s, batch, steps), "workers": workers, "pinned": pin},
            "loader_only": {**_result(loader_s, batch, steps), "workers": workers}}


def perf_ssl(profile: str, device: str, *, batch: int | None = None, steps: int = 10, warmup: int = 3,
             method: str = "simclr", patches: str | None = None, workers: int | None = None,
             sets: dict | None = None, feeds: tuple[str, ...] = FEEDS) -> dict[str, Any]:
    """`bench perf ssl`: runs :func:`benchmark_ssl` at the profile's config and prints each feed and the ratios."""
    from bench.config import resolve
    from bench.data.phantom import PhantomConfig
    from bench.data.format import BONES
    from bench.hardware import resolve_device

    dev = resolve_device(device)
    config = resolve(profile, sets={**(sets or {}), "ssl.method": method})
    batch = batch or config.ssl.batch_size
    store = PatchStore.open(patches) if patches else None
    n = 0 if store is not None else PhantomConfig.for_preset("public", profile).n_images * len(BONES)
    r = benchmark_ssl(config, dev, batch=batch, steps=steps, warmup=warmup, store=store, n_patches=n, workers=workers,
                      feeds=feeds)
    compiled = f", encoder compiled ({config.ssl.compile})" if config.ssl.compile != "off" else ""
    print(f"SSL pretraining step, profile {profile}, {r['method']} {r['encoder']}{compiled}, batch {r['batch']}, "
          f"views {r['views']}, {r['source']} ({r['patch_size']} px), {steps} timed steps after {warmup} warm-up, "
          f"device {r['device']}")
    if "first_step_s" in r:
        print(f"  first step (compiles the encoder, (a) and (b)) {r['first_step_s']:.1f} s")
    labels = {"end_to_end": "(a) harness end to end", "model_only": "(b) model-only ceiling",
              "conventional": "(c) conventional fp32", "loader_only": "    its loader alone"}
    for key, label in labels.items():
        if key not in r:
            continue
        m = r[key]
        extra = f", {m['workers']} workers" if "workers" in m else ""
        print(f"  {label:26s} {m['step_ms']:9.1f} ms/step {m['samples_per_s']:9.1f} samples/s{extra}")
    ratios = [f"{name} = {r[key]:.{digits}f}" for name, key, digits in (("a/b", "end_to_end_over_model_only", 3),
                                                                         ("a/c", "end_to_end_over_conventional", 2))
              if key in r]
    if ratios:
        print("  " + "   ".join(ratios))
    return r
