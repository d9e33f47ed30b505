"""Cross-process locks for the shared stage cache (issue 11).

Convention: the content-addressed stage cache (bench.stage) is the meeting point of concurrent
runs, whether they are Ray tasks on several nodes, several `bench run` processes, or one process.
A stage key is computed under an exclusive lock file ``<cache>/.locks/<stage>-<key>.lock``: the
first holder computes, every other holder blocks on the lock, then finds the finished folder
(``_stage.json`` present) and reuses it. Phantom generation holds ``<cache>/.locks/phantom.lock``.

The lock is POSIX ``fcntl.flock`` on a file of the results folder, so it is as shared as that
folder: exclusive across the processes of one machine, and across machines on NFSv4 (or NFSv3 with
lockd), where Linux maps ``flock`` to byte-range locks. A lock dies with its process, so a
crashed holder never blocks the others.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

try:  # POSIX; elsewhere one process per results folder is assumed and the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

LOCK_DIR = ".locks"
LOCKS_WORK = fcntl is not None   # False where file locks are no-ops


def lock_path(cache_root: Path, name: str) -> Path:
    """``<cache_root>/.locks/<name>.lock``."""
    return Path(cache_root) / LOCK_DIR / f"{name}.lock"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, waiting: str = "", wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive lock on `path` (created if missing) for the duration of the block and yield
    True. When another process holds it: with `wait`, say so on stderr first (`waiting`: what it is
    doing) and wait; without, yield False at once (the block then runs without the lock)."""
    path = Path(path)
    if fcntl is None:  # pragma: no cover
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if waiting:
                print(f"bench: waiting for another process {waiting} (lock {path})", file=sys.stderr, flush=True)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def stage_lock(cache_root: Path, stage: str, key: str):
    """The lock of one stage key (module docstring)."""
    return file_lock(lock_path(cache_root, f"{stage}-{key}"), waiting=f"computing stage {stage} ({key})")


def run_lock(cache_root: Path, suite: str, entry: str, seed: int):
    """The lock around writing one run's results folder (or its failure record): two processes that
    finish the same (suite, entry, seed) write it one after the other, never into each other's rename."""
    return file_lock(lock_path(cache_root, f"run-{suite}-{entry}-seed{int(seed)}"))


def data_lock(cache_root: Path):
    """The lock around generating (or checking) the cached phantom datasets."""
    return file_lock(lock_path(cache_root, "phantom"), waiting="generating or checking the cached phantoms")
