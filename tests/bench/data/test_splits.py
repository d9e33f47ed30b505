"""Splits: subject-wise, stratified by label, fixed by seed; k-fold; `bench data split`."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bench import BenchError
from bench.cli import main
from bench.commands.data.split import rewrite_splits
from bench.data.check import check_dataset
from bench.data.format import MANIFEST_COLUMNS
from bench.data.imageio import write_png16
from bench.data.splits import assign_splits, kfold_splits


def manifest(n_pos: int = 60, n_neg: int = 140, n_unlabeled: int = 0, seed: int = 0) -> pd.DataFrame:
    """Subjects with 1-3 images each; label per subject."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    labels = [1] * n_pos + [0] * n_neg + [None] * n_unlabeled
    rows = []
    for s, lab in enumerate(labels):
        for k in range(int(rng.integers(1, 4))):
            rows.append({"image_id": f"s{s:03d}_{k}", "subject_id": f"s{s:03d}", "label": lab})
    return pd.DataFrame(rows)


def per_subject(m: pd.DataFrame, col: str) -> pd.Series:
    n = m.groupby("subject_id")[col].nunique()
    assert (n == 1).all(), "a subject crosses " + col
    return m.groupby("subject_id")[col].first()


def test_assign_splits_subject_wise_stratified_exact_counts():
    m = manifest()
    split = assign_splits(m, seed=1)
    assert set(split) == {"train", "val", "test"}
    subj = per_subject(m.assign(split=split), "split")
    lab = m.groupby("subject_id")["label"].first()
    counts = pd.crosstab(subj, lab)
    # largest remainder per stratum: 60 -> 48/6/6, 140 -> 112/14/14
    assert counts.loc[["train", "val", "test"], 1].tolist() == [48, 6, 6]
    assert counts.loc[["train", "val", "test"], 0].tolist() == [112, 14, 14]
    # unlabeled subjects form their own stratum: 7 -> 5/1/1 (5.6, .7, .7 floored to 5/0/0, the
    # two spare subjects go to the largest remainders .7, .7)
    m2 = manifest(n_pos=10, n_neg=10, n_unlabeled=7)
    s2 = per_subject(m2.assign(split=assign_splits(m2, seed=4)), "split")
    unl = s2[m2.groupby("subject_id")["label"].first().isna()]
    assert unl.value_counts().to_dict() == {"train": 5, "val": 1, "test": 1}


def test_assign_splits_fixed_by_seed():
    m = manifest()
    a, b, c = assign_splits(m, 7), assign_splits(m, 7), assign_splits(m, 8)
    assert a.equals(b) and not a.equals(c)
    # row order does not matter: the split of each image is a function of (subjects, seed)
    shuffled = m.sample(frac=1.0, random_state=0)
    assert assign_splits(shuffled, 7).sort_index().equals(a)


def test_kfold_covers_every_subject_once_stratified():
    m = manifest()
    fold = kfold_splits(m, k=5, seed=3)
    subj = per_subject(m.assign(fold=fold), "fold")
    assert sorted(subj.unique()) == [0, 1, 2, 3, 4] and len(subj) == 200
    lab = m.groupby("subject_id")["label"].first()
    pos = subj[lab == 1].value_counts()
    assert pos.min() >= 11 and pos.max() <= 13          # 60 positives / 5 folds = 12 each
    assert kfold_splits(m, 5, 3).equals(fold) and not kfold_splits(m, 5, 4).equals(fold)
    with pytest.raises(BenchError, match="folds"):
        kfold_splits(m, 1, 0)


@pytest.fixture()
def dataset(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    m = manifest(n_pos=6, n_neg=14)
    m = m.assign(path="images/" + m["image_id"] + ".png", split="train", sex="F", age="63",
                 t_score=np.where(m["label"] == 1, "-3.00", "-1.0"), laterality="", pixel_spacing_mm="",
                 site="", note="keep me")
    m["label"] = m["label"].astype("Int64").astype(str)
    for iid in m["image_id"]:
        write_png16(root / "images" / f"{iid}.png", np.zeros((4, 4)))
    m[list(MANIFEST_COLUMNS) + ["note"]].to_csv(root / "manifest.csv", index=False)
    (root / "dataset.json").write_text(json.dumps({"name": "x"}))
    return root


def test_cli_split_rewrites_only_split_column(dataset, capsys):
    before = pd.read_csv(dataset / "manifest.csv", dtype=str, keep_default_na=False)
    assert main(["data", "split", str(dataset), "--seed", "5"]) == 0
    assert "wrote split" in capsys.readouterr().out
    after = pd.read_csv(dataset / "manifest.csv", dtype=str, keep_default_na=False)
    assert after.drop(columns="split").equals(before.drop(columns="split"))   # "-3.00", "63" kept
    expected = assign_splits(pd.DataFrame({"subject_id": before["subject_id"],
                                           "label": pd.to_numeric(before["label"])}), 5)
    assert after["split"].tolist() == expected.tolist()
    assert json.loads((dataset / "dataset.json").read_text())["split"] == {
        "seed": 5, "fractions": [0.8, 0.1, 0.1]}
    assert check_dataset(dataset) == []
    assert not [p for p in dataset.iterdir() if p.name.startswith(".")]    # no temp files left
    first = (dataset / "manifest.csv").read_bytes()
    rewrite_splits(dataset, seed=5)
    assert (dataset / "manifest.csv").read_bytes() == first                  # same seed, same bytes


def test_cli_kfold_and_errors(dataset, capsys):
    assert main(["data", "split", str(dataset), "--kfold", "4", "--seed", "2"]) == 0
    after = pd.read_csv(dataset / "manifest.csv", dtype=str, keep_default_na=False)
    assert set(after["split"]) == {"train"}                                  # split untouched
    assert sorted(after.groupby("subject_id")["fold"].first().value_counts().index) == ["0", "1", "2", "3"]
    assert (after.groupby("subject_id")["fold"].nunique() == 1).all()
    assert check_dataset(dataset) == []
    assert json.loads((dataset / "dataset.json").read_text())["kfold"] == {"seed": 2, "k": 4}
    capsys.readouterr()
    assert main(["data", "split", str(dataset), "--fractions", "0.8", "0.3", "0.1"]) == 2
    assert "summing to 1" in capsys.readouterr().err
    assert main(["data", "split", str(dataset.parent / "nope")]) == 2


@pytest.mark.parametrize("fractions", [("0.8", "0.3", "0.1"), ("1.1", "0", "-0.1"), ("0", "0.5", "0.5"),
                                       ("nan", "0.5", "0.5")])
def test_fractions_are_checked_before_any_data_is_read(tmp_path, monkeypatch, capsys, fractions):
    import bench.data.importers as importers

    def no_reading(*args, **kwargs):
        raise AssertionError("an image was read before the fractions were checked")

    monkeypatch.setattr(importers, "ImageIndex", no_reading)
    monkeypatch.setattr(importers, "read_image", no_reading)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "meta.csv").write_text("image,t_score\na.png,-3\n")
    for argv in (["data", "import", str(tmp_path / "imgs"), "--csv", str(tmp_path / "meta.csv"), "--out",
                  str(tmp_path / "ds")], ["data", "split", str(tmp_path / "no-dataset")]):
        assert main(argv + ["--fractions", *fractions]) == 2
        err = capsys.readouterr().err
        assert f"split fractions {' '.join(str(float(f)) for f in fractions)} (train val test) must be three " \
               "non-negative numbers summing to 1, train above 0" in err and "Traceback" not in err
    with pytest.raises(BenchError, match="train above 0"):
        assign_splits(manifest(), 0, (0.0, 0.5, 0.5))
