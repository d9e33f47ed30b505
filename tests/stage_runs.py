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


#: `--set` overrides of a tiny full-method run (simclr) at the smoke profile: the smoke U-Net trained
#: for 6 epochs on a 64-row canvas starts learning the bones (a 2-epoch model predicts almost none,
#: and its patches came from noise); its bones are poor, so patches.min_confidence=0 keeps enough of
#: them for the probe; one SSL step and a 5-epoch probe.
TINY_FULL_METHOD = ["segmentation.working_size=64", "segmentation.epochs=6", "segmentation.figures=0",
                    "segmentation.eval_splits=", "patches.figure_images=0", "patches.min_confidence=0",
                    "ssl.epochs=1", "ssl.max_steps_per_epoch=1", "ssl.batch_size=8", "probe.epochs=5"]
