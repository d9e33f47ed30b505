"""Screening a batch of image files with a predictor (issue 10): inputs, batches, progress, outputs.

The engine part of `bench predict`; it knows no model. A predictor (a loaded
:class:`methods.bundle.Bundle`) has ``predict(radiographs, names, batch_size=...)`` returning, per
image, an object with ``row()`` (flat dict), ``record()`` (nested dict) and ``overlay_png()``
(bytes), and ``describe()`` (a dict for predictions.json).

Inputs: files and folders (searched recursively, hidden entries and the output folder skipped,
sorted); every file of a folder is tried, since DICOM files often have no extension. A missing path, an empty folder, an
unreadable or non-image file is reported (stderr, the ``skipped`` list of predictions.json and a
``skipped`` row of predictions.csv) and the others go on.

Outputs in the folder `out`, written together into a temporary sibling folder that replaces `out` when
every image is done (an interrupted run leaves the earlier outputs as they were, never a mix); `out`
must be new, empty or an earlier output of `bench predict` (nothing else in it is ever deleted). The
images screened so far are kept in a journal beside `out` (bench.predict_journal): rerunning an
interrupted command screens only the rest.

    predictions.csv     one row per input: file, name, overlay, error, then the predictor's row, and
                        seen / seen_as: "fit" (or "held_out") when the pixels are those of an image
                        the bundle's models were fitted (or tested) on (bench.external.seen_as)
    predictions.json    {"model": ..., "images": [record + file + overlay], "skipped": [{file, error}]}
    overlays/<name>.png one per processed image

``name`` is the file's stem, suffixed with a short hash of its path when two inputs share a stem.
``laterality`` (L/R) stands for the side of every file that states none, as a DICOM ImageLaterality
tag would (the predictor decides what to do with it: methods.segmentation.predict).
JSON: NaN is written as null.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from bench.atomic import atomic_dir, atomic_write_text, writable
from bench.data.imageio import Radiograph, read_image
from bench.errors import BenchError
from bench.executors.locking import file_lock
from bench.predict_journal import Journal, journal_key


@dataclass
class Skipped:
    file: str
    error: str


@dataclass
class Report:
    """What :func:`run_predictions` did."""

    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)      # processed images (CSV rows)
    records: list[dict[str, Any]] = field(default_factory=list)   # processed images (JSON records)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return len(self.rows)


def collect_inputs(paths: Sequence[str | Path]) -> tuple[list[Path], list[Skipped]]:
    """Files named or found under folders (module docstring), and the paths that gave none."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                skipped.append(Skipped(str(path), "the folder holds no files"))
            files += found
        else:
            skipped.append(Skipped(str(path), "no such file or folder"))
    first: dict[Path, Path] = {}
    for f in files:
        first.setdefault(f.resolve(), f)
    if len(first) < len(files):
        warnings.warn(f"{len(files) - len(first)} input(s) name a file already given (directly or in a folder); "
                      "each file is screened once")
    return list(first.values()), skipped


def unique_names(files: Sequence[Path]) -> list[str]:
    """File stems, made unique with a short hash of the path where stems repeat."""
    stems = [f.stem or f.name for f in files]
    counts = pd.Series(stems).value_counts()
    return [s if counts[s] == 1 else f"{s}-{hashlib.sha1(str(f.resolve()).encode()).hexdigest()[:8]}"
            for s, f in zip(stems, files)]


def read_inputs(files: Sequence[Path], pixel_spacing_mm: float | None,
                laterality: str | None = None) -> list[Radiograph | Skipped]:
    """Read each file (bench.data.imageio); the spacing and the laterality (L/R, as the DICOM tag
    ImageLaterality) fill in where the file states none."""
    from bench.data.dicom_fields import header_fields

    out: list[Radiograph | Skipped] = []
    for f in files:
        try:
            rad = read_image(f)
        except BenchError as exc:
            out.append(Skipped(str(f), str(exc)))
            continue
        except OSError as exc:
            out.append(Skipped(str(f), f"cannot read {f}: {exc}"))
            continue
        if rad.pixel_spacing_mm is None and pixel_spacing_mm is not None:
            rad.pixel_spacing_mm = float(pixel_spacing_mm)
        if laterality and "laterality" not in header_fields(rad.header):
            rad.header["ImageLaterality"] = laterality
        out.append(rad)
    return out


def _predict(predictor: Any, rads: list[Radiograph], names: list[str], batch_size: int) -> list[Any]:
    """Predict a batch; when it fails, image by image so that one bad image skips only itself."""
    try:
        return predictor.predict(rads, names, batch_size=batch_size)
    except (BenchError, RuntimeError, ValueError) as exc:
        if len(rads) == 1:
            return [exc]
    out: list[Any] = []
    for rad, name in zip(rads, names):
        try:
            out += predictor.predict([rad], [name], batch_size=1)
        except (BenchError, RuntimeError, ValueError) as exc:
            out.append(exc)
    return out


def check_options(batch_size: int = 8, pixel_spacing_mm: float | None = None,
                  laterality: str | None = None) -> None:
    """BenchError for a batch size below 1, a non-positive pixel spacing or a side other than L/R."""
    if batch_size < 1:
        raise BenchError(f"--batch-size must be >= 1, got {batch_size}")
    if pixel_spacing_mm is not None and not (math.isfinite(pixel_spacing_mm) and pixel_spacing_mm > 0):
        raise BenchError(f"--pixel-spacing must be a positive number of millimetres per pixel (e.g. 0.1), "
                         f"got {pixel_spacing_mm:g}")
    if laterality not in (None, "L", "R"):
        raise BenchError(f"--laterality must be L or R, got {laterality!r}")


def run_predictions(predictor: Any, inputs: Sequence[str | Path], out_dir: str | Path, *, batch_size: int = 8,
                    overlays: bool = True, pixel_spacing_mm: float | None = None,
                    progress: bool | None = None, laterality: str | None = None) -> Report:
    """Screen every image under `inputs` and write the outputs into `out_dir` (module docstring)."""
    check_options(batch_size, pixel_spacing_mm, laterality)
    out_dir = Path(out_dir)
    check_out(out_dir)
    files, skipped = collect_inputs(inputs)
    own = out_dir.resolve()
    files = [f for f in files if own not in f.resolve().parents]   # never screen our own overlays on a rerun
    names = unique_names(files)
    options = {"screening": screening_options(predictor), "pixel_spacing_mm": pixel_spacing_mm,
               "laterality": laterality, "batch_size": batch_size}
    journal = Journal(out_dir, journal_key(predictor, options))
    writable(journal.root, lambda: None, out_dir)       # a BenchError naming the folder, not an OSError
    with file_lock(journal.lock, waiting=f"screening into {out_dir}"):
        journal.open()
        report = _screen(predictor, files, names, skipped, journal, batch_size, overlays, pixel_spacing_mm,
                         progress, laterality)
        with atomic_dir(out_dir, overwrite=True) as tmp:
            for row in report.rows:
                if row["overlay"]:
                    journal.link_overlay(row["name"], tmp / row["overlay"])
            report.out_dir = tmp
            write_outputs(report, predictor.describe() if hasattr(predictor, "describe") else {}, options)
        journal.remove()
    report.out_dir = out_dir
    return report


def screening_options(predictor: Any) -> dict[str, Any] | None:
    """The screening thresholds the predictor applies (its own, else its bundle's), for the record."""
    screening = getattr(predictor, "screen", None)
    if screening is None and isinstance(getattr(predictor, "meta", None), dict):
        from methods.screen import ScreenConfig

        screening = ScreenConfig.from_dict(predictor.meta.get("screening", {}))     # the bundle's own
    return screening.to_dict() if hasattr(screening, "to_dict") else None


def check_out(out_dir: Path) -> None:
    """BenchError unless `out_dir` is new, empty or holds an earlier output of `bench predict` alone."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise BenchError(f"--out {out_dir} is a file; give a folder for the predictions")
    names = {p.name for p in out_dir.iterdir()}
    if names and (names - {"predictions.csv", "predictions.json", "overlays"} or "predictions.json" not in names):
        raise BenchError(f"--out {out_dir} already holds other files (not an earlier `bench predict` output); "
                         "choose a new or empty folder")


def _screen(predictor: Any, files: list[Path], names: list[str], skipped: Sequence["Skipped"], journal: Journal,
            batch_size: int, overlays: bool, pixel_spacing_mm: float | None, progress: bool | None,
            laterality: str | None) -> Report:
    """Screen `files` in batches into the journal (images it holds already are taken from it)."""
    from tqdm.auto import tqdm

    from bench.data.digests import pixel_digest
    from bench.external import seen_as

    meta = getattr(predictor, "meta", None)
    training = meta.get("training_images") if isinstance(meta, dict) else None
    report = Report(journal.root, skipped=list(skipped))
    results: dict[int, tuple[dict, dict] | Skipped] = {}
    for i, (f, name) in enumerate(zip(files, names)):
        done = journal.lookup(f, name, overlays)
        if done is not None:
            results[i] = done
    todo = [i for i in range(len(files)) if i not in results]
    if results:
        print(f"bench: resuming: {len(results)} of {len(files)} image(s) were screened by an interrupted run "
              f"({journal.root}); screening the other {len(todo)}", file=sys.stderr)
    bar = tqdm(total=len(files), initial=len(results), unit="image", desc="screening", file=sys.stderr,
               disable=not (sys.stderr.isatty() if progress is None else progress))
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        read = read_inputs([files[i] for i in idx], pixel_spacing_mm, laterality)
        ok = [(i, r) for i, r in zip(idx, read) if isinstance(r, Radiograph)]
        rads = dict(ok)
        results.update({i: r for i, r in zip(idx, read) if isinstance(r, Skipped)})
        preds = _predict(predictor, [r for _, r in ok], [names[i] for i, _ in ok], batch_size) if ok else []
        for (i, _), pred in zip(ok, preds):
            if isinstance(pred, Exception):
                results[i] = Skipped(str(files[i]), f"prediction failed for {files[i]}: {pred}")
                continue
            overlay = f"overlays/{names[i]}.png" if overlays else ""
            head = {"file": str(files[i]), "name": names[i], "overlay": overlay}
            seen = dict(zip(("seen", "seen_as"), seen_as(training, pixel_digest(rads[i].pixels))))
            results[i] = ({**head, "error": "", **pred.row(), **seen}, {**head, **pred.record(), **seen})
            journal.save(files[i], names[i], *results[i], pred.overlay_png() if overlays else None)
        bar.update(len(idx))
    bar.close()
    for i in range(len(files)):
        res = results[i]
        if isinstance(res, Skipped):
            report.skipped.append(res)
        else:
            report.rows.append(res[0])
            report.records.append(res[1])
    return report


def write_outputs(report: Report, model: dict[str, Any], options: dict[str, Any] | None = None) -> None:
    """predictions.csv and predictions.json (atomically); the JSON records the options the images were
    screened with (flag limits, threshold, fallback spacing and side), so a result can be traced."""
    skipped_rows = [{"file": s.file, "name": "", "overlay": "", "error": s.error, "status": "skipped"}
                    for s in report.skipped]
    frame = pd.DataFrame(report.rows + skipped_rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["file", "name", "overlay", "error", "status"])
    for column in ("prediction", "n_bones", "height", "width"):     # integers, also beside skipped rows' NaN
        if column in frame.columns:
            frame[column] = frame[column].astype("Int64")
    atomic_write_text(report.out_dir / "predictions.csv", frame.to_csv(index=False))
    doc = {"model": model, "options": options or {}, "images": report.records,
           "skipped": [vars(s) for s in report.skipped]}
    atomic_write_text(report.out_dir / "predictions.json",
                      json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n")


def json_safe(value: Any) -> Any:
    """JSON-safe values: NaN/inf → None, numpy scalars → Python, tuples → lists."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
