"""The `bench` console script.

Each top-level command lives in a module (or package) under `bench.commands` that defines
`register(subparsers)`; the module adds its parser and sets `func` to a callable taking the
parsed namespace and returning an exit code. User errors (`BenchError`) are printed without a
traceback and exit with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import signal
import sys
import threading
import warnings
from pathlib import Path

from bench import __version__
from bench.allocator import keep_freed_memory
from bench.errors import BenchError


def discover(package: str, subparsers: argparse._SubParsersAction) -> None:
    """Import every module of `package` and let it register its parser(s)."""
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="osteobench: osteoporosis screening from hand radiographs, "
                    "the method of Hwang, Lee & Yoon (2025), its ablations and baselines.",
    )
    parser.add_argument("--version", action="version", version=f"osteobench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    discover("bench.commands", subparsers)
    return parser


class QuietWhenReaderGone:
    """Standard output that goes quiet when its reader has gone (`bench compare A B | head -1`): the
    command finishes its work and writes its files instead of dying of a BrokenPipeError."""

    def __init__(self, stream):
        self._stream, self._gone = stream, False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        self._gone = True
        try:    # what is still buffered goes nowhere, also when the interpreter flushes it at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError, AttributeError):
            pass

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's preemption, `kill`): unwound like Ctrl-C, so temporary outputs are
    removed and the resumable states stay for the rerun."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


_OWN_CODE = tuple(str(Path(__file__).resolve().parent.parent / package) for package in
                  ("bench", "methods", "baselines", "reports"))
_library_format = warnings.formatwarning


def _format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                    line: str | None = None) -> str:
    """osteobench's own warnings as one line (``bench: warning: ...``); the libraries' as Python shows them."""
    if str(Path(filename).resolve()).startswith(_OWN_CODE):
        return f"bench: warning: {message}\n"
    return _library_format(message, category, filename, lineno, line)


#: Commands whose long work is saved as it goes (stage cache, resumable trainings, the Optuna study,
#: the journal of screened images).
RESUMABLE = ("run", "demo", "tune", "predict", "evaluate")


def _after_interrupt(args: argparse.Namespace) -> str:
    if getattr(args, "command", None) in RESUMABLE:
        return "rerun the same command to resume"
    return "nothing half-written was left; rerun the command"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's INFO lines drown the progress output
    logging.getLogger("alembic").setLevel(logging.WARNING)
    keep_freed_memory()                                       # bench.allocator: CPU tensors without page faults
    warnings.formatwarning = _format_warning
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    main_thread = threading.current_thread() is threading.main_thread()   # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    stdout = sys.stdout
    sys.stdout = QuietWhenReaderGone(stdout)
    try:
        code = args.func(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"bench: terminated (SIGTERM); {_after_interrupt(args)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"bench: interrupted; {_after_interrupt(args)}", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
