"""Annotator agreement: the weighted vote and the Dice table by hand; on a phantom the consensus comes
closer to the truth than a single annotator; the CLI writes the table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.data.format import BONES, Dataset
from bench.data.phantom import PhantomConfig, synthesize
from bench.errors import BenchError
from methods.segmentation.agreement import consensus, dataset_agreement, image_agreement

M2 = BONES["M2"]


def test_weighted_vote_by_hand():
    a = np.array([[0, M2, M2]], dtype=np.uint8)
    b = np.array([[M2, 0, M2]], dtype=np.uint8)
    c = np.array([[M2, 0, 0]], dtype=np.uint8)
    # pixel 0: M2 has 0.3 + 0.2 = 0.5 = background's 0.5 -> tie to the bone; pixel 1: 0.5 vs 0.5 -> bone
    assert consensus({"a": a, "b": b, "c": c}, {"a": 0.5, "b": 0.3, "c": 0.2}).tolist() == [[M2, M2, M2]]
    assert consensus({"a": a, "b": b, "c": c}, {"a": 0.6, "b": 0.3, "c": 0.1}).tolist() == [[0, M2, M2]]
    # two equal annotators: the union of their bones; bone against bone: the first in class order;
    # background's plurality against bones that split the rest stays background
    m1, m3 = BONES["M1"], BONES["M3"]
    x = np.array([[M2, 0, m3, 0]], dtype=np.uint8)
    y = np.array([[0, M2, m1, 0]], dtype=np.uint8)
    assert consensus({"x": x, "y": y}, {"x": 0.5, "y": 0.5}).tolist() == [[M2, M2, m1, 0]]
    z = np.array([[0, 0, 0, 0]], dtype=np.uint8)
    assert consensus({"x": x, "y": y, "z": z}, {"x": 0.3, "y": 0.3, "z": 0.4}).tolist() == [[0, 0, 0, 0]]
    with pytest.raises(BenchError, match="at least one"):
        consensus({}, {})


def test_image_agreement_by_hand():
    truth = np.zeros((6, 6), dtype=np.uint8)
    truth[1:5, 0:4] = M2                                   # a 4 x 4 bone
    shifted = np.zeros_like(truth)
    shifted[1:5, 1:5] = M2                                 # one column to the right: 12 of 16 pixels shared
    rows = pd.DataFrame(image_agreement({"a": truth.copy(), "b": shifted}, {"a": 0.7, "b": 0.3}, truth))
    assert sorted(map(tuple, rows[["comparison", "dice", "weight"]].round(6).to_numpy().tolist())) == sorted([
        ("annotator~consensus", 1.0, 0.7), ("annotator~consensus", 0.75, 0.3),
        ("annotator~truth", 1.0, 0.7), ("annotator~truth", 0.75, 0.3), ("consensus~truth", 1.0, 1.0)])
    assert set(rows["bone"]) == {"M2"}                       # bones absent from both maps are left out


def test_phantom_consensus_beats_a_single_annotator_and_cli_writes_csv(tmp_path, capsys):
    cfg = PhantomConfig.for_preset("public", "smoke").replace(n_images=8)
    root = synthesize(tmp_path / "pub", config=cfg, seed=3)
    table = dataset_agreement(Dataset.open(root))
    assert list(table.index) == ["annotator~consensus", "annotator~truth", "consensus~truth"]
    assert set(table.columns) == set(BONES)
    values = table.to_numpy()
    assert np.isfinite(values).all() and (values > 0.5).all() and (values <= 1.0).all()
    assert (table.loc["consensus~truth"] >= table.loc["annotator~truth"] - 0.01).mean() >= 6 / 7
    assert main(["data", "agreement", str(root), "--out", str(tmp_path / "a.csv")]) == 0
    assert "consensus~truth" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a.csv", index_col=0), table, check_names=False,
                                  check_exact=False, rtol=1e-9)
    assert main(["data", "agreement", str(root), "--split", "nosuchsplit"]) == 2
    assert "no image of split nosuchsplit" in capsys.readouterr().err
    assert main(["data", "agreement", str(root), "--n", "0"]) == 2
    assert "--n 0: give a number of images >= 1" in capsys.readouterr().err
