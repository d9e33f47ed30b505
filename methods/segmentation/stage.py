"""The `segment` stage: train on `seg`, predict every image of `seg` and `cls`, evaluate (issue 4).

Output folder::

    model.pt                          weights + ModelSpec (+ training notes), see predict.load_model
    labels/<role>/<image_id>.png      predicted uint8 label map at native resolution, every image
    confidence/<role>.parquet         image_id, bone, confidence, area_px, present
    uncertainty/<role>/<image_id>.png entropy of the mixture mean, 8 bit (255 = log 8 nats), working size
    uncertainty/<role>.parquet        image_id, mean_entropy, mean_mutual_info (nats, image area)
    eval.json                         training summary, ``predict_draws`` (latent draws per expert behind the
                                      label maps), per evaluated `seg` split the metrics below, and
                                      ``unlearnt_bones`` (also warned about): bones whose mean Dice against
                                      the annotators on the first evaluated split is below 0.5
    figures/<image_id>.png            image | label overlay | entropy, for a few evaluation images

Evaluation conventions: Dice per bone at native resolution, against the exact phantom truth
(``truth/`` masks, when the dataset has them) and against each annotator; a bone absent from both
maps is left out of its mean (NaN); ``dice_consensus`` against the annotators' β-weighted consensus
(methods.segmentation.agreement; the reference where there is no truth); ``dice_consensus_truth``,
that consensus against the truth on the same images (a model need not stay below it: one trained
over many images averages out the annotators' per-image noise). GED (with its three terms ``ged_cross``,
``ged_sample_diversity`` and ``ged_annotation_diversity``: GED = 2 cross - both diversities), Hungarian-matched IoU and pixel ECE at
the working resolution (the image's area on the canvas), samples in the compact weighted form unless
``segmentation.eval_samples`` asks for the standard form; annotations weighted by beta. With
``segmentation.canonical_laterality`` the images reach the model as right hands (left ones mirrored; the
label maps are written in each image's own orientation), GED, Hungarian IoU and ECE are computed on
the canonical canvas, and ``laterality_detection`` reports how often the model finds the side of an
evaluation image whose manifest states it when it is not told (n_images, accuracy, the wrong ones).
The single-decoder ablation is this stage with ``segmentation.model=single``.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from bench.data.format import BONES, Dataset
from bench.errors import BenchError
from bench.predict import json_safe
from bench.registry import Stage
from bench.stage import StageContext, derive_seed
from methods.segmentation.config import SegmentationConfig  # importing it registers the section
from methods.segmentation.data import SegData, choose_canvas, load_split, manifest_sides
from methods.segmentation.predict import entropy_png, predict_many, save_model
from methods.segmentation.scoring import detection_summary, flat_metrics, score_images, summarize
from methods.segmentation.train import train_segmentation

ROLES = ("seg", "cls")
UNLEARNT_DICE = 0.5   # a bone below this mean Dice against the annotators is reported as not learnt


def _write_png(path: Path, array: np.ndarray) -> None:
    from bench.data.imageio import write_label_map

    path.parent.mkdir(parents=True, exist_ok=True)
    write_label_map(path, array)


def out_of_memory(cfg: SegmentationConfig, canvas: tuple[int, int]) -> BenchError:
    """What to do when a training step does not fit the device: halve the micro-batch."""
    per_pass = min(cfg.micro_batch or cfg.batch_size, cfg.batch_size)
    samples = cfg.experts * cfg.samples if cfg.model == "mose" else 1
    if per_pass == 1:
        advice = ("lower segmentation.working_size or segmentation.samples, or use a device with more memory")
    else:
        advice = (f"run with --set segmentation.micro_batch={max(1, per_pass // 2)} (gradient accumulation over "
                  "the same batch; `bench perf seg --set segmentation.micro_batch=N` prints each choice's peak memory)")
    return BenchError(f"the segmentation training ran out of device memory with {per_pass} images x {samples} "
                      f"samples per pass on a {canvas[0]}x{canvas[1]} canvas: {advice}")


def predict_dataset(model: torch.nn.Module, dataset: Dataset, role: str, out_dir: Path, *, batch_size: int,
                    draws: int = 0, keep: set[str] = frozenset()
                    ) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """Write labels, uncertainty and confidence of every image (`draws` latent draws per expert, 0: the
    training S); return for the images of `keep` their label maps, the side each was segmented as
    (the manifest's, or for an unknown side the one a canonical-laterality model detected), and, for
    those whose manifest states a side, the side the model finds when not told (predict_many's `detect`)."""
    ids = dataset.image_ids
    conf_rows, unc_rows, kept, used, found = [], [], {}, {}, {}
    images = (dataset.image(i) for i in ids)
    sides = manifest_sides(dataset)
    for image_id, pred in zip(ids, predict_many(model, images, batch_size=batch_size, samples=draws,
                                                laterality=[sides[i] for i in ids],
                                                detect=[i in keep for i in ids])):
        _write_png(out_dir / "labels" / role / f"{image_id}.png", pred.labels)
        _write_png(out_dir / "uncertainty" / role / f"{image_id}.png", entropy_png(pred.entropy))
        for bone in BONES:
            conf_rows.append({"image_id": image_id, "bone": bone, "confidence": pred.confidence[bone],
                              "area_px": pred.area_px[bone], "present": pred.area_px[bone] > 0})
        unc_rows.append({"image_id": image_id, "mean_entropy": float(pred.entropy.mean()),
                         "mean_mutual_info": float(pred.mutual_info.mean())})
        if image_id in keep:
            kept[image_id], used[image_id] = pred.labels, pred.laterality
            if sides[image_id] and pred.detected:
                found[image_id] = pred.detected
    (out_dir / "confidence").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(conf_rows, columns=["image_id", "bone", "confidence", "area_px", "present"]).to_parquet(
        out_dir / "confidence" / f"{role}.parquet", index=False)
    pd.DataFrame(unc_rows, columns=["image_id", "mean_entropy", "mean_mutual_info"]).to_parquet(
        out_dir / "uncertainty" / f"{role}.parquet", index=False)
    return kept, used, found


def rescore_detected_sides(dataset: Dataset, evals: dict[str, SegData], used: dict[str, str],
                           canvas: tuple[int, int], device: torch.device, annotators: Sequence[str],
                           canonical: bool) -> dict[str, SegData]:
    """The evaluation splits on the canvas their label maps came from: an image of unknown side that a
    canonical-laterality model segmented as a left hand is reloaded mirrored, so its GED, Hungarian IoU
    and ECE are those of `bench evaluate-seg` (methods.segmentation.external), which does the same."""
    if not canonical:
        return evals
    sides = manifest_sides(dataset)
    out = {}
    for split, data in evals.items():
        if any(used.get(i, "") == "L" and not sides.get(i) for i in data.image_ids):
            data = load_split(dataset, [], canvas, device, annotators, allow_empty=True, canonical=True,
                              image_ids=data.image_ids, sides={**sides, **used})
        out[split] = data
    return out


def evaluate_split(model: torch.nn.Module, dataset: Dataset, data: SegData, labels: dict[str, np.ndarray],
                   cfg: SegmentationConfig, seed: int, found: dict[str, str]) -> dict[str, Any]:
    """Dice (truth, annotators), GED, Hungarian IoU and pixel ECE of one split (module docstring);
    `found`: image id -> the side detected without being told (predict_dataset)."""
    scores, bins = score_images(model, dataset, data, labels, batch_size=cfg.predict_batch,
                                eval_samples=cfg.eval_samples, seed=seed)
    out = summarize(scores, bins)
    if model.spec.canonical_laterality:
        out["laterality_detection"] = detection_summary({i: found[i] for i in data.image_ids if i in found}, dataset)
    return out


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


def write_figures(out_dir: Path, dataset: Dataset, ids: list[str], labels: dict[str, np.ndarray],
                  role: str) -> list[str]:
    """image | label overlay | entropy for each of `ids` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    cmap = plt.get_cmap("tab10")
    written = []
    for image_id in ids:
        img = dataset.image(image_id)
        lab = labels[image_id]
        ent = np.asarray(Image.open(out_dir / "uncertainty" / role / f"{image_id}.png"))
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


def segment_stage(ctx: StageContext) -> dict[str, Any]:
    """Train the configured segmentation model and write the outputs listed in the module docstring."""
    cfg: SegmentationConfig = ctx.config.segmentation
    cfg.validate()
    seg = ctx.datasets["seg"]
    annotators = cfg.annotator_list
    train_ids = seg.manifest.loc[seg.manifest["split"] == "train", "image_id"].astype(str).tolist()
    canvas = choose_canvas(seg, train_ids, cfg.working_size, cfg.canvas_aspect)
    canonical = cfg.canonical_laterality
    train = load_split(seg, ["train"], canvas, ctx.device, annotators, canonical=canonical)
    val = load_split(seg, ["val"], canvas, ctx.device, annotators, allow_empty=True, canonical=canonical)
    try:
        result = train_segmentation(cfg, train, val if len(val) else None, seed=ctx.seed, device=ctx.device,
                                    log=ctx.log, progress=sys.stderr.isatty(), resume=ctx.resumer())
    except torch.cuda.OutOfMemoryError as exc:
        raise out_of_memory(cfg, canvas) from exc
    model = result.model
    train_info = {"best_epoch": result.best_epoch, "best_val_ged": result.best_val_ged,
                  "epochs": result.epochs, "seconds_per_epoch": result.seconds_per_epoch,
                  "canvas": list(canvas), "n_train": len(train), "n_val": len(val),
                  "annotators": train.annotators, "model": cfg.model, "compile": result.compile}
    save_model(model, ctx.out_dir / "model.pt", extra={"train": train_info})
    evals = {s: val if s == "val" else load_split(seg, [s], canvas, ctx.device, annotators, allow_empty=True,
                                                  canonical=canonical)
             for s in cfg.split_list}
    keep = {i for d in evals.values() for i in d.image_ids}
    labels: dict[str, np.ndarray] = {}
    used: dict[str, str] = {}
    found: dict[str, str] = {}
    for role in ROLES:
        if role not in ctx.datasets:
            continue
        got, segmented_as, detected = predict_dataset(model, ctx.datasets[role], role, ctx.out_dir,
                                                      batch_size=cfg.predict_batch, draws=cfg.predict_draws,
                                                      keep=keep if role == "seg" else set())
        labels.update(got)
        used.update(segmented_as)
        found.update(detected)
    evals = rescore_detected_sides(seg, evals, used, canvas, ctx.device, annotators, canonical)
    draws = (cfg.predict_draws or model.spec.samples) if model.spec.kind == "mose" else 1
    report: dict[str, Any] = {"train": train_info, "predict_draws": draws, "splits": {}}
    for split, data in evals.items():
        if not len(data):
            continue
        res = evaluate_split(model, seg, data, labels, cfg, derive_seed(ctx.seed, "segmentation", "eval", split),
                             found)
        report["splits"][split] = res
        for name, value in flat_metrics(split, res).items():
            ctx.log(name, value)
    report["unlearnt_bones"] = unlearnt_bones(report)
    if report["unlearnt_bones"]:
        warnings.warn(f"segmentation: {', '.join(report['unlearnt_bones'])} not learnt (Dice against the annotators "
                      f"< {UNLEARNT_DICE} on the {next(iter(report['splits']))} split); their bone patches will be "
                      "missing or wrong. Check the masks, train longer or keep the CE term "
                      "(segmentation.ce_weight > 0)", stacklevel=2)
    (ctx.out_dir / "eval.json").write_text(json.dumps(json_safe(report), indent=2, sort_keys=True))
    fig_split = next((s for s in reversed(list(evals)) if len(evals[s])), None)
    figures = write_figures(ctx.out_dir, seg, evals[fig_split].image_ids[:cfg.figures], labels, "seg") \
        if fig_split and cfg.figures > 0 else []
    summary = {"best_epoch": result.best_epoch, "best_val_ged": result.best_val_ged,
               "unlearnt_bones": report["unlearnt_bones"],
               "seconds_per_epoch": result.seconds_per_epoch, "figures": figures}
    for split, res in report["splits"].items():
        summary[f"{split}_ged"] = res["ged"]
        if res["dice_truth"]:
            summary[f"{split}_dice_truth_mean"] = res["dice_truth"]["mean"]
    return json_safe(summary)


SEGMENT = Stage("segment", segment_stage, sections=("segmentation", "run"), datasets=("seg", "cls"),
                splits=("seg",))   # trained and evaluated on the `seg` splits; predicts every `cls` image
