"""Process-wide torch settings of a run (the ``run`` section): threads, deterministic algorithms and
cuDNN autotuning, applied the same way by ``bench run``, ``bench tune`` and the ``bench perf``
benchmarks, so a benchmark measures the kernels a run uses.

``run.deterministic``:

* ``auto`` (default): deterministic algorithms on the CPU (where they cost nothing measurable and
  make a seed's numbers bit-identical, which the resume tests rely on); on CUDA none, and cuDNN
  autotunes its convolutions (``cudnn.benchmark``), as timm's and nnU-Net's training scripts run.
* ``true``: deterministic algorithms on every device. On CUDA this restricts cuDNN to its
  deterministic convolution kernels, fills every uninitialised allocation
  (``torch.utils.deterministic.fill_uninitialized_memory``) and still leaves ops without a
  deterministic kernel (e.g. ``grid_sample``'s backward) non-deterministic, with a warning.
* ``false``: none on any device (cuDNN autotuned on CUDA).

The settings are global to the process, so each run sets deterministic algorithms and cuDNN
autotuning both ways: a run after another in the same process does not inherit its mode
(``run.num_threads`` = 0 leaves the thread count as it is).
"""
from __future__ import annotations

from typing import Any, Literal, get_args

from bench.errors import BenchError

DeterministicMode = Literal["auto", "true", "false"]        # the type of run.deterministic (bench.config)
DETERMINISTIC_MODES: tuple[str, ...] = get_args(DeterministicMode)


def check_deterministic(mode: str) -> None:
    if mode not in DETERMINISTIC_MODES:
        raise BenchError(f"run.deterministic = {mode!r}: use one of {', '.join(DETERMINISTIC_MODES)} "
                         "(auto: deterministic algorithms on the CPU, cuDNN autotuning on CUDA)")


def deterministic_for(mode: str, device: Any) -> bool:
    """Whether `mode` asks for deterministic algorithms on `device` (module docstring)."""
    import torch

    check_deterministic(mode)
    if mode == "auto":
        return torch.device(device).type != "cuda"
    return mode == "true"


def apply_run_settings(run: Any, device: Any) -> bool:
    """Set torch's intra-op threads (``run.num_threads``, 0: leave them), deterministic algorithms and
    ``cudnn.benchmark`` for a run of config section `run` on `device`; returns whether deterministic."""
    import torch

    from bench.allocator import keep_freed_memory

    keep_freed_memory()                     # also in processes not started by the CLI (Ray workers)
    if run.num_threads:
        torch.set_num_threads(run.num_threads)
    deterministic = deterministic_for(run.deterministic, device)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic and torch.device(device).type == "cuda"
    return deterministic


__all__ = ["DETERMINISTIC_MODES", "DeterministicMode", "apply_run_settings", "check_deterministic", "deterministic_for"]
