"""`bench data show`: summary tables against independent pandas counts, overlays, outputs, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from bench.cli import main
from bench.data.format import BONES, Dataset, mask_path, write_manifest
from bench.data.imageio import write_label_map, write_png16
from bench.data.show import downsample, render_tile, show, zoom_box
from bench.data.summary import AGE_GROUPS, age_group, summary_tables
from bench.errors import BenchError

H, W = 120, 80
PAPER_AGE_GROUPS = ["10–19", "20–29", "30–39", "40–49", "50–59", "60–69", "70–79", "80–89", "90–99"]

# image_id, subject, split, sex, age, label, site, annotators, bones left out of every mask
ROWS = [
    ("i0", "s0", "train", "F", 63.0, 1, "A", ("a", "b", "c"), ()),
    ("i1", "s0", "train", "F", 64.0, 0, "B", ("a", "b", "c"), ()),    # s0: label = max = 1
    ("i2", "s1", "train", "M", 19.9, 0, "A", ("a", "b"), ("M5",)),
    ("i3", "s2", "val", "female", 20.0, 0, "A", ("a", "b", "c"), ()),
    ("i4", "s3", "test", "F", 99.5, 1, "B", ("a",), ("M1", "ulna")),
    ("i5", "s4", "train", "M", 55.0, 1, "A", ("a", "b", "c"), ()),
    ("i6", "s5", "val", "", 71.0, None, "B", (), ()),                # no masks, no label, no sex
    ("i7", "s6", "test", "F", None, 0, "A", ("a", "b", "c"), ()),
    ("i8", "s6", "test", "F", None, 0, "A", ("a", "b", "c"), ()),
]


def truth_mask() -> np.ndarray:
    """Seven rectangles: ulna, radius at the bottom, M1-M5 as vertical bars."""
    m = np.zeros((H, W), np.uint8)
    m[85:118, 10:24] = BONES["ulna"]
    m[85:118, 30:50] = BONES["radius"]
    for k in range(5):
        m[20:70, 6 + 14 * k:14 + 14 * k] = BONES[f"M{k + 1}"]
    return m


def annotate(mask: np.ndarray, annotator: str) -> np.ndarray:
    """Annotator styles: a exact, b one pixel dilated per class, c shifted one pixel right."""
    if annotator == "b":
        out = np.zeros_like(mask)
        for cid in BONES.values():
            out[ndimage.binary_dilation(mask == cid) & (out == 0)] = cid
        return out
    if annotator == "c":
        return np.roll(mask, 1, axis=1)
    return mask.copy()


def build(root: Path, labelled: bool = True) -> Path:
    (root / "images").mkdir(parents=True)
    rows, ann = [], []
    rng = np.random.default_rng(np.random.SeedSequence([7]))
    for image_id, subject, split, sex, age, label, site, annotators, drop in ROWS:
        truth = truth_mask()
        for bone in drop:
            truth[truth == BONES[bone]] = 0
        image = 0.25 + 0.5 * (truth > 0) + 0.03 * rng.standard_normal((H, W))
        write_png16(root / "images" / f"{image_id}.png", image)
        for a in annotators:
            mask_path(root, image_id, a).parent.mkdir(parents=True, exist_ok=True)
            write_label_map(mask_path(root, image_id, a), annotate(truth, a))
            ann.append((image_id, a, 1.0 / len(annotators)))
        rows.append(dict(image_id=image_id, subject_id=subject, path=f"images/{image_id}.png",
                         split=split, sex=sex or None, age=age,
                         t_score=(-3.0 if label else -1.0) if labelled and label is not None else None,
                         label=label if labelled else None, laterality="L", pixel_spacing_mm=0.1,
                         site=site))
    write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    pd.DataFrame(ann, columns=["image_id", "annotator", "weight"]).to_csv(root / "annotators.csv", index=False)
    return root


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return build(tmp_path_factory.mktemp("labelled") / "ds")


def independent_subjects(root: Path) -> pd.DataFrame:
    """Per-subject sex/age/label straight from the CSV, without bench code."""
    m = pd.read_csv(root / "manifest.csv", dtype=str)
    m["age"] = pd.to_numeric(m["age"])
    m["label"] = pd.to_numeric(m["label"])
    g = m.groupby("subject_id")
    sex = g["sex"].first().str.upper().str[0].map({"M": "Male", "F": "Female"}).fillna("Unknown")
    return pd.DataFrame({"sex": sex, "age": g["age"].first(), "label": g["label"].max()})


def test_sex_table_equals_crosstab(labelled):
    tables = summary_tables(Dataset.open(labelled))
    s = independent_subjects(labelled)
    ref = pd.crosstab(s["sex"], s["label"].map({0: "Normal", 1: "Osteoporotic"}).fillna("Unlabeled"))
    t = tables["sex"]
    assert list(t.index) == ["Male", "Female", "Unknown"]
    assert list(t.columns) == ["Normal", "Osteoporotic", "Unlabeled", "Total"]
    for sex in ref.index:
        for col in ref.columns:
            assert t.loc[sex, col] == ref.loc[sex, col]
    # hand count: Male s1 normal, s4 osteoporotic; Female s0 OP (max), s2 N, s3 OP, s6 N; s5 unknown
    assert t.loc["Male"].tolist() == [1, 1, 0, 2]
    assert t.loc["Female"].tolist() == [2, 2, 0, 4]
    assert t.loc["Unknown"].tolist() == [0, 0, 1, 1]
    assert t["Total"].sum() == s.shape[0] == 7


def test_age_table_uses_paper_bins_and_equals_crosstab(labelled):
    t = summary_tables(Dataset.open(labelled))["age"]
    assert list(AGE_GROUPS) == PAPER_AGE_GROUPS
    assert list(t.index[:9]) == PAPER_AGE_GROUPS and list(t.index[9:]) == ["Unknown"]
    s = independent_subjects(labelled)
    bins = pd.cut(s["age"], bins=list(range(10, 110, 10)), right=False, labels=PAPER_AGE_GROUPS)
    ref = pd.crosstab(bins, s["label"]).reindex(PAPER_AGE_GROUPS, fill_value=0)
    assert t.loc[PAPER_AGE_GROUPS, "Normal"].tolist() == ref[0.0].tolist()
    assert t.loc[PAPER_AGE_GROUPS, "Osteoporotic"].tolist() == ref[1.0].tolist()
    assert t.loc["10–19", "Normal"] == 1 and t.loc["20–29", "Normal"] == 1   # 19.9 and 20.0
    assert t.loc["90–99", "Osteoporotic"] == 1 and t.loc["Unknown", "Total"] == 1
    assert [age_group(a) for a in (9.99, 10, 19.99, 20, 99.9, 100, float("nan"))] == \
        ["<10", "10–19", "10–19", "20–29", "90–99", "≥100", "Unknown"]


def test_split_site_bones_annotator_tables(labelled):
    tables = summary_tables(Dataset.open(labelled))
    m = pd.read_csv(labelled / "manifest.csv", dtype=str)
    split = tables["split"]
    assert list(split.index) == ["train", "val", "test"]
    assert split["Images"].to_dict() == m["split"].value_counts().to_dict()
    assert split["Subjects"].to_dict() == m.groupby("split")["subject_id"].nunique().to_dict()
    assert split.loc["train", "Normal subj."] == 1 and split.loc["train", "Osteoporotic subj."] == 2
    site = tables["site"]
    assert site["Images"].to_dict() == m["site"].value_counts().to_dict()
    assert site["Subjects"].to_dict() == m.groupby("site")["subject_id"].nunique().to_dict()
    bones = tables["bones"]["Images"]
    assert bones["7"] == 6 and bones["6"] == 1 and bones["5"] == 1 and bones["no masks"] == 1
    assert bones.sum() == len(m)
    missing = tables["missing_bones"]["Images missing it"]
    assert missing.to_dict() == {"ulna": 1, "radius": 0, "M1": 1, "M2": 0, "M3": 0, "M4": 0, "M5": 1}
    ann = pd.read_csv(labelled / "annotators.csv")
    per_image = ann.groupby("image_id").size().reindex(m["image_id"], fill_value=0)
    assert tables["annotators"]["Images"].to_dict() == per_image.value_counts().to_dict()


def test_overlay_differs_exactly_along_mask_contours(labelled):
    ds = Dataset.open(labelled)
    image, masks = ds.image("i0"), ds.masks("i0")
    plain, overlay = render_tile(image, {}), render_tile(image, masks)
    assert plain.shape == overlay.shape == (H, W, 3)
    assert np.all(plain[..., 0] == plain[..., 1])          # the radiograph alone is grey
    changed = np.any(plain != overlay, axis=-1)
    edges = np.zeros((H, W), bool)
    for m in masks.values():
        for cid in BONES.values():
            region = m == cid
            edges |= region ^ ndimage.binary_erosion(region)
    near = ndimage.binary_dilation(edges, iterations=2)
    assert changed[edges].mean() > 0.9                     # contours are drawn on the boundaries
    assert not changed[~near].any()                        # and nowhere else
    colour = overlay[changed].astype(int)
    assert np.mean(np.ptp(colour, axis=1) > 40) > 0.5      # in colour, not grey


def test_downsample_block_mean_and_centre_labels():
    img = np.arange(1200 * 800, dtype=np.float32).reshape(1200, 800) / 1e6
    lab = (np.arange(1200)[:, None] // 100 % 8 * np.ones((1, 800))).astype(np.uint8)
    small, masks, f = downsample(img, {"a": lab}, max_px=512)
    assert f == 3 and small.shape == (400, 266) and masks["a"].shape == (400, 266)
    assert small[1, 2] == pytest.approx(img[3:6, 6:9].mean())
    assert masks["a"][1, 2] == lab[4, 7]
    with pytest.raises(BenchError, match="shape"):
        downsample(img, {"a": lab[:-1]}, max_px=512)


def test_zoom_box_holds_every_label_at_the_image_aspect():
    shape = (400, 300)
    a, b = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    a[200:260, 100:120] = 3
    b[240:300, 150:160] = 1                               # the box must cover both annotators
    r0, r1, c0, c1 = zoom_box({"a": a, "b": b}, shape, margin=0.05)
    assert 0 <= r0 <= 200 - 20 and 300 + 20 <= r1 <= 400 and 0 <= c0 <= 100 - 15 and 160 + 15 <= c1 <= 300
    assert (r1 - r0) / (c1 - c0) == pytest.approx(400 / 300, rel=0.02)
    edge = np.zeros(shape, np.uint8)
    edge[390:400, 0:5] = 2                                # near a corner: shifted inside, not cut
    r0, r1, c0, c1 = zoom_box({"a": edge}, shape, margin=0.05)
    assert r1 == 400 and c0 == 0 and r0 >= 0 and c1 <= 300
    assert zoom_box({"a": np.zeros(shape, np.uint8)}, shape) == (0, 400, 0, 300)


def test_smoke_phantom_summary_matches_its_manifest(tmp_path):
    phantom = pytest.importorskip("bench.data.phantom")
    if not hasattr(phantom, "synthesize"):
        pytest.skip("phantom generator not available yet")
    root = phantom.synthesize(tmp_path / "ph", preset="clinical", profile="smoke", seed=0)
    paths = show(root, n=4)
    m = pd.read_csv(Path(root) / "manifest.csv")
    tables = summary_tables(Dataset.open(root))
    subjects = m.groupby("subject_id").agg(sex=("sex", "first"), label=("label", "max"))
    ref = pd.crosstab(subjects["sex"].map({"M": "Male", "F": "Female"}), subjects["label"])
    assert tables["sex"].loc[["Male", "Female"], ["Normal", "Osteoporotic"]].to_numpy().tolist() == \
        ref.reindex(["Male", "Female"]).fillna(0).astype(int).to_numpy().tolist()
    if "n_bones" in m.columns:                            # the generator's own count of visible bones
        ours = tables["bones"]["Images"]
        theirs = m["n_bones"].astype(str).value_counts()
        assert all(ours.get(k, 0) == v for k, v in theirs.items())
    with Image.open(paths["contact_sheet"]) as im:
        assert im.size[0] == 1600


def test_show_writes_outputs_deterministically(labelled, tmp_path):
    a = show(labelled, tmp_path / "a", n=5, seed=3)
    b = show(labelled, tmp_path / "b", n=5, seed=3)
    assert {"contact_sheet", "summary", "summary_md", "summary_sex", "summary_age"} <= set(a)
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key
    with Image.open(a["contact_sheet"]) as im:            # 2 rows x 3 tiles of two 2.3 in panels, 110 dpi
        assert im.size[0] == 1600 and 800 < im.size[1] < 1200 and im.mode in ("RGB", "RGBA")
    with Image.open(a["summary"]) as im:                  # one A4 page at 120 dpi
        assert im.size == (992, 1402) or im.size == (992, 1403)
    md = a["summary_md"].read_text()
    assert "| Female | 2 | 2 | 0 | 4 |" in md and "| 90–99 | 0 | 1 | 0 | 1 |" in md
    assert "fewer than 7 target bones: 2 of 8" in md
    csv = pd.read_csv(a["summary_sex"], index_col=0)
    assert csv.loc["Male"].tolist() == [1, 1, 0, 2]
    assert not list(tmp_path.glob("a/.*tmp*"))           # no temporary leftovers


def test_unlabeled_dataset_says_so(tmp_path):
    root = build(tmp_path / "public", labelled=False)
    ds = Dataset.open(root)
    tables = summary_tables(ds)
    assert "sex" not in tables and "age" not in tables and "Normal subj." not in tables["split"]
    paths = show(root, n=2)
    assert paths["summary"].parent == root / "show"
    assert "Unlabeled dataset" in paths["summary_md"].read_text()
    assert "Table 1" not in paths["summary_md"].read_text()


def test_cli_prints_outputs_and_bad_inputs_exit_2(labelled, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "show", str(labelled), "--out", str(out), "--n", "2", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "contact_sheet.png") in printed and str(out / "summary.png") in printed
    assert (out / "summary.md").is_file()

    assert main(["data", "show", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["data", "show", str(tmp_path / "empty")]) == 2
    assert "manifest.csv" in capsys.readouterr().err
    assert main(["data", "show", str(labelled), "--n", "0", "--out", str(tmp_path / "n0")]) == 2
    assert "--n" in capsys.readouterr().err


def test_missing_mask_is_named_and_nothing_is_written(tmp_path):
    root = build(tmp_path / "broken")
    mask_path(root, "i3", "b").unlink()
    with pytest.raises(BenchError, match=r"i3.b\.png"):
        show(root, tmp_path / "out", n=9)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_dataset_without_masks_counts_no_bones(tmp_path):
    """An imported cohort with labels but no annotations: no table of zero missing bones, and the
    headline says why (it said "0 of 0 with masks" beside a table of zeros)."""
    import shutil

    root = build(tmp_path / "bare")
    shutil.rmtree(root / "masks")
    (root / "annotators.csv").write_text("image_id,annotator,weight\n")
    tables = summary_tables(Dataset.open(root))
    assert tables["bones"]["Images"].to_dict() == {"no masks": len(ROWS)} and "missing_bones" not in tables
    text = show(root, n=2)["summary_md"].read_text()
    assert "No image has bone masks" in text and "missing each target bone" not in text
