"""`bench list`: registered entries with their paper table and row, suites, and (--options) every option."""
from __future__ import annotations

import argparse

import pandas as pd


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("list", help="list entries, suites and options")
    p.add_argument("--options", action="store_true",
                   help="list every config option with its default and each profile's value")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE to register your own entries")
    p.set_defaults(func=list_command)


def list_command(args: argparse.Namespace) -> int:
    from bench import config, registry

    registry.load_entries(args.plugin)
    if args.options:
        resolved = {name: config.resolve(name).to_dict() for name in config.PROFILES}

        def by_profile(key: str, default: object) -> str:
            section, option = key.split(".", 1)
            values = {n: r.get(section, {}).get(option, default) for n, r in resolved.items()}
            return ", ".join(f"{n} {_shown(v)}" for n, v in values.items() if _shown(v) != _shown(default))

        print("Every option as `--set section.option=value` (or a --config file) takes it: its type, its default\n"
              "and, in brackets, each profile's value where it differs from the default.\n")
        for key, kind, default, doc in config.describe():
            profiles = by_profile(key, default)
            print(f"{key} ({kind}) = {_shown(default)}" + (f"   [{profiles}]" if profiles else ""))
            print(f"    {doc or '-'}")
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


def _shown(value: object) -> str:
    """A value as `--set` would spell it (tuples as comma lists)."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)
