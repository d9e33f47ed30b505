"""`bench data import`: a folder of radiographs + a metadata CSV and/or COCO exports -> a dataset
folder (DESIGN.md "Data contracts").

Conventions:
- The CSV names each image by file name (relative to the image folder, or just the base name)
  or by image id (the file name without its image extension). The image id is the file's path
  under the folder without that extension, '/' replaced by '_'.
- CSV columns are found by common names (case and punctuation ignored, e.g. "T-score" is
  t_score, "PatientID" is subject_id); `columns` overrides them (field -> column, None: absent).
- label = 1 when t_score < -2.5 (paper: osteoporosis by DXA T-score), derived when only the
  T-score is given; a given label that contradicts the T-score is an error (T = -2.5 excepted).
- sex is stored as F/M, laterality as L/R; a pixel spacing in the CSV wins over the file's. Fields
  the CSV leaves empty (subject id when it has no subject column, sex, age, laterality, site) are
  taken from DICOM headers (bench.data.dicom_fields) unless `dicom_tags` is off.
- Images are referenced in place (absolute `path`) or, with `copy`, converted to 16-bit PNG
  under images/. Splits: bench.data.splits.assign_splits with `split_seed`.
- Unreadable or missing image files: one BenchError naming them all, or with `skip_bad` they are
  left out and listed in skipped.csv. Everything is written through bench.atomic.atomic_dir.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.atomic import atomic_dir
from bench.data.coco import CocoImport, load_class_map, load_coco, rasterise
from bench.data.dicom_fields import header_fields
from bench.data.format import ANNOTATOR_COLUMNS, MANIFEST_COLUMNS, mask_path, write_manifest
from bench.data.imageio import read_image, write_label_map, write_png16
from bench.data.splits import DEFAULT_FRACTIONS, assign_splits
from bench.errors import BenchError

OSTEOPOROSIS_T = -2.5  # WHO: osteoporosis when the DXA T-score is below -2.5
SUBJECT_FROM = "_subject_from"   # working column: csv | image (one per image) | header (PatientID) | header-or-image
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".dicom", ".dic")
#: CSV column names recognised for each field (compared lower case, letters and digits only).
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("image", "imageid", "file", "filename", "filepath", "path", "image_file", "imagefile"),
    "subject_id": ("subjectid", "subject", "patientid", "patient", "participantid", "pid"),
    "t_score": ("tscore", "t", "dxatscore", "tscoremin", "lowesttscore"),
    "label": ("label", "osteoporosis", "osteoporotic", "target", "class", "y"),
    "sex": ("sex", "gender"),
    "age": ("age", "ageyears", "patientage"),
    "laterality": ("laterality", "side", "hand", "imagelaterality"),
    "site": ("site", "center", "centre", "hospital", "scanner", "institution"),
    "pixel_spacing_mm": ("pixelspacingmm", "pixelspacing", "spacing", "spacingmm"),
}
MISSING = {"", "na", "nan", "n/a", "none", "null", "unknown", "?", "-", "nat"}
_LABELS = {**dict.fromkeys(("1", "1.0", "true", "yes", "y", "osteoporosis", "osteoporotic",
                            "positive", "pos"), 1),
           **dict.fromkeys(("0", "0.0", "false", "no", "n", "normal", "osteopenia", "osteopenic",
                            "control", "negative", "neg", "nonosteoporotic"), 0)}
_SEX = {"f": "F", "female": "F", "w": "F", "woman": "F", "m": "M", "male": "M", "man": "M"}
_SIDE = {"l": "L", "left": "L", "lt": "L", "r": "R", "right": "R", "rt": "R"}


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


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def resolve_columns(csv_columns: list[str], overrides: dict[str, str | None]) -> dict[str, str | None]:
    """Field -> CSV column: the override, else the first alias present, else None."""
    unknown = [f for f in overrides if f not in COLUMN_ALIASES]
    if unknown:
        raise BenchError(f"unknown field(s) {unknown} in the column mapping; fields are "
                         f"{', '.join(COLUMN_ALIASES)}")
    by_key = {_key(c): c for c in csv_columns}
    out: dict[str, str | None] = {}
    for fld, aliases in COLUMN_ALIASES.items():
        if fld in overrides:
            col = overrides[fld]
            if col and col not in csv_columns:
                raise BenchError(f"column {col!r} (mapped to {fld}) is not in the CSV; its columns "
                                 f"are {', '.join(csv_columns)}")
            out[fld] = col or None
        else:
            out[fld] = next((by_key[a] for a in (_key(fld),) + aliases if a in by_key), None)
    if out["image"] is None:
        raise BenchError(f"the CSV has no image column (looked for {', '.join(COLUMN_ALIASES['image'])}); "
                         "map one with --column image=COLUMN")
    return out


def image_id_for(rel: str) -> str:
    """Image id of a file path relative to the image folder."""
    p = Path(rel)
    if p.suffix.lower() in IMAGE_SUFFIXES:
        p = p.with_suffix("")
    return p.as_posix().replace("/", "_")


class ImageIndex:
    """Files under the image folder, looked up by relative path, base name or image id."""

    def __init__(self, root: Path):
        self.root = root
        files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts))
        self.lookup: dict[str, list[str]] = {}
        for p in files:
            rel = p.relative_to(root).as_posix()
            for k in {rel, p.name, image_id_for(rel), image_id_for(p.name)}:
                self.lookup.setdefault(k, []).append(rel)

    def find(self, ref: str) -> str | None:
        """Relative path for a CSV/COCO reference; BenchError when ambiguous."""
        ref = ref.strip().replace("\\", "/")
        hits = sorted(set(self.lookup.get(ref, []) or self.lookup.get(ref.lstrip("./"), [])
                          or self.lookup.get(Path(ref).name, [])))
        if len(hits) > 1:
            raise BenchError(f"image reference {ref!r} matches several files ({', '.join(hits)}); "
                             "name the file with its path under the image folder")
        return hits[0] if hits else None


def _parse(value: str, table: dict, what: str, errors: list[str], where: str):
    v = value.strip().lower()
    if v in MISSING:
        return None
    if v in table:
        return table[v]
    errors.append(f"{where}: {what} {value!r} is not one of {', '.join(sorted(set(map(str, table))))}")
    return None


def _number(value: str, what: str, errors: list[str], where: str, lo: float, hi: float) -> float:
    v = value.strip()
    if v.lower() in MISSING:
        return np.nan
    m = re.fullmatch(r"0*(\d+)\s*[yY]", v)  # DICOM age string, e.g. 063Y
    try:
        x = float(m.group(1)) if m else float(v)
    except ValueError:
        errors.append(f"{where}: {what} {value!r} is not a number")
        return np.nan
    if not (lo <= x <= hi):
        errors.append(f"{where}: {what} {x:g} is outside {lo:g}..{hi:g}")
        return np.nan
    return x


def read_metadata(csv: Path, index: ImageIndex, overrides: dict[str, str | None]
                  ) -> tuple[pd.DataFrame, list[tuple[str, str]], list[str]]:
    """Parse the CSV into manifest rows (with `file`, relative to the image folder).

    Returns (rows, missing files as (reference, reason), warnings). Value errors in every row
    are collected into one BenchError.
    """
    try:
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BenchError(f"cannot read metadata CSV {csv}: {exc}") from exc
    cols = resolve_columns(list(raw.columns), overrides)
    warnings: list[str] = []
    subject_from = "csv" if cols["subject_id"] else "image" if "subject_id" in overrides else "header"
    if subject_from == "image":
        warnings.append("no subject column: every image is its own subject")
    errors: list[str] = []
    missing: list[tuple[str, str]] = []
    rows = []
    for i, rec in raw.iterrows():
        where = f"{csv.name} row {i + 2}"
        get = lambda f: rec[cols[f]] if cols[f] else ""  # noqa: E731
        ref = get("image").strip()
        rel = index.find(ref) if ref else None
        if not ref:
            errors.append(f"{where}: empty image reference")
            continue
        if rel is None:
            missing.append((ref, f"{where}: no such file under {index.root}"))
            continue
        t = _number(get("t_score"), "t_score", errors, where, -10, 10)
        label = _parse(get("label"), _LABELS, "label", errors, where)
        if label is None and not np.isnan(t):
            label = int(t < OSTEOPOROSIS_T)
        elif label is not None and not np.isnan(t) and t != OSTEOPOROSIS_T and label != int(t < OSTEOPOROSIS_T):
            errors.append(f"{where}: label {label} contradicts t_score {t:g} (label = t_score < "
                          f"{OSTEOPOROSIS_T}); fix the row, or import without one of the columns "
                          "(--column label= or --column t_score=)")
        subject = get("subject_id").strip() or (image_id_for(rel) if subject_from != "csv" else "")
        if not subject:
            errors.append(f"{where}: empty subject id")
        rows.append({
            **{c: rec[c] for c in raw.columns
               if c not in cols.values() and c not in MANIFEST_COLUMNS and c != "file"},
            "image_id": image_id_for(rel), "subject_id": subject, "file": rel, SUBJECT_FROM: subject_from,
            "sex": _parse(get("sex"), _SEX, "sex", errors, where) or "",
            "age": _number(get("age"), "age", errors, where, 0, 130), "t_score": t,
            "label": label, "laterality": _parse(get("laterality"), _SIDE, "laterality", errors, where) or "",
            "pixel_spacing_mm": _number(get("pixel_spacing_mm"), "pixel_spacing_mm", errors, where, 1e-4, 10),
            "site": get("site").strip(),
        })
    if errors:
        raise BenchError(f"{len(errors)} problem(s) in {csv}:\n  " + "\n  ".join(errors))
    df = pd.DataFrame(rows)
    if not df.empty:
        dup = df.loc[df["image_id"].duplicated(keep=False), "image_id"].unique()
        if len(dup):
            raise BenchError(f"{csv} lists image(s) {', '.join(map(str, dup))} more than once; "
                             "one row per image")
        for col, what in (("label", "labels"), ("sex", "sexes")):
            n = df[df[col].astype(str) != ""].groupby("subject_id")[col].nunique(dropna=True)
            if (n > 1).any():
                warnings.append(f"subject(s) {', '.join(n[n > 1].index[:10])} have different {what} "
                                "across their images")
    return df, missing, warnings


class HeaderFill:
    """Fills a manifest row's empty fields from its DICOM header and counts what it filled and where
    the CSV disagrees with the header (the CSV is kept)."""

    def __init__(self) -> None:
        self.filled: dict[str, int] = {}
        self.disagree: dict[str, int] = {}

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
                self.disagree[name] = self.disagree.get(name, 0) + 1

    def warnings(self) -> list[str]:
        out = []
        if self.filled:
            out.append("filled from DICOM headers (the CSV lacked them): " + ", ".join(
                f"{k} of {n} image(s)" for k, n in sorted(self.filled.items()))
                + "; --ignore-dicom-tags leaves them empty")
        if self.disagree:
            out.append("the CSV and the DICOM headers disagree (the CSV is kept): " + ", ".join(
                f"{k} in {n} image(s)" for k, n in sorted(self.disagree.items())))
        return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(b, float):
        try:
            return abs(float(a) - b) < 1.0       # ages: a CSV in whole years against a DICOM age
        except (TypeError, ValueError):
            return False
    return str(a).strip().upper() == str(b).strip().upper()


def _coco_rows(coco: CocoImport, index: ImageIndex) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Manifest rows for the COCO images when there is no CSV: one subject per image (its DICOM PatientID if any)."""
    rows, missing = [], []
    for fname in sorted(coco.images):
        rel = index.find(fname)
        if rel is None:
            missing.append((fname, f"COCO image not found under {index.root}"))
            continue
        rows.append({"image_id": image_id_for(rel), "subject_id": image_id_for(rel), "file": rel,
                     SUBJECT_FROM: "header-or-image", "label": None})
    return pd.DataFrame(rows), missing


def _coco_by_file(coco: CocoImport, index: ImageIndex) -> dict[str, str]:
    """Relative image path -> COCO file name."""
    out = {}
    for fname in coco.images:
        rel = index.find(fname)
        if rel is not None:
            out[rel] = fname
    return out


def _weights(annotators: list[str], given: dict[str, float]) -> dict[str, float]:
    """beta per annotator of one image: given weights (or equal) normalised to sum to 1."""
    if given:
        lacking = [a for a in annotators if a not in given]
        if lacking:
            raise BenchError(f"no weight given for annotator(s) {', '.join(lacking)}; give every "
                             "annotator a weight (--weight NAME=W) or none for equal weights")
        w = np.array([given[a] for a in annotators], dtype=float)
    else:
        w = np.ones(len(annotators))
    return dict(zip(annotators, (w / w.sum()).tolist()))


def import_dataset(cfg: ImportConfig) -> ImportReport:
    """Build the dataset folder `cfg.out` (see the module docstring for the conventions)."""
    images = Path(cfg.images)
    if not images.is_dir():
        raise BenchError(f"image folder {images} does not exist")
    if cfg.csv is None and not cfg.coco:
        raise BenchError("nothing to import: give a metadata CSV (--csv FILE) and/or COCO "
                         "annotations (--coco FILE.json)")
    if Path(cfg.out).exists() and not cfg.overwrite:
        raise BenchError(f"{cfg.out} already exists; choose another --out or pass --overwrite")
    if any(w <= 0 or not np.isfinite(w) for w in cfg.weights.values()):
        raise BenchError(f"annotator weights must be positive numbers, got {cfg.weights}")
    index = ImageIndex(images)
    coco = load_coco(cfg.coco, load_class_map(cfg.class_map)) if cfg.coco else None
    warnings = list(coco.warnings) if coco else []
    if cfg.csv is not None:
        rows, missing, more = read_metadata(Path(cfg.csv), index, cfg.columns)
        warnings += more
    else:
        rows, missing = _coco_rows(coco, index)
    coco_of = _coco_by_file(coco, index) if coco else {}
    if coco is not None and cfg.csv is not None:
        extra = set(coco_of) - set(rows["file"] if len(rows) else [])
        if extra:
            warnings.append(f"{len(extra)} annotated image(s) are not in the CSV and were left out")
        if len(coco_of) < len(coco.images):
            warnings.append(f"{len(coco.images) - len(coco_of)} COCO image(s) are not in {images}")
    return _write(cfg, index, rows, missing, coco, coco_of, warnings)


def _write(cfg: ImportConfig, index: ImageIndex, rows: pd.DataFrame, missing: list[tuple[str, str]],
           coco: CocoImport | None, coco_of: dict[str, str], warnings: list[str]) -> ImportReport:
    bad: list[tuple[str, str]] = list(missing)
    keep, ann_rows, n_masks = [], [], 0
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
            masks = {}
            if row["file"] in coco_of:
                cimg = coco.images[coco_of[row["file"]]]
                if (cimg.height, cimg.width) != (h, w):
                    bad.append((str(src), f"image is {w}x{h} but the COCO annotations are for "
                                          f"{cimg.width}x{cimg.height}"))
                    continue
                masks = {a: rasterise(s, h, w) for a, s in sorted(cimg.shapes.items())}
            rec = row.to_dict()
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
        unknown = [rec["file"] for rec in keep if rec.get(SUBJECT_FROM) == "header"]
        if unknown:
            raise BenchError(f"the CSV has no subject id column and {len(unknown)} image(s) have no DICOM "
                             f"PatientID to take it from ({', '.join(unknown[:5])}); add a subject column "
                             "(--column subject_id=COLUMN), or --column subject_id= for one subject per image")
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
