"""`bench tune`: Optuna search of the gamma annealing and lambda of the segmentation model (issue 8).

    space.py      the search space and the config section ``tune``
    data.py       test-free dataset views, the downstream validation score
    objective.py  the ``seg`` (validation GED) and ``downstream`` (validation macro-F1) objectives
    study.py      storage, seeded TPE sampler, MedianPruner, the trial budget shared by workers
    trial_log.py  MLflow: a parent run per study, a child run per trial
    overlay.py    the best parameters as a ``bench run --config`` overlay
    plots.py      optimisation history, parameter importances, gamma0 x lambda slice
    session.py    one session: set up, run trials, write summary.json and the files above

Importing this package registers the ``tune`` config section; `bench` commands import it only when
`bench tune` runs, so other commands' resolved configs do not change.
"""
from bench.tune.session import TARGETS, TuneRequest, run_tune
from bench.tune.space import TuneConfig

__all__ = ["TARGETS", "TuneConfig", "TuneRequest", "run_tune"]
