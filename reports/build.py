"""``build_report``: a suite's results → tables, figures and an index, in ``results/<suite>/report/``.

Layout of the report folder (written in a temporary folder and renamed into place, so a report
is either the previous complete one or the new complete one)::

    report.md                 index: every table (as Markdown) and figure, with a short text
    tables/<table>.tex        booktabs tables (reports/tables.py), tables.tex includes them
    tables/<table>.csv        the numbers behind each table (means, std, Δ, Holm p, emphasis)
    tables/summary.csv        mean/std/n of every entry, split and metric
    tables/comparisons.csv    every paired test (Δ, CI, p, Holm p)
    figures/*.png|pdf         Fig. 5, ROC, calibration, training curves, segmentation montage
    figures/examples/*.png    PNGs that runs and their stages left in ``figures/`` folders

The report is logged to MLflow as a run tagged ``osteobench.run_type=report`` in the suite's
experiment, with the folder as artifacts (``mlflow=False`` skips it).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib.resources import files as package_files
from pathlib import Path
from typing import Sequence

import pandas as pd

from bench import registry, results as store
from bench.atomic import atomic_dir
from bench.errors import BenchError
from reports import examples as ex
from reports import figures as figs
from reports import index as idx
from reports import tables as tab
from reports.significance import run_tests
from reports.screening import screening_item
from reports.subgroups import subgroup_aucs, subgroup_item
from reports.summary import best_full_entry, summarise
from reports.tuning import tuning_section

TABLES_DIR = "tables"
FIGURES_DIR = "figures"
INDEX_FILE = "report.md"


@dataclass(frozen=True)
class ReportConfig:
    """Report options."""

    split: str = "test"                       # split the tables, tests and figures use
    digits: int = 2                           # decimals of the table cells (the paper's two)
    best_metric: str = "auc"                  # metric that picks the best full-method entry
    best_split: str = "test"                  # split it is read on (the paper's choice; "val" avoids test selection)
    alpha: float = 0.05                       # family-wise level of the significance markers (after Holm)
    fig5_entry: str | None = None             # entry of Fig. 5 (default: the best full-method entry)
    examples: int = 4                         # example pictures in the segmentation montage
    subgroups: tuple[str, ...] = ()           # AUC tables by `cls` manifest columns, e.g. ("sex", "age:65")
    figures: figs.FigureConfig = field(default_factory=figs.FigureConfig)  # figure options


def build_report(results: str | Path, suite: str, out: str | Path | None = None,
                 entries: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0, *,
                 config: ReportConfig | None = None, mlflow: bool = True, tracking_uri: str | None = None,
                 plugins: Sequence[str] = ()) -> Path:
    """Build the report of `suite` from `results` (restricted to `entries`); return ``report.md``'s path."""
    cfg = config or ReportConfig()
    results = Path(results)
    out = Path(out) if out is not None else results / suite / "report"
    registry.load_entries(plugins)
    known = registry.entries()
    check_out(out)
    asked = entries
    if entries:
        suite_dir = results / suite
        entries = with_references(entries, known, {p.name for p in suite_dir.iterdir() if p.is_dir()}
                                  if suite_dir.is_dir() else set())
    metrics = store.load_metrics(results, suite, entries)
    if metrics.empty:
        raise BenchError(f"suite {suite!r} in {results} has no complete run; `bench run --suite {suite}` makes them")
    predictions = store.load_predictions(results, suite, entries)
    summary = summarise(metrics)
    present = list(dict.fromkeys(metrics["entry"]))
    best = best_full_entry(summary, {n: known[n] for n in present if n in known}, cfg.best_metric, cfg.best_split)
    fig5_entry = cfg.fig5_entry or best
    if cfg.fig5_entry is not None and cfg.fig5_entry not in present:
        raise BenchError(f"Fig. 5 entry {cfg.fig5_entry!r} has no results in suite {suite!r}; entries: {present}")
    configs = run_configs(results, suite, entries)
    tables = tab.assemble(summary, known, best, cfg.split, run_networks(results, suite, entries, configs))
    tests = run_tests(predictions, {k: t.comparisons() for k, t in tables.items()}, split=cfg.split,
                      n_boot=n_boot, seed=seed, alpha=cfg.alpha)

    page = idx.IndexPage(suite=suite, source=str(results / suite))
    page.skipped = idx.describe_skipped([k for k in tab.SPECS if k not in tables])
    page.entries = [{"entry": n, "kind": getattr(known.get(n), "kind", "unregistered"),
                     "table": getattr(known.get(n), "table", "") or "", "row": getattr(known.get(n), "row", "") or "",
                     "seeds": " ".join(str(s) for s in sorted(set(metrics.loc[metrics["entry"] == n, "seed"])))}
                    for n in present]
    added = [n for n in present if asked and n not in asked]
    if added:
        page.notes.append(f"Included beside the entries asked for: {added}, the references their Δ and "
                          "significance markers compare with (full-method parents and the best full-method entry).")
    unknown = [n for n in present if n not in known]
    if unknown:
        page.notes.append(f"Entries {unknown} have results but are not registered (import their module with "
                          "--plugin); they appear in the figures and the screening table only.")
    if best:
        page.notes.append(f"Best full-method entry: `{best}` (highest mean {cfg.best_split} {cfg.best_metric}); "
                          "Table 6 compares with it and Table 8 shows it as \"Ours\".")
    page.notes += [f"{m}." for m in store.skipped_runs(results, suite, entries)]
    if not tests.available:
        page.notes.append("bench.stats was not available: tables carry no significance markers.")
    folds = sorted({s for s in metrics["split"] if re.fullmatch(r"fold\d+", s)})
    if folds and cfg.split == "test":
        page.notes.append(f"Cross-validated suite (bench.cv): its test split is every subject's out-of-fold "
                          f"prediction over {len(folds)} folds, pooled; tables/summary.csv also has each fold's "
                          f"own test metrics (splits {folds[0]}..{folds[-1]}).")

    with atomic_dir(out, overwrite=True) as tmp:
        _write_tables(tmp / TABLES_DIR, tables, tests, known, summary, cfg, page)
        label = unique_labels(present, known)
        screening = screening_item(summary, present, cfg.split, label, tmp / TABLES_DIR, TABLES_DIR, cfg.digits)
        if screening is not None:                       # beyond the paper (reports.screening)
            page.tables.append(screening)
        for spec in cfg.subgroups:                      # beyond the paper (reports.subgroups)
            frame = subgroup_aucs(results, suite, present, spec, cfg.split)
            page.tables.append(subgroup_item(frame, spec, cfg.split, label, tmp / TABLES_DIR, TABLES_DIR, cfg.digits))
        _write_figures(tmp / FIGURES_DIR, results, suite, tables, predictions, metrics, known, fig5_entry,
                       n_boot, seed, cfg, page)
        tuning = tuning_section(results, copy_to=tmp / FIGURES_DIR / "tuning", link_prefix=f"{FIGURES_DIR}/tuning",
                                run_configs=configs)
        (tmp / INDEX_FILE).write_text(idx.render(page) + ("\n" + "\n".join(tuning) + "\n" if tuning else ""),
                                      encoding="utf-8")
    if mlflow:
        _log_mlflow(results, suite, out, tracking_uri, {"n_boot": n_boot, "seed": seed, "split": cfg.split,
                                                        "entries": ",".join(present), "best_entry": best or ""})
    return out / INDEX_FILE


def run_configs(results: Path, suite: str, entries: Sequence[str] | None) -> dict[str, dict]:
    """Per entry, the resolved config (``config.json``'s ``config``) of its first complete run."""
    out: dict[str, dict] = {}
    for path in store.complete_runs(results, suite, entries):
        entry = path.parent.name
        if entry in out:
            continue
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8")).get("config") or {}
        except (OSError, ValueError):
            continue
        out[entry] = config if isinstance(config, dict) else {}
    return out


def run_networks(results: Path, suite: str, entries: Sequence[str] | None,
                 configs: dict[str, dict] | None = None) -> dict[str, dict[str, str]]:
    """Per entry, the ``ssl.encoder`` and ``vgg.name`` its first complete run was configured with, and
    ``masks``: the label maps it read where they were not the segmenter's (``radiogrammetry.source``
    or ``patches.source`` annotator | truth)."""
    out: dict[str, dict[str, str]] = {}
    for entry, config in (configs if configs is not None else run_configs(results, suite, entries)).items():
        out[entry] = {key: str(config.get(section, {}).get(name)) for key, section, name in
                      (("ssl.encoder", "ssl", "encoder"), ("vgg.name", "vgg", "name"))
                      if isinstance(config.get(section), dict) and config[section].get(name)}
        sources = [(config.get(section) or {}).get("source") for section in ("radiogrammetry", "patches")]
        masks = next((m for m in sources if m and m != "predicted"), None)
        if masks:
            out[entry]["masks"] = str(masks)
    return out


def unique_labels(names: Sequence[str], known: dict):
    """Row label of an entry in tables beyond the paper's (screening, subgroups): its paper row, with
    the entry's name beside it where several entries share that row label (SimCLR of Tables 3-7)."""
    rows = {n: (known[n].row or n) if n in known else n for n in names}
    counts = Counter(rows.values())
    return lambda n: n if n not in rows else rows[n] if counts[rows[n]] == 1 else f"{rows[n]} ({n})"


def check_out(out: Path) -> None:
    """Refuse an output folder that holds anything but an earlier report: it is replaced whole."""
    if not out.exists():
        return
    if not out.is_dir():
        raise BenchError(f"--out {out} is a file; give a folder for the report")
    if any(out.iterdir()) and not (out / INDEX_FILE).is_file():
        raise BenchError(f"--out {out} is a folder that holds no report ({INDEX_FILE}), e.g. a suite's results; "
                         "the report replaces its folder whole: choose a new or empty folder")


def with_references(entries: Sequence[str], known: dict, available: set[str]) -> list[str]:
    """`entries` and what their rows compare with: each one's full-method parent (Tables 4, 5, 7) and,
    for a row of Table 6 or 8, every full-method entry (the best of them is the reference and Table 8's
    "Ours"), among the `available` ones (those with a results folder)."""
    chosen = [known[n] for n in entries if n in known]
    refs = [e.parent for e in chosen if e.parent]
    if any(e.kind != "full" and e.table in tab.SPECS and tab.SPECS[e.table].reference == "best" for e in chosen):
        refs += [n for n, e in known.items() if e.kind == "full"]
    return list(dict.fromkeys([*entries, *(r for r in refs if r in available)]))


def _write_tables(folder: Path, tables: dict[str, tab.Table], tests, known, summary: pd.DataFrame,
                  cfg: ReportConfig, page: idx.IndexPage) -> None:
    folder.mkdir(parents=True)
    for key, table in tables.items():
        (folder / f"{key}.tex").write_text(tab.to_latex(table, tests, known, cfg.digits), encoding="utf-8")
        tab.to_frame(table, tests, cfg.digits).to_csv(folder / f"{key}.csv", index=False)
        title = f"{key.replace('table', 'Table ')}: {table.spec.title}"
        page.tables.append(idx.TableItem(key, title, tab.to_markdown(table, tests, known, cfg.digits),
                                         (f"{TABLES_DIR}/{key}.tex", f"{TABLES_DIR}/{key}.csv")))
    summary.to_csv(folder / "summary.csv", index=False)
    tests.frame.to_csv(folder / "comparisons.csv", index=False)
    document = package_files("reports") / "tables.tex"
    if not document.is_file():
        raise BenchError("reports/tables.tex is missing from the osteobench installation; reinstall it "
                         "(`pip install -e .` from the source tree)")
    (folder / "tables.tex").write_bytes(document.read_bytes())
    page.extra_files += [(f"{TABLES_DIR}/tables.tex", "standalone LaTeX document that inputs the tables "
                          "(`pdflatex tables.tex` in that folder)"),
                         (f"{TABLES_DIR}/summary.csv", "mean, std (ddof=1) and seed count of every entry, "
                          "split and metric"),
                         (f"{TABLES_DIR}/comparisons.csv", "every paired bootstrap comparison behind the "
                          "significance markers (Δ, CI, p, Holm-adjusted p)")]


def _write_figures(folder: Path, results: Path, suite: str, tables: dict[str, tab.Table],
                   predictions: pd.DataFrame, metrics: pd.DataFrame, known, fig5_entry: str | None,
                   n_boot: int, seed: int, cfg: ReportConfig, page: idx.IndexPage) -> None:
    folder.mkdir(parents=True)
    fc = cfg.figures
    items: list[figs.FigureItem | None] = []
    label = (lambda n: (known[n].row or n) if n in known else n)
    if fig5_entry:
        item = figs.fig5(predictions, fig5_entry, label(fig5_entry), folder, fc, cfg.split)
        items.append(item)
        if item is None:
            page.notes.append(f"Fig. 5 not drawn: `{fig5_entry}` has no true positive with per-bone "
                              f"probabilities on the {cfg.split} split.")
    groups = [(k, f"{k.replace('table', 'Table ')} ({t.spec.title})", [(r.entry, r.label) for r in t.rows])
              for k, t in tables.items()]
    in_tables = {e for _, _, rows in groups for e, _ in rows}
    others = [(n, label(n)) for n in dict.fromkeys(metrics["entry"]) if n not in in_tables]
    if others:
        groups.append(("other", "entries outside the paper tables", others))
    every = [(n, label(n)) for n in dict.fromkeys(metrics["entry"])]
    items.append(figs.folds_figure(metrics, every, folder, fc))      # only for a cross-validated suite
    for key, title, rows in groups:
        items.append(figs.roc_figure(predictions, rows, key, title, folder, fc, n_boot, seed, cfg.split))
        items.append(figs.calibration_figure(predictions, rows, key, title, folder, fc, cfg.split))
    runs = [(e, int(s), store.run_dir(results, suite, e, int(s)))
            for e, s in metrics[["entry", "seed"]].drop_duplicates().itertuples(index=False)]
    for entry in dict.fromkeys(e for e, _, _ in runs):
        histories = [(s, store.read_run(p).history) for e, s, p in runs if e == entry]
        items.append(figs.training_figure(histories, entry, folder, fc))
    found = ex.collect(results, runs)
    if found:
        copied = ex.copy_examples(found, folder / "examples")
        page.examples = [(f"{e.entry}, seed {e.seed} ({e.origin}): {e.source.name}",
                          f"{FIGURES_DIR}/examples/{name}") for e, name in copied]
        items.append(ex.montage(found, folder, fc, cfg.examples))
    for item in items:
        if item is not None:
            item.files = tuple(f"{FIGURES_DIR}/{f}" for f in item.files)
            page.figures.append(item)


def _log_mlflow(results: Path, suite: str, out: Path, uri: str | None, params: dict) -> str:
    """A run tagged ``osteobench.run_type=report`` in the suite's experiment, the report as artifacts."""
    from bench.tracking import TAG_SUITE, TAG_TYPE, Tracker

    tracker = Tracker(results, uri=uri)
    if not tracker.enabled:
        return ""
    client = tracker.client
    run = client.create_run(tracker.experiment_id(suite), tags={TAG_SUITE: suite, TAG_TYPE: "report"},
                            run_name="report")
    run_id = run.info.run_id
    try:
        for k, v in params.items():
            client.log_param(run_id, k, str(v)[:6000])
        client.log_artifacts(run_id, str(out), artifact_path="report")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id
