"""Manifest fields from a DICOM header, for `bench data import` (the CSV wins where it has a value).

Radiographs exported from a PACS carry what a study CSV often leaves out (DICOM PS3.3, Patient and
General Series/Image modules):

* PatientID → ``subject_id`` (used only when the CSV has no subject column, so images of one
  patient share a subject and never cross splits);
* PatientSex F/M → ``sex`` (O and blanks stay empty);
* PatientAge ``nnnD|W|M|Y`` → ``age`` in years; without it, whole years from PatientBirthDate to
  the first of StudyDate, SeriesDate, AcquisitionDate, ContentDate;
* ImageLaterality, else Laterality, L/R → ``laterality`` (B and U stay empty here; the import refuses B, both hands on one image)
* InstitutionName → ``site``.

De-identified exports often blank or scramble these tags; ``bench data import --ignore-dicom-tags``
then leaves every field to the CSV.
"""
from __future__ import annotations

import re
from datetime import date
from typing import Any, Mapping

#: DICOM keywords read into :attr:`bench.data.imageio.Radiograph.header`.
HEADER_KEYWORDS: tuple[str, ...] = (
    "PatientID", "PatientSex", "PatientAge", "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate",
    "ContentDate", "ImageLaterality", "Laterality", "InstitutionName",
)
_AGE_UNITS = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}   # units per year
_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def read_header(ds: Any) -> dict[str, str]:
    """The non-empty :data:`HEADER_KEYWORDS` of a pydicom dataset, as stripped strings."""
    out = {}
    for key in HEADER_KEYWORDS:
        value = ds.get(key)
        text = "" if value is None else str(value).strip()
        if text:
            out[key] = text
    return out


def dicom_age(text: str) -> float | None:
    """Years of a DICOM age string (AS: ``065Y``, ``018M``, ``003W``, ``010D``); None if not one."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*([DWMY])\s*", text or "", flags=re.IGNORECASE)
    return int(m.group(1)) / _AGE_UNITS[m.group(2).upper()] if m else None


def _date(text: str) -> date | None:
    m = re.fullmatch(r"(\d{4})(\d{2})(\d{2})", (text or "").strip())
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def age_from_dates(header: Mapping[str, str]) -> float | None:
    """Whole years from PatientBirthDate to the first acquisition date present (module docstring)."""
    born = _date(header.get("PatientBirthDate", ""))
    seen = next((d for d in (_date(header.get(k, "")) for k in _DATES) if d is not None), None)
    if born is None or seen is None or seen < born:
        return None
    return float(seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day)))


def header_fields(header: Mapping[str, str]) -> dict[str, Any]:
    """Manifest fields (subject_id, sex, age, laterality, site) the header states; absent ones left out."""
    out: dict[str, Any] = {}
    if header.get("PatientID"):
        out["subject_id"] = header["PatientID"]
    sex = header.get("PatientSex", "").strip().upper()
    if sex in ("F", "M"):
        out["sex"] = sex
    age = dicom_age(header.get("PatientAge", ""))
    age = age if age is not None else age_from_dates(header)
    if age is not None and 0 <= age <= 130:
        out["age"] = float(age)
    side = (header.get("ImageLaterality") or header.get("Laterality") or "").strip().upper()
    if side in ("L", "R"):
        out["laterality"] = side
    if header.get("InstitutionName"):
        out["site"] = header["InstitutionName"]
    return out
