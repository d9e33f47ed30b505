"""Optuna journal and MLflow checks shared by the tuning tests (importable as `study_runs`)."""
from __future__ import annotations

from pathlib import Path


def assert_one_study_run(results: Path, trials: int) -> None:
    """One parent run for the study in results/mlflow.db, with one child run per trial 0..trials-1."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{Path(results).resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("osteobench/tune")
    parents = client.search_runs([exp.experiment_id], "tags.`osteobench.run_type` = 'entry'")
    assert len(parents) == 1                                            # one study run for all workers
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(int(r.data.tags["osteobench.optuna_trial"]) for r in children) == list(range(trials))


def journal(path: Path | str):
    """The Optuna journal storage of a study's journal file."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))
