"""The `segment_eval` stage: the `segment` stage's model scored on the `seg` evaluation splits (issue 4).

A companion of `segment` (bench.registry.Stage.companions): it runs right after it whenever it runs,
and nothing reads it, so the options it alone uses (``segmentation.eval_splits``, ``eval_samples``,
``figures``) are left out of the segmentation's key: asking for other splits, other GED samples or
more figures recomputes this evaluation only, never the training or the stages after it.

Output folder::

    eval.json                  the training summary (model.pt's notes), ``predict_draws`` (latent draws
                               per expert behind the label maps), per evaluated `seg` split the metrics
                               below, and ``unlearnt_bones`` (also warned about): bones whose mean Dice
                               against the annotators on the first evaluated split is below 0.5
    images.csv                 one row per evaluated image: split, laterality, its scores
    figures/<image_id>.png     image | label overlay | entropy, for the first images of the last split

Evaluation conventions: Dice per bone at native resolution, against the exact phantom truth
(``truth/`` masks, when the dataset has them) and against each annotator; a bone absent from both
maps is left out of its mean (NaN); ``dice_consensus`` against the annotators' β-weighted consensus
(methods.segmentation.agreement; the reference where there is no truth); ``dice_consensus_truth``,
that consensus against the truth on the same images (a model need not stay below it: one trained
over many images averages out the annotators' per-image noise). GED (with its three terms
``ged_cross``, ``ged_sample_diversity`` and ``ged_annotation_diversity``: GED = 2 cross - both
diversities), Hungarian-matched IoU and pixel ECE at the working resolution (the image's area on the
canvas), samples in the compact weighted form unless ``segmentation.eval_samples`` asks for the
standard form; annotations weighted by beta. With ``segmentation.canonical_laterality`` the images
reach the model as right hands (left ones mirrored; the label maps are written in each image's own
orientation), GED, Hungarian IoU and ECE are computed on the canonical canvas, and
``laterality_detection`` reports how often the model finds the side of an evaluation image whose
manifest states it when it is not told (n_images, accuracy, the wrong ones).

Each split is scored as `bench evaluate-seg` scores a dataset (methods.segmentation.external: the
images predicted as the segment stage predicts them, the sample metrics on the canvas their labels
came from), against the annotators the model was trained on, one latent seed per split derived from
(seed, "segmentation", "eval", split).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data.format import BONES, Dataset
from bench.predict import json_safe
from bench.stage import StageContext, derive_seed
from methods.segmentation.config import SegmentationConfig
from methods.segmentation.external import Segmenter, annotated_ids, evaluate_segmenter
from methods.segmentation.predict import load_model
from methods.segmentation.scoring import flat_metrics

UNLEARNT_DICE = 0.5   # a bone below this mean Dice against the annotators is reported as not learnt


def segment_eval_stage(ctx: StageContext) -> dict[str, Any]:
    """Score the segment stage's model on ``segmentation.eval_splits`` and draw the example figures."""
    cfg: SegmentationConfig = ctx.config.segmentation
    cfg.validate()
    seg, source = ctx.datasets["seg"], ctx.inputs["segment"]
    model = load_model(source / "model.pt", ctx.device)
    annotators = cfg.annotator_list
    segmenter = Segmenter(model, draws=cfg.predict_draws, eval_samples=cfg.eval_samples,
                          batch_size=cfg.predict_batch)
    report: dict[str, Any] = {"train": model.spec.extra.get("train", {}),
                              "predict_draws": (cfg.predict_draws or model.spec.samples)
                              if model.spec.kind == "mose" else 1,
                              "splits": {}}
    images = []
    for split in cfg.split_list:
        ids = annotated_ids(seg, split, annotators, required=False)
        if not ids:
            continue
        result = evaluate_segmenter(segmenter, seg, seed=derive_seed(ctx.seed, "segmentation", "eval", split),
                                    chunk=len(ids), annotators=annotators, image_ids=ids)
        report["splits"][split] = result.summary
        images.append(result.images)
        for name, value in flat_metrics(split, result.summary).items():
            ctx.log(name, value)
    report["unlearnt_bones"] = unlearnt_bones(report)
    if report["unlearnt_bones"]:
        warnings.warn(f"segmentation: {', '.join(report['unlearnt_bones'])} not learnt (Dice against the annotators "
                      f"< {UNLEARNT_DICE} on the {next(iter(report['splits']))} split); their bone patches will be "
                      "missing or wrong. Check the masks, train longer or keep the CE term "
                      "(segmentation.ce_weight > 0)", stacklevel=2)
    (ctx.out_dir / "eval.json").write_text(json.dumps(json_safe(report), indent=2, sort_keys=True))
    if images:
        pd.concat(images, ignore_index=True).to_csv(ctx.out_dir / "images.csv", index=False)
    shown = list(images[-1]["image_id"].astype(str))[:cfg.figures] if images else []
    figures = write_figures(ctx.out_dir, seg, shown, source, "seg")
    summary: dict[str, Any] = {"unlearnt_bones": report["unlearnt_bones"], "figures": figures}
    for split, res in report["splits"].items():
        summary[f"{split}_ged"] = res["ged"]
        if res["dice_truth"]:
            summary[f"{split}_dice_truth_mean"] = res["dice_truth"]["mean"]
    return json_safe(summary)


def unlearnt_bones(report: dict[str, Any], threshold: float = UNLEARNT_DICE) -> list[str]:
    """Bones whose Dice against the annotators (mean over annotators) is below `threshold` on the
    first evaluated split that has annotations: a class the model never learnt (e.g. a softmax
    saturated to background under the soft-IoU cost alone), not a hard image."""
    for res in report["splits"].values():
        per_annotator = list(res["dice_annotators"].values())
        if per_annotator:
            means = {b: [d[b] for d in per_annotator if not np.isnan(d[b])] for b in BONES}
            return [b for b, v in means.items() if v and float(np.mean(v)) < threshold]   # absent everywhere: skip
    return []


def write_figures(out_dir: Path, dataset: Dataset, ids: list[str], source: Path, role: str) -> list[str]:
    """image | label overlay | entropy for each of `ids` (matplotlib, Agg), from the label maps and entropy
    PNGs the segment stage wrote into `source`."""
    if not ids:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.data.imageio import read_label_map
    from PIL import Image

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    cmap = plt.get_cmap("tab10")
    written = []
    for image_id in ids:
        img = dataset.image(image_id)
        lab = read_label_map(source / "labels" / role / f"{image_id}.png")
        ent = np.asarray(Image.open(source / "uncertainty" / role / f"{image_id}.png"))
        overlay = np.repeat(img[..., None], 3, axis=2)
        for c in range(1, 8):
            overlay[lab == c] = 0.5 * overlay[lab == c] + 0.5 * np.asarray(cmap(c - 1)[:3])
        fig, axes = plt.subplots(1, 3, figsize=(9, 4.5))
        for ax, im, title, kw in ((axes[0], img, "radiograph", {"cmap": "gray"}),
                                  (axes[1], overlay, "predicted bones", {}),
                                  (axes[2], ent / 255.0 * np.log(8), "entropy (nats)", {"cmap": "magma"})):
            shown = ax.imshow(im, **kw)
            ax.set_title(title)
            ax.axis("off")
        fig.colorbar(shown, ax=axes[2], fraction=0.046)
        fig.suptitle(image_id)
        fig.savefig(fig_dir / f"{image_id}.png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        written.append(image_id)
    return written
