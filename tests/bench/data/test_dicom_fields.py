"""bench.data.dicom_fields and the importer's use of it: header tags fill what the CSV lacks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.errors import BenchError
from bench.data.dicom_fields import age_from_dates, dicom_age, header_fields
from bench.data.format import read_manifest
from bench.data.imageio import read_image
from bench.data.importers import ImportConfig, import_dataset
from test_importers import write_dicom


@pytest.mark.parametrize("text, years", [("065Y", 65.0), ("018M", 1.5), ("026W", 26 * 7 / 365.25),
                                         ("010D", 10 / 365.25), ("65y", 65.0), ("", None), ("65", None),
                                         ("065X", None)])
def test_dicom_age_strings(text, years):
    assert dicom_age(text) == (None if years is None else pytest.approx(years))


def test_age_from_birth_date_counts_whole_years_to_the_first_acquisition_date():
    assert age_from_dates({"PatientBirthDate": "19600315", "StudyDate": "20240314"}) == 63.0   # day before
    assert age_from_dates({"PatientBirthDate": "19600315", "StudyDate": "20240315"}) == 64.0   # birthday
    assert age_from_dates({"PatientBirthDate": "19600315", "ContentDate": "20240401"}) == 64.0  # fallback date
    assert age_from_dates({"PatientBirthDate": "19600315"}) is None
    assert age_from_dates({"PatientBirthDate": "2024xx01", "StudyDate": "20240101"}) is None
    assert age_from_dates({"PatientBirthDate": "20250101", "StudyDate": "20240101"}) is None     # born later


def test_header_fields_keep_only_what_the_header_states():
    full = {"PatientID": "MRN7", "PatientSex": "F", "PatientAge": "071Y", "ImageLaterality": "R",
            "Laterality": "L", "InstitutionName": "North"}
    assert header_fields(full) == {"subject_id": "MRN7", "sex": "F", "age": 71.0, "laterality": "R", "site": "North"}
    assert header_fields({"PatientSex": "O", "Laterality": "B", "PatientAge": "200Y"}) == {}
    assert header_fields({"Laterality": "l", "PatientBirthDate": "19500101", "StudyDate": "20200601"}) == \
        {"laterality": "L", "age": 70.0}


def _images(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    img = np.full((24, 32), 1000.0)
    img[:6, :8] = 3000
    tags = {"a": dict(PatientID="P1", PatientSex="F", PatientAge="068Y", ImageLaterality="L", InstitutionName="North"),
            "b": dict(PatientID="P1", PatientSex="F", PatientBirthDate="19500601", StudyDate="20200101",
                      ImageLaterality="R", InstitutionName="North"),
            "c": dict(PatientID="P2", PatientSex="M", PatientAge="075Y", Laterality="L", InstitutionName="South"),
            "d": dict(PatientID="P3", PatientSex="F", PatientAge="060Y", InstitutionName="South")}
    for name, t in tags.items():
        write_dicom(src / f"{name}.dcm", img, PhotometricInterpretation="MONOCHROME2", **t)
    return src


def test_import_fills_empty_fields_from_headers_and_keeps_the_csv(tmp_path):
    src = _images(tmp_path)
    assert read_image(src / "a.dcm").header["PatientAge"] == "068Y"
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"file": ["a.dcm", "b.dcm", "c.dcm", "d.dcm"], "t_score": [-3.0, -1.0, -2.8, 0.1],
                  "sex": ["", "", "F", ""]}).to_csv(csv, index=False)   # no subject column; c's sex disagrees
    report = import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds"))
    m = read_manifest(tmp_path / "ds" / "manifest.csv").set_index("image_id")
    assert m["subject_id"].tolist() == ["P1", "P1", "P2", "P3"]        # a and b: one patient, one subject
    assert report.n_subjects == 3 and m.loc["a", "split"] == m.loc["b", "split"]
    assert m["sex"].tolist() == ["F", "F", "F", "F"]                   # c keeps the CSV's F
    assert m["age"].tolist() == [68.0, 69.0, 75.0, 60.0]               # b: 1950-06-01 to 2020-01-01
    assert m["laterality"].tolist()[:3] == ["L", "R", "L"] and pd.isna(m.loc["d", "laterality"])
    assert m["site"].tolist() == ["North", "North", "South", "South"]
    text = " ".join(report.warnings)
    assert "filled from DICOM headers" in text and "subject_id of 4 image(s)" in text and "age of 4" in text
    assert "disagree (the CSV is kept): sex in 1 image(s) (c.dcm)" in text       # names the images

    with pytest.raises(BenchError, match=r"DICOM headers are ignored \(--ignore-dicom-tags\), so 4 image"):
        import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "plain", dicom_tags=False))
    plain = import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "plain", dicom_tags=False,
                                        columns={"subject_id": None}))   # one subject per image, said explicitly
    p = read_manifest(tmp_path / "plain" / "manifest.csv").set_index("image_id")
    assert plain.n_subjects == 4 and p["subject_id"].tolist() == ["a", "b", "c", "d"]
    assert p["age"].isna().all() and p["sex"].fillna("").tolist() == ["", "", "F", ""]


def test_a_subject_column_wins_over_patient_id(tmp_path):
    src = _images(tmp_path)
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"file": ["a.dcm", "b.dcm", "c.dcm", "d.dcm"], "subject": ["s1", "s2", "s3", "s4"],
                  "t_score": [-3.0, -1.0, -2.8, 0.1]}).to_csv(csv, index=False)
    import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds"))
    m = read_manifest(tmp_path / "ds" / "manifest.csv")
    assert m["subject_id"].tolist() == ["s1", "s2", "s3", "s4"]


def test_coco_import_without_csv_takes_subjects_from_patient_id_where_there_is_one(tmp_path):
    from PIL import Image
    from test_coco import CATS, H, W, coco_file, rect

    src = tmp_path / "imgs"
    src.mkdir()
    img = np.full((H, W), 1000.0)
    for name, pid in (("a.dcm", "P1"), ("b.dcm", "P1")):
        write_dicom(src / name, img, PhotometricInterpretation="MONOCHROME2", PatientID=pid)
    Image.fromarray(np.full((H, W), 30000, np.uint16)).save(src / "c.png")
    coco = coco_file(tmp_path / "ann.json", [dict(image_id=i, category_id=1, segmentation=rect(2, 2, 9, 9))
                                             for i in (1, 2, 3)], CATS,
                     images=(("a.dcm", 1), ("b.dcm", 2), ("c.png", 3)))
    report = import_dataset(ImportConfig(images=src, coco=[("alice", coco)], out=tmp_path / "ds"))
    m = read_manifest(tmp_path / "ds" / "manifest.csv").set_index("image_id")
    assert m["subject_id"].to_dict() == {"a": "P1", "b": "P1", "c": "c"} and report.n_subjects == 2


def test_a_both_hands_dicom_is_refused_unless_the_csv_gives_its_side(tmp_path):
    src = _images(tmp_path)
    img = np.full((24, 32), 1000.0)
    write_dicom(src / "e.dcm", img, PhotometricInterpretation="MONOCHROME2", PatientID="P4", ImageLaterality="B")
    write_dicom(src / "f.dcm", img, PhotometricInterpretation="MONOCHROME2", PatientID="P5", ImageLaterality="U")
    csv = tmp_path / "meta.csv"
    table = pd.DataFrame({"file": ["a.dcm", "e.dcm", "f.dcm"], "t_score": [-3.0, -1.0, 0.2]})
    table.to_csv(csv, index=False)
    with pytest.raises(BenchError, match=r"e.dcm: the DICOM header's laterality B means both hands on one image"):
        import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds"))
    report = import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds", skip_bad=True))
    m = read_manifest(tmp_path / "ds" / "manifest.csv").set_index("image_id")
    assert list(m.index) == ["a", "f"] and pd.isna(m.loc["f", "laterality"])        # U: unknown side
    assert [f.split("/")[-1] for f, _ in report.skipped] == ["e.dcm"]
    table.assign(side=["", "R", ""]).to_csv(csv, index=False)                        # the CSV wins
    report = import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds2"))
    assert read_manifest(tmp_path / "ds2" / "manifest.csv").set_index("image_id").loc["e", "laterality"] == "R"
    assert "laterality in 1 image(s) (e.dcm)" in " ".join(report.warnings)
    table.to_csv(csv, index=False)
    import_dataset(ImportConfig(images=src, csv=csv, out=tmp_path / "ds3", dicom_tags=False,
                                columns={"subject_id": None}))                       # tags ignored: no refusal
