"""Report fixtures: toy entries for every paper table and result folders with known metrics.

Entry names start with ``rt_`` so they never collide with the real methods/baselines entries.
Metrics are fixed numbers (per entry: one value per seed) written with bench.results.write_run;
predictions are seeded draws whose quality follows ``STRENGTH``.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from bench import results as store
from bench.metrics import BONE_COLUMNS
from bench.registry import Entry, Stage

SUITE = "rt"
SEEDS = (0, 1, 2)


def _noop(ctx):  # never run: the tests write result folders directly
    return None


_STAGE = (Stage("rt_noop", _noop),)


def _e(name, kind, table, row=None, parent=None, info=None) -> Entry:
    return Entry(name, f"report-test entry {name}", _STAGE, kind=kind, table=table, row=row, parent=parent,
                 info=info or {})


ENTRIES: list[Entry] = [
    _e("rt_simclr", "full", "table3", "SimCLR"),
    _e("rt_supcon", "full", "table3", "SupCon"),
    _e("rt_swav", "full", "table3"),  # no row label: the entry name (with '_') is the label
    _e("rt_noseg_simclr", "ablation", "table4", "SimCLR", parent="rt_simclr"),
    _e("rt_noseg_supcon", "ablation", "table4", "SupCon", parent="rt_supcon"),
    _e("rt_single_simclr", "ablation", "table5", "SimCLR", parent="rt_simclr"),
    _e("rt_supervised", "ablation", "table6", "Supervised"),
    _e("rt_convcrop_simclr", "ablation", "table7", "SimCLR", parent="rt_simclr"),
    _e("rt_convcrop_swav", "ablation", "table7", "SwAV", parent="rt_swav"),
    _e("rt_jang", "baseline", "table8", "Jang et al. ⁹", info={"roi": "Manual cropping", "architecture": "VGG16"}),
    _e("rt_deepdxa", "baseline", "table8", "Ho et al. (DeepDXA)",
       info={"roi": "Segmentation-based", "architecture": "ResNet18"}),
]

#: entry → metric → value per seed (test split). Designed so that
#: Table 3 accuracy ties at two decimals (0.8133 and 0.8067 both show 0.81),
#: Table 4 accuracy Δ ties at the largest drop (both show -0.07).
METRICS: dict[str, dict[str, list[float]]] = {
    "rt_simclr": {"precision": [0.71, 0.75, 0.67], "recall": [0.66, 0.60, 0.72], "f1": [0.70, 0.66, 0.68],
                  "auc": [0.85, 0.86, 0.84], "accuracy": [0.80, 0.83, 0.81]},
    "rt_supcon": {"precision": [0.61, 0.62, 0.60], "recall": [0.60, 0.71, 0.49], "f1": [0.62, 0.60, 0.58],
                  "auc": [0.80, 0.78, 0.79], "accuracy": [0.79, 0.82, 0.81]},
    "rt_swav": {"precision": [0.54, 0.66, 0.42], "recall": [0.54, 0.70, 0.38], "f1": [0.50, 0.55, 0.57],
                "auc": [0.66, 0.70, 0.68], "accuracy": [0.72, 0.77, 0.67]},
    "rt_noseg_simclr": {"precision": [0.5, 0.6, 0.55], "recall": [0.5, 0.6, 0.55], "f1": [0.54, 0.63, 0.45],
                        "auc": [0.78, 0.74, 0.82], "accuracy": [0.74, 0.75, 0.73]},
    "rt_noseg_supcon": {"precision": [0.5, 0.5, 0.5], "recall": [0.5, 0.5, 0.5], "f1": [0.51, 0.45, 0.57],
                        "auc": [0.73, 0.69, 0.77], "accuracy": [0.74, 0.76, 0.72]},
    "rt_single_simclr": {"precision": [0.6] * 3, "recall": [0.6] * 3, "f1": [0.62, 0.57, 0.67],
                         "auc": [0.80, 0.78, 0.82], "accuracy": [0.77, 0.73, 0.81]},
    "rt_supervised": {"precision": [0.5] * 3, "recall": [0.5] * 3, "f1": [0.53, 0.49, 0.57],
                      "auc": [0.67, 0.64, 0.70], "accuracy": [0.72, 0.71, 0.73]},
    "rt_convcrop_simclr": {"precision": [0.6] * 3, "recall": [0.6] * 3, "f1": [0.65, 0.62, 0.68],
                           "auc": [0.82, 0.80, 0.84], "accuracy": [0.79, 0.74, 0.84]},
    "rt_convcrop_swav": {"precision": [0.5] * 3, "recall": [0.5] * 3, "f1": [0.51, 0.42, 0.60],
                         "auc": [0.66, 0.61, 0.71], "accuracy": [0.70, 0.67, 0.73]},
    "rt_jang": {"precision": [0.4] * 3, "recall": [0.4] * 3, "f1": [0.43, 0.38, 0.48],
                "auc": [0.63, 0.60, 0.66], "accuracy": [0.62, 0.58, 0.66]},
    "rt_deepdxa": {"precision": [0.5] * 3, "recall": [0.5] * 3, "f1": [0.51, 0.48, 0.54],
                   "auc": [0.66, 0.64, 0.68], "accuracy": [0.67, 0.65, 0.69]},
}
#: signal strength of the seeded predictions (logit separation)
STRENGTH: dict[str, float] = {"rt_simclr": 3.0, "rt_supcon": 2.0, "rt_swav": 1.0, "rt_noseg_simclr": 0.0,
                              "rt_noseg_supcon": 0.8, "rt_single_simclr": 3.0, "rt_supervised": 0.6,
                              "rt_convcrop_simclr": 2.5, "rt_convcrop_swav": 0.9, "rt_jang": 0.4,
                              "rt_deepdxa": 0.7}
N_TEST, N_VAL = 60, 20


def labels() -> pd.DataFrame:
    """The subjects of the toy `cls` dataset: the same for every entry and seed."""
    rng = np.random.default_rng(np.random.SeedSequence([7, 1]))
    n = N_TEST + N_VAL
    y = (rng.random(n) < 0.35).astype(int)
    y[:2], y[N_TEST:N_TEST + 2] = (1, 0), (1, 0)  # both classes in both splits
    return pd.DataFrame({"subject_id": [f"s{i:03d}" for i in range(n)],
                         "split": ["test"] * N_TEST + ["val"] * N_VAL, "y_true": y})


def predictions(entry: str, seed: int, strength: float | None = None, bones: bool = True) -> pd.DataFrame:
    """Seeded per-bone probabilities around the label; p_pos is their mean (paper eq. 10)."""
    s = STRENGTH.get(entry, 1.0) if strength is None else strength
    words = [seed] + [ord(c) for c in entry]
    rng = np.random.default_rng(np.random.SeedSequence(words))
    frame = labels()
    base = s * (2 * frame["y_true"].to_numpy() - 1) + rng.normal(size=len(frame))
    per_bone = 1 / (1 + np.exp(-(base[:, None] + 0.7 * rng.normal(size=(len(frame), len(BONE_COLUMNS))))))
    if bones:
        for j, col in enumerate(BONE_COLUMNS):
            frame[col] = per_bone[:, j]
        frame["p_pos"] = per_bone.mean(axis=1)
        frame["n_bones"] = len(BONE_COLUMNS)
    else:
        frame["p_pos"] = 1 / (1 + np.exp(-base))
        frame["n_bones"] = 0
    frame["y_pred"] = (frame["p_pos"] > 0.5).astype(int)
    return frame


def png_bytes(width: int = 40, height: int = 20) -> bytes:
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 2, 0] = 200
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_suite(results: Path, entries: list[str] | None = None, seeds=SEEDS, suite: str = SUITE,
                history_for: tuple[str, ...] = ("rt_simclr",), figures_for: tuple[str, ...] = ("rt_simclr",)) -> Path:
    """Write complete runs of `entries` (default: all) for `seeds` with the METRICS values."""
    for entry in entries or list(METRICS):
        for i, seed in enumerate(seeds):
            test = {m: v[i % len(v)] for m, v in METRICS[entry].items()}
            history = None
            if entry in history_for:
                history = pd.DataFrame({"stage": ["pretrain"] * 4 + ["probe"],
                                        "epoch": [0, 1, 2, -1, 0],
                                        "metric": ["loss"] * 4 + ["val_macro_f1"],
                                        "value": [1.0 + seed, 0.6, 0.4, 0.4, 0.5]})
            extra = {"figures/example.png": png_bytes()} if entry in figures_for else None
            store.write_run(results, suite, entry, seed,
                            config={"entry": entry, "seed": seed, "stages": {"rt_noop": f"k{seed}"}},
                            metrics={"test": test, "val": {"macro_f1": 0.5, "auc": 0.7}},
                            predictions=predictions(entry, seed, bones=entry != "rt_jang"),
                            history=history, extra_files=extra)
    return results
