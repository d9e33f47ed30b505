"""Projected wall time of a suite from measured per-stage step times (`bench perf suite`, issue 9).

The engine knows no method. It asks the runner for the plan of ``bench run --suite S --profile P
--seeds ...`` (:meth:`bench.runner.Runner.plan_run`, the ``--dry-run`` logic), keeps each distinct
(stage name, stage key) once, exactly as the content-addressed stage cache computes it once, and
prices every distinct stage with a *cost model* looked up by the stage function
(``module.qualname``). A cost model returns a :class:`StageCost`: the measured seconds of one
unit of work (a training step, an image, a forward batch) and how many units the resolved config
and the dataset sizes imply, per part (e.g. train steps, validation passes, prediction), so the
projection is Σ units × seconds per part. Cost models live with the code they measure
(methods.perf_suite holds those of the built-in stages, built on the generic instruments of
:class:`bench.perf_timing.Measurer`; plugins add theirs with :func:`register_cost`); an unknown
stage is listed as unpriced rather than guessed.

Where the phantom datasets are not generated yet, their fingerprints (which key every stage) are
replaced by their planned folder names, so the plan's keys differ from the real ones but are
equal exactly where the real ones are equal: the count of distinct stages is the runner's.

Timing convention: :func:`bench.perf_timing.time_steps`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from bench.config import Config
from bench.fingerprint import Fingerprint
from bench.data.provision import ROLES, planned_paths
from bench.errors import BenchError
from bench.registry import Stage
from bench.runner import PlannedRun, Runner

# --------------------------------------------------------------------------- cost models
@dataclass
class CostPart:
    """One kind of work of a stage: `units` repetitions of something measured at `seconds` each."""

    name: str           # e.g. "train steps", "val forward", "predict images"
    units: float        # how many (from the config and the dataset sizes)
    seconds: float      # measured seconds per unit

    @property
    def total(self) -> float:
        return self.units * self.seconds


@dataclass
class StageCost:
    """A stage's projected cost: the sum of its parts."""

    parts: list[CostPart] = field(default_factory=list)
    note: str = ""      # how the units were counted (shown in the table)

    @property
    def seconds(self) -> float:
        return sum(p.total for p in self.parts)


#: a cost model prices one stage under a resolved config on a device.
CostModel = Callable[[Stage, Config, Any], StageCost]
_COST_MODELS: dict[str, CostModel] = {}


def stage_fn_name(stage: Stage) -> str:
    return f"{stage.fn.__module__}.{stage.fn.__qualname__}"


def register_cost(fn_name: str, model: CostModel) -> CostModel:
    """Register the cost model of the stage function `fn_name` (``module.qualname``)."""
    _COST_MODELS[fn_name] = model
    return model


def cost_models() -> dict[str, CostModel]:
    return dict(_COST_MODELS)


# --------------------------------------------------------------------------- plan
class PlanningRunner(Runner):
    """A runner that plans without generating data: missing phantom datasets get placeholder fingerprints."""

    def _data(self, config: Config, generate: bool, roles: tuple[str, ...] = tuple(ROLES)):
        found = super()._data(config, False, roles)
        if found is not None:
            return found
        paths = planned_paths(config, self.cache_root, roles)
        fold = f":fold{config.data.fold}of{config.data.folds}" if config.data.folds else ""
        return paths, {}, {role: Fingerprint(f"planned:{path.name}" + (fold if role == "cls" else ""),
                                             f"planned:{path.name}") for role, path in paths.items()}


@dataclass
class DistinctStage:
    """One stage the suite computes once: its key, the first (entry, seed) needing it and who shares it."""

    name: str
    key: str
    stage: Stage
    config: Config
    entry: str
    seed: int
    users: list[str] = field(default_factory=list)   # "entry/seed<k>" of every run using it


def distinct_stages(plans: Iterable[PlannedRun]) -> list[DistinctStage]:
    """Each (stage name, key) of the plans once, in plan order (what the stage cache computes)."""
    out: dict[tuple[str, str], DistinctStage] = {}
    for planned in plans:
        by_name = {stage.name: stage for stage in planned.entry.all_stages}
        for ps in planned.stages:          # the stages the run computes (registry.stages_to_run)
            stage = by_name[ps.name]
            if ps.key is None:
                raise BenchError(f"stage {ps.name} of {planned.entry.name} has no key (datasets missing)")
            ident = (ps.name, ps.key)
            if ident not in out:
                out[ident] = DistinctStage(ps.name, ps.key, stage, planned.config, planned.entry.name, planned.seed)
            out[ident].users.append(f"{planned.entry.name}/seed{planned.seed}")
    return list(out.values())


def plan_suite(entries: Sequence[str], seeds: Sequence[int], profile: str, device: str,
               sets: Sequence[str] = (), results: str = "results", folds: int | None = None) -> list[DistinctStage]:
    """The distinct stages of running `entries` × `seeds` at `profile` (``bench run --dry-run``'s plan);
    with `folds`, of every fold of ``bench run --folds`` (stages that read no `cls` split counted once)."""
    from bench import cv

    parts = [("perf", [])] if folds is None else \
        [(cv.fold_suite("perf", k), cv.fold_sets(folds, k)) for k in cv.check_folds(folds)]
    plans = []
    for suite, extra in parts:
        runner = PlanningRunner(results, suite=suite, profile=profile, sets=[*sets, *extra], device=device,
                                progress=False)
        runner.validate(entries)
        plans += runner.plan(entries, seeds, generate=False)
    return distinct_stages(plans)


# --------------------------------------------------------------------------- projection
@dataclass
class Projection:
    rows: list[dict[str, Any]]                # one per distinct stage
    unpriced: list[str]                       # stage functions without a cost model

    @property
    def total_seconds(self) -> float:
        return sum(r["seconds"] for r in self.rows)

    def by_stage(self) -> dict[str, dict[str, float]]:
        """Per stage name: how many distinct computations and their projected seconds."""
        out: dict[str, dict[str, float]] = {}
        for r in self.rows:
            agg = out.setdefault(r["stage"], {"count": 0, "seconds": 0.0})
            agg["count"] += 1
            agg["seconds"] += r["seconds"]
        return out


def project(stages: Sequence[DistinctStage], device: Any,
            models: Mapping[str, CostModel] | None = None) -> Projection:
    """Price every distinct stage (cost models cache their measurements, so seeds cost one measurement)."""
    models = cost_models() if models is None else models
    rows, unpriced = [], []
    for ds in stages:
        fn = stage_fn_name(ds.stage)
        model = models.get(fn)
        row = {"stage": ds.name, "key": ds.key, "entry": ds.entry, "seed": ds.seed, "users": len(ds.users)}
        if model is None:
            if fn not in unpriced:
                unpriced.append(fn)
            rows.append({**row, "seconds": 0.0, "parts": [], "note": "no cost model"})
            continue
        cost = model(ds.stage, ds.config, device)
        rows.append({**row, "seconds": cost.seconds, "parts": [(p.name, p.units, p.seconds) for p in cost.parts],
                     "note": cost.note})
    return Projection(rows, unpriced)


def format_hours(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def print_projection(proj: Projection, header: str) -> None:
    """Per distinct configuration (stage + how it was counted), per stage, and the total."""
    import pandas as pd

    print(header)
    if not proj.rows:
        print("  nothing to run")
        return
    frame = pd.DataFrame(proj.rows)
    detail = frame.groupby(["stage", "note"], sort=False).agg(runs=("key", "size"), each_s=("seconds", "first"),
                                                              total_s=("seconds", "sum")).reset_index()
    for r in detail.itertuples():
        parts = next(row["parts"] for row in proj.rows if row["stage"] == r.stage and row["note"] == r.note)
        split = "; ".join(f"{name} {units:,.0f} x {sec * 1e3:.2f} ms" for name, units, sec in parts)
        print(f"  {r.stage:15s} x{r.runs:<3d} {format_hours(r.each_s):>9s} each  {r.note}"
              + (f"  [{split}]" if split else ""))
    total = proj.total_seconds
    print(f"  {'stage':15s} {'computed':>8s} {'projected':>10s} {'share':>6s}")
    for stage, agg in proj.by_stage().items():
        share = agg["seconds"] / total if total > 0 else 0.0
        print(f"  {stage:15s} {int(agg['count']):8d} {format_hours(agg['seconds']):>10s} {100 * share:5.1f}%")
    print(f"  {'total':15s} {len(proj.rows):8d} {format_hours(total):>10s}  ({total / 3600:.2f} h)")
    if proj.unpriced:
        print(f"  not priced (no cost model): {', '.join(proj.unpriced)}")


# --------------------------------------------------------------------------- against a measured run
def measured_seconds(cache_root: Path, stage: str, key: str) -> float | None:
    """The wall seconds a finished stage folder records (``_stage.json``, bench.stage.run_stage): its
    function's run with its outputs written, excluding the runner's data provision; for a stage
    resumed after an interruption, with what its resumed state cost the earlier attempts (the work
    after their last save is lost and not counted). None when the stage is not cached."""
    import json

    from bench.stage import STAGE_MARKER

    marker = Path(cache_root) / stage / key / STAGE_MARKER
    if not marker.is_file():
        return None
    seconds = json.loads(marker.read_text()).get("seconds")
    return None if seconds is None else float(seconds)


def compare_measured(proj: Projection, cache_root: Path) -> dict[str, dict[str, float]]:
    """Per stage name (and ``total``): how many of its distinct computations the cache holds
    (``found`` of ``count``), their projected and their measured seconds (both over the found ones
    only) and measured / projected. Run after ``bench run`` of the same plan on the same device."""
    out: dict[str, dict[str, float]] = {}
    for r in proj.rows:
        for name in (r["stage"], "total"):
            agg = out.setdefault(name, {"count": 0, "found": 0, "projected": 0.0, "measured": 0.0})
            agg["count"] += 1
        seconds = measured_seconds(cache_root, r["stage"], r["key"])
        if seconds is None:
            continue
        for name in (r["stage"], "total"):
            agg = out[name]
            agg["found"] += 1
            agg["projected"] += r["seconds"]
            agg["measured"] += seconds
    if "total" in out:
        out["total"] = out.pop("total")          # printed last
    for agg in out.values():
        agg["ratio"] = agg["measured"] / agg["projected"] if agg["found"] and agg["projected"] > 0 else float("nan")
    return out


def print_comparison(comparison: Mapping[str, Mapping[str, float]], cache_root: Path) -> None:
    """The projection set against the seconds the cached stages took (:func:`compare_measured`)."""
    print(f"measured: the seconds each stage of this plan took in {cache_root} (_stage.json)")
    if not any(agg["found"] for agg in comparison.values()):
        print("  none of these stages is cached there: run `bench run` with the same entries, seeds, profile, "
              "--set and --results first")
        return
    print(f"  {'stage':15s} {'found':>7s} {'projected':>10s} {'measured':>10s} {'measured/projected':>19s}")
    for stage, agg in comparison.items():
        ratio = "" if agg["ratio"] != agg["ratio"] else f"{agg['ratio']:.2f}"
        print(f"  {stage:15s} {int(agg['found']):3d}/{int(agg['count']):<3d} {format_hours(agg['projected']):>10s} "
              f"{format_hours(agg['measured']):>10s} {ratio:>19s}")
