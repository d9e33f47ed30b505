"""One line per training epoch on stderr, for logs and batch jobs where no progress bar is drawn.

Off unless the environment sets ``OSTEOBENCH_EPOCH_LINES=1`` (it is read at every line, so a test or
a job script can switch it). The lines are for people following a long run; the metrics themselves
are kept in the stage's history and MLflow either way.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping

ENV = "OSTEOBENCH_EPOCH_LINES"


def epoch_lines() -> bool:
    """Whether :func:`epoch_line` prints (``OSTEOBENCH_EPOCH_LINES`` set to anything but empty or 0)."""
    return os.environ.get(ENV, "") not in ("", "0")


def epoch_line(what: str, epoch: int, epochs: int, metrics: Mapping[str, float], seconds: float) -> None:
    """``<what> epoch <epoch+1>/<epochs>: name value, ..., <seconds> s`` on stderr when enabled."""
    if not epoch_lines():
        return
    values = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items())
    print(f"{what} epoch {epoch + 1}/{epochs}: {values}, {seconds:.2f} s", file=sys.stderr, flush=True)


__all__ = ["ENV", "epoch_line", "epoch_lines"]
