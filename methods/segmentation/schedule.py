"""The gamma schedule of the relaxed OT constraint (paper "Imbalanced constraint relaxation").

gamma caps the mass each prediction sample may receive (row sums of T <= gamma). The paper starts
at gamma0 < 1 and "gradually anneals it to 1". Four kinds:

* ``plateau``: the reference (MoSE ``utils/utils.py::m_scheduler``, segmentation.md §6): gamma0
  until the watched metric (the reference feeds the cumulative mean training loss since epoch 0)
  has not improved for more than ``patience`` epochs, then 1 for the rest of training; it fires
  once and never again.
* ``linear``: gamma0 + (1 - gamma0) * min(epoch / anneal_epochs, 1).
* ``cosine``: gamma0 + (1 - gamma0) * (1 - cos(pi * min(epoch / anneal_epochs, 1))) / 2.
* ``constant``: gamma0 throughout.

``epoch`` counts from 0; ``anneal_epochs <= 0`` with linear/cosine means gamma = 1 from epoch 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from bench.errors import BenchError

KINDS = ("plateau", "linear", "cosine", "constant")


@dataclass
class PlateauState:
    """Book-keeping of the reference plateau switch."""

    best: float = math.inf       # best (lowest) metric seen so far
    bad_epochs: int = 0          # epochs since the last improvement
    switched: bool = False       # True once gamma has been set to 1 (never undone)


def _check(kind: str, gamma0: float) -> None:
    if kind not in KINDS:
        raise BenchError(f"unknown gamma schedule {kind!r}; choose one of {', '.join(KINDS)}")
    if not (0.0 < gamma0 <= 1.0) or math.isnan(gamma0):
        raise BenchError(f"gamma0 = {gamma0} must lie in (0, 1] (it caps each sample's transported mass)")


def gamma_schedule(kind: str, gamma0: float, epoch: int, *, anneal_epochs: int = 0,
                   plateau_state: PlateauState | None = None) -> float:
    """gamma for `epoch` (0-based) under schedule `kind`; see the module docstring."""
    _check(kind, gamma0)
    if kind == "constant":
        return float(gamma0)
    if kind == "plateau":
        return 1.0 if plateau_state is not None and plateau_state.switched else float(gamma0)
    progress = 1.0 if anneal_epochs <= 0 else min(max(epoch, 0) / anneal_epochs, 1.0)
    if kind == "cosine":
        progress = 0.5 * (1.0 - math.cos(math.pi * progress))
    return float(gamma0 + (1.0 - gamma0) * progress)


class GammaScheduler:
    """One object for every kind: read ``.gamma`` before an epoch, call ``.step(epoch, metric)`` after it.

    ``metric`` is what the plateau switch watches (lower is better; the training loop passes the
    cumulative mean training loss like the reference); other kinds only use ``epoch``.
    """

    def __init__(self, kind: str = "plateau", gamma0: float = 0.5, anneal_epochs: int = 0,
                 patience: int = 10) -> None:
        _check(kind, gamma0)
        if patience < 0:
            raise BenchError(f"gamma patience = {patience} must be >= 0 epochs")
        self.kind, self.gamma0 = kind, float(gamma0)
        self.anneal_epochs, self.patience = int(anneal_epochs), int(patience)
        self.epoch = 0                       # the epoch whose gamma `.gamma` returns
        self.state = PlateauState()

    @property
    def gamma(self) -> float:
        """gamma of the current epoch."""
        return gamma_schedule(self.kind, self.gamma0, self.epoch, anneal_epochs=self.anneal_epochs,
                              plateau_state=self.state)

    def step(self, epoch: int, metric: float | None = None) -> float:
        """Record the end of `epoch` (with its watched metric); return gamma of the next epoch."""
        self.epoch = int(epoch) + 1
        st = self.state
        if self.kind == "plateau" and not st.switched and metric is not None:
            if metric < st.best:                # a NaN metric counts as no improvement
                st.best, st.bad_epochs = float(metric), 0
            else:
                st.bad_epochs += 1
            if st.bad_epochs > self.patience:   # reference: counter > patience
                st.switched = True
        return self.gamma

    def state_dict(self) -> dict:
        """Everything needed to resume."""
        return {"epoch": self.epoch, **asdict(self.state)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.state = PlateauState(float(state["best"]), int(state["bad_epochs"]), bool(state["switched"]))
