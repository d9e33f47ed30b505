"""The stage cache on disk: what it holds, and removing what interrupted work left behind.

``results/cache/<stage>/`` holds, per cache key: the finished output ``<key>/`` (with
``_stage.json``), and after an interruption possibly ``.<key>.tmp-*`` (an output being written
when the process died: bench.atomic), ``.<key>.old-*`` (an output being replaced) and
``.<key>.resume/`` (a long training's resumable state: bench.checkpoint). A rerun of the same
stage resumes from the state and never reads the temporary folders, so they are garbage once no
process writes them; a stage is being written exactly while its lock is held
(bench.executors.locking), so :func:`clean` removes only what belongs to an unlocked key, holding
that key's lock while it deletes. The phantom datasets (``cache/phantom``) are data, not stages:
left as they are, except the temporary folders of an interrupted generation (under the phantom
lock) and, when asked (:func:`stale_phantoms`), the phantoms of other package or generator versions,
which no run of this version reads.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import BenchError
from bench.executors.locking import LOCK_DIR, file_lock, lock_path
from bench.stage import STAGE_MARKER

PHANTOM_DIR = "phantom"
_LEFTOVER = re.compile(r"^\.(?P<key>.+?)\.(?P<kind>tmp-.+|old-\d+|resume)$")


@dataclass
class StageUsage:
    """One stage folder's contents: counts and bytes by kind."""

    stage: str
    outputs: int = 0
    output_bytes: int = 0
    leftovers: list[Path] = field(default_factory=list)     # .<key>.tmp-* and .<key>.old-*
    leftover_bytes: int = 0
    resumable: list[Path] = field(default_factory=list)     # .<key>.resume
    resumable_bytes: int = 0


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 for what vanished meanwhile)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _kind(path: Path) -> tuple[str, str] | None:
    """(key, "tmp" | "old" | "resume") of a leftover's name, None for anything else."""
    m = _LEFTOVER.match(path.name)
    if m is None:
        return None
    kind = m["kind"]
    return m["key"], "resume" if kind == "resume" else kind.split("-", 1)[0]


def usage(cache_root: Path) -> list[StageUsage]:
    """What each stage folder under `cache_root` holds (phantom temporaries count as a `phantom` stage)."""
    cache_root = Path(cache_root)
    if not cache_root.is_dir():
        raise BenchError(f"{cache_root} is not a cache folder; give your results folder (it holds cache/)")
    out = []
    for folder in sorted(p for p in cache_root.iterdir() if p.is_dir() and p.name != LOCK_DIR):
        u = StageUsage(folder.name)
        for item in sorted(folder.iterdir()):
            kind = _kind(item)
            if kind is None:
                if (item / STAGE_MARKER).is_file() or (folder.name == PHANTOM_DIR and item.is_dir()):
                    u.outputs += 1
                    u.output_bytes += folder_bytes(item)
            elif kind[1] == "resume":
                u.resumable.append(item)
                u.resumable_bytes += folder_bytes(item)
            else:
                u.leftovers.append(item)
                u.leftover_bytes += folder_bytes(item)
        out.append(u)
    return out


def _lock_of(cache_root: Path, stage: str, key: str) -> Path:
    return lock_path(cache_root, "phantom" if stage == PHANTOM_DIR else f"{stage}-{key}")


def stale_phantoms(cache_root: Path) -> list[Path]:
    """The cached phantoms made by another osteobench or generator version (bench.data.provision names
    them by both): a run of this version generates its own and never reads these. Only folders named
    as the provision names phantoms count (``<preset>-<profile>[-seed<k>][-v<version>-<generator>]``,
    the older forms too): anything else a user put there is left alone."""
    from bench.data.phantom.presets import PRESETS, PROFILES
    from bench.data.provision import phantom_suffix

    folder = Path(cache_root) / PHANTOM_DIR
    if not folder.is_dir():
        return []
    named = re.compile(rf"^({'|'.join(map(re.escape, PRESETS))})-({'|'.join(map(re.escape, PROFILES))})"
                       r"(-seed\d+)?(-v.+)?$")
    return [p for p in sorted(folder.iterdir())
            if p.is_dir() and _kind(p) is None and named.match(p.name) and not p.name.endswith(phantom_suffix())]


def clean(cache_root: Path, resumable: bool = False, dry_run: bool = False,
          stale: bool = False) -> tuple[list[Path], list[Path], int]:
    """Remove the leftovers (and with `resumable` the resumable states) of keys nobody is writing, and
    with `stale` the :func:`stale_phantoms` while no phantom is being generated.

    Returns (removed, skipped because their stage is being written, bytes freed).
    """
    cache_root = Path(cache_root)
    removed, busy, freed = [], [], 0
    jobs = [(u.stage, item, _kind(item)[0]) for u in usage(cache_root)  # type: ignore[index]
            for item in u.leftovers + (u.resumable if resumable else [])]
    jobs += [(PHANTOM_DIR, item, "") for item in (stale_phantoms(cache_root) if stale else [])]
    for stage, item, key in jobs:
        with file_lock(_lock_of(cache_root, stage, key), wait=False) as free:
            if not free:
                busy.append(item)
                continue
            size = folder_bytes(item)
            if not dry_run:
                shutil.rmtree(item, ignore_errors=True)
            removed.append(item)
            freed += size
    return removed, busy, freed


def human(n: int) -> str:
    """Bytes as a short human-readable size."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover


__all__ = ["StageUsage", "usage", "clean", "folder_bytes", "human"]
