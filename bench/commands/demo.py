"""`bench demo`: the main job on the built-in phantom, end to end (what `make demo` runs).

Generates the `public` and `clinical` phantoms for the profile, renders `bench data show` for both,
runs the `smoke` suite over them (the paper's method, its ablations and the baselines of Tables
3-8, logged to MLflow), builds the report (`bench report --suite smoke`: the LaTeX tables, figures
and significance tests) and says where everything is.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="run the main job on the built-in phantom")
    p.add_argument("--out", type=Path, default=Path("demo"), help="output folder (default: ./demo)")
    p.add_argument("--profile", default="smoke", choices=["smoke", "quick", "paper"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--device", default=None, help="auto | cpu | cuda")
    p.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from bench import registry
    from bench.commands.run import print_summary
    from bench.config import resolve
    from bench.data.provision import provide
    from bench.data.show import show
    from bench.runner import Runner
    from bench.tracking import Tracker

    results = args.out / "results"
    registry.load_entries()
    print(f"[1/4] generating the built-in phantom ({args.profile} profile) ...", flush=True)
    paths = provide(resolve(args.profile), results / "cache", progress=True)
    print("[2/4] rendering contact sheets and summaries ...", flush=True)
    shown = {role: show(path, out_dir=args.out / "show" / role) for role, path in paths.items()}
    names = registry.resolve_suite("smoke")
    print(f"[3/4] running suite 'smoke' ({len(names)} entries: {', '.join(names)}) ...", flush=True)
    tracker = Tracker(results)
    runner = Runner(results, suite="smoke", profile=args.profile, device=args.device, tracker=tracker)
    outcomes = runner.run(names, args.seeds)
    print_summary(outcomes, results / "smoke")
    print("[4/4] building the report (tables, figures, paired tests) ...", flush=True)
    report = importlib.import_module("reports.build").build_report(results, "smoke", mlflow=True)
    print("\nOutputs:")
    for role, path in paths.items():
        print(f"  {role} dataset:      {path}")
        for kind in ("contact_sheet", "summary", "summary_md"):
            print(f"    {kind + ':':<16}{shown[role][kind]}")
    print(f"  results:          {results / 'smoke'}   (bench show {results / 'smoke'})")
    print(f"  report:           {report}")
    print(f"  MLflow:           mlflow ui --backend-store-uri sqlite:///{(results / 'mlflow.db').resolve()}")
    return 1 if any(o.status == "failed" for o in outcomes) else 0
