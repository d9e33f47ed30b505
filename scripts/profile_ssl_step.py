"""Where the end-to-end SSL step loses time against the model-only ceiling (issue 9 diagnostics, CUDA).

    python scripts/profile_ssl_step.py [--patches N] [--steps N]

Prints, at the paper profile (SimCLR, ResNet-50, batch 128, 2x224 + 4x96):
* (a) end to end, (b) model only, (v) the views alone, and (a') end to end with the views of step
  i+1 made on a side CUDA stream while step i trains;
* host enqueue time vs total time of one step of (a) and (b) (enqueue >= total means CPU-bound);
* host synchronisations inside one (a) step (``torch.cuda.set_sync_debug_mode``);
* the top CUDA kernels of (a) by device time (torch.profiler).
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from bench.config import resolve
from bench.perf_timing import seeded_build, time_steps
from methods.ssl.perf import synthetic_store
from methods.ssl.pretrain import build_pretrainer, gather, pretrain_step, train_step
from methods.views import make_views


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--views-kernels", action="store_true", help="only the top kernels of making the views")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("profile_ssl_step.py: no CUDA device here; pass --device cpu (and e.g. --profile smoke)")
    config = resolve(args.profile, sets={"ssl.method": "simclr"})
    cfg, mc, aug = config.ssl, config.multicrop, config.augment
    array = synthetic_store(args.patches, config.patches.patch_size)
    data16 = torch.from_numpy(np.require(array, requirements=["C", "W"])).to(dev).view(torch.int16)
    p = seeded_build(lambda: build_pretrainer(cfg, config.heads, dev))
    p.start_epoch(cfg.swav_freeze_epochs)
    gen = torch.Generator(device=dev).manual_seed(0)
    batch, n = cfg.batch_size, len(array)
    order = torch.randperm(n, generator=gen, device=dev)
    targets = torch.full((n,), -1, dtype=torch.long, device=dev)

    def idx(i: int) -> torch.Tensor:
        s = i % (n // batch)
        return order[s * batch:(s + 1) * batch]

    def views(i: int) -> list[torch.Tensor]:
        return make_views(gather(data16, idx(i)), mc, aug, cfg.crop_policy, gen)

    def step_a(i: int) -> torch.Tensor:
        return pretrain_step(p, data16, idx(i), targets[idx(i)], mc, aug, gen, cfg.lr)

    if args.views_kernels:
        from torch.profiler import ProfilerActivity, profile
        for i in range(3):
            views(i)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(5):
                views(i)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))
        return
    pool = [(views(k), targets[idx(k)]) for k in range(2)]

    def step_b(i: int) -> torch.Tensor:
        return train_step(p, *pool[i % 2], cfg.lr, mc.n_global)

    side, main_stream = (torch.cuda.Stream(), torch.cuda.current_stream()) if cuda else (None, None)
    ahead: dict[int, tuple[list[torch.Tensor], torch.cuda.Event]] = {}

    def produce(i: int) -> None:
        side.wait_stream(main_stream)
        with torch.cuda.stream(side):
            v = views(i)
            ev = torch.cuda.Event()
            ev.record(side)
        ahead[i] = (v, ev)

    def step_prefetch(i: int) -> torch.Tensor:
        if i not in ahead:
            produce(i)
        v, ev = ahead.pop(i)
        main_stream.wait_event(ev)
        for t in v:
            t.record_stream(main_stream)
        produce(i + 1)
        return train_step(p, v, targets[idx(i)], cfg.lr, mc.n_global)

    w = 5
    res = {"a end to end": time_steps(step_a, args.steps, w, dev),
           "b model only": time_steps(step_b, args.steps, w, dev),
           "v views only": time_steps(views, args.steps, w, dev),
           }
    if cuda:
        res["a' side-stream views"] = time_steps(step_prefetch, args.steps, w, dev)
    ahead.clear()
    print(f"device {torch.cuda.get_device_name() if cuda else 'cpu'}, batch {batch}, {args.steps} steps after {w} warm-up")
    for k, s in res.items():
        print(f"  {k:22s} {s * 1e3:8.1f} ms/step {batch / s:8.1f} samples/s")

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for name, fn in (("a", step_a), ("b", step_b)):
        sync()
        t0 = time.perf_counter()
        fn(0)
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        print(f"  one step of ({name}): host enqueue {(t1 - t0) * 1e3:.1f} ms, total {(t2 - t0) * 1e3:.1f} ms")

    if not cuda:
        return
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step_a(1)
    torch.cuda.set_sync_debug_mode("default")
    syncs = [str(c.message)[:160] for c in caught if "synchroniz" in str(c.message)]
    print(f"  host synchronisations in one (a) step: {len(syncs)}")
    for s in syncs[:5]:
        print("    ", s)

    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(3):
            with torch.profiler.record_function("views"):
                v = views(i)
            with torch.profiler.record_function("train"):
                train_step(p, v, targets[idx(i)], cfg.lr, mc.n_global)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
