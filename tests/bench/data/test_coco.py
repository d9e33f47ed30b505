"""COCO import: class-name mapping, RLE decoding, polygon rasterisation, per-annotator masks."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench import BenchError
from bench.cli import main
from bench.data.check import check_dataset
from bench.data.coco import load_coco
from bench.data.coco_classes import default_class, load_class_map
from bench.data.coco_raster import Shape, decode_rle, decode_rle_string, rasterise
from bench.data.format import BONES, Dataset
from bench.data.importers import ImportConfig, import_dataset

H, W = 40, 50


@pytest.mark.parametrize("name, expected", [
    ("ulna", "ulna"), ("Distal Radius", "radius"), ("left ulna", "ulna"), ("radius bone", "radius"),
    ("metacarpal 1", "M1"), ("1st metacarpal", "M1"), ("first metacarpal", "M1"), ("MC1", "M1"),
    ("M1", "M1"), ("metacarpal I", "M1"), ("thumb metacarpal", "M1"), ("metacarpal of the thumb", "M1"),
    ("2nd Metacarpal Bone", "M2"), ("index metacarpal", "M2"), ("mc_3", "M3"), ("Metacarpal-III", "M3"),
    ("Metacarpal4", "M4"), ("ring finger metacarpal", "M4"), ("M 5", "M5"), ("fifth metacarpal", "M5"),
    ("little finger metacarpal", "M5"), ("Metacarpal-V", "M5"),
    ("scaphoid", "background"), ("proximal phalanx 2", "background"), ("Carpals", "background"),
    ("hamate", "background"), ("background", "background"),
    ("metacarpals", None), ("mcp", None), ("M6", None), ("metacarpal 6", None), ("bone", None),
])
def test_default_class_names(name, expected):
    want = None if expected is None else 0 if expected == "background" else BONES[expected]
    assert default_class(name) == want


def test_class_map_file(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("Thing-A: ulna\nbone b: 2\nThing C: metacarpal 3\njunk: null\nother: background\n")
    assert load_class_map(path) == {"thing a": 1, "b": 2, "thing c": 5, "junk": 0, "other": 0}
    path.write_text("x: femur\n")
    with pytest.raises(BenchError, match="'femur', which is not a class"):
        load_class_map(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(BenchError, match="must be a mapping"):
        load_class_map(path)


def test_rle_decoding_hand_computed():
    # pycocotools string code: 5-bit groups + 48, continuation bit 0x20, sign bit 0x10,
    # runs from the 4th on stored as differences to the run two before.
    assert decode_rle_string("351") == [3, 5, 1]
    assert decode_rle_string("351M") == [3, 5, 1, 2]       # 'M' = 29 -> -3; 5 + (-3) = 2
    assert decode_rle_string("X1") == [40]                 # 'X' = 40: low bits 8 + more; '1' -> 1*32
    # Column-major runs starting with background: size 2x3, runs [1, 2, 3]
    mask = decode_rle({"size": [2, 3], "counts": [1, 2, 3]})
    assert mask.tolist() == [[False, True, False], [True, False, False]]
    assert np.array_equal(decode_rle({"size": [2, 3], "counts": "123"}), mask)
    with pytest.raises(BenchError, match="needs 6"):
        decode_rle({"size": [2, 3], "counts": [1, 2]})


def test_rasterise_follows_coco_pixel_convention():
    # A 10 x 10 square from x=2..12, y=3..13 covers exactly pixels cols 2..11, rows 3..12.
    sq = Shape(class_id=4, polygons=[np.array([[2, 3], [12, 3], [12, 13], [2, 13]], float)], area=100)
    out = rasterise([sq], H, W)
    expected = np.zeros((H, W), np.uint8)
    expected[3:13, 2:12] = 4
    assert np.array_equal(out, expected)
    # A triangle: pixel count equals the shoelace area up to the boundary (< 0.5 px per unit length).
    tri = np.array([[5.3, 2.7], [45.2, 10.1], [20.5, 37.9]])
    area = 0.5 * abs(np.dot(tri[:, 0], np.roll(tri[:, 1], 1)) - np.dot(tri[:, 1], np.roll(tri[:, 0], 1)))
    perimeter = np.linalg.norm(tri - np.roll(tri, 1, axis=0), axis=1).sum()
    count = (rasterise([Shape(1, polygons=[tri], area=area)], H, W) == 1).sum()
    assert abs(count - area) < 0.5 * perimeter
    # Overlap: the smaller shape is painted last and stays visible whatever the order given.
    big = Shape(2, polygons=[np.array([[0, 0], [30, 0], [30, 30], [0, 30]], float)], area=900, order=1)
    small = Shape(3, polygons=[np.array([[5, 5], [10, 5], [10, 10], [5, 10]], float)], area=25, order=0)
    out = rasterise([small, big], H, W)
    assert (out[5:10, 5:10] == 3).all() and (out[15:30, 15:30] == 2).all()


def test_fill_polygon_matches_matplotlib_point_in_polygon():
    from matplotlib.path import Path as MplPath

    rng = np.random.default_rng(np.random.SeedSequence([11]))
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    centres = np.stack([jj.ravel() + 0.5, ii.ravel() + 0.5], axis=1)
    for _ in range(5):  # random star-shaped polygons with fractional vertices, partly off-image
        angles = np.sort(rng.uniform(0, 2 * np.pi, 17))
        radii = rng.uniform(5, 25, 17)
        poly = np.stack([25 + radii * np.cos(angles), 20 + radii * np.sin(angles)], axis=1)
        out = rasterise([Shape(6, polygons=[poly], area=1.0)], H, W)
        ref = MplPath(poly).contains_points(centres).reshape(H, W)
        assert np.array_equal(out == 6, ref)


def coco_file(path, anns, categories, images=(("a.png", 1), ("b.png", 2))):
    data = {"images": [{"id": i, "file_name": f, "width": W, "height": H} for f, i in images],
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)],
            "annotations": [dict(id=k + 1, iscrowd=0, **a) for k, a in enumerate(anns)]}
    path.write_text(json.dumps(data))
    return path


def rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


@pytest.fixture()
def images(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((H, W), 30000, np.uint16)).save(src / name)
    return src


CATS = ["Ulna", "Distal radius", "1st metacarpal", "scaphoid"]


def test_two_annotator_files_to_masks(images, tmp_path):
    a = coco_file(tmp_path / "alice.json", [
        dict(image_id=1, category_id=1, segmentation=rect(2, 20, 10, 40)),
        dict(image_id=1, category_id=2, segmentation=rect(12, 20, 24, 40)),
        dict(image_id=1, category_id=4, segmentation=rect(0, 0, 5, 5)),      # background: ignored
        dict(image_id=2, category_id=3, segmentation={"size": [H, W], "counts": [H * 3, 5, H * W - H * 3 - 5]}),
    ], CATS)
    b = coco_file(tmp_path / "bob.json", [
        dict(image_id=7, category_id=1, segmentation=rect(3, 21, 10, 40)),
    ], CATS, images=(("a.png", 7),))
    report = import_dataset(ImportConfig(images=images, out=tmp_path / "ds", coco=[(None, a), ("Bob", b)]))
    assert report.n_images == 2 and report.n_masks == 3
    assert any("scaphoid" in w for w in report.warnings)
    ds = Dataset.open(tmp_path / "ds")
    assert ds.image_ids == ["a", "b"] and list(ds.manifest["subject_id"]) == ["a", "b"]
    masks = ds.masks("a")
    assert sorted(masks) == ["Bob", "alice"] and ds.annotator_weights("a") == {"Bob": 0.5, "alice": 0.5}
    exp = np.zeros((H, W), np.uint8)
    exp[20:40, 2:10] = BONES["ulna"]
    exp[20:40, 12:24] = BONES["radius"]
    assert np.array_equal(masks["alice"], exp)
    assert (masks["Bob"] == BONES["ulna"]).sum() == 7 * 19
    # RLE: column-major, first 3 columns background, then 5 pixels of column 3 are M1
    mb = ds.masks("b")["alice"]
    assert mb[:5, 3].tolist() == [BONES["M1"]] * 5 and (mb > 0).sum() == 5
    assert ds.annotator_weights("b") == {"alice": 1.0}
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["classes"] == {"1st metacarpal": 3, "Distal radius": 2, "Ulna": 1}
    assert check_dataset(tmp_path / "ds") == []


def test_annotator_attribute_weights_and_csv(images, tmp_path):
    one = coco_file(tmp_path / "export.json", [
        dict(image_id=1, category_id=1, segmentation=rect(2, 20, 10, 40), attributes={"annotator": "r1"}),
        dict(image_id=1, category_id=1, segmentation=rect(2, 22, 10, 40), attributes={"annotator": "r2"}),
        dict(image_id=1, category_id=2, segmentation=rect(12, 20, 24, 40), attributes={"annotator": "r2"}),
    ], CATS)
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"image": ["a.png", "c.png"], "subject_id": ["p1", "p1"], "t_score": [-3, -3],
                  "sex": ["F", "F"], "age": [70, 70]}).to_csv(csv, index=False)
    import_dataset(ImportConfig(images=images, out=tmp_path / "ds", csv=csv, coco=[(None, one)],
                                weights={"r1": 3, "r2": 1}))
    ds = Dataset.open(tmp_path / "ds")
    assert ds.image_ids == ["a", "c"] and ds.annotator_weights("a") == {"r1": 0.75, "r2": 0.25}
    assert ds.annotator_weights("c") == {}                     # in the CSV, no annotations
    assert sorted(np.unique(ds.masks("a")["r2"]).tolist()) == [0, 1, 2]
    assert list(ds.manifest["label"]) == [1, 1]
    with pytest.raises(BenchError, match="no weight given for annotator"):
        import_dataset(ImportConfig(images=images, out=tmp_path / "d2", coco=[(None, one)],
                                    weights={"r1": 1}))


def test_unknown_classes_listed_in_one_error_then_mapped(images, tmp_path):
    anns = [dict(image_id=1, category_id=k, segmentation=rect(2, 2, 8, 8)) for k in (1, 2)]
    anns.append(dict(image_id=1, category_id=3, segmentation=rect(10, 10, 14, 14)))
    f = coco_file(tmp_path / "x.json", anns, ["Bone A", "Bone B", "ulna"])
    with pytest.raises(BenchError) as err:
        import_dataset(ImportConfig(images=images, out=tmp_path / "ds", coco=[(None, f)]))
    assert "'Bone A' (1 annotations), 'Bone B' (1 annotations)" in str(err.value)
    assert "--class-map" in str(err.value) and not (tmp_path / "ds").exists()
    cmap = tmp_path / "map.yaml"
    cmap.write_text("Bone A: M2\nBone B: null\n")
    assert main(["data", "import", "--coco", str(f), "--images", str(images), "--out",
                 str(tmp_path / "ds"), "--class-map", str(cmap)]) == 0
    mask = Dataset.open(tmp_path / "ds").masks("a")["x"]
    exp = np.zeros((H, W), np.uint8)
    exp[2:8, 2:8] = BONES["M2"]          # 'Bone B' mapped to null: ignored
    exp[10:14, 10:14] = BONES["ulna"]
    assert np.array_equal(mask, exp)


def test_size_mismatch_and_bad_coco(images, tmp_path):
    f = coco_file(tmp_path / "x.json", [dict(image_id=1, category_id=1, segmentation=rect(2, 2, 8, 8))],
                  CATS)
    data = json.loads(f.read_text())
    data["images"][0]["width"] = W + 1
    f.write_text(json.dumps(data))
    with pytest.raises(BenchError, match=r"a.png.*COCO annotations are for 51x40"):
        import_dataset(ImportConfig(images=images, out=tmp_path / "ds", coco=[(None, f)]))
    report = import_dataset(ImportConfig(images=images, out=tmp_path / "ds", coco=[(None, f)],
                                         skip_bad=True))
    assert report.n_images == 1 and len(report.skipped) == 1
    (tmp_path / "y.json").write_text("{not json")
    with pytest.raises(BenchError, match="cannot read COCO file"):
        load_coco([(None, tmp_path / "y.json")])
    with pytest.raises(BenchError, match="both default to annotator 'x'"):
        load_coco([(None, f), (None, f)])


def test_one_image_named_differently_in_two_files_is_one_image(images, tmp_path):
    a = coco_file(tmp_path / "alice.json", [dict(image_id=1, category_id=1, segmentation=rect(2, 20, 10, 40)),
                                            dict(image_id=2, category_id=2, segmentation=rect(5, 5, 9, 9))],
                  CATS, images=(("imgs/a.png", 1), ("b.png", 2)))
    b = coco_file(tmp_path / "bob.json", [dict(image_id=4, category_id=2, segmentation=rect(12, 20, 24, 40))],
                  CATS, images=(("/data/export/a.png", 4),))
    exp_alice, exp_bob = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    exp_alice[20:40, 2:10] = BONES["ulna"]
    exp_bob[20:40, 12:24] = BONES["radius"]
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"image": ["a.png", "b.png"], "subject_id": ["p1", "p2"], "t_score": [-3, 0]}).to_csv(csv, index=False)
    for out, with_csv in (("coco-only", None), ("with-csv", csv)):
        report = import_dataset(ImportConfig(images=images, out=tmp_path / out, csv=with_csv,
                                             coco=[(None, a), (None, b)]))
        ds = Dataset.open(tmp_path / out)
        assert ds.image_ids == ["a", "b"] and report.n_masks == 3          # one manifest row per image
        masks = ds.masks("a")
        assert sorted(masks) == ["alice", "bob"]                            # both annotators on the one image
        assert np.array_equal(masks["alice"], exp_alice) and np.array_equal(masks["bob"], exp_bob)
        assert ds.annotator_weights("a") == {"alice": 0.5, "bob": 0.5}
        assert check_dataset(tmp_path / out) == []


def _one_annotation(tmp_path, segmentation, name="x.json"):
    return coco_file(tmp_path / name, [dict(image_id=1, category_id=1, segmentation=rect(2, 2, 8, 8)),
                                       dict(image_id=2, category_id=2, segmentation=segmentation)], CATS)


@pytest.mark.parametrize("segmentation, problem", [
    ([[1, 2, 3, "x", 5, 6]], r"polygon \[1, 2, 3, .x., 5, 6\] has a coordinate that is not a number"),
    ({"size": [H, W], "counts": [1, 2, 3]}, "bad RLE segmentation: RLE counts add up to 6 pixels"),
    ({"size": [H, W], "counts": "not an rle \u00e9"}, "bad RLE segmentation"),
    ({"size": [W, H], "counts": [H * W]}, f"the RLE mask is {W}x{H} .size .h, w.. but the image is {H}x{W}"),
])
def test_bad_geometry_names_file_image_and_annotation(images, tmp_path, capsys, segmentation, problem):
    f = _one_annotation(tmp_path, segmentation)
    with pytest.raises(BenchError, match=rf"x.json, image b.png, annotation 2: {problem}"):
        load_coco([(None, f)])
    assert main(["data", "import", str(images), "--coco", str(f), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "annotation 2" in err and "Traceback" not in err and not (tmp_path / "ds").exists()


def test_coco_options_without_coco_are_refused(images, tmp_path, capsys):
    (tmp_path / "meta.csv").write_text("file,subject,label\n")
    for extra, named in ((["--class-map", str(tmp_path / "map.yaml")], "--class-map"), (["--weight", "a=2"], "--weight")):
        assert main(["data", "import", str(images), "--csv", str(tmp_path / "meta.csv"), "--out",
                     str(tmp_path / "ds"), *extra]) == 2
        err = capsys.readouterr().err
        assert f"{named} belong to a COCO import" in err and "Traceback" not in err
    assert not (tmp_path / "ds").exists()


def test_coco_file_with_a_byte_order_mark(images, tmp_path):
    f = _one_annotation(tmp_path, rect(5, 5, 9, 9))
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    coco = load_coco([(None, f)])
    assert sorted(coco.images) == ["a.png", "b.png"]
    assert len(coco.images["b.png"].shapes["x"]) == 1


def test_a_string_segmentation_is_an_error_naming_the_annotation(images, tmp_path, capsys):
    f = _one_annotation(tmp_path, "abc")
    with pytest.raises(BenchError, match=r"x.json, image b.png, annotation 2: segmentation is str 'abc'; "
                                         r"expected a list of polygons"):
        load_coco([(None, f)])
    assert main(["data", "import", str(images), "--coco", str(f), "--out", str(tmp_path / "ds")]) == 2
    assert "Traceback" not in capsys.readouterr().err and not (tmp_path / "ds").exists()


def test_polygons_outside_the_image_and_unannotated_images_are_warned_once(images, tmp_path):
    far = rect(W + 5, 2, W + 9, 8)                                     # right of the image
    anns = [dict(image_id=1, category_id=1, segmentation=rect(2, 2, 8, 8) + far),   # one polygon of two
            *[dict(image_id=2, category_id=2, segmentation=rect(-9, y, -1, y + 3)) for y in range(0, 30, 5)]]
    f = coco_file(tmp_path / "x.json", anns, CATS, images=(("a.png", 1), ("b.png", 2), ("c.png", 3)))
    coco = load_coco([(None, f)])
    outside = [w for w in coco.warnings if w.startswith("ignored the polygon")]
    assert len(outside) == 1 and outside[0].startswith("ignored the polygon(s) of 7 annotation(s) lying entirely")
    assert f"{f}, image a.png, annotation 1; {f}, image b.png, annotation 2;" in outside[0]
    assert "annotation 5" in outside[0] and "annotation 6" not in outside[0] and "and 2 more" in outside[0]
    exp = np.zeros((H, W), np.uint8)
    exp[2:8, 2:8] = BONES["ulna"]
    assert np.array_equal(rasterise(coco.images["a.png"].shapes["x"], H, W), exp)
    assert coco.images["b.png"].shapes == {}                           # nothing left to paint
    bare = [w for w in coco.warnings if "have no bone annotation" in w]
    assert len(bare) == 1 and bare[0].startswith("2 image(s)")
    assert f"{f}, image b.png; {f}, image c.png" in bare[0]


def test_unicode_and_punctuated_annotator_names_stay_distinct(images, tmp_path):
    two = coco_file(tmp_path / "export.json", [
        dict(image_id=1, category_id=1, segmentation=rect(2, 20, 10, 40), attributes={"annotator": "김민수"}),
        dict(image_id=1, category_id=2, segmentation=rect(12, 20, 24, 40), attributes={"annotator": "이영희"}),
        dict(image_id=1, category_id=3, segmentation=rect(30, 5, 40, 15), attributes={"annotator": "Dr. Kim"}),
    ], CATS, images=(("a.png", 1),))
    report = import_dataset(ImportConfig(images=images, out=tmp_path / "ds", coco=[(None, two)],
                                         weights={"김민수": 1, "이영희": 1, "Dr. Kim": 2}))
    ds = Dataset.open(tmp_path / "ds")
    masks = ds.masks("a")
    assert sorted(masks) == sorted(["김민수", "이영희", "Dr._Kim"]) and report.n_masks == 3   # three people, three masks
    assert np.unique(masks["김민수"]).tolist() == [0, BONES["ulna"]]
    assert np.unique(masks["이영희"]).tolist() == [0, BONES["radius"]]
    assert ds.annotator_weights("a") == {"김민수": 0.25, "이영희": 0.25, "Dr._Kim": 0.5}   # --weight by the given name
    assert any("'Dr. Kim' -> 'Dr._Kim'" in w for w in report.warnings)
    assert check_dataset(tmp_path / "ds") == []


def test_files_named_by_the_user_are_their_annotators(images, tmp_path):
    a = coco_file(tmp_path / "a.json", [dict(image_id=1, category_id=1, segmentation=rect(2, 20, 10, 40))], CATS)
    b = coco_file(tmp_path / "b.json", [dict(image_id=1, category_id=2, segmentation=rect(12, 20, 24, 40))], CATS)
    coco = load_coco([("김민수", a), ("이영희", b)])
    assert sorted(coco.images["a.png"].shapes) == sorted(["김민수", "이영희"])


@pytest.mark.parametrize("first, second", [("a/b", "a b"), ("Alice", "alice"), ("../x", "x")])
def test_different_names_sharing_a_file_name_are_an_error_naming_both(images, tmp_path, first, second):
    one = coco_file(tmp_path / "one.json", [
        dict(image_id=1, category_id=1, segmentation=rect(2, 20, 10, 40), attributes={"annotator": first}),
        dict(image_id=1, category_id=2, segmentation=rect(12, 20, 24, 40), attributes={"annotator": second}),
    ], CATS)
    with pytest.raises(BenchError) as err:
        import_dataset(ImportConfig(images=images, out=tmp_path / "ds", coco=[(None, one)]))
    assert repr(first) in str(err.value) and repr(second) in str(err.value) and "merge" in str(err.value)
    assert not (tmp_path / "ds").exists()
    a = coco_file(tmp_path / "a.json", [dict(image_id=1, category_id=1, segmentation=rect(2, 2, 8, 8))], CATS)
    b = coco_file(tmp_path / "b.json", [dict(image_id=1, category_id=1, segmentation=rect(2, 2, 8, 8))], CATS)
    with pytest.raises(BenchError) as err:
        load_coco([(first, a), (second, b)])
    text = str(err.value)
    assert f"--coco {first}={a}" in text and f"--coco {second}={b}" in text and "default" not in text
    with pytest.raises(BenchError, match="is named 'x' and .* is named 'x'") as err:
        load_coco([("x", a), ("x", b)])
    assert "default" not in str(err.value)


@pytest.mark.parametrize("name", ["../../etc/passwd", "a\\b", ".hidden", "tab\there", "nul\x00x", "..", "/"])
def test_safe_annotator_is_one_plain_file_name(name):
    from pathlib import Path

    from bench.data.coco import safe_annotator

    safe = safe_annotator(name)
    assert safe and Path(safe).name == safe and not safe.startswith(".")
    assert not any(c in safe for c in "/\\") and all(c.isprintable() for c in safe)
    assert safe_annotator("김민수") == "김민수" and safe_annotator("Jo\u0302e") == "Jôe"   # letters kept, NFC
