"""`bench data check`: validate a dataset folder against the contract of bench.data.format.

Every problem is collected (nothing stops at the first one). Severity "error" breaks the
contract (the dataset cannot be used as is); "warning" is suspicious but usable (ages outside
10-110, sexes differing across one subject's images, masks that annotators.csv does not list).
Values: sex F/M (female/male accepted), laterality L/R, label 0/1 = t_score < -2.5 (a T-score of
exactly -2.5 fits either label), one label per subject, split train/val/test, no subject in two
splits (or folds).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bench.data.format import ANNOTATOR_COLUMNS, MANIFEST_COLUMNS, NUM_CLASSES, SPLITS, mask_path
from bench.data.imageio import read_image, read_label_map
from bench.errors import BenchError

OSTEOPOROSIS_T = -2.5
WEIGHT_TOL = 1e-4  # |sum of beta - 1| allowed per image
_MISSING = {"", "nan", "na", "n/a", "none", "null"}
_SEX = {"f", "m", "female", "male"}


@dataclass(frozen=True)
class Problem:
    file: str       # the file at fault, relative to the dataset folder where it lies inside
    message: str    # what is wrong (and how to fix it)
    severity: str   # "error" | "warning"

    def __str__(self) -> str:
        return f"{self.severity}: {self.file}: {self.message}"


class _Collector(list):
    def error(self, file: str, message: str) -> None:
        self.append(Problem(file, message, "error"))

    def warn(self, file: str, message: str) -> None:
        self.append(Problem(file, message, "warning"))


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _rows(values: pd.Series, limit: int = 8) -> str:
    """'rows 2, 5, 9' (CSV line numbers, header = 1) for a boolean mask."""
    lines = [str(i + 2) for i in np.flatnonzero(values.to_numpy())]
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return ("row " if len(lines) == 1 else "rows ") + ", ".join(lines[:limit]) + more


def _blank(s: pd.Series) -> pd.Series:
    return s.str.strip().str.lower().isin(_MISSING)


def _numeric(p: _Collector, df: pd.DataFrame, col: str, lo: float, hi: float,
             soft: tuple[float, float] | None = None) -> pd.Series:
    """Parse a column as numbers; non-numbers and values outside [lo, hi] are errors."""
    blank = _blank(df[col])
    num = pd.to_numeric(df[col].where(~blank), errors="coerce")
    bad = ~blank & num.isna()
    if bad.any():
        p.error("manifest.csv", f"{col} is not a number in {_rows(bad)} "
                                f"(e.g. {df.loc[bad, col].iloc[0]!r}); leave it empty where unknown")
    out = num.notna() & ((num < lo) | (num > hi))
    if out.any():
        p.error("manifest.csv", f"{col} outside {lo:g}..{hi:g} in {_rows(out)}")
    if soft is not None:
        odd = num.notna() & ~out & ((num < soft[0]) | (num > soft[1]))
        if odd.any():
            p.warn("manifest.csv", f"unusual {col} (outside {soft[0]:g}..{soft[1]:g}) in {_rows(odd)}")
    return num.where(~out)


def _check_manifest(root: Path, p: _Collector) -> tuple[pd.DataFrame | None, dict[str, tuple[int, int]]]:
    """Manifest values and image files; returns the manifest and image shapes by image id."""
    try:
        df = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        p.error("manifest.csv", f"cannot be read as CSV: {exc}")
        return None, {}
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        p.error("manifest.csv", f"missing column(s) {', '.join(missing)} (required: "
                                f"{', '.join(MANIFEST_COLUMNS)}; leave values empty where unknown)")
    for col in missing:
        df[col] = ""
    if df.empty:
        p.error("manifest.csv", "has no rows")
    ids = df["image_id"].str.strip()
    if (ids == "").any():
        p.error("manifest.csv", f"empty image_id in {_rows(ids == '')}")
    for dup in sorted(ids[ids.duplicated() & (ids != "")].unique()):
        p.error("manifest.csv", f"duplicate image_id {dup!r} in {_rows(ids == dup)}")
    unsafe = ids.str.contains(r"[/\\]|^\.\.?$", regex=True)
    if unsafe.any():
        p.error("manifest.csv", f"image_id with a path separator in {_rows(unsafe)}")
    if "subject_id" not in missing and (df["subject_id"].str.strip() == "").any():
        p.error("manifest.csv", f"empty subject_id in {_rows(df['subject_id'].str.strip() == '')}")
    _check_values(df, p, check_split="split" not in missing, has_subjects="subject_id" not in missing)
    shapes: dict[str, tuple[int, int]] = {}
    if "path" not in missing:
        for i, (iid, path) in enumerate(zip(ids, df["path"].str.strip())):
            if not path:
                p.error("manifest.csv", f"empty path in row {i + 2} (image {iid!r})")
                continue
            full = Path(path) if Path(path).is_absolute() else root / path
            if not full.is_file():
                p.error(_rel(root, full), f"image file of {iid!r} (manifest row {i + 2}) does not exist")
                continue
            try:
                shapes[iid] = read_image(full).pixels.shape
            except BenchError as exc:
                p.error(_rel(root, full), f"unreadable image of {iid!r}: {exc}")
    return df, shapes


def _check_values(df: pd.DataFrame, p: _Collector, check_split: bool, has_subjects: bool) -> None:
    """Per-column value rules; subject-level rules only when subject_id exists."""
    _numeric(p, df, "age", 0, 130, soft=(10, 110))
    _numeric(p, df, "pixel_spacing_mm", 1e-6, 10, soft=(0.01, 1.0))
    t = _numeric(p, df, "t_score", -10, 10)
    blank = _blank(df["label"])
    label = pd.to_numeric(df["label"].where(~blank), errors="coerce")
    bad = ~blank & ~label.isin([0, 1])
    if bad.any():
        p.error("manifest.csv", f"label must be 0, 1 or empty; {_rows(bad)} "
                                f"(e.g. {df.loc[bad, 'label'].iloc[0]!r})")
    clash = label.isin([0, 1]) & t.notna() & (t != OSTEOPOROSIS_T) & (label != (t < OSTEOPOROSIS_T))
    if clash.any():
        p.error("manifest.csv", f"label inconsistent with t_score (label = t_score < "
                                f"{OSTEOPOROSIS_T}) in {_rows(clash)}")
    sex = df["sex"].str.strip().str.lower()
    bad = ~_blank(df["sex"]) & ~sex.isin(_SEX)
    if bad.any():
        p.error("manifest.csv", f"sex must be F, M or empty; {_rows(bad)}")
    side = df["laterality"].str.strip().str.upper()
    bad = ~_blank(df["laterality"]) & ~side.isin(["L", "R"])
    if bad.any():
        p.error("manifest.csv", f"laterality must be L, R or empty; {_rows(bad)}")
    if not has_subjects:
        return
    subjects = df["subject_id"].str.strip()
    known = sex.str[:1].where(sex.isin(_SEX))
    n_sex = known.groupby(subjects).nunique()
    for sid in n_sex.index[n_sex > 1]:
        p.warn("manifest.csv", f"subject {sid!r} has different sexes across its images")
    n_label = label.where(label.isin([0, 1])).groupby(subjects).nunique()
    for sid in n_label.index[n_label > 1]:
        p.error("manifest.csv", f"subject {sid!r} has images with different labels in "
                                f"{_rows(subjects == sid)}; a subject has one DXA label (runs refuse this): "
                                "fix the labels, or the subject ids if those images are of different people")
    if check_split:
        split = df["split"].str.strip()
        bad = ~split.isin(SPLITS)
        if bad.any():
            p.error("manifest.csv", f"split must be one of {', '.join(SPLITS)}; {_rows(bad)} "
                                    "(assign splits with `bench data split DIR`)")
        _crossing(df, subjects, split.where(~bad), "split", p)
    if "fold" in df.columns:
        fold = pd.to_numeric(df["fold"].where(~_blank(df["fold"])), errors="coerce")
        bad = fold.isna() | (fold < 0) | (fold != fold.round())
        if bad.any():
            p.error("manifest.csv", f"fold must be a non-negative integer; {_rows(bad)}")
        _crossing(df, subjects, fold.where(~bad), "fold", p)


def _crossing(df: pd.DataFrame, subjects: pd.Series, value: pd.Series, what: str, p: _Collector) -> None:
    n = value.groupby(subjects).nunique()
    for sid in n.index[n > 1]:
        found = sorted(value[subjects == sid].dropna().astype(str).unique())
        p.error("manifest.csv", f"subject {sid!r} crosses {what}s ({', '.join(found)}): all images "
                                f"of a subject must be in one {what} (`bench data split DIR` fixes it)")


def _check_annotations(root: Path, ids: set[str], shapes: dict[str, tuple[int, int]], p: _Collector) -> None:
    apath = root / "annotators.csv"
    on_disk = {(d.name, f.stem) for d in (root / "masks").glob("*") if d.is_dir() for f in d.glob("*.png")}
    if not apath.is_file():
        if on_disk:
            p.error("annotators.csv", f"missing, but masks/ holds {len(on_disk)} label map(s); list them "
                                      f"with columns {', '.join(ANNOTATOR_COLUMNS)}")
        return
    try:
        ann = pd.read_csv(apath, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        p.error("annotators.csv", f"cannot be read as CSV: {exc}")
        return
    lacking = [c for c in ANNOTATOR_COLUMNS if c not in ann.columns]
    if lacking:
        p.error("annotators.csv", f"missing column(s) {', '.join(lacking)}")
        return
    ann["image_id"], ann["annotator"] = ann["image_id"].str.strip(), ann["annotator"].str.strip()
    stray = ~ann["image_id"].isin(ids)
    if stray.any():
        p.error("annotators.csv", f"image_id(s) not in manifest.csv: "
                                  f"{', '.join(sorted(ann.loc[stray, 'image_id'].unique())[:10])} ({_rows(stray)})")
    dup = ann.duplicated(["image_id", "annotator"], keep=False)
    if dup.any():
        p.error("annotators.csv", f"the same (image_id, annotator) is listed twice in {_rows(dup)}")
    weight = pd.to_numeric(ann["weight"], errors="coerce")
    bad = weight.isna() | (weight < 0)
    if bad.any():
        p.error("annotators.csv", f"weight must be a non-negative number in {_rows(bad)}")
    sums = weight.where(~bad).groupby(ann["image_id"]).sum()
    for iid, total in sums[(sums - 1).abs() > WEIGHT_TOL].items():
        p.error("annotators.csv", f"weights of image {iid!r} sum to {total:.6g}, not 1")
    listed = set(zip(ann["image_id"], ann["annotator"]))
    for iid, annotator in sorted(listed):
        mpath = mask_path(root, iid, annotator)
        if not mpath.is_file():
            p.error(_rel(root, mpath), f"label map of annotator {annotator!r} for {iid!r} does not exist")
            continue
        try:
            labels = read_label_map(mpath)
        except BenchError as exc:
            p.error(_rel(root, mpath), str(exc))
            continue
        if iid in shapes and labels.shape != shapes[iid]:
            p.error(_rel(root, mpath), f"shape {labels.shape} differs from its image {shapes[iid]}")
        top = int(labels.max()) if labels.size else 0
        if top >= NUM_CLASSES:
            p.error(_rel(root, mpath), f"class id {top} > {NUM_CLASSES - 1} (ids: 0 background, "
                                       "1 ulna, 2 radius, 3-7 M1-M5)")
    for iid, annotator in sorted(on_disk - listed):
        p.warn(_rel(root, mask_path(root, iid, annotator)), "label map not listed in annotators.csv")


def check_dataset(root: str | Path) -> list[Problem]:
    """Every problem of the dataset folder `root` (empty list: it meets the contract)."""
    root = Path(root)
    p = _Collector()
    if not root.is_dir():
        p.error(str(root), "dataset folder does not exist")
        return list(p)
    if not (root / "manifest.csv").is_file():
        p.error("manifest.csv", "missing: not a dataset folder (create one with `bench data synth` "
                                "or `bench data import`)")
        return list(p)
    jpath = root / "dataset.json"
    if jpath.is_file():
        try:
            json.loads(jpath.read_text())
        except ValueError as exc:
            p.error("dataset.json", f"not valid JSON: {exc}")
    df, shapes = _check_manifest(root, p)
    ids = set(df["image_id"].str.strip()) if df is not None else set()
    _check_annotations(root, ids, shapes, p)
    return list(p)
