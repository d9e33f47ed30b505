"""`bench export` / `bench predict` (issue 10): round trip against a smoke run, DICOM polarity and
orientation, bad inputs and bad bundles, the flags on real predictions (the flag logic alone, the
option and output checks: test_predict_checks).

One tiny smoke run of the full method (simclr) per module (`stage_runs.TINY_FULL_METHOD`), its
label maps from 3 latent draws per expert.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import registry
from bench.cli import main
from bench.data.format import BONES, Dataset
from bench.data.imageio import read_image
from bench.errors import BenchError
from bench.runner import Runner
from methods.bundle import load_bundle
from methods.export import export_bundle
from methods.screen import ScreenConfig
from stage_runs import TINY_FULL_METHOD

SETS = [*TINY_FULL_METHOD, "segmentation.predict_draws=3"]
PERMISSIVE = ScreenConfig(min_bones=1, min_confidence=0.0)   # decisions even from the tiny model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch

    registry.load_entries()
    root = tmp_path_factory.mktemp("predict")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the machine's cores are shared: one thread wastes none spinning; restored below
    try:
        outcomes = Runner(root / "results", suite="s", profile="smoke", sets=[*SETS, "run.num_threads=1"],
                          device="cpu", progress=False).run(["simclr"], [0])
        assert outcomes[0].status == "done", outcomes[0].error
        folder = root / "results" / "s" / "simclr" / "seed0"
        config = json.loads((folder / "config.json").read_text())
        bundle_path = export_bundle(folder, root / "model.osteo")
        yield {"root": root, "folder": folder, "config": config, "bundle": bundle_path,
               "cls": Dataset.open(Path(config["data"]["cls"]))}
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundle(run):
    return load_bundle(run["bundle"], "cpu")


def _radiographs(dataset: Dataset, ids: list[str]):
    rads = []
    spacing = dataset.manifest.set_index("image_id")["pixel_spacing_mm"]
    side = dataset.manifest.set_index("image_id")["laterality"]
    for image_id in ids:
        rad = read_image(dataset.image_path(image_id))
        rad.pixel_spacing_mm = float(spacing[image_id])     # the run's extract used the manifest's spacing
        rad.header["ImageLaterality"] = side[image_id]      # and its segmentation the manifest's side
        rads.append(rad)
    return rads


def test_bundle_reproduces_the_runs_bone_and_subject_probabilities(run, bundle):
    assert bundle.meta["segmentation"]["samples"] == 3          # the run's segmentation.predict_draws
    dataset = run["cls"]
    manifest = dataset.manifest
    results = bundle.predict(_radiographs(dataset, manifest["image_id"].tolist()),
                             manifest["image_id"].tolist(), screen=PERMISSIVE)
    probe_dir = run["root"] / "results" / "cache" / "probe" / run["config"]["stages"]["probe"]
    ref = pd.read_parquet(probe_dir / "bone_predictions.parquet").set_index(["subject_id", "bone"])["p_pos"]
    ours = {(sid, bone): p for sid, res in zip(manifest["subject_id"], results)
            for bone, p in res.bone_probability.items() if np.isfinite(p)}
    assert set(ours) == set(ref.index)                      # the same bones usable, image by image
    assert len(ours) >= 40                                  # enough bones for the comparison to mean something
    diff = np.abs(np.array([ours[k] for k in ref.index]) - ref.to_numpy())
    assert diff.max() < 1e-5
    # subject level (eq. 10) against the run's predictions.parquet; the smoke phantom has one image per subject
    subjects = pd.read_parquet(run["folder"] / "predictions.parquet").set_index("subject_id")
    for sid, res in zip(manifest["subject_id"], results):
        if sid not in subjects.index:    # no usable bone: the probe scored none, the run has no row
            assert res.n_bones == 0 and np.isnan(res.probability)
            assert res.prediction is None and res.status == "withheld" and "no-bones" in res.flags
            continue
        row = subjects.loc[sid]
        assert res.n_bones == row["n_bones"]
        assert abs(res.probability - row["p_pos"]) < 1e-5
        assert res.prediction == row["y_pred"]
    assert (subjects["split"] == "test").sum() >= 2
    assert not any("out-of-distribution" in res.flags for res in results)   # the run's own images


def test_cli_export_is_deterministic_and_cli_predict_writes_outputs(run, tmp_path, capsys):
    again = tmp_path / "again.osteo"
    assert main(["export", str(run["folder"]), "--out", str(again)]) == 0
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(run["bundle"].read_bytes()).digest()
    dataset = run["cls"]
    test_ids = dataset.manifest.loc[dataset.manifest["split"] == "test", "image_id"].tolist()
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    side = dataset.manifest.set_index("image_id")["laterality"]
    assert set(side[test_ids]) == {"L", "R"}
    for image_id in test_ids:       # right hands as PNG (side from --laterality), left ones as DICOM stating theirs
        if side[image_id] == "R":
            (inputs / f"{image_id}.png").write_bytes(dataset.image_path(image_id).read_bytes())
        else:
            stored = np.round(read_image(dataset.image_path(image_id)).pixels.astype(np.float64) * 65535)
            _write_dicom(inputs / f"{image_id}.dcm", stored.astype(np.uint16), "MONOCHROME2", laterality="L")
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    code = main(["predict", str(run["bundle"]), str(inputs), str(tmp_path / "empty"), "--out", str(out),
                 "--device", "cpu", "--batch-size", "4", "--pixel-spacing", "0.8", "--min-bones", "1",
                 "--min-confidence", "0", "--laterality", "R"])
    err = capsys.readouterr().err
    assert code == 0
    assert "notes.txt" in err and "not a PNG, JPEG, TIFF or DICOM" in err
    assert "broken.png" in err and "cannot read image" in err
    assert "holds no files" in err
    frame = pd.read_csv(out / "predictions.csv")
    done = frame[frame["status"] != "skipped"].set_index("name")
    assert sorted(done.index) == sorted(test_ids) and (frame["status"] == "skipped").sum() == 3
    subjects = pd.read_parquet(run["folder"] / "predictions.parquet").set_index("subject_id")
    sid = dataset.manifest.set_index("image_id")["subject_id"]
    for image_id, row in done.iterrows():
        assert (row["laterality"], row["laterality_source"]) == (side[image_id], "given")   # the tag wins
        if sid[image_id] in subjects.index:
            ref = subjects.loc[sid[image_id]]
            assert abs(row["probability"] - ref["p_pos"]) < 1e-5
            assert row["decision"] == ("osteoporosis" if ref["y_pred"] == 1 else "normal")
        else:
            assert np.isnan(row["probability"]) and row["decision"] == "withheld"
        from PIL import Image

        with Image.open(out / row["overlay"]) as im:
            assert im.format == "PNG" and im.size[0] > 500
    doc = json.loads((out / "predictions.json").read_text())
    assert len(doc["images"]) == len(test_ids) and len(doc["skipped"]) == 3
    assert doc["options"]["screening"]["min_bones"] == 1 and doc["options"]["screening"]["min_confidence"] == 0
    assert doc["options"]["pixel_spacing_mm"] == 0.8 and doc["options"]["laterality"] == "R"
    raw = pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    for column in ("n_bones", "height", "width"):           # integers, also beside the skipped rows' blanks
        assert raw.loc[raw["status"] != "skipped", column].str.fullmatch(r"\d+").all(), column
    nested = inputs / "preds"               # an output folder inside the inputs: its overlays are never inputs
    for _ in range(2):
        assert main(["predict", str(run["bundle"]), str(inputs), "--out", str(nested), "--device", "cpu",
                     "--pixel-spacing", "0.8"]) == 0
    assert len(pd.read_csv(nested / "predictions.csv")) == len(test_ids) + 2
    assert doc["model"]["source"]["entry"] == "simclr" and doc["model"]["threshold"] == 0.5
    assert set(doc["images"][0]["bones"]) == set(BONES)


def test_nothing_processable_exits_2_with_messages(run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    junk = tmp_path / "scan.dcm"
    junk.write_bytes(b"DICM but not really")
    code = main(["predict", str(run["bundle"]), str(tmp_path / "empty"), str(junk), str(tmp_path / "nowhere.png"),
                 "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "holds no files" in err and "scan.dcm" in err and "no such file or folder" in err
    assert "no image could be screened" in err
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())["skipped"]) == 3


def _write_dicom(path: Path, stored: np.ndarray, photometric: str, laterality: str = "") -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CR"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [0.8, 0.8]
    if laterality:
        ds.ImageLaterality = laterality
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    try:
        ds.save_as(path, enforce_file_format=True)      # pydicom >= 3
    except TypeError:
        ds.save_as(path, write_like_original=False)     # pydicom 2.x


def test_dicom_monochrome1_and_2_read_upright_and_bone_bright(run, bundle, tmp_path):
    dataset = run["cls"]
    image_id = dataset.manifest["image_id"].iloc[0]
    png = read_image(dataset.image_path(image_id))
    stored = np.round(png.pixels.astype(np.float64) * 65535).astype(np.uint16)
    assert not np.array_equal(stored, stored[::-1]) and not np.array_equal(stored, stored[:, ::-1])
    _write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2")
    _write_dicom(tmp_path / "m1", 65535 - stored, "MONOCHROME1")           # no extension: sniffed by content
    rads = [read_image(tmp_path / "m2.dcm"), read_image(tmp_path / "m1")]
    for rad in rads:
        assert rad.pixels.shape == png.pixels.shape and rad.pixel_spacing_mm == pytest.approx(0.8)
        np.testing.assert_array_equal(rad.pixels, png.pixels)               # same orientation and polarity
    png.pixel_spacing_mm = 0.8
    a, b, c = bundle.predict([png, *rads], ["png", "m2", "m1"], screen=PERMISSIVE)
    for other in (b, c, bundle.predict_file(tmp_path / "m1", screen=PERMISSIVE)):
        assert other.bone_probability == pytest.approx(a.bone_probability, nan_ok=True)
        assert other.probability == pytest.approx(a.probability, nan_ok=True)
        assert other.laterality == a.laterality and other.laterality_source == "detected"   # no tag: found
    side = dataset.manifest["laterality"].iloc[0]
    _write_dicom(tmp_path / "tagged.dcm", stored, "MONOCHROME2", laterality=side)
    tagged = bundle.predict_file(tmp_path / "tagged.dcm", screen=PERMISSIVE)
    assert (tagged.laterality, tagged.laterality_source) == (side, "given")


def _rezip(src: Path, dst: Path, drop: str = "", meta_update: dict | None = None, corrupt: str = "") -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == drop:
                continue
            if name == "bundle.json" and meta_update:
                data = json.dumps({**json.loads(data), **meta_update}).encode()
            if name == corrupt:
                data = data[:-8] + b"\x00" * 8
            zout.writestr(name, data)
    return dst


def test_incompatible_or_damaged_bundles_are_refused(run, tmp_path, capsys):
    src = run["bundle"]
    cases = [
        (_rezip(src, tmp_path / "v99.osteo", meta_update={"format_version": 99}), "format version 99"),
        (_rezip(src, tmp_path / "v0.osteo", meta_update={"format_version": 0}), "export the run again"),
        (_rezip(src, tmp_path / "other.osteo", meta_update={"format": "something"}), "not an osteobench bundle"),
        (_rezip(src, tmp_path / "lacks.osteo", drop="encoder.safetensors"), "lacks encoder.safetensors"),
        (_rezip(src, tmp_path / "bad.osteo", corrupt="head.safetensors"), "checksum"),
        (_rezip(src, tmp_path / "nodec.osteo", meta_update={"decision": None}), "damaged: its bundle.json lacks `decision`"),
        (_rezip(src, tmp_path / "nopat.osteo", meta_update={"patches": None}), "lacks `patches`"),
        (_rezip(src, tmp_path / "thr.osteo", meta_update={"decision": {"threshold": "abc"}}),
         "has a str as `decision.threshold`"),
        (_rezip(src, tmp_path / "thr2.osteo", meta_update={"decision": {"threshold": 2}}), "outside \\[0, 1\\]"),
        (tmp_path / "missing.osteo", "does not exist"),
    ]
    (tmp_path / "text.osteo").write_text("hello")
    cases.append((tmp_path / "text.osteo", "not a zip archive"))
    for path, message in cases:
        with pytest.raises(BenchError, match=message):
            load_bundle(path)
    assert main(["predict", str(tmp_path / "v99.osteo"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "upgrade osteobench" in capsys.readouterr().err
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x.osteo")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    # same format, content this version does not know: upgrade when a newer osteobench wrote it
    meta = json.loads(zipfile.ZipFile(src).read("bundle.json"))
    spec = {**meta["segmentation"], "spec": {**meta["segmentation"]["spec"], "future_field": 1}}
    for made_by, advice in (("99.0", "upgrade osteobench"), (meta["package_version"], "export the run again")):
        with pytest.raises(BenchError, match=advice):
            load_bundle(_rezip(src, tmp_path / "spec.osteo", meta_update={"segmentation": spec,
                                                                           "package_version": made_by}))
    newer = load_bundle(_rezip(src, tmp_path / "patch.osteo", meta_update={
        "patches": {**meta["patches"], "future_option": 2}, "package_version": "99.0"}))
    with pytest.raises(BenchError, match="future_option.*upgrade osteobench"):
        newer.patch_config


def test_a_side_that_the_model_contradicts_is_flagged(run, bundle):
    dataset = run["cls"]
    ids = dataset.manifest["image_id"].tolist()
    rads = _radiographs(dataset, ids)
    for rad in rads:                                          # every tag wrong
        rad.header["ImageLaterality"] = {"L": "R", "R": "L"}[rad.header["ImageLaterality"]]
    results = bundle.predict(rads, ids, screen=PERMISSIVE)
    assert all(r.laterality_source == "given" and r.laterality_found in ("L", "R") for r in results)
    mismatched = [r for r in results if r.laterality_found != r.laterality]
    assert mismatched and all("laterality-mismatch" in r.flags and r.status != "ok" for r in mismatched)
    assert not any("laterality-mismatch" in r.flags for r in results if r.laterality_found == r.laterality)
    unchecked = bundle.predict(rads[:2], ids[:2], screen=ScreenConfig(min_bones=1, min_confidence=0.0,
                                                                      check_laterality=False))
    assert [r.laterality_found for r in unchecked] == ["", ""]


def test_evaluate_gives_each_image_the_manifests_side(run, bundle):
    from bench.external import evaluate_dataset

    dataset = run["cls"]
    evaluation = evaluate_dataset(bundle, dataset, split="test")
    sides = dataset.manifest.set_index("image_id")["laterality"]
    images = evaluation.images
    assert len(images) >= 2 and (images["laterality_source"] == "given").all()
    assert images["laterality"].tolist() == [sides[i] for i in images["image_id"]]


def test_twelve_bit_data_and_both_hands_are_flagged(run, bundle, tmp_path):
    """QA cases: a 16-bit PNG holding 12-bit values reads 16x too dark (low-confidence); a DICOM whose
    laterality is B holds both hands (withheld)."""
    from bench.data.imageio import write_png16

    image_id = run["cls"].manifest["image_id"].iloc[0]
    rad = _radiographs(run["cls"], [image_id])[0]
    write_png16(tmp_path / "dark.png", rad.pixels / 17.0)                  # values below 4096 of 65535
    dark = read_image(tmp_path / "dark.png")
    dark.pixel_spacing_mm, dark.header = rad.pixel_spacing_mm, rad.header
    flagged, plain = bundle.predict([dark, rad], ["dark", "plain"], screen=PERMISSIVE)
    assert "looks-12-bit" in flagged.flags and flagged.status == "low-confidence"
    assert "looks-12-bit" not in plain.flags
    rad.header["ImageLaterality"] = "B"                                   # both hands on one image (DICOM)
    both = bundle.predict([rad], ["both"], screen=PERMISSIVE)[0]
    assert "both-hands" in both.flags and both.status == "withheld" and both.prediction is None


def test_withheld_results_carry_no_decision(run, bundle):
    subjects = pd.read_parquet(run["folder"] / "predictions.parquet")
    sid = subjects.loc[subjects["n_bones"].between(1, 6), "subject_id"].iloc[0]
    manifest = run["cls"].manifest
    rad = _radiographs(run["cls"], [manifest.loc[manifest["subject_id"] == sid, "image_id"].iloc[0]])[0]
    strict = bundle.predict([rad], ["x"], screen=ScreenConfig(min_bones=7))[0]
    loose = bundle.predict([rad], ["x"], screen=PERMISSIVE)[0]
    assert strict.status == "withheld" and strict.decision == "withheld" and strict.prediction is None
    assert "too-few-bones" in strict.flags
    assert strict.probability == pytest.approx(loose.probability, nan_ok=True)   # still reported
    png = io.BytesIO(strict.overlay_png())
    assert png.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_image_more_uncertain_than_the_runs_own_is_flagged_out_of_distribution(run):
    ours = load_bundle(run["bundle"])
    subjects = pd.read_parquet(run["folder"] / "predictions.parquet")
    manifest = run["cls"].manifest
    sid = subjects.loc[subjects["n_bones"] >= 1, "subject_id"].iloc[0]     # a decision, not withheld
    rad = _radiographs(run["cls"], [manifest.loc[manifest["subject_id"] == sid, "image_id"].iloc[0]])[0]
    entropy = ours.predict([rad], ["x"], screen=PERMISSIVE)[0].mean_entropy
    ours.meta["reference"]["mean_entropy"]["q99"] = entropy / 1.3       # as if the run's images were surer
    res = ours.predict([rad], ["x"], screen=PERMISSIVE)[0]
    assert "out-of-distribution" in res.flags and res.status == "withheld" and res.decision == "withheld"
    assert res.prediction is None and 0.0 <= res.probability <= 1.0              # the probability is still given
    assert ours.predict([rad], ["x"], screen=ScreenConfig(min_bones=1, min_confidence=0, ood_factor=1.4))[0].flags \
        == [f for f in res.flags if f != "out-of-distribution"]


def test_evaluate_seg_scores_the_bundles_segmenter_as_the_runs(run, tmp_path, capsys):
    """`bench evaluate-seg` on the exported bundle and on the run folder: the same segmenter and draws,
    so the same scores on the run's `seg` dataset."""
    seg_data = run["config"]["data"]["seg"]
    summaries = {}
    for name, source in (("bundle", run["bundle"]), ("run", run["folder"])):
        out = tmp_path / name
        assert main(["evaluate-seg", str(source), "--data", seg_data, "--split", "test", "--out", str(out),
                     "--device", "cpu", "--no-mlflow"]) == 0
        summaries[name] = json.loads((out / "summary.json").read_text())
        assert summaries[name]["segmenter"]["kind"] == name and summaries[name]["predict_draws"] == 3
    capsys.readouterr()
    bundle, folder = ({k: v for k, v in s.items() if k != "segmenter"} for s in summaries.values())
    assert bundle == folder and bundle["n_images"] == 4 and bundle["dice_truth"]["mean"] > 0


def test_evaluate_recognises_the_training_images_in_a_copy_by_their_pixels(run, tmp_path, capsys):
    """The bundle records the pixel digests of what its models saw; `bench evaluate` of a copy of the
    `cls` dataset (another folder: the old folder check said nothing) flags the fit subjects, and
    --exclude-seen scores exactly the run's test subjects, as --split test on the original does."""
    import shutil

    seen = load_bundle(run["bundle"]).meta["training_images"]
    cls, seg = run["cls"].manifest, Dataset.open(run["config"]["data"]["seg"]).manifest
    fit = cls["split"].isin(["train", "val"])
    assert len(seen["fit"]) == len(seg) + fit.sum() and len(seen["held_out"]) == (~fit).sum()
    copy, results = tmp_path / "copy", tmp_path / "results"
    shutil.copytree(run["cls"].root, copy)
    runs = {}
    for name, data, extra in (("all", copy, []), ("ext", copy, ["--exclude-seen"]),
                              ("own", run["cls"].root, ["--split", "test"])):
        assert main(["evaluate", str(run["bundle"]), "--data", str(data), "--name", name, "--results", str(results),
                     "--device", "cpu", "--no-mlflow", *extra]) == 0
        runs[name] = (capsys.readouterr().err, results / name / "simclr" / "seed0")
    err, folder = runs["all"]
    images = pd.read_csv(folder / "images.csv").set_index("image_id")
    assert (images["seen"] == "fit").sum() == fit.sum() and f"{fit.sum()} of {len(cls)} radiographs" in err
    assert images.loc[cls.loc[~fit, "image_id"], "seen"].eq("held_out").all() and "--exclude-seen leaves" in err
    excluded, own = (pd.read_parquet(runs[k][1] / "predictions.parquet").set_index("subject_id")
                     for k in ("ext", "own"))
    assert sorted(excluded.index) == sorted(own.index) == sorted(set(cls.loc[~fit, "subject_id"]))
    assert np.allclose(excluded["p_pos"], own.loc[excluded.index, "p_pos"], equal_nan=True)
    assert "left out (--exclude-seen)" in runs["ext"][0] and "fitted on (" not in runs["own"][0]
    assert f"{(~fit).sum()} of {(~fit).sum()} radiographs" in runs["own"][0] and "own test images" in runs["own"][0]
    assert main(["show", str(runs["all"][1])]) == 0 and "scored: not external" in capsys.readouterr().out
    old = _rezip(run["bundle"], tmp_path / "old.osteo", meta_update={"training_images": None})
    assert main(["evaluate", str(old), "--data", str(copy), "--name", "old", "--results", str(results),
                 "--no-mlflow", "--exclude-seen"]) == 2
    assert "records no digests of its training images" in capsys.readouterr().err
