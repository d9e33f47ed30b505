"""`bench report --subgroups`: per-subgroup AUC tables equal the mean over seeds of bench.subgroups."""
from __future__ import annotations

import pandas as pd
import pytest

from bench import registry, results as store
from bench.runner import Runner
from bench.subgroups import subgroup_table
from reports.build import ReportConfig, build_report


def test_subgroup_tables_average_each_group_auc_over_seeds(tmp_path, tiny_dataset):
    registry.load_entries(["toy_entries"])
    Runner(tmp_path / "r", suite="s", data_seg=str(tiny_dataset), data_cls=str(tiny_dataset), device="cpu",
           progress=False).run(["toy"], [0, 1, 2])
    index = build_report(tmp_path / "r", "s", n_boot=20, mlflow=False,
                         config=ReportConfig(subgroups=("sex", "age:60"), split="train"))   # the tiny test split is too small
    manifest = pd.read_csv(tiny_dataset / "manifest.csv", dtype={"subject_id": str})
    saved = pd.read_csv(index.parent / "tables" / "subgroups_sex.csv")
    for group in ("F", "M"):
        aucs = [subgroup_table(store.read_run(store.run_dir(tmp_path / "r", "s", "toy", s)).predictions,
                               manifest, "sex", "train").loc[group, "auc"] for s in (0, 1, 2)]
        row = saved[(saved["entry"] == "toy") & (saved["group"] == group)].iloc[0]
        finite = [a for a in aucs if a == a]
        assert row["seeds"] == len(finite)
        if finite:
            assert row["mean"] == pytest.approx(sum(finite) / len(finite))
        else:                                   # one class in every seed: no AUC, shown as –
            assert row["mean"] != row["mean"]
        assert len(finite) == (3 if group == "F" else 0)            # train: F 42 (9 positive), M 6 (none)
    text = index.read_text()
    assert "### Subgroups: AUC by sex" in text and "### Subgroups: AUC by age:60" in text
    assert "(tables/subgroups_age_60.csv)" in text.replace("<", "").replace(">", "")
    assert set(pd.read_csv(index.parent / "tables" / "subgroups_age_60.csv")["group"]) <= {"<60", ">=60", "unknown"}
