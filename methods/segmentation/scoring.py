"""Scoring a segmenter's predictions on annotated images: what the `segment` stage writes to eval.json
and what `bench evaluate-seg` reports on a dataset the model never saw (issue 4, deliverable 5).

Per image (:class:`ImageScore`): Dice per bone of the label map at native resolution against each
reference it has (``truth``: the exact phantom masks; ``consensus``: the annotators' β-weighted vote,
methods.segmentation.agreement; ``consensus_truth``: that vote against the truth, the annotators' own
ceiling; ``annotator:<name>``: each annotator), and the sample-based metrics on the working canvas
(GED with its three terms, Hungarian-matched IoU; the annotators weighted by β). A bone absent from
both maps of a pair is NaN and left out of its mean. A summary (:func:`summarize`) is, per
reference, the per-bone nan-mean over the images that have it plus ``mean`` over the bones, and the
pixel ECE pooled over all images (:func:`methods.segmentation.evaluate.ece_bins`), so chunks of
images add up to the evaluation of all of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.data.format import BONES, Dataset
from methods.segmentation.data import SegData, manifest_sides
from methods.segmentation.evaluate import dice_per_bone, ece_bins, ece_of_bins, ged_components, hungarian_iou
from methods.segmentation.train import annotations_of, iter_samples

#: evaluate.ged_components term -> report key
GED_KEYS = {"ged": "ged", "cross": "ged_cross", "sample_diversity": "ged_sample_diversity",
            "annotation_diversity": "ged_annotation_diversity"}
ANNOTATOR = "annotator:"


@dataclass
class ImageScore:
    """The scores of one image (module docstring)."""

    image_id: str
    dice: dict[str, dict[str, float]] = field(default_factory=dict)   # reference -> bone -> Dice
    sample_metrics: dict[str, float] = field(default_factory=dict)   # GED_KEYS values, hungarian_iou

    def row(self) -> dict[str, Any]:
        """One flat CSV row: image_id, the sample metrics, dice_<reference>_<bone> and dice_<reference>_mean."""
        out: dict[str, Any] = {"image_id": self.image_id, **self.sample_metrics}
        for ref, per_bone in self.dice.items():
            name = ref.replace(ANNOTATOR, "annotator_")
            vals = [v for v in per_bone.values() if not np.isnan(v)]
            out[f"dice_{name}_mean"] = float(np.mean(vals)) if vals else float("nan")
            out.update({f"dice_{name}_{b}": v for b, v in per_bone.items()})
        return out


def truth_mask(dataset: Dataset, image_id: str) -> np.ndarray | None:
    """The exact label map of a phantom image (``truth/`` of the dataset), or None."""
    from bench.data.imageio import read_label_map

    p = Path(dataset.root) / "truth" / "masks" / f"{image_id}.png"
    return read_label_map(p) if p.is_file() else None


def dice_scores(pred: np.ndarray, dataset: Dataset, image_id: str) -> dict[str, dict[str, float]]:
    """Reference -> bone -> Dice of one native-resolution label map against the image's truth and all
    its annotators (module docstring)."""
    from methods.segmentation.agreement import consensus

    truth = truth_mask(dataset, image_id)
    masks = dataset.masks(image_id)
    out: dict[str, dict[str, float]] = {}
    agreed = consensus(masks, dataset.annotator_weights(image_id)) if masks else None
    if truth is not None:
        out["truth"] = dice_per_bone(pred, truth)
    if agreed is not None:
        out["consensus"] = dice_per_bone(pred, agreed)
        if truth is not None:
            out["consensus_truth"] = dice_per_bone(agreed, truth)
    for name, mask in sorted(masks.items()):
        out[ANNOTATOR + name] = dice_per_bone(pred, mask)
    return out


def score_images(model: torch.nn.Module, dataset: Dataset, data: SegData, labels: dict[str, np.ndarray], *,
                 batch_size: int, eval_samples: int, seed: int) -> tuple[list[ImageScore], np.ndarray]:
    """Scores of every image of `data` (its label maps in `labels`), and the ECE bins of them all."""
    scores = {i: ImageScore(i, dice_scores(labels[i], dataset, i)) for i in data.image_ids}
    probs, anns, betas = [], [], []
    for index, maps, w, mean in iter_samples(model, data, batch_size=batch_size, eval_samples=eval_samples,
                                             seed=seed):
        ann, beta = annotations_of(data, index)
        terms = ged_components(maps, ann, sample_weights=w, annotation_weights=beta)
        metrics = {key: float(terms[term]) for term, key in GED_KEYS.items()}
        metrics["hungarian_iou"] = float(hungarian_iou(maps, ann, sample_weights=w, annotation_weights=beta))
        scores[data.image_ids[index]].sample_metrics = metrics
        probs.append(mean.float().cpu().numpy())
        anns.append(ann)
        betas.append(beta)
    bins = ece_bins(probs, anns, annotation_weights=betas) if probs else ece_bins([], [])
    return list(scores.values()), bins


def mean_dice(rows: list[dict[str, float]]) -> dict[str, float]:
    """Per-bone nan-mean over images, plus `mean` (over bones)."""
    out = {b: float(np.nanmean([r[b] for r in rows])) if rows and not all(np.isnan(r[b]) for r in rows)
           else float("nan") for b in BONES}
    vals = [v for v in out.values() if not np.isnan(v)]
    out["mean"] = float(np.mean(vals)) if vals else float("nan")
    return out


def summarize(scores: list[ImageScore], bins: np.ndarray) -> dict[str, Any]:
    """The eval.json form of a split: n_images, dice_truth / dice_consensus_truth / dice_consensus
    (None without that reference), dice_annotators {name: ...}, the GED terms, hungarian_iou, ece."""
    def per_ref(ref: str) -> dict[str, float] | None:
        rows = [s.dice[ref] for s in scores if ref in s.dice]
        return mean_dice(rows) if rows else None

    names = sorted({r[len(ANNOTATOR):] for s in scores for r in s.dice if r.startswith(ANNOTATOR)})
    out: dict[str, Any] = {"n_images": len(scores), "dice_truth": per_ref("truth"),
                           "dice_consensus_truth": per_ref("consensus_truth"),
                           "dice_consensus": per_ref("consensus"),
                           "dice_annotators": {a: per_ref(ANNOTATOR + a) for a in names}}
    for key in (*GED_KEYS.values(), "hungarian_iou"):
        vals = [s.sample_metrics[key] for s in scores if key in s.sample_metrics]
        out[key] = float(np.nanmean(vals)) if vals else float("nan")
    out["ece"] = ece_of_bins(bins)
    return out


def images_frame(scores: list[ImageScore]) -> pd.DataFrame:
    """One row per image (:meth:`ImageScore.row`)."""
    return pd.DataFrame([s.row() for s in scores])


def flat_metrics(split: str, res: dict[str, Any]) -> dict[str, float]:
    """Metric names for ctx.log / MLflow: seg_<split>_<metric>[_<bone>]."""
    out = {f"seg_{split}_{k}": float(res[k]) for k in ("hungarian_iou", "ece", *GED_KEYS.values())}
    if res["dice_truth"]:
        out.update({f"seg_{split}_dice_truth_{b}": v for b, v in res["dice_truth"].items()})
    if res.get("dice_consensus"):
        out.update({f"seg_{split}_dice_consensus_{b}": v for b, v in res["dice_consensus"].items()})
    if res.get("dice_consensus_truth"):
        out[f"seg_{split}_dice_consensus_truth_mean"] = res["dice_consensus_truth"]["mean"]
    for a, d in res["dice_annotators"].items():
        out[f"seg_{split}_dice_{a}_mean"] = d["mean"]
    if res["dice_annotators"]:
        out[f"seg_{split}_dice_annotators_mean"] = float(np.nanmean([d["mean"] for d in res["dice_annotators"].values()]))
    if res.get("laterality_detection", {}).get("n_images"):
        out[f"seg_{split}_laterality_detection_accuracy"] = res["laterality_detection"]["accuracy"]
    return out


def detection_summary(found: dict[str, str], dataset: Dataset) -> dict[str, Any]:
    """How often `found` (image id -> the side a canonical-laterality model chose when not told it;
    predict_many's `detect`) matches the manifest: n_images, accuracy, the wrong ids.
    What `bench predict` relies on for files that state no laterality."""
    sides = manifest_sides(dataset)
    wrong = [i for i, side in found.items() if side != sides[i]]
    return {"n_images": len(found), "accuracy": 1.0 - len(wrong) / len(found) if found else float("nan"),
            "wrong": wrong}
