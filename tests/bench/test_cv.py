"""k-fold cross-validation: fold splits, split-free stage keys, the fold runs and their pooling (bench.cv)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cli_calls import bench

from bench import cv, registry, results as store
from bench.config import resolve
from bench.data.folds import apply_fold, cv_splits, fold_names, fold_of
from bench.errors import BenchError
from bench.runner import Runner
from bench.fingerprint import Fingerprint, dataset_fingerprint
from bench.stage import stage_key


@pytest.fixture(autouse=True)
def toy_registered():
    registry.load_entries(["toy_entries"])


def _manifest(n_subjects: int = 45, seed: int = 0) -> pd.DataFrame:
    """Some subjects with two images; about a third positive."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_subjects):
        label = int(rng.random() < 0.33)
        for j in range(1 + (i % 4 == 0)):
            rows.append({"image_id": f"s{i:03d}-{j}", "subject_id": f"s{i:03d}", "label": label, "split": "train"})
    return pd.DataFrame(rows)


def test_folds_hold_out_every_subject_once_and_keep_subjects_whole():
    m = _manifest()
    tested = []
    for k in range(5):
        split = cv_splits(m, 5, k, seed=3)
        per_subject = split.groupby(m["subject_id"]).nunique()
        assert (per_subject == 1).all()                                  # no subject in two splits
        test = set(m.loc[split == "test", "subject_id"])
        tested += sorted(test)
        rest = m.loc[split != "test"].drop_duplicates("subject_id")
        n_val = int((split[rest.index] == "val").sum())
        for label in (0, 1):                                              # 80:10 within the other folds, per stratum
            stratum = rest[rest["label"] == label]
            val = int((split[stratum.index] == "val").sum())
            assert abs(val - len(stratum) / 9) <= 1
        assert n_val >= 1 and set(split) == {"train", "val", "test"}
    assert sorted(tested) == sorted(m["subject_id"].unique())             # each subject tested exactly once
    assert cv_splits(m, 5, 2, seed=3).equals(cv_splits(m, 5, 2, seed=3))  # fixed by the seed
    assert not cv_splits(m, 5, 2, seed=3).equals(cv_splits(m, 5, 2, seed=4))


def test_fold_column_is_used_and_checked():
    m = _manifest()
    m["fold"] = m["subject_id"].str[1:].astype(int) % 3
    assert fold_of(m, 3, seed=0).tolist() == m["fold"].tolist()
    assert set(apply_fold(m, 3, 1, 0).loc[m["fold"] == 1, "split"]) == {"test"}
    assert (m["split"] == "train").all()                                   # the original is untouched
    with pytest.raises(BenchError, match="not the folds 0..4"):
        fold_of(m, 5, seed=0)
    crossing = m.copy()
    crossing.loc[crossing["image_id"] == "s000-1", "fold"] = 2
    with pytest.raises(BenchError, match="in two folds"):
        fold_of(crossing, 3, seed=0)
    with pytest.raises(BenchError, match="not one of the folds"):
        cv_splits(m, 3, 3, seed=0)


def test_leave_one_site_out_folds():
    m = _manifest(30).assign(site=lambda f: np.where(f["subject_id"].str[1:].astype(int) < 12, "north", "east"))
    assert fold_of(m, 2, seed=0, by="site").tolist() == (m["site"] == "north").astype(int).tolist()  # sorted
    assert fold_names(m, 2, "site") == ["east", "north"]
    split = cv_splits(m, 2, 1, seed=0, by="site")
    assert set(split[m["site"] == "north"]) == {"test"} and "test" not in set(split[m["site"] == "east"])
    with pytest.raises(BenchError, match="run with --folds 2"):
        fold_of(m, 3, seed=0, by="site")
    with pytest.raises(BenchError, match="not a column"):
        fold_of(m, 2, seed=0, by="scanner")
    blank = m.copy()
    blank.loc[0, "site"] = " "
    with pytest.raises(BenchError, match="no 'site'"):
        fold_of(blank, 2, seed=0, by="site")
    moved = m.copy()
    moved.loc[moved["image_id"] == "s000-1", "site"] = "east"        # one subject imaged at both sites
    with pytest.raises(BenchError, match="in two folds"):
        fold_of(moved, 2, seed=0, by="site")


def test_stages_that_read_no_split_keep_their_key_across_folds():
    from baselines.entries import LANDMARKS, RADIOGRAMMETRY
    from methods.pipeline import EXTRACT, PRETRAIN, PROBE, SEGMENT

    seg = Fingerprint("seg-full", "seg-content")
    folds = [{"seg": seg, "cls": Fingerprint(f"cls-fold{k}", "cls-content")} for k in range(2)]

    def keys(stage, config):
        return {stage_key(stage, config, 0, {i: "x" for i in stage.inputs}, f, "cpu")[0] for f in folds}
    simclr, supcon = resolve("smoke", sets=["ssl.method=simclr"]), resolve("smoke", sets=["ssl.method=supcon"])
    for shared in (SEGMENT, EXTRACT, LANDMARKS):
        assert len(keys(shared, simclr)) == 1, shared.name
    assert len(keys(PRETRAIN, simclr)) == 1                 # SimCLR reads no `cls` split
    assert len(keys(PRETRAIN, supcon)) == 2                 # SupCon adds the `cls` train patches
    for per_fold in (PROBE, RADIOGRAMMETRY):
        assert len(keys(per_fold, simclr)) == 2, per_fold.name
    other_seg_split = {"seg": Fingerprint("seg-full-2", "seg-content"), "cls": folds[0]["cls"]}
    assert stage_key(SEGMENT, simclr, 0, {}, other_seg_split, "cpu")[0] != \
        stage_key(SEGMENT, simclr, 0, {}, folds[0], "cpu")[0]          # the `seg` split it does read


def test_fingerprints_without_folds_are_unchanged_and_content_ignores_the_split(tiny_dataset):
    fp = Fingerprint.of(tiny_dataset)
    assert fp.full == dataset_fingerprint(tiny_dataset)
    manifest = pd.read_csv(tiny_dataset / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["split"] = manifest["split"].iloc[::-1].to_numpy()
    manifest.to_csv(tiny_dataset / "manifest.csv", index=False)
    again = Fingerprint.of(tiny_dataset)
    assert again.content == fp.content and again.full != fp.full
    manifest.loc[0, "label"] = str(1 - int(manifest.loc[0, "label"]))
    manifest.to_csv(tiny_dataset / "manifest.csv", index=False)
    assert Fingerprint.of(tiny_dataset).content != fp.content


def test_patch_store_takes_the_split_of_the_run_datasets(tmp_path):
    from bench.data.format import Dataset
    from methods.patch_store import PatchStore

    index = pd.DataFrame({"image_id": ["a", "a", "b", "c"], "role": ["cls", "cls", "cls", "seg"],
                          "split": ["train", "train", "train", "val"]})
    st = PatchStore(root=tmp_path, index=index, array=np.zeros((4, 2, 2), np.uint16), meta={})
    cls = Dataset(root=tmp_path, manifest=pd.DataFrame({"image_id": ["a", "b"], "split": ["test", "val"]}),
                  annotators=pd.DataFrame())
    relabelled = st.with_splits({"cls": cls})
    assert relabelled.index["split"].tolist() == ["test", "test", "val", "val"]
    assert st.index["split"].tolist() == ["train", "train", "train", "val"]
    with pytest.raises(BenchError, match="lacks"):
        st.with_splits({"cls": Dataset(root=tmp_path, manifest=cls.manifest.iloc[:1], annotators=pd.DataFrame())})


def test_data_folds_without_fold_runner_is_refused(tmp_path, tiny_dataset):
    runner = Runner(tmp_path / "r", suite="t", profile="smoke", data_seg=str(tiny_dataset),
                    data_cls=str(tiny_dataset), sets=["data.folds=3"], device="cpu", progress=False)
    with pytest.raises(BenchError, match="--folds 3"):
        runner.run(["toy"], [0])
    with pytest.raises(BenchError, match="data.fold = 3"):
        resolve("smoke", sets=["data.folds=3", "data.fold=3"])
    with pytest.raises(BenchError, match="data.folds = 1"):
        resolve("smoke", sets=["data.folds=1"])


def _cli(tmp_path: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    """`bench run` of the toy entry, two seeds, in this process (tests/cli_calls.py)."""
    return bench("run", "--entry", "toy", "--name", "t", "--seeds", "0", "1", "--results", str(tmp_path / "results"),
                 "--data-seg", str(data), "--data-cls", str(data), "--device", "cpu", "--plugin", "toy_entries",
                 *extra, env={"TOY_LOG": str(tmp_path / "toy.log")})


def test_cli_folds_run_each_fold_and_pool_out_of_fold_predictions(tmp_path, tiny_dataset):
    partial = _cli(tmp_path, tiny_dataset, "--folds", "3", "--fold", "0", "--no-mlflow")
    assert partial.returncode == 0, partial.stderr
    assert "nothing pooled yet: every run waits for folds still to run" in partial.stdout
    assert not (tmp_path / "results" / "t-cv3").exists()

    done = _cli(tmp_path, tiny_dataset, "--folds", "3")            # with MLflow
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "toy.log").read_text().split()
    assert log.count("toy_prep") == 2                  # one per seed, shared by the folds (reads no split)
    assert log.count("toy_probe") == 6                 # one per (fold, seed)
    manifest = pd.read_csv(tiny_dataset / "manifest.csv", dtype={"subject_id": str})
    results = tmp_path / "results"
    for seed in (0, 1):
        pooled = store.read_run(store.run_dir(results, "t-cv3", "toy", seed))
        preds = pooled.predictions
        assert sorted(preds["subject_id"]) == sorted(manifest["subject_id"])   # each subject exactly once
        assert set(preds["split"]) == {"test"}
        for k in range(3):
            fold_run = store.read_run(store.run_dir(results, f"t-fold{k}", "toy", seed))
            test = fold_run.predictions[fold_run.predictions["split"] == "test"]
            assert sorted(preds.loc[preds["fold"] == k, "subject_id"]) == sorted(test["subject_id"])
            assert pooled.metrics[f"fold{k}"]["auc"] == pytest.approx(fold_run.metrics["test"]["auc"])
            assert fold_run.config["config"]["data"]["fold"] == k
            assert fold_run.config["cv"] == {"folds": 3, "fold": k, "holds_out": f"fold {k}"}
        assert pooled.metrics["test"]["auc"] == pytest.approx(roc_auc_score(preds["y_true"], preds["p_pos"]))
        assert pooled.config["config"]["data"]["fold"] == "all"

    from bench.tracking import Tracker
    client = Tracker(results).client
    exp = client.get_experiment_by_name("osteobench/t-cv3")
    children = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["osteobench.seed"] for r in children) == ["0", "1"]

    again = _cli(tmp_path, tiny_dataset, "--folds", "3", "--no-mlflow")
    assert again.returncode == 0 and "unchanged" in again.stdout
    assert len((tmp_path / "toy.log").read_text().split()) == len(log)      # nothing recomputed

    before = store.read_run(store.run_dir(results, "t-cv3", "toy", 0)).config["run_key"]
    changed = _cli(tmp_path, tiny_dataset, "--folds", "3", "--fold", "0", "--set", "run.num_threads=1", "--no-mlflow")
    assert changed.returncode == 0, changed.stderr
    assert "outdated" in changed.stdout and "rerun with these options" in changed.stdout   # folds 1, 2: old options
    assert store.read_run(store.run_dir(results, "t-cv3", "toy", 0)).config["run_key"] == before

    bad = _cli(tmp_path, tiny_dataset, "--folds", "3", "--fold", "3", "--no-mlflow")
    assert bad.returncode == 2 and "not one of the folds 0..2" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_leave_one_site_out_names_the_sites_and_refuses_a_wrong_fold_count(tmp_path, tiny_dataset):
    manifest = pd.read_csv(tiny_dataset / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["site"] = np.where(np.arange(len(manifest)) % 3 == 0, "B", "A")
    manifest.to_csv(tiny_dataset / "manifest.csv", index=False)
    wrong = _cli(tmp_path, tiny_dataset, "--folds", "3", "--set", "data.fold_by=site", "--no-mlflow")
    assert wrong.returncode == 2 and "run with --folds 2" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not (tmp_path / "toy.log").exists()                                  # nothing ran
    from bench.metrics import SingleClassWarning

    with pytest.warns(SingleClassWarning, match=r"1 class\(es\) among 2 scored subjects"):  # a fold's val split
        ok = _cli(tmp_path, tiny_dataset, "--folds", "2", "--set", "data.fold_by=site", "--no-mlflow")
    assert ok.returncode == 0, ok.stderr
    assert "held out: 0: A, 1: B" in ok.stdout
    pooled = store.read_run(store.run_dir(tmp_path / "results", "t-cv2", "toy", 0))
    site_of = dict(zip(manifest["subject_id"], manifest["site"]))
    assert {site_of[s] for s in pooled.predictions.loc[pooled.predictions["fold"] == 1, "subject_id"]} == {"B"}
    assert [f["holds_out"] for f in pooled.config["fold_runs"]] == ["A", "B"]
    shown = bench("show", str(store.run_dir(tmp_path / "results", "t-cv2", "toy", 0)))
    assert shown.returncode == 0 and "(fold0: A, fold1: B)" in shown.stdout
    assert {"fold0", "fold1", "test"} <= {line.split()[0] for line in shown.stdout.splitlines()[2:] if line.strip()}


def test_pooling_refuses_folds_that_overlap(tmp_path, tiny_dataset):
    results = tmp_path / "results"
    for k in range(2):   # two "folds" run with the manifest's own split: the same test subjects twice
        Runner(results, suite=f"t-fold{k}", profile="smoke", data_seg=str(tiny_dataset), data_cls=str(tiny_dataset),
               device="cpu", progress=False).run(["toy"], [0])
    with pytest.raises(BenchError, match="test split of folds"):
        cv.pool(results, "t", 2, "toy", 0)


def test_pooling_refuses_folds_that_leave_a_subject_out():
    import types

    def run(test: list[str], train: list[str]) -> types.SimpleNamespace:
        rows = [{"subject_id": s, "split": split, "y_true": 0, "p_pos": 0.2}
                for split, ids in (("test", test), ("train", train)) for s in ids]
        return types.SimpleNamespace(predictions=pd.DataFrame(rows))

    pooled = cv.pooled_predictions([run(["a", "b"], ["c", "d"]), run(["c", "d"], ["a", "b"])])
    assert pooled["subject_id"].tolist() == ["a", "b", "c", "d"] and pooled["fold"].tolist() == [0, 0, 1, 1]
    with pytest.raises(BenchError, match=r"1 subjects \(e.g. \['b'\]\) are in no fold's test split"):
        cv.pooled_predictions([run(["a"], ["b", "c", "d"]), run(["c", "d"], ["a", "b"])])


def test_tune_refuses_a_cross_validated_config(tmp_path):
    out = bench("tune", "--target", "seg", "--trials", "1", "--study", "s", "--results", str(tmp_path / "r"),
                "--set", "data.folds=3")
    assert out.returncode == 2 and "cross-validates" in out.stderr and "Traceback" not in out.stderr


def test_show_gives_the_delong_interval_of_each_row_subjects():
    from bench.commands.show import subset
    from bench.subgroups import auc_interval
    from bench.stats import delong_ci

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 60), 0, 1)
    preds = pd.DataFrame({"subject_id": [f"s{i}" for i in range(60)], "split": "test", "y_true": y, "p_pos": p,
                          "fold": np.arange(60) % 3})
    _, low, high = delong_ci(y, p)
    assert auc_interval(subset(preds, "test")) == f"{low:.3f}-{high:.3f}"
    one = preds["fold"] == 1
    _, low, high = delong_ci(y[one], p[one])
    assert auc_interval(subset(preds, "fold1")) == f"{low:.3f}-{high:.3f}"
    assert auc_interval(subset(preds.assign(y_true=0), "test")) == "-"          # one class: undefined
    assert auc_interval(subset(preds.assign(y_true=[1] + [0] * 59), "test")) == "-"   # one positive: no variance
