"""Dataset summary of `bench data show`: the paper's Tables 1-2 and counts per split, site, bone.

Samples are *subjects* (the paper's 192 samples are its 192 subjects). A subject's label is the max
over its images (as in `bench.data.splits.subject_table`); its sex and age are the first non-empty
values in manifest order. Age groups are 10-year bins 10-19 ... 90-99 by floor(age / 10).
Bone presence: a target bone is visible in an image when any annotator's label map has a pixel
of its class. Rendered with matplotlib's Agg backend, written atomically.
"""
from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.table  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.atomic import atomic_write_bytes  # noqa: E402
from bench.data.format import BONES, CLASS_NAMES, Dataset  # noqa: E402

LABEL_NAMES: dict[int, str] = {0: "Normal", 1: "Osteoporotic"}
SEX_ROWS: tuple[str, ...] = ("Male", "Female")
AGE_GROUPS: tuple[str, ...] = tuple(f"{lo}\u2013{lo + 9}" for lo in range(10, 100, 10))


def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()



def subject_table(dataset: Dataset) -> pd.DataFrame:
    """One row per subject: sex (Male/Female/Unknown), age, label (Int64, NA when unknown)."""
    m = dataset.manifest.copy()
    m["subject_id"] = m["subject_id"].fillna(m["image_id"]).astype(str)
    sex = m["sex"].astype("string").str.strip().str.lower()
    m["sex"] = sex.map({"m": "Male", "male": "Male", "f": "Female", "female": "Female"})
    g = m.groupby("subject_id", sort=False)
    return pd.DataFrame({"sex": g["sex"].first().fillna("Unknown"), "age": g["age"].first(),
                         "label": g["label"].max().astype("Int64")})


def age_group(age: float) -> str:
    """The paper's 10-year group of an age: 10-19 ... 90-99; '<10', '>=100' or 'Unknown' else."""
    if age is None or pd.isna(age):
        return "Unknown"
    lo = int(math.floor(float(age) / 10.0)) * 10
    if lo < 10:
        return "<10"
    if lo >= 100:
        return "\u2265100"
    return f"{lo}\u2013{lo + 9}"


def _label_table(keys: pd.Series, labels: pd.Series, rows: tuple[str, ...], extra: list[str],
                 name: str) -> pd.DataFrame:
    """Counts of keys x {Normal, Osteoporotic[, Unlabeled], Total}; `rows` always present."""
    lab = labels.map(lambda v: "Unlabeled" if pd.isna(v) else LABEL_NAMES.get(int(v), f"label {v}"))
    cols = ["Normal", "Osteoporotic"] + sorted(set(lab) - {"Normal", "Osteoporotic"})
    present = [r for r in extra if r in set(keys)]
    table = pd.crosstab(keys, lab).reindex(index=list(rows) + present, columns=cols, fill_value=0)
    table = table.fillna(0).astype(int)
    table["Total"] = table.sum(axis=1)
    table.index.name, table.columns.name = name, None
    return table


def bone_presence(dataset: Dataset) -> pd.DataFrame:
    """image_id x bone: True where any annotator's label map contains that bone (NA: no masks)."""
    rows = {}
    for image_id in dataset.image_ids:
        masks = dataset.masks(image_id)
        if not masks:
            rows[image_id] = [pd.NA] * len(BONES)
            continue
        counts = sum(np.bincount(m.ravel(), minlength=256)[: len(CLASS_NAMES)] for m in masks.values())
        rows[image_id] = [bool(counts[i] > 0) for i in BONES.values()]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(BONES), dtype="boolean")


def summary_tables(dataset: Dataset) -> dict[str, pd.DataFrame]:
    """The summary's tables. "sex" and "age" (paper Tables 1-2, counted per subject) only for
    labelled datasets; always "split", "site" (images, subjects[, labels per subject]),
    "bones" (images by number of visible target bones; "no masks" for those without), "annotators",
    and "missing_bones" where some image has masks."""
    m = dataset.manifest.copy()
    m["subject_id"] = m["subject_id"].fillna(m["image_id"]).astype(str)
    subjects = subject_table(dataset)
    tables: dict[str, pd.DataFrame] = {}
    if dataset.has_labels:
        tables["sex"] = _label_table(subjects["sex"], subjects["label"], SEX_ROWS, ["Unknown"], "Sex")
        groups = subjects["age"].map(age_group)
        tables["age"] = _label_table(groups, subjects["label"], AGE_GROUPS,
                                     ["<10", "\u2265100", "Unknown"], "Age group")
    for col, title in (("split", "Split"), ("site", "Site")):
        keys = m[col].fillna("(none)").astype(str)
        order = [s for s in ("train", "val", "test") if col == "split" and s in set(keys)]
        order += sorted(set(keys) - set(order))
        table = pd.DataFrame({"Images": keys.value_counts(),
                              "Subjects": m.groupby(keys)["subject_id"].nunique()}).reindex(order)
        if dataset.has_labels:
            per = m[["subject_id"]].assign(key=keys).drop_duplicates()
            lab = per["subject_id"].map(subjects["label"])
            for value, name in LABEL_NAMES.items():
                table[f"{name} subj."] = (lab == value).fillna(False).groupby(per["key"]).sum()
        table = table.fillna(0).astype(int)
        table.index.name = title
        tables[col] = table
    presence = bone_presence(dataset)
    has = presence.notna().all(axis=1)
    n_bones = presence[has].sum(axis=1).astype(int)
    lowest = min([len(BONES) - 1, *n_bones.tolist()])       # rows 7 .. lowest seen (at least 6); none without masks
    counts = n_bones.astype(str).value_counts().reindex([str(k) for k in range(len(BONES), lowest - 1, -1)]
                                                        if has.any() else [], fill_value=0)
    if (~has).any():
        counts["no masks"] = int((~has).sum())
    tables["bones"] = pd.DataFrame({"Images": counts.astype(int)}).rename_axis("Bones visible")
    if has.any():                                          # without masks a count of missing bones says nothing
        missing = (~presence[has].astype(bool)).sum(axis=0).astype(int)
        tables["missing_bones"] = pd.DataFrame({"Images missing it": missing}).rename_axis("Bone")
    per_image = dataset.annotators.groupby("image_id")["annotator"].nunique()
    per_image = per_image.reindex(m["image_id"], fill_value=0).astype(int)
    tables["annotators"] = (per_image.value_counts().sort_index().rename("Images")
                            .rename_axis("Annotators per image").to_frame())
    return tables


def _markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (index as first column)."""
    head = [str(table.index.name or "")] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for key, row in table.iterrows():
        lines.append("| " + " | ".join([str(key)] + [str(v) for v in row.tolist()]) + " |")
    return "\n".join(lines)


CAPTIONS: dict[str, str] = {
    "sex": "Table 1. Subjects by sex (as paper Table 1)",
    "age": "Table 2. Subjects by age group (as paper Table 2)",
    "split": "Counts per split",
    "site": "Counts per acquisition site",
    "bones": "Images by number of visible target bones",
    "missing_bones": "Images missing each target bone",
    "annotators": "Annotators per image",
}
UNLABELED_NOTE = ("Unlabeled dataset: no image has a DXA label (label/t_score empty), so the "
                  "paper's Tables 1\u20132 (label balance by sex and age) do not apply.")


def _headline(dataset: Dataset, tables: dict[str, pd.DataFrame]) -> list[str]:
    m = dataset.manifest
    name = dataset.meta.get("name") or dataset.root.name
    lines = [f"Dataset {name}: {len(m)} images, {m['subject_id'].fillna(m['image_id']).nunique()} "
             f"subjects, {dataset.annotators['annotator'].nunique()} annotator(s)."]
    bones = tables["bones"]["Images"]
    fewer = int(bones.drop(index=[str(len(BONES)), "no masks"], errors="ignore").sum())
    with_masks = int(bones.drop(index=["no masks"], errors="ignore").sum())
    lines.append(f"Images with fewer than {len(BONES)} target bones: {fewer} of {with_masks} with masks"
                 f" ({100.0 * fewer / with_masks:.1f} %)." if with_masks else
                 "No image has bone masks: the bone counts need annotations (bench data import --coco).")
    if "oracle_auc" in dataset.meta:
        lines.append(f"Phantom oracle AUC (true latent bone parameters): {dataset.meta['oracle_auc']:.3f}.")
    lines.append("Tables 1\u20132 count subjects; label = max over a subject's images." if dataset.has_labels
                 else UNLABELED_NOTE)
    return lines


def _summary_markdown(dataset: Dataset, tables: dict[str, pd.DataFrame]) -> str:
    parts = ["# Dataset summary", "", *(_headline(dataset, tables)), ""]
    for key, table in tables.items():
        parts += [f"## {CAPTIONS.get(key, key)}", "", _markdown(table), ""]
    return "\n".join(parts)


PAGE_W, PAGE_H, ROW_IN = 8.27, 11.69, 0.2   # A4 portrait (inches), table row height
MARGIN, GUTTER, CHAR_IN = 0.45, 0.35, 0.075  # page margin, column gap, width of a table character


class _Column:
    """A top-to-bottom flow of captioned blocks in one column of the page (inch coordinates)."""

    def __init__(self, fig, left: float, width: float, top: float):
        self.fig, self.left, self.width, self.y = fig, left, width, top

    def axes(self, height: float, caption: str, width: float | None = None):
        self.fig.text(self.left / PAGE_W, (self.y - 0.05) / PAGE_H, caption, fontsize=9,
                      fontweight="bold", va="top")
        self.y -= 0.3 + height
        ax = self.fig.add_axes((self.left / PAGE_W, self.y / PAGE_H,
                                (width or self.width) / PAGE_W, height / PAGE_H))
        self.y -= 0.3
        return ax

    def table(self, table: pd.DataFrame, caption: str) -> None:
        """A paper-style table: index name heads the first column, numbers right-aligned."""
        head = [str(table.index.name or "")] + [str(c) for c in table.columns]
        body = [[str(k)] + [str(v) for v in row] for k, row in zip(table.index, table.to_numpy())]
        chars = [max(len(r[j]) for r in [head] + body) + 2 for j in range(len(head))]
        width = min(self.width, sum(chars) * CHAR_IN)
        ax = self.axes(ROW_IN * (len(body) + 1), caption, width)
        ax.axis("off")
        t = matplotlib.table.Table(ax, bbox=(0, 0, 1, 1))
        for r, row in enumerate([head] + body):
            for c, text in enumerate(row):
                cell = t.add_cell(r, c, width=chars[c], height=1.0, text=text,
                                  loc="left" if c == 0 else "right",
                                  facecolor="#e8e8e8" if r == 0 else "white")
                cell.set_linewidth(0.4)
                cell.PAD = 0.7 / chars[c]                   # about one character of padding
        t.auto_set_font_size(False)
        t.set_fontsize(8)
        ax.add_table(t)


def _age_chart(ax, age: pd.DataFrame) -> None:
    """Stacked horizontal bars of subjects per age group (Normal, Osteoporotic[, Unlabeled])."""
    y, left = np.arange(len(age))[::-1], np.zeros(len(age))
    for col, colour in (("Normal", "#4c72b0"), ("Osteoporotic", "#dd5555"), ("Unlabeled", "#aaaaaa")):
        if col in age.columns:
            ax.barh(y, age[col], left=left, color=colour, label=col, height=0.7)
            left += age[col].to_numpy()
    ax.set_yticks(y, [str(i) for i in age.index])
    ax.set_xlabel("subjects", fontsize=8)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlim(0, max(1.0, left.max()) * 1.05)
    ax.tick_params(labelsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3)


def _summary_png(dataset: Dataset, tables: dict[str, pd.DataFrame]) -> bytes:
    """One A4 page: headline, Tables 1-2 beside a bar chart by age, then split, site, bones and
    annotator tables (or, unlabeled, a note instead of Tables 1-2)."""
    fig = plt.figure(figsize=(PAGE_W, PAGE_H), dpi=120)
    fig.text(MARGIN / PAGE_W, 1 - 0.35 / PAGE_H, "Dataset summary", fontsize=15, fontweight="bold", va="top")
    headline = _headline(dataset, tables)[: None if "sex" in tables else -1]  # note shown below
    fig.text(MARGIN / PAGE_W, 1 - 0.75 / PAGE_H, "\n".join(textwrap.fill(h, 110) for h in headline),
             fontsize=8.5, va="top")
    half = (PAGE_W - 2 * MARGIN - GUTTER) / 2
    top = PAGE_H - 1.55
    left = _Column(fig, MARGIN, half, top)
    right = _Column(fig, MARGIN + half + GUTTER, half - 0.1, top)
    if "sex" in tables:
        left.table(tables["sex"], CAPTIONS["sex"])
        left.table(tables["age"], CAPTIONS["age"])
        height = right.y - left.y - 0.6                  # level with the end of Table 2
        chart = right.axes(height, "Label balance by age group")
        below, gutter = 0.6, 0.65                           # room for x label + legend, y tick labels
        chart.set_position(((right.left + gutter) / PAGE_W, (right.y + 0.3 + below) / PAGE_H,
                            (right.width - gutter) / PAGE_W, (height - below) / PAGE_H))
        _age_chart(chart, tables["age"])
        right.y = left.y
    else:
        fig.text(MARGIN / PAGE_W, top / PAGE_H, textwrap.fill(UNLABELED_NOTE, 95), fontsize=10,
                 va="top", bbox=dict(boxstyle="round,pad=0.5", fc="#fff4d6", ec="#c99a2e"))
        left.y = right.y = top - 0.9
    left.table(tables["split"], CAPTIONS["split"])
    left.table(tables["bones"], CAPTIONS["bones"])
    right.table(tables["site"], CAPTIONS["site"])
    right.table(tables["annotators"], CAPTIONS["annotators"])
    if "missing_bones" in tables:
        right.table(tables["missing_bones"], CAPTIONS["missing_bones"])
    return _png_bytes(fig)


def _summary_files(dataset: Dataset) -> dict[str, bytes]:
    """file name -> bytes of summary.png, summary.md and summary_<table>.csv."""
    tables = summary_tables(dataset)
    payload: dict[str, bytes] = {"summary.png": _summary_png(dataset, tables),
                                 "summary.md": _summary_markdown(dataset, tables).encode("utf-8")}
    for key, table in tables.items():
        payload[f"summary_{key}.csv"] = table.to_csv(lineterminator="\n").encode("utf-8")
    return payload


def _write_all(out_dir: Path, payload: dict[str, bytes]) -> list[Path]:
    """Write already-rendered files, each through a temporary file renamed into place."""
    paths = []
    for name, data in payload.items():
        atomic_write_bytes(Path(out_dir) / name, data)
        paths.append(Path(out_dir) / name)
    return paths


def render_summary(dataset: Dataset, out_dir: Path) -> list[Path]:
    """Write summary.png, summary.md and summary_<table>.csv into `out_dir` (atomically)."""
    return _write_all(out_dir, _summary_files(dataset))
