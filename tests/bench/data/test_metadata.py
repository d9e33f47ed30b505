"""bench.data.metadata: number spellings, laterality values and file matching of the import CSV."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import BenchError
from bench.data.metadata import ImageIndex, read_metadata


@pytest.fixture()
def src(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(folder / name)
    return folder


def _read(tmp_path, src, **columns):
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"image": ["a.png", "b.png", "c.png"], **columns}).to_csv(csv, index=False)
    return read_metadata(csv, ImageIndex(src), {"subject_id": None}).rows.set_index("image_id")


def test_a_unicode_minus_or_en_dash_starting_a_number_is_a_minus(tmp_path, src):
    rows = _read(tmp_path, src, t_score=["\u22122.7", "\u20133.1", "-1.0"])
    assert rows["t_score"].tolist() == [-2.7, -3.1, -1.0] and rows["label"].tolist() == [1, 1, 0]
    with pytest.raises(BenchError, match=r"(?s)t_score '2\u22127' is not a number.*t_score '\u2013' is not a number"):
        _read(tmp_path, src, t_score=["2\u22127", "\u2013", "1"])                 # only a leading sign


def test_laterality_u_is_unknown_and_b_is_refused(tmp_path, src):
    rows = _read(tmp_path, src, side=["U", "unpaired", "left"])
    assert rows["laterality"].tolist() == ["", "", "L"]
    with pytest.raises(BenchError, match=r"row 3: laterality 'B' means both hands on one image, which cannot "
                                         r"be cut into one hand's bones; save each hand as its own file"):
        _read(tmp_path, src, side=["L", "B", "R"])


def test_file_references_ignore_case_only_when_that_finds_one_file(tmp_path, src):
    (src / "sub").mkdir()
    (src / "sub" / "Probe").touch()
    if (src / "sub" / "probe").exists():
        pytest.skip("needs a case-sensitive file system (two names differing only in case)")
    (src / "sub" / "Probe").unlink()
    for name in ("IMG_001.png", "sub/Scan.PNG", "sub/scan.png", "x.png", "X.png"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(src / name)
    index = ImageIndex(src)
    assert index.find("img_001.PNG") == "IMG_001.png" and index.find("IMG_001") == "IMG_001.png"
    assert index.find("A.PNG") == "a.png" and index.find("raw/B.png") == "b.png"
    assert index.find("x.png") == "x.png" and index.find("X.png") == "X.png"       # exact case wins
    assert index.find("sub/Scan.PNG") == "sub/Scan.PNG" and index.find("nothing.png") is None
    with pytest.raises(BenchError, match=r"'SCAN.png' matches no file exactly and several when case is ignored "
                                         r"\(sub/Scan.PNG, sub/scan.png\); name the file with its exact case"):
        index.find("SCAN.png")
    rows = _read(tmp_path, src, **{"image": ["A.PNG", "b", "C.Png"], "t_score": ["-3", "0", "-1"]})
    assert list(rows.index) == ["a", "b", "c"] and rows["file"].tolist() == ["a.png", "b.png", "c.png"]


CSV_TEXT = "image,subject,T-score,site\na.png,p1,-3.1,Séoul\nb.png,p2,-1.0,Séoul\nc.png,p3,-2.6,Séoul\n"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig", "utf-32"])
def test_a_csv_whose_byte_order_mark_names_its_encoding_is_read(tmp_path, src, encoding):
    csv = tmp_path / "meta.csv"
    csv.write_bytes(CSV_TEXT.encode(encoding))           # Excel's 'Unicode Text' is UTF-16 with a BOM
    rows = read_metadata(csv, ImageIndex(src), {}).rows
    assert rows["subject_id"].tolist() == ["p1", "p2", "p3"] and rows["label"].tolist() == [1, 0, 1]
    assert rows["site"].tolist() == ["Séoul"] * 3


@pytest.mark.parametrize("encoding, says", [("latin-1", "not UTF-8 text"), ("utf-16-le", "UTF-16")])
def test_a_csv_in_another_encoding_is_refused_with_advice(tmp_path, src, encoding, says):
    csv = tmp_path / "meta.csv"
    csv.write_bytes(CSV_TEXT.encode(encoding))           # no byte-order mark: cannot be told safely
    with pytest.raises(BenchError, match=says) as err:
        read_metadata(csv, ImageIndex(src), {})
    assert "save it as UTF-8" in str(err.value) and str(csv) in str(err.value)


def test_rows_of_delimiters_only_are_skipped(tmp_path, src):
    csv = tmp_path / "meta.csv"
    csv.write_text("image;subject;t\na.png;p1;-3,1\n;;\nb.png;p2;-1\n;;\n ; ;\n")  # Excel trailers
    rows = read_metadata(csv, ImageIndex(src), {}).rows
    assert rows["image_id"].tolist() == ["a", "b"] and rows["t_score"].tolist() == [-3.1, -1.0]
    csv.write_text("image,subject,t\na.png,p1,-3\n,p2,-1\n")          # a row with data but no image: still an error
    with pytest.raises(BenchError, match="row 3: empty image reference"):
        read_metadata(csv, ImageIndex(src), {})


def test_two_files_deriving_one_image_id_are_named(tmp_path, src):
    (src / "a").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "a" / "x.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "a_x.png")
    csv = tmp_path / "meta.csv"
    csv.write_text("file,subject,t\na/x.png,s1,-3\na_x.png,s2,-1\n")
    with pytest.raises(BenchError, match=r"different files give the same image id .*a/x.png, a_x.png -> 'a_x'") as err:
        read_metadata(csv, ImageIndex(src), {})
    assert "more than once" not in str(err.value)
    csv.write_text("file,subject,t\na.png,s1,-3\nA.PNG,s1,-3\n")        # one file listed twice: as before
    with pytest.raises(BenchError, match="lists image.s. a more than once"):
        read_metadata(csv, ImageIndex(src), {})
