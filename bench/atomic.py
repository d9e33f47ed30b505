"""Atomic outputs: everything is written to a temporary sibling and renamed into place.

A crash leaves either the old complete output or none, never a half-written one. Temporary names
carry the writer's host and pid (``.<name>.tmp-<host>-<pid>-*``): the next write of the same output
removes the temporaries of writers on this host that are no longer alive (a SIGKILL, a power cut), so
leftovers do not pile up beside results, reports and predictions. A folder that
cannot be created (no permission, a file in the way, read-only disk) is a BenchError naming it.
Outputs get the permissions of a plain ``open``/``mkdir`` under the process umask (tempfile makes its
files 0600 and folders 0700, which would keep a bundle or a report from the colleagues it is for).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from bench.errors import BenchError
from bench.processes import process_alive


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; on success rename it to `target`.

    On an exception the temporary directory is removed and `target` is left untouched.
    With `overwrite`, an existing `target` is replaced (moved aside, then deleted).
    """
    target = Path(os.path.abspath(target))          # "." or "out/..": a named folder beside its temp sibling
    if target.exists() and not target.is_dir():
        raise BenchError(f"{target} is a file, not a folder; give a folder path for this output")
    _remove_dead_temporaries(target)
    tmp = Path(writable(target.parent, lambda: tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent),
                         target))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{target} already exists")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and rename it."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise BenchError(f"{path} is a folder; give a file path for this output")
    _remove_dead_temporaries(path)
    fd, tmp = writable(path.parent, lambda: tempfile.mkstemp(prefix=_temp_prefix(path), dir=path.parent), path)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _remove_dead_temporaries(target: Path) -> None:
    """Remove ``.<name>.tmp-<this host>-<pid>-*`` siblings of `target` whose process has ended."""
    mine = re.compile(rf"^\.{re.escape(target.name)}\.tmp-{re.escape(socket.gethostname())}-(\d+)-")
    with contextlib.suppress(OSError):
        for sibling in target.parent.iterdir():
            m = mine.match(sibling.name)
            if m and int(m.group(1)) != os.getpid() and not process_alive(int(m.group(1))):
                if sibling.is_dir() and not sibling.is_symlink():
                    shutil.rmtree(sibling, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        sibling.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _current_umask() -> int:
    mask = os.umask(0o022)      # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def writable(folder: Path, make, target: Path):
    """Create `folder` (with parents) and run `make` in it; OSError -> BenchError naming the folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return make()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise BenchError(f"cannot write {target}: cannot create files in {folder} ({reason}); choose a "
                         "folder you can write to") from exc
