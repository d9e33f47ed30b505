"""bench data import (folder + CSV): metadata parsing, labels, polarity, skip-bad, atomicity."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from bench import BenchError
from bench.cli import main
from bench.data.check import check_dataset
from bench.data.format import Dataset, read_manifest
from bench.data.imageio import read_image
from bench.data.importers import ImportConfig, import_dataset, read_metadata, ImageIndex
from bench.data.splits import assign_splits
from dicom_samples import make_dicom as write_dicom


def square(shape=(24, 32), bone=0.9, tissue=0.2) -> np.ndarray:
    """Bone-bright picture: bright square in rows 0-5, cols 0-7."""
    img = np.full(shape, tissue)
    img[:6, :8] = bone
    return img


# subject, file, T-score, sex, age, side ; 12 subjects, 14 images, 4 osteoporotic subjects
ROWS = [
    ("s01", "a.png", "-3.1", "Female", "63", "left"),
    ("s01", "sub/a2.tif", "-3.1", "F", "063Y", "R"),
    ("s02", "b.jpg", "-2.4", "m", "70", ""),
    ("s03", "c.dcm", "-2.5", "female", "", "L"),
    ("s04", "d", "-0.7", "F", "55", "Right"),          # named by image id (d.png)
    ("s05", "e.png", "-2.6", "F", "81", "L"),
    ("s06", "f.png", "1.0", "M", "49", "L"),
    ("s07", "g.png", "NA", "F", "58", "L"),             # unknown T-score -> label empty
    ("s08", "h.png", "-1.2", "F", "66", "L"),
    ("s09", "i.png", "-2.9", "F", "77", "L"),
    ("s10", "j.png", "0.3", "F", "61", "L"),
    ("s11", "k.png", "-1.9", "F", "59", "L"),
    ("s12", "l.png", "-4.0", "F", "85", "L"),
    ("s12", "l2.png", "-4.0", "F", "85", "R"),
]


@pytest.fixture()
def folder(tmp_path):
    src = tmp_path / "raw"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(np.random.SeedSequence([7]))
    for _, name, *_ in ROWS:
        img = np.clip(square() + rng.normal(0, 0.01, (24, 32)), 0, 1)
        stem = name if "." in name else name + ".png"
        path = src / stem
        if stem.endswith(".png"):
            Image.fromarray(np.round(img * 65535).astype(np.uint16)).save(path)
        elif stem.endswith(".tif"):
            tifffile.imwrite(path, np.round(img * 255).astype(np.uint8))
        elif stem.endswith(".jpg"):
            Image.fromarray(np.round(img * 255).astype(np.uint8)).save(path, quality=95)
        else:  # MONOCHROME1 with a window: bone stored dark
            write_dicom(path, np.round((1 - img) * 4095), PhotometricInterpretation="MONOCHROME1",
                        WindowCenter=2048, WindowWidth=4096, PixelSpacing=[0.14, 0.14])
    csv = tmp_path / "meta.csv"
    pd.DataFrame(ROWS, columns=["Patient ID", "File", "T-score", "Sex", "Age", "Side"]).assign(
        BMD="0.8").to_csv(csv, index=False)
    return src, csv


def test_import_in_place_reads_metadata_and_derives_labels(folder, tmp_path):
    src, csv = folder
    report = import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds", split_seed=3))
    assert report.n_images == 14 and report.n_subjects == 12 and not report.skipped
    m = read_manifest(tmp_path / "ds" / "manifest.csv")
    assert m["image_id"].tolist() == ["a", "sub_a2", "b", "c", "d", "e", "f", "g", "h", "i", "j",
                                      "k", "l", "l2"]
    by = m.set_index("image_id")
    # label = T < -2.5: -3.1 -> 1, -2.4 -> 0, exactly -2.5 -> 0, -2.6 -> 1, unknown -> empty
    assert by.loc["a", "label"] == 1 and by.loc["b", "label"] == 0 and by.loc["c", "label"] == 0
    assert by.loc["e", "label"] == 1 and pd.isna(by.loc["g", "label"])
    assert by["sex"].tolist() == ["F", "F", "M", "F", "F", "F", "M"] + ["F"] * 7
    assert by.loc["sub_a2", "age"] == 63 and np.isnan(by.loc["c", "age"])
    assert by.loc["a", "laterality"] == "L" and by.loc["d", "laterality"] == "R"
    assert pd.isna(by.loc["b", "laterality"])
    assert by.loc["c", "pixel_spacing_mm"] == pytest.approx(0.14)  # from the DICOM header
    assert by.loc["b", "subject_id"] == "s02" and (by["BMD"] == 0.8).all()  # extra column kept
    files = {"sub_a2": "sub/a2.tif", "b": "b.jpg", "c": "c.dcm", "d": "d.png"}
    for iid, row in by.iterrows():  # referenced in place, absolute
        assert row["path"] == str((src / files.get(iid, f"{iid}.png")).resolve())
    # splits: exactly bench.data.splits.assign_splits with the seed; no subject crosses
    assert (m["split"] == assign_splits(m, 3)).all()
    assert (m.groupby("subject_id")["split"].nunique() == 1).all()
    ds = Dataset.open(tmp_path / "ds")
    assert np.array_equal(ds.image("c"), read_image(src / "c.dcm").pixels)
    assert check_dataset(tmp_path / "ds") == []


def test_copy_converts_to_png16_keeping_bone_bright_top_left(folder, tmp_path):
    src, csv = folder
    import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds", copy=True))
    m = read_manifest(tmp_path / "ds" / "manifest.csv")
    assert (m["path"] == "images/" + m["image_id"] + ".png").all()
    for iid, name in (("c", "c.dcm"), ("b", "b.jpg"), ("sub_a2", "sub/a2.tif")):
        with Image.open(tmp_path / "ds" / "images" / f"{iid}.png") as im:
            assert im.mode == "I;16"
        copied = read_image(tmp_path / "ds" / "images" / f"{iid}.png").pixels
        np.testing.assert_allclose(copied, read_image(src / name).pixels, atol=1 / 65535)
        assert copied[:6, :8].min() > 0.8 and copied[6:, 8:].max() < 0.3  # bone bright, top-left
    assert check_dataset(tmp_path / "ds") == []


def test_same_seed_same_bytes(folder, tmp_path):
    src, csv = folder
    for name in ("x", "y"):
        import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / name, copy=True, split_seed=5))
    for rel in ("manifest.csv", "annotators.csv", "images/c.png", "images/sub_a2.png"):
        assert (tmp_path / "x" / rel).read_bytes() == (tmp_path / "y" / rel).read_bytes()


def test_every_csv_problem_reported_at_once(folder, tmp_path):
    src, _ = folder
    bad = tmp_path / "bad.csv"
    pd.DataFrame([("s1", "a.png", "-3.0", "0", "F", "abc"),      # label contradicts T-score
                  ("s2", "b.jpg", "", "maybe", "X", "60"),       # bad label, bad sex
                  ("s3", "e.png", "25", "", "F", "60")],         # T-score out of range
                 columns=["subject", "image", "t_score", "label", "sex", "age"]).to_csv(bad, index=False)
    with pytest.raises(BenchError) as err:
        import_dataset(ImportConfig(images=src, csv=bad, out=tmp_path / "ds"))
    text = str(err.value)
    for part in ("row 2: label 0 contradicts t_score -3", "row 2: age 'abc' is not a number",
                 "row 3: label 'maybe'", "row 3: sex 'X'", "row 4: t_score 25 is outside"):
        assert part in text
    assert text.startswith("5 problem(s)") and not (tmp_path / "ds").exists()


def test_label_words_and_column_mapping(folder, tmp_path):
    src, _ = folder
    csv = tmp_path / "m.csv"
    pd.DataFrame({"pic": ["a.png", "e.png", "f.png"], "who": ["p1", "p2", "p2"],
                  "dx": ["osteoporosis", "normal", "1"], "yrs": ["60", "61", "62"]}).to_csv(csv, index=False)
    cfg = dict(images=src, csv=csv, columns={"image": "pic", "subject_id": "who", "label": "dx",
                                             "age": "yrs"})
    rows, missing, warnings, _, _ = read_metadata(csv, ImageIndex(src), cfg["columns"])
    assert rows["label"].tolist() == [1, 0, 1] and rows["age"].tolist() == [60, 61, 62]
    assert not missing and any("different labels" in w for w in warnings)
    with pytest.raises(BenchError, match="no subject id column and no DICOM PatientID gives one: 3 image.s. have no"):
        import_dataset(ImportConfig(images=src, csv=csv, columns={"image": "pic"}, out=tmp_path / "nosub"))
    assert not (tmp_path / "nosub").exists()                                  # nothing half-written
    with pytest.raises(BenchError, match="'nope'.*not in the CSV"):
        read_metadata(csv, ImageIndex(src), {"image": "nope"})


def test_corrupt_and_missing_files(folder, tmp_path):
    src, csv = folder
    (src / "e.png").write_bytes((src / "e.png").read_bytes()[:60])       # truncated PNG
    meta = pd.read_csv(csv, dtype=str)
    meta.loc[len(meta)] = ["s13", "gone.png", "-1", "F", "50", "L", "0.8"]
    meta.to_csv(csv, index=False)
    with pytest.raises(BenchError) as err:
        import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds", copy=True))
    assert "e.png" in str(err.value) and "gone.png" in str(err.value) and "--skip-bad" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.csv", "raw"]  # nothing half-written

    report = import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds", skip_bad=True))
    assert sorted(f.split("/")[-1] for f, _ in report.skipped) == ["e.png", "gone.png"]
    skipped = pd.read_csv(tmp_path / "ds" / "skipped.csv")
    assert sorted(skipped["file"].str.split("/").str[-1]) == ["e.png", "gone.png"]
    m = read_manifest(tmp_path / "ds" / "manifest.csv")
    assert "e" not in set(m["image_id"]) and len(m) == 14 - 1
    assert check_dataset(tmp_path / "ds") == []


def test_cli_import_and_errors(folder, tmp_path, capsys):
    src, csv = folder
    out = tmp_path / "ds"
    assert main(["data", "import", str(src), "--csv", str(csv), "--out", str(out),
                 "--split-seed", "1", "--fractions", "0.5", "0.25", "0.25"]) == 0
    assert "imported 14 image(s) of 12 subject(s)" in capsys.readouterr().out
    m = read_manifest(out / "manifest.csv")
    assert (m["split"] == assign_splits(m, 1, (0.5, 0.25, 0.25))).all()
    assert main(["data", "check", str(out)]) == 0
    # existing output, no --overwrite: exit 2 with a message and no traceback
    assert main(["data", "import", "--images", str(src), "--csv", str(csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err
    assert main(["data", "import", str(src), "--out", str(tmp_path / "z")]) == 2
    assert "nothing to import" in capsys.readouterr().err


def test_column_mapping_is_printed_and_a_csv_without_labels_warns(folder, tmp_path, capsys):
    src, csv = folder
    assert main(["data", "import", str(src), "--csv", str(csv), "--out", str(tmp_path / "ds")]) == 0
    captured = capsys.readouterr()
    assert ("CSV columns: image <- 'File', subject_id <- 'Patient ID', t_score <- 'T-score', sex <- 'Sex', "
            "age <- 'Age', laterality <- 'Side'; not found: label, site, pixel_spacing_mm; "
            "kept as extra columns: BMD") in captured.out
    assert "no label or T-score" not in captured.err
    nolab = tmp_path / "nolab.csv"
    pd.read_csv(csv, dtype=str).rename(columns={"T-score": "DXA T (lowest)"}).to_csv(nolab, index=False)
    assert main(["data", "import", str(src), "--csv", str(nolab), "--out", str(tmp_path / "d2")]) == 0
    captured = capsys.readouterr()
    warning = next(line for line in captured.err.splitlines() if "no label or T-score column" in line)
    assert warning.startswith("bench: warning: nolab.csv has no label or T-score column")
    assert "'DXA T (lowest)', 'BMD'" in warning and "--column t_score=COLUMN" in warning
    assert read_manifest(tmp_path / "d2" / "manifest.csv")["label"].isna().all()
    # an explicit --column t_score= says the user means it: no warning
    assert main(["data", "import", str(src), "--csv", str(nolab), "--out", str(tmp_path / "d3"),
                 "--column", "t_score=", "--column", "label="]) == 0
    assert "no label or T-score" not in capsys.readouterr().err


@pytest.mark.parametrize("delimiter, decimal", [(";", ","), ("\t", ","), ("\t", "."), (",", ".")])
def test_semicolon_and_tab_delimited_csv(folder, tmp_path, delimiter, decimal):
    src, csv = folder
    meta = pd.read_csv(csv, dtype=str)
    meta["T-score"] = meta["T-score"].str.replace(".", decimal, regex=False)
    meta["Notes"] = "a, b; c"                                   # the other delimiters inside a field
    other = tmp_path / "excel.csv"
    other.write_bytes(b"\xef\xbb\xbf" + meta.to_csv(index=False, sep=delimiter, lineterminator="\r\n").encode())
    import_dataset(ImportConfig(images=src, csv=other, out=tmp_path / "ds"))
    import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ref"))
    m, ref = (read_manifest(tmp_path / d / "manifest.csv") for d in ("ds", "ref"))
    cols = ["image_id", "subject_id", "t_score", "label", "sex", "age", "laterality"]
    pd.testing.assert_frame_equal(m[cols], ref[cols])
    assert (m["Notes"] == "a, b; c").all() and m.loc[m["image_id"] == "a", "t_score"].item() == -3.1


def test_csv_columns_named_like_manifest_columns_are_kept_with_a_warning(folder, tmp_path):
    src, csv = folder
    meta = pd.read_csv(csv, dtype=str)
    meta["split"] = ["train"] * 10 + ["test"] * 4
    meta["path"] = "/elsewhere/" + meta["File"]
    meta.to_csv(csv, index=False)
    report = import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds"))
    m = read_manifest(tmp_path / "ds" / "manifest.csv")
    assert m["csv_split"].tolist() == meta["split"].tolist()            # the user's split is not lost
    assert m["csv_path"].tolist() == meta["path"].tolist()
    assert set(m["split"]) <= {"train", "val", "test"} and m["path"].str.startswith(str(src.resolve())).all()
    text = "\n".join(report.warnings)
    assert "column 'split' is kept as 'csv_split'" in text and "--split-seed" in text
    assert "copy csv_split into split in manifest.csv" in text
    assert "column 'path' is kept as 'csv_path'" in text
    assert "'split' as 'csv_split'" in report.columns


def test_unwritable_out_is_a_clear_error(folder, tmp_path, capsys):
    src, csv = folder
    (tmp_path / "afile").write_text("in the way")
    out = tmp_path / "afile" / "ds"
    assert main(["data", "import", str(src), "--csv", str(csv), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot create files in {tmp_path / 'afile'}" in err and "Traceback" not in err


def test_12_bit_data_in_16_bit_files_warns_once_and_keeps_the_scaling(folder, tmp_path):
    src, csv = folder
    for name in ("e.png", "f.png"):
        Image.fromarray(np.round(square() * 4095).astype(np.uint16)).save(src / name)
    report = import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds"))
    dark = [w for w in report.warnings if "below 4096" in w]
    assert len(dark) == 1 and dark[0].startswith("2 image(s)") and "e.png, f.png" in dark[0]
    assert "16x darker" in dark[0]
    ds = Dataset.open(tmp_path / "ds")
    np.testing.assert_allclose(ds.image("e"), np.round(square() * 4095) / 65535, atol=1e-6)   # unchanged


def test_out_inside_the_image_folder_or_holding_it_is_refused(folder, tmp_path, capsys):
    src, csv = folder
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out in (src / "ds", src / "sub" / "ds", src):
        assert main(["data", "import", str(src), "--csv", str(csv), "--out", str(out), "--copy"]) == 2
        err = capsys.readouterr().err
        assert f"--out {out} is {'' if out == src else 'inside '}the image folder {src}" in err
        assert "Traceback" not in err
    with pytest.raises(BenchError, match=f"--out {tmp_path} holds the image folder {src}"):
        import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path, overwrite=True))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before    # nothing written or lost


def test_label_conflict_within_a_patient_id_subject_is_caught(tmp_path):
    """Subject ids filled from PatientID after the CSV's own per-subject check: import warns and
    `data check` refuses (QA: one patient's images labelled 0, 0, 1 passed both)."""
    src = tmp_path / "dcm"
    src.mkdir()
    for name, pid in (("x.dcm", "P1"), ("y.dcm", "P1"), ("z.dcm", "P2")):
        write_dicom(src / name, np.full((8, 8), 2000), PhotometricInterpretation="MONOCHROME2", PatientID=pid)
    csv = tmp_path / "m.csv"
    csv.write_text("file,t\nx.dcm,-3\ny.dcm,-1\nz.dcm,-3\n")
    report = import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds"))
    conflicts = [w for w in report.warnings if "different labels" in w]
    assert len(conflicts) == 1 and "P1" in conflicts[0] and "P2" not in conflicts[0]
    problems = check_dataset(tmp_path / "ds")
    assert [p.severity for p in problems] == ["error"] and "subject 'P1'" in problems[0].message


@pytest.mark.parametrize("which", ["csv", "csv parent", "coco", "class map"])
def test_out_that_is_or_holds_an_input_file_is_refused(folder, tmp_path, which):
    src, _ = folder
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    csv = inputs / "meta.csv"
    csv.write_text("file,subject,t\na.png,s1,-3\n")
    coco = inputs / "alice.json"
    coco.write_text('{"images": [], "annotations": [], "categories": []}')
    cmap = inputs / "map.yaml"
    cmap.write_text("Thing: ulna\n")
    out = {"csv": csv, "csv parent": inputs, "coco": coco, "class map": cmap}[which]
    before = {p: p.read_bytes() for p in (csv, coco, cmap)}
    cfg = ImportConfig(images=src, csv=csv, coco=[(None, coco)], class_map=cmap, out=out, overwrite=True)
    with pytest.raises(BenchError, match=f"--out {out} (is|holds) the .* which --overwrite would delete"):
        import_dataset(cfg)
    assert {p: p.read_bytes() for p in (csv, coco, cmap)} == before             # every input intact


def test_column_names_with_a_unit_in_brackets_are_recognised():
    from bench.data.metadata import resolve_columns

    found = resolve_columns(["File", "Patient ID", "Age (y)", "T-score [L1-L4]", "Pixel spacing (mm)", "age2"], {})
    assert (found["age"], found["t_score"], found["pixel_spacing_mm"]) == ("Age (y)", "T-score [L1-L4]",
                                                                           "Pixel spacing (mm)")
    assert resolve_columns(["file", "Age (months)", "age"], {})["age"] == "age"   # an exact name wins
