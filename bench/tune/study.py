"""The Optuna study of `bench tune` (issue 8): storage, sampler, pruner, a trial budget shared by workers.

Storage (optuna 5.0; traps in reference/mlflow-optuna-latex.md §3.2):

* default: ``JournalStorage(JournalFileBackend(<results>/tune/<study>/journal.log))`` with optuna's
  default ``JournalFileSymlinkLock`` (atomic ``symlink``; safe on NFS); nothing to start;
* ``--storage URL``: an SQLAlchemy database URL (``sqlite:////abs/optuna.db``,
  ``postgresql://user@host/db``) → ``RDBStorage``, for workers on several machines;
* ``--storage PATH`` (no ``://``): a journal file at PATH.

Never the MLflow database: both keep an ``alembic_version`` table and Optuna then refuses the file.

Budget: ``--trials N`` is the study's total, counted over COMPLETE, PRUNED, FAIL and RUNNING trials
(RUNNING so that concurrent workers do not overshoot, FAIL so that a failing objective cannot loop
forever), except interrupted trials (Ctrl-C, SIGTERM, a dead worker's): FAIL with the user attribute
``tune.interrupted``, so a resumed study still runs N trials. A worker counts and asks for its next
trial while holding the study lock, so workers never exceed N. The lock is ``fcntl`` on ``<storage file>.tune-lock`` for a journal or SQLite file,
and a PostgreSQL session-level advisory lock (``pg_advisory_lock``, key :data:`ADVISORY_KEY`) for a
``postgresql://`` storage, which holds across machines (issue 11: ``bench tune --workers N`` and
workers on several nodes). Optuna's ``MaxTrialsCallback`` is not used: it checks after a trial
ends, so concurrent workers start trials beyond N. Other server databases (MySQL) have no shared
lock: workers there may overshoot by at most (workers - 1) trials. Rerunning with a larger N
resumes the study and adds trials.

Stale trials: JournalStorage has no heartbeat. Each trial records its worker (``host:pid``); when a
session starts, RUNNING trials of dead processes of this machine are marked FAIL and interrupted.

Sampler: ``TPESampler(seed=derive_seed(seed, "tune", session), multivariate=True, group=True,
constant_liar=True, n_startup_trials=tune.startup_trials)``. ``session`` counts the processes that
joined the study (study attribute ``tune.sessions``, incremented under the lock): the first one
gets 0, so a sequential single-worker study is reproducible; every later process (parallel worker
or resume) gets its own random stream, so workers never propose identical startup points and a
resumed study does not replay its first proposals. Without a shared lock the worker id is mixed
in. ``group=True`` decomposes the conditional space (patience only for plateau, anneal length
only for linear/cosine).

Pruner: ``MedianPruner(n_startup_trials=tune.prune_startup_trials,
n_warmup_steps=tune.prune_warmup_epochs)`` on the per-epoch validation GED; ``NopPruner`` when
``tune.prune`` is false.

Identity: the first session writes ``tune.identity`` (target, direction, search space, profile,
entry, hash of the fixed config, fingerprints of the datasets the target reads); a session with another
identity is refused.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import sys
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.errors import BenchError, brief
from bench.executors.locking import LOCKS_WORK, file_lock
from bench.processes import process_alive
from bench.stage import derive_seed

JOURNAL_FILE = "journal.log"
IDENTITY = "tune.identity"
SESSIONS = "tune.sessions"
WORKER = "tune.worker"
ERROR = "tune.error"
INTERRUPTED = "tune.interrupted"        # a FAIL that is an interruption: not counted in the budget
ADVISORY_KEY = 0x6F737465_74756E65    # "ostetune": the PostgreSQL advisory lock key (a bigint) of the budget
STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def check_study_name(name: str) -> str:
    if not isinstance(name, str) or not STUDY_NAME.match(name):
        raise BenchError(f"study name {name!r} must be 1-100 letters, digits, '.', '_' or '-' (it names the "
                         "folder <results>/tune/<study>), e.g. seg-gamma-lambda")
    return name


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class StudyStorage:
    """An opened Optuna storage, how to describe it, and the lock its workers share (None: none)."""

    storage: Any
    description: str
    lock_path: Path | None
    advisory: Any = None          # PostgreSQL: a SQLAlchemy engine (NullPool) for pg_advisory_lock

    @property
    def shared_lock(self) -> bool:
        """Whether the workers of this storage share a lock (module docstring)."""
        return self.advisory is not None or (self.lock_path is not None and LOCKS_WORK)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across the processes that share the storage (no-op without a lock)."""
        if self.advisory is not None:
            from sqlalchemy import text

            with self.advisory.connect() as conn:       # the lock dies with the connection
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_KEY})
            return
        if self.lock_path is None:
            yield
            return
        with file_lock(self.lock_path):
            yield


def sqlite_file(url: str) -> Path | None:
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path).expanduser().resolve()


def database_url(spec: str) -> str:
    """`spec` with a PostgreSQL driver that is installed: SQLAlchemy 2.1 maps a bare ``postgresql://``
    to psycopg 3; where only psycopg2 is installed, ``postgresql+psycopg2://`` is used instead."""
    import importlib.util

    from sqlalchemy.engine import make_url

    url = make_url(spec)
    if (url.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None
            and importlib.util.find_spec("psycopg2") is not None):
        return url.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return spec


def open_storage(spec: str, study_dir: Path, mlflow_db: Path | None = None) -> StudyStorage:
    """The storage of `spec` (module docstring); `mlflow_db` is the MLflow SQLite file to stay away from."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    spec = (spec or "").strip()
    clash = (lambda p: mlflow_db is not None and p is not None and p == Path(mlflow_db).resolve())
    if "://" in spec:
        try:
            from sqlalchemy.engine import make_url

            shown = make_url(spec).render_as_string(hide_password=True)
        except Exception as exc:
            raise BenchError(f"--storage {spec!r} is not a database URL ({exc}); give e.g. "
                             "sqlite:////abs/path/optuna.db or postgresql://user@host/db, or a journal file path") from exc
        db = sqlite_file(spec)
        if clash(db):
            raise BenchError(f"--storage {shown} is the MLflow database; Optuna and MLflow cannot share one SQLite "
                             "file (both keep an alembic_version table). Use another file, or leave --storage out")
        if db is not None and not db.parent.is_dir():
            raise BenchError(f"--storage {shown}: folder {db.parent} does not exist")
        lock = db.with_name(f"{db.name}.tune-lock") if db is not None else None
        advisory = None
        try:
            spec = database_url(spec)
            if make_url(spec).get_backend_name() == "postgresql":
                from sqlalchemy import create_engine
                from sqlalchemy.pool import NullPool

                advisory = create_engine(spec, poolclass=NullPool)
            with StudyStorage(None, shown, lock, advisory).locked():   # first use creates the tables: one at a time
                storage = RDBStorage(spec)
        except Exception as exc:
            raise BenchError(f"cannot open the Optuna storage {shown}: {brief(exc)}. Give a reachable "
                             "database URL (sqlite:////abs/path/optuna.db, postgresql://user@host/db with its driver "
                             "installed: pip install 'psycopg[binary]'), or leave --storage out for a journal file under "
                             "<results>/tune/<study>/") from exc
        return StudyStorage(storage, shown, lock, advisory)
    path = Path(spec).expanduser().resolve() if spec else (Path(study_dir) / JOURNAL_FILE).resolve()
    if clash(path):
        raise BenchError(f"--storage {path} is the MLflow database; give the journal another file name")
    if path.is_dir():
        raise BenchError(f"--storage {path} is a folder; give a journal file path (e.g. {path / JOURNAL_FILE})")
    if spec and not path.parent.is_dir():        # as for a SQLite URL: a typo would start another study
        raise BenchError(f"--storage {path}: folder {path.parent} does not exist; create it, or check the path")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        backend = JournalFileBackend(str(path), lock_obj=JournalFileSymlinkLock(str(path)))
        storage = JournalStorage(backend)
    except Exception as exc:
        raise BenchError(f"cannot open the Optuna journal {path}: {brief(exc)}") from exc
    return StudyStorage(storage, f"journal:{path}", path.with_name(f"{path.name}.tune-lock"))


def open_study(store: StudyStorage, name: str, direction: str) -> Any:
    """Create the study or load it (resume)."""
    import optuna

    try:
        return optuna.create_study(storage=store.storage, study_name=check_study_name(name), direction=direction,
                                   load_if_exists=True)
    except Exception as exc:
        raise BenchError(f"cannot create or load study {name!r} in {store.description}: "
                         f"{brief(exc)}") from exc


def check_identity(study: Any, identity: dict[str, Any], leave_out: tuple[str, ...] = ()) -> None:
    """Refuse a setup that differs from the study's recorded one (not comparing `leave_out`: e.g. the
    data, checked before the phantoms are generated for nothing)."""
    identity = json.loads(json.dumps(identity))
    old = study.user_attrs.get(IDENTITY)
    if old is None:
        if study.direction.name.lower() != identity["direction"]:
            raise BenchError(f"study {study.study_name!r} was made to {study.direction.name.lower()}, this target "
                             f"{identity['target']!r} needs to {identity['direction']}; use another --study name")
        return
    diff = [f"{k}: {old.get(k)!r} → {identity.get(k)!r}" for k in sorted(set(old) | set(identity))
            if k not in leave_out and old.get(k) != identity.get(k)]
    if diff:
        raise BenchError(f"study {study.study_name!r} was made with another setup ({'; '.join(diff)}); rerun with "
                         "the same target, profile, options and --set values to resume it, or use a new --study name")


def join(study: Any, identity: dict[str, Any]) -> int:
    """Check/record the study identity, fail stale trials, return this session's index (call locked)."""
    import optuna

    identity = json.loads(json.dumps(identity))
    check_identity(study, identity)
    if study.user_attrs.get(IDENTITY) is None:
        study.set_user_attr(IDENTITY, identity)
    session = int(study.user_attrs.get(SESSIONS, 0))
    study.set_user_attr(SESSIONS, session + 1)
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        who = str(t.user_attrs.get(WORKER, ""))
        h, _, pid = who.rpartition(":")
        if h == host and pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            print(f"tune: trial {t.number} of dead worker {who} marked FAIL (interrupted: not counted in "
                  "--trials)", file=sys.stderr)
    return session


def configure(study: Any, tune: Any, seed: int, session: int, shared_lock: bool) -> None:
    """Set the seeded TPE sampler and the pruner of this session (module docstring)."""
    import optuna

    parts: list[int | str] = [int(seed), "tune", int(session)] + ([] if shared_lock else [worker_id()])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group=True
        study.sampler = optuna.samplers.TPESampler(seed=derive_seed(*parts), n_startup_trials=tune.startup_trials,
                                                   multivariate=True, group=True, constant_liar=True)
    study.pruner = (optuna.pruners.MedianPruner(n_startup_trials=tune.prune_startup_trials,
                                                n_warmup_steps=tune.prune_warmup_epochs)
                    if tune.prune else optuna.pruners.NopPruner())


def counted_states() -> tuple:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)


def interrupted(trial: Any) -> bool:
    """A FAIL that is an interruption (module docstring: budget): marked so, or a FAIL without the
    error an objective's failure always records (a dead worker's trial, failed when a session starts)."""
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and (bool(trial.user_attrs.get(INTERRUPTED)) or ERROR not in trial.user_attrs)


def budget_used(study: Any) -> int:
    return sum(not interrupted(t) for t in study.get_trials(deepcopy=False, states=counted_states()))


def run_trials(study: Any, store: StudyStorage, n_trials: int, evaluate: Callable[[Any], Any], *,
               max_failures: int, on_start: Callable[[Any], None] = lambda t: None,
               on_end: Callable[[Any, Any, Any, str], None] = lambda t, f, r, e: None) -> list[int]:
    """Ask, evaluate and tell trials until the study holds `n_trials` counted ones; return their numbers.

    `evaluate(trial)` returns an object with ``value`` and ``metrics``; ``optuna.TrialPruned`` prunes,
    any other exception fails the trial (its traceback kept in the user attribute ``tune.error``);
    `max_failures` consecutive failures raise BenchError. ``on_end(trial, frozen, record, error)``
    runs after the tell.
    """
    import optuna
    from optuna.trial import TrialState

    ran: list[int] = []
    failures = 0
    while True:
        with store.locked():
            if budget_used(study) >= n_trials:
                break
            trial = study.ask()
            trial.set_user_attr(WORKER, worker_id())
        record, error = None, ""
        try:
            on_start(trial)
            record = evaluate(trial)
            if not math.isfinite(float(record.value)):
                raise BenchError(f"the objective value {record.value} is not a finite number")
            state = TrialState.COMPLETE
        except optuna.TrialPruned as exc:
            state, error = TrialState.PRUNED, str(exc)
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            frozen = study.tell(trial, state=TrialState.FAIL)
            on_end(trial, frozen, None, "interrupted")
            raise
        except Exception:
            state, error = TrialState.FAIL, traceback.format_exc()
        if record is not None and state == TrialState.COMPLETE:
            for key, value in record.metrics.items():
                trial.set_user_attr(key, value)
        if state == TrialState.FAIL:
            trial.set_user_attr(ERROR, error[-2000:])
        frozen = (study.tell(trial, float(record.value)) if state == TrialState.COMPLETE
                  else study.tell(trial, state=state))
        on_end(trial, frozen, record, error)
        ran.append(trial.number)
        failures = failures + 1 if state == TrialState.FAIL else 0
        if failures >= max_failures:
            last = error.strip().splitlines()[-1] if error.strip() else "unknown error"
            raise BenchError(f"{failures} trials in a row failed (last: {last}); see the user attribute "
                             f"{ERROR!r} of trial {trial.number} or its MLflow run. Fix the cause and rerun to resume")
    return ran
