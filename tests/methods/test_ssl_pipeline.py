"""Pretraining, probe and supervised stages on smoke phantoms, with exact-mask patches (no segmentation)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.config import resolve
from bench.data.format import Dataset
from bench.data.phantom import synthesize
from methods.patch_store import PatchStore
from methods.pipeline import EXTRACT, PRETRAIN, PROBE, PROBE_WHOLE, SUPERVISED
from methods.ssl.pretrain import load_encoder, pretraining_set
from stage_runs import run_cpu_stage


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssl")
    datasets = {"seg": Dataset.open(synthesize(root / "pub", "public", "smoke", seed=1)),
                "cls": Dataset.open(synthesize(root / "cli", "clinical", "smoke", seed=1))}
    return root, datasets


def _cfg(**sets):
    base = {"patches.source": "truth", "ssl.epochs": 1, "ssl.max_steps_per_epoch": 2, "ssl.batch_size": 16,
            "probe.epochs": 4, "supervised.epochs": 1, "supervised.input_size": 32, "run.device": "cpu"}
    return resolve("smoke", sets={**base, **sets})


@pytest.fixture(scope="module")
def patches(env):
    return run_cpu_stage(EXTRACT, _cfg(), env, {})


def test_supcon_pretraining_set_adds_labelled_cls_train_patches(patches):
    store = PatchStore.open(patches)
    seg_rows, seg_labels = pretraining_set(store, use_cls_train=False)
    all_rows, labels = pretraining_set(store, use_cls_train=True)
    idx = store.index.set_index("row")
    assert set(idx.loc[seg_rows, "role"]) == {"seg"} and (seg_labels == -1).all()
    extra = all_rows[len(seg_rows):]
    assert set(idx.loc[extra, "role"]) == {"cls"} and set(idx.loc[extra, "split"]) == {"train"}
    assert (labels[len(seg_rows):] == idx.loc[extra, "label"].astype(int).to_numpy()).all()
    assert not idx.loc[all_rows, "missing"].any()


@pytest.mark.parametrize("method", ["simclr", "supcon", "swav", "vicreg"])
def test_each_ssl_method_pretrains_with_finite_loss(env, patches, method, monkeypatch, capsys):
    cfg = _cfg(**{"ssl.method": method})
    monkeypatch.setenv("OSTEOBENCH_EPOCH_LINES", "1")
    out = run_cpu_stage(PRETRAIN, cfg, env, {"extract": patches})
    history = pd.read_parquet(out / "history.parquet")
    assert np.isfinite(history["value"]).all() and (history["metric"] == "ssl_loss").all()
    lines = capsys.readouterr().err.splitlines()      # one line per epoch, the logged loss
    assert [x.split(":")[0] for x in lines] == [f"ssl pretraining ({method}) epoch {e + 1}/{cfg.ssl.epochs}"
                                                for e in range(cfg.ssl.epochs)]
    assert all(f"ssl_loss {v:.4g}," in x for x, v in zip(lines, history.sort_values("epoch")["value"]))
    trained = load_encoder(out)
    torch.manual_seed(0)
    from methods.encoders import build_encoder

    fresh = build_encoder(cfg.ssl.encoder)
    w_trained = trained.state_dict()["conv1.weight"]
    assert w_trained.shape == fresh.state_dict()["conv1.weight"].shape
    if method == "simclr":  # same seed → same encoder: rerunning the stage elsewhere reproduces it bit for bit
        again = run_cpu_stage(PRETRAIN, cfg, (env[0] / "again", env[1]), {"extract": patches})
        assert torch.equal(load_encoder(again).state_dict()["conv1.weight"], w_trained)
        assert not torch.equal(fresh.state_dict()["conv1.weight"], w_trained)


RESUMED = {"swav": {"ssl.method": "swav"}, "simclr": {"ssl.method": "simclr"},
           "swav-queue": {"ssl.method": "swav", "ssl.swav_queue": 32, "ssl.swav_queue_start": 1}}


@pytest.mark.parametrize("name", list(RESUMED))
def test_interrupted_pretraining_resumes_to_the_same_encoder(env, patches, monkeypatch, name):
    """Killed after epoch 1 (its state saved at every epoch end), rerun: the same encoder and loss history
    as without the interruption; the state is removed once the stage completes. (SwAV: the prototypes
    are frozen in epoch 0 only, so the resumed epochs must know where they are; with a queue of two
    batches, filled in epoch 0 and used from epoch 1, the resumed epoch 1 must find it full.) Two epochs:
    the resumed run starts from epoch 0's state and trains the last epoch."""
    from bench.stage import StageContext

    cfg = _cfg(**RESUMED[name], **{"ssl.epochs": 2, "checkpoint.minutes": 1e-9})
    whole = run_cpu_stage(PRETRAIN, cfg, (env[0] / f"whole-{name}", env[1]), {"extract": patches})
    original = StageContext.log

    def interrupted(self, metric, value, epoch=None):
        original(self, metric, value, epoch)
        if epoch == 1:
            raise KeyboardInterrupt                 # after epoch 1's loss, before its save
    monkeypatch.setattr(StageContext, "log", interrupted)
    root = (env[0] / f"resumed-{name}", env[1])
    with pytest.raises(KeyboardInterrupt):
        run_cpu_stage(PRETRAIN, cfg, root, {"extract": patches})
    states = list((root[0] / "cache" / "pretrain").glob(".*.resume/state.pt"))
    assert len(states) == 1
    if cfg.ssl.swav_queue:                              # saved after epoch 0: the queue full, not used yet
        saved = torch.load(states[0], weights_only=False)["state"]["parts"]["queue"]
        assert saved["_extra_state"]["count"] == 32 and saved["queue"].abs().sum() > 0
    monkeypatch.setattr(StageContext, "log", original)
    resumed = run_cpu_stage(PRETRAIN, cfg, root, {"extract": patches})
    a, b = load_encoder(whole).state_dict(), load_encoder(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(pd.read_parquet(whole / "history.parquet"),
                                  pd.read_parquet(resumed / "history.parquet"))
    assert len(pd.read_parquet(resumed / "history.parquet")) == 2 and not states[0].parent.exists()


def test_probe_writes_bone_predictions_for_every_usable_cls_patch(env, patches):
    cfg = _cfg()
    pre = run_cpu_stage(PRETRAIN, cfg, env, {"extract": patches})
    out = run_cpu_stage(PROBE, cfg, env, {"extract": patches, "pretrain": pre})
    preds = pd.read_parquet(out / "bone_predictions.parquet")
    store = PatchStore.open(patches)
    usable = store.present(role="cls")
    assert len(preds) == len(usable)
    assert set(preds["split"]) == {"train", "val", "test"}
    assert preds["p_pos"].between(0, 1).all()
    history = pd.read_parquet(out / "history.parquet")
    assert set(history["metric"]) >= {"train_loss", "val_macro_f1"}


def test_whole_image_probe_gives_one_prediction_per_subject(env, patches):
    cfg = _cfg()
    pre = run_cpu_stage(PRETRAIN, cfg, env, {"extract": patches})
    out = run_cpu_stage(PROBE_WHOLE, cfg, env, {"pretrain": pre})
    preds = pd.read_parquet(out / "predictions.parquet")
    manifest = env[1]["cls"].manifest
    assert sorted(preds["subject_id"]) == sorted(manifest["subject_id"])


def test_supervised_stage_trains_end_to_end(env, patches):
    out = run_cpu_stage(SUPERVISED, _cfg(), env, {"extract": patches})
    preds = pd.read_parquet(out / "bone_predictions.parquet")
    assert len(preds) == len(PatchStore.open(patches).present(role="cls"))


def test_a_subject_with_two_radiographs_counts_once(env, tmp_path):
    """Two images of one subject (both hands, a follow-up): one row per (subject, bone), their mean."""
    import shutil

    from bench.metrics import aggregate_subjects
    from bench.run_evaluation import evaluate

    root, datasets = env
    cls_dir = tmp_path / "cli"
    shutil.copytree(datasets["cls"].root, cls_dir)
    manifest = pd.read_csv(cls_dir / "manifest.csv", dtype={"subject_id": str})
    train = manifest[manifest["split"] == "train"]
    pair = train[train["label"] == train["label"].iloc[0]].index[:2]
    manifest.loc[pair[1], "subject_id"] = manifest.loc[pair[0], "subject_id"]     # one subject, two images
    manifest.to_csv(cls_dir / "manifest.csv", index=False)
    twice = (tmp_path, {"seg": datasets["seg"], "cls": Dataset.open(cls_dir)})   # its own stage cache
    cfg = _cfg()
    extract = run_cpu_stage(EXTRACT, cfg, twice, {})
    pre = run_cpu_stage(PRETRAIN, cfg, twice, {"extract": extract})
    out = run_cpu_stage(PROBE, cfg, twice, {"extract": extract, "pretrain": pre})
    preds = pd.read_parquet(out / "bone_predictions.parquet")
    assert not preds.duplicated(["subject_id", "bone"]).any()
    per_patch = PatchStore.open(extract).present(role="cls")
    assert len(preds) < len(per_patch)
    subjects, metrics = evaluate(out)
    assert sorted(subjects["subject_id"]) == sorted(manifest["subject_id"].unique())
    assert metrics["train"]["n"] == manifest.loc[manifest["split"] == "train", "subject_id"].nunique()
    assert subjects.equals(aggregate_subjects(preds))
    whole = run_cpu_stage(PROBE_WHOLE, cfg, twice, {"pretrain": pre})
    assert sorted(pd.read_parquet(whole / "predictions.parquet")["subject_id"]) == sorted(manifest["subject_id"].unique())
