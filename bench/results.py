"""The results store (DESIGN.md "Stages and caching", issue 3 deliverable 6).

    results/<suite>/<entry>/seed<k>/          a complete run (written atomically, so it exists only
        config.json                           when complete): resolved config, sorted keys
        metrics.json                          {"val": {...}, "test": {...}, ..., "extra": {...}}
        predictions.parquet                   one row per subject (bench.metrics.SUBJECT_COLUMNS)
        history.parquet                       optional per-epoch records: stage, epoch, metric, value
        <extra files>                         optional (figures, ...)
    results/<suite>/<entry>/seed<k>.failed/traceback.txt   the latest attempt failed

JSON convention: NaN is written as null (metrics.json reads every null back as NaN), ±inf as the
strings "Infinity"/"-Infinity" (read back as floats in metrics.json). A later success removes the
failure marker; a failure leaves an earlier complete run in place but ``list_runs`` reports the
seed as failed, since its latest attempt failed.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from bench.atomic import atomic_dir
from bench.errors import BenchError, warn_once
from bench.metrics import BONE_COLUMNS, SUBJECT_COLUMNS

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
HISTORY_FILE = "history.parquet"
TRACEBACK_FILE = "traceback.txt"
RUN_FILES: tuple[str, ...] = (CONFIG_FILE, METRICS_FILE, PREDICTIONS_FILE)
HISTORY_COLUMNS: tuple[str, ...] = ("stage", "epoch", "metric", "value")
FAILED_SUFFIX = ".failed"
_SEED_DIR = re.compile(r"^seed(\d+)$")
_FAILED_DIR = re.compile(r"^seed(\d+)\.failed$")
_RUN_FOLDER_HELP = (f"a run folder is results/<suite>/<entry>/seed<k> and contains {', '.join(RUN_FILES)} "
                    f"(and optionally {HISTORY_FILE})")


@dataclass
class RunResult:
    """One complete run read back from the store."""

    suite: str
    entry: str
    seed: int
    config: dict            # config.json as written
    metrics: dict           # metrics.json; null read back as NaN
    predictions: pd.DataFrame  # predictions.parquet
    history: pd.DataFrame | None  # history.parquet, None when the run wrote none
    path: Path | None = None  # the run folder


# --------------------------------------------------------------------------- paths
def run_dir(results: Path, suite: str, entry: str, seed: int) -> Path:
    """``results/<suite>/<entry>/seed<seed>``; names must be plain folder names."""
    for what, name in (("suite", suite), ("entry", entry)):
        _check_name(what, name)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise BenchError(f"seed must be a non-negative integer, got {seed!r}")
    return Path(results) / suite / entry / f"seed{int(seed)}"


def failure_dir(results: Path, suite: str, entry: str, seed: int) -> Path:
    """``results/<suite>/<entry>/seed<seed>.failed``: the marker of a failed latest attempt."""
    d = run_dir(results, suite, entry, seed)
    return d.with_name(d.name + FAILED_SUFFIX)


def is_complete(results: Path, suite: str, entry: str, seed: int) -> bool:
    """Whether the run folder exists and holds config.json, metrics.json and predictions.parquet."""
    d = run_dir(results, suite, entry, seed)
    return all((d / f).is_file() for f in RUN_FILES)


def is_run_folder_name(name: str) -> bool:
    """Whether `name` is a run folder's (``seed<k>``) or a failure marker's (``seed<k>.failed``)."""
    return bool(_SEED_DIR.match(name) or _FAILED_DIR.match(name))


def _check_name(what: str, name: Any) -> None:
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or "/" in name or "\\" in name or "\0" in name):
        raise BenchError(f"{what} name {name!r} cannot be a results folder name; use a plain name "
                         "(letters, digits, '-', '_') that does not start with '.'")


# --------------------------------------------------------------------------- writing
def write_run(results: Path, suite: str, entry: str, seed: int, *, config: dict, metrics: dict,
              predictions: pd.DataFrame, history: pd.DataFrame | None = None,
              extra_files: Mapping[str, bytes] | None = None) -> Path:
    """Write one complete run atomically (replacing an earlier one) and clear its failure marker.

    ``predictions`` needs subject_id, split, y_true, p_pos, y_pred, n_bones; absent per-bone
    columns are added as NaN (a subject-level entry has none) and extra columns are kept after
    them. ``extra_files`` maps relative paths inside the run folder to bytes.
    """
    target = run_dir(results, suite, entry, seed)
    if not isinstance(config, Mapping):
        raise BenchError(f"config must be a dict, got {type(config).__name__}")
    config_text = _dumps(config, "config")
    metrics_text = _dumps(_check_metrics(metrics), "metrics")
    preds = _normalise_predictions(predictions)
    hist = None if history is None else _normalise_history(history)
    files = _check_extra_files(extra_files or {})
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        (tmp / METRICS_FILE).write_text(metrics_text, encoding="utf-8")
        preds.to_parquet(tmp / PREDICTIONS_FILE, index=False)
        if hist is not None:
            hist.to_parquet(tmp / HISTORY_FILE, index=False)
        for rel, data in files.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    clear_failure(results, suite, entry, seed)
    return target


def clear_failure(results: Path, suite: str, entry: str, seed: int) -> None:
    """Remove the seed's failure marker: its latest attempt succeeded (written, or found done)."""
    shutil.rmtree(failure_dir(results, suite, entry, seed), ignore_errors=True)


def write_failure(results: Path, suite: str, entry: str, seed: int, traceback_text: str) -> Path:
    """Write ``seed<k>.failed/traceback.txt`` atomically (replacing an earlier marker); return the folder."""
    target = failure_dir(results, suite, entry, seed)
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / TRACEBACK_FILE).write_text(str(traceback_text), encoding="utf-8")
    return target


def _check_metrics(metrics: Any) -> dict:
    if not isinstance(metrics, Mapping):
        raise BenchError(f"metrics must be a dict {{split: {{metric: value}}}}, got {type(metrics).__name__}")
    for split, values in metrics.items():
        if not isinstance(split, str) or not isinstance(values, Mapping):
            raise BenchError(f"metrics[{split!r}] must be a dict of metric name → number "
                             "(as bench.metrics.split_metrics returns)")
    return dict(metrics)


def _normalise_predictions(predictions: Any) -> pd.DataFrame:
    if not isinstance(predictions, pd.DataFrame):
        raise BenchError(f"predictions must be a DataFrame, got {type(predictions).__name__}")
    core = [c for c in SUBJECT_COLUMNS if c not in BONE_COLUMNS]
    missing = [c for c in core if c not in predictions.columns]
    if missing:
        raise BenchError(f"predictions lack columns {missing}; write what bench.metrics.aggregate_subjects "
                         f"returns: {list(SUBJECT_COLUMNS)}")
    out = predictions.copy()
    for c in BONE_COLUMNS:
        if c not in out.columns:
            out[c] = np.nan
    for c in ("y_true", "y_pred"):
        values = pd.to_numeric(out[c].astype(object).where(out[c].notna(), np.nan), errors="coerce")
        if (values.notna() & ~values.isin([0.0, 1.0])).any() or (values.isna() & out[c].notna()).any():
            raise BenchError(f"predictions column {c} must hold 0/1 (NA where unknown)")
        out[c] = values.astype("Int64")
    try:
        out["p_pos"] = pd.to_numeric(out["p_pos"], errors="raise").astype(float)
        out["n_bones"] = pd.to_numeric(out["n_bones"], errors="raise").astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise BenchError(f"predictions need a numeric p_pos (NaN allowed) and an integer n_bones: {exc}") from None
    order = list(SUBJECT_COLUMNS) + [c for c in out.columns if c not in SUBJECT_COLUMNS]
    return out[order].reset_index(drop=True)


def _normalise_history(history: Any) -> pd.DataFrame:
    if not isinstance(history, pd.DataFrame):
        raise BenchError(f"history must be a DataFrame, got {type(history).__name__}")
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise BenchError(f"history lacks columns {missing}; it holds one row per record: {list(HISTORY_COLUMNS)}")
    return history.reset_index(drop=True)


def _check_extra_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for rel, data in files.items():
        p = PurePosixPath(str(rel))
        if p.is_absolute() or not p.parts or any(part in ("", ".", "..") for part in p.parts) \
                or str(p) in RUN_FILES + (HISTORY_FILE,):
            raise BenchError(f"extra file name {rel!r} must be a relative path inside the run folder, "
                             f"not one of {list(RUN_FILES + (HISTORY_FILE,))}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BenchError(f"extra file {rel!r} must be bytes, got {type(data).__name__}")
        out[str(p)] = bytes(data)
    return out


# --------------------------------------------------------------------------- JSON
def _jsonable(value: Any, where: str) -> Any:
    """Plain JSON values: NaN → None, ±inf → "Infinity"/"-Infinity", numpy/Path/tuple converted."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(items)]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT or isinstance(value, (str, bool, int)):
        return None if value is pd.NA or value is pd.NaT else value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if isinstance(value, Path):
        return str(value)
    raise BenchError(f"{where} holds a {type(value).__name__}, which cannot be saved as JSON; "
                     "use numbers, strings, lists and dicts")


def _dumps(obj: Any, where: str) -> str:
    return json.dumps(_jsonable(obj, where), sort_keys=True, indent=2, allow_nan=False) + "\n"


def _metrics_from_json(value: Any) -> Any:
    """null → NaN and "Infinity"/"-Infinity" → ±inf, recursively (metrics are numbers)."""
    if isinstance(value, dict):
        return {k: _metrics_from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_metrics_from_json(v) for v in value]
    if value is None:
        return float("nan")
    if value in ("Infinity", "-Infinity"):
        return float(value.replace("Infinity", "inf"))
    return value


# --------------------------------------------------------------------------- reading
def read_run(path: Path) -> RunResult:
    """Read a run folder ``results/<suite>/<entry>/seed<k>``; anything else is a BenchError."""
    path = Path(path)
    if not path.is_dir():
        raise BenchError(f"{path} is not a folder; {_RUN_FOLDER_HELP}")
    if _FAILED_DIR.match(path.name):
        raise BenchError(f"{path} marks a failed run (see {path / TRACEBACK_FILE}); {_RUN_FOLDER_HELP}")
    m = _SEED_DIR.match(path.name)
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    if m is None or missing:
        what = f"lacks {missing}" if missing else "is not named seed<k>"
        raise BenchError(f"{path} {what}: not a run folder; {_RUN_FOLDER_HELP}")
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        metrics = _metrics_from_json(json.loads((path / METRICS_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read the JSON files of {path} ({exc}); delete the folder and rerun") from None
    try:
        predictions = pd.read_parquet(path / PREDICTIONS_FILE)
        history = pd.read_parquet(path / HISTORY_FILE) if (path / HISTORY_FILE).is_file() else None
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise BenchError(f"cannot read the parquet files of {path} ({exc}); delete the folder and rerun") from None
    return RunResult(suite=path.parent.parent.name, entry=path.parent.name, seed=int(m.group(1)),
                     config=config, metrics=metrics, predictions=predictions, history=history,
                     path=path)


def list_runs(results: Path, suite: str | None = None) -> pd.DataFrame:
    """Every run under ``results`` (or one suite): suite, entry, seed, status, path.

    status: ``complete``; ``failed`` when the seed's latest attempt failed (path: the ``.failed``
    folder), even when an earlier complete run remains; ``incomplete`` for a ``seed<k>`` folder that
    lacks one of the run files (runs are written atomically, so it was damaged or partly copied).
    Temporary folders of interrupted writes are ignored.
    """
    results = Path(results)
    if not results.is_dir():
        raise BenchError(f"results folder {results} does not exist; `bench run` creates it")
    if suite is not None:
        _check_name("suite", suite)
        if not (results / suite).is_dir():
            raise BenchError(f"no suite {suite!r} in {results}; suites there: {_suite_dirs(results)}")
    rows = []
    for s in [suite] if suite is not None else _subdirs(results):
        for entry in _subdirs(results / s):
            seeds: dict[int, tuple[str, Path]] = {}
            for d in sorted((results / s / entry).iterdir()):
                ok, failed = _SEED_DIR.match(d.name), _FAILED_DIR.match(d.name)
                if ok and d.is_dir():
                    status = "complete" if all((d / f).is_file() for f in RUN_FILES) else "incomplete"
                    seeds.setdefault(int(ok.group(1)), (status, d))
                elif failed and d.is_dir():
                    seeds[int(failed.group(1))] = ("failed", d)
            rows += [(s, entry, k, status, p) for k, (status, p) in seeds.items()]
    frame = pd.DataFrame(rows, columns=["suite", "entry", "seed", "status", "path"])
    frame["seed"] = frame["seed"].astype(np.int64)
    return frame.sort_values(["suite", "entry", "seed"], kind="stable").reset_index(drop=True)


def _subdirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _entry_dirs(suite_dir: Path) -> list[str]:
    """The entry folders of a suite folder: those with a seed<k> (or failed) run folder, for messages
    (not `compare/`, `report/`)."""
    return [e for e in _subdirs(suite_dir)
            if any(_SEED_DIR.match(d.name) or _FAILED_DIR.match(d.name) for d in (suite_dir / e).iterdir())]


def _suite_dirs(results: Path) -> list[str]:
    """The suite folders of a results folder, for messages (not `cache/`, `mlartifacts/`, `tune/`)."""
    return [s for s in _subdirs(results) if _entry_dirs(results / s)]


def complete_runs(results: Path, suite: str, entries: Sequence[str] | None) -> list[Path]:
    """Folders of the complete runs of `suite` (restricted to `entries`), ordered by entry then seed.

    The rule of :func:`list_runs`: a seed whose latest attempt failed, or whose folder lacks a run
    file, is left out with a warning naming it (so a mean over seeds never silently drops one, and
    an earlier run is not reported as the latest).
    """
    results = Path(results)
    _check_name("suite", suite)
    if not (results / suite).is_dir():
        where = _suite_dirs(results) if results.is_dir() else "none (the results folder does not exist)"
        raise BenchError(f"no suite {suite!r} in {results}; suites there: {where}")
    available = _subdirs(results / suite)
    if entries is not None:
        if isinstance(entries, str):
            entries = [entries]
        unknown = [e for e in entries if e not in available]
        if unknown:
            raise BenchError(f"entries {unknown} have no results in {results / suite}; entries there: "
                             f"{_entry_dirs(results / suite)}")
    wanted = available if entries is None else list(dict.fromkeys(entries))
    runs = list_runs(results, suite)
    runs = runs[runs["entry"].isin(wanted)]
    for message in _skip_messages(runs):
        warn_once(message)
    done = runs[runs["status"] == "complete"]
    return [Path(p) for _, _, p in sorted(zip(done["entry"].map(wanted.index), done["seed"], done["path"]))]


def skipped_runs(results: Path, suite: str, entries: Sequence[str] | None = None) -> list[str]:
    """Why each seed of `suite` (restricted to `entries`) that :func:`complete_runs` leaves out is left out."""
    runs = list_runs(results, suite)
    return _skip_messages(runs if entries is None else runs[runs["entry"].isin(list(entries))])


def _skip_messages(runs: pd.DataFrame) -> list[str]:
    return [skipped_run_message(r.entry, r.seed, r.status, Path(r.path))
            for r in runs[runs["status"] != "complete"].itertuples()]


def skipped_run_message(entry: str, seed: int, status: str, path: Path) -> str:
    """Why a seed is left out of shows, comparisons and reports, and what to do about it."""
    if status == "failed":
        return (f"{entry} seed {seed} is left out: its latest attempt failed (see {path / TRACEBACK_FILE}); "
                "rerun it, or delete that .failed folder to use an earlier complete run")
    missing = [f for f in RUN_FILES if not (path / f).is_file()]
    return (f"{entry} seed {seed} is left out: {path} lacks {', '.join(missing)} (damaged or partly "
            "copied); delete the folder and rerun the seed")


def load_metrics(results: Path, suite: str, entries: Sequence[str] | None = None) -> pd.DataFrame:
    """Tidy metrics of a suite's complete runs: suite, entry, seed, split, metric, value (float).

    One row per number; ``extra`` scalars appear with split "extra" (nested keys joined with '.',
    non-numeric values left out). Sorted by entry, seed, split, metric.
    """
    rows = []
    for path in complete_runs(results, suite, entries):
        run = read_run(path)
        for split, values in run.metrics.items():
            for metric, value in _flatten(values):
                rows.append((suite, run.entry, run.seed, str(split), metric, value))
    frame = pd.DataFrame(rows, columns=["suite", "entry", "seed", "split", "metric", "value"])
    frame = frame.astype({"seed": np.int64, "value": float})
    return frame.sort_values(["entry", "seed", "split", "metric"], kind="stable").reset_index(drop=True)


def _flatten(values: Any, prefix: str = "") -> list[tuple[str, float]]:
    if not isinstance(values, Mapping):
        return []
    out: list[tuple[str, float]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _flatten(value, name + ".")
        elif isinstance(value, (bool, int, float, np.integer, np.floating)):
            out.append((name, float(value)))
    return out


def load_predictions(results: Path, suite: str, entries: Sequence[str] | None = None) -> pd.DataFrame:
    """Subject predictions of a suite's complete runs: entry, seed, then the predictions columns.

    Ordered by entry, seed, then as stored (split, subject_id).
    """
    frames = []
    for path in complete_runs(results, suite, entries):
        run = read_run(path)
        preds = run.predictions
        frames.append(preds.assign(entry=run.entry, seed=np.int64(run.seed))[
            ["entry", "seed", *preds.columns]])
    if not frames:
        return pd.DataFrame({"entry": pd.Series(dtype=str), "seed": pd.Series(dtype=np.int64),
                             **{c: pd.Series(dtype=float) for c in SUBJECT_COLUMNS}})
    return pd.concat(frames, ignore_index=True)
