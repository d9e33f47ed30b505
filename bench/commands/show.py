"""`bench show RESULTS_PATH`: what a results folder holds.

A seed folder shows its config summary and metrics per split (with the AUC's DeLong 95% CI); an entry folder its seeds and
mean ± std; a suite folder every entry (test split, mean ± std over seeds); the results root
its suites.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from bench.errors import BenchError

SHOWN = ["precision", "recall", "f1", "auc", "accuracy", "macro_f1"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("show", help="show a run, an entry, a suite or a results folder")
    p.add_argument("path", type=Path, help="results/<suite>[/<entry>[/seed<k>]] or the results folder")
    p.add_argument("--split", default=None,
                   help="split to show (default: every split of a run; test for an entry, a suite and --by)")
    p.add_argument("--metrics", nargs="+", default=None, metavar="M",
                   help=f"metrics to show (default: {' '.join(SHOWN)}); any of bench.metrics.METRIC_KEYS, e.g. "
                   "specificity npv average_precision brier sens_at_spec90 spec_at_sens90")
    p.add_argument("--operating-point", default=None, metavar="TARGET:LEVEL",
                   help="a run: the threshold reaching sensitivity:LEVEL or specificity:LEVEL on its val split, and "
                   "the test sensitivity, specificity, PPV and NPV at it (per fold for a cross-validation; "
                   "bench.operating); pass the threshold to `bench predict --threshold`")
    p.add_argument("--by", default=None, metavar="COLUMN[:CUT]",
                   help="a run: its --split metrics per subgroup of a `cls` manifest column, e.g. sex, site, "
                        "age:65 (bench.subgroups)")
    p.set_defaults(func=show_command)


def subset(predictions: pd.DataFrame, split: str) -> pd.DataFrame:
    """The subject predictions a metrics row was computed on: a split, or fold k of a pooled run (bench.cv)."""
    if split.startswith("fold") and split[4:].isdigit() and "fold" in predictions.columns:
        return predictions[predictions["fold"] == int(split[4:])]
    return predictions[predictions["split"].astype(str) == split]


def show_command(args: argparse.Namespace) -> int:
    from bench import results as store
    from bench.subgroups import auc_interval

    path: Path = args.path
    shown = chosen_metrics(args.metrics)
    if not path.exists():
        raise BenchError(f"{path} does not exist; give a folder under your results folder")
    if not path.is_dir():
        raise BenchError(f"{path} is a file; give a folder: results/<suite>[/<entry>[/seed<k>]] or the results folder")
    split = args.split or "test"
    for option, value in (("--by", args.by), ("--operating-point", args.operating_point)):
        if value is not None and not (path / "metrics.json").is_file():
            raise BenchError(f"{option} needs a run folder (results/<suite>/<entry>/seed<k>); {path} is not one")
    if args.by is not None and args.operating_point is not None:
        raise BenchError("--by and --operating-point are separate views of a run; give one of them")
    if (path / "metrics.json").is_file():
        run = store.read_run(path)
        cfg = run.config
        if args.by is not None:
            from bench.subgroups import run_manifest, subgroup_table

            table = subgroup_table(run.predictions, run_manifest(cfg, path), args.by, split,
                                   metrics=shown if args.metrics else None)
            print(f"{cfg.get('entry')} seed {cfg.get('seed')} (suite {cfg.get('suite')}): {split} split by "
                  f"{args.by}")
            print(table.to_string(float_format=lambda v: f"{v:.3f}"))
            return 0
        if args.operating_point is not None:
            return _show_operating_point(run, path, args.operating_point)
        print(f"{cfg.get('entry')} seed {cfg.get('seed')} (suite {cfg.get('suite')}, profile {cfg.get('profile')}, "
              f"osteobench {cfg.get('version')})")
        if "fold_runs" in cfg:                       # a pooled cross-validation run (bench.cv)
            runs = cfg["fold_runs"]
            named = [f"fold{f['fold']}: {f['holds_out']}" for f in runs if f["holds_out"] != f"fold {f['fold']}"]
            first, last = (Path(runs[i]["path"]).parent.parent for i in (0, -1))
            print(f"out-of-fold predictions of {len(runs)} folds pooled as `test`, each fold's own test metrics as "
                  f"fold<k>{' (' + ', '.join(named) + ')' if named else ''}; fold runs: {first} ... {last.name}")
        elif cfg.get("kind") == "external":          # `bench evaluate` (bench.external)
            src = cfg["bundle"]["source"]
            cohort = "every labelled subject" if cfg["split"] == "all" else f"its {cfg['split']} split"
            extra = run.metrics.get("extra") or {}
            if extra.get("subjects_seen_fit"):
                cohort += (f"; {int(extra['subjects_seen_fit'])} subject(s) with images the bundle was fitted on"
                           + (", left out" if cfg.get("exclude_seen") else ", scored: not external"))
            print(f"external validation of the bundle {cfg['bundle']['path']} (entry {src.get('entry')} seed "
                  f"{src.get('seed')}, suite {src.get('suite')}, {cfg['bundle']['models']} model(s)) on "
                  f"{cfg['data']['cls']} ({cohort}, threshold {cfg['threshold']:g})")
        else:
            print(f"stages: {json.dumps(cfg.get('stages', {}))}")
        if "cv" in cfg:
            print(f"fold {cfg['cv']['fold']} of {cfg['cv']['folds']} (test split: {cfg['cv']['holds_out']})")
        table = pd.DataFrame({s: m for s, m in run.metrics.items() if s != "extra"}).T
        first = [s for s in ("train", "val", "test") if s in table.index]
        table = table.reindex(first + [s for s in table.index if s not in first])
        if args.split is not None:
            if args.split not in table.index:
                raise BenchError(f"{path} has no split {args.split!r}; it has {', '.join(map(str, table.index))}")
            table = table.loc[[args.split]]
        counts = ["n", "n_pos"] + [c for c in ("n_unscored", "n_unlabeled")          # shown when they count
                                   if c in table.columns and pd.to_numeric(table[c], errors="coerce").gt(0).any()]
        table = table.reindex(columns=[c for c in dict.fromkeys(shown + counts) if c in table.columns]).round(4)
        table["auc 95% CI"] = [auc_interval(subset(run.predictions, s)) for s in table.index]
        print(table.to_string())
        if "extra" in run.metrics:
            print(f"extra: {json.dumps(run.metrics['extra'], sort_keys=True)}")
        return 0
    children = [q for q in path.iterdir() if q.is_dir()]
    if any(store.is_run_folder_name(q.name) for q in children):                       # an entry
        return _show_frame(store.load_metrics(path.parent.parent, path.parent.name, [path.name]),
                           split, by_seed=True, shown=shown)
    if any(store.is_run_folder_name(r.name) for q in children for r in q.iterdir()):  # a suite
        return _show_frame(store.load_metrics(path.parent, path.name), split, by_seed=False, shown=shown)
    runs = store.list_runs(path)
    if runs.empty:
        raise BenchError(f"{path} holds no runs; results folders look like results/<suite>/<entry>/seed<k>")
    summary = runs.groupby(["suite", "status"]).size().unstack(fill_value=0)
    print(summary.to_string())
    return 0


def _show_operating_point(run, path: Path, spec: str) -> int:
    from bench.operating import operating_table, parse_target, pooled_operating_table

    target, level = parse_target(spec)
    cfg = run.config
    pooled = "fold_runs" in cfg
    table = (pooled_operating_table(path, cfg, target, level) if pooled
             else operating_table(run.predictions, target, level))
    where = ("each fold's threshold chosen on its own val split, applied to its test fold; `test`: all folds' "
             "decisions pooled" if pooled else "threshold chosen on the val split")
    print(f"{cfg.get('entry')} seed {cfg.get('seed')} (suite {cfg.get('suite')}): {target} >= {level:g}; {where}")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    return 0


def chosen_metrics(names: list[str] | None) -> list[str]:
    """--metrics checked against bench.metrics.METRIC_KEYS (default: SHOWN)."""
    from bench.metrics import METRIC_KEYS

    unknown = [m for m in names or () if m not in METRIC_KEYS]
    if unknown:
        raise BenchError(f"--metrics {unknown[0]} is not a metric; choose from {' '.join(METRIC_KEYS)}")
    return list(dict.fromkeys(names)) if names else list(SHOWN)


def _show_frame(frame: pd.DataFrame, split: str, by_seed: bool, shown: list[str]) -> int:
    if frame.empty:
        raise BenchError("no complete run here: its runs failed or have not finished (`bench show` of the results "
                         "folder lists each run's status; a failed one keeps its traceback in seed<k>.failed/)")
    present = sorted(set(frame["split"].astype(str)) - {"extra"})
    frame = frame[(frame["split"] == split) & frame["metric"].isin(shown)]
    if frame.empty:
        raise BenchError(f"no {split} metrics here; the runs here have {', '.join(present) or 'no split'}"
                         + (" (a pooled cross-validation scores its out-of-fold predictions as test)"
                            if any(s.startswith("fold") for s in present) else ""))
    if by_seed:
        wide = frame.pivot_table(index=["entry", "seed"], columns="metric", values="value")
        print(wide.reindex(columns=[c for c in shown if c in wide.columns]).round(4).to_string())
    agg = frame.groupby(["entry", "metric"])["value"].agg(["mean", "std", "count"]).reset_index()
    agg["cell"] = [f"{m:.3f}" if pd.isna(s) else f"{m:.3f} ± {s:.3f}" for m, s in zip(agg["mean"], agg["std"])]
    wide = agg.pivot(index="entry", columns="metric", values="cell")
    seeds = agg.groupby("entry")["count"].max().rename("seeds")
    print(f"{split} split, mean ± std over seeds (ddof=1; the mean alone for one seed):")
    print(wide.reindex(columns=[c for c in shown if c in wide.columns]).join(seeds).to_string())
    return 0
