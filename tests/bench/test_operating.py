"""Screening operating points chosen on the validation split (bench.operating, `bench show --operating-point`)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix

from bench import results as store
from bench.cli import main
from bench.errors import BenchError
from bench.metrics import roc_operating_points
from bench.operating import choose_threshold, operating_table, parse_target, rates, wilson_interval


def test_parse_target():
    assert parse_target("sensitivity:0.9") == ("sensitivity", 0.9)
    assert parse_target(" spec=0.95 ") == ("specificity", 0.95)
    assert parse_target("sens:1") == ("sensitivity", 1.0)
    for bad in ("sensitivity", "recall:0.9", "sens:1.5", "spec:0", "sens:abc"):
        with pytest.raises(BenchError, match="sensitivity:LEVEL or specificity:LEVEL"):
            parse_target(bad)


def test_thresholds_by_hand():
    # negatives .1 .4, positives .35 .8 .9; candidates .1-1e-6, .225, .375, .6, .85, .9+1e-6 (decision p > t)
    y, p = np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.9])
    assert choose_threshold(y, p, "sensitivity", 0.6) == pytest.approx(0.6)      # .8 and .9 called: 2/3
    assert choose_threshold(y, p, "sensitivity", 1.0) == pytest.approx(0.225)    # .35 must be called
    assert choose_threshold(y, p, "specificity", 1.0) == pytest.approx(0.6)      # .4 must not be
    assert choose_threshold(y, p, "specificity", 0.5) == pytest.approx(0.225)
    with pytest.raises(BenchError, match="1 positive and 0 negative"):
        choose_threshold(np.array([1]), np.array([0.3]), "sensitivity", 0.9)


@pytest.mark.parametrize("seed", range(6))
def test_the_chosen_rule_is_the_rocs_operating_point(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 150))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    p = np.round(np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.25, n), 0, 1), 2)       # ties
    sens_at_spec, spec_at_sens = roc_operating_points(y, p, 0.9)
    t = choose_threshold(y, p, "sensitivity", 0.9)
    r = rates(y, p > t)
    assert r["sensitivity"] >= 0.9 and r["specificity"] == pytest.approx(spec_at_sens, abs=1e-12)
    t = choose_threshold(y, p, "specificity", 0.9)
    r = rates(y, p > t)
    assert r["specificity"] >= 0.9 and r["sensitivity"] == pytest.approx(sens_at_spec, abs=1e-12)
    assert not np.isin(t, p)                                        # never a score itself


def test_rates_against_sklearn():
    rng = np.random.default_rng(3)
    y, d = rng.integers(0, 2, 80), rng.integers(0, 2, 80)
    tn, fp, fn, tp = confusion_matrix(y, d, labels=[0, 1]).ravel()
    r = rates(y, d)
    assert (r["sensitivity"], r["specificity"]) == pytest.approx((tp / (tp + fn), tn / (tn + fp)))
    assert (r["ppv"], r["npv"]) == pytest.approx((tp / (tp + fp), tn / (tn + fn)))
    assert np.isnan(rates(np.array([0, 0]), np.array([0, 0]))["sensitivity"])
    assert rates(np.array([0, 0]), np.array([0, 0]))["sensitivity 95% CI"] == "-"


def test_wilson_interval_by_hand():
    # 8 of 10: centre (8 + 1.96²/2) / (10 + 1.96²) = 0.7168, half-width 1.96·sqrt(.016 + 1.96²/400) / 1.3842 = 0.2266
    assert wilson_interval(8, 10) == "0.490-0.943"
    assert wilson_interval(0, 5) == "0.000-0.434" and wilson_interval(5, 5) == "0.566-1.000"


def _predictions(rng: np.random.Generator, n: int = 40) -> pd.DataFrame:
    y = rng.integers(0, 2, n)
    y[:4] = [0, 1, 0, 1]
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    split = np.where(np.arange(n) % 2 == 0, "val", "test")
    return pd.DataFrame({"subject_id": [f"s{i}" for i in range(n)], "split": split, "y_true": y, "p_pos": p,
                         "y_pred": (p > 0.5).astype(int), "n_bones": 7})


def test_show_a_run_and_a_cross_validation(tmp_path, capsys):
    rng = np.random.default_rng(0)
    results = tmp_path / "results"
    folds = []
    for k in range(2):
        preds = _predictions(rng)
        store.write_run(results, f"s-fold{k}", "e", 0, config={"run_key": f"k{k}"}, metrics={}, predictions=preds)
        folds.append(preds)
    pooled_config = {"suite": "s-cv2", "entry": "e", "seed": 0, "folds": 2,
                     "fold_runs": [{"fold": k, "holds_out": f"fold {k}", "run_key": f"k{k}"} for k in range(2)]}
    pooled = pd.concat([f[f["split"] == "test"] for f in folds])
    store.write_run(results, "s-cv2", "e", 0, config=pooled_config, metrics={}, predictions=pooled)

    single = operating_table(folds[0], "sensitivity", 0.9)
    val = folds[0][folds[0]["split"] == "val"]
    t = choose_threshold(val["y_true"].to_numpy(), val["p_pos"].to_numpy(), "sensitivity", 0.9)
    assert single.loc["val", "threshold"] == single.loc["test", "threshold"] == t
    assert single.loc["val", "sensitivity"] >= 0.9
    test = folds[0][folds[0]["split"] == "test"]
    assert single.loc["test"].drop("threshold").to_dict() == pytest.approx(
        rates(test["y_true"].to_numpy(), test["p_pos"].to_numpy() > t))

    assert main(["show", str(results / "s-cv2" / "e" / "seed0"), "--operating-point", "sensitivity:0.9"]) == 0
    out = capsys.readouterr().out
    assert "fold0" in out and "fold1" in out and "pooled" in out
    from bench.operating import pooled_operating_table

    table = pooled_operating_table(results / "s-cv2" / "e" / "seed0", pooled_config, "sensitivity", 0.9)
    decisions, truth = [], []
    for k, preds in enumerate(folds):
        assert table.loc[f"fold{k}", "threshold"] == operating_table(preds, "sensitivity", 0.9).loc["val", "threshold"]
        test = preds[preds["split"] == "test"]
        decisions.append(test["p_pos"].to_numpy() > table.loc[f"fold{k}", "threshold"])
        truth.append(test["y_true"].to_numpy())
    assert table.loc["test"].drop("threshold").to_dict() == pytest.approx(
        rates(np.concatenate(truth), np.concatenate(decisions)))
    assert table.loc["test", "n"] == len(pooled)

    assert main(["show", str(results / "s-fold0" / "e" / "seed0"), "--operating-point", "specificity:0.8"]) == 0
    assert "threshold chosen on the val split" in capsys.readouterr().out
    assert main(["show", str(results / "s-fold0"), "--operating-point", "sens:0.9"]) == 2
    assert "--operating-point needs a run folder" in capsys.readouterr().err
    assert main(["show", str(results / "s-fold0" / "e" / "seed0"), "--operating-point", "ppv:0.9"]) == 2
    capsys.readouterr()
    store.write_run(results, "external", "e", 0, config={}, metrics={}, predictions=pooled)   # test subjects only
    assert main(["show", str(results / "external" / "e" / "seed0"), "--operating-point", "sens:0.9"]) == 2
    assert "no labelled val subjects" in capsys.readouterr().err
