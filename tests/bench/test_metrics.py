"""bench.metrics: scikit-learn agreement, eq. 10 aggregation, single-class and no-bone reporting, selection."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, brier_score_loss,
                             f1_score, precision_score, recall_score, roc_auc_score)

from bench import BenchError
from bench.data import BONES
from bench.metrics import (
    BONE_COLUMNS,
    NoUsableBoneWarning,
    SingleClassWarning,
    SUBJECT_COLUMNS,
    aggregate_subjects,
    average_images,
    classification_metrics,
    select_best,
    split_metrics,
)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([20250819, *key]))


# --------------------------------------------------------------------------- classification_metrics
def test_bone_columns_follow_class_ids():
    assert BONE_COLUMNS == ("p_ulna", "p_radius", "p_M1", "p_M2", "p_M3", "p_M4", "p_M5")
    assert [c[2:] for c in BONE_COLUMNS] == sorted(BONES, key=BONES.get)


def test_hand_computed_case():
    # pred (p > 0.5; 0.5 -> 0): 1 0 1 0 0 0 1  => TP 2, FN 1, FP 1, TN 3
    y = [1, 1, 0, 0, 0, 0, 1]
    p = [0.9, 0.4, 0.6, 0.2, 0.5, 0.1, 0.8]
    m = classification_metrics(y, p)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(5 / 7)
    # class 0: TP 3, FP 1, FN 1 -> F1 3/4; macro = (2/3 + 3/4) / 2
    assert m["macro_f1"] == pytest.approx(17 / 24)
    # positives 0.9, 0.8, 0.4 vs negatives 0.6, 0.5, 0.2, 0.1: 4 + 4 + 2 of 12 pairs ordered
    assert m["auc"] == pytest.approx(10 / 12)
    assert (m["n"], m["n_pos"], m["n_unscored"], m["n_unlabeled"]) == (7, 3, 0, 0)


def test_threshold_is_strict_and_movable():
    y = [0, 1, 1]
    assert classification_metrics(y, [0.5, 0.5, 0.9])["recall"] == pytest.approx(0.5)  # tie -> class 0
    m = classification_metrics(y, [0.5, 0.5, 0.9], threshold=0.4)
    assert m["recall"] == 1.0 and m["precision"] == pytest.approx(2 / 3)


def test_zero_division_gives_zero():
    m = classification_metrics([0, 1, 0, 1], [0.1, 0.3, 0.2, 0.4])  # nothing predicted positive
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["accuracy"] == 0.5 and m["auc"] == 1.0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)  # class 0: P 1/2, R 1


@pytest.mark.parametrize("seed", range(40))
def test_agrees_with_sklearn_on_random_data(seed):
    rng = _rng(seed)
    n = int(rng.integers(4, 80))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]  # both classes
    rng.shuffle(y)
    # coarse grid so that ties in scores and exact 0.5 thresholds occur
    p = np.round(np.clip(0.3 * y + rng.uniform(0, 0.7, n), 0, 1), 1 if seed % 2 else 6)
    m = classification_metrics(y, p)
    yp = (p > 0.5).astype(int)
    assert m["precision"] == pytest.approx(precision_score(y, yp, zero_division=0), abs=1e-12)
    assert m["recall"] == pytest.approx(recall_score(y, yp, zero_division=0), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(y, yp, zero_division=0), abs=1e-12)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, yp), abs=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1_score(y, yp, average="macro", labels=[0, 1], zero_division=0),
                                          abs=1e-12)
    assert (m["n"], m["n_pos"]) == (n, int(y.sum()))
    assert m["specificity"] == pytest.approx(recall_score(y, yp, pos_label=0, zero_division=0), abs=1e-12)
    assert m["npv"] == pytest.approx(precision_score(y, yp, pos_label=0, zero_division=0), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, yp), abs=1e-12)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)


def test_screening_metrics_by_hand():
    # y 0 1 1 0 1, p .2 .7 .4 .6 .9 → decisions 0 1 0 1 1: TN 1, FP 1, TP 2, FN 1
    m = classification_metrics([0, 1, 1, 0, 1], [0.2, 0.7, 0.4, 0.6, 0.9])
    assert m["specificity"] == pytest.approx(1 / 2) and m["npv"] == pytest.approx(1 / 2)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["average_precision"] == pytest.approx((1 + 1 + 3 / 4) / 3)      # positives ranked 1st, 2nd, 4th
    assert m["brier"] == pytest.approx((0.04 + 0.09 + 0.36 + 0.36 + 0.01) / 5)
    with pytest.warns(SingleClassWarning):
        one = classification_metrics([1, 1], [0.9, 0.2])
    assert math.isnan(one["balanced_accuracy"]) and math.isnan(one["average_precision"])
    assert one["brier"] == pytest.approx((0.01 + 0.64) / 2)
    assert math.isnan(one["sens_at_spec90"]) and math.isnan(one["spec_at_sens90"])


def test_roc_operating_points_by_hand():
    # y 0 1 1 0 1, p .2 .7 .4 .6 .9. Thresholds .9/.7/.6/.4/.2 give (sens, spec) 1/3 1, 2/3 1, 2/3 1/2, 1 1/2, 1 0
    m = classification_metrics([0, 1, 1, 0, 1], [0.2, 0.7, 0.4, 0.6, 0.9])
    assert m["sens_at_spec90"] == pytest.approx(2 / 3) and m["spec_at_sens90"] == pytest.approx(1 / 2)
    # a tie between a positive and a negative is one threshold: both or neither are called positive
    m = classification_metrics([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1])
    assert m["sens_at_spec90"] == 0.0 and m["spec_at_sens90"] == pytest.approx(1 / 2)


@pytest.mark.parametrize("seed", range(6))
def test_roc_operating_points_against_every_threshold(seed):
    rng = _rng(7, seed)
    n = int(rng.integers(20, 200))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p = np.round(np.clip(0.5 + 0.25 * (y - 0.5) + rng.normal(0, 0.25, n), 0, 1), 2)   # rounded: ties
    best_sens, best_spec = 0.0, 0.0
    for t in [np.inf, *np.unique(p)]:
        call = p >= t
        sens, spec = call[y == 1].mean(), (~call[y == 0]).mean()
        best_sens = max(best_sens, sens) if spec >= 0.9 else best_sens
        best_spec = max(best_spec, spec) if sens >= 0.9 else best_spec
    m = classification_metrics(y, p)
    assert m["sens_at_spec90"] == pytest.approx(best_sens, abs=1e-12)
    assert m["spec_at_sens90"] == pytest.approx(best_spec, abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_unscored_and_unlabeled_rows_are_excluded_and_counted(seed):
    rng = _rng(100, seed)
    n = 30
    y = pd.array(rng.integers(0, 2, n), dtype="Int64")
    y[0], y[1] = 0, 1
    p = rng.uniform(size=n)
    drop_p = rng.choice(np.arange(2, n), 5, replace=False)
    drop_y = np.setdiff1d(np.arange(2, n), drop_p)[:3]
    p[drop_p] = np.nan
    y[drop_y] = pd.NA
    m = classification_metrics(y, p)
    keep = np.setdiff1d(np.arange(n), np.concatenate([drop_p, drop_y]))
    ref = classification_metrics(np.asarray(y[keep], dtype=int), p[keep])
    assert (m["n_unscored"], m["n_unlabeled"], m["n"]) == (5, 3, n - 8)
    for k in ("precision", "recall", "f1", "accuracy", "auc", "macro_f1", "n_pos"):
        assert m[k] == ref[k]
    assert m["auc"] == pytest.approx(roc_auc_score(np.asarray(y[keep], dtype=int), p[keep]))


def test_single_class_gives_nan_auc_with_warning():
    with pytest.warns(SingleClassWarning, match="AUC"):
        m = classification_metrics([0, 0, 0], [0.2, 0.7, 0.1])
    assert math.isnan(m["auc"])
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["precision"] == 0.0 and m["f1"] == 0.0      # zero_division=0, never a crash
    assert math.isnan(m["recall"]) and m["specificity"] == pytest.approx(2 / 3)   # no positive: undefined
    with pytest.warns(SingleClassWarning):
        m = classification_metrics([1, 1], [0.9, 0.2])
    assert math.isnan(m["auc"]) and m["recall"] == 0.5 and m["precision"] == 1.0
    assert math.isnan(m["specificity"]) and m["npv"] == 0.0                       # no negative: undefined


def test_no_scored_row_gives_nan_rates():
    with pytest.warns(SingleClassWarning):
        m = classification_metrics([0, 1], [np.nan, np.nan])
    assert all(math.isnan(m[k]) for k in ("precision", "recall", "f1", "accuracy", "auc", "macro_f1"))
    assert (m["n"], m["n_unscored"]) == (0, 2)


@pytest.mark.parametrize("y, p", [([0, 2], [0.1, 0.2]), ([0, 1], [0.1]), ([0, 1], ["a", 0.2]),
                                  ([0, 1], [0.1, np.inf])])
def test_bad_inputs_raise_bench_error(y, p):
    with pytest.raises(BenchError):
        classification_metrics(y, p)


# --------------------------------------------------------------------------- aggregate_subjects (eq. 10)
def _rows(subject, split, y, probs):
    return [dict(subject_id=subject, split=split, bone=b, y_true=y, p_pos=p) for b, p in probs.items()]


def _example() -> pd.DataFrame:
    rows = []
    # A: M2 unusable (NaN); mean over the 6 others = 3.3 / 6 = 0.55 -> positive
    rows += _rows("A", "train", 1, {"ulna": 0.8, "radius": 0.6, "M1": 0.4, "M2": np.nan, "M3": 0.7,
                                     "M4": 0.5, "M5": 0.3})
    # B: only two bones present (others missing entirely); mean 0.3 -> negative
    rows += _rows("B", "test", 0, {"ulna": 0.2, "radius": 0.4})
    # C: mean exactly 0.5 -> tie -> class 0 (first maximum, as numpy argmax)
    rows += _rows("C", "val", 0, {"M1": 0.25, "M5": 0.75})
    # D: no usable bone -> kept, p_pos NaN, n_bones 0
    rows += _rows("D", "val", None, {"ulna": np.nan, "M3": np.nan})
    # E: 3 of 5 bones lean negative, but the mean (2.8 / 5 = 0.56) is positive: eq. 10 is not a vote
    rows += _rows("E", "test", 1, {"ulna": 0.95, "radius": 0.95, "M2": 0.3, "M3": 0.3, "M4": 0.3})
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # order must not matter


def test_aggregation_matches_hand_computed_example():
    with pytest.warns(NoUsableBoneWarning, match="D"):
        out = aggregate_subjects(_example())
    assert tuple(out.columns) == SUBJECT_COLUMNS
    assert out["subject_id"].tolist() == ["A", "C", "D", "B", "E"]  # train, val, test; then subject
    by = out.set_index("subject_id")
    assert by.loc["A", "p_pos"] == pytest.approx(0.55)
    assert by.loc["B", "p_pos"] == pytest.approx(0.3)
    assert by.loc["C", "p_pos"] == 0.5
    assert by.loc["E", "p_pos"] == pytest.approx(0.56)
    assert [by.loc[s, "y_pred"] for s in "ABCE"] == [1, 0, 0, 1] and pd.isna(by.loc["D", "y_pred"])
    assert by["n_bones"].tolist() == [6, 2, 0, 2, 5]
    assert math.isnan(by.loc["D", "p_pos"])
    assert [by.loc[s, "y_true"] for s in "ABCE"] == [1, 0, 0, 1] and pd.isna(by.loc["D", "y_true"])
    assert str(out["y_true"].dtype) == "Int64" and str(out["y_pred"].dtype) == "Int64"
    assert by.loc["A", "p_ulna"] == 0.8 and by.loc["A", "p_M5"] == 0.3 and math.isnan(by.loc["A", "p_M2"])
    assert by.loc["B", ["p_M1", "p_M2", "p_M3", "p_M4", "p_M5"]].isna().all()


@pytest.mark.parametrize("seed", range(5))
def test_aggregation_is_argmax_of_mean_class_probabilities(seed):
    rng = _rng(200, seed)
    rows = []
    for s in range(40):
        bones = [b for b in BONES if rng.uniform() < 0.8]
        rows += _rows(f"s{s:02d}", ("train", "val", "test")[s % 3], int(rng.integers(0, 2)),
                      {b: float(rng.uniform()) for b in bones})
    frame = pd.DataFrame(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoUsableBoneWarning)  # every subject has a usable bone
        out = aggregate_subjects(frame).set_index("subject_id")
    assert len(out) == frame["subject_id"].nunique()
    for sid, group in frame.groupby("subject_id"):
        probs = np.stack([1 - group["p_pos"].to_numpy(), group["p_pos"].to_numpy()], axis=1)
        assert out.loc[sid, "y_pred"] == int(np.argmax(probs.mean(axis=0)))
        assert out.loc[sid, "p_pos"] == pytest.approx(probs[:, 1].mean())
        assert out.loc[sid, "n_bones"] == len(group)


def test_aggregation_then_metrics_counts_unscored_subject():
    with pytest.warns(NoUsableBoneWarning):
        subjects = aggregate_subjects(_example())
    with pytest.warns(SingleClassWarning) as caught:  # train holds A only; val C (label 0) and unlabelled D
        per_split = split_metrics(subjects)
    assert sorted(str(w.message).split(":")[0] for w in caught) == ["split 'train'", "split 'val'"]
    assert list(per_split) == ["train", "val", "test"]
    assert per_split["val"]["n"] == 1 and per_split["val"]["n_unscored"] == 0
    assert per_split["val"]["n_unlabeled"] == 1  # D has no label either
    test = subjects[subjects["split"] == "test"]
    ref = classification_metrics(test["y_true"], test["p_pos"])
    assert per_split["test"] == pytest.approx(ref, nan_ok=True)   # slope NaN: a separated split
    assert per_split["test"]["accuracy"] == 1.0 and per_split["test"]["auc"] == 1.0


def test_split_metrics_counts_unscored_labelled_subject():
    subjects = pd.DataFrame({"subject_id": ["a", "b", "c"], "split": ["test"] * 3,
                             "y_true": pd.array([0, 1, 1], dtype="Int64"), "p_pos": [0.2, 0.9, np.nan]})
    m = split_metrics(subjects)["test"]
    assert (m["n"], m["n_unscored"], m["auc"]) == (2, 1, 1.0)


@pytest.mark.parametrize("mutate, message", [
    (lambda f: f.assign(bone=f["bone"].replace("M1", "M6")), "unknown bone"),
    (lambda f: pd.concat([f, f.iloc[[0]]]), "several rows"),
    (lambda f: f.assign(p_pos=f["p_pos"] * 3), r"\[0, 1\]"),
    (lambda f: f.assign(split=np.where(np.arange(len(f)) == 0, "zzz", f["split"])), "several splits"),
    (lambda f: f.assign(y_true=np.where(np.arange(len(f)) % 2 == 0, 0, 1)), "conflicting y_true"),
    (lambda f: f.drop(columns="bone"), "lack columns"),
])
def test_aggregation_rejects_bad_input(mutate, message):
    frame = _example()
    frame = frame[frame["subject_id"] != "D"]
    with pytest.raises(BenchError, match=message):
        aggregate_subjects(mutate(frame))


# --------------------------------------------------------------------------- select_best
def test_select_best_highest_macro_f1():
    history = [{"val_macro_f1": 0.5, "val_auc": 0.9}, {"val_macro_f1": 0.7, "val_auc": 0.6},
               {"val_macro_f1": 0.6, "val_auc": 0.99}]
    assert select_best(history) == 1


def test_select_best_ties_by_auc_then_earliest():
    history = [{"val_macro_f1": 0.5, "val_auc": 0.7}, {"val_macro_f1": 0.6, "val_auc": 0.6},
               {"val_macro_f1": 0.6, "val_auc": 0.8}, {"val_macro_f1": 0.6, "val_auc": 0.8}]
    assert select_best(history) == 2
    assert select_best([{"val_macro_f1": 0.6, "val_auc": 0.8}] * 3) == 0


def test_select_best_nan_is_worst():
    history = [{"val_macro_f1": float("nan"), "val_auc": 0.9}, {"val_macro_f1": 0.1, "val_auc": 0.5},
               {"val_macro_f1": 0.1, "val_auc": float("nan")}, {"val_auc": 1.0}]
    assert select_best(history) == 1
    assert select_best([{"val_macro_f1": 0.3, "val_auc": np.nan}, {"val_macro_f1": 0.3, "val_auc": pd.NA},
                        {"val_macro_f1": 0.3, "val_auc": 0.1}]) == 2
    # every macro-F1 NaN: AUC decides
    assert select_best([{"val_macro_f1": np.nan, "val_auc": 0.2}, {"val_macro_f1": np.nan, "val_auc": 0.4}]) == 1


def test_select_best_custom_keys_and_errors():
    assert select_best([{"loss": -3.0}, {"loss": -1.0}], key="loss", tie_break=None) == 1
    with pytest.raises(BenchError, match="empty"):
        select_best([])
    with pytest.raises(BenchError, match="val_macro_f1"):
        select_best([{"val_f1": 0.3, "val_auc": 0.5}])


def test_average_images_counts_a_subject_once():
    frame = pd.DataFrame({"subject_id": ["a", "a", "a", "b", "a"], "split": ["test"] * 5,
                          "bone": ["ulna", "ulna", "radius", "ulna", "M1"],
                          "y_true": pd.array([1, 1, 1, 0, 1], dtype="Int64"), "p_pos": [0.2, 0.6, np.nan, 0.3, np.nan]})
    out = average_images(frame).set_index(["subject_id", "bone"])
    assert out.loc[("a", "ulna"), "p_pos"] == pytest.approx(0.4) and len(out) == 4
    assert math.isnan(out.loc[("a", "radius"), "p_pos"]) and out.loc[("a", "ulna"), "y_true"] == 1
    per_subject = average_images(frame, ("subject_id", "split")).set_index("subject_id")
    assert per_subject.loc["a", "p_pos"] == pytest.approx((0.2 + 0.6) / 2) and per_subject.loc["b", "y_true"] == 0
    with pytest.raises(BenchError, match="lack columns"):
        average_images(frame.drop(columns="bone"))
    clash = frame.assign(y_true=pd.array([1, 0, 1, 0, 1], dtype="Int64"))     # subject a: labels 1 and 0
    with pytest.raises(BenchError, match=r"subjects \['a'\] have images with different labels"):
        average_images(clash)


def test_runner_evaluate_counts_a_subject_once_whatever_the_stage_wrote(tmp_path):
    from bench.run_evaluation import evaluate

    bones = pd.DataFrame({"subject_id": ["a", "a", "b", "c"], "split": "test", "bone": "ulna",
                          "y_true": [1, 1, 0, 1], "p_pos": [0.9, 0.5, 0.2, 0.6]})
    bones.to_parquet(tmp_path / "bone_predictions.parquet")
    subjects, metrics = evaluate(tmp_path)
    assert subjects.set_index("subject_id").loc["a", "p_pos"] == pytest.approx(0.7) and metrics["test"]["n"] == 3
    (tmp_path / "bone_predictions.parquet").unlink()
    bones.drop(columns="bone").to_parquet(tmp_path / "predictions.parquet")   # one whole-image row per image
    subjects, metrics = evaluate(tmp_path)
    assert subjects.set_index("subject_id").loc["a", "p_pos"] == pytest.approx(0.7) and metrics["test"]["n"] == 3
