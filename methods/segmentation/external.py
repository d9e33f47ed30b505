"""External validation of a segmenter (`bench evaluate-seg`): a trained model on an annotated dataset it
never saw, e.g. hand radiographs with bone masks imported as COCO polygons, or a fresh phantom.

The segmenter comes from a bundle (`bench export`), from a run folder whose entry trained one (its
`segment` stage: the full method, the ablations, radiogrammetry), or from a segment stage's
``model.pt`` (the settings of the stage that wrote it, from its ``_stage.json``; the config defaults
for a model file found elsewhere). It predicts every annotated image of the dataset exactly as the
stage predicts its own (methods.segmentation.predict: the run's ``predict_draws`` latent draws per expert, seed 0, the
manifest's laterality given), and is scored as the stage scores its val and test splits
(methods.segmentation.scoring: Dice per bone against the truth where the dataset has it, the
annotators' consensus and each annotator; GED, Hungarian IoU and pixel ECE on the model's canvas;
for a canonical-laterality model, how often it finds the manifest's side when not told it). Images
go through in chunks, so a large cohort is never held at once; the GED's latent draws come from
`seed` for the first chunk and from seeds derived from it for the others.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from bench.data.format import Dataset
from bench.errors import BenchError
from bench.external import ALL, split_rows
from bench.stage import derive_seed
from methods.segmentation.config import SegmentationConfig
from methods.segmentation.data import load_split, manifest_sides
from methods.segmentation.predict import load_model, predict_many
from methods.segmentation.evaluate import ece_bins
from methods.segmentation.scoring import (ImageScore, detection_summary, images_frame, score_images,
                                          summarize)

@dataclass
class Segmenter:
    """A trained segmenter and the prediction settings of the run that trained it."""

    model: torch.nn.Module
    draws: int                       # latent draws per expert behind the label maps (0: the training S)
    eval_samples: int                # GED samples: 0 = the compact form (segmentation.eval_samples)
    batch_size: int
    source: dict[str, Any] = field(default_factory=dict)   # kind (bundle | run | model), path, entry, seed

    @property
    def label(self) -> str:
        """A short name for output folders: [<suite>-]<entry>-seed<k>, or the model file's folder name."""
        if self.source.get("entry"):
            suite = f"{self.source['suite']}-" if self.source.get("suite") else ""
            return f"{suite}{self.source['entry']}-seed{self.source.get('seed', 0)}"
        return Path(self.source["path"]).parent.name or "model"


def _settings(seg_config: dict[str, Any]) -> dict[str, int]:
    defaults = SegmentationConfig()
    return {"draws": int(seg_config.get("predict_draws", defaults.predict_draws)),
            "eval_samples": int(seg_config.get("eval_samples", defaults.eval_samples)),
            "batch_size": int(seg_config.get("predict_batch", defaults.predict_batch))}


def _stage_segmentation_config(model_file: Path) -> dict[str, Any]:
    """The segmentation config of the stage that wrote `model_file` (its ``_stage.json`` material), or {}
    for a model file outside a stage folder (then the defaults apply)."""
    from bench.stage import STAGE_MARKER

    marker = model_file.parent / STAGE_MARKER
    try:
        material = json.loads(marker.read_text()).get("material", {})
    except (OSError, ValueError, AttributeError):
        return {}
    sections = material.get("sections", {}) if isinstance(material, dict) else {}
    seg = sections.get("segmentation", {}) if isinstance(sections, dict) else {}
    return seg if isinstance(seg, dict) else {}


def _is_bundle(path: Path) -> bool:
    from methods.bundle import META

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return META in zf.namelist()


def open_segmenter(path: str | Path, device: torch.device | str = "cpu") -> Segmenter:
    """The segmenter of a bundle, of a run folder (or an entry folder with one seed), or a model.pt."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"{path} does not exist; give a bundle (.osteo), a run folder results/<suite>/<entry>/seed<k> "
                         "whose entry trains a segmenter, or a segment stage's model.pt")
    if path.is_file() and _is_bundle(path):
        from methods.bundle import bundle_segmenter, read_meta

        meta, blobs = read_meta(path)
        settings = _settings(meta.get("config", {}).get("segmentation", {}))
        settings["draws"] = int(meta["segmentation"].get("samples") or 0)
        source = {"kind": "bundle", "path": str(path.resolve()), **{k: meta["source"].get(k) for k in ("suite", "entry", "seed")}}
        return Segmenter(bundle_segmenter(path, meta, blobs).to(device), source=source, **settings)
    if path.is_file():
        return Segmenter(load_model(path, device), source={"kind": "model", "path": str(path.resolve())},
                         **_settings(_stage_segmentation_config(path)))
    from methods.export import find_run, read_run_config

    run = find_run(path)
    config = read_run_config(run)
    key = (config.get("stages") or {}).get("segment")
    if key is None:
        raise BenchError(f"entry {config.get('entry', run.parent.name)!r} of {run} trains no segmenter (its stages: "
                         f"{', '.join(config.get('stages') or {}) or 'none'}); give a run of an entry with a segment "
                         "stage (the full method, radiogrammetry, ...) run with predicted masks")
    model_file = run.parent.parent.parent / "cache" / "segment" / str(key) / "model.pt"
    if not model_file.is_file():
        raise BenchError(f"the segmenter of {run} ({model_file}) is missing from the cache; rerun the same "
                         "`bench run` command (it recomputes only what is missing)")
    source = {"kind": "run", "path": str(run.resolve()), "suite": config.get("suite"), "entry": config.get("entry"),
              "seed": config.get("seed")}
    return Segmenter(load_model(model_file, device), source=source,
                     **_settings(config.get("config", {}).get("segmentation", {})))


@dataclass
class SegEvaluation:
    summary: dict[str, Any]          # scoring.summarize of all images, plus laterality_detection
    images: pd.DataFrame             # one row per image: split, laterality, scores (scoring.ImageScore.row)


def annotated_ids(dataset: Dataset, split: str = ALL, annotators: Sequence[str] = (),
                  required: bool = True) -> list[str]:
    """The images of `split` (all: every split) that have at least one mask of weight > 0 (of `annotators`
    when given); with ``required=False`` an absent split or one without masks gives an empty list."""
    if not required and split != ALL and not (dataset.manifest["split"].astype(str) == split).any():
        return []
    manifest = split_rows(dataset, split, unit="image")
    ids = [i for i in manifest["image_id"].astype(str)
           if sum(w for a, w in dataset.annotator_weights(i).items() if not annotators or a in annotators) > 0]
    if not ids and required:
        raise BenchError(f"no image of {dataset.root}" + (f" ({split} split)" if split != ALL else "") + " has a "
                         "bone mask (masks/<image_id>/<annotator>.png listed in annotators.csv); import the masks "
                         "with `bench data import --coco` to evaluate a segmenter")
    return ids


def evaluate_segmenter(seg: Segmenter, dataset: Dataset, *, split: str = ALL, seed: int = 0, chunk: int = 32,
                       detect: bool = True, annotators: Sequence[str] = (), image_ids: Sequence[str] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> SegEvaluation:
    """Predict and score every annotated image of `split` (module docstring), or the images `image_ids`;
    `detect`: also predict each image whose side the manifest states mirrored, to measure the model's
    laterality detection; `annotators`: score against these alone (empty: every annotator)."""
    if chunk < 1:
        raise BenchError(f"chunk = {chunk} must be >= 1")
    model = seg.model
    device = next(model.parameters()).device
    canonical = bool(getattr(model.spec, "canonical_laterality", False))
    ids = annotated_ids(dataset, split, annotators) if image_ids is None else [str(i) for i in image_ids]
    sides = manifest_sides(dataset)
    splits = dict(zip(dataset.manifest["image_id"].astype(str), dataset.manifest["split"].astype(str)))
    scores: list[ImageScore] = []
    bins = ece_bins([], [])
    extra: dict[str, dict[str, Any]] = {}
    found: dict[str, str] = {}
    for start in range(0, len(ids), chunk):
        part_ids = ids[start:start + chunk]
        labels, used = {}, {}
        for image_id, pred in zip(part_ids, predict_many(
                model, (dataset.image(i) for i in part_ids), batch_size=seg.batch_size, samples=seg.draws,
                laterality=[sides.get(i, "") for i in part_ids], detect=detect)):
            labels[image_id], used[image_id] = pred.labels, pred.laterality
            if detect and sides.get(image_id) and pred.detected:
                found[image_id] = pred.detected
            extra[image_id] = {"split": splits[image_id], "laterality": pred.laterality,
                               "laterality_source": pred.laterality_source}
        # the sample metrics on the canvas the labels came from: a detected left hand mirrored too
        data = load_split(dataset, [], tuple(model.spec.canvas), device, annotators, canonical=canonical,
                          image_ids=part_ids, sides=used)
        part, part_bins = score_images(model, dataset, data, labels, batch_size=seg.batch_size,
                                       eval_samples=seg.eval_samples,
                                       seed=seed if start == 0 else derive_seed(seed, "chunk", start))
        scores += part
        bins += part_bins
        if progress is not None:
            progress(min(start + chunk, len(ids)), len(ids))
    summary = summarize(scores, bins)
    if canonical and detect:
        summary["laterality_detection"] = detection_summary(found, dataset)
    frame = images_frame(scores)
    info = pd.DataFrame([{"image_id": i, **extra[i], "laterality_detected": found.get(i, "")}
                         for i in frame["image_id"]])
    return SegEvaluation(summary, info.merge(frame, on="image_id", how="left"))


def lowest_bone(dice: dict[str, float] | None) -> tuple[str, float] | None:
    """The bone with the lowest mean Dice (None when there is none)."""
    if not dice:
        return None
    per_bone = {b: v for b, v in dice.items() if b != "mean" and not np.isnan(v)}
    return min(per_bone.items(), key=lambda kv: kv[1]) if per_bone else None
