"""The tuning section of the report index (issue 8): every study under ``<results>/tune/``, each
saying which of the suite's entries ran with its best parameters (all studies share one folder, so
a report of a suite that used none of them still lists them, and says so).

Reads each study's ``summary.json`` (written by `bench tune`, bench.tune.session) and returns
Markdown lines: the objective, the trial counts, the best trial's value and parameters, the overlay
to pass to ``bench run --config``, and the study's figures. With `copy_to`, the figures are copied
there (``<copy_to>/<study>/<file>``) and linked as ``<link_prefix>/<study>/<file>``, so the report
folder stays self-contained; without it, links point at the files under `results` as given.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

FIGURES = (("history", "Optimisation history"), ("importance", "Parameter importances"),
           ("slice", "gamma0 x lambda slice"))


def studies(results: str | Path) -> list[dict]:
    """The summaries of every study under ``<results>/tune/`` (by name); unreadable ones are skipped."""
    root = Path(results) / "tune"
    found = []
    for path in sorted(root.glob("*/summary.json")) if root.is_dir() else []:
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        summary["_dir"] = str(path.parent)
        found.append(summary)
    return found


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def used_by(best_params: dict, run_configs: dict[str, dict]) -> list[str]:
    """The entries whose run config (``config.json``'s ``config``) holds the best trial's values in
    ``segmentation`` (bench.tune.overlay): the runs that were made with the study's overlay."""
    def holds(section: dict) -> bool:
        for key, value in best_params.items():
            mine = section.get(key)
            if isinstance(value, float) and isinstance(mine, (int, float)):
                if abs(float(mine) - value) > 1e-12 * max(1.0, abs(value)):
                    return False
            elif mine != value:
                return False
        return True

    return sorted(e for e, config in run_configs.items() if holds(config.get("segmentation") or {}))


def tuning_section(results: str | Path, copy_to: str | Path | None = None, link_prefix: str = "",
                   run_configs: dict[str, dict] | None = None) -> list[str]:
    """Markdown lines of the tuning section (empty when no study exists); see the module docstring.
    With `run_configs` (entry → the config of the suite's run), each study says which entries ran
    with its best parameters."""
    found = studies(results)
    if not found:
        return []
    out = ["## Tuning", "",
           "Optuna studies of the segmentation's gamma annealing and lambda (`bench tune`); the test split "
           "is never used while tuning. Pass a study's overlay to `bench run --config` to use its best "
           "parameters.", ""]
    for s in found:
        name, source = s.get("study", Path(s["_dir"]).name), Path(s["_dir"])
        t = s.get("trials", {})
        out += [f"### Study `{name}`", "",
                f"- target `{s.get('target')}`" + (f" (entry `{s['entry']}`)" if s.get("entry") else "")
                + f", profile `{s.get('profile')}`: {s.get('objective', '')}",
                f"- trials: {t.get('total', 0)} ({t.get('complete', 0)} complete, {t.get('pruned', 0)} pruned, "
                f"{t.get('fail', 0)} failed); storage `{s.get('storage', '')}`"]
        best = s.get("best")
        if best:
            params = ", ".join(f"{k} = {_fmt(v)}" for k, v in best["params"].items())
            out.append(f"- best: trial {best['number']}, value {_fmt(float(best['value']))}; {params}")
            overlay = s.get("files", {}).get("overlay")
            if overlay:
                out.append(f"- overlay: `{source / overlay}`")
            if run_configs is not None:
                users = used_by(best["params"], run_configs)
                out.append(f"- this suite's runs of {', '.join(f'`{e}`' for e in users)} used these parameters"
                           if users else "- no run of this suite used these parameters")
        else:
            out.append("- no complete trial yet")
        out += [f"- note: {n}" for n in s.get("notes", [])] + [""]
        for key, title in FIGURES:
            file = s.get("files", {}).get(key)
            if not file or not (source / file).is_file():
                continue
            if copy_to is not None:
                target = Path(copy_to) / name / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / file, target)
                link = f"{link_prefix.rstrip('/')}/{name}/{file}" if link_prefix else f"{name}/{file}"
            else:
                link = str(source / file)
            out += [f"![{title}: {name}](<{link}>)", ""]
    return out
