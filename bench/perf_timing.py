"""Measuring instruments of the benchmarks (`bench perf`, issue 9): timed steps and :class:`Measurer`.

Timing convention (:func:`time_steps`): warm-up calls excluded, the device synchronised once
before and once after the timed calls (the harness never synchronises inside its steps), the
mean time per call.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from torch import nn

from bench.errors import BenchError
from bench.hardware import usable_cores

T = TypeVar("T")


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA only; a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def device_name(device: Any) -> str:
    """Human-readable name of the device: the GPU's name, or the CPU with its usable cores and threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU ({usable_cores()} cores, {torch.get_num_threads()} torch threads)"


def time_steps(step: Callable[[int], Any], steps: int, warmup: int, device: Any) -> float:
    """Mean seconds per call of ``step(i)`` over `steps` timed calls after `warmup` untimed ones."""
    if steps < 1 or warmup < 0:
        raise BenchError(f"time_steps needs steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    for i in range(warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    return (time.perf_counter() - start) / steps


def seeded_build(build: Callable[[], T], seed: int = 0) -> T:
    """``build()`` with its initialisation drawn from a seeded fork of the global RNG (left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class Measurer:
    """Measuring instruments of one `bench perf suite` run; results cached by key (a configuration's repr).

    ``train_step_s``: a training step of a network on random inputs (Adam foreach; bf16 autocast
    and channels_last on CUDA, the harness's rule); ``forward_s``: an eval forward per sample;
    ``per_image_s``: CPU work per radiograph on one phantom image of a preset written to a temp folder.
    """

    def __init__(self, device: Any, steps: int = 3, warmup: int = 1):
        self.device, self.steps, self.warmup = torch.device(device), steps, warmup
        self._memo: dict[Any, Any] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-perf-")

    def cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    def time(self, step: Callable[[int], Any], device: Any = None) -> float:
        return time_steps(step, self.steps, self.warmup, device or self.device)

    # ------------------------------------------------------------------ networks
    def train_step_s(self, key: Any, build: Callable[[], nn.Module], sample: tuple[int, ...], batch: int,
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                     target: Callable[[int], torch.Tensor] | None = None, lr: float = 1e-4) -> float:
        """Seconds per step of Adam (foreach) on random inputs B×sample, bf16 autocast + channels_last on CUDA."""
        def measure() -> float:
            dev, cuda = self.device, self.device.type == "cuda"
            gen = torch.Generator(device=dev).manual_seed(0)
            model = seeded_build(build).to(dev)
            if cuda:
                model = model.to(memory_format=torch.channels_last)
            model.train()
            opt = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
            x = torch.rand(batch, *sample, generator=gen, device=dev)
            if cuda and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = target(batch).to(dev) if target else torch.randint(0, 2, (batch,), generator=gen, device=dev)
            fn = loss_fn or nn.functional.cross_entropy

            def step(_: int) -> None:
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
                    out = model(x)
                loss = fn(out.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            return self.time(step)
        return self.cached(("train", key, sample, batch), measure)

    def forward_s(self, key: Any, build: Callable[[], nn.Module], sample: tuple[int, ...], batch: int) -> float:
        """Seconds per *sample* of an eval forward at `batch` (no_grad, the same autocast rule)."""
        def measure() -> float:
            dev, cuda = self.device, self.device.type == "cuda"
            model = seeded_build(build).to(dev).eval()
            if cuda:
                model = model.to(memory_format=torch.channels_last)
            x = torch.rand(batch, *sample, generator=torch.Generator(device=dev).manual_seed(0), device=dev)

            @torch.no_grad()
            def step(_: int) -> None:
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda):
                    model(x)
            return self.time(step) / batch
        return self.cached(("forward", key, sample, batch), measure)

    # ------------------------------------------------------------------ per-image CPU work
    def case_files(self, preset: str, profile: str) -> tuple[Path, Path, float]:
        """One phantom radiograph of `preset` at `profile` written as PNG + exact label map (cached)."""
        def make() -> tuple[Path, Path, float]:
            from bench.data.imageio import write_label_map, write_png16
            from bench.data.phantom import PhantomConfig, dataset_styles, make_case

            cfg = PhantomConfig.for_preset(preset, profile)
            case = make_case(cfg, 0, 0, dataset_styles(cfg, 0))
            img, lab = Path(self._tmp.name) / f"{preset}.png", Path(self._tmp.name) / f"{preset}-labels.png"
            write_png16(img, case.rendering.image)
            write_label_map(lab, case.rendering.truth)
            return img, lab, cfg.pixel_spacing_mm
        return self.cached(("case", preset, profile), make)

    def per_image_s(self, key: Any, preset: str, profile: str,
                    work: Callable[[np.ndarray, np.ndarray, float], Any], threads: int = 1) -> float:
        """Seconds per image of read image + read label map + work(image, labels, spacing), on the CPU;
        with `threads` > 1, `threads` images at once in a thread pool (the stage's own loading), so the
        result is the wall time of one round divided by `threads`."""
        from concurrent.futures import ThreadPoolExecutor

        from bench.data.imageio import read_image, read_label_map

        img, lab, spacing = self.case_files(preset, profile)

        def one(_: Any = None) -> Any:
            return work(read_image(img).pixels, read_label_map(lab), spacing)

        def measure() -> float:
            if threads <= 1:
                return self.time(one, "cpu")
            with ThreadPoolExecutor(threads) as pool:
                return self.time(lambda _: list(pool.map(one, range(threads))), "cpu") / threads
        return self.cached(("image", key, preset, profile, threads), measure)
