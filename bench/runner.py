"""Run (entry × seed): cached stages, evaluation, results store, tracking, failure isolation.

For each entry and seed the runner resolves the config (profile, files, --set, the entry's own
overrides), runs the entry's stages through the content-addressed stage cache (a stage shared by
several entries, e.g. one seed's segmentation model, is computed once), evaluates the last stage's
predictions (paper eq. 10 aggregation, metrics per split) and writes
``results/<suite>/<entry>/seed<k>/`` atomically. A finished run whose key is unchanged is skipped;
a failing run is recorded with its traceback and the suite goes on.

Where runs execute is the executor's business (bench.executors: ``local`` in this process, ``ray``
as Ray tasks across a cluster). :meth:`Runner.execute_one` computes and stores one run wherever it
executes (a Ray worker rebuilds the runner from :class:`RunnerSpec`); :meth:`Runner.finish` logs a
finished run to MLflow in the driver, so one process writes the tracking store. Stage keys are
computed under a lock per key (bench.executors.locking): concurrent runs sharing a stage compute
it once and reuse it.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from bench import __version__, results as store
from bench.config import Config, resolve
from bench.data.folds import apply_fold, fold_names
from bench.data.format import Dataset
from bench.data.provision import ROLES, check_given, open_all, planned_paths, provide
from bench.errors import BenchError, brief
from bench.executors.locking import data_lock, run_lock, stage_lock
from bench.metrics import METRICS_VERSION
from bench.registry import Entry, get, stages_to_run
from bench.hardware import resolve_device
from bench.run_evaluation import evaluate
from bench.torch_settings import apply_run_settings
from bench.stage import (Fingerprint, is_cached, read_history, run_stage, stable_hash,
                         stage_key)


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
    run_key: str = ""                                       # the run's key (MLflow config hash)
    stage_keys: dict[str, str] = field(default_factory=dict)
    path: str = ""                                          # its results folder (done, skipped)
    params: dict[str, Any] = field(default_factory=dict)    # the resolved config (MLflow params)
    traceback: str = ""                                     # failed: the traceback text
    attempts: int = 1                                       # executions, retries included
    host: str = ""                                          # the machine that executed it


@dataclass(frozen=True)
class RunnerSpec:
    """What rebuilds an equivalent Runner in another process or on another node (absolute paths)."""

    results: str
    suite: str
    profile: str
    config_files: tuple[str, ...]
    sets: tuple[str, ...]
    plugins: tuple[str, ...]

    def build(self) -> "Runner":
        """A runner without tracker or progress bar (the driver tracks and shows progress)."""
        return Runner(self.results, suite=self.suite, profile=self.profile, config_files=self.config_files,
                      sets=self.sets, plugins=self.plugins, progress=False)


def fold_suffix(fold: int) -> str:
    """The results folder of fold k of a cross-validated suite is ``<suite>-fold<k>`` (bench.cv)."""
    return f"-fold{fold}"


class Runner:
    """Executes entries across seeds into a results folder."""

    def __init__(self, results: str | Path, *, suite: str = "adhoc", profile: str = "smoke",
                 config_files: Sequence[str | Path] = (), sets: Sequence[str] = (),
                 data_seg: str = "", data_cls: str = "", device: str | None = None,
                 tracker: Any = None, progress: bool | None = None, plugins: Sequence[str] = (),
                 executor: Any = None):
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
        self.plugins = list(plugins)         # plugin modules a worker imports to find the entries
        self.executor = executor             # None: bench.executors.local.LocalExecutor
        self.check_device = True             # False in a cluster driver: the workers have the GPUs
        self.auto_device: str | None = None  # what `auto` means where runs execute, if not here (cluster)
        self._datasets: dict[tuple, tuple[dict[str, Path], dict[str, Dataset], dict[str, Fingerprint]]] = {}

    # ------------------------------------------------------------------ configuration and plan
    def configure(self, entry: Entry) -> Config:
        config = resolve(self.profile, config_files=self.config_files, sets=self.sets,
                         entry_overrides=entry.overrides, entry_name=entry.name)
        if config.data.folds and not self.suite.endswith(fold_suffix(config.data.fold)):
            raise BenchError(f"data.folds={config.data.folds} cross-validates the `cls` dataset: run it with "
                             f"`bench run ... --folds {config.data.folds}`, which stores fold k in "
                             "<suite>-fold<k> and pools the folds (bench.cv)")
        return config

    def device(self, config: Config):
        """The torch.device runs of `config` execute on (``auto`` as the executor says, if it does)."""
        name = config.run.device
        if name == "auto" and self.auto_device:
            name = self.auto_device
        return resolve_device(name, self.check_device)

    def _data(self, config: Config, generate: bool, roles: tuple[str, ...] = tuple(ROLES)):
        """Dataset folders, opened datasets and fingerprints of `roles` for a config (memoised); an entry
        asks for those its stages read (:func:`data_roles`), so no phantom is generated for nothing."""
        d = config.data
        ident = (d.seg, d.cls, d.phantom_seed, d.phantom_profile or config.profile, d.folds, d.fold, d.fold_seed,
                 d.fold_by, roles)
        if ident not in self._datasets:
            if generate:
                with data_lock(self.cache_root):      # concurrent runners generate a phantom once
                    paths = provide(config, self.cache_root, self.progress, roles)
            else:
                paths = self._existing_paths(config, roles)
            if paths is None:
                return None
            datasets = open_all(paths)
            fingerprints = {role: Fingerprint.of(p) for role, p in paths.items()}
            if d.folds and "cls" in datasets:           # k-fold cross-validation (bench.data.folds)
                cls = datasets["cls"]
                manifest = apply_fold(cls.manifest, d.folds, d.fold, d.fold_seed, d.fold_by)   # checks the folds
                held_out = fold_names(cls.manifest, d.folds, d.fold_by)[d.fold]
                cls = replace(cls, manifest=manifest,
                              meta={**cls.meta, "cv": {"folds": d.folds, "fold": d.fold, "holds_out": held_out}})
                datasets["cls"] = cls
                fingerprints["cls"] = Fingerprint.of(paths["cls"], cls.manifest["split"])
            self._datasets[ident] = (paths, datasets, fingerprints)
        return self._datasets[ident]

    def _existing_paths(self, config: Config, roles: tuple[str, ...] = tuple(ROLES)) -> dict[str, Path] | None:
        paths = planned_paths(config, self.cache_root, roles)
        return paths if all((p / "manifest.csv").is_file() for p in paths.values()) else None

    def plan_run(self, entry: Entry, seed: int, generate: bool = True) -> PlannedRun:
        config = self.configure(entry)
        device = self.device(config)
        data = self._data(config, generate, data_roles(entry, config))
        stages: list[PlannedStage] = []
        keys: dict[str, str] = {}
        for stage, reads in stages_to_run(entry, config):
            if data is None:
                stages.append(PlannedStage(stage.name, None, False))
                continue
            key, _ = stage_key(stage, config, seed, {i: keys[i] for i in reads}, data[2], device.type)
            keys[stage.name] = key
            stages.append(PlannedStage(stage.name, key, is_cached(self.cache_root / stage.name / key)))
        run_key = None if data is None else stable_hash(
            {"entry": entry.name, "stages": keys, "config": run_key_config(entry, config, device.type),
             "version": __version__, "metrics": METRICS_VERSION})[:16]
        done = run_key is not None and self._finished(entry.name, seed, run_key)
        return PlannedRun(entry, seed, config, stages, run_key, done)

    def _finished(self, entry: str, seed: int, run_key: str) -> bool:
        if not store.is_complete(self.results, self.suite, entry, seed):
            return False
        saved = store.read_run(store.run_dir(self.results, self.suite, entry, seed)).config
        return saved.get("run_key") == run_key

    def plan(self, entry_names: Iterable[str], seeds: Iterable[int], generate: bool = False) -> list[PlannedRun]:
        return [self.plan_run(get(n), s, generate) for n in entry_names for s in seeds]

    def spec(self) -> RunnerSpec:
        """The recipe of this runner for a worker process (paths made absolute)."""
        env_plugins = [p.strip() for p in os.environ.get("OSTEOBENCH_PLUGINS", "").split(",") if p.strip()]
        return RunnerSpec(results=str(self.results.expanduser().resolve()), suite=self.suite, profile=self.profile,
                          config_files=tuple(str(Path(f).expanduser().resolve()) for f in self.config_files),
                          sets=tuple(self.sets), plugins=tuple(dict.fromkeys([*env_plugins, *self.plugins])))

    # ------------------------------------------------------------------ execution
    def validate(self, entry_names: Sequence[str]) -> list[Entry]:
        """Resolve every entry's config, device and stage functions so user errors surface before any work starts."""
        entries = [get(n) for n in entry_names]
        for entry in entries:
            config = self.configure(entry)
            self.device(config)
            check_given(config)                   # a dataset folder that is not one: before any run
            for stage in entry.all_stages:        # a misnamed stage function too, not once earlier stages ran
                stage.function
        return entries

    def check_data(self, entry_names: Sequence[str]) -> None:
        """Provide (generate) and open each entry's datasets now, so that data errors (e.g. folds the
        `cls` dataset cannot make) stop the command before any run instead of failing every run."""
        for entry in self.validate(entry_names):
            config = self.configure(entry)
            self._data(config, True, data_roles(entry, config))

    def run(self, entry_names: Sequence[str], seeds: Sequence[int]) -> list[Outcome]:
        """Every (entry, seed), through the runner's executor (local by default); outcomes in that order."""
        executor = self.active_executor()
        return executor.execute(self, self.tasks(entry_names, seeds))

    def active_executor(self) -> Any:
        from bench.executors.local import LocalExecutor

        return self.executor or LocalExecutor()

    def tasks(self, entry_names: Sequence[str], seeds: Sequence[int]) -> list[tuple[Entry, int]]:
        """The (entry, seed) tasks of a run, once the executor has prepared this runner (and MLflow has
        each entry's parent run)."""
        self.active_executor().prepare(self)
        entries = self.validate(entry_names)
        if self.tracker is not None:
            for entry in entries:
                self.tracker.entry_run(self.suite, entry.name, tags=entry_tags(entry))
        return [(entry, seed) for entry in entries for seed in seeds]

    def skipped(self, planned: PlannedRun) -> Outcome:
        """The outcome of a run whose results for the same run key exist already: this attempt
        succeeded, so an earlier attempt's failure marker (another config) goes."""
        path = store.run_dir(self.results, self.suite, planned.entry.name, planned.seed)
        store.clear_failure(self.results, self.suite, planned.entry.name, planned.seed)
        return Outcome(planned.entry.name, planned.seed, "skipped", 0.0, metrics=store.read_run(path).metrics,
                       run_key=planned.run_key or "", path=str(path), host=socket.gethostname(),
                       stage_keys={s.name: s.key for s in planned.stages if s.key},
                       params=entry_config(planned.entry, planned.config))

    def execute_one(self, entry: Entry, seed: int, bar: Any = None) -> Outcome:
        """Plan, compute (through the locked stage cache) and store one run; a failure is recorded."""
        started = time.time()
        planned: PlannedRun | None = None
        host = socket.gethostname()
        try:
            planned = self.plan_run(entry, seed, generate=True)
            if planned.done:
                return self.skipped(planned)
            config = planned.config
            device = resolve_device(config.run.device)
            apply_run_settings(config.run, device)
            paths, datasets, fingerprints = self._data(config, True, data_roles(entry, config))
            outputs: dict[str, Path] = {}
            keys: dict[str, str] = {}
            for stage, reads in stages_to_run(entry, config):
                if bar is not None:
                    bar.set_postfix_str(f"{entry.name} seed{seed}: {stage.name}")
                key, material = stage_key(stage, config, seed, {i: keys[i] for i in reads}, fingerprints,
                                          device.type)
                keys[stage.name] = key
                with stage_lock(self.cache_root, stage.name, key):   # one computes, the others reuse
                    outputs[stage.name] = run_stage(
                        stage, cache_root=self.cache_root, key=key, material=material, config=config, seed=seed,
                        inputs={i: outputs[i] for i in reads}, datasets=datasets, device=device)
            cls = datasets.get("cls")
            predictions, metrics = evaluate(outputs[entry.stages[-1].name],
                                            cls.manifest if cls is not None else None)
            history = pd.concat([read_history(p) for p in outputs.values()], ignore_index=True)
            run_config = {"suite": self.suite, "entry": entry.name, "seed": seed, "profile": self.profile,
                          "run_key": planned.run_key, "stages": keys, "version": __version__,
                          "data": {r: str(p) for r, p in paths.items()}, "config": entry_config(entry, config)}
            if "cls" in datasets and "cv" in datasets["cls"].meta:
                run_config["cv"] = datasets["cls"].meta["cv"]     # which fold, and what it holds out
            with run_lock(self.cache_root, self.suite, entry.name, seed):
                path = store.write_run(self.results, self.suite, entry.name, seed, config=run_config,
                                       metrics=metrics, predictions=predictions,
                                       history=history if len(history) else None)
            return Outcome(entry.name, seed, "done", time.time() - started, metrics=metrics,
                           run_key=planned.run_key or "", stage_keys=keys, path=str(path),
                           params=entry_config(entry, config), host=host)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # failure isolation: record and go on
            return self.failed(entry.name, seed, exc, traceback.format_exc(), started,
                               run_key=planned.run_key or "" if planned else "")

    def failed(self, entry: str, seed: int, exc: BaseException | str, text: str, started: float,
               run_key: str = "", host: str = "") -> Outcome:
        """Record a failed attempt (``seed<k>.failed/traceback.txt``) and return its outcome."""
        with run_lock(self.cache_root, self.suite, entry, seed):
            store.write_failure(self.results, self.suite, entry, seed, text)
        message = (exc if isinstance(exc, str) else str(exc) if isinstance(exc, BenchError)
                   else brief(exc))
        return Outcome(entry, seed, "failed", time.time() - started, error=message, run_key=run_key,
                       traceback=text, host=host or socket.gethostname())

    def finish(self, outcome: Outcome) -> Outcome:
        """Log a finished run (or a failure) to MLflow; a tracking error fails a done run. A skipped run
        is logged too unless MLflow has it already (log_seed_run reuses a finished child of the same run
        key): one computed under ``--no-mlflow`` or killed before its logging reaches MLflow on a rerun."""
        if self.tracker is None:
            return outcome
        try:
            if outcome.status == "failed":
                self.tracker.log_failure(self.suite, outcome.entry, outcome.seed, outcome.traceback or outcome.error,
                                         config_hash=outcome.run_key)
                return outcome
            path = Path(outcome.path)
            history_file = path / store.HISTORY_FILE
            self.tracker.log_seed_run(
                self.suite, outcome.entry, outcome.seed, params=outcome.params, metrics=outcome.metrics,
                history=pd.read_parquet(history_file) if history_file.is_file() else None,
                artifacts=[path / store.CONFIG_FILE, path / store.METRICS_FILE, path / store.PREDICTIONS_FILE],
                tags={"osteobench.stage_keys": ",".join(f"{k}={v}" for k, v in outcome.stage_keys.items())},
                config_hash=outcome.run_key)
            return outcome
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if outcome.status == "failed":      # tracking must not hide the real failure
                return outcome
            if outcome.status == "skipped":     # its results stand; only the MLflow copy is missing
                warnings.warn(f"{outcome.entry} seed {outcome.seed}: could not log the finished run to MLflow "
                              f"({brief(exc)}); rerun to try again", stacklevel=2)
                return outcome
            failed = self.failed(outcome.entry, outcome.seed, exc, traceback.format_exc(), time.time(),
                                 run_key=outcome.run_key, host=outcome.host)
            return replace(failed, seconds=outcome.seconds, attempts=outcome.attempts)


def entry_tags(entry: Entry) -> dict[str, str]:
    return {"osteobench.kind": entry.kind, "osteobench.table": entry.table or "",
            "osteobench.row": entry.row or "", "osteobench.parent": entry.parent or "",
            "osteobench.version": __version__}


def data_roles(entry: Entry, config: Config) -> tuple[str, ...]:
    """The datasets a run of `entry` reads with `config`: those its stages to run declare, and `cls`,
    whose labels every run is scored on."""
    needed = {"cls"}.union(*(set(stage.datasets) for stage, _ in stages_to_run(entry, config)))
    return tuple(role for role in ROLES if role in needed)


def run_key_config(entry: Entry, config: Config, device_type: str) -> dict:
    """:func:`entry_config` as the run key hashes it: what the data and device are, not how they were
    spelled. ``run.device`` becomes the device type the run executes on (``auto`` and ``cpu`` on a CPU
    machine are one run), ``data.phantom_profile`` the profile the phantoms have, and the dataset
    folders drop out (the stage keys hold their content fingerprints)."""
    material = entry_config(entry, config)
    run, data = dict(material.get("run", {})), dict(material.get("data", {}))
    if run:
        run["device"] = device_type
    if data:
        data["phantom_profile"] = data.get("phantom_profile") or config.profile
        data.update({role: "given" if data.get(role) else "" for role in ("seg", "cls") if role in data})
    return {**material, "run": run, "data": data}


def entry_config(entry: Entry, config: Config) -> dict:
    """The config of a run: the `data` and `run` sections and those its stages declare.

    Sections registered by modules the entry does not use (which depend on what this process
    happened to import) stay out, so run keys and config.json agree across processes and nodes.
    """
    used = {"data", "run"}.union(*({s.partition(".")[0] for s in stage.sections} for stage in entry.all_stages))
    return config.to_dict(used)
