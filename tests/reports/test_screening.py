"""The report's screening table (reports.screening): cells are the summary's mean ± std over seeds."""
from __future__ import annotations

import pandas as pd
from suite_data import METRICS, SUITE, write_suite

from reports.build import build_report
from reports.screening import screening_frame
from reports.summary import summarise


def test_screening_cells_are_mean_and_std_over_seeds(tmp_path, registered):
    results = write_suite(tmp_path / "results", ["rt_simclr", "rt_supcon"])
    index = build_report(results, SUITE, n_boot=10, mlflow=False)
    table = pd.read_csv(index.parent / "tables" / "screening.csv", index_col="entry")
    auc = pd.Series(METRICS["rt_simclr"]["auc"])
    assert table.loc["rt_simclr", "AUC"] == f"{auc.mean():.2f} ± {auc.std(ddof=1):.2f}"
    recall = pd.Series(METRICS["rt_supcon"]["recall"])
    assert table.loc["rt_supcon", "Sens."] == f"{recall.mean():.2f} ± {recall.std(ddof=1):.2f}"
    assert table.loc["rt_simclr", "Cal. slope"] == "–"                    # not in these runs' metrics
    assert table.loc["rt_simclr", "Seeds"] == 3
    text = index.read_text(encoding="utf-8")
    assert "### Screening metrics" in text and "tables/screening.tex" in text
    assert (index.parent / "tables" / "screening.tex").read_text().count(r"\pm") >= 4


def test_one_seed_has_no_spread_and_other_splits_are_left_out():
    metrics = pd.DataFrame({"entry": ["a", "a", "b"], "seed": [0, 0, 0], "split": ["test", "test", "val"],
                            "metric": ["auc", "brier", "auc"], "value": [0.8123, 0.2, 0.7]})
    frame = screening_frame(summarise(metrics), ["a", "b"], "test", digits=3)
    assert list(frame.index) == ["a"]
    assert frame.loc["a", "AUC"] == "0.812" and frame.loc["a", "Brier"] == "0.200" and frame.loc["a", "NPV"] == "–"


def test_negative_cells_get_a_real_minus_in_latex_and_no_negative_zero():
    from reports.screening import _latex

    metrics = pd.DataFrame({"entry": ["a"] * 3, "seed": [0, 1, 0], "split": ["test"] * 3,
                            "metric": ["calibration_intercept", "calibration_intercept", "auc"],
                            "value": [-0.3, -0.2, -0.0001 + 0.5]})
    frame = screening_frame(summarise(metrics), ["a"], "test", digits=2)
    assert frame.loc["a", "Cal. int."] == "-0.25 ± 0.07"                  # plain text for Markdown and CSV
    assert frame.loc["a", "AUC"] == "0.50"
    tex = _latex(frame, "c", str)
    assert r"$-$0.25 $\pm$ 0.07" in tex and " -0.25" not in tex
    assert screening_frame(summarise(metrics.assign(value=-0.001)), ["a"], "test").loc["a", "AUC"] == "0.00"


def test_an_evaluation_that_scored_training_subjects_is_named_not_external(tmp_path):
    from reports.screening import not_external, screening_item

    rows = [("ext", 0, "test", "auc", 0.9), ("ext", 0, "extra", "subjects_seen_fit", 12.0),
            ("ext", 0, "extra", "subjects_excluded", 0.0), ("clean", 0, "test", "auc", 0.7),
            ("clean", 0, "extra", "subjects_seen_fit", 5.0), ("clean", 0, "extra", "subjects_excluded", 5.0),
            ("plain", 0, "test", "auc", 0.8)]
    summary = summarise(pd.DataFrame(rows, columns=["entry", "seed", "split", "metric", "value"]))
    assert not_external(summary, ["ext", "clean", "plain"]) == {"ext": 12.0}
    item = screening_item(summary, ["ext", "clean", "plain"], "test", str, tmp_path, "tables")
    assert "Not external: ext scored 12 subject(s)" in item.markdown and "clean" not in item.markdown.split("Not")[1]
    assert "Not external" in (tmp_path / "screening.tex").read_text()
