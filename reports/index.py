"""``report.md``: the index page linking every table and figure, each with a short text.

Links are relative to the report folder, so the folder can be moved or attached as a whole
(MLflow artifact, zip). Only files that exist are linked (the builder writes them first).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from reports.figures import FigureItem


@dataclass
class TableItem:
    """A rendered table: its Markdown view and its files (relative to the report folder)."""

    key: str                                  # "table3"
    title: str                                # "Table 3: Full method per SSL method"
    markdown: str                             # Markdown table and caption
    files: tuple[str, ...]                    # tables/<key>.tex, tables/<key>.csv


@dataclass
class IndexPage:
    """Everything the index shows."""

    suite: str
    source: str                               # where the results were read from
    entries: list[dict] = field(default_factory=list)  # entry, kind, table, row, seeds
    tables: list[TableItem] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # tables not produced, and why
    figures: list[FigureItem] = field(default_factory=list)
    examples: list[tuple[str, str]] = field(default_factory=list)  # (caption, file) of copied PNGs
    extra_files: list[tuple[str, str]] = field(default_factory=list)  # (file, text)
    notes: list[str] = field(default_factory=list)


def _anchor(text: str) -> str:
    return "".join(c for c in text.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _link(path: str, text: str | None = None) -> str:
    return f"[{text or path}](<{path}>)"


def render(page: IndexPage) -> str:
    """The Markdown text of ``report.md``."""
    out = [f"# osteobench report: suite `{page.suite}`", "",
           f"Results read from `{page.source}`. Tables follow the paper (Hwang, Lee & Yoon, Sci. Rep. 2025, "
           "Tables 3-8); each is given below as Markdown, and as LaTeX and CSV files.", ""]
    out += [f"- {n}" for n in page.notes] + ([""] if page.notes else [])
    out += ["## Contents", ""]
    out += [f"- [{t.title}](#{_anchor(t.title)})" for t in page.tables]
    out += [f"- [{f.title}](#{_anchor(f.title)})" for f in page.figures]
    out += ["- [Entries](#entries)", ""]

    out += ["## Tables", ""]
    if not page.tables:
        out += ["No paper table has results in this suite.", ""]
    for t in page.tables:
        out += [f"### {t.title}", "", t.markdown.rstrip(), "",
                "Files: " + " · ".join(_link(f) for f in t.files), ""]
    for text in page.skipped:
        out.append(f"- Not produced: {text}")
    if page.skipped:
        out.append("")
    if page.extra_files:
        out += ["Other files:", ""] + [f"- {_link(f)}: {text}" for f, text in page.extra_files] + [""]

    out += ["## Figures", ""]
    if not page.figures:
        out += ["No figure could be drawn from these results.", ""]
    for f in page.figures:
        png = next((x for x in f.files if x.endswith(".png")), f.files[0])
        others = [x for x in f.files if x != png]
        out += [f"### {f.title}", "", f.text, "", f"![{f.title}](<{png}>)", "",
                "Files: " + " · ".join(_link(x) for x in [png, *others]), ""]
    if page.examples:
        out += ["### Example pictures left by the runs", ""]
        out += [f"- {_link(path, caption)}" for caption, path in page.examples] + [""]

    out += ["## Entries", "", "| entry | kind | table | row | seeds |", "| --- | --- | --- | --- | --- |"]
    for e in page.entries:
        out.append(f"| `{e['entry']}` | {e.get('kind', '')} | {e.get('table', '')} | {e.get('row', '')} | "
                   f"{e.get('seeds', '')} |")
    return "\n".join(out) + "\n"


def links(text: str) -> list[str]:
    """Relative link targets of a rendered index (``(<path>)`` form), for checks."""
    import re

    return re.findall(r"\]\(<([^>]+)>\)", text)


def describe_skipped(keys: Sequence[str]) -> list[str]:
    return [f"{k.replace('table', 'Table ')}: no entry of this table has results in the suite" for k in keys]
