"""k-fold cross-validation of a suite: one runner per fold, then the out-of-fold predictions pooled.

``bench run --suite S --folds K`` runs fold k (``data.folds=K``, ``data.fold=k``; bench.data.folds)
into ``results/S-fold<k>/`` like any suite, then writes the pooled runs::

    results/S-cv<K>/<entry>/seed<s>/
        predictions.parquet   each fold's test subjects (split "test"; column `fold`): every labelled
                              subject of `cls` exactly once, predicted by the models that never saw it
        metrics.json          test: the metrics of the pooled predictions; fold<k>: fold k's own test metrics
        config.json           the folds, their runs' keys and folders; run_key hashes the fold runs' keys

so ``bench show``, ``bench compare`` (paired tests on all subjects instead of one test split) and
``bench report --suite S-cv<K>`` read it as any suite. Pooling is what scikit-learn's
``cross_val_predict`` returns; the per-fold metrics give the spread between folds. With
``data.fold_by=site`` each fold holds out one site (external validation), and its own test metrics
are that site's. The pooled predictions come from K different models, so the pooled AUC also
reflects how well their scores agree in scale; the per-fold AUCs do not. Stages that read
no `cls` split (segmentation, patch extraction, landmarks, SSL pretraining but SupCon's) are shared
by every fold through the stage cache, so K folds cost K probes, not K pretrainings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bench import results as store
from bench.errors import BenchError
from bench.metrics import split_metrics
from bench.runner import fold_suffix
from bench.stage import stable_hash


def fold_suite(suite: str, fold: int) -> str:
    """The results folder of one fold: ``<suite>-fold<k>``."""
    return f"{suite}{fold_suffix(fold)}"


def cv_suite(suite: str, folds: int) -> str:
    """The results folder of the pooled runs: ``<suite>-cv<K>``."""
    return f"{suite}-cv{folds}"


def fold_sets(folds: int, fold: int) -> list[str]:
    """The ``--set`` options that select fold `fold` of `folds`."""
    return [f"data.folds={folds}", f"data.fold={fold}"]


def fold_run_dirs(pooled: Path, config: dict[str, Any]) -> list[tuple[int, Path, str | None]]:
    """(fold, run folder, run key at pooling) of each fold run of the pooled run at `pooled`
    (``results/<suite>-cv<K>/<entry>/seed<s>``), found beside it in the same results folder."""
    suite, folds = str(config["suite"]), int(config["folds"])
    base = suite[:-len(f"-cv{folds}")]
    results = pooled.parent.parent.parent
    return [(int(f["fold"]), results / fold_suite(base, int(f["fold"])) / pooled.parent.name / pooled.name,
             f.get("run_key")) for f in config["fold_runs"]]


def check_folds(folds: int, only: Sequence[int] | None = None) -> list[int]:
    """The folds to run: all of 0..folds-1, or `only` (each checked)."""
    if folds < 2:
        raise BenchError(f"--folds {folds}: cross-validation needs at least 2 folds (5 or 10 are usual)")
    chosen = list(range(folds)) if not only else list(dict.fromkeys(only))
    bad = [k for k in chosen if not 0 <= k < folds]
    if bad:
        raise BenchError(f"--fold {bad[0]} is not one of the folds 0..{folds - 1}")
    return chosen


def pool(results: Path, suite: str, folds: int, entry: str, seed: int,
         expected: Sequence[str | None] | None = None) -> tuple[str, Path | None]:
    """Pool one (entry, seed) over the folds: ('pooled' | 'unchanged', its folder), or (why not, None):
    'incomplete' while a fold has no run, 'outdated' while a fold's run has another key than the
    `expected` one of that fold (e.g. made with other options by an earlier ``--fold`` run)."""
    runs = []
    for k in range(folds):
        name = fold_suite(suite, k)
        if not store.is_complete(results, name, entry, seed):
            return "incomplete", None
        runs.append(store.read_run(store.run_dir(results, name, entry, seed)))
        if expected is not None and expected[k] is not None and runs[-1].config.get("run_key") != expected[k]:
            return "outdated", None
    run_key = stable_hash({"folds": [r.config.get("run_key") for r in runs]})[:16]
    target = store.run_dir(results, cv_suite(suite, folds), entry, seed)
    if store.is_complete(results, cv_suite(suite, folds), entry, seed) and \
            store.read_run(target).config.get("run_key") == run_key:
        return "unchanged", target
    pooled = pooled_predictions(runs)
    metrics: dict[str, Any] = {"test": split_metrics(pooled).get("test", {})}
    for k, run in enumerate(runs):
        metrics[f"fold{k}"] = run.metrics.get("test", {})
    first = runs[0].config
    config = {"suite": cv_suite(suite, folds), "entry": entry, "seed": seed, "profile": first.get("profile"),
              "run_key": run_key, "folds": folds, "version": first.get("version"), "data": first.get("data"),
              "fold_runs": [{"fold": k, "holds_out": r.config.get("cv", {}).get("holds_out", f"fold {k}"),
                             "run_key": r.config.get("run_key"), "path": str(r.path)} for k, r in enumerate(runs)],
              "config": _pooled_config(first.get("config", {}))}
    path = store.write_run(results, cv_suite(suite, folds), entry, seed, config=config, metrics=metrics,
                           predictions=pooled)
    return "pooled", path


def pooled_predictions(runs: Sequence[store.RunResult]) -> pd.DataFrame:
    """The folds' test rows, tagged with their fold; each subject must come from exactly one fold, and every
    subject a fold run scored (in any split) must be in some fold's test split."""
    parts = []
    for k, run in enumerate(runs):
        preds = run.predictions
        parts.append(preds[preds["split"].astype(str) == "test"].assign(fold=k))
    pooled = pd.concat(parts, ignore_index=True)
    twice = pooled["subject_id"].astype(str).duplicated(keep=False)
    if twice.any():
        sid = pooled.loc[twice, "subject_id"].iloc[0]
        raise BenchError(f"subject {sid!r} is in the test split of folds "
                         f"{sorted(pooled.loc[pooled['subject_id'] == sid, 'fold'])}: the fold runs were made "
                         "with different folds (data.fold_seed or the dataset's fold column changed); rerun them")
    everyone = set().union(*(set(run.predictions["subject_id"].astype(str)) for run in runs))
    missing = sorted(everyone - set(pooled["subject_id"].astype(str)))
    if missing:
        raise BenchError(f"{len(missing)} subjects (e.g. {missing[:5]}) are in no fold's test split: the fold runs "
                         "were made with different folds (data.fold_seed or the dataset's fold column changed); "
                         "rerun them")
    return pooled.sort_values(["fold", "subject_id"], kind="stable").reset_index(drop=True)


def _pooled_config(config: dict) -> dict:
    """Fold 0's resolved config with ``data.fold`` marked as all folds."""
    out = {**config}
    if isinstance(out.get("data"), dict):
        out["data"] = {**out["data"], "fold": "all"}
    return out


def pool_all(results: Path, suite: str, folds: int, entries: Sequence[str], seeds: Sequence[int],
             tracker: Any = None, tags: dict[str, dict[str, str]] | None = None,
             expected: dict[tuple[str, int], list[str | None]] | None = None) -> list[dict[str, Any]]:
    """Pool every (entry, seed) whose folds are all complete (and, with `expected`, have the run keys the
    current options give: (entry, seed) -> key per fold); log new pooled runs to `tracker` (MLflow)."""
    rows = []
    for entry in entries:
        for seed in seeds:
            status, path = pool(Path(results), suite, folds, entry, seed, (expected or {}).get((entry, seed)))
            row: dict[str, Any] = {"entry": entry, "seed": seed, "status": status}
            if path is not None:
                run = store.read_run(path)
                row.update({f"test_{m}": run.metrics["test"].get(m) for m in ("f1", "auc", "accuracy")})
                named = [f for f in run.config["fold_runs"] if f["holds_out"] != f"fold {f['fold']}"]
                if named:                                          # leave-one-group-out: which group is which
                    row["held_out"] = ", ".join(f"{f['fold']}: {f['holds_out']}" for f in run.config["fold_runs"])
                if status == "pooled" and tracker is not None:
                    tracker.entry_run(cv_suite(suite, folds), entry, tags=(tags or {}).get(entry))
                    tracker.log_seed_run(cv_suite(suite, folds), entry, seed, params=run.config["config"],
                                         metrics=run.metrics, config_hash=run.config["run_key"],
                                         artifacts=[path / store.CONFIG_FILE, path / store.METRICS_FILE,
                                                    path / store.PREDICTIONS_FILE])
            rows.append(row)
    return rows
