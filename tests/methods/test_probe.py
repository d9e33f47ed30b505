"""Linear probe: selection by subject-level validation macro-F1 (eq. 10), predictions for every split."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.data import BONES
from bench.errors import BenchError
from bench.metrics import aggregate_subjects, average_images, classification_metrics
from methods.probe import ProbeConfig, subject_metrics, subject_probabilities, train_probe


def _bones(n_subjects=80, signal=1.0, seed=0, dim=16):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n_subjects) < 0.35).astype(int)
    splits = np.array(["train"] * int(n_subjects * 0.6) + ["val"] * int(n_subjects * 0.2)
                      + ["test"] * (n_subjects - int(n_subjects * 0.6) - int(n_subjects * 0.2)))
    rows, feats = [], []
    for s in range(n_subjects):
        for bone in BONES:
            rows.append({"subject_id": f"s{s}", "split": splits[s], "bone": bone, "label": labels[s]})
            f = rng.normal(size=dim)
            f[0] += signal * (2 * labels[s] - 1)
            feats.append(f)
    return torch.tensor(np.array(feats), dtype=torch.float32), pd.DataFrame(rows)


def test_selected_epoch_is_best_validation_macro_f1_and_consistent():
    x, index = _bones(signal=0.6)
    res = train_probe(x, index, ProbeConfig(epochs=15, lr=1e-2), torch.Generator().manual_seed(0))
    f1s = [h["val_macro_f1"] for h in res.history]
    assert res.best_epoch == int(np.nanargmax(f1s))
    subjects = aggregate_subjects(res.bone_predictions)
    val = subjects[subjects.split == "val"]
    m = classification_metrics(val.y_true.to_numpy(dtype=float), val.p_pos.to_numpy())
    assert m["macro_f1"] == pytest.approx(f1s[res.best_epoch])
    assert set(res.bone_predictions.split) == {"train", "val", "test"}
    assert len(res.bone_predictions) == len(index)


def test_separable_features_give_high_test_auc_and_are_deterministic():
    x, index = _bones(signal=4.0, seed=1)
    cfg = ProbeConfig(epochs=10, lr=1e-2)
    a = train_probe(x, index, cfg, torch.Generator().manual_seed(5))
    b = train_probe(x, index, cfg, torch.Generator().manual_seed(5))
    pd.testing.assert_frame_equal(a.bone_predictions, b.bone_predictions)
    subj = aggregate_subjects(a.bone_predictions)
    test = subj[subj.split == "test"]
    assert classification_metrics(test.y_true.to_numpy(dtype=float), test.p_pos.to_numpy())["auc"] > 0.9


def _reported(bone_predictions: pd.DataFrame) -> pd.DataFrame:
    """Subjects as the reported results aggregate them (bench.run_evaluation.evaluate on bone_predictions)."""
    return aggregate_subjects(average_images(bone_predictions))


def test_validation_counts_each_bone_of_a_subject_with_two_radiographs_once():
    """Subject a: image 1 has ulna 0.3 and radius 0.9, image 2 only ulna 0.1. Reported (eq. 10 after
    averaging the images per bone): (0.2 + 0.9) / 2 = 0.55, positive; a plain mean over the three rows
    would give 0.433, negative, and select epochs on a different number than the one reported."""
    rows = pd.DataFrame({"subject_id": ["a", "a", "a", "b"], "split": "val",
                         "bone": ["ulna", "radius", "ulna", "ulna"], "label": [1, 1, 1, 0]})
    p = np.array([0.3, 0.9, 0.1, 0.2])
    reported = _reported(rows.rename(columns={"label": "y_true"}).assign(p_pos=p)).set_index("subject_id")
    assert reported.loc["a", "p_pos"] == pytest.approx(0.55)
    val = subject_probabilities(rows, p).set_index("subject_id")
    assert val["p_pos"].to_dict() == pytest.approx(reported["p_pos"].to_dict())
    m = subject_metrics(rows, p)
    assert m["macro_f1"] == pytest.approx(1.0) and m["recall"] == pytest.approx(1.0)


def test_whole_image_rows_average_per_subject():
    rows = pd.DataFrame({"subject_id": ["a", "a", "b"], "split": "val", "bone": "whole", "label": [1, 1, 0]})
    val = subject_probabilities(rows, np.array([0.2, 0.6, 0.3])).set_index("subject_id")
    assert val["p_pos"].to_dict() == pytest.approx({"a": 0.4, "b": 0.3})


def test_selected_validation_score_is_the_reported_one_with_two_radiographs_per_subject():
    """Every subject has a second radiograph with only some bones: the history's val macro-F1 and AUC of the
    kept epoch equal the reported val metrics of the kept head's bone predictions."""
    x, index = _bones(n_subjects=60, signal=0.5, seed=3)
    rng = np.random.default_rng(3)
    second = index[index["bone"].isin(["ulna", "M3"])]
    extra = torch.tensor(rng.normal(size=(len(second), x.shape[1])), dtype=torch.float32)
    extra[:, 0] += 0.5 * (2 * torch.tensor(second["label"].to_numpy()) - 1)
    x, index = torch.cat([x, extra]), pd.concat([index, second], ignore_index=True)
    res = train_probe(x, index, ProbeConfig(epochs=6, lr=1e-2), torch.Generator().manual_seed(0))
    subjects = _reported(res.bone_predictions)
    val = subjects[subjects.split == "val"]
    m = classification_metrics(val.y_true.to_numpy(dtype=float), val.p_pos.to_numpy())
    best = res.history[res.best_epoch]
    assert (best["val_macro_f1"], best["val_auc"]) == pytest.approx((m["macro_f1"], m["auc"]), abs=1e-12)


def test_single_class_train_split_is_a_clear_error():
    x, index = _bones()
    index["label"] = 0
    with pytest.raises(BenchError, match="single class"):
        train_probe(x, index, ProbeConfig(epochs=1), torch.Generator().manual_seed(0))


def test_no_labelled_validation_subject_is_a_clear_error():
    """Without one, every epoch would score NaN and the first be kept silently (probe and supervised)."""
    from methods.supervised import SupervisedConfig, fit_end_to_end

    x, index = _bones()
    index.loc[index["split"] == "val", "label"] = np.nan
    with pytest.raises(BenchError, match="no labelled subject"):
        train_probe(x, index, ProbeConfig(epochs=1), torch.Generator().manual_seed(0))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(BenchError, match="no labelled subject"):
        fit_end_to_end(model, torch.zeros(len(index), 1, 2, 2), index, SupervisedConfig(epochs=1),
                       torch.Generator().manual_seed(0), "cpu", prepare=lambda raw, flips: raw)


def test_supervised_end_to_end_learns_a_visible_signal(monkeypatch, capsys):
    """...and prints one line per epoch with OSTEOBENCH_EPOCH_LINES=1 (its history's values)."""
    from methods.encoders import build_encoder
    from methods.supervised import SupervisedConfig, train_supervised

    rng = np.random.default_rng(0)
    n_subjects = 40
    labels = np.array([0, 1] * (n_subjects // 2))
    splits = np.array(["train"] * 24 + ["val"] * 8 + ["test"] * 8)
    rows, imgs = [], []
    for s in range(n_subjects):
        for bone in ("M2", "radius"):
            img = rng.normal(0.3, 0.05, (32, 32))
            if labels[s]:
                img[8:24, 8:24] += 0.4  # positives carry a bright square
            rows.append({"subject_id": f"s{s}", "split": splits[s], "bone": bone, "label": labels[s]})
            imgs.append(np.clip(img, 0, 1))
    patches = torch.tensor(np.array(imgs), dtype=torch.float32)
    torch.manual_seed(0)
    cfg = SupervisedConfig(epochs=8, lr=3e-3, batch_size=8, input_size=32)
    monkeypatch.setenv("OSTEOBENCH_EPOCH_LINES", "1")
    res = train_supervised(build_encoder("resnet18"), patches, pd.DataFrame(rows), cfg,
                           torch.Generator().manual_seed(0))
    assert res.best_epoch == select_best_index(res.history)
    lines = capsys.readouterr().err.splitlines()
    assert [x.split(":")[0] for x in lines] == [f"supervised epoch {e}/8" for e in range(1, 9)]
    assert all(f"train_loss {h['train_loss']:.4g}, val_macro_f1 {h['val_macro_f1']:.4g}," in x
               for x, h in zip(lines, res.history))
    subj = aggregate_subjects(res.bone_predictions)
    test = subj[subj.split == "test"]
    assert classification_metrics(test.y_true.to_numpy(dtype=float), test.p_pos.to_numpy())["auc"] >= 0.9


def select_best_index(history):
    from bench.metrics import select_best

    return select_best(history)
