"""bench.stats.per_image and `bench compare-seg`: the paired image bootstrap of two segmenters' per-image
metrics over their seeds."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.stats.per_image import per_image_bootstrap


def test_one_seed_each_is_the_paired_image_bootstrap_of_the_differences():
    rng = np.random.default_rng(3)
    b = rng.uniform(0.1, 0.3, size=(400, 1))
    d = rng.normal(-0.02, 0.05, size=(400, 1))
    r = per_image_bootstrap("ged", b + d, b, n_boot=4000, seed=1)
    assert r.delta == pytest.approx(d.mean(), abs=1e-12) and r.value_b == pytest.approx(b.mean())
    se = d.std(ddof=1) / np.sqrt(400)                           # the normal approximation of the mean difference
    assert r.se == pytest.approx(se, rel=0.1)
    assert r.ci_low == pytest.approx(d.mean() - 1.96 * se, abs=0.3 * se)
    assert r.ci_high == pytest.approx(d.mean() + 1.96 * se, abs=0.3 * se)
    assert r.p_value < 0.001                                     # |mean| / se is about 8
    same = per_image_bootstrap("ged", b, b, n_boot=500)
    assert same.delta == 0 and same.p_value == 1 and same.ci_low == same.ci_high == 0
    shift = per_image_bootstrap("ged", b + 0.01, b, n_boot=500)   # a constant difference: no uncertainty
    assert shift.ci_low == pytest.approx(0.01) and shift.ci_high == pytest.approx(0.01)
    assert shift.p_value == pytest.approx(2 / 501)


def test_seeds_that_disagree_widen_the_interval_and_nan_images_are_left_out():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.1, 0.3, size=(200, 1))
    a1 = b + rng.normal(0, 0.01, size=(200, 1))
    one = per_image_bootstrap("ged", a1, b, n_boot=2000)
    two = per_image_bootstrap("ged", np.hstack([a1 - 0.05, a1 + 0.05]), b, n_boot=2000)
    assert two.delta == pytest.approx(one.delta, abs=1e-12)     # the seeds' mean is a1
    assert two.ci_high - two.ci_low > 5 * (one.ci_high - one.ci_low)
    with_nan = np.vstack([a1, [[np.nan]]])
    r = per_image_bootstrap("dice", with_nan, np.vstack([b, [[0.5]]]), n_boot=2000)
    assert r.delta == pytest.approx(one.delta, abs=1e-12) and r.ci_low == pytest.approx(one.ci_low)
    with pytest.raises(BenchError, match="images x seeds"):
        per_image_bootstrap("ged", a1, b[:10])


def _evaluation(folder: Path, entry: str, seed: int, ged: np.ndarray, ids: list[str], fingerprint: str = "f") -> Path:
    folder.mkdir(parents=True)
    summary = {"segmenter": {"kind": "run", "path": str(folder), "entry": entry, "seed": seed},
               "data": {"path": "/data/x", "fingerprint": fingerprint}, "split": "all"}
    (folder / "summary.json").write_text(json.dumps(summary))
    frame = pd.DataFrame({"image_id": ids, "split": "test", "ged": ged, "hungarian_iou": 1 - ged,
                          **{f"dice_truth_{b}": 0.9 + 0 * ged for b in ("ulna", "radius", "M1", "M2", "M3", "M4", "M5")},
                          "dice_truth_mean": 0.9 + 0 * ged})
    frame.to_csv(folder / "images.csv", index=False)
    return folder


def _unsummarised(folder: Path, ids: list[str]) -> Path:
    """A folder with images.csv whose summary.json is not evaluate-seg's."""
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    pd.DataFrame({"image_id": ids, "ged": 0.1}).to_csv(folder / "images.csv", index=False)
    return folder


def test_cli_table_json_and_refusals(tmp_path, capsys):
    ids = [f"img{i:03d}" for i in range(50)]
    rng = np.random.default_rng(5)
    base = rng.uniform(0.1, 0.3, 50)
    a = [_evaluation(tmp_path / f"a{s}", "mose", s, base - 0.03 + rng.normal(0, 0.005, 50), ids) for s in (0, 1)]
    b = [_evaluation(tmp_path / "b0", "single", 0, base[::-1], ids[::-1])]       # rows in another order: matched by id
    out = tmp_path / "cmp.json"
    assert main(["compare-seg", *map(str, a), "--vs", *map(str, b), "--per-bone", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "A: mose-seed0, mose-seed1" in printed and "B: single-seed0" in printed
    rows = {r["metric"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["ged", "hungarian_iou", "dice_truth_mean", *[f"dice_truth_{x}" for x in
                                                                       ("ulna", "radius", "M1", "M2", "M3", "M4", "M5")]]
    assert rows["ged"]["delta"] == pytest.approx(-0.03, abs=0.003) and rows["ged"]["ci_high"] < 0
    assert rows["ged"]["n_images"] == 50 and rows["dice_truth_M1"]["delta"] == pytest.approx(0, abs=1e-12)
    other = _evaluation(tmp_path / "other", "single", 1, base, ids, fingerprint="g")
    fewer = _evaluation(tmp_path / "fewer", "single", 2, base[:40], ids[:40])
    for argv, message in [([str(a[0]), "--vs", str(other)], "different datasets or splits"),
                          ([str(a[0]), "--vs", str(fewer)], "scored different images"),
                          ([str(a[0]), "--vs", str(b[0]), "--metric", "ece"], "ece not in every images.csv"),
                          ([str(a[0]), "--vs", str(tmp_path)], "is not a `bench evaluate-seg` output folder"),
                          ([str(a[0]), "--vs", str(_unsummarised(tmp_path / "bare", ids))], "lacks segmenter, data, split")]:
        assert main(["compare-seg", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
