"""Toy entries for engine tests (importable as a plugin: PYTHONPATH=tests/bench, module toy_entries).

`toy` has two stages: `toy_prep` draws a per-seed signal strength, `toy_probe` writes per-bone
probabilities correlated with the label. `toy-optional` is the same, but its probe reads `toy_prep`
only with ``toy.use_prep=true`` (else it takes ``toy.strength``): a stage input that a config drops.
`toy.unusable=n` makes the probe write no row for the first n test subjects.
`toy-reported` is `toy-optional` whose `toy_prep` has a companion, `toy_report`, writing
``toy.report_lines`` lines (an option left out of `toy_prep`'s key). Each stage execution appends its name to $TOY_LOG;
$TOY_KILL_AT=<stage> makes that stage SIGKILL its own process (an interrupted run);
$TOY_SLEEP_AT=<stage> makes it sleep two minutes (to be stopped from outside).
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.config import register_section
from bench.data import BONES
from bench.registry import Entry, Stage, register


@dataclass
class ToyConfig:
    use_prep: bool = True       # toy-optional: read toy_prep's strength
    strength: float = 1.5       # toy-optional without toy_prep: this strength
    report_lines: int = 2       # toy-reported: lines its companion toy_report writes (unkeyed in toy_prep)
    unusable: int = 0           # toy-optional: the probe writes nothing for the first n test subjects (no bone)


register_section("toy", ToyConfig)


def _trace(name: str) -> None:
    log = os.environ.get("TOY_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(name + "\n")
    if os.environ.get("TOY_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("TOY_SLEEP_AT") == name:       # a long stage, to be interrupted from outside
        time.sleep(120)


def toy_prep(ctx) -> dict:
    _trace("toy_prep")
    strength = float(ctx.rng("strength").uniform(1.0, 2.0))
    (ctx.out_dir / "prep.json").write_text(json.dumps({"strength": strength}))
    return {"strength": strength}


def toy_probe(ctx) -> dict:
    _trace("toy_probe")
    if "toy_prep" in ctx.inputs:
        strength = json.loads((ctx.inputs["toy_prep"] / "prep.json").read_text())["strength"]
    else:
        strength = ctx.config.toy.strength
    manifest = ctx.datasets["cls"].manifest
    rng = ctx.rng("scores")
    rows = []
    unusable = set(manifest.loc[manifest["split"] == "test", "subject_id"].drop_duplicates()
                   .head(ctx.config.toy.unusable))
    for _, r in manifest.iterrows():
        if r["subject_id"] in unusable:          # as a patch stage does when none of a subject's bones is usable
            continue
        for bone in BONES:
            logit = strength * (2 * float(r["label"]) - 1) + rng.normal()
            rows.append({"subject_id": r["subject_id"], "split": r["split"], "bone": bone,
                         "y_true": int(r["label"]), "p_pos": 1 / (1 + np.exp(-logit))})
    pd.DataFrame(rows).to_parquet(ctx.out_dir / "bone_predictions.parquet", index=False)
    for epoch in range(3):
        ctx.log("loss", 1.0 / (epoch + 1), epoch=epoch)
    return {"metrics": {"strength": strength}}


def toy_report(ctx) -> dict:
    _trace("toy_report")
    strength = json.loads((ctx.inputs["toy_prep"] / "prep.json").read_text())["strength"]
    (ctx.out_dir / "report.txt").write_text("".join(f"strength {strength}\n" for _ in range(ctx.config.toy.report_lines)))
    ctx.log("reported_strength", strength)
    return {"lines": ctx.config.toy.report_lines}


def toy_fail(ctx) -> dict:
    raise RuntimeError("this toy entry always fails")


PREP = Stage("toy_prep", toy_prep, sections=("run",), datasets=("cls",), splits=())   # reads no split
register(Entry("toy", "two-stage toy entry", stages=(PREP, Stage("toy_probe", toy_probe, inputs=("toy_prep",),
                                                                 datasets=("cls",))),
               kind="example", table="table3", row="Toy"))
register(Entry("toy-fail", "an entry that always fails", stages=(PREP, Stage("toy_fail", toy_fail,
                                                                           inputs=("toy_prep",))),
               kind="example"))
register(Entry("toy-optional", "toy whose probe reads toy_prep only with toy.use_prep",
               stages=(PREP, Stage("toy_probe", toy_probe, sections=("toy",), inputs=("toy_prep",), datasets=("cls",),
                                   needs=lambda config: ("toy_prep",) if config.toy.use_prep else ())),
               kind="example"))
REPORT = Stage("toy_report", toy_report, sections=("toy",), inputs=("toy_prep",), datasets=("cls",), splits=())
PREP_REPORTED = Stage("toy_prep", toy_prep, sections=("run", "toy"), datasets=("cls",), splits=(),
                      companions=(REPORT,), unkeyed=("toy.report_lines",))
register(Entry("toy-reported", "toy-optional whose toy_prep has the companion toy_report",
               stages=(PREP_REPORTED, Stage("toy_probe", toy_probe, sections=("toy.use_prep", "toy.strength"),
                                            inputs=("toy_prep",), datasets=("cls",),
                                            needs=lambda config: ("toy_prep",) if config.toy.use_prep else ())),
               kind="example"))
