"""Run one stage the way the runner does (key, cache, inputs) on CPU (importable as `stage_runs`)."""
from __future__ import annotations

from pathlib import Path

import torch

from bench.stage import run_stage, stage_key


def run_cpu_stage(stage, cfg, env: tuple[Path, dict], inputs: dict[str, Path], seed: int = 0) -> Path:
    """`env` = (root folder, {role: Dataset}); the stage's cache lives under root/cache."""
    root, datasets = env
    key, material = stage_key(stage, cfg, seed, {k: v.name for k, v in inputs.items()}, {}, "cpu")
    return run_stage(stage, cache_root=root / "cache", key=key, material=material, config=cfg, seed=seed,
                     inputs=inputs, datasets=datasets, device=torch.device("cpu"))
