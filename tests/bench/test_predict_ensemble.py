"""`bench export` of a cross-validation: the ensemble of the fold models (methods.export, methods.bundle)."""
from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.data.format import Dataset
from bench.data.imageio import read_image
from bench.errors import BenchError
from methods.bundle import load_bundle
from methods.export import export_bundle
from methods.screen import ScreenConfig
from stage_runs import TINY_FULL_METHOD

SETS = [*TINY_FULL_METHOD, "run.num_threads=1"]
PERMISSIVE = ScreenConfig(min_bones=1, min_confidence=0.0)


def _run(results: Path, entry: str) -> int:
    args = ["run", "--entry", entry, "--name", "e", "--seeds", "0", "--profile", "smoke", "--results", str(results),
            "--device", "cpu", "--no-mlflow", "--folds", "2"]
    for s in SETS:
        args += ["--set", s]
    return main(args)


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    import torch

    root = tmp_path_factory.mktemp("ensemble")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _run(root / "results", "supcon") == 0      # SupCon pretrains on each fold's train split
        results = root / "results"
        pooled = results / "e-cv2" / "supcon" / "seed0"
        ensemble = export_bundle(pooled, root / "cv.osteo")
        singles = [export_bundle(results / f"e-fold{k}" / "supcon" / "seed0", root / f"fold{k}.osteo")
                   for k in (0, 1)]
        cls = Dataset.open(Path(json.loads((pooled / "config.json").read_text())["data"]["cls"]))
        yield {"root": root, "results": results, "pooled": pooled, "ensemble": ensemble, "singles": singles,
               "cls": cls}
    finally:
        torch.set_num_threads(threads)


def _radiographs(dataset: Dataset, ids: list[str]):
    """The images as the runs (and `bench evaluate`) saw them: the manifest's spacing and side."""
    spacing = dataset.manifest.set_index("image_id")["pixel_spacing_mm"]
    side = dataset.manifest.set_index("image_id")["laterality"]
    rads = []
    for image_id in ids:
        rad = read_image(dataset.image_path(image_id))
        rad.pixel_spacing_mm = float(spacing[image_id])
        rad.header["ImageLaterality"] = side[image_id]
        rads.append(rad)
    return rads


def test_ensemble_bone_probabilities_are_the_mean_of_the_fold_bundles(cv):
    with zipfile.ZipFile(cv["ensemble"]) as zf:
        names = set(zf.namelist())
        meta = json.loads(zf.read("bundle.json"))
    assert meta["format_version"] == 2 and [m["fold"] for m in meta["models"]] == [0, 1]
    assert names == {"bundle.json", "segmentation.safetensors", "encoder-0.safetensors", "encoder-1.safetensors",
                     "head-0.safetensors", "head-1.safetensors"}          # SupCon: one encoder per fold
    assert meta["source"]["suite"] == "e-cv2"
    # every cls image was fitted on by one fold or the other; a single fold's test images are held out
    seg = Dataset.open(json.loads((cv["pooled"] / "config.json").read_text())["data"]["seg"]).manifest
    n_cls, seen = len(cv["cls"].manifest), meta["training_images"]
    assert len(seen["fit"]) == len(seg) + n_cls and not seen["held_out"]
    fold0 = json.loads(zipfile.ZipFile(cv["singles"][0]).read("bundle.json"))["training_images"]
    fold0_test = pd.read_parquet(cv["results"] / "e-fold0" / "supcon" / "seed0" / "predictions.parquet")
    assert len(fold0["held_out"]) == (fold0_test["split"] == "test").sum() > 0
    assert len(fold0["fit"]) + len(fold0["held_out"]) == len(seg) + n_cls
    ens = load_bundle(cv["ensemble"])
    folds = [load_bundle(p) for p in cv["singles"]]
    assert len(ens.models) == 2 and len(ens.encoders) == 2 and ens.describe()["folds"] == [0, 1]
    ids = cv["cls"].manifest["image_id"].tolist()
    rads = _radiographs(cv["cls"], ids)
    got = ens.predict(rads, ids, screen=PERMISSIVE)
    each = [b.predict(rads, ids, screen=PERMISSIVE) for b in folds]
    compared = disagree = 0
    for i, res in enumerate(got):
        assert res.n_bones == each[0][i].n_bones == each[1][i].n_bones     # one segmentation model for all
        for bone, p in res.bone_probability.items():
            ref = [e[i].bone_probability[bone] for e in each]
            if np.isfinite(p):
                assert p == pytest.approx(np.mean(ref), abs=1e-6)
                compared += 1
            else:
                assert not np.isfinite(ref).any()
        if res.n_bones:
            used = [p for p in res.bone_probability.values() if np.isfinite(p)]
            assert res.probability == pytest.approx(np.mean(used), abs=1e-12)
            assert res.prediction == int(res.probability > ens.threshold)
            assert res.model_probabilities == pytest.approx([e[i].probability for e in each], abs=1e-6)
            assert res.probability_sd == pytest.approx(np.std(res.model_probabilities), abs=1e-12)
            split = (min(res.model_probabilities) <= ens.threshold) != (max(res.model_probabilities) <= ens.threshold)
            assert ("models-disagree" in res.flags) == split
            disagree += split
        else:
            assert res.model_probabilities == [] and np.isnan(res.probability_sd)
        assert np.isnan(each[0][i].probability_sd)                         # one model: no spread
    assert compared >= 20
    print(f"{disagree} of {len(ids)} images with fold models on both sides of the threshold")
    assert not np.allclose([each[0][i].probability for i in range(len(ids))],
                           [each[1][i].probability for i in range(len(ids))])   # the fold models differ


def test_export_refuses_a_fold_changed_after_pooling_or_a_foreign_segmentation(cv, tmp_path):
    fold1 = cv["results"] / "e-fold1" / "supcon" / "seed0" / "config.json"
    original = fold1.read_text()
    try:
        config = json.loads(original)
        fold1.write_text(json.dumps({**config, "run_key": "0123456789abcdef"}))
        with pytest.raises(BenchError, match="fold 1's run .* changed after the folds were pooled"):
            export_bundle(cv["pooled"], tmp_path / "x.osteo")
        segment = cv["results"] / "cache" / "segment"
        shutil.copytree(segment / config["stages"]["segment"], segment / "another")   # a second model, complete
        fold1.write_text(json.dumps({**config, "stages": {**config["stages"], "segment": "another"}}))
        with pytest.raises(BenchError, match="used different segment stages"):
            export_bundle(cv["pooled"], tmp_path / "x.osteo")
    finally:
        fold1.write_text(original)
        shutil.rmtree(cv["results"] / "cache" / "segment" / "another", ignore_errors=True)
    assert not (tmp_path / "x.osteo").exists()


def test_cli_export_names_the_ensemble_and_a_format_1_bundle_still_loads(cv, tmp_path, capsys):
    out = tmp_path / "cli.osteo"
    assert main(["export", str(cv["pooled"]), "--out", str(out)]) == 0
    assert "ensemble of 2 fold models" in capsys.readouterr().out
    assert out.read_bytes() == cv["ensemble"].read_bytes()              # deterministic
    # a format-1 bundle (one model; no `models`, the probe summary under `head`) reads as one model
    v1 = tmp_path / "v1.osteo"
    with zipfile.ZipFile(cv["singles"][0]) as zin, zipfile.ZipFile(v1, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "bundle.json":
                meta = json.loads(data)
                model = meta.pop("models")[0]
                meta["format_version"] = 1
                meta["head"]["probe"] = model["probe"]
                data = json.dumps(meta).encode()
            zout.writestr(name, data)
    old, new = load_bundle(v1), load_bundle(cv["singles"][0])
    assert len(old.models) == 1 and old.models[0].fold is None
    patches = np.random.default_rng(0).integers(0, 65535, (3, 32, 32), dtype=np.uint16)
    assert np.array_equal(old.bone_probabilities(patches), new.bone_probabilities(patches))


def test_cli_evaluate_writes_a_run_that_show_and_compare_read(cv, tmp_path, capsys):
    from bench import results as store

    results = tmp_path / "results"
    for bundle, entry in ((cv["ensemble"], "ensemble"), (cv["singles"][0], "fold0")):
        assert main(["evaluate", str(bundle), "--data", str(cv["cls"].root), "--split", "test", "--name", "ext",
                     "--entry", entry, "--results", str(results), "--device", "cpu", "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    assert "AUC" in out and "DeLong 95% CI" in out
    run = store.read_run(results / "ext" / "ensemble" / "seed0")
    test_subjects = set(cv["cls"].manifest.loc[cv["cls"].manifest["split"] == "test", "subject_id"].astype(str))
    assert set(run.predictions["subject_id"]) == test_subjects and set(run.predictions["split"]) == {"test"}
    assert run.config["bundle"]["models"] == 2 and run.config["split"] == "test"
    # the subjects' probabilities are the screening's (one image per subject here), and the metrics are theirs
    ens = load_bundle(cv["ensemble"])
    ids = cv["cls"].manifest.loc[cv["cls"].manifest["split"] == "test", "image_id"].tolist()
    screened = dict(zip(ids, ens.predict(_radiographs(cv["cls"], ids), ids, screen=PERMISSIVE)))
    by_subject = run.predictions.set_index("subject_id")["p_pos"]
    subject_of = cv["cls"].manifest.set_index("image_id")["subject_id"].astype(str)
    for image_id, res in screened.items():
        assert by_subject[subject_of[image_id]] == pytest.approx(res.probability, abs=1e-9, nan_ok=True)
    assert (results / "ext" / "ensemble" / "seed0" / "images.csv").is_file()
    assert main(["show", str(results / "ext" / "ensemble" / "seed0"), "--by", "sex"]) == 0
    assert main(["show", str(results / "ext" / "ensemble" / "seed0")]) == 0
    assert "external validation of the bundle" in capsys.readouterr().out
    assert main(["compare", "ensemble", "fold0", "--suite", "ext", "--results", str(results)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(cv["ensemble"]), "--data", str(tmp_path), "--no-mlflow",
                 "--results", str(results)]) == 2
