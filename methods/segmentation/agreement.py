"""How well a dataset's annotators agree, per bone: the Dice a model trained on them can hope for.

A segmentation model learns the annotators, so its Dice against them is bounded by how much they
agree, and (on a phantom) its Dice against the exact masks by how close their consensus comes to
the truth. Per image and bone: each annotator against the consensus (β-weighted: the Dice of
every annotator, averaged with its weight β) and, where ``truth/masks`` exists, each annotator and
the consensus against the truth. The consensus is the β-weighted per-pixel vote (the class with
the largest total weight; a tie goes to the lower class id, i.e. to background first).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from bench.data.format import NUM_CLASSES, Dataset
from bench.data.imageio import read_label_map
from bench.errors import BenchError
from methods.segmentation.evaluate import dice_per_bone


def consensus(masks: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """The β-weighted per-pixel vote of the annotators' label maps (H x W, uint8).

    The class with the most weight wins; a tie between background and a bone goes to the bone (two
    equally weighted annotators give the union of their bones, not the intersection: LIDC's "at
    least half of the readers" consensus), a tie between bones to the first in class order.
    """
    if not masks:
        raise BenchError("consensus needs at least one annotator label map")
    shape = next(iter(masks.values())).shape
    votes = np.zeros((NUM_CLASSES, *shape), dtype=np.float32)
    for name, labels in masks.items():
        if labels.shape != shape:
            raise BenchError(f"annotator {name!r} label map is {labels.shape}, the others {shape}")
        weight = np.float32(weights.get(name, 0.0))
        for c in range(NUM_CLASSES):
            votes[c] += weight * (labels == c)
    bone = votes[1:].argmax(axis=0) + 1
    top = np.take_along_axis(votes, bone[None], axis=0)[0]
    return np.where(top >= votes[0] - 1e-6, bone, 0).astype(np.uint8)


def image_agreement(masks: Mapping[str, np.ndarray], weights: Mapping[str, float],
                    truth: np.ndarray | None = None) -> list[dict]:
    """Rows (bone, comparison, dice, weight) of one image; comparisons: annotator~consensus,
    annotator~truth, consensus~truth. Bones absent from both maps of a pair are left out."""
    vote = consensus(masks, weights)
    pairs = [("annotator~consensus", labels, vote, weights.get(name, 0.0)) for name, labels in masks.items()]
    if truth is not None:
        pairs += [("annotator~truth", labels, truth, weights.get(name, 0.0)) for name, labels in masks.items()]
        pairs.append(("consensus~truth", vote, truth, 1.0))
    rows = []
    for comparison, a, b, weight in pairs:
        for bone, dice in dice_per_bone(a, b).items():
            if not np.isnan(dice):
                rows.append({"bone": bone, "comparison": comparison, "dice": dice, "weight": float(weight)})
    return rows


def dataset_agreement(dataset: Dataset, split: str | None = None, limit: int | None = None) -> pd.DataFrame:
    """Per comparison and bone: the weighted mean Dice over the images with masks (columns: bones)."""
    manifest = dataset.manifest
    if split:
        manifest = manifest[manifest["split"] == split]
    rows = []
    for image_id in manifest["image_id"].astype(str).tolist()[:limit]:
        weights = dataset.annotator_weights(image_id)
        if not weights:
            continue
        truth_path = dataset.root / "truth" / "masks" / f"{image_id}.png"
        truth = read_label_map(truth_path) if truth_path.is_file() else None
        rows += image_agreement(dataset.masks(image_id), weights, truth)
    if not rows:
        raise BenchError(f"{dataset.root}: no image{' of split ' + split if split else ''} has annotator masks; "
                         "agreement needs masks/<image_id>/<annotator>.png")
    frame = pd.DataFrame(rows)
    frame["weighted"] = frame["dice"] * frame["weight"]
    sums = frame.groupby(["comparison", "bone"])[["weighted", "weight"]].sum()
    mean = sums["weighted"] / sums["weight"].where(sums["weight"] > 0)
    return mean.unstack("bone")


__all__ = ["consensus", "image_agreement", "dataset_agreement"]
