"""External validation: an exported model on a labelled dataset it never saw (`bench evaluate`).

The model (a bundle, methods.bundle, or any predictor with ``predict(radiographs, names,
batch_size=...)`` returning screenings with ``bone_probability``, ``status`` and ``row()``, and a
``meta`` dict) screens every radiograph of the dataset; the scores are then aggregated exactly as
the benchmark aggregates a run's own predictions: several images of a subject count once
(bench.metrics.average_images), a subject's probability is the mean of its usable bones (paper
eq. 10; bench.metrics.aggregate_subjects), and the decision is ``p > threshold``. Every usable
bone counts, whatever the screening flags say, as in the benchmark; the flags are counted in the
metrics' ``extra`` and listed per image. So is whether the model saw the image: its pixel digest
(bench.data.digests) looked up in the bundle's ``training_images`` (methods.training_images) says
whether a model was fitted on it (``fit``: not external) or tested on it (``held_out``: the run's
own test subjects), whatever folder it now lies in; ``exclude_seen`` leaves out the subjects
with a fitted image.

By default every labelled subject is a ``test`` subject (an external cohort); ``split`` keeps only
one split of the dataset's own manifest (e.g. the test split of a dataset a model was not trained
on). The result is a run folder ``results/<name>/<entry>/seed<k>`` like any other, so
``bench show`` (AUC with its DeLong CI, ``--by sex``), ``bench compare`` (two models evaluated on
the same cohort) and the MLflow experiment ``osteobench/<name>`` read it as usual. That folder is
replaced only by a rerun on the same dataset (the fingerprint its config.json records); anything
else there (an evaluation of other data, a benchmark run) needs ``overwrite`` (:func:`check_replaceable`).
"""
from __future__ import annotations

import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from bench.data.format import BONES, Dataset
from bench.errors import BenchError
from bench.metrics import aggregate_subjects, average_images, split_metrics
from bench.results import CONFIG_FILE

ALL = "all"
FIT, HELD_OUT = "fit", "held_out"     # methods.training_images


@dataclass
class Evaluation:
    subjects: pd.DataFrame            # bench.metrics.SUBJECT_COLUMNS, split "test" (or the chosen split)
    metrics: dict[str, Any]           # split -> metrics, plus "extra" (image and flag counts)
    images: pd.DataFrame              # one screening row per image (image_id, subject_id, status, flags, ...)
    threshold: float


def split_rows(dataset: Dataset, split: str = ALL, unit: str = "subject") -> pd.DataFrame:
    """The manifest rows of `split` (all: every row); a BenchError names the splits there are."""
    manifest = dataset.manifest
    if split == ALL:
        return manifest
    chosen = manifest[manifest["split"].astype(str) == split]
    if chosen.empty:
        present = sorted(set(manifest["split"].astype(str)))
        raise BenchError(f"{dataset.root} has no {split!r} split (it has {', '.join(present)}); choose one of "
                         f"them, or --split {ALL} for every {unit}")
    return chosen


def chosen_rows(dataset: Dataset, split: str = ALL) -> pd.DataFrame:
    """The labelled manifest rows to evaluate, with the split they are reported under."""
    if not dataset.has_labels:
        raise BenchError(f"{dataset.root} has no labels (manifest column `label`); external validation needs the "
                         "DXA labels of the cohort (import them with `bench data import --csv`)")
    manifest = split_rows(dataset, split)
    rows = manifest[manifest["label"].notna()].copy()
    if rows.empty:
        raise BenchError(f"no labelled image in {dataset.root}" + (f" ({split} split)" if split != ALL else ""))
    rows["split"] = "test" if split == ALL else split
    return rows


def evaluate_dataset(predictor: Any, dataset: Dataset, *, split: str = ALL, threshold: float | None = None,
                     batch_size: int = 8, chunk: int = 64, exclude_seen: bool = False,
                     progress: Callable[[int, int], None] | None = None, journal: Any = None) -> Evaluation:
    """Screen every chosen radiograph in chunks (images are not all held at once) and compute the metrics.

    Each image is looked up by its pixel digest in the predictor's ``meta["training_images"]``
    (methods.training_images): images.csv says whether the model was fitted on it (``seen`` fit) or
    tested on it (held_out), and the metrics' ``extra`` counts both. `exclude_seen` leaves out every
    subject with an image the model was fitted on (a BenchError when the meta records none).
    A `journal` (bench.predict_journal.Journal) keeps each image's screening as it is done and
    gives back those of an interrupted evaluation (an image, its manifest spacing and side unchanged).
    """
    from bench.data.digests import pixel_digest
    from bench.data.imageio import read_image
    from methods.segmentation.data import side_of

    rows = chosen_rows(dataset, split)
    t = float(predictor.meta["decision"]["threshold"]) if threshold is None else float(threshold)
    training = predictor.meta.get("training_images")
    if exclude_seen and not isinstance(training, dict):
        raise BenchError("this bundle records no digests of its training images (it was exported before they were "
                         "recorded); export its run again to use --exclude-seen")
    bones, images = [], []
    resumed = 0
    for start in range(0, len(rows), chunk):
        part = rows.iloc[start:start + chunk]
        screened: dict[str, tuple[dict, dict]] = {}       # image_id -> (bone probabilities, screening row)
        rads, todo, seen = [], [], {}
        for image_id, spacing, side in zip(part["image_id"].astype(str), part["pixel_spacing_mm"],
                                           part["laterality"] if "laterality" in part else [""] * len(part)):
            path, salt = dataset.image_path(image_id), f"{spacing}|{side}"
            rad = read_image(path)
            seen[image_id] = seen_as(training, pixel_digest(rad.pixels))
            done = journal.lookup(path, image_id, False, salt) if journal is not None else None
            if done is not None:
                screened[image_id] = (done[1]["bone_probability"], done[0])
                continue
            if pd.notna(spacing):                           # the manifest's spacing wins, as in the benchmark
                rad.pixel_spacing_mm = float(spacing)
            if side_of(side):                               # and its side, as the segment stage took it
                rad.header = {**rad.header, "ImageLaterality": side_of(side)}
            rads.append(rad)
            todo.append((image_id, path, salt))
        for first in range(0, len(todo), batch_size):      # journalled batch by batch
            batch = todo[first:first + batch_size]
            for (image_id, path, salt), s in zip(batch, predictor.predict(
                    rads[first:first + batch_size], [item[0] for item in batch], batch_size=batch_size)):
                probabilities = {bone: float(s.bone_probability.get(bone, np.nan)) for bone in BONES}
                row = {k: v for k, v in s.row().items() if k != "name"}
                screened[image_id] = (probabilities, row)
                if journal is not None:
                    journal.save(path, image_id, row, {"bone_probability": probabilities}, None, salt)
        resumed += len(part) - len(todo)
        for _, row in part.iterrows():
            probabilities, screening = screened[str(row["image_id"])]
            for bone in BONES:
                bones.append({"subject_id": str(row["subject_id"]), "split": row["split"], "bone": bone,
                              "y_true": int(row["label"]), "p_pos": probabilities[bone]})
            kind, where = seen[str(row["image_id"])]
            images.append({"image_id": row["image_id"], "subject_id": str(row["subject_id"]),
                           "label": int(row["label"]), **screening, "seen": kind, "seen_as": where})
        if progress is not None:
            progress(min(start + chunk, len(rows)), len(rows))
    if resumed:
        print(f"bench: resuming: {resumed} of {len(rows)} radiograph(s) were screened by an interrupted evaluation "
              f"({journal.root})", file=sys.stderr)
    image_frame = pd.DataFrame(images)
    fitted = set(image_frame.loc[image_frame["seen"] == FIT, "subject_id"])
    image_frame["excluded"] = exclude_seen & image_frame["subject_id"].isin(fitted)
    bone_frame = pd.DataFrame(bones)
    if exclude_seen:
        bone_frame = bone_frame[~bone_frame["subject_id"].isin(fitted)]
        if bone_frame.empty:
            raise BenchError(f"every labelled subject of {dataset.root} has an image the bundle was fitted on "
                             "(--exclude-seen leaves none): this is its training data, not an external cohort")
    subjects = aggregate_subjects(average_images(bone_frame))
    subjects["y_pred"] = (subjects["p_pos"] > t).astype("Int64").where(subjects["p_pos"].notna())
    metrics: dict[str, Any] = split_metrics(subjects, threshold=t)
    status = image_frame.loc[~image_frame["excluded"], "status"].value_counts()
    kinds = image_frame["seen"].value_counts()
    metrics["extra"] = {"images": float((~image_frame["excluded"]).sum()),
                        "subjects": float(subjects["subject_id"].nunique()),
                        **{f"images_{k.replace('-', '_')}": float(status.get(k, 0))
                           for k in ("ok", "low-confidence", "withheld")},
                        "images_seen_fit": float(kinds.get(FIT, 0)),
                        "images_seen_held_out": float(kinds.get(HELD_OUT, 0)),
                        "subjects_seen_fit": float(len(fitted)),
                        "subjects_excluded": float(len(fitted) if exclude_seen else 0),
                        "threshold": t}
    return Evaluation(subjects, metrics, image_frame, t)


def seen_as(training: Any, digest: str) -> tuple[str, str]:
    """(``fit`` | ``held_out`` | ``""``, where) of an image digest in a bundle's ``training_images``."""
    if not isinstance(training, dict):
        return "", ""
    for kind in (FIT, HELD_OUT):
        where = (training.get(kind) or {}).get(digest)
        if where:
            return kind, str(where)
    return "", ""


def check_replaceable(folder: Path, fingerprint: str, overwrite: bool = False) -> None:
    """BenchError when run folder `folder` holds something other than an evaluation of the dataset
    with `fingerprint` (a rerun may replace it), unless `overwrite`."""
    if overwrite or not Path(folder).exists():
        return
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    data = config.get("data") if isinstance(config, dict) else None
    if isinstance(config, dict) and config.get("kind") == "external" and isinstance(data, dict):
        if data.get("fingerprint") == fingerprint:
            return
        what = f"an evaluation on another dataset ({data.get('cls')}, or that folder before it changed)"
    else:
        what = "a run that is not an evaluation" if isinstance(config, dict) else "a run without a readable config.json"
    raise BenchError(f"{folder} already holds {what}; pass --overwrite to replace it, or choose another "
                     "--name (or --entry)")


def images_csv(evaluation: Evaluation) -> bytes:
    buf = io.StringIO()
    evaluation.images.to_csv(buf, index=False)
    return buf.getvalue().encode("utf-8")
