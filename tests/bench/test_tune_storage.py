"""The study machinery of `bench tune` (issue 8) without training: the budget lock under four forked
workers with an instant objective, the seeded sampler (same session → same proposals), a
database-URL storage, the failing of RUNNING trials whose worker process is gone, failed trials
(exceptions, NaN values) recorded while a run of them stops the session."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from bench import registry
from bench.config import resolve
from bench.errors import BenchError
from bench.tune.space import make_space, suggest
from bench.tune.study import JOURNAL_FILE, WORKER
from study_runs import journal


class Record:
    """What an objective returns to run_trials: the value and the metrics kept as user attributes."""

    def __init__(self, value: float, metrics: dict | None = None):
        self.value, self.metrics = value, metrics or {}


def _cheap_worker(journal: str, n_trials: int, session: int) -> None:
    """A worker of run_trials with an instant objective (forked by the test below)."""
    from bench.tune.space import TuneConfig
    from bench.tune.study import configure, open_storage, open_study, run_trials

    if "://" not in journal:                                       # a journal's folder must exist
        Path(journal).parent.mkdir(parents=True, exist_ok=True)
    store = open_storage(journal, Path(journal).parent)
    study = open_study(store, "cheap", "minimize")
    configure(study, TuneConfig(startup_trials=2), seed=0, session=session, shared_lock=True)
    space = make_space(TuneConfig(), resolve("smoke").segmentation)

    run_trials(study, store, n_trials, lambda t: Record(suggest(t, space)["segmentation.gamma0"]), max_failures=1)


def test_budget_is_exact_under_contention_and_the_sampler_is_seeded(tmp_path):
    import multiprocessing

    registry.load_entries()
    path = str(tmp_path / "cheap" / JOURNAL_FILE)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_cheap_worker, args=(path, 24, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    study = optuna.load_study(study_name="cheap", storage=journal(path))
    assert sorted(t.number for t in study.trials) == list(range(24))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len({t.user_attrs[WORKER] for t in study.trials}) >= 2           # the workers shared the trials

    def sequential(run: str, session: int) -> list[dict]:
        _cheap_worker(str(tmp_path / run / JOURNAL_FILE), 5, session)
        return [t.params for t in optuna.load_study(study_name="cheap", storage=journal(tmp_path / run / JOURNAL_FILE)).trials]

    first = sequential("a", 0)
    assert sequential("b", 0) == first                 # one worker, session 0: the same proposals
    assert sequential("c", 1)[0] != first[0]           # another session: another random stream


def test_database_url_storage_and_stale_trials_of_dead_workers(tmp_path):
    import socket

    from bench.tune.study import join, open_storage, open_study

    registry.load_entries()
    url = f"sqlite:///{tmp_path.resolve()}/optuna.db"
    _cheap_worker(url, 3, 0)
    study = optuna.load_study(study_name="cheap", storage=url)
    assert [t.number for t in study.trials] == [0, 1, 2] and (tmp_path / "optuna.db.tune-lock").is_file()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = open_storage("", tmp_path / "stale")
    study = open_study(store, "stale", "minimize")
    orphan, live = study.ask(), study.ask()
    orphan.set_user_attr(WORKER, f"{socket.gethostname()}:{dead.pid}")       # its process is gone
    live.set_user_attr(WORKER, f"{socket.gethostname()}:1")                 # pid 1 is alive
    assert join(study, {"target": "seg", "direction": "minimize"}) == 0
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: optuna.trial.TrialState.FAIL, 1: optuna.trial.TrialState.RUNNING}
    from bench.tune.study import budget_used
    assert budget_used(study) == 1          # the dead worker's trial was interrupted: not in the budget
    with pytest.raises(BenchError, match="another setup"):
        join(study, {"target": "seg", "direction": "minimize", "profile": "quick"})


def test_failed_trials_are_recorded_and_a_run_of_failures_stops_the_session(tmp_path):
    from bench.tune.study import ERROR, open_storage, open_study, run_trials

    store = open_storage("", tmp_path)
    study = open_study(store, "f", "minimize")
    outcomes = iter([ValueError("diverged"), float("nan"), 1.0] + [RuntimeError("boom")] * 2
                    + [RuntimeError("boom again")])

    def evaluate(trial):
        trial.suggest_float("gamma0", 0.5, 1.0)
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return Record(out, {"m": 2.0})

    with pytest.raises(BenchError, match="3 trials in a row failed.*boom again"):
        run_trials(study, store, 10, evaluate, max_failures=3)
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states == ["FAIL", "FAIL", "COMPLETE", "FAIL", "FAIL", "FAIL"]     # a success resets the count
    assert "diverged" in trials[0].user_attrs[ERROR] and "not a finite number" in trials[1].user_attrs[ERROR]
    assert trials[2].value == 1.0 and trials[2].user_attrs["m"] == 2.0


def test_an_interrupted_trial_does_not_use_up_the_budget(tmp_path):
    """Ctrl-C in trial 1 of 3: the rerun still completes three trials (the study holds a fourth, failed
    as interrupted), while a trial the objective failed counts (a failing objective cannot loop)."""
    from bench.tune.study import budget_used, interrupted, open_storage, open_study, run_trials

    store = open_storage("", tmp_path)
    study = open_study(store, "i", "minimize")
    calls = iter([1.0, KeyboardInterrupt(), 2.0, ValueError("diverged"), 3.0])

    def evaluate(trial):
        trial.suggest_float("gamma0", 0.5, 1.0)
        out = next(calls)
        if isinstance(out, BaseException):
            raise out
        return Record(out)

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, store, 3, evaluate, max_failures=3)
    assert budget_used(study) == 1 and interrupted(study.trials[1])
    run_trials(study, store, 3, evaluate, max_failures=3)
    states = [(t.state.name, interrupted(t)) for t in study.get_trials()]
    assert states == [("COMPLETE", False), ("FAIL", True), ("COMPLETE", False), ("FAIL", False)]
    assert budget_used(study) == 3


def test_an_unreachable_database_is_said_on_one_line(tmp_path):
    """psycopg's connection error spans lines; the CLI's `bench: error:` keeps it on one (bench.errors.brief)."""
    pytest.importorskip("psycopg")
    from bench.errors import brief
    from bench.tune.study import open_storage

    with pytest.raises(BenchError) as caught:
        open_storage("postgresql://nobody@127.0.0.1:9/nodb", tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "OperationalError" in message and "Connection refused" in message
    with pytest.raises(BenchError, match="folder .*typo does not exist"):     # a journal path: no folder made
        open_storage(str(tmp_path / "typo" / "journal.log"), tmp_path)
    assert not (tmp_path / "typo").exists()
    assert brief(ValueError("a\n  b\tc " + "x" * 500), limit=20) == "ValueError: a b c x…"
    assert brief(KeyError()) == "KeyError" and len(brief(ValueError("y" * 900))) == 400
