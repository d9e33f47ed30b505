"""The `extract` and `extract_raw` stages: bone patch stores of both datasets (issue 4, deliverable 7).

``extract`` reads the label maps chosen by ``patches.source``:

* ``predicted`` (default): the segment stage's ``labels/<role>/<image_id>.png`` and the per-bone
  confidences of ``confidence/<role>.parquet``;
* ``annotator``: the dataset's own masks, of ``patches.annotator`` or, when empty, of the
  annotator with the largest weight β for that image (an oracle ablation; needs masks everywhere);
* ``truth``: the phantom's exact masks ``truth/masks/<image_id>.png`` (phantom datasets only).

``extract_raw`` is the no-segmentation ablation (paper Table 4): ``patches.raw_count`` random
crops of the raw radiograph, drawn from a generator seeded by (run seed, stage, role, image_id),
so an image's patches do not depend on which other images are in the dataset.

Both write one :mod:`methods.patch_store` store into the stage folder (rows of the `seg` dataset
first, then `cls`; images in manifest order; bones in class-id order). Images are read and cut in
threads (bench.parallel); the store is the same for any number of threads. Their companion
``patch_sheet`` (bench.registry.Stage.companions) draws the contact sheet ``figures/patches.png`` of
the store (as paper Fig. 3, top: radiograph with the coloured crop squares, then the patches; missing
bones are labelled with their reason), so ``patches.figure_images`` keys the sheet alone and never
the patches or the pretraining that reads them.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from bench.data.format import BONES, Dataset
from bench.data.imageio import read_label_map
from bench.errors import BenchError
from bench.parallel import thread_map
from bench.stage import StageContext
from methods.bones import BonePatch, PatchConfig, extract_bones, random_patches
from methods.patch_store import PatchStore, StoreWriter

ROLES = ("seg", "cls")
LabelSource = Callable[[str], tuple[np.ndarray, Mapping[str, float] | None]]


def image_info(dataset: Dataset, role: str) -> Iterator[dict[str, Any]]:
    """Per manifest row: the store's image keys plus the pixel spacing and the image size columns."""
    for rec in dataset.manifest.to_dict("records"):
        spacing = rec.get("pixel_spacing_mm")
        yield {"image_id": str(rec["image_id"]), "subject_id": str(rec["subject_id"]), "role": role,
               "split": str(rec["split"]), "label": rec["label"],
               "pixel_spacing_mm": float(spacing) if spacing is not None and pd.notna(spacing) else float("nan")}


def label_source(ctx: StageContext, cfg: PatchConfig, role: str, dataset: Dataset) -> LabelSource:
    """image_id → (label map, bone confidences or None), per ``patches.source`` (module docstring)."""
    if cfg.source == "predicted":
        seg_dir = ctx.inputs.get("segment")
        if seg_dir is None:
            raise BenchError("patches.source=predicted needs the segment stage's output; this entry has no "
                             "`segment` stage before `extract` (or set patches.source=annotator|truth)")
        conf_path = Path(seg_dir) / "confidence" / f"{role}.parquet"
        conf: dict[str, dict[str, float]] = {}
        if conf_path.is_file():
            frame = pd.read_parquet(conf_path)
            for image_id, group in frame.groupby("image_id", sort=False):
                conf[str(image_id)] = dict(zip(group["bone"].astype(str), group["confidence"].astype(float)))

        def predicted(image_id: str) -> tuple[np.ndarray, Mapping[str, float] | None]:
            path = Path(seg_dir) / "labels" / role / f"{image_id}.png"
            if not path.is_file():
                raise BenchError(f"the segment stage output {seg_dir} has no label map for {role} image "
                                 f"{image_id!r} ({path}); it is incomplete: clear it and rerun")
            return read_label_map(path), conf.get(image_id)
        return predicted

    if cfg.source == "truth":
        def truth(image_id: str) -> tuple[np.ndarray, Mapping[str, float] | None]:
            path = Path(dataset.root) / "truth" / "masks" / f"{image_id}.png"
            if not path.is_file():
                raise BenchError(f"patches.source=truth needs exact masks, but {path} does not exist "
                                 f"(only phantom datasets have truth/); use patches.source=predicted or annotator")
            return read_label_map(path), None
        return truth

    def annotator(image_id: str) -> tuple[np.ndarray, Mapping[str, float] | None]:
        weights = dataset.annotator_weights(image_id)
        if not weights:
            raise BenchError(f"patches.source=annotator needs masks for every image, but {role} image "
                             f"{image_id!r} of {dataset.root} has none; use patches.source=predicted")
        name = cfg.annotator or max(weights, key=lambda a: (weights[a], a))
        if name not in weights:
            raise BenchError(f"{role} image {image_id!r} has no mask of annotator {name!r} "
                             f"(it has {', '.join(sorted(weights))}); set patches.annotator to one of them or empty")
        return dataset.masks(image_id)[name], None
    return annotator


def _progress(items: Iterable, desc: str, total: int | None = None):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc=desc, total=total, disable=not sys.stderr.isatty(), leave=False)


def _run(ctx: StageContext, per_image: Callable[[str, Dataset, dict[str, Any]], list[BonePatch]],
         n_per_image: int, kind: str) -> dict[str, Any]:
    """Stream every image of both datasets through `per_image` into the store in ctx.out_dir."""
    cfg: PatchConfig = ctx.config.section("patches")
    cfg.validate()
    roles = [r for r in ROLES if r in ctx.datasets]
    infos = [(role, info) for role in roles for info in image_info(ctx.datasets[role], role)]
    with StoreWriter(ctx.out_dir, cfg.patch_size, n_per_image * len(infos)) as writer:
        patches = thread_map(lambda item: per_image(item[0], ctx.datasets[item[0]], item[1]), infos)
        for (role, info), found in zip(infos, _progress(patches, kind, len(infos))):
            writer.add(info, found)
        store = writer.close({"kind": kind, "source": cfg.source if kind == "bones" else "raw",
                              "roles": roles})
    index = store.index
    summary: dict[str, Any] = {"patches": len(index), "present": int((~index["missing"]).sum()),
                               "patch_size": cfg.patch_size}
    for role in roles:
        rows = index[index["role"] == role]
        if len(rows):
            summary[f"{role}_missing_fraction"] = float(rows["missing"].mean())
            summary[f"{role}_mean_coverage"] = float(rows.loc[~rows["missing"], "coverage"].mean())
            ctx.log(f"{role}_missing_fraction", summary[f"{role}_missing_fraction"])
            ctx.log(f"{role}_mean_coverage", summary[f"{role}_mean_coverage"])
    summary["missing_by_reason"] = store.meta["missing_by_reason"]
    return summary


def patch_sheet_stage(ctx: StageContext) -> dict[str, Any]:
    """``figures/patches.png`` of the store its one input (extract or extract_raw) wrote (module docstring)."""
    cfg: PatchConfig = ctx.config.section("patches")
    (source,) = ctx.inputs.values()
    store = PatchStore.open(source)
    shown = cfg.figure_images if len(store.index) else 0
    if shown > 0:
        write_contact_sheet(store, ctx.datasets, ctx.out_dir / "figures" / "patches.png", shown)
    return {"figure_images": shown}


def extract_stage(ctx: StageContext) -> dict[str, Any]:
    """Seven bone patches per radiograph from the chosen label maps (module docstring)."""
    cfg: PatchConfig = ctx.config.section("patches")
    sources = {role: label_source(ctx, cfg, role, ctx.datasets[role]) for role in ROLES if role in ctx.datasets}

    def per_image(role: str, dataset: Dataset, info: dict[str, Any]) -> list[BonePatch]:
        image = dataset.image(info["image_id"])
        labels, conf = sources[role](info["image_id"])
        if labels.shape != image.shape:
            raise BenchError(f"label map of {role} image {info['image_id']!r} is {labels.shape} but the image is "
                             f"{image.shape}; label maps must be at native resolution")
        return extract_bones(image, labels, conf, cfg, info["pixel_spacing_mm"])

    return _run(ctx, per_image, len(BONES), "bones")


def extract_raw_stage(ctx: StageContext) -> dict[str, Any]:
    """``patches.raw_count`` random raw crops per radiograph, no segmentation (paper Table 4)."""
    cfg: PatchConfig = ctx.config.section("patches")

    def per_image(role: str, dataset: Dataset, info: dict[str, Any]) -> list[BonePatch]:
        rng = ctx.rng(f"{role}/{info['image_id']}")
        return random_patches(dataset.image(info["image_id"]), cfg.raw_count, rng=rng,
                              patch_size=cfg.patch_size, scale=tuple(cfg.raw_scale))

    return _run(ctx, per_image, cfg.raw_count, "raw")


def write_contact_sheet(store: PatchStore, datasets: Mapping[str, Dataset], path: Path, n_images: int) -> None:
    """Radiograph with coloured crop squares, then its patches, for the first `n_images` images
    (of `cls` when it has any, else `seg`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from bench.atomic import atomic_write_bytes

    index = store.index
    role = "cls" if (index["role"] == "cls").any() else str(index["role"].iloc[0])
    index = index[index["role"] == role]
    ids = list(dict.fromkeys(index["image_id"]))[:n_images]
    per = int(index.groupby("image_id", sort=False).size().max())
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(ids), per + 1, figsize=(1.6 * (per + 1), 1.9 * len(ids)), squeeze=False)
    for r, image_id in enumerate(ids):
        rows = index[index["image_id"] == image_id]
        ax = axes[r, 0]
        ax.imshow(datasets[role].image(image_id), cmap="gray", vmin=0, vmax=1)
        ax.set_title(image_id, fontsize=6)
        for c, (_, row) in enumerate(rows.iterrows()):
            colour = cmap(c % 10)
            if row["crop_x0"] != -1 and not row["missing"]:
                ax.add_patch(Rectangle((row["crop_x0"] - 0.5, row["crop_y0"] - 0.5), row["crop_x1"] - row["crop_x0"],
                                       row["crop_y1"] - row["crop_y0"], fill=False, lw=0.8, ec=colour))
            pax = axes[r, c + 1]
            pax.imshow(store.array[int(row["row"])], cmap="gray", vmin=0, vmax=65535)
            title = f"{row['bone']}: {row['reason']}" if row["missing"] else f"{row['bone']} {row['coverage']:.0%}"
            pax.set_title(title, fontsize=6, color=colour if not row["missing"] else "red")
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
