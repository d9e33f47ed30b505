"""`bench run`: execute entries of a suite across seeds (see bench.runner and bench.executors).

    bench run --suite paper --profile quick
    bench run --suite paper --profile quick --executor ray --address auto --tracking-uri http://head:5000
    bench run --suite table8 --folds 5        # 5-fold cross-validation, pooled in results/table8-cv5
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from bench.errors import BenchError

DEFAULT_SEEDS = {"smoke": [0], "quick": [0, 1, 2], "paper": [0, 1, 2]}


def add_common_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by commands that resolve configs and results (run, tune, ...)."""
    parser.add_argument("--profile", default="smoke", choices=["smoke", "quick", "paper"],
                        help="data sizes and schedules (default: smoke)")
    parser.add_argument("--results", default="results", type=Path, help="results folder (default: ./results)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override an option, e.g. --set segmentation.gamma0=0.5 (repeatable)")
    parser.add_argument("--config", dest="config_files", action="append", default=[], type=Path,
                        metavar="FILE", help="YAML overlay of options (repeatable; --set wins)")
    parser.add_argument("--data-seg", default="", help="segmentation/pretraining dataset folder "
                        "(default: the built-in phantom `public`)")
    parser.add_argument("--data-cls", default="", help="labelled dataset folder (default: phantom `clinical`)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: auto)")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE to register your own entries (repeatable)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run entries across seeds (cached, resumable)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--suite", help="a suite: paper, table3 ... table8, smoke")
    target.add_argument("--entry", nargs="+", metavar="ENTRY", help="entries (fnmatch patterns allowed)")
    p.add_argument("--name", default=None, help="results sub-folder for --entry runs (default: adhoc)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: 0 for smoke, 0 1 2 otherwise)")
    add_common_run_options(p)
    p.add_argument("--tracking-uri", default=None, help="MLflow URI: a tracking server http://host:5000 or a database (default: "
                        "sqlite:///<results>/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is cached; run nothing")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: runs one after another in this process (default); ray: each (entry, seed) a Ray "
                        "task (one GPU, or --cpus-per-task CPUs); the results folder must be shared by all nodes")
    p.add_argument("--address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT",
                   help="the Ray cluster (default: $RAY_ADDRESS, else one started on this machine with "
                        "`ray start`, else a new local Ray instance)")
    p.add_argument("--retries", type=int, default=None, metavar="N",
                   help="extra attempts of a failed run (default: 1 with --executor ray, 0 locally)")
    p.add_argument("--cpus-per-task", type=float, default=1.0, metavar="N",
                   help="CPUs a Ray task asks for (default: 1)")
    p.add_argument("--runs-per-gpu", type=int, default=1, metavar="N",
                   help="with --executor ray: N runs share each GPU (each asks for 1/N of it), for trainings too "
                        "small to fill a large GPU; their memory must fit together (default: 1)")
    p.add_argument("--folds", type=int, default=None, metavar="K",
                   help="k-fold cross-validation of the labelled dataset: fold k into <suite>-fold<k>, the "
                        "out-of-fold predictions pooled into <suite>-cv<K> (bench.cv)")
    p.add_argument("--fold", type=int, nargs="+", default=None, metavar="k",
                   help="with --folds: run only these folds (pooling waits until every fold is done)")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from bench import registry

    registry.load_entries(args.plugin)         # names are checked before the runner's imports (torch: seconds)
    if args.suite:
        suite = args.suite
        names = registry.resolve_suite(args.suite)
    else:
        suite = args.name or "adhoc"
        names = registry.select(args.entry)
    if not names:
        raise BenchError("no entries selected; `bench list` shows what is registered")
    if args.fold is not None and args.folds is None:
        raise BenchError("--fold picks folds of a cross-validation: give the number of folds with --folds K")
    from bench.executors import make_executor, run_together
    from bench.runner import Runner

    seeds = args.seeds if args.seeds is not None else DEFAULT_SEEDS[args.profile]
    parts = [(suite, [])]                      # (results suite, extra --set options) per runner
    if args.folds is not None:
        from bench import cv

        parts = [(cv.fold_suite(suite, k), cv.fold_sets(args.folds, k)) for k in cv.check_folds(args.folds, args.fold)]
    executor = make_executor(args.executor, address=args.address, retries=args.retries,
                             cpus_per_task=args.cpus_per_task, runs_per_gpu=args.runs_per_gpu)

    def make_runner(name: str, extra: list[str], executor=None) -> Runner:
        return Runner(args.results, suite=name, profile=args.profile, config_files=args.config_files,
                      sets=[*args.sets, *extra], data_seg=args.data_seg, data_cls=args.data_cls, device=args.device,
                      plugins=args.plugin, executor=executor)
    runners = [make_runner(name, extra, executor) for name, extra in parts]
    for runner in runners:
        if args.executor == "ray":
            runner.check_device = False        # the cluster's nodes have the GPUs, maybe not this driver
        if args.dry_run or args.executor == "local":
            runner.validate(names)             # user errors before the tracking store is opened
        if args.folds is not None and not args.dry_run:
            runner.check_data(names)           # folds the `cls` dataset cannot make: one message, exit 2
    if args.dry_run:
        for runner in runners:
            print_plan(runner, names, seeds)
        return 0
    tracker = None
    if not args.no_mlflow:
        from bench.tracking import Tracker

        tracker = Tracker(args.results, uri=args.tracking_uri)
    outcomes = []
    try:
        for runner in runners:
            runner.tracker = tracker
        for runner, done in zip(runners, run_together(runners, names, seeds)):   # Ray: every fold at once
            print_summary(done, Path(args.results) / runner.suite)
            outcomes += done
    except KeyboardInterrupt:                  # Ctrl-C or SIGTERM: no entry left RUNNING in MLflow
        if tracker is not None:
            tracker.interrupted()
        raise
    finally:
        executor.close()
    if args.folds is not None:
        fold_runners = runners if args.fold is None else [       # the folds not run now: their expected keys
            make_runner(cv.fold_suite(suite, k), cv.fold_sets(args.folds, k)) for k in range(args.folds)]
        for runner in fold_runners:
            runner.check_device = args.executor != "ray"
        expected = {(n, s): [r.plan_run(registry.get(n), s, generate=False).run_key for r in fold_runners]
                    for n in names for s in seeds}
        print_pooled(args.results, suite, args.folds, names, seeds, tracker, expected)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def print_pooled(results: Path, suite: str, folds: int, names: list[str], seeds: list[int], tracker,
                 expected: dict | None = None) -> None:
    """Pool the folds that are complete and current (bench.cv) and print the out-of-fold test metrics."""
    from bench import cv
    from bench.registry import get
    from bench.runner import entry_tags

    rows = cv.pool_all(results, suite, folds, names, seeds, tracker,
                       tags={n: entry_tags(get(n)) for n in names}, expected=expected)
    frame = pd.DataFrame(rows)
    for col in ("test_f1", "test_auc", "test_accuracy"):
        if col in frame.columns:
            frame[col] = frame[col].map(_fmt)
    held = frame.pop("held_out").dropna() if "held_out" in frame.columns else pd.Series(dtype=object)
    print(f"out-of-fold test predictions of {folds} folds" + (f" (held out: {held.iloc[0]})" if len(held) else "") + ":")
    print(frame.fillna("-").to_string(index=False))
    waiting = int(frame["status"].isin(["incomplete", "outdated"]).sum())
    where = Path(results) / cv.cv_suite(suite, folds)
    if waiting == len(frame):
        print(f"nothing pooled yet: every run waits for folds still to run (or to rerun with these options); "
              f"the pooled runs will be in {where}")
    else:
        print(f"pooled runs in {where}"
              + (f"; {waiting} wait for folds still to run (or to rerun with these options)" if waiting else ""))


def print_plan(runner, names: list[str], seeds: list[int]) -> None:
    rows = []
    for planned in runner.plan(names, seeds, generate=False):
        for st in planned.stages:
            state = "to generate data" if st.key is None else ("cached" if st.cached else "to run")
            rows.append({"entry": planned.entry.name, "seed": planned.seed, "stage": st.name,
                         "key": (st.key or "-")[:10], "state": state})
        rows.append({"entry": planned.entry.name, "seed": planned.seed, "stage": "evaluate",
                     "key": (planned.run_key or "-")[:10], "state": "done" if planned.done else "to run"})
    print(f"plan for suite {runner.suite!r}, profile {runner.profile}, {len(names)} entries × {len(seeds)} seeds:")
    print(pd.DataFrame(rows).to_string(index=False))


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def print_summary(outcomes, suite_dir: Path) -> None:
    rows = []
    for o in outcomes:
        test = o.metrics.get("test", {}) if o.metrics else {}
        val = o.metrics.get("val", {}) if o.metrics else {}
        rows.append({"entry": o.entry, "seed": o.seed, "status": o.status, "seconds": f"{o.seconds:.1f}",
                     "val_macro_f1": _fmt(val.get("macro_f1")), "test_f1": _fmt(test.get("f1")),
                     "test_auc": _fmt(test.get("auc")), "test_acc": _fmt(test.get("accuracy"))})
        if any(getattr(x, "attempts", 1) > 1 for x in outcomes):
            rows[-1]["attempts"] = getattr(o, "attempts", 1)
    if rows:
        print(pd.DataFrame(rows).to_string(index=False))
    failed = [o for o in outcomes if o.status == "failed"]
    for o in failed:
        print(f"FAILED {o.entry} seed{o.seed}: {o.error}\n  traceback: {suite_dir / o.entry / f'seed{o.seed}.failed'}")
    done = sum(o.status == "done" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    print(f"{done} run, {skipped} already done, {len(failed)} failed; results in {suite_dir}")
