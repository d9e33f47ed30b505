"""`bench data check DIR`: list every problem of a dataset folder; exit 0 when clean, 2 otherwise."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="validate a dataset folder and list every problem",
        description="Validate DIR against the dataset contract (manifest columns and values, image "
                    "files, masks, annotator weights, subject-wise splits) and list every problem "
                    "at once. Exit 0 when there are no errors (warnings are printed), 2 otherwise.")
    parser.add_argument("dir", type=Path, metavar="DIR", help="dataset folder (has manifest.csv)")
    parser.add_argument("--strict", action="store_true", help="warnings fail the check too")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.data.check import check_dataset

    problems = check_dataset(args.dir)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity != "error"]
    for problem in errors + warnings:
        print(problem, file=sys.stderr if problem.severity == "error" else sys.stdout)
    failed = bool(errors) or (args.strict and bool(warnings))
    status = "FAILED" if failed else "OK"
    print(f"{args.dir}: {status} ({len(errors)} error(s), {len(warnings)} warning(s))")
    return 2 if failed else 0
