"""bench.results: round trip, atomicity, tidy loaders, failure markers, NaN handling, bad paths."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import BenchError
from bench import results as store
from bench.metrics import SUBJECT_COLUMNS, aggregate_subjects, split_metrics


def _subjects(seed: int) -> pd.DataFrame:
    """A small aggregate_subjects table: 12 subjects over train/val/test, one without a usable bone."""
    rng = np.random.default_rng(np.random.SeedSequence([7, seed]))
    rows = []
    for s in range(12):
        split = ("train", "val", "test")[s % 3]
        y = s % 2 if s != 11 else None
        for bone in ("ulna", "radius", "M2", "M3"):
            p = np.nan if s == 11 else float(rng.uniform())
            rows.append(dict(subject_id=f"s{s:02d}", split=split, bone=bone, y_true=y, p_pos=p))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return aggregate_subjects(pd.DataFrame(rows))


def _metrics(subjects: pd.DataFrame) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return split_metrics(subjects)


def _history() -> pd.DataFrame:
    return pd.DataFrame({"stage": ["probe"] * 3, "epoch": [0, 1, 2], "metric": ["val_macro_f1"] * 3,
                         "value": [0.4, 0.6, np.nan]})


def _same(a, b) -> bool:
    """Equality of nested dicts/lists where NaN equals NaN."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def _write(root: Path, entry: str = "simclr", seed: int = 0, **kw) -> Path:
    subjects = kw.pop("predictions", None)
    subjects = _subjects(seed) if subjects is None else subjects
    kw.setdefault("config", {"entry": entry, "seed": seed})
    kw.setdefault("metrics", _metrics(subjects))
    return store.write_run(root, "paper", entry, seed, predictions=subjects, **kw)


def test_round_trip(tmp_path):
    subjects = _subjects(0)
    metrics = _metrics(subjects) | {"extra": {"dice": 0.91, "nested": {"ece": np.float32(0.25)}, "note": "x"}}
    config = {"segmentation": {"gamma0": 0.5, "decoders": (1, 2)}, "path": Path("/data/x"),
              "lr": np.float64(1e-3), "epochs": np.int64(3), "none": None}
    path = store.write_run(tmp_path, "paper", "simclr", 2, config=config, metrics=metrics,
                           predictions=subjects, history=_history(), extra_files={"figures/roc.png": b"\x89PNG"})
    assert path == tmp_path / "paper" / "simclr" / "seed2" == store.run_dir(tmp_path, "paper", "simclr", 2)
    assert store.is_complete(tmp_path, "paper", "simclr", 2)
    run = store.read_run(path)
    assert (run.suite, run.entry, run.seed) == ("paper", "simclr", 2)
    assert run.config == {"segmentation": {"gamma0": 0.5, "decoders": [1, 2]}, "path": "/data/x",
                          "lr": 1e-3, "epochs": 3, "none": None}
    assert _same(run.metrics, {**metrics, "extra": {"dice": 0.91, "nested": {"ece": 0.25}, "note": "x"}})
    pd.testing.assert_frame_equal(run.predictions, subjects)
    assert tuple(run.predictions.columns) == SUBJECT_COLUMNS
    pd.testing.assert_frame_equal(run.history, _history())
    assert (path / "figures" / "roc.png").read_bytes() == b"\x89PNG"
    # sorted keys on disk
    text = (path / "config.json").read_text()
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_nan_written_as_null_and_read_back_as_nan(tmp_path):
    metrics = {"test": {"auc": float("nan"), "f1": 0.5, "n": 3}, "extra": {"loss": float("inf")}}
    path = _write(tmp_path, metrics=metrics, config={"x": float("nan")})
    raw = json.loads((path / "metrics.json").read_text())  # strict JSON: no NaN literal
    assert "NaN" not in (path / "metrics.json").read_text()
    assert raw["test"]["auc"] is None and raw["extra"]["loss"] == "Infinity"
    run = store.read_run(path)
    assert math.isnan(run.metrics["test"]["auc"]) and run.metrics["test"]["f1"] == 0.5
    assert run.metrics["extra"]["loss"] == float("inf")
    assert run.config == {"x": None}
    tidy = store.load_metrics(tmp_path, "paper")
    auc = tidy[(tidy["split"] == "test") & (tidy["metric"] == "auc")]["value"]
    assert len(auc) == 1 and math.isnan(auc.iloc[0])
    # the unscored subject keeps NaN p_pos and NA labels through the store
    preds = store.read_run(path).predictions
    assert preds["p_pos"].isna().sum() == 1 and preds["y_pred"].isna().sum() == 1


def test_same_inputs_give_same_bytes(tmp_path):
    a = _write(tmp_path / "a", history=_history())
    b = _write(tmp_path / "b", history=_history())
    for name in ("config.json", "metrics.json", "predictions.parquet", "history.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_failed_write_leaves_no_run_and_keeps_previous(tmp_path, monkeypatch):
    original = pd.DataFrame.to_parquet

    def broken(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path)
    entry_dir = tmp_path / "paper" / "simclr"
    assert not (entry_dir / "seed0").exists() and list(entry_dir.iterdir()) == []
    assert not store.is_complete(tmp_path, "paper", "simclr", 0)
    monkeypatch.setattr(pd.DataFrame, "to_parquet", original)
    first = _write(tmp_path, metrics={"test": {"f1": 0.25}}, history=_history())
    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError):
        _write(tmp_path, metrics={"test": {"f1": 0.75}})
    assert store.read_run(first).metrics == {"test": {"f1": 0.25}}  # old complete run intact
    assert sorted(p.name for p in entry_dir.iterdir()) == ["seed0"]  # no temporary left


def test_rewrite_replaces_the_whole_run(tmp_path):
    _write(tmp_path, metrics={"test": {"f1": 0.25}}, history=_history(), extra_files={"a.txt": b"a"})
    path = _write(tmp_path, metrics={"test": {"f1": 0.75}})
    run = store.read_run(path)
    assert run.metrics == {"test": {"f1": 0.75}}
    assert run.history is None and not (path / "a.txt").exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["seed0"]


def test_failure_marker_lifecycle(tmp_path):
    marker = store.write_failure(tmp_path, "paper", "swav", 1, "Traceback ...\nValueError: boom\n")
    assert marker == tmp_path / "paper" / "swav" / "seed1.failed"
    assert (marker / "traceback.txt").read_text().endswith("boom\n")
    assert not store.is_complete(tmp_path, "paper", "swav", 1)
    runs = store.list_runs(tmp_path)
    assert runs[["entry", "seed", "status"]].values.tolist() == [["swav", 1, "failed"]]
    with pytest.raises(BenchError, match="failed"):
        store.read_run(marker)
    store.write_failure(tmp_path, "paper", "swav", 1, "second failure")  # replaces
    assert (marker / "traceback.txt").read_text() == "second failure"
    path = store.write_run(tmp_path, "paper", "swav", 1, config={}, metrics={"test": {}},
                           predictions=_subjects(1))
    assert not marker.exists()
    runs = store.list_runs(tmp_path, "paper")
    assert runs[["entry", "seed", "status"]].values.tolist() == [["swav", 1, "complete"]]
    assert Path(runs["path"].iloc[0]) == path
    store.write_failure(tmp_path, "paper", "swav", 1, "a later attempt failed")
    assert store.list_runs(tmp_path)["status"].tolist() == ["failed"]  # latest attempt wins
    assert store.is_complete(tmp_path, "paper", "swav", 1)  # the earlier complete run is kept


def test_tidy_loader_two_entries_two_seeds(tmp_path):
    expected = {}
    for entry in ("vicreg", "simclr"):
        for seed in (1, 0):
            subjects = _subjects(seed + (10 if entry == "vicreg" else 0))
            metrics = _metrics(subjects) | {"extra": {"dice": 0.5 + seed, "label": "text is left out"}}
            _write(tmp_path, entry, seed, predictions=subjects, metrics=metrics)
            expected[(entry, seed)] = (subjects, metrics)
    store.write_failure(tmp_path, "paper", "swav", 0, "boom")  # failed runs are not loaded
    (tmp_path / "paper" / "simclr" / ".seed3.tmp-abc").mkdir()  # nor interrupted temporaries
    (tmp_path / "cache" / "segment" / "0123abcd").mkdir(parents=True)

    with pytest.warns(UserWarning, match="swav seed 0 is left out: its latest attempt failed"):
        tidy = store.load_metrics(tmp_path, "paper")
    assert list(tidy.columns) == ["suite", "entry", "seed", "split", "metric", "value"]
    n_per_run = sum(len(v) for k, v in expected[("simclr", 0)][1].items() if k != "extra") + 1
    assert len(tidy) == 4 * n_per_run
    assert tidy[["entry", "seed", "split", "metric"]].apply(tuple, axis=1).is_monotonic_increasing
    assert set(tidy["suite"]) == {"paper"} and set(tidy["entry"]) == {"simclr", "vicreg"}
    for (entry, seed), (_, metrics) in expected.items():
        for split in ("train", "val", "test"):
            for metric, value in metrics[split].items():
                got = tidy[(tidy["entry"] == entry) & (tidy["seed"] == seed) & (tidy["split"] == split)
                           & (tidy["metric"] == metric)]["value"]
                assert len(got) == 1 and _same(float(got.iloc[0]), float(value))
        dice = tidy[(tidy["entry"] == entry) & (tidy["seed"] == seed) & (tidy["split"] == "extra")]
        assert dice[["metric", "value"]].values.tolist() == [["dice", 0.5 + seed]]

    only = store.load_metrics(tmp_path, "paper", ["vicreg"])
    pd.testing.assert_frame_equal(only, tidy[tidy["entry"] == "vicreg"].reset_index(drop=True))

    preds = store.load_predictions(tmp_path, "paper")
    assert list(preds.columns) == ["entry", "seed", *SUBJECT_COLUMNS]
    assert preds[["entry", "seed"]].drop_duplicates().values.tolist() == [
        ["simclr", 0], ["simclr", 1], ["vicreg", 0], ["vicreg", 1]]
    part = preds[(preds["entry"] == "vicreg") & (preds["seed"] == 1)].drop(columns=["entry", "seed"])
    pd.testing.assert_frame_equal(part.reset_index(drop=True), expected[("vicreg", 1)][0])
    assert str(preds["y_true"].dtype) == "Int64"

    runs = store.list_runs(tmp_path)
    assert runs[["entry", "seed", "status"]].values.tolist() == [
        ["simclr", 0, "complete"], ["simclr", 1, "complete"], ["swav", 0, "failed"],
        ["vicreg", 0, "complete"], ["vicreg", 1, "complete"]]


def test_subject_level_predictions_get_nan_bone_columns(tmp_path):
    preds = pd.DataFrame({"subject_id": ["a", "b"], "split": ["test", "test"], "y_true": [0.0, 1.0],
                          "p_pos": [0.2, 0.8], "y_pred": [0, 1], "n_bones": [0, 0], "age": [61, 70]})
    run = store.read_run(_write(tmp_path, predictions=preds, metrics={"test": {}}))
    assert list(run.predictions.columns) == [*SUBJECT_COLUMNS, "age"]
    assert run.predictions["p_M3"].isna().all() and run.predictions["y_true"].tolist() == [0, 1]


@pytest.mark.parametrize("kwargs, message", [
    ({"predictions": pd.DataFrame({"subject_id": ["a"]})}, "lack columns"),
    ({"metrics": {"test": 0.5}}, "metrics"),
    ({"config": {"f": object()}}, "JSON"),
    ({"history": pd.DataFrame({"epoch": [0]})}, "history lacks"),
    ({"extra_files": {"../escape.txt": b""}}, "relative path"),
    ({"extra_files": {"config.json": b"{}"}}, "relative path"),
])
def test_bad_writes_raise_and_write_nothing(tmp_path, kwargs, message):
    with pytest.raises(BenchError, match=message):
        _write(tmp_path, **kwargs)
    assert not (tmp_path / "paper" / "simclr" / "seed0").exists()


def test_bad_paths_and_names(tmp_path):
    with pytest.raises(BenchError, match="config.json"):
        store.read_run(tmp_path / "nope")
    path = _write(tmp_path)
    with pytest.raises(BenchError, match="config.json, metrics.json, predictions.parquet"):
        store.read_run(path.parent)  # an entry folder is not a run folder
    (path / "predictions.parquet").unlink()
    with pytest.raises(BenchError, match="lacks"):
        store.read_run(path)
    for other in ("cache/segment", "mlartifacts/x", "paper/compare", "paper/report"):   # not suites nor entries
        (tmp_path / other).mkdir(parents=True)
    with pytest.raises(BenchError, match=r"no suite 'table9' in .*; suites there: \['paper'\]$"):
        store.load_metrics(tmp_path, "table9")
    with pytest.raises(BenchError, match=r"entries there: \['simclr'\]$"):
        store.load_metrics(tmp_path, "paper", ["simclr", "typo"])
    with pytest.raises(BenchError, match="does not exist"):
        store.list_runs(tmp_path / "missing")
    for suite, entry, seed in (("../x", "e", 0), ("s", ".hidden", 0), ("s", "e", -1), ("s", "e", True)):
        with pytest.raises(BenchError):
            store.run_dir(tmp_path, suite, entry, seed)


def test_atomic_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    """tempfile makes 0600 files and 0700 folders; a bundle or report must be readable as open() makes it."""
    import os
    import stat

    from bench import atomic

    mask = atomic._current_umask()
    atomic.atomic_write_text(tmp_path / "a.txt", "x")
    with atomic.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("y")
    (tmp_path / "plain.txt").write_text("z")
    (tmp_path / "plain_dir").mkdir()
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)   # noqa: E731
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~mask
    assert mode(tmp_path / "d") == mode(tmp_path / "plain_dir") == 0o777 & ~mask


def test_atomic_outputs_refuse_the_wrong_kind_of_path_and_name_the_current_folder(tmp_path, monkeypatch):
    """A file where a folder goes (or the reverse) is a BenchError, not a traceback after the work;
    "." is the current folder by its name, not an empty name."""
    from bench import atomic

    (tmp_path / "f.txt").write_text("keep")
    with pytest.raises(BenchError, match="is a file, not a folder"):
        with atomic.atomic_dir(tmp_path / "f.txt", overwrite=True):
            pass
    with pytest.raises(BenchError, match="is a folder; give a file path"):
        atomic.atomic_write_bytes(tmp_path, b"x")
    assert (tmp_path / "f.txt").read_text() == "keep"
    inner = tmp_path / "inner"
    inner.mkdir()
    monkeypatch.chdir(inner)
    with atomic.atomic_dir(".", overwrite=True) as tmp:
        (tmp / "new.txt").write_text("y")
    assert (tmp_path / "inner" / "new.txt").read_text() == "y" and not list(tmp_path.glob(".*tmp-*"))


def test_damaged_and_failed_seeds_are_left_out_with_a_warning(tmp_path):
    for seed in (0, 1, 2):
        _write(tmp_path, "simclr", seed)
    (tmp_path / "paper" / "simclr" / "seed1" / "metrics.json").unlink()        # a damaged copy
    store.write_failure(tmp_path, "paper", "simclr", 2, "boom")                  # its latest attempt failed
    runs = store.list_runs(tmp_path)
    assert runs[["seed", "status"]].values.tolist() == [[0, "complete"], [1, "incomplete"], [2, "failed"]]
    with pytest.warns(UserWarning) as caught:
        tidy = store.load_metrics(tmp_path, "paper")
    assert set(tidy["seed"]) == {0}
    said = " | ".join(str(w.message) for w in caught)
    assert "simclr seed 1 is left out" in said and "lacks metrics.json" in said
    assert "simclr seed 2 is left out: its latest attempt failed" in said and "traceback.txt" in said
    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        assert set(store.load_predictions(tmp_path, "paper")["seed"]) == {0}
    assert not again                                            # said once a process


def test_show_refuses_files_and_unknown_splits_and_says_why_an_entry_is_empty(tmp_path, capsys):
    from bench.cli import main

    run = _write(tmp_path, "simclr", 0)
    assert main(["show", str(run / "metrics.json")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main(["show", str(run), "--split", "nosplit"]) == 2
    assert "has no split 'nosplit'; it has train, val, test" in capsys.readouterr().err
    assert main(["show", str(run), "--split", "val"]) == 0
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]]
    assert rows[1:] == ["val"]                                  # the header, then the one split
    store.write_failure(tmp_path, "paper", "swav", 0, "boom")
    with pytest.warns(UserWarning, match="swav seed 0 is left out: its latest attempt failed"):
        assert main(["show", str(tmp_path / "paper" / "swav")]) == 2
    assert "no complete run here" in capsys.readouterr().err
