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
import sys

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


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow's INFO lines drown the progress output
    logging.getLogger("alembic").setLevel(logging.WARNING)
    keep_freed_memory()                                       # bench.allocator: CPU tensors without page faults
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
