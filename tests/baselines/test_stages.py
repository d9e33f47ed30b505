"""Every Table 8 baseline trains and predicts on smoke phantoms (exact masks stand in for segmentation)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.config import resolve
from bench.data.format import BONES, Dataset
from bench.data.phantom import synthesize
from bench.run_evaluation import evaluate
from baselines.entries import DEEPDXA, HSIEH, JANG, LANDMARKS, RADIOGRAMMETRY, WANG
from methods.pipeline import EXTRACT
from methods.patch_store import PatchStore
from stage_runs import run_cpu_stage

LANDMARK_BONES = list(BONES)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the CI machine's two cores are shared; one thread is faster there
    root = tmp_path_factory.mktemp("baselines")
    datasets = {"seg": Dataset.open(synthesize(root / "pub", "public", "smoke", seed=1)),
                "cls": Dataset.open(synthesize(root / "cli", "clinical", "smoke", seed=1))}
    yield root, datasets
    torch.set_num_threads(threads)


def _cfg(**sets):
    base = {"patches.source": "truth", "supervised.epochs": 2, "supervised.input_size": 32,
            "radiogrammetry.source": "truth", "roi.source": "annotator", "run.device": "cpu"}
    return resolve("smoke", sets={**base, **sets})


@pytest.fixture(scope="module")
def landmarks(env):
    return run_cpu_stage(LANDMARKS, _cfg(), env, {})


def _check_subject_predictions(out, manifest):
    preds = pd.read_parquet(out / "predictions.parquet")
    assert sorted(preds["subject_id"]) == sorted(manifest["subject_id"].unique())
    assert preds["p_pos"].between(0, 1).all()
    subjects, metrics = evaluate(out)
    assert set(metrics) >= {"train", "val", "test"}
    history = pd.read_parquet(out / "history.parquet")
    assert {"train_loss", "val_macro_f1"} <= set(history["metric"])
    return preds


def test_deepdxa_trains_resnet18_on_bone_patches(env):
    cfg = _cfg()
    patches = run_cpu_stage(EXTRACT, cfg, env, {})
    out = run_cpu_stage(DEEPDXA, cfg, env, {"extract": patches})
    preds = pd.read_parquet(out / "bone_predictions.parquet")
    assert len(preds) == len(PatchStore.open(patches).present(role="cls"))
    head = torch.load(out / "head.pt")
    assert head["weight"].shape == (2, 512)   # ResNet-18's 512 features (ResNet-50 would give 2048)
    _, metrics = evaluate(out)
    assert metrics["test"]["n"] == env[1]["cls"].manifest.query("split == 'test'")["subject_id"].nunique()


def test_jang_one_jittered_box_per_radiograph(env):
    out = run_cpu_stage(JANG, _cfg(), env, {})
    manifest = env[1]["cls"].manifest
    _check_subject_predictions(out, manifest)
    boxes = pd.read_csv(out / "boxes.csv")
    assert len(boxes) == len(manifest)
    h, w = env[1]["cls"].image(manifest["image_id"].iloc[0]).shape
    # the wrist box is a fraction of the radiograph, not the whole field
    area = ((boxes.row1 - boxes.row0) * (boxes.col1 - boxes.col0)) / (h * w)
    assert (area < 0.6).all() and (area > 0.02).all()


def test_landmark_detector_learns_and_reports_mm_error(env, landmarks):
    report = json.loads((landmarks / "landmark_error.json").read_text())
    seg, cls = env[1]["seg"], env[1]["cls"]
    n_test = (seg.manifest["split"] == "test").sum()
    assert report["seg_test"]["n"] <= 7 * n_test and report["seg_test"]["n"] >= 5 * n_test
    # chance level (a landmark anywhere on the hand) is several centimetres; the detector is far better
    assert report["seg_test"]["mean_mm"] < 10.0
    assert set(report["seg_test"]["per_landmark_mm"]) == set(LANDMARK_BONES)
    found = pd.read_parquet(landmarks / "landmarks.parquet")
    assert len(found) == 7 * (len(seg.manifest) + len(cls.manifest))
    assert (found.loc[found.role == "cls", "split"] == "").all()   # the cls split is the run's, not keyed here
    assert set(found.loc[found.role == "seg", "split"]) == set(seg.manifest["split"])
    test = found[(found.role == "seg") & (found.split == "test")].dropna(subset=["error_mm"])
    assert test["error_mm"].mean() == pytest.approx(report["seg_test"]["mean_mm"])
    stage = json.loads((landmarks / "_stage.json").read_text())
    assert stage["summary"]["metrics"]["landmark_error_mm_seg_test"] == pytest.approx(report["seg_test"]["mean_mm"])


def test_hsieh_predicts_per_landmark_roi_and_averages(env, landmarks):
    out = run_cpu_stage(HSIEH, _cfg(), env, {"landmarks": landmarks})
    preds = pd.read_parquet(out / "bone_predictions.parquet")
    cls = env[1]["cls"].manifest
    assert len(preds) == 7 * cls["subject_id"].nunique() and set(preds["bone"]) == set(LANDMARK_BONES)
    subjects, metrics = evaluate(out)
    mean = preds.groupby("subject_id")["p_pos"].mean()
    np.testing.assert_allclose(subjects.set_index("subject_id").loc[mean.index, "p_pos"], mean.to_numpy())
    assert "landmark_error_mm_seg_test" in metrics["extra"]


def test_wang_one_prediction_per_subject(env, landmarks):
    out = run_cpu_stage(WANG, _cfg(), env, {"landmarks": landmarks})
    _check_subject_predictions(out, env[1]["cls"].manifest)


def test_radiogrammetry_tracks_true_cortical_index_and_matches_sklearn(env):
    out = run_cpu_stage(RADIOGRAMMETRY, _cfg(), env, {})
    check = json.loads((out / "truth_check.json").read_text())
    assert check["truth_r_subject"] >= 0.8 and check["truth_r_bone"] >= 0.75
    measured = pd.read_parquet(out / "measurements.parquet")
    truth = pd.read_csv(Path(env[1]["cls"].root) / "truth" / "bones.csv", dtype={"image_id": str})
    m2 = measured[measured["bone"] == "M2"].merge(truth[truth["bone"] == "M2"], on="image_id", suffixes=("", "_t"))
    m2 = m2.dropna(subset=["cortical_index", "cortical_index_t"])
    assert check["truth_r_M2"] == pytest.approx(np.corrcoef(m2["cortical_index"], m2["cortical_index_t"])[0, 1])
    table = pd.read_csv(out / "subject_2mci.csv", dtype={"subject_id": str})
    bones = ["M2", "M3", "M4", "radius"]
    assert table[bones].notna().mean().mean() > 0.9
    assert table["mci"].between(0.1, 0.8).all()
    stage = json.loads((out / "_stage.json").read_text())["summary"]["metrics"]
    train = table[table.split == "train"]
    model = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                          LogisticRegression(C=stage["C"], max_iter=1000))
    model.fit(train[bones].to_numpy(), train["y_true"].astype(int))
    preds = pd.read_parquet(out / "predictions.parquet").set_index("subject_id").loc[table.subject_id]
    np.testing.assert_allclose(preds["p_pos"], model.predict_proba(table[bones].to_numpy())[:, 1], rtol=1e-6)
    # thinner cortices mean osteoporosis: the fitted model's mean 2MCI effect is protective
    assert model[-1].coef_[0].sum() < 0


def test_oracle_label_maps_do_not_train_a_segmenter(env, tmp_path):
    """radiogrammetry.source=truth reads no segment stage: the runner neither plans nor trains one, and
    the radiogrammetry output is shared by every seed (it is deterministic given its data)."""
    from bench.runner import Runner

    root, datasets = env
    runner = Runner(tmp_path / "results", suite="t", profile="smoke", data_seg=str(datasets["seg"].root),
                    data_cls=str(datasets["cls"].root), device="cpu", progress=False,
                    sets=["radiogrammetry.source=truth"])
    assert [[s.name for s in p.stages] for p in runner.plan(["radiogrammetry"], [0, 1])] == [["radiogrammetry"]] * 2
    outcomes = runner.run(["radiogrammetry"], [0, 1])
    assert [o.status for o in outcomes] == ["done", "done"]
    cache = tmp_path / "results" / "cache"
    assert not (cache / "segment").exists() and len(list((cache / "radiogrammetry").glob("*/_stage.json"))) == 1
    assert outcomes[0].metrics["extra"]["truth_r_bone"] >= 0.75


@pytest.mark.parametrize("stage", ["jang", "wang", "landmarks"])
def test_interrupted_trainings_resume_to_the_same_outputs(env, landmarks, tmp_path, monkeypatch, stage):
    """The supervised loop (jang: one VGG; wang: the multi-ROI transformer) and the landmark detector,
    killed just after their first saved epoch and rerun: the same outputs as an uninterrupted run
    (two epochs: the resumed run's epoch draws its batches and augmentations from the restored state)."""
    from bench.checkpoint import Resumer

    what = {"jang": (JANG, {}, "predictions.parquet"), "wang": (WANG, {"landmarks": landmarks},
                                                                     "predictions.parquet"),
            "landmarks": (LANDMARKS, {}, "landmarks.parquet")}
    fn, inputs, output = what[stage]
    cfg = _cfg(**{"checkpoint.minutes": 1e-9, "supervised.epochs": 2, "landmarks.epochs": 2})
    whole = run_cpu_stage(fn, cfg, (tmp_path / "whole", env[1]), inputs)
    original, saves = Resumer.save, []

    def save_then_die(self, state):
        original(self, state)
        saves.append(state["epoch"])
        raise KeyboardInterrupt                     # killed right after epoch 0's state was written
    monkeypatch.setattr(Resumer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_cpu_stage(fn, cfg, (tmp_path / "resumed", env[1]), inputs)
    assert saves == [0]
    loaded = []
    original_load = Resumer.load

    def record_load(self, *args, **kwargs):
        state = original_load(self, *args, **kwargs)
        loaded.append(None if state is None else state["epoch"])
        return state
    monkeypatch.setattr(Resumer, "load", record_load)
    monkeypatch.setattr(Resumer, "save", lambda self, state: (saves.append(state["epoch"]), original(self, state)))
    resumed = run_cpu_stage(fn, cfg, (tmp_path / "resumed", env[1]), inputs)
    assert loaded == [0] and saves == [0, 1]             # started from epoch 0's state, did not redo it
    pd.testing.assert_frame_equal(pd.read_parquet(whole / output), pd.read_parquet(resumed / output))
    pd.testing.assert_frame_equal(pd.read_parquet(whole / "history.parquet"),
                                  pd.read_parquet(resumed / "history.parquet"))


def test_per_image_loops_give_the_same_outputs_in_one_thread_and_in_several(env, landmarks, tmp_path, monkeypatch):
    """Bone patches, radiogrammetry, Jang's and Hsieh's ROIs run their images in threads
    (bench.parallel): the outputs are identical to one thread's, rows in manifest order."""
    import bench.parallel
    from baselines.hsieh import landmark_rois
    from baselines.jang import jang_rois
    from baselines.radiogrammetry import measure_dataset
    from bench.stage import StageContext

    root, datasets = env
    cfg = _cfg()
    outputs = {}
    for threads in (1, 3):
        monkeypatch.setattr(bench.parallel, "image_threads", lambda t=threads: t)
        ctx = StageContext(stage=JANG, config=cfg, seed=0, out_dir=tmp_path, inputs={}, datasets=datasets,
                           device=torch.device("cpu"))
        store = PatchStore.open(run_cpu_stage(EXTRACT, cfg, (tmp_path / f"t{threads}", datasets), {}))
        outputs[threads] = (store.index, store.tensor(), measure_dataset(ctx, cfg.section("radiogrammetry")),
                            jang_rois(ctx, cfg.section("roi"), 32), landmark_rois(ctx, landmarks, 32))
    (i1, p1, m1, j1, h1), (i3, p3, m3, j3, h3) = outputs[1], outputs[3]
    pd.testing.assert_frame_equal(i1, i3)
    assert torch.equal(p1, p3) and len(i1) == 7 * sum(len(d.manifest) for d in datasets.values())
    pd.testing.assert_frame_equal(m1, m3)
    assert list(dict.fromkeys(m1["image_id"])) == datasets["cls"].manifest["image_id"].tolist()
    for (a, b) in ((j1, j3), (h1, h3)):
        pd.testing.assert_frame_equal(a[0], b[0])
        assert torch.equal(a[1], b[1])
    pd.testing.assert_frame_equal(j1[2], j3[2])
    assert h1[2] == h3[2] and len(h1[0]) == len(h1[2]) * len(datasets["cls"].manifest)
