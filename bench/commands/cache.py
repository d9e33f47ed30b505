"""`bench cache [--results DIR]` and `bench cache clean [--resume] [--dry-run]`: what the stage cache
holds, and removing what interrupted work left behind (bench.cache)."""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import BenchError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("cache", help="what the stage cache holds; clean up after interrupted work",
                              description="Without an action: per stage, the finished outputs, the leftovers of "
                              "interrupted writes and the resumable training states, with their sizes. `clean` "
                              "removes the leftovers of keys no process is writing (and with --resume also the "
                              "resumable states, which a rerun would have continued from; with --stale-phantoms the phantom "
                              "datasets of other osteobench or generator versions, which no run of this version "
                              "reads).")
    p.add_argument("action", nargs="?", choices=("status", "clean"), default="status", help="default: status")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: ./results)")
    p.add_argument("--resume", action="store_true", help="clean: also remove resumable training states")
    p.add_argument("--stale-phantoms", action="store_true",
                   help="clean: also remove cached phantoms of other osteobench or generator versions")
    p.add_argument("--dry-run", action="store_true", help="clean: list what would be removed, remove nothing")
    p.set_defaults(func=cache_command)


def cache_command(args: argparse.Namespace) -> int:
    from bench.cache import clean, folder_bytes, human, stale_phantoms, usage

    root = Path(args.results) / "cache"
    given = [o for o, on in (("--resume", args.resume), ("--stale-phantoms", args.stale_phantoms),
                             ("--dry-run", args.dry_run)) if on]
    if given and args.action != "clean":
        raise BenchError(f"{' '.join(given)} {'belongs' if len(given) == 1 else 'belong'} to `bench cache clean`; "
                         "`bench cache` alone only reports")
    if args.action == "clean":
        removed, busy, freed = clean(root, resumable=args.resume, dry_run=args.dry_run,
                                     stale=args.stale_phantoms)
        verb = "would remove" if args.dry_run else "removed"
        for path in removed:
            print(f"{verb} {path}")
        for path in busy:
            print(f"kept {path} (its stage is being computed now)")
        print(f"{verb} {len(removed)} folder(s), {human(freed)}; {len(busy)} in use kept")
        return 0
    rows = usage(root)
    print(f"{'stage':16s} {'outputs':>8s} {'size':>9s} {'leftovers':>10s} {'size':>9s} {'resumable':>10s} {'size':>9s}")
    for u in rows:
        print(f"{u.stage:16s} {u.outputs:8d} {human(u.output_bytes):>9s} {len(u.leftovers):10d} "
              f"{human(u.leftover_bytes):>9s} {len(u.resumable):10d} {human(u.resumable_bytes):>9s}")
    left = sum(len(u.leftovers) for u in rows)
    if left:
        print(f"{left} leftover folder(s) of interrupted writes: `bench cache clean --results {args.results}` "
              "removes those nobody is writing")
    stale = stale_phantoms(root)
    if stale:
        print(f"{len(stale)} cached phantom(s) of other osteobench or generator versions "
              f"({human(sum(folder_bytes(p) for p in stale))}), which no run of this version reads: "
              f"`bench cache clean --stale-phantoms --results {args.results}` removes them")
    return 0
