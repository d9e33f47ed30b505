"""Figures: Fig. 5 statistics on true positives, ROC band, calibration/ECE, training curves and the
segmentation-example hook; every figure is a readable PNG and a PDF, identical for the same input."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from suite_data import SUITE, predictions, png_bytes, write_suite
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

from bench import results as store
from bench.metrics import BONE_COLUMNS
from reports import examples as ex
from reports import figures as figs

CFG = figs.FigureConfig(dpi=60)


def _frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows)
    for c in BONE_COLUMNS:
        if c not in out:
            out[c] = np.nan
    return out


def test_bone_probabilities_use_true_positives_only():
    base = {"entry": "a", "seed": 0, "split": "test", "subject_id": "x", "n_bones": 7}
    rows = [
        {**base, "y_true": 1, "y_pred": 1, "p_pos": 0.8, "p_ulna": 0.9, "p_radius": 0.7},   # TP
        {**base, "y_true": 1, "y_pred": 1, "p_pos": 0.6, "p_ulna": 0.5, "p_radius": np.nan},  # TP, radius missing
        {**base, "seed": 1, "y_true": 1, "y_pred": 1, "p_pos": 0.7, "p_ulna": 0.7, "p_radius": 0.6},  # TP seed 1
        {**base, "y_true": 1, "y_pred": 0, "p_pos": 0.4, "p_ulna": 0.1, "p_radius": 0.1},   # FN
        {**base, "y_true": 0, "y_pred": 1, "p_pos": 0.6, "p_ulna": 0.1, "p_radius": 0.1},   # FP
        {**base, "split": "val", "y_true": 1, "y_pred": 1, "p_pos": 0.9, "p_ulna": 0.1},    # other split
        {**base, "entry": "b", "y_true": 1, "y_pred": 1, "p_pos": 0.9, "p_ulna": 0.1},      # other entry
    ]
    stats = figs.bone_probabilities(_frame(rows), "a").set_index("bone")
    assert stats.loc["ulna", "mean"] == pytest.approx(np.mean([0.9, 0.5, 0.7]))
    assert stats.loc["ulna", "sd"] == pytest.approx(np.std([0.9, 0.5, 0.7], ddof=1))
    assert stats.loc["radius", "n"] == 2 and stats.loc["radius", "mean"] == pytest.approx(0.65)
    assert stats.loc["M1", "n"] == 0 and math.isnan(stats.loc["M1", "mean"])
    assert list(stats.index) == ["ulna", "radius", "M1", "M2", "M3", "M4", "M5"]


def test_reliability_and_ece_by_hand():
    y = np.array([0, 1, 1, 1, 0, 1])
    p = np.array([0.05, 0.15, 0.55, 0.58, 0.95, 1.0])  # 1.0 falls in the last bin
    table, ece = figs.reliability(y, p, n_bins=10)
    assert table["bin"].tolist() == [0, 1, 5, 9]
    assert table["n"].tolist() == [1, 1, 2, 2]
    assert table["observed"].tolist() == [0.0, 1.0, 1.0, 0.5]
    want = (abs(0 - 0.05) + abs(1 - 0.15) + 2 * abs(1 - 0.565) + 2 * abs(0.5 - 0.975)) / 6
    assert ece == pytest.approx(want)


def test_weighted_roc_equals_sklearn_on_repeated_rows():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    p = np.round(rng.random(50), 1)  # many ties
    w = rng.integers(0, 4, size=(5, 50))
    w[:, y == 1] += 1  # every replicate keeps both classes
    w[:, y == 0] += 1
    fpr, tpr, auc = figs.weighted_roc(y, p, w)
    for b in range(5):
        yy, pp = np.repeat(y, w[b]), np.repeat(p, w[b])
        assert auc[b] == pytest.approx(roc_auc_score(yy, pp))
        f_ref, t_ref, _ = roc_curve(yy, pp, drop_intermediate=False)
        grid = np.linspace(0, 1, 41)
        assert np.allclose(np.interp(grid, fpr[b], tpr[b]), np.interp(grid, f_ref, t_ref))


def test_roc_band_properties():
    frame = pd.concat([predictions("rt_supcon", s).assign(seed=s) for s in (0, 1)])
    frame = frame[frame.split == "test"]
    r = figs.roc_band(frame, n_boot=200, seed=1)
    assert r["auc"] == pytest.approx(roc_auc_score(frame["y_true"], frame["p_pos"]))
    assert r["auc_lo"] < r["auc"] < r["auc_hi"]
    assert np.all(r["lo"] <= r["hi"] + 1e-12) and np.all(np.diff(r["tpr"]) >= -1e-12)
    inside = (r["lo"] - 1e-9 <= r["tpr"]) & (r["tpr"] <= r["hi"] + 1e-9)
    assert inside.mean() > 0.9
    again = figs.roc_band(frame, n_boot=200, seed=1)
    assert np.array_equal(again["lo"], r["lo"]) and again["auc_hi"] == r["auc_hi"]  # seeded
    perfect = frame.assign(p_pos=frame["y_true"] * 0.5 + 0.25)
    rp = figs.roc_band(perfect, n_boot=50, seed=0)
    assert rp["auc"] == rp["auc_lo"] == rp["auc_hi"] == 1.0


def _check_files(folder, item):
    assert item is not None
    png, pdf = (folder / f for f in item.files)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 50
    assert pdf.read_bytes().startswith(b"%PDF")


def test_figures_write_png_and_reproducible_pdf(tmp_path):
    preds = pd.concat([predictions("rt_simclr", s).assign(entry="rt_simclr", seed=s) for s in (0, 1)]
                      + [predictions("rt_swav", 0).assign(entry="rt_swav", seed=0)])
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        items = [figs.fig5(preds, "rt_simclr", "SimCLR", folder, CFG),
                 figs.roc_figure(preds, [("rt_simclr", "SimCLR"), ("rt_swav", "SwAV")], "table3", "T3", folder,
                                 CFG, n_boot=30, seed=0),
                 figs.calibration_figure(preds, [("rt_simclr", "SimCLR")], "table3", "T3", folder, CFG)]
        for item in items:
            _check_files(folder, item)
    for name in ("fig5_bone_probabilities.pdf", "roc_table3.pdf", "calibration_table3.pdf"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    # no true positive / a single class → no figure, no crash
    neg = preds.assign(y_true=0)
    assert figs.fig5(neg, "rt_simclr", "SimCLR", tmp_path / "c", CFG) is None
    assert figs.roc_figure(neg, [("rt_simclr", "S")], "x", "x", tmp_path / "c", CFG, 10, 0) is None


def test_training_figure_skips_final_rows_and_empty(tmp_path):
    hist = pd.DataFrame({"stage": ["pretrain"] * 3 + ["probe"], "epoch": [0, 1, -1, -1],
                         "metric": ["loss"] * 3 + ["auc"], "value": [1.0, 0.5, 0.5, 0.8]})
    item = figs.training_figure([(0, hist), (1, hist)], "rt_simclr", tmp_path, CFG)
    _check_files(tmp_path, item)
    assert "1 stage/metric panels" in item.text  # probe/auc has only an epoch -1 row
    assert figs.training_figure([(0, None)], "rt_simclr", tmp_path, CFG) is None
    assert figs.training_figure([(0, hist[hist.epoch < 0])], "rt_simclr", tmp_path, CFG) is None


def test_examples_from_run_and_stage_folders(tmp_path):
    results = tmp_path / "results"
    write_suite(results, ["rt_simclr", "rt_supcon"], seeds=(0, 1), figures_for=("rt_simclr",))
    # a segmentation stage output shared by both entries at seed 0 (keys come from config.json "stages")
    shared = results / "cache" / "rt_noop" / "k0" / "figures"
    shared.mkdir(parents=True)
    (shared / "img001.png").write_bytes(png_bytes())
    (shared / "notes.txt").write_text("not a picture")
    runs = [(e, s, store.run_dir(results, SUITE, e, s)) for e in ("rt_simclr", "rt_supcon") for s in (0, 1)]
    found = ex.collect(results, runs)
    assert [(f.entry, f.seed, f.origin, f.source.name) for f in found] == [
        ("rt_simclr", 0, "run", "example.png"), ("rt_simclr", 0, "rt_noop", "img001.png"),
        ("rt_simclr", 1, "run", "example.png")]  # the shared stage picture once; rt_supcon has none
    copied = ex.copy_examples(found, tmp_path / "out")
    assert [n for _, n in copied] == ["rt_simclr-seed0-run-example.png", "rt_simclr-seed0-rt_noop-img001.png",
                                      "rt_simclr-seed1-run-example.png"]
    (found[1].source).write_bytes(b"broken")  # an unreadable picture is skipped by the montage
    _check_files(tmp_path / "out", ex.montage(found, tmp_path / "out", CFG, limit=4))
    assert ex.collect(results, [("x", 0, tmp_path / "nowhere")]) == []
