"""The metadata CSV of `bench data import`: columns -> manifest fields, image references -> files.

Conventions (bench.data.importers uses them):
- The CSV names each image by file name (relative to the image folder, or just the base name)
  or by image id (the file name without its image extension). The image id is the file's path
  under the folder without that extension, '/' replaced by '_'. A reference naming no file
  exactly matches a file whose name differs only in case, when exactly one does (several: error).
  Two files giving one image id ('a/x.png' and 'a_x.png') are an error naming both.
- The delimiter is detected among ',', ';' and tab (Excel writes ';' where the decimal mark is a
  comma); with ';' or tab, numbers may use a decimal comma (-2,7). UTF-8, or UTF-16/32 with a
  byte-order mark (Excel's 'Unicode Text'); other encodings are refused with advice to save as UTF-8.
  Rows of empty cells only (an Excel trailer ',,,,') are skipped.
  A number may start with a Unicode minus sign or an en dash (−2.7, –2.7), as word processors write it.
- CSV columns are found by common names (case and punctuation ignored, e.g. "T-score" is
  t_score, "PatientID" is subject_id); `overrides` replaces them (field -> column, None: absent).
  Other columns are kept as extra manifest columns; one named like a manifest column the import
  fills itself (path, split, ...) is kept as csv_<name>, with a warning.
- label = 1 when t_score < -2.5 (paper: osteoporosis by DXA T-score), derived when only the
  T-score is given; a given label that contradicts the T-score is an error (T = -2.5 excepted).
  A subject whose images have different labels is warned about (:func:`label_conflicts`; the
  importer checks again once subject ids are filled from DICOM headers).
  sex is stored as F/M, laterality as L/R: U (unpaired/unknown) is left empty, as in a DICOM
  header; B (both hands on one image) is an error, since one hand's bones cannot be cut from it.
"""
from __future__ import annotations

import codecs
import csv as csvlib
import io
import re
from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np
import pandas as pd

from bench.data.format import MANIFEST_COLUMNS
from bench.errors import BenchError

OSTEOPOROSIS_T = -2.5  # the paper: osteoporosis when the DXA T-score "falls below -2.5" (WHO: at or below)
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
_SIDE = {"l": "L", "left": "L", "lt": "L", "r": "R", "right": "R", "rt": "R", "u": "", "unpaired": ""}
_BOTH = ("b", "both", "bilateral")
BOTH_HANDS = ("both hands on one image, which cannot be cut into one hand's bones; save each hand as its "
              "own file (laterality L and R) or leave the image out")

DELIMITERS = ",;\t"  # CSV delimiters recognised


class Metadata(NamedTuple):
    """What :func:`read_metadata` found."""

    rows: pd.DataFrame                  # manifest rows (with `file`, relative to the image folder)
    missing: list[tuple[str, str]]      # (reference, reason) of files not found
    warnings: list[str]
    columns: dict[str, str | None]      # field -> CSV column (None: not found)
    extra: dict[str, str]               # other CSV column -> its manifest column


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def resolve_columns(csv_columns: list[str], overrides: dict[str, str | None]) -> dict[str, str | None]:
    """Field -> CSV column: the override, else the first alias present, else None."""
    unknown = [f for f in overrides if f not in COLUMN_ALIASES]
    if unknown:
        raise BenchError(f"unknown field(s) {unknown} in the column mapping; fields are "
                         f"{', '.join(COLUMN_ALIASES)}")
    by_key: dict[str, str] = {}
    for c in csv_columns:
        by_key.setdefault(_key(c), c)
    for c in csv_columns:       # then without a unit or note in brackets: "Age (y)", "T-score [L1-L4]"
        by_key.setdefault(_key(re.sub(r"[(\[{][^)\]}]*[)\]}]", "", str(c))), c)
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
    """Files under the image folder, looked up by relative path, base name or image id; exactly,
    else ignoring case when that finds a single file (CSVs often differ from the files in case)."""

    def __init__(self, root: Path):
        self.root = root
        files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(root).parts))
        self.lookup: dict[str, list[str]] = {}
        self.folded: dict[str, list[str]] = {}     # the same keys, case folded
        for p in files:
            rel = p.relative_to(root).as_posix()
            for k in {rel, p.name, image_id_for(rel), image_id_for(p.name)}:
                self.lookup.setdefault(k, []).append(rel)
                self.folded.setdefault(k.casefold(), []).append(rel)

    @staticmethod
    def _hits(table: dict[str, list[str]], keys: list[str]) -> list[str]:
        """Files of the first key (relative path, stripped path, base name) that names any."""
        return sorted(set(next((table[k] for k in keys if table.get(k)), [])))

    def find(self, ref: str) -> str | None:
        """Relative path for a CSV/COCO reference; BenchError when ambiguous."""
        ref = ref.strip().replace("\\", "/")
        keys = [ref, ref.lstrip("./"), Path(ref).name]
        hits = self._hits(self.lookup, keys)
        if len(hits) > 1:
            raise BenchError(f"image reference {ref!r} matches several files ({', '.join(hits)}); "
                             "name the file with its path under the image folder")
        if not hits:
            hits = self._hits(self.folded, [k.casefold() for k in keys])
            if len(hits) > 1:
                raise BenchError(f"image reference {ref!r} matches no file exactly and several when case is "
                                 f"ignored ({', '.join(hits)}); name the file with its exact case")
        return hits[0] if hits else None



_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
SAVE_AS_UTF8 = ("save it as UTF-8 (Excel: File > Save As > 'CSV UTF-8 (Comma delimited)'; LibreOffice: "
                "Save As > Text CSV, character set Unicode (UTF-8))")


def read_csv_text(csv: Path) -> str:
    """The CSV's text: UTF-8, or any encoding its byte-order mark names (UTF-8, UTF-16, UTF-32);
    BenchError advising UTF-8 for anything else (latin-1, UTF-16 without a mark)."""
    try:
        data = Path(csv).read_bytes()
    except OSError as exc:
        raise BenchError(f"cannot read metadata CSV {csv}: {exc}") from exc
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    if encoding == "utf-8" and b"\x00" in data:
        raise BenchError(f"metadata CSV {csv} holds NUL bytes: likely UTF-16 text without a byte-order mark "
                         f"(Excel's 'Unicode Text'); {SAVE_AS_UTF8}")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise BenchError(f"metadata CSV {csv} is not {encoding.upper().replace('-SIG', '')} text (byte "
                         f"0x{data[exc.start]:02x} at offset {exc.start}; perhaps latin-1 or another legacy "
                         f"encoding); {SAVE_AS_UTF8}") from exc
    return text.lstrip("\ufeff")


def sniff_delimiter(text: str) -> str:
    """The delimiter (',', ';' or tab) of a CSV's first lines (`text`: its content); ',' when they do not tell."""
    sample = text[:65536]
    if "\n" in sample.rstrip("\r\n"):
        sample = sample[: sample.rstrip("\r\n").rfind("\n") + 1] or sample   # whole lines only
    header = sample.splitlines()[0] if sample else ""
    try:
        found = csvlib.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csvlib.Error:
        found = ""
    if found and found in header:
        return found
    counts = {d: header.count(d) for d in DELIMITERS}   # the header row separates its names too
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _parse(value: str, table: dict, what: str, errors: list[str], where: str):
    v = value.strip().lower()
    if v in MISSING:
        return None
    if v in table:
        return table[v]
    errors.append(f"{where}: {what} {value!r} is not one of {', '.join(sorted(set(map(str, table))))}")
    return None


def _ascii_minus(v: str) -> str:
    """A leading Unicode minus sign (U+2212) or en dash (U+2013) before a digit as '-'."""
    return "-" + v[1:] if re.match(r"[\u2212\u2013][\d.,]", v) else v


def _laterality(value: str, errors: list[str], where: str) -> str:
    """L, R or '' (unknown, U); B (both hands) is an error."""
    if value.strip().lower() in _BOTH:
        errors.append(f"{where}: laterality {value!r} means {BOTH_HANDS}")
        return ""
    return _parse(value, _SIDE, "laterality", errors, where) or ""


def _number(value: str, what: str, errors: list[str], where: str, lo: float, hi: float,
            decimal_comma: bool = False) -> float:
    v = value.strip()
    if v.lower() in MISSING:
        return np.nan
    v = _ascii_minus(v)
    if decimal_comma and re.fullmatch(r"[+-]?\d*,\d+", v):
        v = v.replace(",", ".")
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


def _extra_columns(csv_columns: list[str], cols: dict[str, str | None], csv: Path
                   ) -> tuple[dict[str, str], list[str]]:
    """CSV columns not mapped to a field -> their manifest names, and warnings for renamed ones."""
    used = set(cols.values())
    reserved = set(MANIFEST_COLUMNS) | {"file", SUBJECT_FROM}
    names = set(csv_columns) | reserved
    extra: dict[str, str] = {}
    warnings: list[str] = []
    for c in csv_columns:
        if c in used:
            continue
        name = c
        if c in reserved:
            name = f"csv_{c}"
            while name in names:
                name = f"csv_{name}"
            names.add(name)
            how = (f"copy {name} into split in manifest.csv and run `bench data check` (it refuses a "
                   "subject in two splits)" if c == "split" else
                   f"map it with --column {c}={c}" if c in COLUMN_ALIASES else "")
            what = ("the dataset's split is assigned subject-wise by --split-seed; no import option "
                    "uses yours" if c == "split" else f"the import fills the manifest's {c} itself"
                    if c in MANIFEST_COLUMNS else "the import uses this name itself")
            warnings.append(f"{csv.name}: column {c!r} is kept as {name!r} ({what})"
                            + (f"; to use it, {how}" if how else ""))
        elif _key(c) in ("split", "subset", "partition"):
            warnings.append(f"{csv.name}: column {c!r} is kept as an extra column, not used as the split "
                            "(assigned subject-wise by --split-seed; no import option uses yours); to use "
                            f"it, copy it into split in manifest.csv and run `bench data check`")
        extra[c] = name
    return extra, warnings


def describe_columns(meta: Metadata) -> str:
    """One line: which CSV column became which field, what was not found, what is kept."""
    found = [f"{f} <- {c!r}" for f, c in meta.columns.items() if c]
    absent = [f for f, c in meta.columns.items() if not c]
    kept = [c if n == c else f"{c!r} as {n!r}" for c, n in meta.extra.items()]
    return ("CSV columns: " + ", ".join(found) + ("; not found: " + ", ".join(absent) if absent else "")
            + ("; kept as extra columns: " + ", ".join(map(str, kept)) if kept else ""))


def read_metadata(csv: Path, index: ImageIndex, overrides: dict[str, str | None]) -> Metadata:
    """Parse the CSV into manifest rows (with `file`, relative to the image folder).

    Value errors in every row are collected into one BenchError.
    """
    text = read_csv_text(csv)
    delimiter = sniff_delimiter(text)
    try:
        raw = pd.read_csv(io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False,
                          skipinitialspace=True)
    except (ValueError, pd.errors.ParserError) as exc:
        raise BenchError(f"cannot read metadata CSV {csv}: {exc}") from exc
    if len(raw.columns):   # rows of delimiters only (an Excel trailer ',,,,') are no rows
        raw = raw[~raw.apply(lambda col: col.str.strip() == "").all(axis=1)]
    cols = resolve_columns(list(raw.columns), overrides)
    extra, warnings = _extra_columns(list(raw.columns), cols, csv)
    if not cols["label"] and not cols["t_score"] and not ({"label", "t_score"} & set(overrides)):
        others = [c for c in extra] or ["none"]
        warnings.append(f"{csv.name} has no label or T-score column (looked for "
                        f"{', '.join(COLUMN_ALIASES['t_score'] + COLUMN_ALIASES['label'])}, case and "
                        f"punctuation ignored); the dataset has no labels. Unmatched columns: "
                        f"{', '.join(map(repr, others))}; map one with --column t_score=COLUMN or "
                        "--column label=COLUMN (fine as it is for a segmentation-only dataset)")
    subject_from = "csv" if cols["subject_id"] else "image" if "subject_id" in overrides else "header"
    if subject_from == "image":
        warnings.append("no subject column: every image is its own subject")
    comma = delimiter != ","
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
        t = _number(get("t_score"), "t_score", errors, where, -10, 10, comma)
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
            **{name: rec[c] for c, name in extra.items()},
            "image_id": image_id_for(rel), "subject_id": subject, "file": rel, SUBJECT_FROM: subject_from,
            "sex": _parse(get("sex"), _SEX, "sex", errors, where) or "",
            "age": _number(get("age"), "age", errors, where, 0, 130, comma), "t_score": t,
            "label": label, "laterality": _laterality(get("laterality"), errors, where),
            "pixel_spacing_mm": _number(get("pixel_spacing_mm"), "pixel_spacing_mm", errors, where, 1e-4, 10, comma),
            "site": get("site").strip(),
        })
    if errors:
        raise BenchError(f"{len(errors)} problem(s) in {csv}:\n  " + "\n  ".join(errors))
    df = pd.DataFrame(rows)
    if not df.empty:
        check_image_ids(df["file"].unique())
        dup = df.loc[df["image_id"].duplicated(keep=False), "image_id"].unique()
        if len(dup):
            raise BenchError(f"{csv} lists image(s) {', '.join(map(str, dup))} more than once; "
                             "one row per image")
        warnings += label_conflicts(df)
        n = df[df["sex"].astype(str) != ""].groupby("subject_id")["sex"].nunique(dropna=True)
        if (n > 1).any():
            warnings.append(f"subject(s) {', '.join(n[n > 1].index[:10])} have different sexes "
                            "across their images")
    return Metadata(df, missing, warnings, cols, extra)


def check_image_ids(files: Iterable[str]) -> None:
    """BenchError when different files (relative paths) give one image id (:func:`image_id_for`),
    e.g. 'a/x.png' and 'a_x.png', or 'y.png' and 'y.dcm'."""
    by_id: dict[str, list[str]] = {}
    for rel in files:
        by_id.setdefault(image_id_for(rel), []).append(rel)
    clashes = [f"{', '.join(sorted(set(fs)))} -> {iid!r}" for iid, fs in sorted(by_id.items()) if len(set(fs)) > 1]
    if clashes:
        raise BenchError(f"different files give the same image id (the path under the image folder without "
                         f"its extension, '/' as '_'): {'; '.join(clashes[:5])}"
                         f"{f' and {len(clashes) - 5} more' if len(clashes) > 5 else ''}; rename or move "
                         "one file of each, or leave one out")


def label_conflicts(rows: pd.DataFrame) -> list[str]:
    """A warning naming the subjects whose images have different labels (none: [])."""
    known = rows[rows["label"].notna() & (rows["label"].astype(str) != "")]
    n = known.groupby("subject_id")["label"].nunique()
    bad = [str(sid) for sid in n.index[n > 1]]
    if not bad:
        return []
    return [f"subject(s) {', '.join(bad[:10])}{' and more' if len(bad) > 10 else ''} have images with "
            "different labels, but a subject has one DXA label: runs refuse this and `bench data check` "
            "reports it as an error; fix the labels, or the subject ids if those images are of different people"]
