"""The report's figures (PNG and PDF, matplotlib's Agg canvas, no pyplot state).

* Fig. 5: per-bone positive probability on the true positives (test split, ``y_true = y_pred = 1``)
  of one entry (the best full-method entry by default). Bars: mean over every true-positive
  (seed, subject) row; error bars: their standard deviation (ddof=1), the spread of each bone's
  prediction that the paper calls its uncertainty. Bar colours follow the segmentation overlays
  (matplotlib ``tab10``, colour ``class id − 1``).
* ROC curves, one figure per table: the ROC of the (seed, subject) rows pooled over seeds, with a
  95 % band from a stratified bootstrap of subjects (all seeds of a drawn subject come along);
  TPR is interpolated on a fixed FPR grid. The legend gives the pooled AUC and its percentile CI.
* Calibration (reliability) curves, one figure per table: observed positive fraction against
  mean predicted probability in equal-width bins, with the expected calibration error
  ``ECE = Σ_b n_b/N |ȳ_b − p̄_b|``.
* Training curves, one figure per entry, from the runs' ``history.parquet``: one panel per
  (stage, metric), one line per seed; epoch −1 rows (a stage's final value) are left out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_auc_score, roc_curve

from bench.data.format import BONES
from bench.metrics import BONE_COLUMNS

PDF_METADATA = {"CreationDate": None}           # reproducible PDF bytes
BONE_LABELS: dict[str, str] = {"ulna": "Ulna", "radius": "Radius", "M1": "M1", "M2": "M2", "M3": "M3",
                               "M4": "M4", "M5": "M5"}


@dataclass(frozen=True)
class FigureConfig:
    """Figure options."""

    dpi: int = 150                  # PNG resolution
    roc_grid: int = 101             # FPR points the bootstrap band is evaluated on
    level: float = 0.95             # coverage of the ROC band and AUC interval
    calibration_bins: int = 10      # equal-width probability bins of the reliability curve
    max_panels: int = 12            # training-curve panels per entry (stage × metric)


@dataclass
class FigureItem:
    """A figure of the report: files relative to the report folder (PNG first) and a short text."""

    key: str
    section: str                    # "Fig. 5" | "ROC" | "Calibration" | "Training" | "Segmentation"
    title: str
    text: str
    files: tuple[str, ...]


def save(fig: Figure, out_dir: Path, stem: str, dpi: int = 150) -> tuple[str, str]:
    """Write ``<stem>.png`` and ``<stem>.pdf`` under `out_dir`; return their names."""
    FigureCanvasAgg(fig)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{stem}.png", dpi=dpi, bbox_inches="tight")
    fig.savefig(out_dir / f"{stem}.pdf", bbox_inches="tight", metadata=PDF_METADATA)
    return f"{stem}.png", f"{stem}.pdf"


def scored(predictions: pd.DataFrame, entry: str, split: str = "test") -> pd.DataFrame:
    """An entry's rows on `split` with a label and a probability."""
    p = predictions
    sel = p[(p["entry"] == entry) & (p["split"] == split) & p["y_true"].notna() & p["p_pos"].notna()]
    return sel.assign(y_true=sel["y_true"].astype(int), p_pos=sel["p_pos"].astype(float))


# --------------------------------------------------------------------------- Fig. 5
def bone_probabilities(predictions: pd.DataFrame, entry: str, split: str = "test") -> pd.DataFrame:
    """Per bone: mean and sd (ddof=1) of p_<bone> over the true positives, and their count n."""
    rows = scored(predictions, entry, split)
    tp = rows[(rows["y_true"] == 1) & (rows["y_pred"].astype("Int64") == 1)]
    out = []
    for bone, col in zip(BONES, BONE_COLUMNS):
        v = tp[col].to_numpy(dtype=float) if col in tp.columns else np.array([])
        v = v[np.isfinite(v)]
        out.append({"bone": bone, "mean": v.mean() if len(v) else math.nan,
                    "sd": v.std(ddof=1) if len(v) > 1 else math.nan, "n": len(v)})
    return pd.DataFrame(out)


def fig5(predictions: pd.DataFrame, entry: str, label: str, out_dir: Path, cfg: FigureConfig,
         split: str = "test") -> FigureItem | None:
    """Fig. 5 for `entry`; None when it has no true positive with per-bone probabilities."""
    stats = bone_probabilities(predictions, entry, split)
    if stats["n"].sum() == 0:
        return None
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    colours = [_tab10(BONES[b] - 1) for b in stats["bone"]]
    x = np.arange(len(stats))
    ax.bar(x, stats["mean"].fillna(0), yerr=stats["sd"].fillna(0), color=colours, edgecolor="black",
           linewidth=0.6, capsize=4)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(x, [BONE_LABELS[b] for b in stats["bone"]])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("P(osteoporosis) on true positives")
    n_tp = len(scored(predictions, entry, split).query("y_true == 1 and y_pred == 1"))
    ax.set_title(f"{label}: per-bone probability ({n_tp} true positives, {split})", fontsize=9)
    files = save(fig, out_dir, "fig5_bone_probabilities", cfg.dpi)
    return FigureItem("fig5", "Fig. 5", f"Per-bone probability on true positives ({label})",
                      f"Mean predicted probability of osteoporosis per bone over the {n_tp} true-positive "
                      f"(seed, subject) rows of `{entry}` on the {split} split; error bars: standard deviation.",
                      files)


def _tab10(i: int) -> tuple[float, ...]:
    from matplotlib import colormaps

    return colormaps["tab10"](i % 10)


# --------------------------------------------------------------------------- ROC
def weighted_roc(y: np.ndarray, p: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points and AUC of rows (y, p) weighted by each row of `w` (B × N integer counts).

    Equals the ROC of the data set in which row i is repeated w[b, i] times: rows are sorted by
    score once, tied scores form one point, AUC is the trapezoid area (ties count 1/2).
    Returns fpr, tpr (B × (distinct scores + 1), starting at 0) and auc (B).
    """
    order = np.argsort(-p, kind="mergesort")
    ys, w = y[order].astype(float), np.atleast_2d(w)[:, order].astype(float)
    last = np.r_[np.flatnonzero(np.diff(p[order]) != 0), len(p) - 1]  # end of each run of tied scores
    tp = np.cumsum(w * ys, axis=1)[:, last]
    fp = np.cumsum(w * (1 - ys), axis=1)[:, last]
    zero = np.zeros((len(w), 1))
    tpr = np.hstack([zero, tp / tp[:, -1:]])
    fpr = np.hstack([zero, fp / fp[:, -1:]])
    auc = np.sum(np.diff(fpr, axis=1) * (tpr[:, 1:] + tpr[:, :-1]) / 2, axis=1)
    return fpr, tpr, auc


def roc_band(frame: pd.DataFrame, n_boot: int, seed: int, grid: int = 101,
             level: float = 0.95, chunk: int = 250) -> dict[str, np.ndarray | float]:
    """Pooled ROC on an FPR grid with a stratified subject-bootstrap band and AUC interval.

    `frame`: seed, subject_id, y_true, p_pos. Returns fpr, tpr, lo, hi (arrays on the grid) and
    auc, auc_lo, auc_hi. A replicate draws as many positive (negative) subjects as there are,
    with replacement, and weights every row of a subject by its draw count; its ROC comes from
    weighted cumulative counts over the rows sorted once by score (tied scores form one point),
    its AUC is the trapezoid area (= Mann-Whitney with ties counted 1/2). Needs both classes.
    """
    y = frame["y_true"].to_numpy(dtype=int)
    p = frame["p_pos"].to_numpy(dtype=float)
    fpr_grid = np.linspace(0.0, 1.0, grid)
    fpr, tpr, _ = roc_curve(y, p)
    curve = np.interp(fpr_grid, fpr, tpr)
    codes, subjects = pd.factorize(frame["subject_id"])
    label = np.zeros(len(subjects), dtype=int)
    np.maximum.at(label, codes, y)
    pos, neg = np.flatnonzero(label == 1), np.flatnonzero(label == 0)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 5]))
    curves, aucs = [], []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        counts = np.zeros((b, len(subjects)))
        counts[:, pos] = rng.multinomial(len(pos), np.full(len(pos), 1 / len(pos)), size=b)
        counts[:, neg] = rng.multinomial(len(neg), np.full(len(neg), 1 / len(neg)), size=b)
        f, t, auc = weighted_roc(y, p, counts[:, codes])
        aucs.append(auc)
        curves += [np.interp(fpr_grid, f[j], t[j]) for j in range(b)]
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(np.array(curves), [a, 100 - a], axis=0)
    auc_lo, auc_hi = np.percentile(np.concatenate(aucs), [a, 100 - a])
    return {"fpr": fpr_grid, "tpr": curve, "lo": lo, "hi": hi, "auc": float(roc_auc_score(y, p)),
            "auc_lo": float(auc_lo), "auc_hi": float(auc_hi)}


def roc_figure(predictions: pd.DataFrame, entries: Sequence[tuple[str, str]], key: str, title: str,
               out_dir: Path, cfg: FigureConfig, n_boot: int, seed: int, split: str = "test") -> FigureItem | None:
    """ROC curves of (entry, label) pairs with bootstrap bands; None when none has two classes."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    drawn = 0
    for i, (entry, label) in enumerate(entries):
        frame = scored(predictions, entry, split)
        if frame["y_true"].nunique() < 2:
            continue
        r = roc_band(frame, n_boot, seed + i, cfg.roc_grid, cfg.level)
        line, = ax.plot(r["fpr"], r["tpr"], color=_tab10(i),
                        label=f"{label}: AUC {r['auc']:.2f} [{r['auc_lo']:.2f}, {r['auc_hi']:.2f}]")
        ax.fill_between(r["fpr"], r["lo"], r["hi"], color=line.get_color(), alpha=0.15, linewidth=0)
        drawn += 1
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate", ylabel="True positive rate", aspect="equal")
    ax.set_title(f"ROC, {title} ({split}, pooled over seeds)", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    files = save(fig, out_dir, f"roc_{key}", cfg.dpi)
    return FigureItem(f"roc_{key}", "ROC", f"ROC curves: {title}",
                      f"ROC of the {split} predictions pooled over seeds; shaded: {cfg.level:.0%} band from "
                      f"{n_boot} stratified bootstrap resamples of subjects; legend: AUC [{cfg.level:.0%} CI].", files)


# --------------------------------------------------------------------------- calibration
def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> tuple[pd.DataFrame, float]:
    """Per equal-width bin of p: n, mean p, observed positive fraction; and the ECE."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)  # [k/n, (k+1)/n), the last bin closed
    rows = []
    for b in range(n_bins):
        m = bins == b
        if m.any():
            rows.append({"bin": b, "n": int(m.sum()), "p_mean": p[m].mean(), "observed": y[m].mean()})
    table = pd.DataFrame(rows, columns=["bin", "n", "p_mean", "observed"])
    ece = float((table["n"] / len(p) * (table["observed"] - table["p_mean"]).abs()).sum()) if len(p) else math.nan
    return table, ece


def calibration_figure(predictions: pd.DataFrame, entries: Sequence[tuple[str, str]], key: str, title: str,
                       out_dir: Path, cfg: FigureConfig, split: str = "test") -> FigureItem | None:
    """Reliability curves of (entry, label) pairs; None when no entry has scored rows."""
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    drawn = 0
    for i, (entry, label) in enumerate(entries):
        frame = scored(predictions, entry, split)
        if frame.empty:
            continue
        table, ece = reliability(frame["y_true"].to_numpy(), frame["p_pos"].to_numpy(), cfg.calibration_bins)
        ax.plot(table["p_mean"], table["observed"], marker="o", markersize=3, color=_tab10(i),
                label=f"{label}: ECE {ece:.3f}")
        drawn += 1
    if not drawn:
        return None
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Mean predicted probability", ylabel="Observed fraction positive",
           aspect="equal")
    ax.set_title(f"Calibration, {title} ({split}, pooled over seeds)", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    files = save(fig, out_dir, f"calibration_{key}", cfg.dpi)
    return FigureItem(f"calibration_{key}", "Calibration", f"Calibration curves: {title}",
                      f"Observed positive fraction against mean predicted probability in {cfg.calibration_bins} "
                      f"equal-width bins ({split} split, seeds pooled); ECE = expected calibration error.", files)


# --------------------------------------------------------------------------- training curves
def training_figure(histories: Sequence[tuple[int, pd.DataFrame]], entry: str, out_dir: Path,
                    cfg: FigureConfig) -> FigureItem | None:
    """Per-(stage, metric) panels of one entry's history, one line per seed; None without epochs."""
    frames = [h.assign(seed=s) for s, h in histories if h is not None and len(h)]
    if not frames:
        return None
    hist = pd.concat(frames, ignore_index=True)
    hist = hist[pd.to_numeric(hist["epoch"], errors="coerce") >= 0]
    hist = hist[np.isfinite(pd.to_numeric(hist["value"], errors="coerce").astype(float))]
    panels = list(dict.fromkeys(zip(hist["stage"].astype(str), hist["metric"].astype(str))))[:cfg.max_panels]
    if not panels:
        return None
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.6 * nrows))
    for k, (stage, metric) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, k + 1)
        sel = hist[(hist["stage"].astype(str) == stage) & (hist["metric"].astype(str) == metric)]
        for j, (s, g) in enumerate(sel.groupby("seed", sort=True)):
            g = g.sort_values("epoch")
            ax.plot(g["epoch"].astype(int), g["value"].astype(float), marker=".", color=_tab10(j), label=f"seed {s}")
        ax.set_title(f"{stage}: {metric}", fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        if k == 0:
            ax.legend(fontsize=6)
    fig.tight_layout()
    stem = f"training_{entry}"
    files = save(fig, out_dir, stem, cfg.dpi)
    return FigureItem(stem, "Training", f"Training curves: {entry}",
                      f"Per-epoch records of `{entry}` from history.parquet, one line per seed "
                      f"({len(panels)} stage/metric panels).", files)


# --------------------------------------------------------------------------- cross-validation
def fold_aucs(metrics: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """What :func:`folds_figure` draws: (entry, seed, fold, auc) of each fold's own test AUC, and per entry
    the mean over seeds of the pooled out-of-fold test AUC."""
    auc = metrics[metrics["metric"] == "auc"]
    per_fold = auc[auc["split"].str.fullmatch(r"fold\d+")]
    points = pd.DataFrame({"entry": per_fold["entry"], "seed": per_fold["seed"],
                           "fold": per_fold["split"].str[4:].astype(int), "auc": per_fold["value"]})
    test = auc[(auc["split"] == "test") & auc["entry"].isin(set(points["entry"]))]
    return points.reset_index(drop=True), test.groupby("entry")["value"].mean().to_dict()


def folds_figure(metrics: pd.DataFrame, entries: Sequence[tuple[str, str]], out_dir: Path,
                 cfg: FigureConfig) -> FigureItem | None:
    """A cross-validated suite (bench.cv): each fold's own test AUC per entry and seed (dots, coloured by
    fold) and the AUC of the pooled out-of-fold predictions (black diamond, mean over seeds); None
    when the suite has no per-fold metrics."""
    points, pooled = fold_aucs(metrics)
    shown = [(e, lab) for e, lab in entries if (points["entry"] == e).any()]
    if not shown:
        return None
    folds = sorted(set(points["fold"]))
    fig = Figure(figsize=(6, 0.45 * len(shown) + 1.2))
    ax = fig.add_subplot()
    for row, (entry, _) in enumerate(shown):
        for k in folds:
            values = points[(points["entry"] == entry) & (points["fold"] == k)]["auc"]
            offsets = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(len(values))
            ax.scatter(values, row + offsets, s=14, color=_tab10(k), label=f"fold {k}" if row == 0 else None)
        ax.scatter([pooled.get(entry, np.nan)], [row], marker="D", s=36, color="black",
                   label="pooled" if row == 0 else None, zorder=3)
    ax.set_yticks(range(len(shown)), [lab for _, lab in shown], fontsize=8)
    ax.set_ylim(len(shown) - 0.5, -0.5)                              # first entry on top
    ax.axvline(0.5, color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("Test AUC")
    ax.set_title("Cross-validation: each fold's test AUC and the pooled out-of-fold AUC", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=7, ncol=min(len(folds) + 1, 6),
              frameon=False)
    files = save(fig, out_dir, "folds_auc", cfg.dpi)
    return FigureItem("folds_auc", "Cross-validation", "Cross-validation: AUC per fold",
                      f"Each dot is one fold's own test AUC (one per seed, colours by fold, {len(folds)} folds); the "
                      "diamond is the AUC of all subjects' pooled out-of-fold predictions (mean over seeds). The "
                      "spread of the dots is how much one held-out split can move the estimate.", files)
