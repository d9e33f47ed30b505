"""Resumable stages: a long training saves its state now and then, and a rerun after an interruption
(a killed process, a preempted node, a lost GPU) continues from it instead of from epoch 0.

Convention: the state lives in ``<cache>/<stage>/.<key>.resume/state.pt``, beside the stage's output
folder and keyed like it (a changed configuration never resumes another run's state), outside the
temporary folder the output is written into (which an interruption leaves behind or removes). It
is written atomically at an epoch end once ``checkpoint.minutes`` have passed since the start or
the last save (0: never), so an interruption loses at most that much work, and it is removed when
the stage completes. A loop saves everything it needs to continue bit for bit: weights, optimiser
and scheduler states, generator states, counters, the best model so far; the metrics the stage
has logged (``ctx.log``) are saved and restored with it. The setting is not part of any cache key:
saving and resuming do not change a result (tests compare resumed and uninterrupted runs).
"""
from __future__ import annotations

import io
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from bench.atomic import atomic_write_bytes

STATE_FILE = "state.pt"


def resume_dir(cache_root: Path, stage: str, key: str) -> Path:
    """Where the resumable state of stage `stage` with cache key `key` lives."""
    return Path(cache_root) / stage / f".{key}.resume"


class Resumer:
    """Loads and saves one stage's resumable state; :meth:`bench.stage.StageContext.resumer` makes it.

    ``load()`` once before the loop (None: start afresh); ``save_due(make_state)`` at every epoch end
    (calls `make_state` only when a save is due). `history` is the stage's logged-metrics list,
    saved with the state and restored in place by ``load()``.
    """

    def __init__(self, folder: Path | None, every_s: float, history: list[dict[str, Any]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.folder = None if folder is None or every_s <= 0 else Path(folder)
        self.every_s, self.history, self.clock = every_s, history, clock
        self.last = self.started = clock()
        self.earlier_s = 0.0        # seconds the loaded state cost its earlier attempts (up to their last save)

    @property
    def path(self) -> Path | None:
        return None if self.folder is None else self.folder / STATE_FILE

    def load(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The saved state (its tensors on `map_location`), or None when there is none."""
        import torch

        if self.path is None or not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location=map_location, weights_only=False)
        except Exception as exc:   # a state from another version, or a disk error: start afresh, say so
            import warnings

            warnings.warn(f"ignoring the unreadable resumable state {self.path}: {exc}", stacklevel=2)
            return None
        if self.history is not None:
            self.history[:] = saved.get("history", [])
        self.earlier_s = float(saved.get("seconds", 0.0))
        self.last = self.clock()
        epoch = saved["state"].get("epoch") if isinstance(saved["state"], dict) else None
        done = f"epoch {epoch + 1}" if isinstance(epoch, int) else "its last epoch"   # counted from 1, as epoch lines
        print(f"resuming from the state saved after {done} in {self.folder}", file=sys.stderr)
        return saved["state"]

    def save_due(self, make_state: Callable[[], dict[str, Any]]) -> bool:
        """Save ``make_state()`` when ``checkpoint.minutes`` have passed since the last save; True if saved."""
        if self.path is None or self.clock() - self.last < self.every_s:
            return False
        self.save(make_state())
        return True

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` (and the logged metrics, and the seconds the state has cost: the earlier attempts'
        and this one's so far) atomically."""
        import torch

        if self.path is None:
            return
        buf = io.BytesIO()
        torch.save({"state": state, "history": list(self.history or []),
                    "seconds": self.earlier_s + self.clock() - self.started}, buf)
        atomic_write_bytes(self.path, buf.getvalue())
        self.last = self.clock()

    def clear(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def loop_state(epoch: int, parts: dict[str, Any], generators: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The resumable state of a training loop after `epoch`: the ``state_dict()`` of every part (model,
    optimiser, schedulers), the generators' states, the global CPU RNG state, the global CUDA RNG
    states when CUDA is in use (dropout and other global draws on the GPU) and `extra` values."""
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return {"epoch": epoch, "parts": {name: part.state_dict() for name, part in parts.items()},
            "generators": generator_states(**generators), "torch_rng": torch.get_rng_state(), "cuda_rng": cuda,
            **extra}


def restore_loop(saved: dict[str, Any], parts: dict[str, Any], generators: dict[str, Any]) -> int:
    """Put what :func:`loop_state` saved back into `parts` and `generators`; the epoch to start from."""
    import torch

    for name, part in parts.items():
        part.load_state_dict(saved["parts"][name])
    restore_generators(saved["generators"], **generators)
    torch.set_rng_state(saved["torch_rng"].cpu())      # a CPU state, whatever the map_location of the load
    cuda = saved.get("cuda_rng")
    if cuda and torch.cuda.is_available():
        states = [s.cpu() for s in cuda][:torch.cuda.device_count()]
        for index, state in enumerate(states):
            torch.cuda.set_rng_state(state, index)
    return int(saved["epoch"]) + 1


def generator_states(**generators: Any) -> dict[str, Any]:
    """``get_state()`` of each torch.Generator by name (CPU byte tensors, also for CUDA generators)."""
    return {name: g.get_state() for name, g in generators.items()}


def restore_generators(states: dict[str, Any], **generators: Any) -> None:
    """Put back what :func:`generator_states` saved."""
    for name, g in generators.items():
        g.set_state(states[name].cpu())


__all__ = ["Resumer", "loop_state", "restore_loop", "resume_dir", "generator_states", "restore_generators", "STATE_FILE"]
