"""`bench tune`: Optuna search of gamma0, the gamma schedule and lambda (issue 8; see bench.tune).

    bench tune --target seg --trials 30 --study seg-gl
    bench tune --target downstream --entry simclr --trials 20 --study simclr-gl --profile quick
    bench run --suite table3 --config results/tune/seg-gl/best.yaml
    bench tune --target seg --trials 40 --study seg-gl --workers 4 --storage postgresql://bench@dbhost/optuna

Rerunning with the same --study resumes it (--trials is the study's total); several processes
with the same arguments share the trials. bench.tune is imported when the command runs, so the
`tune` config section exists only in `bench tune` processes.
"""
from __future__ import annotations

import argparse
import sys

from bench.commands.run import add_common_run_options
from bench.errors import BenchError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tune", help="Optuna search of the segmentation's gamma annealing and lambda")
    p.add_argument("--target", required=True, metavar="seg|downstream",
                   help="seg: validation GED of the segmentation model (fast); downstream: validation "
                        "macro-F1 (AUC tie-break) of --entry (slow)")
    p.add_argument("--trials", required=True, type=int, metavar="N",
                   help="total trials of the study (counted over every worker and session)")
    p.add_argument("--study", required=True, metavar="NAME", help="study name; outputs in <results>/tune/NAME/")
    p.add_argument("--storage", default="", metavar="URL",
                   help="Optuna storage: a database URL (sqlite:////abs/optuna.db, postgresql://...) or a journal "
                        "file path (default: <results>/tune/NAME/journal.log)")
    p.add_argument("--entry", default="simclr", help="full-method entry of the downstream target (default: simclr)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes on the study (default 1); with a postgresql:// --storage, machines "
                        "running the same command share the study too")
    p.add_argument("--seed", type=int, default=0, help="training seed of every trial and base seed of the sampler")
    add_common_run_options(p)
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite:///<results>/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log trials to MLflow")
    p.set_defaults(func=tune_command)


def tune_command(args: argparse.Namespace) -> int:
    from bench.tune import TuneRequest, run_tune

    if args.trials < 1:
        raise BenchError(f"--trials must be a positive number of trials (the study's total), got {args.trials}")
    if args.workers < 1:
        raise BenchError(f"--workers must be a positive number of processes, got {args.workers}")
    req = TuneRequest(target=args.target, trials=args.trials, study=args.study, results=args.results,
                      storage=args.storage, profile=args.profile, entry=args.entry, seed=args.seed,
                      config_files=args.config_files, sets=args.sets, data_seg=args.data_seg,
                      data_cls=args.data_cls, device=args.device, plugins=args.plugin,
                      tracking_uri=args.tracking_uri, mlflow=not args.no_mlflow, progress=sys.stderr.isatty(),
                      workers=args.workers)
    summary = run_tune(req)
    t = summary["trials"]
    print(f"study {summary['study']} ({summary['objective']}): {t['total']} trials, {t['complete']} complete, "
          f"{t['pruned']} pruned, {t['fail']} failed, {t['running']} running elsewhere"
          + (f", {t['interrupted']} interrupted (not counted in --trials)" if t["interrupted"] else ""))
    best = summary["best"]
    out = args.results / "tune" / summary["study"]
    if best:
        print(f"best: trial {best['number']} value {best['value']:.6g} {best['params']}")
        print(f"overlay: {out / summary['files']['overlay']}  (bench run --config {out / summary['files']['overlay']})")
    for note in summary["notes"]:
        print(f"note: {note}")
    print(f"summary: {out / 'summary.json'}")
    return 0
