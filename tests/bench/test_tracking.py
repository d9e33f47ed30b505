"""MLflow tracking: one parent per entry, one child per seed, params/metrics/artifacts, resume,
failures, disabled tracker, several processes writing to one SQLite store."""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path

import pandas as pd
import pytest

from bench.errors import BenchError
from bench.tracking import Tracker
from bench.tracking_uri import default_tracking_uri, normalise_uri, retry_locked
from bench.tracking_values import flatten, mlflow_key

ENTRIES = ("simclr", "noseg-simclr")
SEEDS = (0, 1)
LONG = "x" * 7000                       # above MLflow's 6000-character param limit


def _params(entry: str, seed: int) -> dict:
    return {"segmentation": {"gamma0": 0.5, "decoders": 4, "loss": {"ot": True}},
            "crops": [224, 96], "entry": entry, "seed": seed, "checkpoint": None, "notes": LONG,
            "many": {f"p{i:03d}": i for i in range(250)}}      # > 100 params: several batches


def _metrics(seed: int) -> dict:
    return {"val": {"auc": 0.5 + seed / 10, "f1": 0.25},
            "test": {"auc": 0.75 + seed / 100, "accuracy": float("nan"), "n": 40, "note": "text"},
            "extra": {"dice": 0.9, "skip": None, "dice (mean)": 0.8}}


def _history(seed: int) -> pd.DataFrame:
    rows = [("pretrain", e, "loss", 2.0 - e / 2 + seed) for e in range(3)]
    rows += [("probe", -1, "acc", 0.8)]
    return pd.DataFrame(rows, columns=["stage", "epoch", "metric", "value"])


def _artifacts(folder: Path, entry: str, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"entry": entry, "seed": seed}))
    (folder / "figures").mkdir(exist_ok=True)
    (folder / "figures" / "roc.txt").write_text(f"roc {entry} {seed}")
    return [folder / "config.json", folder / "figures"]


def _children(tracker: Tracker, suite: str, parent: str) -> list:
    return tracker.client.search_runs([tracker.experiment_id(suite)],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent}'")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One store (DB created once): suite "paper", 2 entries x 2 seeds."""
    results = tmp_path_factory.mktemp("results")
    tracker = Tracker(results)
    ids = {}
    for entry in ENTRIES:
        tracker.entry_run("paper", entry, tags={"osteobench.table": "3"})
        for seed in SEEDS:
            ids[entry, seed] = tracker.log_seed_run(
                "paper", entry, seed, params=_params(entry, seed), metrics=_metrics(seed),
                history=_history(seed), artifacts=_artifacts(results / "runs" / entry / str(seed), entry, seed),
                tags={"osteobench.stage_keys": "segment=abc"}, config_hash=f"h-{entry}-{seed}")
    return tracker, results, ids


def test_default_uri_is_absolute_sqlite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri(Path("results")) == f"sqlite:///{tmp_path.resolve()}/results/mlflow.db"
    assert default_tracking_uri(Path("results")).startswith("sqlite:////")
    assert normalise_uri("sqlite:///rel/m.db") == f"sqlite:///{tmp_path.resolve()}/rel/m.db"
    assert normalise_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert normalise_uri("http://host:5000") == "http://host:5000"


def test_keys_are_made_mlflow_valid():
    assert mlflow_key("val/dice (mean)") == "val/dice _mean_"
    assert mlflow_key("pretrain//loss/") == "pretrain/loss" and mlflow_key("seg.gamma0:x-1") == "seg.gamma0:x-1"


def test_unusable_store_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(BenchError, match="cannot open the MLflow tracking store"):
        Tracker(tmp_path, uri=f"sqlite:///{tmp_path}/file/mlflow.db")


def test_flatten_dotted_keys_json_lists_none():
    cfg = {"segmentation": {"gamma0": 0.5, "opt": {"lr": 1e-3}}, "crops": [224, 96],
           "pair": (1, "a"), "ckpt": None, "on": True, "empty": {}}
    assert flatten(cfg) == {"segmentation.gamma0": 0.5, "segmentation.opt.lr": 1e-3,
                            "crops": "[224, 96]", "pair": '[1, "a"]', "ckpt": "None", "on": True,
                            "empty": "{}"}
    assert flatten({"b": 1}, prefix="a.") == {"a.b": 1}
    with pytest.raises(BenchError, match="occurs twice"):
        flatten({"a.b": 1, "a": {"b": 2}})


def test_one_parent_per_entry_one_child_per_seed(logged):
    tracker, results, ids = logged
    exp_id = tracker.experiment_id("paper")
    exp = tracker.client.get_experiment(exp_id)
    assert exp.name == "osteobench/paper"
    assert exp.artifact_location == (results / "mlartifacts" / "osteobench" / "paper").as_uri()
    runs = tracker.client.search_runs([exp_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_name for r in parents) == sorted(ENTRIES)
    assert len(runs) == len(ENTRIES) * (1 + len(SEEDS))
    for parent in parents:
        entry = parent.info.run_name
        assert parent.data.tags["osteobench.entry"] == entry and parent.data.tags["osteobench.table"] == "3"
        assert parent.info.status == "FINISHED"
        kids = _children(tracker, "paper", parent.info.run_id)
        assert sorted(r.info.run_name for r in kids) == [f"{entry}/seed{s}" for s in SEEDS]
        for kid in kids:
            seed = int(kid.data.tags["osteobench.seed"])
            assert kid.info.run_id == ids[entry, seed] and kid.info.status == "FINISHED"
            assert kid.data.tags["osteobench.config_hash"] == f"h-{entry}-{seed}"
            assert kid.data.tags["osteobench.stage_keys"] == "segment=abc"
            assert kid.info.artifact_uri.startswith(exp.artifact_location + "/")


def test_params_are_the_flattened_config(logged):
    tracker, _, ids = logged
    run = tracker.client.get_run(ids["noseg-simclr", 1])
    p = run.data.params
    assert p["segmentation.gamma0"] == "0.5" and p["segmentation.decoders"] == "4"
    assert p["segmentation.loss.ot"] == "True" and p["crops"] == "[224, 96]"
    assert p["entry"] == "noseg-simclr" and p["seed"] == "1" and p["checkpoint"] == "None"
    assert p["notes"] == "x" * 6000                                    # truncated to the limit
    assert all(p[f"many.p{i:03d}"] == str(i) for i in range(250))    # every batch arrived
    assert len(p) == len(flatten(_params("noseg-simclr", 1)))


def test_final_and_epoch_metrics(logged):
    tracker, _, ids = logged
    client = tracker.client
    run_id = ids["simclr", 1]
    m = client.get_run(run_id).data.metrics
    assert m["val_auc"] == pytest.approx(0.6) and m["val_f1"] == 0.25
    assert m["test_auc"] == pytest.approx(0.76) and m["test_n"] == 40.0
    assert math.isnan(m["test_accuracy"])                 # NaN kept as NaN, not dropped
    assert m["extra_dice"] == 0.9 and m["extra_dice _mean_"] == 0.8
    assert "test_note" not in m and "extra_skip" not in m  # non-numbers are not metrics
    hist = client.get_metric_history(run_id, "pretrain/loss")
    assert [(h.step, h.value) for h in sorted(hist, key=lambda h: h.step)] == [(0, 3.0), (1, 2.5), (2, 2.0)]
    assert [(h.step, h.value) for h in client.get_metric_history(run_id, "probe/acc")] == [(-1, 0.8)]


def test_artifacts_are_downloadable(logged, tmp_path):
    tracker, _, ids = logged
    run_id = ids["noseg-simclr", 0]
    got = Path(tracker.client.download_artifacts(run_id, "config.json", str(tmp_path)))
    assert json.loads(got.read_text()) == {"entry": "noseg-simclr", "seed": 0}
    fig = Path(tracker.client.download_artifacts(run_id, "figures/roc.txt", str(tmp_path)))
    assert fig.read_text() == "roc noseg-simclr 0"


def test_relogging_a_finished_seed_is_a_noop(logged):
    tracker, results, ids = logged
    exp_id = tracker.experiment_id("paper")
    before = len(tracker.client.search_runs([exp_id]))
    again = tracker.log_seed_run("paper", "simclr", 0, params={"changed": 1}, metrics={"test": {"auc": 0.1}},
                                 history=_history(0), config_hash="h-simclr-0")
    assert again == ids["simclr", 0]
    assert tracker.entry_run("paper", "simclr") == tracker.entry_run("paper", "simclr")
    # A fresh tracker (a resumed process) finds the same runs and creates nothing.
    fresh = Tracker(results)
    assert fresh.log_seed_run("paper", "simclr", 0, params=_params("simclr", 0), metrics=_metrics(0),
                              config_hash="h-simclr-0") == ids["simclr", 0]
    run = tracker.client.get_run(ids["simclr", 0])
    assert "changed" not in run.data.params and run.data.metrics["test_auc"] == pytest.approx(0.75)
    assert len(tracker.client.get_metric_history(ids["simclr", 0], "pretrain/loss")) == 3
    assert len(tracker.client.search_runs([exp_id])) == before


def test_new_config_hash_interrupted_attempt_and_failure(logged):
    tracker, _, _ = logged
    suite = "resume"
    parent = tracker.entry_run(suite, "vicreg")
    first = tracker.log_seed_run(suite, "vicreg", 0, params={"a": 1}, metrics={"test_auc": 0.7}, config_hash="h1")
    second = tracker.log_seed_run(suite, "vicreg", 0, params={"a": 2}, metrics={"test_auc": 0.8}, config_hash="h2")
    assert first != second                                  # a changed config is a new run
    # An attempt interrupted while logging stays RUNNING; the next attempt supersedes it.
    stale = tracker.client.create_run(tracker.experiment_id(suite), run_name="vicreg/seed1", tags={
        "osteobench.run_type": "seed", "osteobench.entry": "vicreg", "osteobench.seed": "1",
        "osteobench.config_hash": "h1", "mlflow.parentRunId": parent, "osteobench.suite": suite}).info.run_id
    done = tracker.log_seed_run(suite, "vicreg", 1, params={"a": 1}, metrics={"test_auc": 0.6}, config_hash="h1")
    assert done != stale and tracker.client.get_run(stale).info.status == "KILLED"
    assert tracker.client.get_run(done).info.status == "FINISHED"
    # A failure is a FAILED child with its traceback; the parent shows FAILED until a retry succeeds.
    failed = tracker.log_failure(suite, "vicreg", 2, "Traceback (most recent call last):\nValueError: boom\n",
                                 config_hash="h1")
    assert tracker.client.get_run(failed).info.status == "FAILED"
    text = tracker.client.download_artifacts(failed, "traceback.txt")
    assert Path(text).read_text().endswith("ValueError: boom\n")
    assert tracker.client.get_run(parent).info.status == "FAILED"
    retry = tracker.log_seed_run(suite, "vicreg", 2, params={"a": 1}, metrics={"test_auc": 0.5}, config_hash="h1")
    assert retry != failed and tracker.client.get_run(parent).info.status == "FINISHED"
    statuses = sorted(r.info.status for r in _children(tracker, suite, parent))
    assert statuses == ["FAILED", "FINISHED", "FINISHED", "FINISHED", "FINISHED", "KILLED"]
    # Another config of seed 2 fails; rerunning the finished one (reused, not logged again) is the
    # seed's latest attempt, and it succeeded.
    tracker.log_failure(suite, "vicreg", 2, "boom", config_hash="h2")
    assert tracker.client.get_run(parent).info.status == "FAILED"
    assert tracker.log_seed_run(suite, "vicreg", 2, params={"a": 1}, metrics={"test_auc": 0.5},
                                config_hash="h1") == retry
    assert tracker.client.get_run(parent).info.status == "FINISHED"


def test_bad_history_and_missing_artifact_raise(logged, tmp_path):
    tracker, _, _ = logged
    with pytest.raises(BenchError, match="lacks columns"):
        tracker.log_seed_run("errors", "e", 0, params={}, metrics={}, history=pd.DataFrame({"epoch": [0]}))
    with pytest.raises(BenchError, match="do not exist"):
        tracker.log_seed_run("errors", "e", 0, params={}, metrics={}, artifacts=[tmp_path / "nope.json"])


def test_waits_for_a_lock_held_by_another_connection(logged):
    tracker, results, _ = logged
    conn = sqlite3.connect(results / "mlflow.db", isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.5, lambda: conn.execute("COMMIT"))
    release.start()
    try:
        run_id = tracker.log_seed_run("locked", "e", 0, params={"a": 1}, metrics={"test_auc": 0.5})
    finally:
        release.join()
        conn.close()
    assert tracker.client.get_run(run_id).data.metrics == {"test_auc": 0.5}


def test_retry_only_on_database_locked():
    from mlflow.exceptions import MlflowException

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert retry_locked(flaky, pause=0) == "ok" and len(calls) == 3
    calls.clear()

    def broken():
        calls.append(1)
        raise MlflowException("Changing param values is not allowed")

    with pytest.raises(MlflowException, match="not allowed"):
        retry_locked(broken, pause=0)
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(MlflowException, match="locked"):
        retry_locked(lambda: calls.append(1) or (_ for _ in ()).throw(
            MlflowException("database is locked")), retries=4, pause=0)
    assert len(calls) == 4


@pytest.mark.parametrize("kwargs", [{"enabled": False}, {"uri": "none"}])
def test_disabled_tracker_does_nothing(tmp_path, kwargs):
    results = tmp_path / "results"
    tracker = Tracker(results, **kwargs)
    assert not tracker.enabled and tracker.client is None
    assert tracker.experiment_id("paper") == ""
    assert tracker.entry_run("paper", "simclr") == ""
    assert tracker.log_seed_run("paper", "simclr", 0, params=_params("simclr", 0), metrics=_metrics(0),
                                history=_history(0)) == ""
    assert tracker.log_failure("paper", "simclr", 0, "tb") == ""
    assert not results.exists() and list(tmp_path.iterdir()) == []


def _worker(results: str, rank: int, barrier) -> None:
    """Spawned process: 2 entries x 2 seeds of its own into the shared store.

    The barrier makes all three ask for the same (not yet existing) parent runs at once.
    """
    tracker = Tracker(Path(results))
    barrier.wait(timeout=120)
    for entry in ENTRIES:
        for seed in (rank, rank + 3):
            tracker.log_seed_run("multi", entry, seed, params=_params(entry, seed), metrics=_metrics(seed),
                                 history=_history(seed), config_hash=f"{entry}-{seed}")


def test_processes_share_one_store(tmp_path):
    results = tmp_path / "results"
    parent = Tracker(results)                    # creates the DB once, before the workers
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_worker, args=(str(results), rank, barrier)) for rank in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    runs = parent.client.search_runs([parent.experiment_id("multi")], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("osteobench.run_type") == "entry"]
    assert sorted(r.info.run_name for r in parents) == sorted(ENTRIES)     # no duplicate parent
    assert len(runs) == len(ENTRIES) * (1 + 6)
    for par in parents:
        kids = _children(parent, "multi", par.info.run_id)
        assert sorted(int(k.data.tags["osteobench.seed"]) for k in kids) == list(range(6))
        for kid in kids:
            seed = int(kid.data.tags["osteobench.seed"])
            assert kid.info.status == "FINISHED"
            assert kid.data.metrics["test_auc"] == pytest.approx(0.75 + seed / 100)
            assert kid.data.params["many.p249"] == "249"
            assert len(parent.client.get_metric_history(kid.info.run_id, "pretrain/loss")) == 3
    with sqlite3.connect(results / "mlflow.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_an_interrupted_command_leaves_no_entry_running(tmp_path):
    """Ctrl-C or SIGTERM: the parents it opened and did not finish are KILLED; a finished one stays so."""
    tracker = Tracker(tmp_path)
    done = tracker.entry_run("s", "a")
    tracker.log_seed_run("s", "a", 0, params=_params("a", 0), metrics=_metrics(0), history=_history(0),
                         config_hash="h")
    never = tracker.entry_run("s", "b")                     # an entry the command did not reach
    assert tracker.client.get_run(never).info.status == "RUNNING"
    tracker.interrupted()
    assert tracker.client.get_run(never).info.status == "KILLED"
    assert tracker.client.get_run(done).info.status == "FINISHED"


def test_an_interrupt_inside_a_write_is_raised_at_once_and_cleaned_up_later(tmp_path, monkeypatch):
    """Ctrl-C inside MLflow's log_batch can leave SQLite's write lock held: the tracker writes no
    status after it (it used to retry for minutes, then replace the interrupt with "database is
    locked"); interrupted() tries once and warns; the next attempt marks the child KILLED."""
    from mlflow.exceptions import MlflowException

    tracker = Tracker(tmp_path)
    parent = tracker.entry_run("s", "a")

    conn = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None, check_same_thread=False)

    def interrupted_write(*args, **kwargs):
        conn.execute("BEGIN EXCLUSIVE")                     # the write lock the interrupted write kept
        raise KeyboardInterrupt

    monkeypatch.setattr(tracker, "log_batch", interrupted_write)
    try:
        with pytest.raises(KeyboardInterrupt):
            tracker.log_seed_run("s", "a", 0, params={"a": 1}, metrics={"test_auc": 0.5}, config_hash="h")
    finally:
        conn.execute("COMMIT")
        conn.close()
    monkeypatch.undo()
    calls = []

    def locked(run_id, status):
        calls.append(status)
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(tracker.client, "set_terminated", locked)
    with pytest.warns(UserWarning, match="could not mark the interrupted MLflow runs KILLED"):
        tracker.interrupted()
    assert calls == ["KILLED"]                              # once, no retries
    monkeypatch.undo()
    tracker.interrupted()
    assert tracker.client.get_run(parent).info.status == "KILLED"
    stale = [r for r in _children(tracker, "s", parent) if r.info.status == "RUNNING"]
    assert len(stale) == 1
    done = tracker.log_seed_run("s", "a", 0, params={"a": 1}, metrics={"test_auc": 0.5}, config_hash="h")
    assert tracker.client.get_run(stale[0].info.run_id).info.status == "KILLED"
    assert tracker.client.get_run(done).info.status == "FINISHED"


def test_two_trackers_opening_one_parent_log_its_params_once(tmp_path):
    """`bench tune --workers 2`: both workers open the study's parent run and log its parameters if it
    has none. The check and the write hold the tracker's lock, so the second worker, held between
    the first one's check and write, finds the parameters and logs nothing (without the lock both
    found the run bare, and their inserts raced on the store's unique (run, key))."""
    first, second = Tracker(tmp_path), Tracker(tmp_path)
    run_id = first.entry_run("tune", "study")
    checked, second_done = threading.Event(), threading.Event()
    get_run = first.client.get_run

    def get_run_then_let_the_second_in(rid):
        run = get_run(rid)
        checked.set()
        second_done.wait(timeout=3)        # with the lock the second waits for us: the timeout ends this
        return run

    first.client.get_run = get_run_then_let_the_second_in
    logged = {}

    def second_worker():
        checked.wait(timeout=30)
        logged["second"] = second.log_params_once(run_id, {"space": {"lam": [0.01, 100]}, "seed": 0})
        second_done.set()

    thread = threading.Thread(target=second_worker)
    thread.start()
    logged["first"] = first.log_params_once(run_id, {"space": {"lam": [0.01, 100]}, "seed": 0})
    thread.join(timeout=60)
    assert logged == {"first": True, "second": False}
    assert Tracker(tmp_path).client.get_run(run_id).data.params == {"space.lam": "[0.01, 100]", "seed": "0"}
    assert first.log_params_once(run_id, {"seed": 1}) is False      # a run with parameters keeps them
