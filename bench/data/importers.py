"""`bench data import`: a folder of radiographs + a metadata CSV and/or COCO exports -> a dataset
folder (DESIGN.md "Data contracts").

Conventions:
- The CSV (image references, columns, labels, delimiter): bench.data.metadata; `columns`
  overrides the column guesses (field -> column, None: absent).
- COCO images are matched to files as the CSV's are (and across COCO files by that file).
- A pixel spacing in the CSV wins over the file's. Fields
  the CSV leaves empty (subject id when it has no subject column, sex, age, laterality, site) are
  taken from DICOM headers (bench.data.dicom_fields) unless `dicom_tags` is off. A header
  laterality B (both hands on one image) makes the image unusable, as a CSV's B does, unless the
  CSV gives the image a side (the CSV wins); U stays empty.
- Images are referenced in place (absolute `path`) or, with `copy`, converted to 16-bit PNG
  under images/. Splits: bench.data.splits.assign_splits with `split_seed`.
- Unreadable or missing image files: one BenchError naming them all, or with `skip_bad` they are
  left out and listed in skipped.csv. Everything is written through bench.atomic.atomic_dir.
- `out` may neither lie inside the image folder nor hold it (:func:`check_out_folder`), nor be or
  hold an input file: the CSV, a COCO file, the class map (:func:`check_out_inputs`).
- A subject whose images have different labels is warned about, also when its id came from the
  DICOM PatientID (bench.data.metadata.label_conflicts; `bench data check` calls it an error).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.atomic import atomic_dir
from bench.data.coco import CocoImport, load_coco, safe_annotator
from bench.data.coco_classes import load_class_map
from bench.data.coco_raster import rasterise
from bench.data.dicom_fields import header_fields
from bench.data.format import ANNOTATOR_COLUMNS, mask_path, write_manifest
from bench.data.imageio import looks_12_bit, read_image, write_label_map, write_png16
from bench.data.metadata import (BOTH_HANDS, OSTEOPOROSIS_T, SUBJECT_FROM, ImageIndex,  # noqa: F401 (re-exported)
                                 check_image_ids, describe_columns, image_id_for, label_conflicts,
                                 read_metadata)
from bench.data.splits import DEFAULT_FRACTIONS, assign_splits, check_fractions
from bench.errors import BenchError


@dataclass
class ImportConfig:
    images: Path                                   # folder of radiographs (searched recursively)
    out: Path                                      # dataset folder to create
    csv: Path | None = None                        # metadata CSV; required unless `coco` is given
    columns: dict[str, str | None] = field(default_factory=dict)  # field -> CSV column (None: absent)
    coco: list[tuple[str | None, Path]] = field(default_factory=list)  # (annotator or None, COCO json)
    class_map: Path | None = None                  # YAML/JSON COCO class name -> bone
    weights: dict[str, float] = field(default_factory=dict)  # annotator -> beta (default equal)
    copy: bool = False                             # convert images to 16-bit PNG under images/
    skip_bad: bool = False                         # leave unreadable images out (skipped.csv)
    split_seed: int = 0                            # seed of the subject-wise stratified split
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS  # train/val/test
    overwrite: bool = False                        # replace an existing `out`
    progress: bool | None = None                   # progress bar; None: only on a terminal
    dicom_tags: bool = True                        # fill what the CSV lacks from DICOM headers (dicom_fields)


@dataclass
class ImportReport:
    out: Path
    n_images: int
    n_subjects: int
    n_masks: int
    skipped: list[tuple[str, str]]   # (file, reason)
    warnings: list[str]
    columns: str = ""                # which CSV column became which field (bench.data.metadata.describe_columns)


class HeaderFill:
    """Fills a manifest row's empty fields from its DICOM header and counts what it filled and where
    the CSV disagrees with the header (the CSV is kept)."""

    def __init__(self) -> None:
        self.filled: dict[str, int] = {}
        self.disagree: dict[str, list[str]] = {}   # field -> images

    def add(self, rec: dict, fields: dict) -> None:
        for name, value in fields.items():
            current = rec.get(name)
            empty = current is None or (isinstance(current, float) and np.isnan(current)) or str(current).strip() == ""
            if name == "subject_id":
                empty = rec.get(SUBJECT_FROM) in ("header", "header-or-image")   # no subject column
            if empty:
                rec[name] = value
                self.filled[name] = self.filled.get(name, 0) + 1
                if name == "subject_id":
                    rec[SUBJECT_FROM] = "filled"
            elif name != "subject_id" and not _same(current, value):
                self.disagree.setdefault(name, []).append(str(rec.get("file") or rec.get("image_id")))

    def warnings(self) -> list[str]:
        out = []
        if self.filled:
            out.append("filled from DICOM headers (the CSV lacked them): " + ", ".join(
                f"{k} of {n} image(s)" for k, n in sorted(self.filled.items()))
                + "; --ignore-dicom-tags leaves them empty")
        if self.disagree:
            out.append("the CSV and the DICOM headers disagree (the CSV is kept): " + "; ".join(
                f"{k} in {len(files)} image(s) ({', '.join(files[:5])}{', ...' if len(files) > 5 else ''})"
                for k, files in sorted(self.disagree.items())))
        return out


def _header_side(header: dict[str, str]) -> str:
    """ImageLaterality, else Laterality, upper case ('' when neither)."""
    return (header.get("ImageLaterality") or header.get("Laterality") or "").strip().upper()


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float):
        try:
            return abs(float(a) - b) < 1.0       # ages: a CSV in whole years against a DICOM age
        except (TypeError, ValueError):
            return False
    return str(a).strip().upper() == str(b).strip().upper()


def _coco_rows(coco: CocoImport, root: Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Manifest rows for the COCO images when there is no CSV: one subject per image (its DICOM PatientID if any)."""
    files = [rel for rel in sorted(coco.images) if rel not in coco.missing]
    check_image_ids(files)
    rows = [{"image_id": image_id_for(rel), "subject_id": image_id_for(rel), "file": rel,
             SUBJECT_FROM: "header-or-image", "label": None} for rel in files]
    return pd.DataFrame(rows), [(name, f"COCO image not found under {root}") for name in coco.missing]


def _weights(annotators: list[str], given: dict[str, float]) -> dict[str, float]:
    """beta per annotator of one image: given weights (or equal) normalised to sum to 1. A given
    name counts under its file-safe form (bench.data.coco.safe_annotator), as the masks do."""
    given = {safe_annotator(k): v for k, v in given.items()}
    if given:
        lacking = [a for a in annotators if a not in given]
        if lacking:
            raise BenchError(f"no weight given for annotator(s) {', '.join(lacking)}; give every "
                             "annotator a weight (--weight NAME=W) or none for equal weights")
        w = np.array([given[a] for a in annotators], dtype=float)
    else:
        w = np.ones(len(annotators))
    return dict(zip(annotators, (w / w.sum()).tolist()))


def check_out_folder(images: Path, out: Path) -> None:
    """Refuse an `out` inside the image folder, or one that holds it.

    Refused rather than left out of the scan: a dataset inside the image folder would still be
    scanned as radiographs by every later import into another folder (its copies and masks
    clashing with the originals' names), and `--overwrite` of a folder holding the images would
    delete the originals the dataset points at.
    """
    src, dst = Path(images).resolve(), Path(out).resolve()
    if dst == src or src in dst.parents:
        raise BenchError(f"--out {out} is {'' if dst == src else 'inside '}the image folder {images}, which is "
                         "searched for radiographs (the dataset's own files would be taken for images); "
                         "choose an --out outside it")
    if dst in src.parents:
        raise BenchError(f"--out {out} holds the image folder {images} (--overwrite would delete the "
                         "radiographs); choose an --out outside it")


def check_out_inputs(cfg: ImportConfig) -> None:
    """Refuse an `out` that is, or holds, an input file (the CSV, a COCO file, the class map):
    --overwrite would delete it before it is read, or after, with the dataset built from it."""
    dst = Path(cfg.out).resolve()
    inputs = [("the metadata CSV", cfg.csv), ("the class map", cfg.class_map)]
    inputs += [("the COCO file", path) for _, path in cfg.coco]
    for what, path in inputs:
        if path is None:
            continue
        src = Path(path).resolve()
        if dst == src or dst in src.parents:
            raise BenchError(f"--out {cfg.out} {'is' if dst == src else 'holds'} {what} {path}, which "
                             "--overwrite would delete; choose an --out that is not an input")


def import_dataset(cfg: ImportConfig) -> ImportReport:
    """Build the dataset folder `cfg.out` (see the module docstring for the conventions)."""
    images = Path(cfg.images)
    if not images.is_dir():
        raise BenchError(f"image folder {images} does not exist")
    if cfg.csv is None and not cfg.coco:
        raise BenchError("nothing to import: give a metadata CSV (--csv FILE) and/or COCO "
                         "annotations (--coco FILE.json)")
    check_out_folder(images, Path(cfg.out))
    check_out_inputs(cfg)
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise BenchError(f"{cfg.out} already exists; choose another --out or pass --overwrite")
    if any(w <= 0 or not np.isfinite(w) for w in cfg.weights.values()):
        raise BenchError(f"annotator weights must be positive numbers, got {cfg.weights}")
    check_fractions(cfg.fractions)                 # before any image is read
    index = ImageIndex(images)
    coco = load_coco(cfg.coco, load_class_map(cfg.class_map), resolve=index.find) if cfg.coco else None
    warnings = list(coco.warnings) if coco else []
    columns = ""
    if cfg.csv is not None:
        meta = read_metadata(Path(cfg.csv), index, cfg.columns)
        rows, missing, columns = meta.rows, meta.missing, describe_columns(meta)
        warnings += meta.warnings
    else:
        rows, missing = _coco_rows(coco, index.root)
    coco_of = {rel for rel in coco.images if rel not in coco.missing} if coco else set()
    if coco is not None and cfg.csv is not None:
        extra = coco_of - set(rows["file"] if len(rows) else [])
        if extra:
            warnings.append(f"{len(extra)} annotated image(s) are not in the CSV and were left out")
        if coco.missing:
            warnings.append(f"{len(coco.missing)} COCO image(s) are not in {images}: "
                            + ", ".join(coco.missing[:5]) + (", ..." if len(coco.missing) > 5 else ""))
    report = _write(cfg, index, rows, missing, coco, coco_of, warnings)
    report.columns = columns
    return report


def _write(cfg: ImportConfig, index: ImageIndex, rows: pd.DataFrame, missing: list[tuple[str, str]],
           coco: CocoImport | None, coco_of: set[str], warnings: list[str]) -> ImportReport:
    bad: list[tuple[str, str]] = list(missing)
    keep, ann_rows, n_masks, dark = [], [], 0, []
    from_header = HeaderFill()
    show = sys.stderr.isatty() if cfg.progress is None else cfg.progress
    from tqdm import tqdm

    with atomic_dir(cfg.out, overwrite=cfg.overwrite) as tmp:
        for _, row in tqdm(list(rows.iterrows()), desc="import", unit="img", disable=not show):
            src = index.root / row["file"]
            try:
                rad = read_image(src)
            except BenchError as exc:
                bad.append((str(src), str(exc)))
                continue
            h, w = rad.pixels.shape
            if looks_12_bit(rad):
                dark.append(row["file"])
            masks = {}
            if row["file"] in coco_of:
                cimg = coco.images[row["file"]]
                if (cimg.height, cimg.width) != (h, w):
                    bad.append((str(src), f"image is {w}x{h} but the COCO annotations are for "
                                          f"{cimg.width}x{cimg.height}"))
                    continue
                masks = {a: rasterise(s, h, w) for a, s in sorted(cimg.shapes.items())}
            rec = row.to_dict()
            if cfg.dicom_tags and _header_side(rad.header) == "B":
                if rec.get("laterality") not in ("L", "R"):
                    bad.append((str(src), f"the DICOM header's laterality B means {BOTH_HANDS}"))
                    continue
                from_header.disagree.setdefault("laterality", []).append(row["file"])
            if rad.pixel_spacing_mm and not (rec.get("pixel_spacing_mm", np.nan) > 0):
                rec["pixel_spacing_mm"] = rad.pixel_spacing_mm
            if cfg.dicom_tags and rad.header:
                from_header.add(rec, header_fields(rad.header))
            if cfg.copy:
                (tmp / "images").mkdir(exist_ok=True)
                write_png16(tmp / "images" / f"{rec['image_id']}.png", rad.pixels)
                rec["path"] = f"images/{rec['image_id']}.png"
            else:
                rec["path"] = str(src.resolve())
            for annotator, beta in (_weights(list(masks), cfg.weights) if masks else {}).items():
                target = mask_path(tmp, rec["image_id"], annotator)
                target.parent.mkdir(parents=True, exist_ok=True)
                write_label_map(target, masks[annotator])
                ann_rows.append({"image_id": rec["image_id"], "annotator": annotator, "weight": beta})
                n_masks += 1
            keep.append(rec)
        if bad and not cfg.skip_bad:
            listing = "\n  ".join(f"{f}: {r}" for f, r in bad)
            raise BenchError(f"{len(bad)} image(s) could not be imported (fix them, or pass "
                             f"--skip-bad to leave them out):\n  {listing}")
        if not keep:
            raise BenchError("no image could be imported" + (f"; {len(bad)} skipped" if bad else ""))
        warnings += from_header.warnings()
        if dark:
            warnings.append(
                f"{len(dark)} image(s) are 16-bit files whose values all lie below 4096 "
                f"({', '.join(dark[:5])}{', ...' if len(dark) > 5 else ''}): likely 12-bit data, which is "
                "scaled by 65535 like any 16-bit file and will look 16x darker. If that is not intended, "
                "rescale the files to the 16-bit range (values x 16) and import them again")
        unknown = [rec["file"] for rec in keep if rec.get(SUBJECT_FROM) == "header"]
        if unknown:
            why = ("DICOM headers are ignored (--ignore-dicom-tags), so" if not cfg.dicom_tags
                   else "no DICOM PatientID gives one:")
            raise BenchError(f"the CSV has no subject id column and {why} {len(unknown)} image(s) have no subject "
                             f"({', '.join(unknown[:5])}); add a subject column (--column subject_id=COLUMN), or "
                             "--column subject_id= for one subject per image")
        if from_header.filled.get("subject_id"):   # subjects from PatientID: the CSV's check saw none of them
            warnings += label_conflicts(pd.DataFrame(keep))
        manifest = pd.DataFrame(keep).drop(columns=["file", SUBJECT_FROM])
        manifest["label"] = pd.to_numeric(manifest["label"], errors="coerce").astype("Int64")
        manifest["split"] = assign_splits(manifest, cfg.split_seed, tuple(cfg.fractions))
        write_manifest(manifest, tmp / "manifest.csv")
        pd.DataFrame(ann_rows, columns=list(ANNOTATOR_COLUMNS)).to_csv(
            tmp / "annotators.csv", index=False, lineterminator="\n")
        if cfg.skip_bad:
            pd.DataFrame(bad, columns=["file", "reason"]).to_csv(tmp / "skipped.csv", index=False,
                                                                lineterminator="\n")
        meta = {
            "name": Path(cfg.out).name, "kind": "imported",
            "source": {"images": str(Path(cfg.images).resolve()),
                       "csv": str(Path(cfg.csv).resolve()) if cfg.csv else None,
                       "coco": [str(Path(p).resolve()) for _, p in cfg.coco]},
            "copied": cfg.copy, "label_rule": f"t_score < {OSTEOPOROSIS_T}",
            "split": {"seed": cfg.split_seed, "fractions": list(cfg.fractions)},
            "classes": dict(sorted(coco.classes.items())) if coco else {},
            "n_images": len(manifest), "n_subjects": int(manifest["subject_id"].nunique()),
            "n_skipped": len(bad),
            "from_dicom_tags": dict(from_header.filled),
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return ImportReport(out=Path(cfg.out), n_images=len(manifest),
                        n_subjects=int(manifest["subject_id"].nunique()), n_masks=n_masks,
                        skipped=bad, warnings=warnings)
