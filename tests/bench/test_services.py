"""Beyond one machine (issue 11): a real MLflow server and a real PostgreSQL.

A suite logged to a real `mlflow server` on a loopback port is read back with MlflowClient (params,
metrics, proxied artifacts); a server that is not there is a BenchError; a two-worker
`bench tune --workers 2` study on a real PostgreSQL (initdb into a temp folder, as a non-root user when
run as root) completes exactly N trials with unique numbers, and the PostgreSQL advisory lock excludes
other sessions. A test whose service cannot start here is skipped with the reason.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from glob import glob
from pathlib import Path

import pytest

from bench import registry, results as store
from bench.cli import main
from net import free_port
from bench.errors import BenchError

TINY_SEG = ["segmentation.levels=3", "segmentation.base_width=4", "segmentation.max_width=16",
            "segmentation.working_size=32", "segmentation.epochs=1", "segmentation.batch_size=16",
            "segmentation.predict_batch=16", "run.device=cpu", "tune.startup_trials=2"]


@pytest.fixture(autouse=True)
def toy_registered():
    registry.load_entries(["toy_entries"])


# --------------------------------------------------------------------------- MLflow server
@pytest.fixture
def mlflow_server(tmp_path):
    exe = Path(sys.executable).with_name("mlflow")
    if not exe.is_file():
        pytest.skip("the mlflow command is not installed next to this Python")
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([str(exe), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                             "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.skip(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-800:]}")
            time.sleep(0.5)
        yield url, tmp_path / "server-artifacts"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)          # the server's own process group (start_new_session)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        log.close()


def test_a_suite_logs_to_a_real_mlflow_server(mlflow_server, tiny_dataset, tmp_path):
    from mlflow import MlflowClient

    url, artifacts = mlflow_server
    results = tmp_path / "results"
    assert main(["run", "--entry", "toy", "clinical", "--name", "srv", "--seeds", "0", "1", "--results", str(results),
                 "--data-seg", str(tiny_dataset), "--data-cls", str(tiny_dataset), "--device", "cpu",
                 "--plugin", "toy_entries", "--tracking-uri", url]) == 0
    client = MlflowClient(tracking_uri=url)
    exp = client.get_experiment_by_name("osteobench/srv")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = {r.data.tags["osteobench.entry"]: r for r in runs if r.data.tags.get("osteobench.run_type") == "entry"}
    assert set(parents) == {"toy", "clinical"} and all(p.info.status == "FINISHED" for p in parents.values())
    children = [r for r in runs if r.data.tags.get("osteobench.run_type") == "seed"]
    assert len(children) == 4
    for child in children:
        entry, seed = child.data.tags["osteobench.entry"], int(child.data.tags["osteobench.seed"])
        assert child.data.tags["mlflow.parentRunId"] == parents[entry].info.run_id
        saved = store.read_run(store.run_dir(results, "srv", entry, seed))
        assert child.data.params["run.device"] == "cpu" and child.data.params["profile"] == "smoke"
        assert child.data.metrics["test_accuracy"] == pytest.approx(saved.metrics["test"]["accuracy"])
        got = Path(client.download_artifacts(child.info.run_id, "metrics.json", str(tmp_path / "dl" / child.info.run_id)))
        assert got.read_bytes() == (Path(saved.path) / store.METRICS_FILE).read_bytes()
    assert len(list(artifacts.rglob("predictions.parquet"))) == 4      # stored by the server (proxied artifacts)
    assert not (results / "mlflow.db").exists()                         # nothing went to the default store


def test_an_absent_server_is_a_quick_bench_error(tmp_path):
    from bench.tracking import Tracker

    with pytest.raises(BenchError, match="no MLflow tracking server answers"):
        Tracker(tmp_path, uri=f"http://127.0.0.1:{free_port()}")


# --------------------------------------------------------------------------- PostgreSQL
def _pg_bin(name: str) -> str | None:
    """`name` on PATH, else in Debian's /usr/lib/postgresql/<version>/bin (the newest version)."""
    debian = sorted(glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    return shutil.which(name) or (debian[-1] if debian else None)


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL on a free loopback port (data and socket in a temp folder)."""
    import importlib.util

    if not any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver for SQLAlchemy (pip install 'osteobench[cluster]')")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl; .ci/run installs it with apt-get)")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:                    # initdb refuses to run as root
        runuser = shutil.which("runuser")
        for name in ("postgres", "nobody"):
            try:
                owner = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if runuser is None or owner is None:
            pytest.skip("running as root, and no runuser or non-root user (postgres, nobody) to run initdb as")
        as_user = [runuser, "-u", owner.pw_name, "--"]
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    port = free_port()
    data = root / "data"
    try:
        init = subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "bench", "-E", "UTF8",
                               "--no-sync"], capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr[-500:]}")
        start = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60",
                                "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                               capture_output=True, text=True, timeout=120)
        if start.returncode != 0:
            log = (root / "server.log").read_text()[-500:] if (root / "server.log").exists() else ""
            pytest.skip(f"PostgreSQL did not start: {start.stderr[-300:]} {log}")
        from sqlalchemy import create_engine, text

        from bench.tune.study import database_url

        admin = create_engine(database_url(f"postgresql://bench@127.0.0.1:{port}/postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE optuna"))
        admin.dispose()
        yield f"postgresql://bench@127.0.0.1:{port}/optuna"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True,
                           timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_advisory_lock_excludes_other_sessions(postgres_url, tmp_path):
    from sqlalchemy import create_engine, text

    from bench.tune.study import ADVISORY_KEY, database_url, open_storage

    store = open_storage(postgres_url, tmp_path)
    assert store.shared_lock and store.lock_path is None
    other = create_engine(database_url(postgres_url))

    def try_lock() -> bool:
        with other.connect() as conn:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": ADVISORY_KEY}).scalar()
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
            return bool(got)

    with store.locked():
        assert not try_lock()                # another session (another machine's worker) must wait
    assert try_lock()
    other.dispose()


def test_two_workers_tune_one_study_on_postgres(postgres_url, tmp_path):
    import optuna
    from study_runs import assert_one_study_run

    from bench.data.phantom import synthesize
    from bench.tune.study import SESSIONS, WORKER, database_url

    seg = synthesize(tmp_path / "public", "public", "smoke", seed=0)
    cls = synthesize(tmp_path / "clinical", "clinical", "smoke", seed=0)
    results = tmp_path / "results"
    args = ["tune", "--target", "seg", "--trials", "4", "--study", "pg", "--storage", postgres_url, "--workers", "2",
            "--results", str(results), "--data-seg", str(seg), "--data-cls", str(cls)]
    assert main(args + [a for s in TINY_SEG for a in ("--set", s)]) == 0
    study = optuna.load_study(study_name="pg", storage=database_url(postgres_url))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]       # exactly the budget, unique numbers
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert study.user_attrs[SESSIONS] == 2                              # both workers joined the study
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 4
    assert 1 <= len({t.user_attrs[WORKER] for t in study.trials}) <= 2
    assert all(t.user_attrs[WORKER].split(":")[1] != str(os.getpid()) for t in study.trials)  # ran in the workers
    summary = json.loads((results / "tune" / "pg" / "summary.json").read_text())
    assert summary["trials"]["total"] == 4 and summary["storage"].startswith("postgresql://")
    assert summary["best"]["value"] == min(t.value for t in study.trials)
    assert_one_study_run(results, 4)
