"""Beyond one machine (issue 11): a real local Ray cluster, a real MLflow server, a real PostgreSQL.

Checks: a suite (the toy entries, which share their first stage, one of which always fails, and
the clinical baseline) through the Ray executor gives the local executor's results byte for byte,
executes nowhere in the driver, computes each shared stage key once, retries the failing run once,
logs from the driver to MLflow and resumes with nothing redone; two concurrent runs of one stage key
compute it once (the lock per key). The MLflow server and PostgreSQL checks are in test_services.py.
A test whose service cannot start here is skipped with the reason.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import registry, results as store
from bench.cli import main
from bench.errors import BenchError
from bench.registry import Entry, Stage
from bench.runner import Runner

TESTS = Path(__file__).parent
ENTRIES = ["toy", "toy-fail", "clinical"]
CLUSTER_ENTRIES = "OSTEOBENCH_TEST_CLUSTER_ENTRIES"    # set for Ray workers: importing this module registers cl-crash


@pytest.fixture(autouse=True)
def toy_registered():
    registry.load_entries(["toy_entries"])


def _runner(root: Path, data: Path, **kw) -> Runner:
    return Runner(root, suite="c", profile="smoke", data_seg=str(data), data_cls=str(data), progress=False,
                  plugins=["toy_entries"], **kw)


def _log_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _constant_predictions(ctx, value: float) -> dict:
    """Subject predictions p_pos = `value` for every subject of `cls` (a one-stage entry's output)."""
    rows = [{"subject_id": s, "split": sp, "y_true": int(y), "p_pos": value}
            for s, sp, y in ctx.datasets["cls"].manifest[["subject_id", "split", "label"]].itertuples(index=False)]
    pd.DataFrame(rows).to_parquet(ctx.out_dir / "predictions.parquet", index=False)
    return {"metrics": {"v": value}}


def _crash_once(ctx) -> dict:
    """SIGKILL its own process (a lost Ray worker) the first time, succeed the second."""
    marker = ctx.out_dir.parent / "crashed-once"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return _constant_predictions(ctx, 0.75)


CRASH = Entry("cl-crash", "kills its worker once", stages=(Stage("cl_crash", _crash_once, datasets=("cls",)),),
              kind="example")
if os.environ.get(CLUSTER_ENTRIES):
    registry.register(CRASH)


# --------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real local Ray cluster with 2 CPUs; its workers import toy_entries and append to TOY_LOG."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'osteobench[cluster]')")
    log = tmp_path_factory.mktemp("ray_log") / "toy.log"
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "TOY_LOG", CLUSTER_ENTRIES)}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [saved["PYTHONPATH"]])])
    os.environ["TOY_LOG"] = str(log)      # workers inherit the environment of the cluster started here
    os.environ[CLUSTER_ENTRIES] = "1"
    try:
        import logging

        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)                  # "local": a new cluster, never one already running here
    except Exception as exc:  # pragma: no cover - depends on the machine
        _restore(saved)
        pytest.skip(f"a local Ray cluster cannot start here: {type(exc).__name__}: {exc}")
    yield ray, log
    ray.shutdown()
    _restore(saved)


def _restore(saved: dict) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_ray_executor_matches_local_and_shares_stages(ray_cluster, tiny_dataset, tmp_path, monkeypatch):
    from bench.executors.ray_executor import RayExecutor
    from bench.tracking import Tracker

    _, log = ray_cluster
    local = _runner(tmp_path / "local", tiny_dataset).run(ENTRIES, [0, 1])
    log.write_text("")

    def not_here(*args, **kwargs):
        raise AssertionError("a run executed in the driver process")

    tracker = Tracker(tmp_path / "ray")
    monkeypatch.setattr(Runner, "execute_one", not_here)              # the driver only plans and tracks
    remote = _runner(tmp_path / "ray", tiny_dataset, tracker=tracker, executor=RayExecutor(retries=1)).run(ENTRIES, [0, 1])

    expected = [(e, s, "failed" if e == "toy-fail" else "done") for e in ENTRIES for s in (0, 1)]
    assert [(o.entry, o.seed, o.status) for o in local] == expected
    assert [(o.entry, o.seed, o.status) for o in remote] == expected
    assert [o.attempts for o in remote] == [1, 1, 2, 2, 1, 1]           # the failing run was retried once
    for o in remote:
        if o.status == "failed":
            assert "always fails" in o.error
            text = (store.failure_dir(tmp_path / "ray", "c", o.entry, o.seed) / store.TRACEBACK_FILE).read_text()
            assert "RuntimeError" in text
            continue
        a = store.read_run(store.run_dir(tmp_path / "local", "c", o.entry, o.seed))
        b = store.read_run(store.run_dir(tmp_path / "ray", "c", o.entry, o.seed))
        assert json.dumps(a.metrics, sort_keys=True) == json.dumps(b.metrics, sort_keys=True)
        assert json.dumps(a.config, sort_keys=True) == json.dumps(b.config, sort_keys=True)   # same run and stage keys
        pd.testing.assert_frame_equal(a.predictions, b.predictions)
        for name in (store.METRICS_FILE, store.PREDICTIONS_FILE):
            assert (Path(a.path) / name).read_bytes() == (Path(b.path) / name).read_bytes()
    # toy and toy-fail share toy_prep: computed once per seed across 2 concurrent slots and the retries
    assert sorted(_log_lines(log)) == ["toy_prep"] * 2 + ["toy_probe"] * 2

    client = tracker.client                                           # MLflow written by the driver
    exp = client.get_experiment_by_name("osteobench/c")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = {r.data.tags["osteobench.entry"]: r for r in runs if r.data.tags.get("osteobench.run_type") == "entry"}
    assert set(parents) == set(ENTRIES) and parents["toy-fail"].info.status == "FAILED"
    for o in remote:
        if o.status == "done":
            child = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[o.entry].info.run_id
                     and r.data.tags.get("osteobench.seed") == str(o.seed)]
            assert len(child) == 1 and child[0].data.metrics["test_auc"] == pytest.approx(o.metrics["test"]["auc"])

    again = _runner(tmp_path / "ray", tiny_dataset, executor=RayExecutor(retries=0)).run(ENTRIES, [0, 1])
    assert [o.status for o in again] == ["skipped", "skipped", "failed", "failed", "skipped", "skipped"]
    assert sorted(_log_lines(log)) == ["toy_prep"] * 2 + ["toy_probe"] * 2   # resumed: nothing redone


def test_ray_submits_the_folds_of_a_cross_validation_together(ray_cluster, tiny_dataset, tmp_path, monkeypatch):
    from bench.executors.ray_executor import RayExecutor

    _, log = ray_cluster
    args = ["run", "--entry", "toy", "--name", "t", "--seeds", "0", "--folds", "3", "--data-seg", str(tiny_dataset),
            "--data-cls", str(tiny_dataset), "--device", "cpu", "--plugin", "toy_entries", "--no-mlflow"]
    assert main([*args, "--results", str(tmp_path / "local")]) == 0
    log.write_text("")
    batches = []
    original = RayExecutor.execute_runs

    def recorded(self, items):
        batches.append(sorted((r.suite, e.name, s) for r, e, s in items))
        return original(self, items)

    monkeypatch.setattr(RayExecutor, "execute_runs", recorded)
    assert main([*args, "--results", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    assert batches == [[("t-fold0", "toy", 0), ("t-fold1", "toy", 0), ("t-fold2", "toy", 0)]]   # one submission
    assert sorted(_log_lines(log)) == ["toy_prep"] + ["toy_probe"] * 3       # the shared stage once
    for suite in ("t-fold0", "t-fold1", "t-fold2", "t-cv3"):
        a = store.run_dir(tmp_path / "local", suite, "toy", 0)
        b = store.run_dir(tmp_path / "ray", suite, "toy", 0)
        assert (a / store.PREDICTIONS_FILE).read_bytes() == (b / store.PREDICTIONS_FILE).read_bytes(), suite


def test_a_lost_task_is_retried_once_then_recorded(ray_cluster, tiny_dataset, tmp_path):
    from bench.executors.ray_executor import RayExecutor

    def runner(retries: int) -> Runner:
        return Runner(tmp_path, suite="c", data_seg=str(tiny_dataset), data_cls=str(tiny_dataset), device="cpu",
                      progress=False, plugins=["test_cluster"], executor=RayExecutor(retries=retries))

    registry.register(CRASH)
    try:
        retried = runner(1).run(["cl-crash"], [0])       # its worker is killed once, the resubmitted task succeeds
        (tmp_path / "cache" / "cl_crash" / "crashed-once").unlink()
        lost = runner(0).run(["cl-crash", "clinical"], [1])   # killed again, no retry left
    finally:
        registry.unregister("cl-crash")
    assert (retried[0].status, retried[0].attempts) == ("done", 2)
    assert retried[0].metrics["extra"]["v"] == 0.75 and not store.failure_dir(tmp_path, "c", "cl-crash", 0).exists()
    assert [(o.entry, o.status) for o in lost] == [("cl-crash", "failed"), ("clinical", "done")]   # isolated
    assert "was lost" in lost[0].error
    assert "was lost" in (store.failure_dir(tmp_path, "c", "cl-crash", 1) / store.TRACEBACK_FILE).read_text()


def test_ray_cli_and_user_errors(ray_cluster, tiny_dataset, tmp_path, capsys):
    args = ["run", "--entry", "clinical", "--name", "cli", "--seeds", "0", "--results", str(tmp_path),
            "--data-seg", str(tiny_dataset), "--data-cls", str(tiny_dataset), "--no-mlflow", "--executor", "ray"]
    assert main(args) == 0
    assert store.is_complete(tmp_path, "cli", "clinical", 0)
    assert "1 run, 0 already done, 0 failed" in capsys.readouterr().out
    if not ray_cluster[0].cluster_resources().get("GPU"):
        assert main(args + ["--device", "cuda", "--name", "cuda"]) == 2
        assert "has no GPU" in capsys.readouterr().err
    assert main(["run", "--entry", "clinical", "--executor", "local", "--address", "auto", "--results",
                 str(tmp_path)]) == 2
    assert "--executor ray" in capsys.readouterr().err


def test_missing_ray_is_a_clear_error(monkeypatch):
    import builtins

    from bench.executors import make_executor

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(BenchError, match=r"osteobench\[cluster\]"):
        make_executor("ray").connect()
    with pytest.raises(BenchError, match="unknown executor"):
        make_executor("slurm")


# --------------------------------------------------------------------------- the lock per stage key
SLOW_LOG: Path | None = None


def _slow_stage(ctx) -> dict:
    with open(SLOW_LOG, "a") as fh:
        fh.write(f"{threading.get_ident()}\n")
    time.sleep(0.5)                          # widen the window in which a second run could start it too
    value = float(ctx.rng("v").uniform())
    rows = [{"subject_id": s, "split": sp, "y_true": int(y), "p_pos": value}
            for s, sp, y in ctx.datasets["cls"].manifest[["subject_id", "split", "label"]].itertuples(index=False)]
    pd.DataFrame(rows).to_parquet(ctx.out_dir / "predictions.parquet", index=False)
    return {"metrics": {"v": value}}


def test_concurrent_runs_compute_a_stage_key_once(tiny_dataset, tmp_path):
    global SLOW_LOG
    SLOW_LOG = tmp_path / "slow.log"
    registry.register(Entry("cl-slow", "slow one-stage entry", stages=(Stage("cl_slow", _slow_stage, datasets=("cls",)),),
                            kind="example"))
    try:
        barrier = threading.Barrier(2)
        outcomes = {}

        def go(suite: str) -> None:
            runner = Runner(tmp_path / "r", suite=suite, data_seg=str(tiny_dataset), data_cls=str(tiny_dataset),
                            device="cpu", progress=False)
            runner.plan_run(registry.get("cl-slow"), 0)                  # datasets opened before the race
            barrier.wait()
            outcomes[suite] = runner.execute_one(registry.get("cl-slow"), 0)

        threads = [threading.Thread(target=go, args=(s,)) for s in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        registry.unregister("cl-slow")
    assert [outcomes[s].status for s in ("a", "b")] == ["done", "done"]
    assert len(_log_lines(SLOW_LOG)) == 1                          # one computed, the other waited and reused
    assert outcomes["a"].stage_keys == outcomes["b"].stage_keys
    assert json.dumps(outcomes["a"].metrics, sort_keys=True) == json.dumps(outcomes["b"].metrics, sort_keys=True)


def test_runs_per_gpu_asks_each_gpu_task_for_a_share(capsys, tmp_path):
    """--runs-per-gpu N: a CUDA run asks Ray for 1/N GPU (fractional GPUs), a CPU run for no GPU; it needs Ray."""
    from types import SimpleNamespace

    from bench.executors import make_executor
    from bench.executors.ray_executor import RayExecutor

    for n, share in ((1, 1.0), (2, 0.5), (4, 0.25)):
        ex = make_executor("ray", runs_per_gpu=n, cpus_per_task=3)
        assert isinstance(ex, RayExecutor)
        ex.gpus = 1.0
        entry = SimpleNamespace(name="e")
        cuda = SimpleNamespace(device=lambda config: "cuda")
        assert ex._options(cuda, SimpleNamespace(config=None), entry) == {"num_gpus": share, "num_cpus": 3,
                                                                           "max_retries": 0}
        cpu = SimpleNamespace(device=lambda config: "cpu")
        assert ex._options(cpu, SimpleNamespace(config=None), entry) == {"num_cpus": 3, "max_retries": 0}
    with pytest.raises(BenchError, match="--runs-per-gpu must be 1 or more"):
        make_executor("ray", runs_per_gpu=0)
    assert main(["run", "--entry", "clinical", "--runs-per-gpu", "2", "--results", str(tmp_path)]) == 2
    assert "--runs-per-gpu shares a GPU between Ray tasks; it needs --executor ray" in capsys.readouterr().err
