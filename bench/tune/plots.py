"""Figures of a study (issue 8), drawn with matplotlib (Agg, one Figure object per plot).

* ``history.png``: objective value of each finished trial by trial number, the best-so-far line,
  pruned trials as ticks on the lower axis;
* ``importance.png``: parameter importances of optuna.importance.get_param_importances (optuna 5:
  PED-ANOVA by default), over the parameters every complete trial has (the conditional patience
  and anneal length only when every trial drew them);
* ``slice_gamma0_lam.png``: gamma0 × lambda of every trial on log axes, complete trials coloured
  by their value, pruned ones as grey crosses, the best one starred.

Each function returns the file name written, or None with the reason in `notes`.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

from bench.atomic import atomic_write_bytes

HISTORY = "history.png"
IMPORTANCE = "importance.png"
SLICE = "slice_gamma0_lam.png"


def _figure(size: tuple[float, float] = (5.5, 4.0)) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path).name


def _split(study: Any) -> tuple[list, list]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    return ([t for t in trials if t.state == TrialState.COMPLETE],
            [t for t in trials if t.state == TrialState.PRUNED])


def history_plot(study: Any, out: Path, label: str, notes: list[str]) -> str | None:
    complete, pruned = _split(study)
    if not complete:
        notes.append("optimisation history not drawn: no complete trial")
        return None
    minimize = study.direction.name == "MINIMIZE"
    xs = [t.number for t in complete]
    ys = [t.value for t in complete]
    best, running = [], None
    for y in ys:
        running = y if running is None else (min(running, y) if minimize else max(running, y))
        best.append(running)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(xs, ys, "o", color="tab:blue", label="complete trial")
    ax.step(xs, best, where="post", color="tab:red", label="best so far")
    if pruned:
        ax.plot([t.number for t in pruned], [0.0] * len(pruned), "|", color="grey", markersize=14,
                transform=ax.get_xaxis_transform(), label="pruned trial")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(label)
    ax.set_title(f"optimisation history: {study.study_name}")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out / HISTORY)


def importance_plot(study: Any, out: Path, notes: list[str]) -> str | None:
    import optuna

    complete, _ = _split(study)
    if len(complete) < 2:
        notes.append("parameter importances not drawn: fewer than 2 complete trials")
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importances = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as exc:
            notes.append(f"parameter importances not drawn: {exc}")
            return None
    few = any("too small" in str(w.message) for w in caught)
    if not importances:
        notes.append("parameter importances not drawn: no parameter is shared by every complete trial")
        return None
    names = list(importances)[::-1]
    fig = _figure((5.5, 0.5 + 0.45 * len(names)))
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (PED-ANOVA, normalised)")
    title = f"parameter importances: {study.study_name}"
    if few:
        title += "\n(too few trials: equal by construction)"
        notes.append("parameter importances: too few complete trials, optuna reports them equal")
    ax.set_title(title, fontsize=10)
    return _save(fig, out / IMPORTANCE)


def slice_plot(study: Any, out: Path, label: str, notes: list[str]) -> str | None:
    complete, pruned = _split(study)
    have = [t for t in complete if {"gamma0", "lam"} <= set(t.params)]
    if not have:
        notes.append("gamma0 x lambda slice not drawn: no complete trial")
        return None
    fig = _figure()
    ax = fig.add_subplot()
    dots = ax.scatter([t.params["gamma0"] for t in have], [t.params["lam"] for t in have],
                      c=[t.value for t in have], cmap="viridis", s=36, edgecolors="k", linewidths=0.4)
    fig.colorbar(dots, ax=ax, label=label)
    cut = [t for t in pruned if {"gamma0", "lam"} <= set(t.params)]
    if cut:
        ax.scatter([t.params["gamma0"] for t in cut], [t.params["lam"] for t in cut], marker="x", color="grey",
                   label="pruned")
    best = study.best_trial
    ax.scatter([best.params["gamma0"]], [best.params["lam"]], marker="*", s=220, color="tab:red",
               edgecolors="k", linewidths=0.6, label=f"best (trial {best.number})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gamma0 (initial transport cap)")
    ax.set_ylabel("lambda (routing KL weight)")
    ax.set_title(f"gamma0 x lambda: {study.study_name}")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, out / SLICE)


def draw_all(study: Any, out: Path, label: str) -> tuple[dict[str, str], list[str]]:
    """Every figure into `out`; returns ({kind: file name}, notes)."""
    notes: list[str] = []
    files = {"history": history_plot(study, out, label, notes), "importance": importance_plot(study, out, notes),
             "slice": slice_plot(study, out, label, notes)}
    return {k: v for k, v in files.items() if v}, notes
