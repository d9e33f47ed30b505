"""Executors of a suite's (entry, seed) runs (issue 11): ``local`` and ``ray``.

The runner (bench.runner.Runner) plans, computes and records one run (``execute_one``) and logs a
finished one to MLflow (``finish``); an executor decides where and in which order runs execute:

    local   in this process, one after another (the default; `bench run` as it always was)
    ray     each (entry, seed) a Ray task (one GPU, or CPUs on CPU-only clusters), on a local Ray
            instance or a running cluster (``--address auto | host:6379 | ray://host:10001``)

Both produce the same results layout and, for the same seeds, the same numbers: a run computes
the same stage keys with the same seeded generators wherever it executes. Shared stages meet in the
content-addressed stage cache under a lock per key (bench.executors.locking).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

from bench.errors import BenchError

if TYPE_CHECKING:  # pragma: no cover
    from bench.registry import Entry
    from bench.runner import Outcome, Runner

EXECUTORS: tuple[str, ...] = ("local", "ray")


class Executor(Protocol):
    """Runs (entry, seed) tasks of a runner; returns their outcomes in the order given."""

    name: str

    def prepare(self, runner: "Runner") -> None:
        """Adjust the runner before its configs are validated (e.g. the device a cluster offers)."""

    def execute(self, runner: "Runner", tasks: Sequence[tuple["Entry", int]]) -> list["Outcome"]:
        """Execute every task; each outcome has passed through ``runner.finish``."""

    def close(self) -> None:
        """Release what the executor started (a Ray instance it launched)."""


def make_executor(name: str, *, address: str | None = None, retries: int | None = None,
                  cpus_per_task: float = 1.0, runs_per_gpu: int = 1) -> Executor:
    """The executor called `name`; `retries` defaults to 0 for local and 1 for ray."""
    if retries is not None and retries < 0:
        raise BenchError(f"--retries must be 0 or more, got {retries}")
    if cpus_per_task <= 0:
        raise BenchError(f"--cpus-per-task must be positive, got {cpus_per_task}")
    if runs_per_gpu < 1:
        raise BenchError(f"--runs-per-gpu must be 1 or more, got {runs_per_gpu}")
    if name == "local":
        if address:
            raise BenchError("--address names a Ray cluster; it needs --executor ray")
        if runs_per_gpu != 1:
            raise BenchError("--runs-per-gpu shares a GPU between Ray tasks; it needs --executor ray (the local "
                             "executor runs one run at a time)")
        from bench.executors.local import LocalExecutor

        return LocalExecutor(retries=0 if retries is None else retries)
    if name == "ray":
        from bench.executors.ray_executor import RayExecutor

        return RayExecutor(address=address, retries=1 if retries is None else retries,
                           cpus_per_task=cpus_per_task, runs_per_gpu=runs_per_gpu)
    raise BenchError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")


def run_together(runners: Sequence["Runner"], entry_names: Sequence[str], seeds: Sequence[int]
                 ) -> list[list["Outcome"]]:
    """The runs of several runners sharing one executor (the folds of a cross-validation): submitted at
    once when the executor can (Ray's ``execute_runs``, so shared stages are produced once and the rest
    run side by side), else runner after runner. Outcomes per runner, in order."""
    executor = runners[0].active_executor() if runners else None
    if executor is None or not hasattr(executor, "execute_runs") or len(runners) < 2:
        return [r.run(entry_names, seeds) for r in runners]
    items = [(r, entry, seed) for r in runners for entry, seed in r.tasks(entry_names, seeds)]
    outcomes = executor.execute_runs(items)
    out: list[list[Outcome]] = []
    start = 0
    for r in runners:
        count = sum(1 for runner, _, _ in items if runner is r)
        out.append(outcomes[start:start + count])
        start += count
    return out


__all__ = ["EXECUTORS", "Executor", "make_executor", "run_together"]
