"""bench data check: a clean dataset passes; a broken one lists every problem at once."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.data.check import Problem, check_dataset
from bench.data.format import MANIFEST_COLUMNS, mask_path, write_manifest
from bench.data.imageio import write_label_map, write_png16

H, W = 16, 20


def build(root) -> None:
    """A small valid dataset written by hand (no bench importer involved)."""
    (root / "images").mkdir(parents=True)
    rows = [("i1", "s1", "", "train", "F", "61", "-3.0", "1", "L", "0.1", "A"),
            ("i2", "s1", "", "train", "F", "61", "-3.0", "1", "R", "0.1", "A"),
            ("i3", "s2", "", "val", "M", "70", "-1.0", "0", "L", "", "B"),
            ("i4", "s3", "", "test", "", "", "", "", "", "", "")]
    df = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    df["path"] = "images/" + df["image_id"] + ".png"
    for iid in df["image_id"]:
        write_png16(root / "images" / f"{iid}.png", np.full((H, W), 0.5))
    write_manifest(df, root / "manifest.csv")
    ann = []
    for iid in ("i1", "i3"):
        for a, w in (("x", 0.6), ("y", 0.4)):
            p = mask_path(root, iid, a)
            p.parent.mkdir(parents=True, exist_ok=True)
            labels = np.zeros((H, W), np.uint8)
            labels[2:6, 2:6] = 3
            write_label_map(p, labels)
            ann.append((iid, a, w))
    pd.DataFrame(ann, columns=["image_id", "annotator", "weight"]).to_csv(root / "annotators.csv", index=False)
    (root / "dataset.json").write_text('{"name": "t"}')


def test_clean_dataset_passes(tmp_path, capsys):
    build(tmp_path / "ds")
    assert check_dataset(tmp_path / "ds") == []
    assert main(["data", "check", str(tmp_path / "ds")]) == 0
    assert "OK (0 error(s), 0 warning(s))" in capsys.readouterr().out


def test_every_problem_listed_at_once(tmp_path, capsys):
    root = tmp_path / "ds"
    build(root)
    m = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    m.loc[1, "image_id"] = "i1"            # duplicate id (i2 -> i1)
    m.loc[2, "split"] = "test"             # s2 fine; make s1 cross splits:
    m.loc[0, "split"] = "val"              # s1: val + train
    m.loc[2, "age"] = "seventy"            # non-numeric age
    m.loc[2, "label"] = "1"                # label 1 but T = -1.0
    m.loc[3, "sex"] = "X"                  # bad sex
    m.loc[3, "path"] = "images/gone.png"   # missing file
    m.loc[3, "pixel_spacing_mm"] = "-1"    # out of range
    m.to_csv(root / "manifest.csv", index=False)
    (root / "images" / "i3.png").write_bytes(b"garbage")                   # unreadable image
    write_label_map(mask_path(root, "i1", "x"), np.full((H + 1, W), 1, np.uint8))   # wrong shape
    write_label_map(mask_path(root, "i3", "y"), np.full((H, W), 9, np.uint8))      # class id 9
    ann = pd.read_csv(root / "annotators.csv")
    ann.loc[ann["annotator"] == "y", "weight"] = 0.2                            # sums 0.8
    ann.loc[len(ann)] = ["i9", "x", 1.0]                                        # unknown image
    ann.to_csv(root / "annotators.csv", index=False)
    mask_path(root, "i4", "z").parent.mkdir()
    write_label_map(mask_path(root, "i4", "z"), np.zeros((H, W), np.uint8))    # not listed
    problems = check_dataset(root)
    assert all(isinstance(p, Problem) for p in problems)
    expected = [
        ("manifest.csv", "duplicate image_id 'i1' in rows 2, 3"),
        ("manifest.csv", "age is not a number in row 4"),
        ("manifest.csv", "pixel_spacing_mm outside"),
        ("manifest.csv", "label inconsistent with t_score (label = t_score < -2.5) in row 4"),
        ("manifest.csv", "sex must be F, M or empty; row 5"),
        ("manifest.csv", "subject 's1' crosses splits (train, val)"),
        ("images/gone.png", "does not exist"),
        ("images/i3.png", "unreadable image"),
        ("masks/i1/x.png", "shape (17, 20) differs from its image (16, 20)"),
        ("masks/i3/y.png", "class id 9 > 7"),
        ("annotators.csv", "weights of image 'i1' sum to 0.8"),
        ("annotators.csv", "weights of image 'i3' sum to 0.8"),
        ("annotators.csv", "not in manifest.csv: i9"),
        ("masks/i9/x.png", "does not exist"),
        ("masks/i4/z.png", "not listed in annotators.csv"),
    ]
    for file, text in expected:
        assert any(p.file == file and text in p.message for p in problems), (file, text, problems)
    assert len(problems) == len(expected), "\n".join(map(str, problems))
    assert [p.severity for p in problems].count("warning") == 1
    assert main(["data", "check", str(root)]) == 2
    captured = capsys.readouterr()
    assert "FAILED (14 error(s), 1 warning(s))" in captured.out
    assert captured.err.count("error: ") == 14


def test_missing_columns_and_missing_folder(tmp_path):
    build(tmp_path / "ds")
    m = pd.read_csv(tmp_path / "ds" / "manifest.csv", dtype=str, keep_default_na=False)
    m.drop(columns=["split", "sex"]).to_csv(tmp_path / "ds" / "manifest.csv", index=False)
    problems = check_dataset(tmp_path / "ds")
    assert [p.message for p in problems if "missing column" in p.message] == [
        f"missing column(s) split, sex (required: {', '.join(MANIFEST_COLUMNS)}; leave values "
        "empty where unknown)"]
    assert len(problems) == 1  # the rest is still checked and clean
    assert check_dataset(tmp_path / "nope")[0].message == "dataset folder does not exist"
    (tmp_path / "empty").mkdir()
    assert "manifest.csv" in check_dataset(tmp_path / "empty")[0].file


@pytest.mark.parametrize("fold, ok", [(["0", "0", "1", "1"], True), (["0", "1", "1", "0"], False)])
def test_fold_column_subject_wise(tmp_path, fold, ok):
    build(tmp_path / "ds")
    m = pd.read_csv(tmp_path / "ds" / "manifest.csv", dtype=str, keep_default_na=False)
    m["fold"] = fold
    m.to_csv(tmp_path / "ds" / "manifest.csv", index=False)
    problems = check_dataset(tmp_path / "ds")
    assert (problems == []) == ok
    if not ok:
        assert "subject 's1' crosses folds (0, 1)" in problems[0].message


def test_a_subject_whose_images_have_different_labels_is_an_error(tmp_path, capsys):
    build(tmp_path)
    df = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False)
    df.loc[df["image_id"] == "i2", ["t_score", "label"]] = ["", "0"]     # s1: label 1 on i1, 0 on i2
    write_manifest(df, tmp_path / "manifest.csv")
    problems = check_dataset(tmp_path)
    assert [(p.severity, p.file) for p in problems] == [("error", "manifest.csv")]
    assert "subject 's1' has images with different labels in rows 2, 3" in problems[0].message
    assert main(["data", "check", str(tmp_path)]) == 2
    df.loc[df["image_id"] == "i2", "label"] = ""                         # an unknown label is no conflict
    write_manifest(df, tmp_path / "manifest.csv")
    assert check_dataset(tmp_path) == []
