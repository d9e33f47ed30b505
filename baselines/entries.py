"""Registers the baselines (paper Table 8 and the extra reference baselines)."""
from __future__ import annotations

from baselines.clinical import fit_clinical
from bench.registry import Entry, Stage, register

register(Entry(
    name="clinical",
    description="logistic regression on age and sex alone: the floor any image model must beat",
    stages=(Stage("clinical", fit_clinical, datasets=("cls",), seeded=False),),
    kind="reference",
    table="table8",
    row="Clinical covariates (age, sex)",
    tags=("baseline", "beyond-paper"),
    info={"roi": "none (covariates only)", "architecture": "logistic regression"},
))
