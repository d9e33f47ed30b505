"""Search space of `bench tune` (issue 8): gamma0, the gamma-annealing schedule and lambda.

The space (paper eq. 7-9, "Imbalanced constraint relaxation"):

* ``gamma0``: log-uniform on [lo, hi]; by default lo is just above 1/N (N = experts x samples, the
  smallest cap for which a coupling exists; 0.1 % above it so that float32 rounding of the
  annotator weights never makes the transport problem infeasible) and hi = 1 (no relaxation);
* ``gamma_schedule``: categorical over ``tune.schedules``; ``plateau`` draws its switch patience
  ``gamma_patience`` (integer epochs), ``linear``/``cosine`` draw their anneal length
  ``gamma_anneal_epochs`` (integer epochs, at most the training length by default),
  ``constant`` draws nothing more;
* ``lam``: log-uniform on [lam_low, lam_high] (weight of the routing KL).

Trial parameter names are the ``segmentation`` field names, so a trial's parameters map one to
one onto config keys (``gamma0`` → ``segmentation.gamma0``). Ranges and search settings are the
config section ``tune`` (``--set tune.lam_high=10``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from bench.config import register_section
from bench.errors import BenchError

SECTION = "segmentation"                  # config section the searched keys belong to
SEARCHED = ("gamma0", "gamma_schedule", "gamma_patience", "gamma_anneal_epochs", "lam")
SCHEDULES = ("plateau", "linear", "cosine", "constant")   # the kinds of methods.segmentation.schedule
FEASIBILITY_MARGIN = 1.001                # default gamma0 floor = FEASIBILITY_MARGIN / N


@dataclass
class TuneConfig:
    """Search space and search settings of `bench tune` (issue 8)."""

    gamma0_low: float = 0.0             # lowest gamma0 (log scale); 0: just above 1/N, N = experts * samples
    gamma0_high: float = 1.0            # highest gamma0 (1: no relaxation of the transport caps)
    schedules: str = "plateau,linear,cosine"  # gamma schedules searched, comma-separated (plateau|linear|cosine|constant)
    patience_low: int = 2               # plateau: fewest epochs without improvement before gamma jumps to 1
    patience_high: int = 20             # plateau: most such epochs
    anneal_low: int = 5                 # linear/cosine: shortest anneal from gamma0 to 1 (epochs; capped at anneal_high)
    anneal_high: int = 0                # linear/cosine: longest anneal (epochs); 0: segmentation.epochs
    lam_low: float = 0.01               # lowest lambda, weight of the routing KL (log scale)
    lam_high: float = 100.0             # highest lambda (log scale)
    startup_trials: int = 10            # TPE: random trials before the model-based proposals start
    prune: bool = True                  # stop a trial whose per-epoch validation GED is worse than the median (MedianPruner)
    prune_startup_trials: int = 5       # MedianPruner: finished trials needed before any pruning
    prune_warmup_epochs: int = 10       # MedianPruner: epochs every trial runs before it may be pruned
    max_failures: int = 3               # consecutive failed trials of one session that stop it (a systematic error)
    keep_trial_outputs: bool = False    # downstream: keep each trial's stage outputs under tune/<study>/trials/

    def validate(self) -> None:
        """The checks that need no segmentation config (make_space adds the gamma0 floor, which does);
        raise BenchError naming the first bad option."""
        if not (0.0 <= self.gamma0_low <= self.gamma0_high <= 1.0 and self.gamma0_high > 0.0):
            raise BenchError(f"tune.gamma0_low = {self.gamma0_low} and tune.gamma0_high = {self.gamma0_high} "
                             "must satisfy 0 < low <= high <= 1 (gamma0 caps each sample's transported mass); "
                             "set tune.gamma0_low=0 for the automatic floor")
        self.schedule_list()
        if not (0 <= self.patience_low <= self.patience_high):
            raise BenchError(f"tune.patience_low = {self.patience_low} and tune.patience_high = "
                             f"{self.patience_high} must satisfy 0 <= low <= high (epochs)")
        if self.anneal_low < 1 or self.anneal_high < 0:
            raise BenchError(f"tune.anneal_low = {self.anneal_low} must be >= 1 epoch and tune.anneal_high = "
                             f"{self.anneal_high} >= 0 (0: segmentation.epochs)")
        if not (0.0 < self.lam_low <= self.lam_high):
            raise BenchError(f"tune.lam_low = {self.lam_low} and tune.lam_high = {self.lam_high} must satisfy "
                             "0 < low <= high (lambda is searched on a log scale)")
        for name in ("startup_trials", "prune_startup_trials", "prune_warmup_epochs"):
            if getattr(self, name) < 0:
                raise BenchError(f"tune.{name} must be >= 0, got {getattr(self, name)}")
        if self.max_failures < 1:
            raise BenchError(f"tune.max_failures must be >= 1, got {self.max_failures}")

    def schedule_list(self) -> tuple[str, ...]:
        """``schedules`` as a tuple; unknown or repeated names raise BenchError."""
        schedules = tuple(s.strip() for s in self.schedules.split(",") if s.strip())
        bad = [s for s in schedules if s not in SCHEDULES]
        if not schedules or bad:
            raise BenchError(f"tune.schedules = {self.schedules!r}: give a comma-separated subset of "
                             f"{', '.join(SCHEDULES)}" + (f" (unknown: {', '.join(bad)})" if bad else ""))
        if len(set(schedules)) != len(schedules):
            raise BenchError(f"tune.schedules = {self.schedules!r} names a schedule twice")
        return schedules


PROFILES = {
    # 60-epoch CPU schedule: short patience, few random trials, early pruning
    "smoke": dict(patience_high=10, anneal_low=2, startup_trials=4, prune_startup_trials=3, prune_warmup_epochs=5),
    "quick": dict(patience_high=15, startup_trials=8, prune_warmup_epochs=10),
    # the reference's 200 epochs (plateau patience 10 in the reference)
    "paper": dict(patience_high=30, anneal_low=10, prune_warmup_epochs=20),
}

register_section("tune", TuneConfig, profiles=PROFILES)


@dataclass(frozen=True)
class Space:
    """The concrete ranges of one study (TuneConfig resolved against the segmentation config)."""

    gamma0: tuple[float, float]
    schedules: tuple[str, ...]
    patience: tuple[int, int]
    anneal: tuple[int, int]
    lam: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in dataclasses.asdict(self).items()}


def make_space(tune: TuneConfig, seg: Any) -> Space:
    """Resolve the ranges of `tune` for the segmentation config `seg`; bad ranges raise BenchError."""
    tune.validate()
    n = int(seg.experts) * int(seg.samples)
    floor = 1.0 / n
    lo = tune.gamma0_low if tune.gamma0_low > 0 else min(1.0, FEASIBILITY_MARGIN * floor)
    hi = tune.gamma0_high
    if lo > hi:
        raise BenchError(f"the automatic tune.gamma0_low, {lo:.6g} (just above 1/N, N = experts * samples = {n}), "
                         f"exceeds tune.gamma0_high = {hi}; raise tune.gamma0_high")
    if lo < floor:
        raise BenchError(f"tune.gamma0_low = {lo} is infeasible: with N = experts * samples = {n} the caps hold "
                         f"N * gamma0 < 1; use at least {floor:.6g} (or tune.gamma0_low=0 for the automatic floor)")
    schedules = tune.schedule_list()
    a_hi = tune.anneal_high if tune.anneal_high > 0 else int(seg.epochs)
    a_lo = min(tune.anneal_low, a_hi)
    return Space(gamma0=(float(lo), float(hi)), schedules=schedules,
                 patience=(int(tune.patience_low), int(tune.patience_high)), anneal=(int(a_lo), int(a_hi)),
                 lam=(float(tune.lam_low), float(tune.lam_high)))


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """Draw one point of `space` from an Optuna trial; return it as dotted config overrides."""
    params: dict[str, Any] = {"gamma0": trial.suggest_float("gamma0", *space.gamma0, log=True)}
    kind = trial.suggest_categorical("gamma_schedule", list(space.schedules))
    params["gamma_schedule"] = kind
    if kind == "plateau":
        params["gamma_patience"] = trial.suggest_int("gamma_patience", *space.patience)
    elif kind in ("linear", "cosine"):
        params["gamma_anneal_epochs"] = trial.suggest_int("gamma_anneal_epochs", *space.anneal)
    params["lam"] = trial.suggest_float("lam", *space.lam, log=True)
    return as_overrides(params)


def as_overrides(params: Mapping[str, Any]) -> dict[str, Any]:
    """Trial parameters → ``{"segmentation.<name>": value}`` (unknown names raise BenchError)."""
    unknown = [k for k in params if k not in SEARCHED]
    if unknown:
        raise BenchError(f"trial parameters {unknown} are not part of the search space {list(SEARCHED)}; "
                         "was the study made by another tool?")
    return {f"{SECTION}.{k}": v for k, v in params.items()}


def searched_keys() -> tuple[str, ...]:
    return tuple(f"{SECTION}.{k}" for k in SEARCHED)
