"""Run (entry × seed): cached stages, evaluation, results store, tracking, failure isolation.

For each entry and seed the runner resolves the config (profile, files, --set, the entry's own
overrides), runs the entry's stages through the content-addressed stage cache (a stage shared by
several entries, e.g. one seed's segmentation model, is computed once), evaluates the last stage's
predictions (paper eq. 10 aggregation, metrics per split) and writes
``results/<suite>/<entry>/seed<k>/`` atomically. A finished run whose key is unchanged is skipped;
a failing run is recorded with its traceback and the suite goes on.
"""
from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from bench import __version__, results as store
from bench.config import Config, resolve
from bench.data.format import Dataset
from bench.data.provision import open_all, planned_paths, provide
from bench.errors import BenchError
from bench.metrics import aggregate_subjects, split_metrics
from bench.registry import Entry, get
from bench.stage import (STAGE_MARKER, dataset_fingerprint, is_cached, read_history, run_stage,
                         stable_hash, stage_key)


@dataclass
class PlannedStage:
    name: str
    key: str | None          # None while a dataset it needs is still to be generated
    cached: bool


@dataclass
class PlannedRun:
    entry: Entry
    seed: int
    config: Config
    stages: list[PlannedStage]
    run_key: str | None
    done: bool               # results for this exact run key already exist


@dataclass
class Outcome:
    entry: str
    seed: int
    status: str              # done | skipped | failed
    seconds: float = 0.0
    error: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)


def resolve_device(name: str):
    """`auto` → cuda when available else cpu; `cuda` without a GPU is a user error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise BenchError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


class Runner:
    """Executes entries across seeds into a results folder."""

    def __init__(self, results: str | Path, *, suite: str = "adhoc", profile: str = "smoke",
                 config_files: Sequence[str | Path] = (), sets: Sequence[str] = (),
                 data_seg: str = "", data_cls: str = "", device: str | None = None,
                 tracker: Any = None, progress: bool | None = None):
        self.results = Path(results)
        self.cache_root = self.results / "cache"
        self.suite = suite
        self.profile = profile
        self.config_files = list(config_files)
        self.sets = list(sets)
        if data_seg:
            self.sets.append(f"data.seg={Path(data_seg).expanduser().resolve()}")
        if data_cls:
            self.sets.append(f"data.cls={Path(data_cls).expanduser().resolve()}")
        if device:
            self.sets.append(f"run.device={device}")
        self.tracker = tracker
        self.progress = sys.stderr.isatty() if progress is None else progress
        self._datasets: dict[tuple, tuple[dict[str, Path], dict[str, Dataset], dict[str, str]]] = {}

    # ------------------------------------------------------------------ configuration and plan
    def configure(self, entry: Entry) -> Config:
        return resolve(self.profile, config_files=self.config_files, sets=self.sets,
                       entry_overrides=entry.overrides, entry_name=entry.name)

    def _data(self, config: Config, generate: bool):
        """Dataset folders, opened datasets and fingerprints for a config (memoised)."""
        ident = (config.data.seg, config.data.cls, config.data.phantom_seed,
                 config.data.phantom_profile or config.profile)
        if ident not in self._datasets:
            paths = provide(config, self.cache_root, self.progress) if generate else self._existing_paths(config)
            if paths is None:
                return None
            fingerprints = {role: dataset_fingerprint(p) for role, p in paths.items()}
            self._datasets[ident] = (paths, open_all(paths), fingerprints)
        return self._datasets[ident]

    def _existing_paths(self, config: Config) -> dict[str, Path] | None:
        paths = planned_paths(config, self.cache_root)
        return paths if all((p / "manifest.csv").is_file() for p in paths.values()) else None

    def plan_run(self, entry: Entry, seed: int, generate: bool = True) -> PlannedRun:
        config = self.configure(entry)
        device = resolve_device(config.run.device)
        data = self._data(config, generate)
        stages: list[PlannedStage] = []
        keys: dict[str, str] = {}
        for stage in entry.stages:
            if data is None:
                stages.append(PlannedStage(stage.name, None, False))
                continue
            key, _ = stage_key(stage, config, seed, {i: keys[i] for i in stage.inputs}, data[2], device.type)
            keys[stage.name] = key
            stages.append(PlannedStage(stage.name, key, is_cached(self.cache_root / stage.name / key)))
        run_key = None if data is None else stable_hash(
            {"entry": entry.name, "stages": keys, "config": config.to_dict(), "version": __version__})[:16]
        done = run_key is not None and self._finished(entry.name, seed, run_key)
        return PlannedRun(entry, seed, config, stages, run_key, done)

    def _finished(self, entry: str, seed: int, run_key: str) -> bool:
        if not store.is_complete(self.results, self.suite, entry, seed):
            return False
        saved = store.read_run(store.run_dir(self.results, self.suite, entry, seed)).config
        return saved.get("run_key") == run_key

    def plan(self, entry_names: Iterable[str], seeds: Iterable[int], generate: bool = False) -> list[PlannedRun]:
        return [self.plan_run(get(n), s, generate) for n in entry_names for s in seeds]

    # ------------------------------------------------------------------ execution
    def validate(self, entry_names: Sequence[str]) -> list[Entry]:
        """Resolve every entry's config and device so user errors surface before any work starts."""
        entries = [get(n) for n in entry_names]
        for entry in entries:
            resolve_device(self.configure(entry).run.device)
        return entries

    def run(self, entry_names: Sequence[str], seeds: Sequence[int]) -> list[Outcome]:
        from tqdm.auto import tqdm

        entries = self.validate(entry_names)
        outcomes: list[Outcome] = []
        bar = tqdm(total=len(entries) * len(seeds), disable=not self.progress, unit="run",
                   desc=f"suite {self.suite}", file=sys.stderr)
        for entry in entries:
            if self.tracker is not None:
                self.tracker.entry_run(self.suite, entry.name, tags=_entry_tags(entry))
            for seed in seeds:
                bar.set_postfix_str(f"{entry.name} seed{seed}")
                outcomes.append(self._run_one(entry, seed, bar))
                bar.update(1)
        bar.close()
        return outcomes

    def _run_one(self, entry: Entry, seed: int, bar: Any) -> Outcome:
        started = time.time()
        planned: PlannedRun | None = None
        try:
            planned = self.plan_run(entry, seed, generate=True)
            if planned.done:
                metrics = store.read_run(store.run_dir(self.results, self.suite, entry.name, seed)).metrics
                return Outcome(entry.name, seed, "skipped", 0.0, metrics=metrics)
            config = planned.config
            device = resolve_device(config.run.device)
            _set_determinism(config)
            paths, datasets, fingerprints = self._data(config, generate=True)
            outputs: dict[str, Path] = {}
            keys: dict[str, str] = {}
            for stage in entry.stages:
                bar.set_postfix_str(f"{entry.name} seed{seed}: {stage.name}")
                key, material = stage_key(stage, config, seed, {i: keys[i] for i in stage.inputs},
                                          fingerprints, device.type)
                keys[stage.name] = key
                outputs[stage.name] = run_stage(
                    stage, cache_root=self.cache_root, key=key, material=material, config=config,
                    seed=seed, inputs={i: outputs[i] for i in stage.inputs}, datasets=datasets, device=device)
            predictions, metrics = evaluate(outputs[entry.stages[-1].name])
            history = pd.concat([read_history(p) for p in outputs.values()], ignore_index=True)
            run_config = {"suite": self.suite, "entry": entry.name, "seed": seed, "profile": self.profile,
                          "run_key": planned.run_key, "stages": keys, "version": __version__,
                          "data": {r: str(p) for r, p in paths.items()}, "config": config.to_dict()}
            path = store.write_run(self.results, self.suite, entry.name, seed, config=run_config,
                                   metrics=metrics, predictions=predictions,
                                   history=history if len(history) else None)
            if self.tracker is not None:
                self.tracker.log_seed_run(
                    self.suite, entry.name, seed, params=config.to_dict(), metrics=metrics,
                    history=history if len(history) else None,
                    artifacts=[path / "config.json", path / "metrics.json", path / "predictions.parquet"],
                    tags={"osteobench.stage_keys": ",".join(f"{k}={v}" for k, v in keys.items())},
                    config_hash=planned.run_key or "")
            return Outcome(entry.name, seed, "done", time.time() - started, metrics=metrics)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # failure isolation: record and go on
            text = traceback.format_exc()
            store.write_failure(self.results, self.suite, entry.name, seed, text)
            if self.tracker is not None:
                try:
                    self.tracker.log_failure(self.suite, entry.name, seed, text,
                                             config_hash=planned.run_key or "" if planned else "")
                except Exception:  # tracking must not hide the real failure
                    pass
            message = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
            return Outcome(entry.name, seed, "failed", time.time() - started, error=message)


def evaluate(stage_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Subject predictions and metrics per split from a final stage's outputs (paper eq. 10)."""
    bone_file = stage_dir / "bone_predictions.parquet"
    subject_file = stage_dir / "predictions.parquet"
    if bone_file.is_file():
        subjects = aggregate_subjects(pd.read_parquet(bone_file))
    elif subject_file.is_file():
        subjects = pd.read_parquet(subject_file)
        missing = {"subject_id", "split", "y_true", "p_pos"} - set(subjects.columns)
        if missing:
            raise BenchError(f"{subject_file} lacks columns {sorted(missing)}")
        if "y_pred" not in subjects.columns:
            subjects["y_pred"] = (subjects["p_pos"] > 0.5).astype("Int64")
        if "n_bones" not in subjects.columns:
            subjects["n_bones"] = 0
    else:
        raise BenchError(f"the last stage wrote neither bone_predictions.parquet nor predictions.parquet "
                         f"into {stage_dir}")
    metrics: dict[str, Any] = split_metrics(subjects)
    marker = stage_dir / STAGE_MARKER
    if marker.is_file():
        import json

        extra = json.loads(marker.read_text()).get("summary", {}).get("metrics")
        if extra:
            metrics["extra"] = extra
    return subjects, metrics


def _entry_tags(entry: Entry) -> dict[str, str]:
    return {"osteobench.kind": entry.kind, "osteobench.table": entry.table or "",
            "osteobench.row": entry.row or "", "osteobench.parent": entry.parent or "",
            "osteobench.version": __version__}


def _set_determinism(config: Config) -> None:
    import torch

    if config.run.num_threads:
        torch.set_num_threads(config.run.num_threads)
    if config.run.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
