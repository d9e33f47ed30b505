"""`bench compare A B` / `bench compare A --all`: paired significance tests of entries' test predictions.

Writes ``<results>/<suite>/compare/<A>__<B>.{json,tex}`` (``<A>__all`` with ``--all``; the options
that change the numbers, when not the defaults, are appended: :func:`output_suffix`; atomic writes),
prints the table and logs a run tagged ``osteobench.run_type=compare`` in the suite's MLflow
experiment (a rerun with identical output reuses the earlier run). The statistics and their
conventions are in :mod:`bench.stats.compare`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError

COMPARE_DIR = "compare"
DEFAULT_METRICS = ["auc", "f1", "accuracy"]
TAG_A, TAG_B, TAG_DIGEST = "osteobench.compare.a", "osteobench.compare.b", "osteobench.compare.digest"
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compare", help="paired significance tests of two entries (or one against all)")
    p.add_argument("a", metavar="A", help="entry to compare")
    p.add_argument("b", metavar="B", nargs="?", default=None, help="entry to compare A with (omit with --all)")
    p.add_argument("--all", action="store_true", help="compare A with every other entry of the suite (Holm)")
    p.add_argument("--suite", default=None, help="suite (default: the one results folder holding the entries)")
    p.add_argument("--metric", nargs="+", default=DEFAULT_METRICS, metavar="METRIC",
                   help="metrics: auc f1 accuracy precision recall specificity macro_f1 (default: auc f1 accuracy)")
    p.add_argument("--split", default="test", help="split whose predictions are compared (default: test)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="restrict to these seeds (default: all; "
                   "both entries must have the same seeds)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap replicates (default: 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling (default: 0)")
    p.add_argument("--results", default="results", type=Path, help="results folder (default: ./results)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: sqlite:///<results>/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the comparison to MLflow")
    p.set_defaults(func=compare_command)


def output_suffix(args: argparse.Namespace) -> str:
    """The options that change what is compared, when not the defaults, in the output name (so a
    comparison of other metrics, seeds or split never silently replaces another): e.g.
    ``__val__seeds-0-2__precision-recall``. The bootstrap's size and seed only change its precision:
    a rerun with others replaces the output (they are recorded in its JSON)."""
    parts = []
    if args.split != "test":
        parts.append(args.split)
    if args.seeds:
        parts.append("seeds-" + "-".join(str(s) for s in sorted(set(args.seeds))))
    if list(args.metric) != DEFAULT_METRICS:
        parts.append("-".join(dict.fromkeys(args.metric)))
    return "".join(f"__{p}" for p in parts)


def compare_command(args: argparse.Namespace) -> int:
    from bench import stats

    if args.all == (args.b is not None):
        raise BenchError("give two entries (`bench compare A B`) or one entry with --all (`bench compare A --all`)")
    if args.n_boot < 1:
        raise BenchError(f"--n-boot must be a positive number of replicates, got {args.n_boot}")
    entries = [args.a] if args.all else [args.a, args.b]
    suite = args.suite or stats.find_suite(args.results, entries)
    kw = dict(metrics=args.metric, split=args.split, n_boot=args.n_boot, seed=args.seed, seeds=args.seeds)
    if args.all:
        frame = stats.compare_all(args.results, suite, args.a, **kw)
        name = f"{args.a}__all"
    else:
        frame = stats.compare_entries(args.results, suite, args.a, args.b, **kw)
        name = f"{args.a}__{args.b}"
    name += output_suffix(args)
    paths = write_outputs(frame, Path(args.results) / suite / COMPARE_DIR, name, suite, args.a,
                          None if args.all else args.b)            # written before printing (`| head` ends the output)
    print(format_table(frame))
    for p in paths:
        print(f"wrote {p}")
    if not args.no_mlflow:
        from bench.tracking import Tracker

        run_id = log_compare(Tracker(args.results, uri=args.tracking_uri), suite, name, frame, args.a,
                             None if args.all else args.b, paths)
        if run_id:
            print(f"MLflow run {run_id}")
    return 0


# --------------------------------------------------------------------------- formatting
def _num(x: Any, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return "<0.001" if x < 0.001 else f"{x:.3f}"


def format_table(frame: pd.DataFrame) -> str:
    """A plain-text table of the comparison rows (the terminal output)."""
    cols = {"scope": frame["scope"], "metric": frame["metric"]}
    if frame["entry_b"].nunique() > 1:
        cols = {"entry_b": frame["entry_b"], **cols}
    a, b = frame["entry_a"].iloc[0], frame["entry_b"].iloc[0]
    out = pd.DataFrame({**cols, "A": frame["value_a"].map(_num), "B": frame["value_b"].map(_num),
                        "delta": frame["delta"].map(_num),
                        "95% CI": [f"[{_num(lo)}, {_num(hi)}]" for lo, hi in zip(frame["ci_low"], frame["ci_high"])],
                        "p_boot": frame["p_bootstrap"].map(_p), "p_delong": frame["p_delong"].map(_p),
                        "p_mcnemar": frame["p_mcnemar"].map(_p), "n": frame["n_subjects"]})
    if "p_holm" in frame.columns:
        out.insert(out.columns.get_loc("p_delong"), "p_holm", frame["p_holm"].map(_p))
    head = (f"A = {a}, B = {'each other entry' if frame['entry_b'].nunique() > 1 else b}; delta = A - B, "
            f"95% percentile CI and p_boot from the stratified paired bootstrap")
    notes = [f"  {r.entry_b} {r.scope} {r.metric}: {r.note}" for r in frame.itertuples() if r.note]
    notes = list(dict.fromkeys(n.split(": ", 1)[1] for n in notes))
    return "\n".join([head, out.to_string(index=False), *(["notes:"] + [f"  {n}" for n in notes] if notes else [])])


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _tex_num(x: Any) -> str:
    return "--" if x is None or (isinstance(x, float) and math.isnan(x)) else f"${x:.3f}$"


def _tex_p(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "--"
    return "$<0.001$" if x < 0.001 else f"${x:.3f}$"


def to_latex(frame: pd.DataFrame, suite: str, a: str, b: str | None) -> str:
    """A booktabs table (pandas Styler): every scope for A vs B; the pooled rows for A vs all (with Holm)."""
    info = frame.attrs.get("compare", {})
    rows = frame if b is not None else frame[frame["scope"] == "pooled"]
    first = "Scope" if b is not None else "Entry"
    group = rows["scope"] if b is not None else rows["entry_b"]
    shown = [latex_escape(g) if i == 0 or g != prev else "" for i, (g, prev) in
             enumerate(zip(group, [None, *group.iloc[:-1]]))]
    disp = pd.DataFrame({first: shown, "Metric": [latex_escape(m) for m in rows["metric"]],
                         "A": rows["value_a"].map(_tex_num), "B": rows["value_b"].map(_tex_num),
                         r"$\Delta$": rows["delta"].map(_tex_num),
                         "95\\,\\% CI": [f"[{_tex_num(lo)}, {_tex_num(hi)}]"
                                         for lo, hi in zip(rows["ci_low"], rows["ci_high"])],
                         r"$p_\mathrm{boot}$": rows["p_bootstrap"].map(_tex_p)})
    if b is not None:
        disp[r"$p_\mathrm{DeLong}$"] = rows["p_delong"].map(_tex_p)
        disp[r"$p_\mathrm{McNemar}$"] = rows["p_mcnemar"].map(_tex_p)
    else:
        disp[r"$p_\mathrm{Holm}$"] = rows["p_holm"].map(_tex_p)
    n_boot = info.get("n_boot", "?")
    split = latex_escape(info.get("split", "test"))
    against = f"{latex_escape(b)} (B)" if b is not None else "every other entry (B)"
    caption = (f"Paired comparison of {latex_escape(a)} (A) with {against} on the {split} split of suite "
               f"{latex_escape(suite)}. $\\Delta$ = A $-$ B; 95\\,\\% percentile interval from {n_boot} "
               "stratified paired bootstrap replicates (positives and negatives resampled separately); "
               "pooled: subjects and seeds resampled together, A and B averaged over their seeds; "
               "$p_\\mathrm{boot}$: two-sided bootstrap sign proportion.")
    if b is not None:
        caption += (" DeLong (AUC) and McNemar (accuracy; exact when fewer than 25 discordant pairs) per seed "
                    "and on the seed-ensemble (mean probability over seeds).")
    else:
        caption += " $p_\\mathrm{Holm}$: Holm-adjusted over the comparisons of A within each metric."
    label = re.sub(r"[^A-Za-z0-9:.-]", "-", f"tab:compare:{a}:{b or 'all'}")    # no LaTeX specials in a label
    styler = disp.style.hide(axis="index")
    return styler.to_latex(hrules=True, column_format="ll" + "r" * (disp.shape[1] - 2), caption=caption,
                           label=label, position_float="centering")


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def to_json(frame: pd.DataFrame, suite: str, a: str, b: str | None) -> str:
    """The rows and how they were made; NaN is written as null."""
    rows = [{k: _json_value(v) for k, v in r.items()} for r in frame.to_dict(orient="records")]
    doc = {"suite": suite, "entry_a": a, "entry_b": b if b is not None else sorted(frame["entry_b"].unique()),
           "method": frame.attrs.get("compare", {}), "rows": rows}
    return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_outputs(frame: pd.DataFrame, folder: Path, name: str, suite: str, a: str, b: str | None) -> list[Path]:
    """``<folder>/<name>.json`` and ``.tex``, each written atomically."""
    from bench.atomic import atomic_write_text

    json_path, tex_path = folder / f"{name}.json", folder / f"{name}.tex"
    text_json, text_tex = to_json(frame, suite, a, b), to_latex(frame, suite, a, b)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, text_json)
    atomic_write_text(tex_path, text_tex)
    return [json_path, tex_path]


# --------------------------------------------------------------------------- MLflow
def log_compare(tracker: Any, suite: str, name: str, frame: pd.DataFrame, a: str, b: str | None,
                files: list[Path]) -> str:
    """One run ``compare/<name>`` in the suite's experiment: params, a metric per number, the files."""
    if not tracker.enabled:
        return ""
    from bench.tracking import TAG_SUITE, TAG_TYPE

    digest = hashlib.sha256(b"".join(Path(f).read_bytes() for f in files)).hexdigest()[:16]
    tags = {TAG_SUITE: suite, TAG_TYPE: "compare", TAG_A: a, TAG_B: b or "all", TAG_DIGEST: digest}
    info = frame.attrs.get("compare", {})
    params = {k: info[k] for k in ("split", "n_boot", "seed", "threshold", "metrics") if k in info}
    metrics = []
    now = int(time.time() * 1000)
    for r in frame.itertuples(index=False):
        prefix = f"{r.scope}/{r.metric}" if b is not None else f"{r.entry_b}/{r.scope}/{r.metric}"
        for col in ("value_a", "value_b", "delta", "ci_low", "ci_high", "p_bootstrap", "p_delong", "p_mcnemar",
                    "p_holm"):
            v = getattr(r, col, math.nan)
            if isinstance(v, (int, float, np.number)) and math.isfinite(float(v)):
                metrics.append((f"{prefix}/{col}", float(v), now, 0))
    return tracker.log_once(suite, tags, f"compare/{name}", metrics=metrics, files=files,
                            params={k: json.dumps(v) if isinstance(v, list) else v for k, v in params.items()})
