"""The patch store (methods.patch_store) and the extract / extract_raw stages (methods.extract)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bench.config import resolve
from bench.data.format import BONES, Dataset
from bench.data.imageio import write_label_map
from bench.errors import BenchError
from bench.stage import StageContext, run_stage
from methods.bones import BonePatch, PatchConfig, extract_bones
from methods.pipeline import EXTRACT, EXTRACT_RAW
from methods.patch_store import INDEX_COLUMNS, PatchStore, StoreWriter, write_store


def _patch(bone: str, value: int, size: int = 8, missing: bool = False) -> BonePatch:
    if missing:
        return BonePatch(bone, BONES[bone], None, True, "absent", "no pixel")
    arr = np.full((size, size), value, np.uint16)
    arr[0, 0] = 0
    return BonePatch(bone, BONES[bone], arr, bbox=(1, 2, 3, 4), crop=(0, 1, 4, 5), coverage=1 - 1 / size ** 2,
                     angle_deg=12.5, area_px=value, area_mm2=value / 4, confidence=0.75)


def _images():
    info = [dict(image_id=f"i{k}", subject_id=f"s{k}", role=role, split=split, label=label, pixel_spacing_mm=0.5)
            for k, (role, split, label) in enumerate([("seg", "train", None), ("cls", "test", 1), ("cls", "val", 0)])]
    patches = [[_patch("ulna", 100 * k + 1), _patch("radius", 0, missing=True), _patch("M1", 65535 - k)]
               for k in range(3)]
    return list(zip(info, patches))


# --------------------------------------------------------------------------- the store
def test_store_round_trip(tmp_path):
    store = write_store(tmp_path / "s", _images(), patch_size=8)
    again = PatchStore.open(tmp_path / "s")
    assert list(again.index.columns[:len(INDEX_COLUMNS)]) == list(INDEX_COLUMNS)
    assert "pixel_spacing_mm" in again.index.columns                  # extra image columns are kept
    pd.testing.assert_frame_equal(store.index, again.index)
    idx = again.index
    assert len(idx) == 9 and again.array.shape == (9, 8, 8) and again.array.dtype == np.uint16
    assert isinstance(again.array, np.memmap)
    assert idx["row"].tolist() == list(range(9))
    assert idx["label"].dtype == "Int64" and idx["label"].isna().tolist() == [True] * 3 + [False] * 6
    for _, row in idx.iterrows():
        k = int(row["image_id"][1])
        arr = again.array[row["row"]]
        if row["bone"] == "radius":
            assert row["missing"] and row["reason"] == "absent" and arr.max() == 0 and row["bbox_x0"] == -1
        else:
            value = 100 * k + 1 if row["bone"] == "ulna" else 65535 - k
            assert arr[0, 0] == 0 and (arr.ravel()[1:] == value).all()
            assert row["area_px"] == value and row["bbox_y1"] == 4 and row["crop_x1"] == 4
    assert again.meta["n"] == 9 and again.meta["n_present"] == 6 and again.meta["missing_by_reason"] == {"absent": 3}
    assert again.present(role="cls")["image_id"].tolist() == ["i1", "i1", "i2", "i2"]
    assert again.select(split=["val", "test"]).shape[0] == 6


def test_tensor_and_floats(tmp_path):
    store = write_store(tmp_path / "s", _images(), patch_size=8)
    t = store.tensor("cpu")
    assert t.dtype == torch.uint16 and t.shape == (9, 8, 8)
    assert store.tensor("cpu") is t                                     # loaded once
    x = store.floats([2, 0], "cpu")
    assert x.shape == (2, 1, 8, 8) and x.dtype == torch.float32
    assert x[0, 0, 1, 1].item() == pytest.approx(65535 / 65535) and x[1, 0, 1, 1].item() == pytest.approx(1 / 65535)
    every = store.floats(store.index["row"], "cpu")                      # values above 32767 survive
    np.testing.assert_array_equal(every[:, 0].numpy(), (store.array / 65535.0).astype(np.float32))
    t8 = store.tensor("cpu", torch.uint8)
    np.testing.assert_array_equal(t8.numpy(), np.round(store.array / 257.0).astype(np.uint8))
    with pytest.raises(BenchError):
        store.tensor("cpu", torch.float32)


def test_streaming_writer_trims_and_interrupted_writes_leave_no_store(tmp_path):
    with StoreWriter(tmp_path / "s", 8, capacity=10) as w:             # fewer patches than announced
        for info, patches in _images()[:2]:
            w.add(info, patches)
        store = w.close()
    assert store.array.shape == (6, 8, 8) and len(store.index) == 6
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]   # no temp files left
    # a crash while rewriting: the old store is invalidated, never mixed with the new one
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "s", 8, capacity=9) as w:
            w.add(*_images()[0])
            raise RuntimeError("killed")
    with pytest.raises(BenchError, match="not a patch store"):
        PatchStore.open(tmp_path / "s")
    assert not [p for p in (tmp_path / "s").iterdir() if p.name.startswith(".")]
    with pytest.raises(BenchError, match="uint16"):
        write_store(tmp_path / "t", [(_images()[0][0], [_patch("ulna", 3, size=4)])], patch_size=8)


# --------------------------------------------------------------------------- the stages
@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    from bench.data.phantom import PhantomConfig, synthesize

    root = tmp_path_factory.mktemp("data")
    seg = synthesize(root / "public", config=PhantomConfig.for_preset("public", "smoke").replace(n_images=4), seed=0)
    cls = synthesize(root / "clinical", config=PhantomConfig.for_preset("clinical", "smoke").replace(n_images=6), seed=0)
    return {"seg": Dataset.open(seg), "cls": Dataset.open(cls)}


def _top_annotator(ds: Dataset, image_id: str) -> np.ndarray:
    weights = ds.annotator_weights(image_id)
    return ds.masks(image_id)[max(weights, key=lambda a: (weights[a], a))]


@pytest.fixture(scope="module")
def segment_dir(tmp_path_factory, datasets):
    """A fake segment-stage folder: the top-weight annotator's masks as 'predictions'."""
    out = tmp_path_factory.mktemp("segment")
    for role, ds in datasets.items():
        rows = []
        (out / "labels" / role).mkdir(parents=True)
        (out / "confidence").mkdir(exist_ok=True)
        for k, image_id in enumerate(ds.image_ids):
            lab = _top_annotator(ds, image_id)
            write_label_map(out / "labels" / role / f"{image_id}.png", lab)
            for bone, cid in BONES.items():
                conf = 0.2 if (role == "cls" and k == 0 and bone == "M2") else 0.9
                rows.append(dict(image_id=image_id, bone=bone, confidence=conf,
                                 area_px=int((lab == cid).sum()), present=bool((lab == cid).any())))
        pd.DataFrame(rows).to_parquet(out / "confidence" / f"{role}.parquet", index=False)
    return out


def _ctx(stage, out_dir: Path, datasets, inputs, seed=0, sets=()) -> StageContext:
    out_dir.mkdir(parents=True)
    return StageContext(stage=stage, config=resolve("smoke", sets=list(sets)), seed=seed, out_dir=out_dir,
                        inputs=inputs, datasets=datasets, device=torch.device("cpu"))


def test_extract_stage_on_fake_segment_output(tmp_path, datasets, segment_dir):
    summary = EXTRACT.fn(_ctx(EXTRACT, tmp_path / "a", datasets, {"segment": segment_dir}))
    store = PatchStore.open(tmp_path / "a")
    idx = store.index
    n_seg, n_cls = len(datasets["seg"].image_ids), len(datasets["cls"].image_ids)
    assert len(idx) == 7 * (n_seg + n_cls) and store.patch_size == 64
    assert idx["role"].tolist() == ["seg"] * 7 * n_seg + ["cls"] * 7 * n_cls
    assert idx["bone"].tolist()[:7] == list(BONES)
    # labels and splits come from the manifests
    cls_rows = idx[idx["role"] == "cls"].drop_duplicates("image_id").set_index("image_id")
    manifest = datasets["cls"].manifest.set_index("image_id")
    assert (cls_rows["label"] == manifest.loc[cls_rows.index, "label"]).all()
    assert (cls_rows["split"] == manifest.loc[cls_rows.index, "split"]).all()
    assert idx.loc[idx["role"] == "seg", "label"].isna().all()
    # each patch is what extract_bones gives on the same inputs (confidence from the parquet)
    cfg = PatchConfig(patch_size=64)
    for role in ("seg", "cls"):
        ds = datasets[role]
        image_id = ds.image_ids[0]
        conf = {b: (0.2 if role == "cls" and b == "M2" else 0.9) for b in BONES}
        ref = extract_bones(ds.image(image_id), _top_annotator(ds, image_id), conf, cfg,
                            float(ds.row(image_id)["pixel_spacing_mm"]))
        rows = idx[(idx["role"] == role) & (idx["image_id"] == image_id)]
        for p, (_, row) in zip(ref, rows.iterrows()):
            assert p.bone == row["bone"] and p.missing == row["missing"] and p.reason == row["reason"]
            if not p.missing:
                np.testing.assert_array_equal(store.array[row["row"]], p.patch)
                assert row["coverage"] == pytest.approx(p.coverage) and row["bbox_x0"] == p.bbox[0]
    low = idx[(idx["role"] == "cls") & (idx["image_id"] == datasets["cls"].image_ids[0]) & (idx["bone"] == "M2")]
    assert low["reason"].item() == "low-confidence"
    assert summary["patches"] == len(idx) and summary["missing_by_reason"].get("low-confidence", 0) >= 1
    assert not (tmp_path / "a" / "figures").exists()                 # the sheet is the companion's
    (sheet,) = EXTRACT.companions
    assert sheet.fn(_ctx(sheet, tmp_path / "sheet", datasets, {"extract": tmp_path / "a"})) == {"figure_images": 4}
    png = tmp_path / "sheet" / "figures" / "patches.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sheet.fn(_ctx(sheet, tmp_path / "none", datasets, {"extract": tmp_path / "a"},
                         sets=["patches.figure_images=0"])) == {"figure_images": 0}
    assert not (tmp_path / "none" / "figures").exists()
    # the oracle source reads the same masks straight from the dataset: same patches
    EXTRACT.fn(_ctx(EXTRACT, tmp_path / "b", datasets, {"segment": segment_dir}, sets=["patches.source=annotator"]))
    oracle = PatchStore.open(tmp_path / "b")
    both = ~idx["missing"] & ~oracle.index["missing"]
    assert (idx["missing"] != oracle.index["missing"]).sum() == 1       # only the low-confidence bone differs
    np.testing.assert_array_equal(store.array[both.to_numpy()], oracle.array[both.to_numpy()])
    assert oracle.index["confidence"].isna().all()


def test_extract_stage_is_byte_reproducible_and_cached(tmp_path, datasets, segment_dir):
    cfg = resolve("smoke")
    material = {"test": "extract"}
    a = run_stage(EXTRACT, cache_root=tmp_path / "c1", key="k", material=material, config=cfg, seed=0,
                  inputs={"segment": segment_dir}, datasets=datasets, device=torch.device("cpu"))
    b = run_stage(EXTRACT, cache_root=tmp_path / "c2", key="k", material=material, config=cfg, seed=0,
                  inputs={"segment": segment_dir}, datasets=datasets, device=torch.device("cpu"))
    assert (a / "patches.npy").read_bytes() == (b / "patches.npy").read_bytes()
    pd.testing.assert_frame_equal(PatchStore.open(a).index, PatchStore.open(b).index)
    marker = json.loads((a / "_stage.json").read_text())
    assert marker["summary"]["present"] == int((~PatchStore.open(a).index["missing"]).sum())


def test_extract_errors_name_the_fix(tmp_path, datasets, segment_dir):
    with pytest.raises(BenchError, match="truth"):
        real = {"seg": datasets["seg"], "cls": Dataset.open(_copy_without_truth(datasets["cls"], tmp_path))}
        EXTRACT.fn(_ctx(EXTRACT, tmp_path / "t", real, {"segment": segment_dir}, sets=["patches.source=truth"]))
    broken = tmp_path / "seg_broken"
    (broken / "labels" / "seg").mkdir(parents=True)
    with pytest.raises(BenchError, match="incomplete"):
        EXTRACT.fn(_ctx(EXTRACT, tmp_path / "u", datasets, {"segment": broken}))
    # source=truth on the phantom works and marks nothing missing that the truth has
    EXTRACT.fn(_ctx(EXTRACT, tmp_path / "v", datasets, {"segment": segment_dir}, sets=["patches.source=truth"]))
    idx = PatchStore.open(tmp_path / "v").index
    truth = pd.concat(pd.read_csv(ds.root / "truth" / "bones.csv") for ds in datasets.values())
    merged = idx.merge(truth[["image_id", "bone", "present"]], on=["image_id", "bone"])
    assert len(merged) == len(idx) and (merged["missing"] == ~merged["present"]).all()


def _copy_without_truth(ds: Dataset, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "no_truth"
    shutil.copytree(ds.root, dst, ignore=shutil.ignore_patterns("truth"))
    return dst


def test_extract_raw_stage_seeded(tmp_path, datasets):
    EXTRACT_RAW.fn(_ctx(EXTRACT_RAW, tmp_path / "a", datasets, {}, seed=3))
    EXTRACT_RAW.fn(_ctx(EXTRACT_RAW, tmp_path / "b", datasets, {}, seed=3))
    EXTRACT_RAW.fn(_ctx(EXTRACT_RAW, tmp_path / "c", datasets, {}, seed=4))
    a, b, c = (PatchStore.open(tmp_path / x) for x in "abc")
    assert (tmp_path / "a" / "patches.npy").read_bytes() == (tmp_path / "b" / "patches.npy").read_bytes()
    assert not np.array_equal(a.array, c.array)
    idx = a.index
    n = len(datasets["seg"].image_ids) + len(datasets["cls"].image_ids)
    assert len(idx) == 7 * n and set(idx["bone"]) == {f"raw{k}" for k in range(1, 8)}
    assert not idx["missing"].any() and (idx["bone_id"] == 0).all()
    for role, ds in datasets.items():
        rows = idx[idx["role"] == role]
        h, w = ds.image(ds.image_ids[0]).shape
        assert (rows["crop_x0"] >= 0).all() and (rows["crop_x1"] <= w).all() and (rows["crop_y1"] <= h).all()
        image = ds.image(rows["image_id"].iloc[0])
        r = rows.iloc[0]
        crop = image[r["crop_y0"]:r["crop_y1"], r["crop_x0"]:r["crop_x1"]]
        assert a.array[r["row"]].mean() / 65535 == pytest.approx(crop.mean(), rel=0.03, abs=2e-3)
    (sheet,) = EXTRACT_RAW.companions
    sheet.fn(_ctx(sheet, tmp_path / "sheet", datasets, {"extract_raw": tmp_path / "a"}))
    assert (tmp_path / "sheet" / "figures" / "patches.png").is_file()
    assert EXTRACT_RAW.inputs == () and EXTRACT.inputs == ("segment",) and EXTRACT.sections == ("patches",)
