"""LaTeX (booktabs) and Markdown replicas of the paper's Tables 3-8 from a suite's results.

Same rows and columns as the paper:

* Table 3: Precision, Recall, F1, AUC, Accuracy of the full method (one row per SSL method).
* Tables 4, 5, 7: F1, Δ, AUC, Δ, Accuracy, Δ of an ablation, Δ = mean(ablation) − mean(its
  ``parent``, the full-method entry it ablates).
* Table 6: the same columns for the supervised row, Δ against the best full-method entry
  (``reports.summary.best_full_entry``), as the paper compares it with SimCLR of Table 3.
* Table 8: Model, ROI extraction method, Architecture (from the entry's ``info`` keys ``roi``
  and ``architecture``), F1, AUC, Accuracy; the best full-method entry is the last row, "Ours".

Cells are mean ± std over seeds (``ddof=1``, see summary.py) with the paper's two decimals.
Emphasis is decided on the displayed (rounded) numbers, so visual ties get the same emphasis:
bold marks the best value of each metric column (Table 8: the first and second, as its caption
says); underline marks the largest drop (most negative Δ) of each Δ column. Emphasis needs
more rows than it marks (bold: more than ``bold_top`` rows; underline: at least two Δ values).
The significance marker ``$^{\\dagger}$`` (Markdown ``†``) follows the Δ cell
(Tables 4-7) or the value cell (Tables 3, 8) of a comparison whose Holm-adjusted paired
bootstrap p-value (Holm within the table's metric column) is below 0.05 (significance.py); each caption says so. Rows are ordered as in
the paper (SimCLR, SupCon, SwAV, VICReg; Jang, Hsieh, Wang, DeepDXA: a token of the entry name or a
part of its row label), then by name; only entries
with results appear and a table without rows is not produced.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

from bench.registry import Entry
from reports.latex import displayed, escape, fmt, signed
from reports.significance import Significance
from reports.summary import lookup

METRIC_HEADERS: dict[str, str] = {"precision": "Precision", "recall": "Recall", "f1": "F1", "auc": "AUC",
                                  "accuracy": "Accuracy"}
#: Paper row order, by entry name (ablations are ordered by their parent).
ROW_ORDER: tuple[str, ...] = ("simclr", "supcon", "swav", "vicreg", "jang", "hsieh", "wang", "deepdxa")
OURS_INFO: dict[str, str] = {"roi": "Segmentation-based + SSL + enhanced aug", "architecture": "ResNet50"}
MARK_TEX = r"$^{\dagger}$"
_RAGGED = r">{\raggedright\arraybackslash}p"  # wrapped text column (needs \usepackage{array})
MARK_MD = "†"


@dataclass(frozen=True)
class TableSpec:
    """What one paper table shows."""

    key: str                                    # "table3" ... "table8" (Entry.table)
    title: str                                  # short title (index page)
    caption: str                                # the paper's caption, shortened
    metrics: tuple[str, ...] = ("f1", "auc", "accuracy")  # metric columns, in order
    reference: str = "parent"                   # "parent" | "best": what Δ and markers compare with
    delta: bool = True                          # a Δ column after each metric column
    info: tuple[tuple[str, str], ...] = ()      # (Entry.info key, header) columns after the row label
    ours: bool = False                          # append the best full-method entry as "Ours"
    bold_top: int = 1                           # bold the first `bold_top` values of a column
    label_header: str = ""                      # header of the row-label column
    colspec: str = ""                           # tabular column spec ("" = l for text, c for numbers)


SPECS: dict[str, TableSpec] = {s.key: s for s in (
    TableSpec("table3", "Full method per SSL method",
              "Osteoporosis prediction with the proposed framework on held-out test radiographs.",
              metrics=("precision", "recall", "f1", "auc", "accuracy"), reference="best", delta=False),
    TableSpec("table4", "Without bone segmentation",
              "Osteoporosis prediction after omitting the segmentation step; $\\Delta$ is the change "
              "against the full method with the same SSL method."),
    TableSpec("table5", "Single-decoder segmentation",
              "Osteoporosis prediction with the conventional single-decoder U-Net; $\\Delta$ is the change "
              "against the proposed multi-decoder segmentation with the same SSL method."),
    TableSpec("table6", "Supervised, without SSL and multi-crop",
              "Impact of removing data augmentation and self-supervised pre-training; $\\Delta$ is the "
              "change against the best full-method model.", reference="best"),
    TableSpec("table7", "Conventional multi-crop",
              "Counter-effect of conventional multi-crop augmentation; $\\Delta$ is the change against "
              "the bone-aware multi-crop with the same SSL method."),
    TableSpec("table8", "Supervised baselines",
              "Comparison of the proposed model against supervised baselines trained end-to-end without "
              "SSL or enhanced augmentation.", reference="best", delta=False,
              info=(("roi", "ROI extraction method"), ("architecture", "Architecture")), ours=True,
              bold_top=2, label_header="Model", colspec=f"{_RAGGED}{{3.3cm}}{_RAGGED}{{3.3cm}}{_RAGGED}{{2.4cm}}ccc"),
)}


@dataclass
class Row:
    entry: str                                  # entry name
    label: str                                  # row label (plain text, escaped when rendered)
    info: tuple[str, ...]                       # info cells (plain text)
    reference: str | None                       # entry the Δ and marker compare with
    values: dict[str, tuple[float, float, int]]  # metric → (mean, std, n seeds)
    deltas: dict[str, float] = field(default_factory=dict)  # metric → mean − reference mean (NaN if none)
    ours: bool = False                          # the "Ours" row of Table 8
    unscored: tuple[float, float] = (0.0, 0.0)  # mean over seeds of (n_unscored, n): subjects without a prediction


@dataclass
class Table:
    spec: TableSpec
    rows: list[Row]
    split: str                                  # split the numbers come from
    best: str | None                            # best full-method entry (reference of "best" tables)

    @property
    def key(self) -> str:
        return self.spec.key

    def comparisons(self) -> list[tuple[str, str]]:
        """(entry, reference) pairs to test (rows with a reference that has results)."""
        return [(r.entry, r.reference) for r in self.rows
                if r.reference and r.reference != r.entry and any(math.isfinite(d) for d in r.deltas.values())]


# --------------------------------------------------------------------------- assembly
def _rank(entry: Entry) -> tuple[int, str]:
    """Paper position: the first ROW_ORDER key that is a token of the name or part of the row label."""
    tokens = set(re.split(r"[-_. ]+", entry.name.lower()))
    label = (entry.row or "").lower()
    pos = next((i for i, key in enumerate(ROW_ORDER) if key in tokens or key in label), len(ROW_ORDER))
    return (pos, entry.name)


def network_label(name: str) -> str:
    """A timm model name as tables print it: resnet18 → ResNet18, vgg16_bn → VGG16-BN."""
    for prefix, shown in (("resnet", "ResNet"), ("vgg", "VGG")):
        if name.startswith(prefix):
            return shown + name[len(prefix):].upper().replace("_", "-")
    return name


def architecture_text(text: str, networks: Mapping[str, str]) -> str:
    """An entry's paper architecture (Entry.info) with the networks its runs used: ``networks`` maps
    ``ssl.encoder`` / ``vgg.name`` to timm names (a smoke run has a ResNet18 and a VGG11)."""
    if networks.get("ssl.encoder"):
        text = text.replace("ResNet50", network_label(networks["ssl.encoder"]))
    if networks.get("vgg.name"):
        text = text.replace("VGG16", network_label(networks["vgg.name"]))
    return text


def assemble(summary: pd.DataFrame, registry: Mapping[str, Entry], best: str | None,
             split: str = "test", networks: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, Table]:
    """The tables that have rows, keyed "table3" ... "table8", in paper order; `networks` (entry → its
    runs' ``ssl.encoder`` / ``vgg.name``) corrects the paper's architecture names where the runs differ."""
    networks = networks or {}
    present = set(summary.loc[(summary["split"] == split) & (summary["n"] > 0), "entry"])
    tables: dict[str, Table] = {}
    for key, spec in SPECS.items():
        members = sorted((e for e in registry.values() if e.table == key and e.name in present), key=_rank)
        rows = [_row(spec, e, summary, best, split, networks.get(e.name, {})) for e in members]
        if not rows:
            continue
        if spec.ours and best is not None and best in present:
            b = registry[best]
            label = f"Ours (full framework, {b.row or b.name})"
            info = tuple(_info(k, str(b.info.get(k, OURS_INFO.get(k, ""))), networks.get(best, {}))
                         for k, _ in spec.info)
            rows.append(Row(best, label, info, None, {m: lookup(summary, best, m, split) for m in spec.metrics},
                            ours=True, unscored=_unscored(summary, best, split)))
        tables[key] = Table(spec, rows, split, best)
    return tables


#: How Table 8 names the label maps of a run that did not read the segmenter's (reports.build.run_networks).
MASK_SOURCES = {"annotator": "Annotators' masks", "truth": "True masks (phantom)"}


def _info(key: str, text: str, networks: Mapping[str, str]) -> str:
    if key == "architecture":
        return architecture_text(text, networks)
    if key == "roi" and networks.get("masks") in MASK_SOURCES:      # not what "Segmentation-based" says
        return text.replace("Segmentation-based", MASK_SOURCES[networks["masks"]])
    return text


def _row(spec: TableSpec, entry: Entry, summary: pd.DataFrame,
         best: str | None, split: str, networks: Mapping[str, str] | None = None) -> Row:
    values = {m: lookup(summary, entry.name, m, split) for m in spec.metrics}
    reference = entry.parent if spec.reference == "parent" else best
    if reference == entry.name:
        reference = None
    deltas = {}
    for m in spec.metrics:
        ref_mean = lookup(summary, reference, m, split)[0] if reference else math.nan
        deltas[m] = values[m][0] - ref_mean if math.isfinite(ref_mean) else math.nan
    info = tuple(_info(k, str(entry.info.get(k, "--")), networks or {}) for k, _ in spec.info)
    return Row(entry.name, entry.row or entry.name, info, reference, values, deltas,
               unscored=_unscored(summary, entry.name, split))


def _unscored(summary: pd.DataFrame, entry: str, split: str) -> tuple[float, float]:
    """Mean over seeds of (n_unscored, n) of an entry's split (bench.metrics); zeros when not recorded."""
    unscored, n = (lookup(summary, entry, m, split)[0] for m in ("n_unscored", "n"))
    return (unscored if math.isfinite(unscored) else 0.0, n if math.isfinite(n) else 0.0)


# --------------------------------------------------------------------------- emphasis
def bold_rows(table: Table, metric: str, digits: int = 2) -> set[str]:
    """Entries whose displayed mean ranks within the first ``bold_top`` of the column (ties share a rank:
    the number of higher values). Bold must single something out: where ties would bold every row,
    only the highest value is bold, and nothing when every row shares it or the table has no more rows
    than ``bold_top``."""
    shown = {r.entry: displayed(r.values[metric][0], digits) for r in table.rows}
    finite = {e: v for e, v in shown.items() if math.isfinite(v)}
    if len(finite) <= table.spec.bold_top:  # "first and second" of two rows marks nothing
        return set()
    rank = {e: sum(w > v for w in finite.values()) for e, v in finite.items()}
    for top in range(table.spec.bold_top, 0, -1):
        chosen = {e for e, r in rank.items() if r < top}
        if len(chosen) < len(finite):
            return chosen
    return set()


def underlined_rows(table: Table, metric: str, digits: int = 2) -> set[str]:
    """Entries with the largest displayed drop (most negative Δ) of the column; none without a drop or
    in a table without Δ columns (Tables 3 and 8)."""
    if not table.spec.delta:
        return set()
    shown = {r.entry: displayed(r.deltas.get(metric, math.nan), digits) for r in table.rows}
    finite = {e: v for e, v in shown.items() if math.isfinite(v)}
    if len(finite) < 2 or min(finite.values()) >= 0:
        return set()
    worst = min(finite.values())
    return {e for e, v in finite.items() if v == worst}


# --------------------------------------------------------------------------- cells
def value_text(mean: float, std: float, n: int, digits: int, tex: bool) -> str:
    """``0.68 $\\pm$ 0.03`` (LaTeX) / ``0.68 ± 0.03`` (Markdown); the mean alone for one seed."""
    if n == 0 or not math.isfinite(mean):
        return "--"
    if n == 1 or not math.isfinite(std):
        return fmt(mean, digits)
    pm = "$\\pm$" if tex else "±"
    return f"{fmt(mean, digits)} {pm} {fmt(std, digits)}"


def _cells(table: Table, tests: Significance | None, digits: int, tex: bool) -> list[list[str]]:
    bold_fmt = (lambda s: f"\\textbf{{{s}}}") if tex else (lambda s: f"**{s}**")
    under_fmt = (lambda s: f"\\underline{{{s}}}") if tex else (lambda s: f"<u>{s}</u>")
    mark = MARK_TEX if tex else MARK_MD
    bold = {m: bold_rows(table, m, digits) for m in table.spec.metrics}
    under = {m: underlined_rows(table, m, digits) for m in table.spec.metrics}
    out = []
    for r in table.rows:
        cells = [escape(r.label) if tex else r.label] + [escape(i) if tex else i for i in r.info]
        for m in table.spec.metrics:
            sig = tests is not None and r.reference is not None and tests.significant(table.key, r.entry, m)
            v = value_text(*r.values[m], digits, tex)
            v = bold_fmt(v) if r.entry in bold[m] and v != "--" else v
            if table.spec.delta:
                d = signed(r.deltas[m], digits)
                d = f"${d}$" if tex and d != "--" else d
                d = under_fmt(d) if r.entry in under[m] else d
                cells += [v, d + (mark if sig else "")]
            else:
                cells.append(v + (mark if sig else ""))
        out.append(cells)
    return out


def _headers(spec: TableSpec, tex: bool) -> list[str]:
    delta = "$\\Delta$" if tex else "Δ"
    heads = [spec.label_header] + [h for _, h in spec.info]
    for m in spec.metrics:
        heads += [METRIC_HEADERS.get(m, m), delta] if spec.delta else [METRIC_HEADERS.get(m, m)]
    return heads


# --------------------------------------------------------------------------- rendering
def caption(table: Table, tests: Significance | None, registry: Mapping[str, Entry], tex: bool = True,
            digits: int = 2) -> str:
    """The paper's caption, then how the cells, the emphasis and the marker were made (each sentence
    only where it applies), and which Δ could not be computed."""
    spec = table.spec
    pm, mark = ("$\\pm$", MARK_TEX) if tex else ("±", MARK_MD)
    seeds = sorted({r.values[m][2] for r in table.rows for m in spec.metrics if r.values[m][2] > 0})
    dash = "--" if tex else "–"
    if seeds == [1]:
        cells = f"One seed (no standard deviation), {table.split} split."
    else:
        n = dash.join(str(s) for s in (seeds[0], seeds[-1])) if len(seeds) > 1 else str(seeds[0] if seeds else 0)
        cells = f"Mean {pm} standard deviation (ddof=1) over {n} seeds, {table.split} split."
    parts = [spec.caption if tex else spec.caption.replace("$\\Delta$", "Δ"), cells]
    if any(bold_rows(table, m, digits) for m in spec.metrics):
        parts.append("The first and second highest values of each metric are in bold." if spec.bold_top == 2
                     else "The highest value of each metric is in bold.")
    if any(underlined_rows(table, m, digits) for m in spec.metrics):
        parts.append("The largest drop of each $\\Delta$ column is underlined." if tex
                     else "The largest drop of each Δ column is underlined.")
    lost = sorted({r.reference for r in table.rows if spec.delta and r.reference
                   and not any(math.isfinite(d) for d in r.deltas.values())})
    if lost:
        names = ", ".join(escape(x) if tex else x for x in lost)
        parts.append(f"-- in a $\\Delta$ column: its reference ({names}) has no results in this suite." if tex
                     else f"-- in a Δ column: its reference ({names}) has no results in this suite.")
    unscored = [(escape(r.label) if tex else r.label, *r.unscored) for r in table.rows if r.unscored[0] > 0]
    if unscored:
        named = "; ".join(f"{label}: {u:.3g} of {u + n:.3g}" for label, u, n in unscored)
        parts.append(f"Subjects without a usable bone get no prediction and are left out of a row's numbers "
                     f"(mean over seeds; {named}).")
    if spec.reference == "best" and table.best:
        b = registry[table.best]
        name = escape(b.row or b.name) if tex else (b.row or b.name)
        parts.append(f"Reference: the best full-method entry ({name}).")
    if table.comparisons():
        if tests is None or not tests.available:
            parts.append("No significance test was run.")
        else:
            ref = "its full-method parent" if spec.reference == "parent" else "the best full-method entry"
            below = f"$p < {tests.alpha:g}$" if tex else f"p < {tests.alpha:g}"
            parts.append(f"{mark}: differs from {ref} (paired hierarchical bootstrap over subjects and "
                         f"seeds, B={tests.n_boot}; p: the two-sided bootstrap sign proportion, ties counted "
                         f"on both sides; {below} after Holm's correction over "
                         f"{_families(tests.family_sizes(table.key))}).")
    return " ".join(parts)


def _families(sizes: Mapping[str, int]) -> str:
    """The caption's words for Holm's families: one per metric column of the table."""
    counts = set(sizes.values())
    if counts == {1}:
        return "the one comparison of each metric in this table"
    if len(counts) == 1:
        return f"the {counts.pop()} comparisons of each metric in this table"
    each = ", ".join(f"{n} for {METRIC_HEADERS.get(m, m)}" for m, n in sizes.items())
    return f"the comparisons of each metric in this table ({each})"


def to_latex(table: Table, tests: Significance | None, registry: Mapping[str, Entry], digits: int = 2) -> str:
    """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}`` and, for Table 8's
    wrapped text columns, ``\\usepackage{array}``)."""
    spec = table.spec
    heads = _headers(spec, tex=True)
    colspec = spec.colspec or "l" * (1 + len(spec.info)) + "c" * (len(heads) - 1 - len(spec.info))
    lines = [f"% {spec.key}: generated by `bench report`; do not edit",
             "\\begin{table}[htbp]", "\\centering", "\\small",
             f"\\caption{{{caption(table, tests, registry, tex=True, digits=digits)}}}", f"\\label{{tab:{spec.key}}}",
             f"\\begin{{tabular}}{{{colspec}}}", "\\toprule", " & ".join(heads) + " \\\\", "\\midrule"]
    for cells in _cells(table, tests, digits, tex=True):
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}", ""]
    return "\n".join(lines)


def to_markdown(table: Table, tests: Significance | None, registry: Mapping[str, Entry], digits: int = 2) -> str:
    """A GitHub-flavoured Markdown table (bold ``**``, underline ``<u>``, marker †) and its caption."""
    heads = _headers(table.spec, tex=False)
    body = [heads, ["---"] * len(heads)] + _cells(table, tests, digits, tex=False)
    text = "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body)
    return text + "\n\n" + caption(table, tests, registry, tex=False, digits=digits) + "\n"


def to_frame(table: Table, tests: Significance | None, digits: int = 2) -> pd.DataFrame:
    """The numbers behind a table, one row per (row, metric), with the emphasis and the p-values."""
    bold = {m: bold_rows(table, m, digits) for m in table.spec.metrics}
    under = {m: underlined_rows(table, m, digits) for m in table.spec.metrics}
    rows = []
    for r in table.rows:
        for m in table.spec.metrics:
            mean, std, n = r.values[m]
            p = tests.p_holm(table.key, r.entry, m) if tests is not None else math.nan
            rows.append({"table": table.key, "entry": r.entry, "row": r.label, "reference": r.reference or "",
                         "metric": m, "mean": mean, "std": std, "n_seeds": n,
                         "delta": r.deltas.get(m, math.nan), "p_holm": p,
                         "bold": r.entry in bold[m], "underline": r.entry in under[m], "ours": r.ours})
    return pd.DataFrame(rows)
