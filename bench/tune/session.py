"""One `bench tune` session (issue 8): set up, run trials until the study's budget, write outputs.

Outputs, under ``<results>/tune/<study>/`` (each file written atomically; rewritten by every
session, so the last worker to finish leaves the complete picture)::

    journal.log             the Optuna journal (default storage; resumable, shared by workers)
    summary.json            study, target, storage, trial counts, best trial, files, notes
    trials.csv              one row per trial: number, state, value, parameters, metrics, worker
    best.yaml               the best parameters as a `bench run --config` overlay (bench.tune.overlay)
    history.png  importance.png  slice_gamma0_lam.png     (bench.tune.plots)
    trials/<number>/        downstream: a trial's stage outputs while it runs (kept with tune.keep_trial_outputs)

Trial configs are resolved like a run's (profile → --config files → --set → the entry's own
overrides) with the trial's parameters added to the --set layer; a --set of a searched key is
refused (narrow its range with tune.* instead). The downstream target also forces
``segmentation.eval_splits=val``.

Workers (issue 11): ``--workers N`` starts N worker processes (multiprocessing ``spawn``: a fresh
interpreter each, no inherited CUDA or database state) on the one study; each is a session of its
own (its own sampler stream) and they share the budget under the study lock (bench.tune.study).
On a machine with several GPUs (device cuda or auto) worker i sees only GPU i mod #GPUs.
The parent first checks the request, creates the storage's tables, the MLflow store and the
phantom data, so workers never race to create them; it writes the outputs once all have ended.
Workers on several machines: run `bench tune` with the same arguments and a shared
``--storage postgresql://...`` on each (with ``--workers`` per machine, e.g. its GPU count).
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from bench.atomic import atomic_write_text
from bench.config import Config, parse_sets, resolve
from bench.errors import BenchError
from bench.stage import stable_hash
from bench.tune import plots, study as st
from bench.tune.objective import DIRECTIONS, DownstreamObjective, SegObjective, check_entry, require_mose
from bench.tune.overlay import OVERLAY_FILE, write_overlay
from bench.tune.space import make_space, searched_keys, suggest
from bench.tune.trial_log import TrialLogger

TARGETS = tuple(DIRECTIONS)
OBJECTIVE_TEXT = {"seg": "validation GED of the segmentation model (lower is better)",
                  "downstream": "validation macro-F1 at 4 decimals + 1e-5 x validation AUC (higher is better)"}
MACHINE_KEYS = ("run.device", "run.num_threads", "data.seg", "data.cls")   # may differ between workers


@dataclass
class TuneRequest:
    """Everything `bench tune` was asked (see bench.commands.tune for the options)."""

    target: str
    trials: int
    study: str
    results: Path = Path("results")
    storage: str = ""
    profile: str = "smoke"
    entry: str = "simclr"
    seed: int = 0
    config_files: Sequence[str | Path] = ()
    sets: Sequence[str] = ()
    data_seg: str = ""
    data_cls: str = ""
    device: str | None = None
    plugins: Sequence[str] = ()
    tracking_uri: str | None = None
    mlflow: bool = True
    progress: bool = False
    notes: list[str] = field(default_factory=list)
    workers: int = 1                     # worker processes of this session (module docstring)
    outputs: bool = True                 # write summary.json and the rest at the end (workers: no)


def check_request(req: TuneRequest) -> None:
    if req.target not in TARGETS:
        raise BenchError(f"unknown tuning target {req.target!r}; choose one of {', '.join(TARGETS)}")
    if not isinstance(req.trials, int) or isinstance(req.trials, bool) or req.trials < 1:
        raise BenchError(f"--trials must be a positive number of trials (the study's total), got {req.trials!r}")
    if not isinstance(req.workers, int) or isinstance(req.workers, bool) or req.workers < 1:
        raise BenchError(f"--workers must be a positive number of processes, got {req.workers!r}")
    st.check_study_name(req.study)


class Setup:
    """The resolved pieces of a session: base config, space, entry, trial configs."""

    def __init__(self, req: TuneRequest):
        from bench import registry

        check_request(req)
        registry.load_entries(req.plugins)
        self.req = req
        self.entry = registry.get(req.entry) if req.target == "downstream" else None
        user = parse_sets(req.sets)
        clash = sorted(set(user) & set(searched_keys()))
        if clash:
            raise BenchError(f"--set {', '.join(clash)}: these keys are searched; narrow their range with "
                             "tune.* options instead (e.g. --set tune.lam_low=1 --set tune.lam_high=1)")
        extra = {}
        if req.data_seg:
            extra["data.seg"] = str(Path(req.data_seg).expanduser().resolve())
        if req.data_cls:
            extra["data.cls"] = str(Path(req.data_cls).expanduser().resolve())
        if req.device:
            extra["run.device"] = req.device
        if req.target == "downstream":
            extra["segmentation.eval_splits"] = "val"      # the test split is never touched
        self.sets = {**user, **extra}
        self.base = self.config({})
        if self.base.data.folds:
            raise BenchError(f"bench tune selects on one validation split; data.folds={self.base.data.folds} "
                             "cross-validates `bench run --folds`: tune without it, then run the tuned config "
                             "across the folds")
        if self.entry is not None:
            check_entry(self.entry, self.base)
        require_mose(self.base)
        self.space = make_space(self.base.tune, self.base.segmentation)
        self.study_dir = Path(req.results) / "tune" / req.study
        self._paths: dict[str, Path] | None = None
        self._data_identity: dict[str, str] | None = None

    def data_paths(self) -> dict[str, Path]:
        """The dataset folders; a phantom is generated once, under the cache's data lock (a concurrent
        `bench run` or `bench tune` on the same results folder waits for it instead of writing it too)."""
        if self._paths is None:
            from bench.data.provision import provide
            from bench.executors.locking import data_lock

            cache = Path(self.req.results) / "cache"
            with data_lock(cache):
                self._paths = provide(self.base, cache, self.req.progress)
        return self._paths

    def data_identity(self) -> dict[str, str]:
        """Fingerprints (bench.fingerprint, splits included) of the datasets the target reads: a study
        resumed on other data is refused, not mixed (the data paths may differ between workers)."""
        if self._data_identity is None:
            from bench.fingerprint import dataset_fingerprint

            roles = ("seg",) if self.req.target == "seg" else ("seg", "cls")
            self._data_identity = {r: dataset_fingerprint(p)[:16] for r, p in self.data_paths().items() if r in roles}
        return self._data_identity

    def config(self, overrides: dict[str, Any]) -> Config:
        entry = self.entry
        return resolve(self.req.profile, config_files=self.req.config_files, sets={**self.sets, **overrides},
                       entry_overrides=entry.overrides if entry else None, entry_name=entry.name if entry else "")

    def identity(self, with_data: bool = True) -> dict[str, Any]:
        """What a study is made with; `with_data=False` leaves out the data (needs no phantom generated)."""
        fixed = self.base.to_dict()
        fixed.pop("tune", None)                        # search settings; the ranges are in `space`
        for key in MACHINE_KEYS + searched_keys():
            section, name = key.split(".", 1)
            fixed.get(section, {}).pop(name, None)
        return {"target": self.req.target, "direction": DIRECTIONS[self.req.target], "profile": self.req.profile,
                "entry": self.entry.name if self.entry else "", "seed": self.req.seed,
                "space": self.space.to_dict(), "config_hash": stable_hash(fixed)[:16],
                **({"data": self.data_identity()} if with_data else {})}

    def objective(self) -> Any:
        from bench.data.provision import open_all
        from bench.hardware import resolve_device
        from bench.torch_settings import apply_run_settings

        device = resolve_device(self.base.run.device)
        apply_run_settings(self.base.run, device)
        datasets = open_all(self.data_paths())
        if self.req.target == "seg":
            return SegObjective(self.base, datasets, self.req.seed, device)
        return DownstreamObjective(self.entry, self.base, datasets, self.req.seed, device,
                                   self.study_dir / "trials", self.base.tune.keep_trial_outputs)


def run_tune(req: TuneRequest) -> dict[str, Any]:
    """Run a session of study `req.study` (module docstring); return the summary written."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    setup = Setup(req)
    results = Path(req.results)
    mlflow_db = st.sqlite_file(req.tracking_uri) if req.tracking_uri else (results / "mlflow.db").resolve()
    store = st.open_storage(req.storage, setup.study_dir, mlflow_db)
    direction = DIRECTIONS[req.target]
    study = st.open_study(store, req.study, direction)
    st.check_identity(study, setup.identity(with_data=False), leave_out=("data",))   # before any phantom
    if req.workers > 1:
        return _run_workers(req, setup, store, study)
    with store.locked():
        session = st.join(study, setup.identity())
    st.configure(study, setup.base.tune, req.seed, session, shared_lock=store.shared_lock)
    objective = setup.objective()
    logger = TrialLogger(results, req.study, uri=req.tracking_uri, enabled=req.mlflow,
                         params={"target": req.target, "profile": req.profile, "storage": store.description,
                                 **setup.identity(), "config": setup.base.to_dict()},
                         tags={"osteobench.tune_target": req.target})

    def evaluate(trial: Any) -> Any:
        return objective(trial, setup.config(suggest(trial, setup.space)))

    def on_end(trial: Any, frozen: Any, record: Any, error: str) -> None:
        logger.end(trial, frozen, record, error)
        value = "-" if frozen.value is None else f"{frozen.value:.4f}"
        print(f"tune {req.study}: trial {frozen.number} {frozen.state.name} value {value} "
              f"{json.dumps(frozen.params, default=str)}", flush=True)

    try:
        st.run_trials(study, store, req.trials, evaluate, max_failures=setup.base.tune.max_failures,
                      on_start=logger.start, on_end=on_end)
    finally:
        logger.close()
    return write_outputs(study, setup, store, session) if req.outputs else {}


def _run_workers(req: TuneRequest, setup: Setup, store: st.StudyStorage, study: Any) -> dict[str, Any]:
    """Start `req.workers` spawned worker sessions, wait for them, write the outputs (module docstring)."""
    import multiprocessing

    if not store.shared_lock:
        req.notes.append(f"{store.description} has no lock shared by workers: the study may run up to "
                         f"{req.workers - 1} trials beyond --trials")
    setup.data_paths()                                       # phantom data once, before the workers
    if req.mlflow:
        from bench.tracking import Tracker

        Tracker(Path(req.results), uri=req.tracking_uri)     # creates the store's tables once
    worker_req = replace(req, workers=1, outputs=False, progress=False, notes=[])
    gpus = _gpu_ids(setup.base.run.device)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_main, args=(worker_req, gpus[i % len(gpus)] if gpus else None),
                         name=f"bench-tune-{i}") for i in range(req.workers)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    except KeyboardInterrupt:                 # the workers got the signal too: let them fail their trials
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.terminate()
        raise
    codes = [p.exitcode for p in procs]
    sessions = int(study.user_attrs.get(st.SESSIONS, req.workers))
    summary = write_outputs(study, setup, store, sessions - 1)
    if any(code != 0 for code in codes):
        raise BenchError(f"{sum(c != 0 for c in codes)} of {req.workers} tune workers failed (exit codes {codes}; "
                         "their messages are above). The study keeps every finished trial: fix the cause and rerun "
                         "the same command to resume")
    return summary


def _gpu_ids(device: str) -> list[str]:
    """The GPUs workers are spread over, round robin (``device`` cuda or auto with GPUs); [] otherwise.

    An explicit ``cuda:<k>`` keeps every worker on that GPU; ``CUDA_VISIBLE_DEVICES`` is respected.
    """
    from bench.hardware import resolve_device

    if str(resolve_device(device)) != "cuda":
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _worker_main(req: TuneRequest, gpu: str | None = None) -> None:
    """Entry point of a spawned worker: one session (on GPU `gpu` if given); a user error exits 2."""
    import logging

    if gpu is not None:                        # read when CUDA initialises, i.e. after this line
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        run_tune(req)
    except BenchError as exc:
        print(f"bench tune worker {os.getpid()}: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def write_outputs(study: Any, setup: Setup, store: st.StudyStorage, session: int) -> dict[str, Any]:
    """summary.json, trials.csv, best.yaml and the figures (module docstring)."""
    from optuna.trial import TrialState

    req, out = setup.req, setup.study_dir
    out.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s and not st.interrupted(t) for t in trials) for s in TrialState}
    counts["interrupted"] = sum(st.interrupted(t) for t in trials)
    label = "validation GED" if req.target == "seg" else "validation score"
    files, notes = plots.draw_all(study, out, label)
    best = None
    if counts["complete"]:
        b = study.best_trial
        best = {"number": b.number, "value": b.value, "params": dict(b.params),
                "metrics": {k: (v if math.isfinite(v) else None) for k, v in b.user_attrs.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)},
                "mlflow_run_id": b.user_attrs.get("mlflow_run_id", "")}
        epochs = resolve(req.profile, config_files=req.config_files, sets=list(req.sets)).segmentation.epochs
        header = [f"bench tune: study {req.study}, target {req.target} ({OBJECTIVE_TEXT[req.target]})",
                  f"best trial {b.number} of {len(trials)}, value {b.value:.6g}, profile {req.profile}"
                  + (f", entry {setup.entry.name}" if setup.entry else ""),
                  *([f"the trials ran with --config {' '.join(map(str, req.config_files))}"] if req.config_files
                    else []),
                  *([f"the trials ran with --set {' '.join(req.sets)}"] if req.sets else []),
                  f"epoch counts (patience, anneal length) are those of {epochs}-epoch trainings "
                  f"(segmentation.epochs); a run of another length needs them rescaled",
                  f"use: bench run --config {out / OVERLAY_FILE} ..."]
        write_overlay(out / OVERLAY_FILE, b.params, header, req.profile)
        files["overlay"] = OVERLAY_FILE
    else:
        notes.append("no complete trial yet: no best parameters and no overlay")
    used = st.budget_used(study)
    if used > req.trials:
        notes.append(f"the study holds {used} counted trials, more than --trials {req.trials}: --trials is the "
                     "study's total budget (a rerun resumes to it), so this session ran none")
    rows = [{"number": t.number, "state": t.state.name, "value": t.value,
             **{f"param_{k}": v for k, v in t.params.items()},
             **{k: v for k, v in t.user_attrs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
             "worker": t.user_attrs.get(st.WORKER, ""),
             "seconds": t.duration.total_seconds() if t.duration is not None else math.nan} for t in trials]
    atomic_write_text(out / "trials.csv", pd.DataFrame(rows).to_csv(index=False))
    files["trials"] = "trials.csv"
    summary = {"study": req.study, "target": req.target, "direction": study.direction.name.lower(),
               "objective": OBJECTIVE_TEXT[req.target], "profile": req.profile,
               "config_files": [str(f) for f in req.config_files], "sets": list(req.sets),
               "entry": setup.entry.name if setup.entry else None, "seed": req.seed,
               "storage": store.description, "sessions": int(study.user_attrs.get(st.SESSIONS, session + 1)),
               "requested_trials": req.trials,
               "trials": {"total": len(trials), **counts}, "space": setup.space.to_dict(),
               "best": best, "files": files, "notes": notes}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary
