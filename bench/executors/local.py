"""The local executor: every (entry, seed) in this process, one after another, in the order given."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from bench.registry import Entry
    from bench.runner import Outcome, Runner


class LocalExecutor:
    """Sequential execution with a progress bar per run (and its current stage)."""

    name = "local"

    def __init__(self, retries: int = 0):
        self.retries = retries            # extra attempts of a failed run (0: a failure is final)

    def prepare(self, runner: "Runner") -> None:
        return None

    def execute(self, runner: "Runner", tasks: Sequence[tuple["Entry", int]]) -> list["Outcome"]:
        from tqdm.auto import tqdm

        outcomes: list[Outcome] = []
        bar = tqdm(total=len(tasks), disable=not runner.progress, unit="run", desc=f"suite {runner.suite}",
                   file=sys.stderr)
        for entry, seed in tasks:
            bar.set_postfix_str(f"{entry.name} seed{seed}")
            outcome = runner.execute_one(entry, seed, bar)
            attempt = 1
            while outcome.status == "failed" and attempt <= self.retries:
                attempt += 1
                bar.write(f"retrying {entry.name} seed{seed} (attempt {attempt}) after: {outcome.error}",
                          file=sys.stderr)
                outcome = runner.execute_one(entry, seed, bar)
            outcome.attempts = attempt
            outcomes.append(runner.finish(outcome))
            bar.update(1)
        bar.close()
        return outcomes

    def close(self) -> None:
        return None
