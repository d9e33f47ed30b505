"""Objectives of `bench tune` (issue 8): what one trial computes from a resolved config.

* ``seg`` (minimise): the validation GED of a segmentation model trained with the trial's
  parameters on the `seg` dataset's train split: the model-selection GED of
  ``methods.segmentation.train.train_segmentation`` (compact weighted form, the lowest over the
  validated epochs). The train and val splits are loaded once per process.
* ``downstream`` (maximise): the validation score (bench.tune.data.validation_score) of one
  entry run through its stages (bench.stage.run_stage) with the trial's parameters; every trial
  has its own stage cache under ``tune/<study>/trials/<number>/``, removed after the trial unless
  ``tune.keep_trial_outputs``. The segmentation stage evaluates its val split only.

Both read test-free views of the datasets (bench.tune.data.without_test). Pruning: both report
the per-epoch validation GED of the segmentation training to the trial (the downstream objective
reports -GED, so that MedianPruner, which compares intermediate values in the study's direction,
stops trials whose segmentation is worse than the median at the same epoch).

`bench` knows no particular method: the segmentation code is imported when an objective is
built, never at module import (imports point methods → bench).
"""
from __future__ import annotations

import dataclasses
import importlib
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from bench.config import Config
from bench.data.format import Dataset
from bench.errors import BenchError
from bench.registry import Entry, Stage, stages_to_run
from bench.stage import read_history, run_stage, stage_key
from bench.tune.data import validation_score, view_fingerprint, without_test

SEG_STAGE = "segment"                     # the stage whose config the search space changes
DIRECTIONS = {"seg": "minimize", "downstream": "maximize"}


@dataclass
class TrialRecord:
    """What a trial produced: its objective value, final metrics and per-epoch history."""

    value: float
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[tuple[str, float, int]] = field(default_factory=list)   # (metric, value, step)


class PruningReporter:
    """The `log` callback of the segmentation training: ``val_ged`` of each epoch → trial.report.

    Raises ``optuna.TrialPruned`` when the study's pruner says so; `sign` = -1 reports -GED
    (for a maximised study). Every logged value is kept in `history` as (metric, value, epoch).
    """

    def __init__(self, trial: Any, sign: float = 1.0, prefix: str = "segmentation/"):
        self.trial = trial
        self.sign = sign
        self.prefix = prefix
        self.history: list[tuple[str, float, int]] = []

    def __call__(self, metric: str, value: float, epoch: int | None = None) -> None:
        import optuna

        value = float(value)
        self.history.append((f"{self.prefix}{metric}", value, -1 if epoch is None else int(epoch)))
        if metric != "val_ged" or epoch is None or math.isnan(value):
            return
        self.trial.report(self.sign * value, int(epoch))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: validation GED {value:.4f} is worse than the median "
                                     "of earlier trials at this epoch")


def check_entry(entry: Entry, config: Config | None = None) -> None:
    """The downstream entry must run the segmentation stage, and under `config` read it (else gamma and
    lambda change nothing)."""
    if SEG_STAGE not in [s.name for s in entry.stages]:
        raise BenchError(f"entry {entry.name!r} has no {SEG_STAGE!r} stage (stages: "
                         f"{', '.join(s.name for s in entry.stages)}): gamma and lambda cannot change it; "
                         "choose a full-method entry such as simclr")
    if config is not None and SEG_STAGE not in [s.name for s, _ in stages_to_run(entry, config)]:
        raise BenchError(f"entry {entry.name!r} does not read its {SEG_STAGE!r} stage under this configuration "
                         "(its patches or label maps come from the annotators or the truth): gamma and lambda "
                         "cannot change it; set patches.source=predicted")


def require_mose(config: Config) -> None:
    if config.segmentation.model != "mose":
        raise BenchError(f"segmentation.model = {config.segmentation.model!r}: gamma and lambda only exist for "
                         "the mixture of stochastic experts (segmentation.model=mose); tune a MoSE entry")


class SegObjective:
    """Validation GED of a segmentation training (minimise); see the module docstring."""

    direction = DIRECTIONS["seg"]

    def __init__(self, base: Config, datasets: dict[str, Dataset], seed: int, device: Any):
        require_mose(base)
        data = importlib.import_module("methods.segmentation.data")
        self.seed, self.device = seed, device
        seg = without_test(datasets["seg"])
        _, self.train, self.val = data.training_splits(seg, base.segmentation, device)   # as the segment stage
        if not len(self.val):
            raise BenchError(f"the `seg` dataset {seg.root} has no annotated validation image; the seg "
                             "objective (validation GED) needs masks in its val split")

    def __call__(self, trial: Any, config: Config) -> TrialRecord:
        train = importlib.import_module("methods.segmentation.train")
        require_mose(config)
        cfg = config.segmentation
        reporter = PruningReporter(trial, sign=1.0)
        result = train.train_segmentation(cfg, self.train, self.val, seed=self.seed, device=self.device,
                                          log=reporter)
        metrics = {"best_val_ged": float(result.best_val_ged), "best_epoch": float(result.best_epoch),
                   "seconds_per_epoch": float(result.seconds_per_epoch)}
        return TrialRecord(float(result.best_val_ged), metrics, reporter.history)


def _reporting(stage: Stage, reporter: PruningReporter) -> Stage:
    """The stage with its context's `log` also feeding `reporter` (for pruning)."""
    fn = stage.function

    def reporting_stage(ctx: Any) -> Any:
        original: Callable[..., None] = ctx.log

        def log(metric: str, value: float, epoch: int | None = None) -> None:
            original(metric, value, epoch)
            reporter(metric, value, epoch)

        ctx.log = log
        return fn(ctx)

    reporting_stage.__qualname__ = f"tune_reporting[{fn.__module__}.{fn.__qualname__}]"
    return dataclasses.replace(stage, fn=reporting_stage)


class DownstreamObjective:
    """Validation macro-F1 (AUC tie-break) of an entry run with the trial's parameters (maximise)."""

    direction = DIRECTIONS["downstream"]

    def __init__(self, entry: Entry, base: Config, datasets: dict[str, Dataset], seed: int, device: Any,
                 trials_dir: Path, keep_outputs: bool = False):
        require_mose(base)
        check_entry(entry, base)
        self.entry, self.seed, self.device = entry, seed, device
        self.views = {role: without_test(ds) for role, ds in datasets.items()}
        self.fingerprints = {role: view_fingerprint(v) for role, v in self.views.items()}
        self.trials_dir = Path(trials_dir)
        self.keep_outputs = keep_outputs

    def __call__(self, trial: Any, config: Config) -> TrialRecord:
        require_mose(config)
        reporter = PruningReporter(trial, sign=-1.0)
        cache = self.trials_dir / f"{trial.number:04d}"
        outputs: dict[str, Path] = {}
        keys: dict[str, str] = {}
        try:
            for stage, reads in stages_to_run(self.entry, config):
                run = _reporting(stage, reporter) if stage.name == SEG_STAGE else stage
                key, material = stage_key(run, config, self.seed, {i: keys[i] for i in reads},
                                          self.fingerprints, self.device.type)
                keys[stage.name] = key
                outputs[stage.name] = run_stage(run, cache_root=cache, key=key, material=material, config=config,
                                                seed=self.seed, inputs={i: outputs[i] for i in reads},
                                                datasets=self.views, device=self.device)
            score = validation_score(_final_predictions(outputs[self.entry.stages[-1].name]))
            history = [(f"{r.stage}/{r.metric}", float(r.value), int(r.epoch))
                       for p in outputs.values() for r in read_history(p).itertuples(index=False)]
        finally:
            if not self.keep_outputs:
                shutil.rmtree(cache, ignore_errors=True)
        value = score.pop("value")
        return TrialRecord(value, score, history)


def _final_predictions(stage_dir: Path) -> pd.DataFrame:
    for name in ("bone_predictions.parquet", "predictions.parquet"):
        if (stage_dir / name).is_file():
            return pd.read_parquet(stage_dir / name)
    raise BenchError(f"the entry's last stage wrote neither bone_predictions.parquet nor predictions.parquet "
                     f"into {stage_dir}")
