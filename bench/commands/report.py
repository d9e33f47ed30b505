"""`bench report --suite S`: the paper's tables and figures from a suite's results (issue 7).

`reports` is imported lazily (importlib) when the command runs: `bench` never imports `reports`
at module import time (imports point reports → bench).
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from bench.errors import BenchError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="LaTeX tables, figures and an index page from a suite's results")
    p.add_argument("--suite", required=True, help="suite whose results to report (results/<suite>)")
    p.add_argument("--results", default="results", type=Path, help="results folder (default: ./results)")
    p.add_argument("--out", default=None, type=Path,
                   help="report folder (default: <results>/<suite>/report; replaced as a whole)")
    p.add_argument("--entries", nargs="+", default=None, metavar="ENTRY",
                   help="report only these entries (default: every entry with results)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates for tests and ROC bands "
                   "(default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")
    p.add_argument("--fig5-entry", default=None, help="entry of Fig. 5 (default: the best full-method entry)")
    p.add_argument("--best-split", default="test", choices=["test", "val"],
                   help="split on which the best full-method entry is chosen (default: test, as the paper)")
    p.add_argument("--subgroups", nargs="+", default=[], metavar="COLUMN[:CUT]",
                   help="also tables of the AUC per subgroup of `cls` manifest columns, e.g. sex site age:65")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite:///<results>/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE to register your own entries (repeatable)")
    p.set_defaults(func=report_command)


def report_command(args: argparse.Namespace) -> int:
    if args.n_boot < 1:
        raise BenchError(f"--n-boot must be a positive number of bootstrap replicates, got {args.n_boot}")
    build = importlib.import_module("reports.build")
    config = build.ReportConfig(fig5_entry=args.fig5_entry, best_split=args.best_split,
                                subgroups=tuple(args.subgroups))
    index = build.build_report(args.results, args.suite, out=args.out, entries=args.entries, n_boot=args.n_boot,
                               seed=args.seed, config=config, mlflow=not args.no_mlflow,
                               tracking_uri=args.tracking_uri, plugins=args.plugin)
    print(f"report: {index}")
    return 0
