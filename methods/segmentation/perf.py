"""`bench perf seg`: segmentation training step time at batch 16 and the share of the OT solve.

Runs :func:`methods.segmentation.train.train_step` (the training loop's own step: augmentation,
forward, soft-IoU costs, relaxed OT plan, eq. 7 loss, backward, Adam) on a synthetic batch at the
profile's working canvas and times it with device synchronisation. With ``segmentation.compile``
the backbone and head are compiled as in training, and the first (warm-up) step's time, which
includes the compilation, is reported as ``first_step_s``. The OT solve is timed inside
the step by wrapping ``methods.segmentation.ot.relaxed_couplings`` (the host-side LP solves of the
B couplings, after the cost's copy to the host); its share is solve time / step time.

Memory: the peak of one step after the timed ones, ``torch.cuda.max_memory_allocated`` on a GPU
(what the tensors need, the allocator's cache excluded) and on a Linux CPU the process's peak
resident set during the step (VmHWM after resetting it through /proc/self/clear_refs; it includes
the model, the batch and the interpreter; the freed memory glibc keeps for reuse, bench.allocator, is
handed back first). ``segmentation.micro_batch`` lowers it.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable, Iterator

import torch

from bench.config import resolve
from methods.segmentation import ot
from methods.segmentation.config import SegmentationConfig
from methods.segmentation.train import compile_model, make_optimizer, make_spec, train_step
from methods.segmentation.model import build_model

#: canvas aspect (width / height) of the public phantom's radiographs, used when the config says 0.
DEFAULT_ASPECT = 0.64


@contextlib.contextmanager
def timed_solver(times: list[float]) -> Iterator[None]:
    """Record the wall time of every relaxed_couplings call made by ot_loss while active."""
    original = ot.relaxed_couplings

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    ot.relaxed_couplings = wrapper
    try:
        yield
    finally:
        ot.relaxed_couplings = original


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _read_vm_hwm() -> int | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_memory_bytes(device: torch.device, step: Callable[[], object]) -> int | None:
    """Peak memory of running `step` once (module docstring); None where it cannot be read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    from bench.allocator import release_free_memory

    release_free_memory()                     # memory kept for reuse (bench.allocator) is not the step's
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")                      # resets VmHWM to the current resident set (Linux >= 4.0)
    except OSError:
        return None
    step()
    return _read_vm_hwm()


def benchmark_seg_step(cfg: SegmentationConfig, device: torch.device | str, batch: int = 16, steps: int = 10,
                       warmup: int = 3, annotators: int = 3, seed: int = 0) -> dict:
    """Median step time (ms), images/s and the OT solve's share of the step for one config."""
    device = torch.device(device)
    aspect = cfg.canvas_aspect or DEFAULT_ASPECT
    rows = cfg.working_size
    canvas = (rows, max(8, int(round(rows * aspect / 8)) * 8))
    model = build_model(make_spec(cfg, canvas, 8), seed=seed).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    compiled = compile_model(model, cfg.compile)
    model.train()
    opt = make_optimizer(model, cfg)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    x = torch.rand(batch, 1, *canvas, generator=gen, device=device)
    y = torch.randint(0, 8, (batch, annotators, *canvas), generator=gen, device=device, dtype=torch.uint8)
    beta = torch.full((batch, annotators), 1.0 / annotators, device=device)
    step_s, solve_s, first_step_s = [], [], None
    for i in range(warmup + steps):
        solves: list[float] = []
        _sync(device)
        start = time.perf_counter()
        with timed_solver(solves):
            train_step(model, opt, cfg, x, y, beta, gamma=cfg.gamma0, g_aug=gen, g_z=gen)
        _sync(device)
        if i == 0:
            first_step_s = time.perf_counter() - start          # with segmentation.compile: the compilation
        if i >= warmup:
            step_s.append(time.perf_counter() - start)
            solve_s.append(sum(solves))
    step = statistics.median(step_s)
    solve = statistics.median(solve_s)
    peak = peak_memory_bytes(device, lambda: train_step(model, opt, cfg, x, y, beta, gamma=cfg.gamma0, g_aug=gen,
                                                        g_z=gen))
    return {"model": cfg.model, "micro_batch": cfg.micro_batch or batch, "peak_memory_bytes": peak,
            "canvas": list(canvas), "batch": batch, "samples_per_image": cfg.experts * cfg.samples,
            "step_ms": step * 1e3, "images_per_s": batch / step, "ot_solve_ms": solve * 1e3,
            "ot_share": solve / step if cfg.model == "mose" else 0.0, "solver": cfg.ot_solver,
            "parameters": sum(p.numel() for p in model.parameters()), "compile": compiled,
            "first_step_s": first_step_s}


def perf_seg(profile: str, device: str, batch: int = 16, steps: int = 10, sets: dict | None = None) -> list[dict]:
    """`bench perf seg`: the MoSE step with both OT solvers and the single-decoder step; prints a table."""
    import methods.segmentation.config  # noqa: F401  (registers the section)

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    seg = resolve(profile, sets=sets or {}).segmentation
    passes = f" in micro-batches of {seg.micro_batch}" if 0 < seg.micro_batch < batch else ""
    compiled = f", segmentation.compile={seg.compile}" if seg.compile != "off" else ""
    print(f"segmentation training step, profile {profile}, batch {batch}{passes}{compiled}, {steps} timed steps, "
          f"device {name}")
    rows = []
    for variant in ({"segmentation.ot_solver": "exact"}, {"segmentation.ot_solver": "greedy"},
                    {"segmentation.model": "single"}):
        cfg = resolve(profile, sets={**(sets or {}), **variant}).segmentation
        r = benchmark_seg_step(cfg, dev, batch=batch, steps=steps)
        rows.append(r)
        label = f"{r['model']}" + (f" ({r['solver']} OT)" if r["model"] == "mose" else "")
        ot_part = (f", OT solve {r['ot_solve_ms']:.2f} ms = {100 * r['ot_share']:.2f} % of the step"
                   if r["model"] == "mose" else "")
        peak = "" if r["peak_memory_bytes"] is None else f", peak memory {r['peak_memory_bytes'] / 2**30:.2f} GiB"
        first = f", compiled ({r['compile']}), first step {r['first_step_s']:.1f} s" if r["compile"] != "off" else ""
        print(f"  {label:18s} canvas {r['canvas'][0]}x{r['canvas'][1]}: {r['step_ms']:8.1f} ms/step, "
              f"{r['images_per_s']:6.1f} images/s{ot_part}{peak}{first}")
    return rows
