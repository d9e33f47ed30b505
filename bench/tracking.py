"""MLflow tracking of a suite (issue 3, deliverable 4; MLflow 3.x; verified on 3.17.2).

- URI always explicit: ``sqlite:///<absolute results>/mlflow.db`` unless given (server URL,
  other database); ``MLFLOW_TRACKING_URI``/global state are never read. Tables are created in
  ``Tracker.__init__``: build it in the parent before starting (spawn) workers.
- Experiment ``osteobench/<suite>``, artifacts under ``<results>/mlartifacts/osteobench/<suite>``
  (``file:`` URI; a remote http/https/databricks server chooses its own).
- Parent run per entry (``run_name = entry``, tag ``osteobench.run_type=entry``); child per seed
  (``<entry>/seed<k>``, tags ``osteobench.seed``, ``osteobench.config_hash``,
  ``mlflow.parentRunId``). Parent status: FAILED while some seed's latest attempt failed (a rerun
  that reuses a finished run counts as an attempt).
- Params, metrics, history and tags take MLflow's form in bench.tracking_values (``split_m``,
  ``<stage>/<metric>`` at ``step = epoch``, -1 = a stage's final value); URIs, the server check and
  the SQLite lock retries are bench.tracking_uri.
- Resume: a FINISHED child with the same (entry, seed, config hash) is returned untouched
  (params are immutable); a RUNNING one is an interrupted attempt: marked KILLED, replaced.
- Concurrency: get-or-create and seed logging hold an ``fcntl`` lock on ``<db>.lock`` (or
  ``<results>/.mlflow.lock``), so processes of one machine never duplicate a run; SQLite
  "database is locked" beyond MLflow's 20 s busy timeout is retried with backoff.

Tracking server (issue 11): ``--tracking-uri http://host:5000`` logs to an MLflow tracking
server, the one place a cluster's runs meet (a `bench run --executor ray` driver logs every run
itself, so only the driver needs to reach it). Start one on a PostgreSQL backend::

    createdb mlflow        # or: psql -c 'create database mlflow'
    mlflow server --backend-store-uri postgresql://user:pass@dbhost:5432/mlflow \
        --artifacts-destination /shared/mlartifacts --host 127.0.0.1 --port 5000

or, for one lab machine, on SQLite: ``mlflow server --backend-store-uri sqlite:////abs/mlflow.db
--artifacts-destination /abs/mlartifacts --host 127.0.0.1 --port 5000``. The server proxies
artifacts (``--serve-artifacts``, MLflow's default), so clients need no access to the artifact
store; ``--host 0.0.0.0`` (and ``--allowed-hosts``) opens it to the cluster's network. A server
URI is checked at ``<uri>/health`` before use, so a server that is not running is a quick
BenchError rather than MLflow's minutes of retries.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from bench.errors import BenchError, brief
from bench.executors.locking import file_lock
from bench.tracking_uri import (DISABLED_URIS, REMOTE_SCHEMES, check_server, default_tracking_uri, normalise_uri,
                                retry_locked, sqlite_path)
from bench.tracking_values import (final_metrics, filter_literal, flatten, history_metrics,
                                   mlflow_key, tag_values)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

EXPERIMENT_PREFIX = "osteobench/"
TAG_SUITE = "osteobench.suite"
TAG_ENTRY = "osteobench.entry"
TAG_SEED = "osteobench.seed"
TAG_HASH = "osteobench.config_hash"
TAG_TYPE = "osteobench.run_type"          # "entry" (parent) or "seed" (child)
TAG_PARENT = "mlflow.parentRunId"
TAG_ATTEMPT = "osteobench.last_attempt_ms"   # a finished child reused by a rerun: when that attempt was


class Tracker:
    """Logs a suite to MLflow; every method is a no-op when disabled (and returns "")."""

    def __init__(self, results: Path, uri: str | None = None, enabled: bool = True) -> None:
        self.results = Path(results).expanduser().resolve()
        self.enabled = bool(enabled) and (uri is None or uri.strip().lower() not in DISABLED_URIS)
        self.uri = "none" if not self.enabled else normalise_uri(uri.strip() if uri else
                                                                  default_tracking_uri(self.results))
        self._experiments: dict[str, str] = {}
        self._entries: dict[tuple[str, str], str] = {}
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._lock_held: contextlib.ExitStack | None = None
        self._pid = os.getpid()
        self._client: Any = None
        if not self.enabled:
            return
        db = sqlite_path(self.uri)
        self._lock_path = (db.parent / f"{db.name}.lock") if db else self.results / ".mlflow.lock"
        if urlparse(self.uri).scheme in ("http", "https"):
            check_server(self.uri)
        from mlflow import MlflowClient

        try:  # first use creates the database file and its tables (migrations, ~1-2 s)
            with self._locked():
                self._client = MlflowClient(tracking_uri=self.uri)
                retry_locked(lambda: self._client.search_experiments(max_results=1))
        except Exception as exc:
            raise BenchError(f"cannot open the MLflow tracking store {self.uri}: {exc}. Check the URI "
                             "(a writable sqlite:/// path or a running server), or disable tracking "
                             "with the URI 'none'") from exc

    # ------------------------------------------------------------------ infrastructure
    @property
    def client(self) -> Any:
        """The MlflowClient bound to this tracker's URI (None when disabled)."""
        if self._client is not None and os.getpid() != self._pid:
            self._after_fork()
        return self._client

    def _after_fork(self) -> None:
        """Drop SQLite connections inherited through fork (SQLAlchemy's documented recipe)."""
        self._pid = os.getpid()
        self._lock_held, self._depth = None, 0   # the parent's lock stays the parent's
        store = getattr(getattr(self._client, "_tracking_client", None), "store", None)
        engine = getattr(store, "engine", None)
        if engine is not None:
            engine.dispose(close=False)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive across threads and processes of this machine; re-entrant in this tracker."""
        with self._thread_lock:
            if os.getpid() != self._pid and self._client is not None:
                self._after_fork()
            if self._depth == 0:
                self._lock_held = contextlib.ExitStack()
                self._lock_held.enter_context(file_lock(self._lock_path))
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_held is not None:
                    self._lock_held.close()
                    self._lock_held = None

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.client.<method>(*args, **kwargs)``, retried while another process holds the store's lock."""
        fn = getattr(self.client, method)
        return retry_locked(lambda: fn(*args, **kwargs))

    def _search(self, experiment_id: str, filters: Mapping[str, str], order_by: Sequence[str] = ()) -> list:
        """All active runs of the experiment whose tags equal `filters` (every page)."""
        where = " and ".join(f"tags.`{k}` = {filter_literal(v)}" for k, v in filters.items())
        runs: list = []
        token = None
        while True:
            page = self.call("search_runs", [experiment_id], filter_string=where, max_results=1000,
                             order_by=list(order_by) or None, page_token=token)
            runs.extend(r for r in page if all(r.data.tags.get(k) == str(v) for k, v in filters.items()))
            token = page.token
            if not token:
                return runs

    # ------------------------------------------------------------------ public API
    def experiment_id(self, suite: str) -> str:
        """The experiment ``osteobench/<suite>``, created on first use."""
        if not self.enabled:
            return ""
        if suite in self._experiments:
            return self._experiments[suite]
        name = f"{EXPERIMENT_PREFIX}{suite}"
        with self._locked():
            exp = self.call("get_experiment_by_name", name)
            if exp is None:
                location = None
                if urlparse(self.uri).scheme not in REMOTE_SCHEMES:
                    location = (self.results / "mlartifacts" / name).as_uri()
                exp_id = self.call("create_experiment", name, artifact_location=location,
                                   tags={TAG_SUITE: suite})
            elif exp.lifecycle_stage != "active":
                raise BenchError(f"MLflow experiment {name!r} in {self.uri} is deleted; restore it "
                                 "(MLflow UI or `mlflow experiments restore`), or remove it for good with "
                                 f"`mlflow gc --backend-store-uri {self.uri}`, then rerun")
            else:
                exp_id = exp.experiment_id
        self._experiments[suite] = exp_id
        return exp_id

    def entry_run(self, suite: str, entry: str, tags: Mapping[str, str] | None = None) -> str:
        """The parent run of `entry` in `suite` (reused, or created with ``run_name = entry``)."""
        if not self.enabled:
            return ""
        exp_id = self.experiment_id(suite)
        with self._locked():
            run_id = self._entries.get((suite, entry))
            if run_id is None:
                found = self._search(exp_id, {TAG_TYPE: "entry", TAG_ENTRY: entry},
                                     order_by=["attributes.start_time ASC"])
                if found:
                    run_id = found[0].info.run_id
            own = {TAG_SUITE: suite, TAG_ENTRY: entry, TAG_TYPE: "entry"}
            if run_id is None:
                all_tags = {**tag_values(tags), **own}
                run_id = self.call("create_run", exp_id, tags=all_tags, run_name=entry).info.run_id
            elif tags:
                self.log_batch(run_id, tags={k: v for k, v in tags.items() if k not in own})
            self._entries[(suite, entry)] = run_id
        return run_id

    def log_params_once(self, run_id: str, params: Mapping[str, Any]) -> bool:
        """Log `params` to `run_id` unless it has parameters already; True when this call logged them.

        Check and write hold the tracker's lock: two processes that open one parent run together
        (``bench tune --workers 2``) would otherwise both find it bare and both insert its
        parameters, and the second insert breaks the store's unique key (run, key)."""
        if not self.enabled or not params:
            return False
        with self._locked():
            if self.call("get_run", run_id).data.params:
                return False
            self.log_batch(run_id, params=flatten(params))
        return True

    def log_seed_run(self, suite: str, entry: str, seed: int, *, params: Mapping,
                     metrics: Mapping[str, Mapping[str, float]] | Mapping[str, float],
                     history: pd.DataFrame | None = None, artifacts: Sequence[Path] = (),
                     tags: Mapping[str, str] | None = None, config_hash: str = "") -> str:
        """Log one finished (entry, seed) as a nested child run; return its run id.

        A FINISHED child with the same entry, seed and `config_hash` is returned as is.
        """
        if not self.enabled:
            return ""
        flat_params = flatten(params)
        final = final_metrics(metrics)
        steps = history_metrics(history)
        files = [Path(a) for a in artifacts]
        missing = [str(p) for p in files if not p.exists()]
        if missing:
            raise BenchError(f"artifacts to log do not exist: {missing}; write them before tracking the run")
        with self._locked():
            parent, run_id, fresh = self._start_child(suite, entry, seed, config_hash, tags, reuse=True)
            if not fresh:                   # a rerun of a finished run: its seed's latest attempt succeeded
                self.call("set_tag", run_id, TAG_ATTEMPT, str(int(time.time() * 1000)))
                self._refresh_parent(suite, parent)
                return run_id
            try:
                now = int(time.time() * 1000)
                self.log_batch(run_id, params=flat_params, metrics=[(k, v, now, 0) for k, v in final.items()]
                               + [(k, v, now, step) for k, v, step in steps])
                for path in files:
                    if path.is_dir():
                        self.call("log_artifacts", run_id, str(path), artifact_path=path.name)
                    else:
                        self.call("log_artifact", run_id, str(path))
            except BaseException as exc:
                if isinstance(exc, Exception):      # an interrupt writes nothing (_release_connections)
                    self.call("set_terminated", run_id, "FAILED")
                    self._refresh_parent(suite, parent)
                raise
            self.call("set_terminated", run_id, "FINISHED")
            self._refresh_parent(suite, parent)
        return run_id

    def log_failure(self, suite: str, entry: str, seed: int, traceback_text: str, *,
                    params: Mapping | None = None, tags: Mapping[str, str] | None = None,
                    config_hash: str = "") -> str:
        """A child run with status FAILED and the traceback as artifact ``traceback.txt``."""
        if not self.enabled:
            return ""
        flat_params = flatten(params) if params else {}
        with self._locked():
            parent, run_id, _ = self._start_child(suite, entry, seed, config_hash, tags, reuse=False)
            try:
                self.log_batch(run_id, params=flat_params)
                self.call("log_text", run_id, traceback_text, "traceback.txt")
            finally:
                self.call("set_terminated", run_id, "FAILED")
                self._refresh_parent(suite, parent)
        return run_id

    # ------------------------------------------------------------------ helpers
    def _start_child(self, suite: str, entry: str, seed: int, config_hash: str,
                     tags: Mapping[str, str] | None, reuse: bool) -> tuple[str, str, bool]:
        """(parent id, child id, created): reuse a FINISHED child of the same key if `reuse`;
        mark RUNNING ones (interrupted attempts, since live writers hold the lock) KILLED."""
        parent = self.entry_run(suite, entry)
        own = {TAG_SUITE: suite, TAG_ENTRY: entry, TAG_TYPE: "seed", TAG_SEED: str(int(seed)),
               TAG_HASH: config_hash, TAG_PARENT: parent}
        existing = self._search(self.experiment_id(suite), {k: own[k] for k in (TAG_TYPE, TAG_PARENT, TAG_SEED,
                                TAG_HASH)}, order_by=["attributes.start_time ASC"])
        done = [r.info.run_id for r in existing if r.info.status == "FINISHED"]
        if reuse and done:
            return parent, done[0], False
        for stale in existing:
            if stale.info.status == "RUNNING":
                self.call("set_terminated", stale.info.run_id, "KILLED")
        run = self.call("create_run", self.experiment_id(suite), tags={**tag_values(tags), **own},
                        run_name=f"{entry}/seed{int(seed)}")
        return parent, run.info.run_id, True

    def interrupted(self) -> None:
        """Mark KILLED the parent runs this tracker opened that are still RUNNING (Ctrl-C or SIGTERM):
        entries the interrupted command had not finished; a rerun sets them FINISHED or FAILED."""
        if not self.enabled:
            return
        self._release_connections()
        with self._locked():
            for run_id in self._entries.values():
                try:
                    if self.client.get_run(run_id).info.status == "RUNNING":
                        self.client.set_terminated(run_id, "KILLED")
                except Exception as exc:            # once, no retries: the interrupt is what must be said
                    warnings.warn(f"could not mark the interrupted MLflow runs KILLED ({brief(exc)}); the next "
                                  "run of the same command does", stacklevel=2)
                    return

    def _release_connections(self) -> None:
        """Close the SQLite connections of this process's MLflow store (SQLAlchemy ``engine.dispose``).

        An interrupt (Ctrl-C, SIGTERM) that lands inside an MLflow write can leave that write's
        connection holding SQLite's write lock, and every later write then waits out the busy
        timeout and fails ("database is locked", measured: a 4-minute hang, then a crash instead
        of exit 130). So after an interrupt a write in progress is not followed by status writes (the
        run stays RUNNING until the next attempt marks it KILLED, :meth:`_start_child`), and
        :meth:`interrupted` first drops the connections, then tries its writes once."""
        store = getattr(getattr(self._client, "_tracking_client", None), "store", None)
        engine = getattr(store, "engine", None)
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.dispose()

    def _refresh_parent(self, suite: str, parent: str) -> None:
        """Parent status: FAILED while the latest attempt of some seed failed (as the results folder:
        a seed holds one run). An attempt's time is its end, or when a rerun reused it (TAG_ATTEMPT)."""
        children = self._search(self.experiment_id(suite), {TAG_TYPE: "seed", TAG_PARENT: parent},
                                order_by=["attributes.start_time ASC"])

        def attempted(run: Any) -> int:
            return max(int(run.data.tags.get(TAG_ATTEMPT, 0) or 0), run.info.end_time or run.info.start_time or 0)

        latest: dict[str, Any] = {}
        for run in sorted((r for r in children if r.info.status in ("FINISHED", "FAILED")), key=attempted):
            latest[run.data.tags.get(TAG_SEED, "")] = run
        if not latest:
            return
        failed = any(r.info.status == "FAILED" for r in latest.values())
        end = max(attempted(r) for r in latest.values()) or None
        self.call("set_terminated", parent, "FAILED" if failed else "FINISHED", end_time=end)

    def log_once(self, suite: str, tags: Mapping[str, str], run_name: str, *, params: Mapping[str, Any],
                 metrics: Sequence[tuple[str, float, int, int]], files: Sequence[Path]) -> str:
        """One finished run in the suite's experiment carrying `tags` (which identify its content: a
        rerun with the same tags reuses it), with params, metrics and `files` as artifacts; "" when
        disabled. A failure while logging marks the run FAILED."""
        if not self.enabled:
            return ""
        with self._locked():
            exp_id = self.experiment_id(suite)
            for run in self._search(exp_id, tags):
                if run.info.status == "FINISHED":
                    return run.info.run_id
            run_id = self.call("create_run", exp_id, tags=dict(tags), run_name=run_name).info.run_id
            try:
                self.log_batch(run_id, params=params, metrics=metrics)
                for f in files:
                    self.call("log_artifact", run_id, str(f))
            except BaseException as exc:
                if isinstance(exc, Exception):      # an interrupt writes nothing (_release_connections)
                    self.call("set_terminated", run_id, "FAILED")
                raise
            self.call("set_terminated", run_id, "FINISHED")
        return run_id

    def log_batch(self, run_id: str, *, params: Mapping[str, Any] | None = None,
                  tags: Mapping[str, Any] | None = None,
                  metrics: Sequence[tuple[str, float, int, int]] = ()) -> None:
        """MLflow's log_batch within its limits: keys made valid, long values truncated, chunked;
        `metrics` as (key, value, timestamp in ms, step)."""
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils import validation as v

        batches = [
            ("params", [Param(k, val) for k, val in {mlflow_key(k): str(x)[:v.MAX_PARAM_VAL_LENGTH]
                                                     for k, x in (params or {}).items()}.items()],
             v.MAX_PARAMS_TAGS_PER_BATCH),
            ("tags", [RunTag(k, val) for k, val in tag_values(tags).items()], v.MAX_PARAMS_TAGS_PER_BATCH),
            ("metrics", [Metric(mlflow_key(k), x, ts, step) for k, x, ts, step in metrics], v.MAX_METRICS_PER_BATCH),
        ]
        for field, items, size in batches:
            for i in range(0, len(items), size):
                self.call("log_batch", run_id, **{field: items[i:i + size]})


