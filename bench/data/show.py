"""`bench data show`: a contact sheet with every annotator's mask contours and a one-page summary.

The summary (paper Tables 1-2 and other counts) lives in `bench.data.summary`. A contact-sheet
tile is the whole radiograph (block-mean downsampled) beside a zoom on the target bones with every annotator's contours (colour = bone, line style = annotator).
Figures use matplotlib's Agg backend; PNGs carry no timestamp, so the same
dataset and seed give the same bytes. Everything is rendered first, then written atomically.
"""
from __future__ import annotations

import math
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
from bench.data.format import BONES, Dataset  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.data.summary import LABEL_NAMES, _png_bytes, _summary_files, _write_all  # noqa: E402

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


__all__ = ["SheetConfig", "contact_sheet", "draw_tile", "downsample", "render_tile", "show"]
