"""bench.run_evaluation: every subject of the `cls` dataset counts, scored or not."""
from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest

from bench import registry, results as store
from bench.cli import main
from bench.metrics import NoUsableBoneWarning, SingleClassWarning
from bench.run_evaluation import evaluate
from bench.runner import Runner


def _manifest() -> pd.DataFrame:
    return pd.DataFrame({"image_id": ["a1", "a2", "b1", "c1", "d1", "e1"], "subject_id": ["a", "a", "b", "c", "d", "e"],
                         "split": ["test", "test", "test", "test", "test", "extra"], "label": [1, 1, 0, 1, 0, 1]})


def test_a_subject_the_stage_left_out_is_unscored_not_dropped(tmp_path):
    bones = pd.DataFrame({"subject_id": ["a", "a", "b", "c"], "split": "test", "bone": "ulna",
                          "y_true": [1, 1, 0, 1], "p_pos": [0.9, 0.5, 0.2, 0.6]})
    bones.to_parquet(tmp_path / "bone_predictions.parquet")
    _, before = evaluate(tmp_path)
    assert (before["test"]["n"], before["test"]["n_unscored"]) == (3, 0)       # d silently gone without the manifest
    with pytest.warns(NoUsableBoneWarning, match=r"1 subject\(s\) got no prediction .*: d$"):
        subjects, metrics = evaluate(tmp_path, _manifest())
    assert (metrics["test"]["n"], metrics["test"]["n_pos"], metrics["test"]["n_unscored"]) == (3, 2, 1)
    d = subjects.set_index("subject_id").loc["d"]
    assert math.isnan(d["p_pos"]) and d["y_true"] == 0 and pd.isna(d["y_pred"]) and d["n_bones"] == 0
    assert "e" not in set(subjects["subject_id"]) and "extra" not in metrics   # a split the stage did not predict
    assert str(subjects["y_true"].dtype) == "Int64" and str(subjects["y_pred"].dtype) == "Int64"


def test_nothing_is_added_when_every_subject_is_scored(tmp_path):
    frame = pd.DataFrame({"subject_id": list("abcd"), "split": "test", "y_true": [1, 0, 1, 0],
                          "p_pos": [0.8, 0.3, 0.6, 0.1]})
    frame.to_parquet(tmp_path / "predictions.parquet")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoUsableBoneWarning)
        subjects, metrics = evaluate(tmp_path, _manifest())
    assert len(subjects) == 4 and metrics["test"]["n_unscored"] == 0 and metrics["test"]["auc"] == 1.0


def test_a_run_counts_the_subjects_its_last_stage_could_not_score(tmp_path, tiny_dataset, capsys):
    registry.load_entries(["toy_entries"])
    runner = Runner(tmp_path / "results", suite="t", profile="smoke", data_seg=str(tiny_dataset),
                    data_cls=str(tiny_dataset), device="cpu", progress=False, sets=["toy.unusable=2"])
    # two of the six test subjects unscored leave one class among the four scored: the AUC is NaN
    with pytest.warns(SingleClassWarning, match="split 'test': 1 class"), pytest.warns(NoUsableBoneWarning):
        outcome = runner.run(["toy-optional"], [0])[0]
    assert outcome.status == "done", outcome.error
    manifest = pd.read_csv(tiny_dataset / "manifest.csv", dtype={"subject_id": str})
    test_subjects = manifest.loc[manifest["split"] == "test", "subject_id"].nunique()
    assert outcome.metrics["test"]["n_unscored"] == 2 and outcome.metrics["test"]["n"] == test_subjects - 2
    run = store.read_run(store.run_dir(tmp_path / "results", "t", "toy-optional", 0))
    assert sorted(run.predictions["subject_id"]) == sorted(manifest["subject_id"].unique())
    assert run.predictions["p_pos"].isna().sum() == 2
    assert main(["show", str(store.run_dir(tmp_path / "results", "t", "toy-optional", 0))]) == 0
    header, *rows = [line.split() for line in capsys.readouterr().out.splitlines() if "n_unscored" in line or
                     line.startswith("test")]
    assert rows[0][header.index("n_unscored") + 1] == "2.0"          # the row starts with the split's name
