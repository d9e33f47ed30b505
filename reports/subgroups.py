"""The report's subgroup tables (``bench report --subgroups sex age:65``): AUC per subgroup and entry.

Beyond the paper, which reports whole cohorts only. For each ``--subgroups`` spec (a `cls` manifest
column, or ``column:threshold``; bench.subgroups) and each entry, the cell is the mean ± std
(ddof=1) over seeds of the AUC of the subjects of that group on the report's split, with the
group's mean subject count; a group with one class in a seed has no AUC there (NaN, left out of
the mean). Written as ``tables/subgroups_<spec>.csv`` (``age:65`` → ``subgroups_age_65.csv``) and shown in ``report.md``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from bench import results as store
from bench.subgroups import parse_by, run_manifest, subgroup_table
from reports.index import TableItem


def subgroup_aucs(results: Path, suite: str, entries: Sequence[str], spec: str, split: str) -> pd.DataFrame:
    """entry, seed, group, auc, n of every complete run of `entries` in `suite`."""
    rows, manifests = [], {}
    for path in store.complete_runs(results, suite, entries):
        run = store.read_run(path)
        key = (run.config.get("data") or {}).get("cls")
        if key not in manifests:
            manifests[key] = run_manifest(run.config, path)
        table = subgroup_table(run.predictions, manifests[key], spec, split)
        for group, r in table.drop(index="all").iterrows():
            rows.append({"entry": run.entry, "seed": run.seed, "group": str(group), "auc": float(r["auc"]),
                         "n": int(r["n"])})
    return pd.DataFrame(rows, columns=["entry", "seed", "group", "auc", "n"])


def subgroup_item(frame: pd.DataFrame, spec: str, split: str, label: Callable[[str], str], folder: Path,
                  prefix: str, digits: int = 2) -> TableItem:
    """The table of one spec: rows = entries (paper row labels), columns = groups; its CSV in `folder`."""
    parse_by(spec)
    agg = frame.groupby(["entry", "group"]).agg(mean=("auc", "mean"), std=("auc", "std"), seeds=("auc", "count"),
                                                 n=("n", "mean")).reset_index()
    name = re.sub(r"[^A-Za-z0-9_]+", "_", spec).strip("_")     # age:65 -> age_65
    agg.to_csv(folder / f"subgroups_{name}.csv", index=False)

    def cell(r) -> str:
        if not math.isfinite(r["mean"]):
            return f"– (n={r['n']:.0f})"
        spread = "" if r["seeds"] < 2 else f" ± {r['std']:.{digits}f}"
        return f"{r['mean']:.{digits}f}{spread} (n={r['n']:.0f})"
    agg["cell"] = [cell(r) for _, r in agg.iterrows()]
    wide = agg.pivot(index="entry", columns="group", values="cell").fillna("")
    groups = list(wide.columns)
    lines = ["| Model | " + " | ".join(groups) + " |", "| --- |" + " --- |" * len(groups)]
    lines += [f"| {label(e)} | " + " | ".join(wide.loc[e, g] for g in groups) + " |" for e in wide.index]
    caption = (f"AUC by {spec} on the {split} split (beyond the paper): mean ± standard deviation (ddof=1) over "
               "seeds of the AUC of each group's subjects, with the group's mean subject count; a group of one "
               "class has no AUC (–).")
    return TableItem(f"subgroups_{name}", f"Subgroups: AUC by {spec}", "\n".join(lines) + "\n\n" + caption,
                     (f"{prefix}/subgroups_{name}.csv",))
