"""`bench data show`: a contact sheet with every annotator's mask contours and a one-page summary.

Summary tables follow the paper's Tables 1-2 ("Hand X-ray datasets"): samples are *subjects*
(the paper's 192 samples are its 192 subjects). A subject's label is the max over its images
(as in `bench.data.splits.subject_table`); its sex and age are the first non-empty values in
manifest order. Age groups are 10-year bins 10-19 ... 90-99 by floor(age / 10).
Bone presence: a target bone is visible in an image when any annotator's label map has a pixel
of its class. A contact-sheet tile is the whole radiograph (block-mean downsampled) beside a zoom
on the target bones with every annotator's contours (colour = bone, line style = annotator).
Figures use matplotlib's Agg backend; PNGs carry no timestamp, so the same
dataset and seed give the same bytes. Everything is rendered first, then written atomically.
"""
from __future__ import annotations

import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.table  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from bench.atomic import atomic_write_bytes  # noqa: E402
from bench.data.format import BONES, CLASS_NAMES, Dataset  # noqa: E402
from bench.errors import BenchError  # noqa: E402

LABEL_NAMES: dict[int, str] = {0: "Normal", 1: "Osteoporotic"}
SEX_ROWS: tuple[str, ...] = ("Male", "Female")
AGE_GROUPS: tuple[str, ...] = tuple(f"{lo}\u2013{lo + 9}" for lo in range(10, 100, 10))
#: Per-class contour colours (ulna, radius, M1-M5), chosen to stay distinct on a grey radiograph.
BONE_COLOURS: dict[int, str] = {1: "#ff3030", 2: "#ff9a00", 3: "#ffe600", 4: "#3cff3c",
                                5: "#00e5ff", 6: "#4a7dff", 7: "#ff40ff"}
#: Line style per annotator (in sorted annotator-name order; cycles beyond four).
ANNOTATOR_STYLES: tuple[object, ...] = ("-", (0, (4, 2)), (0, (1, 1.5)), (0, (5, 2, 1, 2)))


@dataclass
class SheetConfig:
    """Layout of the contact sheet."""

    max_px: int = 512           # long side of a downsampled tile (block-mean for images)
    tile_in: float = 2.3        # width of one panel in inches (a tile = overview + bone zoom)
    dpi: int = 110              # resolution of the PNG
    linewidth: float = 0.9      # contour line width in points


# ----------------------------------------------------------------------------------- tables
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
    "bones" (images by number of visible target bones), "missing_bones", "annotators"."""
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
    lowest = min([len(BONES) - 1, *n_bones.tolist()])       # rows 7 .. lowest seen (at least 6)
    counts = n_bones.astype(str).value_counts().reindex([str(k) for k in range(len(BONES), lowest - 1, -1)],
                                                        fill_value=0)
    if (~has).any():
        counts["no masks"] = int((~has).sum())
    tables["bones"] = pd.DataFrame({"Images": counts.astype(int)}).rename_axis("Bones visible")
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
                 + (f" ({100.0 * fewer / with_masks:.1f} %)." if with_masks else "."))
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


# ---------------------------------------------------------------------------- contact sheet
def _png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def downsample(image: np.ndarray, masks: dict[str, np.ndarray], max_px: int
               ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """Block-mean the image and take the block-centre label of each mask by an integer factor
    so the long side is at most `max_px`; returns (image, masks, factor)."""
    f = max(1, math.ceil(max(image.shape) / max_px))
    h, w = (image.shape[0] // f) * f, (image.shape[1] // f) * f
    for name, mask in masks.items():
        if mask.shape != image.shape:
            raise BenchError(f"mask of annotator {name!r} has shape {mask.shape} but its image has "
                             f"{image.shape}; label maps must match their radiograph pixel for pixel")
    small = image[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    return small, {k: v[f // 2:h:f, f // 2:w:f] for k, v in masks.items()}, f


def zoom_box(masks: dict[str, np.ndarray], shape: tuple[int, int], margin: float = 0.06
             ) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) around every labelled pixel of every mask, padded by `margin` of
    the image size and widened to the image's aspect ratio (clamped to the image); the whole
    image when there are no labelled pixels."""
    h, w = shape
    union = np.zeros(shape, bool)
    for mask in masks.values():
        union |= mask > 0
    if not union.any():
        return 0, h, 0, w
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    r0, r1 = rows[0] - margin * h, rows[-1] + 1 + margin * h
    c0, c1 = cols[0] - margin * w, cols[-1] + 1 + margin * w
    bh, bw = r1 - r0, c1 - c0
    if bh / bw > h / w:                                   # too tall: widen
        bw = min(w, bh * w / h)
    else:                                                 # too wide: heighten
        bh = min(h, bw * h / w)

    def place(lo: float, hi: float, size: float, limit: int) -> tuple[int, int]:
        start = min(max(0.0, (lo + hi - size) / 2.0), limit - size)
        return int(round(start)), int(round(start + size))

    (r0, r1), (c0, c1) = place(r0, r1, bh, h), place(c0, c1, bw, w)
    return r0, r1, c0, c1


def annotator_styles(names: list[str]) -> dict[str, object]:
    """Line style per annotator, by sorted name (consistent across tiles)."""
    return {a: ANNOTATOR_STYLES[i % len(ANNOTATOR_STYLES)] for i, a in enumerate(sorted(names))}


def draw_tile(ax, image: np.ndarray, masks: dict[str, np.ndarray], styles: dict[str, object],
              linewidth: float = 0.9) -> None:
    """The radiograph (1-99.5 percentile stretch, grey) with each annotator's per-class contours."""
    lo, hi = np.percentile(image, [1.0, 99.5])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="nearest")
    for name, mask in masks.items():
        for cid, colour in BONE_COLOURS.items():
            region = mask == cid
            if region.any():
                ax.contour(region.astype(np.float32), levels=[0.5], colors=[colour],
                           linestyles=[styles[name]], linewidths=linewidth, antialiased=True)
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():                     # a frame: collimated edges are white too
        spine.set_color("#808080")
        spine.set_linewidth(0.5)


def render_tile(image: np.ndarray, masks: dict[str, np.ndarray], linewidth: float = 0.9) -> np.ndarray:
    """One tile alone, one output pixel per input pixel: H x W x 3 uint8 (for checks and reuse)."""
    h, w = image.shape
    fig = plt.figure(figsize=(w / 100.0, h / 100.0), dpi=100)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    draw_tile(ax, image, masks, annotator_styles(list(masks)), linewidth)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def _tile_title(row: pd.Series) -> str:
    sex = str(row.get("sex") or "").strip()[:1].upper() if pd.notna(row.get("sex")) else ""
    bits = [b for b in (sex, f"{math.floor(row['age'])} y" if pd.notna(row.get("age")) else "") if b]
    if pd.notna(row.get("label")):
        status = LABEL_NAMES.get(int(row["label"]), str(row["label"]))
        bits.append(status + (f" (T {row['t_score']:+.1f})" if pd.notna(row.get("t_score")) else ""))
    bits += [str(row[c]) for c in ("site", "split") if pd.notna(row.get(c))]
    return f"{row['image_id']}\n" + " \u00b7 ".join(bits)


def contact_sheet(dataset: Dataset, out: Path, n: int = 12, seed: int = 0,
                  config: SheetConfig | None = None) -> Path:
    """A PNG grid of `n` radiographs (drawn by a generator seeded with `seed`). Each tile is the
    whole radiograph beside a zoom on the target bones carrying every annotator's label-map
    contours: colour = bone, line style = annotator; legend below."""
    out = Path(out)
    atomic_write_bytes(out, _contact_sheet_png(dataset, n, seed, config or SheetConfig()))
    return out


def _contact_sheet_png(dataset: Dataset, n: int, seed: int, config: SheetConfig) -> bytes:
    if n < 1:
        raise BenchError(f"--n must be at least 1 (got {n})")
    ids = dataset.image_ids
    if not ids:
        raise BenchError(f"{dataset.root / 'manifest.csv'} lists no images; nothing to show")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A0E]))
    pick = sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False).tolist())
    styles = annotator_styles(dataset.annotators["annotator"].astype(str).unique().tolist())
    tiles = []
    for i in pick:
        image, masks = dataset.image(ids[i]), dataset.masks(ids[i])
        overview, _, f = downsample(image, masks, config.max_px)
        r0, r1, c0, c1 = zoom_box(masks, image.shape)
        zoom, zmasks, _ = downsample(image[r0:r1, c0:c1], {k: v[r0:r1, c0:c1] for k, v in masks.items()},
                                     config.max_px)
        tiles.append((ids[i], overview, (r0 / f, r1 / f, c0 / f, c1 / f), zoom, zmasks))
    aspect = max(t[1].shape[0] / t[1].shape[1] for t in tiles)
    cols = min(len(tiles), 3 if aspect >= 1.0 else 2)           # tiles per row (two panels each)
    rows = math.ceil(len(tiles) / cols)
    panel_h = config.tile_in * aspect
    tile_h = panel_h + 0.45                                       # panels + two title lines
    width = cols * (2 * config.tile_in + 0.25)
    bone_cols = min(len(BONES), max(2, int(width / 0.85)))   # legend entries per row that fit
    ann_cols = max(1, min(len(styles), int(width / 1.3)))
    bone_rows, ann_rows = math.ceil(len(BONES) / bone_cols), math.ceil(len(styles) / ann_cols)
    legend_h = 0.2 * (bone_rows + ann_rows) + 0.3
    height = rows * tile_h + legend_h
    fig = plt.figure(figsize=(width, height), dpi=config.dpi)
    for k, (image_id, overview, box, zoom, zmasks) in enumerate(tiles):
        r, c = divmod(k, cols)
        bottom = (height - (r + 1) * tile_h) / height
        x0 = c * (2 * config.tile_in + 0.25) + 0.125
        left = fig.add_axes((x0 / width, bottom, (config.tile_in - 0.02) / width, panel_h / height))
        draw_tile(left, overview, {}, styles)
        left.add_patch(matplotlib.patches.Rectangle(
            (box[2] - 0.5, box[0] - 0.5), box[3] - box[2], box[1] - box[0], fill=False,
            edgecolor="#ffd24a", linewidth=0.8, linestyle=(0, (3, 2))))
        right = fig.add_axes(((x0 + config.tile_in + 0.02) / width, bottom,
                              (config.tile_in - 0.02) / width, panel_h / height))
        draw_tile(right, zoom, zmasks, styles, config.linewidth)
        if not zmasks:
            right.text(0.5, 0.5, "no masks", color="white", ha="center", va="center",
                       transform=right.transAxes, fontsize=9)
        fig.text((x0 + config.tile_in) / width, (bottom * height + panel_h + 0.05) / height,
                 _tile_title(dataset.row(image_id)), fontsize=7, ha="center", va="bottom")
    bones = [Line2D([], [], color=BONE_COLOURS[i], lw=2.5, label=name) for name, i in BONES.items()]
    annotators = [Line2D([], [], color="black", lw=1.2, linestyle=style, label=f"annotator {a}")
                  for a, style in styles.items()]
    y_ann = 0.05 / height
    y_bone = y_ann + (0.2 * ann_rows + 0.05) / height if annotators else y_ann
    fig.legend(handles=bones, loc="lower center", ncol=bone_cols, fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, y_bone), handlelength=2.0, borderpad=0.1, labelspacing=0.3)
    if annotators:
        fig.legend(handles=annotators, loc="lower center", ncol=ann_cols, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, y_ann), handlelength=3.0, borderpad=0.1, labelspacing=0.3)
    return _png_bytes(fig)


def show(root: str | Path, out_dir: str | Path | None = None, n: int = 12, seed: int = 0
         ) -> dict[str, Path]:
    """Contact sheet and summary of the dataset at `root` into `out_dir` (default `root/show/`)."""
    dataset = Dataset.open(root)
    out_dir = Path(out_dir) if out_dir is not None else Path(root) / "show"
    if out_dir.exists() and not out_dir.is_dir():
        raise BenchError(f"output {out_dir} exists and is not a folder; pass another --out")
    # Render everything before writing anything: a bad file leaves no partial outputs.
    payload = {"contact_sheet.png": _contact_sheet_png(dataset, n, seed, SheetConfig())}
    payload.update(_summary_files(dataset))
    return {p.name.replace(".png", "").replace(".md", "_md").replace(".csv", ""): p
            for p in _write_all(out_dir, payload)}


__all__ = ["SheetConfig", "age_group", "bone_presence", "contact_sheet", "draw_tile", "downsample",
           "render_summary", "render_tile", "show", "subject_table", "summary_tables"]
