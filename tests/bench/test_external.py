"""External validation (bench.external, `bench evaluate`): aggregation as the benchmark, splits, errors."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bench.data.format import BONES, Dataset, write_manifest
from bench.data.imageio import write_png16
from bench.errors import BenchError
from bench.external import evaluate_dataset
from bench.metrics import NoUsableBoneWarning

# image -> (subject, split, label, bone probabilities; NaN = unusable bone)
IMAGES = {
    "a1": ("s0", "test", 1, [0.9, 0.7] + [np.nan] * 5),
    "a2": ("s0", "test", 1, [0.5, np.nan, 0.6] + [np.nan] * 4),     # the same subject again (other hand)
    "b": ("s1", "test", 0, [0.2] * 7),
    "c": ("s2", "val", 1, [0.4] * 7),
    "d": ("s3", "test", 0, [np.nan] * 7),                           # no usable bone
    "e": ("s4", "test", None, [0.8] * 7),                           # unlabelled: not evaluated
    "f": ("s5", "train", 0, [0.6] * 7),
}


@dataclass
class FakeScreening:
    bone_probability: dict
    status: str

    def row(self) -> dict:
        return {"name": "x", "status": self.status, "probability": np.nanmean(list(self.bone_probability.values()))
                if np.isfinite(list(self.bone_probability.values())).any() else np.nan}


class FakePredictor:
    meta = {"decision": {"threshold": 0.5}}

    def __init__(self):
        self.seen: list[str] = []

    def predict(self, radiographs, names, batch_size=8):
        self.seen += names
        for rad in radiographs:
            assert rad.pixel_spacing_mm == 0.25                      # the manifest's spacing
        return [FakeScreening(dict(zip(BONES, IMAGES[n][3])), "ok" if n != "d" else "withheld") for n in names]


@pytest.fixture()
def cohort(tmp_path) -> Path:
    root = tmp_path / "ext"
    (root / "images").mkdir(parents=True)
    rows = []
    for image_id, (subject, split, label, _) in IMAGES.items():
        write_png16(root / "images" / f"{image_id}.png", np.full((16, 12), 0.5, np.float32))
        rows.append({"image_id": image_id, "subject_id": subject, "path": f"images/{image_id}.png", "split": split,
                     "label": label, "sex": "F", "age": 70, "laterality": "L", "pixel_spacing_mm": 0.25, "site": "X"})
    write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    return root


def test_every_labelled_subject_is_tested_once_with_the_benchmarks_aggregation(cohort):
    fake = FakePredictor()
    with pytest.warns(NoUsableBoneWarning, match="s3"):
        result = evaluate_dataset(fake, Dataset.open(cohort), chunk=2)
    assert sorted(fake.seen) == ["a1", "a2", "b", "c", "d", "f"]                  # unlabelled "e" skipped
    s = result.subjects.set_index("subject_id")
    assert set(s.index) == {"s0", "s1", "s2", "s3", "s5"} and set(s["split"]) == {"test"}
    # s0: ulna (0.9 + 0.5) / 2, radius 0.7, M1 0.6 -> mean of three bones
    assert s.loc["s0", "p_pos"] == pytest.approx(((0.9 + 0.5) / 2 + 0.7 + 0.6) / 3) and s.loc["s0", "n_bones"] == 3
    assert np.isnan(s.loc["s3", "p_pos"]) and s.loc["s3", "n_bones"] == 0 and pd.isna(s.loc["s3", "y_pred"])
    m = result.metrics["test"]
    scored = s[s["p_pos"].notna()]
    assert m["n"] == 4 and m["n_unscored"] == 1
    assert m["auc"] == pytest.approx(roc_auc_score(scored["y_true"].astype(int), scored["p_pos"]))
    assert result.metrics["extra"]["images_withheld"] == 1 and result.metrics["extra"]["images"] == 6
    assert list(result.images["image_id"]) == ["a1", "a2", "b", "c", "d", "f"]


def test_a_manifest_split_and_a_threshold(cohort):
    with pytest.warns(NoUsableBoneWarning):
        result = evaluate_dataset(FakePredictor(), Dataset.open(cohort), split="test", threshold=0.1)
    s = result.subjects.set_index("subject_id")
    assert set(s.index) == {"s0", "s1", "s3"} and set(result.metrics) == {"test", "extra"}
    assert s.loc["s1", "y_pred"] == 1 and result.metrics["test"]["specificity"] == 0.0    # 0.2 > 0.1
    with pytest.raises(BenchError, match=r"no .holdout. split \(it has test, train, val\)"):
        evaluate_dataset(FakePredictor(), Dataset.open(cohort), split="holdout")


def test_a_cohort_without_labels_is_refused(cohort):
    manifest = pd.read_csv(cohort / "manifest.csv")
    manifest["label"] = pd.NA
    manifest.to_csv(cohort / "manifest.csv", index=False)
    with pytest.raises(BenchError, match="has no labels"):
        evaluate_dataset(FakePredictor(), Dataset.open(cohort))


@pytest.mark.filterwarnings("ignore::bench.metrics.NoUsableBoneWarning")
def test_evaluate_refuses_to_replace_an_evaluation_of_another_dataset(cohort, tmp_path, monkeypatch, capsys):
    import shutil

    import methods.bundle
    from bench.cli import main
    from bench.data.format import read_manifest

    fake = FakePredictor()
    fake.meta = {**fake.meta, "source": {"entry": "simclr", "seed": 0}, "format_version": 1}
    monkeypatch.setattr(methods.bundle, "load_bundle", lambda path, device: fake)
    monkeypatch.setattr(methods.bundle, "models_of", lambda meta: [0])
    (tmp_path / "m.osteo").write_bytes(b"bundle")
    other = tmp_path / "other"
    shutil.copytree(cohort, other)
    manifest = read_manifest(other / "manifest.csv")
    write_manifest(manifest.assign(site="Y"), other / "manifest.csv")

    def evaluate(data: Path, *extra: str) -> int:
        return main(["evaluate", str(tmp_path / "m.osteo"), "--data", str(data), "--name", "ext", "--results",
                     str(tmp_path / "results"), "--no-mlflow", "--device", "cpu", *extra])

    run = tmp_path / "results" / "ext" / "simclr" / "seed0"
    assert evaluate(cohort) == 0 and evaluate(cohort) == 0                      # a rerun replaces it
    capsys.readouterr()
    assert evaluate(other) == 2
    err = capsys.readouterr().err
    assert f"{run} already holds an evaluation on another dataset ({cohort.resolve()}" in err
    assert "--overwrite" in err and "Traceback" not in err
    assert str(cohort.resolve()) in (run / "config.json").read_text()            # left as it was
    assert evaluate(other, "--overwrite") == 0 and str(other.resolve()) in (run / "config.json").read_text()
    (run / "config.json").write_text('{"suite": "ext", "entry": "simclr", "seed": 0}')   # a benchmark run
    assert evaluate(other) == 2 and "a run that is not an evaluation" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::bench.metrics.NoUsableBoneWarning")
def test_evaluate_warns_when_the_cohort_is_the_bundles_own_training_data(cohort, tmp_path, monkeypatch, capsys):
    import methods.bundle
    from bench.cli import main

    fake = FakePredictor()
    fake.meta = {**fake.meta, "source": {"entry": "simclr", "seed": 0, "data": {"seg": "/elsewhere",
                                                                               "cls": str(cohort)}},
                 "format_version": 1}
    monkeypatch.setattr(methods.bundle, "load_bundle", lambda path, device: fake)
    monkeypatch.setattr(methods.bundle, "models_of", lambda meta: [0])
    (tmp_path / "m.osteo").write_bytes(b"bundle")
    base = ["evaluate", str(tmp_path / "m.osteo"), "--data", str(cohort), "--results", str(tmp_path / "results"),
            "--no-mlflow", "--device", "cpu"]
    assert main([*base, "--name", "a"]) == 0
    assert "is the `cls` dataset the bundle was trained on" in capsys.readouterr().err
    assert main([*base, "--name", "b", "--split", "test"]) == 0                  # its held-out split: no warning
    assert "trained on" not in capsys.readouterr().err
    evaluation = tmp_path / "results" / "a" / "simclr" / "seed0"                # holds no model to export
    assert main(["export", str(evaluation), "--out", str(tmp_path / "x.osteo")]) == 2
    assert "is an external evaluation (`bench evaluate`" in capsys.readouterr().err


def test_exclude_seen_leaves_out_the_subjects_of_fitted_images_and_needs_the_digests(cohort):
    from bench.data.digests import pixel_digest
    from bench.data.imageio import read_image

    dataset = Dataset.open(cohort)
    digest = {i: pixel_digest(read_image(dataset.image_path(i)).pixels) for i in ("a1", "b")}
    assert digest["a1"] == digest["b"]                   # the fixture's images are all alike: make one differ
    write_png16(dataset.image_path("b"), np.full((16, 12), 0.25, np.float32))
    digest["b"] = pixel_digest(read_image(dataset.image_path("b")).pixels)
    fake = FakePredictor()
    with pytest.raises(BenchError, match="records no digests"):
        evaluate_dataset(fake, dataset, exclude_seen=True)
    fake.meta = {**fake.meta, "training_images": {"fit": {digest["b"]: "cls train"},
                                                  "held_out": {digest["a1"]: "cls test"}}}
    with pytest.warns(NoUsableBoneWarning):
        plain = evaluate_dataset(fake, dataset)
        excluded = evaluate_dataset(fake, dataset, exclude_seen=True)
    seen = plain.images.set_index("image_id")[["seen", "seen_as"]]
    assert seen.loc["b"].tolist() == ["fit", "cls train"] and (seen.drop("b")["seen"] == "held_out").all()
    assert set(plain.subjects["subject_id"]) - set(excluded.subjects["subject_id"]) == {"s1"}   # b's subject
    extra = excluded.metrics["extra"]
    assert (extra["images_seen_fit"], extra["images_seen_held_out"], extra["subjects_excluded"]) == (1, 5, 1)
    assert extra["images"] == 5 and plain.metrics["extra"]["subjects_excluded"] == 0
    assert excluded.images.set_index("image_id")["excluded"].tolist() == [i == "b" for i in excluded.images["image_id"]]


def test_an_interrupted_evaluation_resumes_with_the_screenings_it_had(cohort, tmp_path):
    """A journal keeps each image's screening; the rerun screens the rest, and an image whose manifest
    spacing changed again; the metrics equal an uninterrupted evaluation's."""
    from bench.predict_journal import Journal

    class Interrupting(FakePredictor):
        def predict(self, radiographs, names, batch_size=8):
            if len(self.seen) >= 2:
                raise KeyboardInterrupt
            return super().predict(radiographs, names, batch_size)

    dataset = Dataset.open(cohort)
    with pytest.warns(NoUsableBoneWarning):
        whole = evaluate_dataset(FakePredictor(), dataset, chunk=2)
    journal = Journal(tmp_path / "seed0", "k")
    journal.open()
    with pytest.raises(KeyboardInterrupt):                                   # one chunk of 4 images, batches of 1
        evaluate_dataset(Interrupting(), dataset, chunk=4, batch_size=1, journal=journal)
    assert Journal(tmp_path / "seed0", "k").open() == 2                      # a1, a2 kept: saved batch by batch
    again = FakePredictor()
    with pytest.warns(NoUsableBoneWarning):
        resumed = evaluate_dataset(again, dataset, chunk=2, journal=journal)
    assert again.seen == ["b", "c", "d", "f"]                                 # a1, a2 from the journal
    assert resumed.metrics == whole.metrics
    pd.testing.assert_frame_equal(resumed.subjects, whole.subjects)
    pd.testing.assert_frame_equal(resumed.images, whole.images)
    manifest = dataset.manifest.copy()
    manifest.loc[manifest["image_id"] == "b", "laterality"] = "R"           # what the screening reads changed
    write_manifest(manifest, cohort / "manifest.csv")
    changed = FakePredictor()
    with pytest.warns(NoUsableBoneWarning):
        evaluate_dataset(changed, Dataset.open(cohort), chunk=2, journal=journal)
    assert changed.seen == ["b"]
    assert Journal(tmp_path / "seed0", "another key").open() == 0            # another bundle or options: afresh
