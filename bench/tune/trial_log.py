"""MLflow logging of a study (issue 8): a parent run per study, a child run per trial.

Uses bench.tracking.Tracker for the store (explicit URI, default ``sqlite:///<results>/mlflow.db``,
tables created before any worker logs) and for the parent: experiment ``osteobench/tune``, parent
run = ``Tracker.entry_run("tune", <study>)`` (get-or-create, so workers and resumed sessions share
it), tagged ``osteobench.optuna_study``. Each trial opens a child run ``<study>/trial<NNNN>``
(tags ``mlflow.parentRunId``, ``osteobench.run_type=trial``, ``osteobench.optuna_study``,
``osteobench.optuna_trial``) when it starts; its id goes into the trial's user attribute
``mlflow_run_id``. When the trial ends the child gets the trial's parameters, the objective value,
final metrics, per-epoch history (``<stage>/<metric>`` at step = epoch; a pruned trial logs its
reported intermediate values as ``objective/intermediate``), the tag ``optuna.state`` and the status
FINISHED (COMPLETE, PRUNED), FAILED (FAIL, with ``traceback.txt``) or KILLED (interrupted).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from bench.tracking import TAG_PARENT, TAG_TYPE, Tracker

SUITE = "tune"                            # experiment osteobench/tune
TAG_STUDY = "osteobench.optuna_study"
TAG_TRIAL = "osteobench.optuna_trial"
TAG_STATE = "optuna.state"
RUN_ID_ATTR = "mlflow_run_id"


class TrialLogger:
    """Logs trials of one study; every method is a no-op when tracking is disabled."""

    def __init__(self, results: Path, study: str, uri: str | None = None, enabled: bool = True,
                 params: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None):
        self.tracker = Tracker(results, uri=uri, enabled=enabled)
        self.enabled = self.tracker.enabled
        self.study = study
        self.parent = ""
        if not self.enabled:
            return
        self.experiment = self.tracker.experiment_id(SUITE)
        self.parent = self.tracker.entry_run(SUITE, study, tags={TAG_STUDY: study, **(tags or {})})
        self.tracker.log_params_once(self.parent, params or {})

    def start(self, trial: Any) -> str:
        """Open the trial's child run and record its id on the trial."""
        if not self.enabled:
            return ""
        tags = {TAG_PARENT: self.parent, TAG_TYPE: "trial", TAG_STUDY: self.study, TAG_TRIAL: str(trial.number)}
        run = self.tracker.call("create_run", self.experiment, tags=tags,
                                run_name=f"{self.study}/trial{trial.number:04d}")
        trial.set_user_attr(RUN_ID_ATTR, run.info.run_id)
        return run.info.run_id

    def end(self, trial: Any, frozen: Any, record: Any, error: str) -> None:
        """Log the finished trial (`frozen`: its FrozenTrial) and close its child run."""
        run_id = trial.user_attrs.get(RUN_ID_ATTR, "") if self.enabled else ""
        if not run_id:
            return
        state = frozen.state.name
        metrics: list[tuple[str, float, int]] = []
        if frozen.value is not None:
            metrics.append(("objective", float(frozen.value), 0))
        if record is not None:
            metrics += [(k, float(v), 0) for k, v in record.metrics.items()]
            metrics += [(k, float(v), int(step)) for k, v, step in record.history]
        else:
            metrics += [("objective/intermediate", float(v), int(s)) for s, v in sorted(frozen.intermediate_values.items())]
        status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED"}.get(state, "KILLED" if error == "interrupted"
                                                                    else "FAILED")
        try:
            now = int(time.time() * 1000)
            self.tracker.log_batch(run_id, params={**frozen.params, "trial_number": frozen.number},
                                   metrics=[(k, x, now, step) for k, x, step in metrics])
            self.tracker.call("set_tag", run_id, TAG_STATE, state)
            if error and state == "FAIL":
                self.tracker.call("log_text", run_id, error, "traceback.txt")
        except Exception:
            self.tracker.call("set_terminated", run_id, status)
            raise
        # an interrupt inside these writes writes nothing more (bench.tracking.Tracker._release_connections)
        self.tracker.call("set_terminated", run_id, status)

    def close(self) -> None:
        """Mark the parent run finished (a later session reopens nothing: children carry the state)."""
        if self.enabled and self.parent:
            self.tracker.call("set_terminated", self.parent, "FINISHED")
