"""bench.subgroups and `bench show RUN --by`: per-subgroup metrics against direct computations."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import recall_score, roc_auc_score

from bench import registry, results as store
from bench.cli import main
from bench.errors import BenchError
from bench.runner import Runner
from bench.stats import delong_ci
from bench.subgroups import parse_by, subgroup_table, subject_groups


def _data(n: int = 80, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    subjects = [f"s{i:02d}" for i in range(n)]
    y = rng.integers(0, 2, n)
    y[:4] = [0, 1, 0, 1]
    preds = pd.DataFrame({"subject_id": subjects, "split": np.where(np.arange(n) < n - 10, "test", "val"),
                          "y_true": y, "p_pos": np.clip(0.35 * y + rng.uniform(0, 0.65, n), 0, 1)})
    manifest = pd.DataFrame({"image_id": [f"{s}-0" for s in subjects] + ["s00-1"],
                             "subject_id": subjects + ["s00"],
                             "sex": list(rng.choice(["F", "M"], n)) + [""],
                             "age": list(rng.integers(40, 90, n).astype(float)) + [np.nan]})
    manifest.loc[5, "age"] = np.nan            # one subject without an age
    return preds, manifest


def test_each_group_is_scored_on_its_own_subjects():
    preds, manifest = _data()
    table = subgroup_table(preds, manifest, "sex")
    test = preds[preds["split"] == "test"]
    sex = manifest.groupby("subject_id")["sex"].first()
    assert list(table.index) == ["all", "F", "M"]
    for group in ("F", "M"):
        part = test[test["subject_id"].map(sex) == group]
        assert table.loc[group, "n"] == len(part)
        assert table.loc[group, "auc"] == pytest.approx(roc_auc_score(part["y_true"], part["p_pos"]))
        assert table.loc[group, "specificity"] == pytest.approx(
            recall_score(part["y_true"], part["p_pos"] > 0.5, pos_label=0))
        _, low, high = delong_ci(part["y_true"], part["p_pos"])
        assert table.loc[group, "auc 95% CI"] == f"{low:.3f}-{high:.3f}"
    assert table.loc["all", "n"] == len(test)
    assert subgroup_table(preds, manifest, "sex", split="val").loc["all", "n"] == 10
    chosen = subgroup_table(preds, manifest, "sex", metrics=["brier", "auc", "n"])     # bench show --metrics
    assert list(chosen.columns) == ["n", "n_pos", "brier", "auc", "auc 95% CI"]
    assert chosen.loc["F", "auc"] == table.loc["F", "auc"] and chosen.loc["F", "n"] == table.loc["F", "n"]


def test_a_numeric_column_is_cut_at_the_threshold_and_missing_values_are_unknown():
    _, manifest = _data()
    groups = subject_groups(manifest, "age", 65.0)
    age = manifest.groupby("subject_id")["age"].first()
    assert groups["s05"] == "unknown"
    assert (groups[age < 65] == "<65").all() and (groups[age >= 65] == ">=65").all()
    with pytest.raises(BenchError, match="numeric column with .* distinct values; cut it in two with age:"):
        subject_groups(manifest, "age")                    # one group per age: refused, a cut suggested
    few = manifest.assign(grade=manifest.index % 3)        # a numeric code with few values: one group each
    assert set(subject_groups(few, "grade")) == {"0", "1", "2"}
    assert parse_by("age:65") == ("age", 65.0) and parse_by(" site ") == ("site", None)
    with pytest.raises(BenchError, match="no such column"):
        subject_groups(manifest, "scanner")
    with pytest.raises(BenchError, match="holds no numbers"):
        subject_groups(manifest, "sex", 1.0)
    with pytest.raises(BenchError, match="column:threshold"):
        parse_by("age:old")


def test_cli_by_on_a_run_and_refusal_elsewhere(tmp_path, tiny_dataset, capsys):
    registry.load_entries(["toy_entries"])
    Runner(tmp_path / "r", suite="t", data_seg=str(tiny_dataset), data_cls=str(tiny_dataset), device="cpu",
           progress=False).run(["toy"], [0])
    run = store.run_dir(tmp_path / "r", "t", "toy", 0)
    assert main(["show", str(run), "--by", "sex"]) == 0
    out = capsys.readouterr().out
    assert "test split by sex" in out and {"all", "F", "M"} <= {line.split()[0] for line in out.splitlines()[2:]}
    assert main(["show", str(run.parent), "--by", "sex"]) == 2
    assert "needs a run folder" in capsys.readouterr().err
    assert main(["show", str(run), "--by", "sex", "--metrics", "brier"]) == 0
    header = capsys.readouterr().out.splitlines()[1].split()
    assert header == ["n", "n_pos", "brier"]
    assert main(["show", str(run), "--by", "sex", "--operating-point", "sensitivity:0.9"]) == 2
    assert "give one of them" in capsys.readouterr().err
