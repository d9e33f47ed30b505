"""`bench list`: registered entries with their paper table and row, suites, and (--options) every option."""
from __future__ import annotations

import argparse

import pandas as pd


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="list entries, suites and options")
    p.add_argument("--options", action="store_true", help="list every config option with its default")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE to register your own entries")
    p.set_defaults(func=list_command)


def list_command(args: argparse.Namespace) -> int:
    from bench import config, registry

    registry.load_entries(args.plugin)
    if args.options:
        rows = [{"option": k, "type": t, "default": d, "meaning": doc} for k, t, d, doc in config.describe()]
        print(pd.DataFrame(rows).to_string(index=False))
        return 0
    entries = registry.entries()
    if entries:
        rows = [{"entry": e.name, "kind": e.kind, "table": e.table or "-", "row": e.row or "-",
                 "description": e.description} for e in entries.values()]
        print("Entries:")
        print(pd.DataFrame(rows).to_string(index=False))
    else:
        print("Entries: none registered yet")
    print("\nSuites:")
    for name, suite in registry.suites().items():
        members = registry.resolve_suite(name)
        print(f"  {name:<8} {len(members):>3} entries  {suite.description}")
    return 0
