"""Segmentation examples with uncertainty maps: collected PNGs, never recomputed.

The hook (reports → bench only, so the report never imports a method): a stage or a run that
wants pictures in the report writes PNG files into a ``figures/`` folder, either

* of the run folder, ``results/<suite>/<entry>/seed<k>/figures/*.png``, or
* of one of the run's stage outputs, ``results/cache/<stage>/<key>/figures/*.png``, where the
  (stage, key) pairs are those listed under ``"stages"`` in the run's ``config.json`` (the
  segmentation stage writes image | overlay | entropy panels there).

Every PNG found is copied into the report (a stage output shared by several entries, e.g. one
segmentation model per seed, is copied once) and the first few are put together in one montage
figure (PNG and PDF). Runs without such folders are skipped quietly; an unreadable PNG is
skipped too, since a picture must not break the report.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError

from reports.figures import FigureConfig, FigureItem, save

FIGURES_DIR = "figures"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Example:
    entry: str
    seed: int
    origin: str                     # "run" or the stage name
    source: Path                    # the PNG file


def collect(results: Path, runs: Iterable[tuple[str, int, Path]]) -> list[Example]:
    """PNG files of the runs' ``figures/`` folders and of their stage outputs' ``figures/`` folders.

    `runs`: (entry, seed, run folder). Ordered by entry, seed, origin, file name; a stage output
    reached from several runs is listed once (under the first run).
    """
    out: list[Example] = []
    seen: set[Path] = set()
    for entry, seed, run in sorted(runs, key=lambda r: (r[0], r[1])):
        folders = [("run", Path(run) / FIGURES_DIR)]
        try:
            stages = json.loads((Path(run) / "config.json").read_text(encoding="utf-8")).get("stages", {})
        except (OSError, ValueError, AttributeError):
            stages = {}
        if isinstance(stages, dict):
            folders += [(str(s), Path(results) / "cache" / str(s) / str(k) / FIGURES_DIR)
                        for s, k in sorted(stages.items()) if _plain(str(s)) and _plain(str(k))]
        for origin, folder in folders:
            if not folder.is_dir():
                continue
            for png in sorted(folder.glob("*.png")):
                real = png.resolve()
                if real not in seen and png.is_file():
                    seen.add(real)
                    out.append(Example(entry, int(seed), origin, png))
    return out


def _plain(name: str) -> bool:
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def copy_examples(examples: list[Example], out_dir: Path) -> list[tuple[Example, str]]:
    """Copy each PNG to ``out_dir/<entry>-seed<k>-<origin>-<file>.png``; return (example, file name)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for ex in examples:
        name = _SAFE.sub("_", f"{ex.entry}-seed{ex.seed}-{ex.origin}-{ex.source.name}")
        shutil.copyfile(ex.source, out_dir / name)
        copied.append((ex, name))
    return copied


def montage(examples: list[Example], out_dir: Path, cfg: FigureConfig, limit: int = 4) -> FigureItem | None:
    """The first `limit` readable examples stacked in one figure, those of a stage whose name contains
    "seg" (segmentation with uncertainty maps) first, the others in order; None when there is none."""
    images = []
    for ex in sorted(examples, key=lambda e: "seg" not in e.origin.lower()):  # segmentation pictures first
        if len(images) == limit:
            break
        try:
            with Image.open(ex.source) as im:
                images.append((ex, np.asarray(im.convert("RGB"))))
        except (OSError, UnidentifiedImageError):
            continue
    if not images:
        return None
    fig = Figure(figsize=(8, 2.8 * len(images)))
    for i, (ex, arr) in enumerate(images):
        ax = fig.add_subplot(len(images), 1, i + 1)
        ax.imshow(arr)
        ax.set_axis_off()
        ax.set_title(f"{ex.entry}, seed {ex.seed} ({ex.origin}): {ex.source.stem}", fontsize=8)
    fig.tight_layout()
    files = save(fig, out_dir, "segmentation_examples", cfg.dpi)
    return FigureItem("segmentation_examples", "Segmentation", "Segmentation examples with uncertainty maps",
                      f"{len(images)} of the {len(examples)} example pictures the runs left in their `figures/` "
                      "folders (for the segmentation stage: radiograph | predicted labels | entropy of the "
                      "mixture of decoders).", files)
