"""`radiogrammetry` baseline (beyond the paper): automatic 2MCI + logistic regression.

The classical reference the paper's premise rests on: cortical thinning of the metacarpals and
the distal radius measured on the radiograph (baselines.cortical). For every `cls` image the
label maps chosen by ``radiogrammetry.source`` (the segment stage's predictions by default; the
annotators' masks or the phantom's exact masks as oracles) give each bone's axis; 2MCI of
``radiogrammetry.bones`` is measured from the intensity profiles; a logistic regression on the
per-bone indices (baselines.logistic: C chosen on validation macro-F1) predicts osteoporosis.

Outputs: ``measurements.parquet`` (one row per image and bone), ``subject_2mci.csv`` (one row per
subject: split, y_true, the per-bone 2MCI and their mean ``mci``), ``predictions.parquet``
(subject level). On a phantom (``truth/bones.csv`` present) the Pearson correlation of the measured
and the true cortical index is logged (``truth_r_bone`` pooled over bones, ``truth_r_<bone>`` per
bone, ``truth_r_subject`` of the per-subject means over the same bones) and written to
``truth_check.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from bench.config import register_section
from bench.errors import BenchError
from bench.parallel import thread_map
from bench.stage import StageContext
from baselines.common import check_bone_names, check_c_grid
from baselines.cortical import measure_bone
from baselines.logistic import C_GRID, fit_logistic
from methods.extract import label_source


@dataclass
class RadiogrammetryConfig:
    """Automatic radiogrammetry (2MCI) and its logistic regression."""

    source: Literal["predicted", "annotator", "truth"] = "predicted"  # label maps: segment stage | dataset masks | phantom truth
    annotator: str = ""                        # with source=annotator: whose masks (empty: largest weight β)
    bones: tuple[str, ...] = ("M2", "M3", "M4", "radius")  # bones measured (names of bench.data.BONES)
    metacarpal_fraction: float = 0.5           # metacarpal measurement point along the axis (0 proximal, 1 distal)
    radius_offset_mm: float = 45.0             # radius/ulna measurement point: this far proximal of the distal end
    profiles: int = 9                          # perpendicular intensity profiles averaged per bone
    window_mm: float = 8.0                     # axial span covered by the profiles
    step_px: float = 0.25                      # sampling step along a profile (native pixels)
    outer_edge: Literal["intensity", "mask"] = "intensity"  # periosteal edges: gradient extrema | mask boundary
    margin_mm: float = 1.0                     # outer edges are searched this far beyond the mask boundary
    smooth_mm: float = 0.2                     # Gaussian σ on the averaged profile before its gradient (0: none)
    c_grid: tuple[float, ...] = C_GRID          # inverse regularisation strengths tried

    def validate(self) -> None:
        check_bone_names("radiogrammetry.bones", self.bones)
        check_c_grid("radiogrammetry.c_grid", self.c_grid)
        if self.profiles < 1 or self.step_px <= 0 or self.window_mm < 0 or self.smooth_mm < 0:
            raise BenchError("radiogrammetry.profiles must be >= 1, step_px > 0, window_mm >= 0 and smooth_mm >= 0")


register_section("radiogrammetry", RadiogrammetryConfig)


def measure_dataset(ctx: StageContext, cfg: RadiogrammetryConfig, role: str = "cls") -> pd.DataFrame:
    """One row per (image, bone): 2MCI, outer and medullary width (mm), measurement point (images in
    threads, bench.parallel; rows in manifest order)."""
    dataset = ctx.datasets[role]
    source = label_source(ctx, cfg, role, dataset)  # type: ignore[arg-type]  # needs .source, .annotator
    def one(rec: dict) -> list[dict]:
        image_id = str(rec["image_id"])
        spacing = float(rec["pixel_spacing_mm"])
        if not np.isfinite(spacing) or spacing <= 0:
            raise BenchError(f"{role} image {image_id!r} has no pixel_spacing_mm in its manifest; radiogrammetry "
                             "measures in millimetres: fill the column (mm per pixel)")
        image = dataset.image(image_id)
        labels, _ = source(image_id)
        if labels.shape != image.shape:
            raise BenchError(f"label map of {role} image {image_id!r} is {labels.shape}, the image {image.shape}")
        rows = []
        for bone in cfg.bones:
            m = measure_bone(image, labels, bone, spacing, metacarpal_fraction=cfg.metacarpal_fraction,
                             radius_offset_mm=cfg.radius_offset_mm, profiles=cfg.profiles,
                             window_mm=cfg.window_mm, step_px=cfg.step_px, outer_edge=cfg.outer_edge,
                             margin_mm=cfg.margin_mm, smooth_mm=cfg.smooth_mm)
            rows.append({"image_id": image_id, "subject_id": str(rec["subject_id"]), "split": str(rec["split"]),
                         "label": rec["label"], "bone": bone, "cortical_index": m.cortical_index,
                         "outer_mm": m.outer_mm, "inner_mm": m.inner_mm, "profiles": m.profiles,
                         "row": m.row, "col": m.col})
        return rows

    rows = [row for found in thread_map(one, dataset.manifest.to_dict("records")) for row in found]
    return pd.DataFrame(rows)


def subject_table(measurements: pd.DataFrame, bones: tuple[str, ...]) -> pd.DataFrame:
    """Per subject: split, y_true, 2MCI of each bone (mean over the subject's images) and their mean."""
    wide = measurements.pivot_table(index="subject_id", columns="bone", values="cortical_index",
                                    aggfunc="mean", dropna=False).reindex(columns=list(bones))
    meta = measurements.groupby("subject_id").agg(split=("split", "first"), y_true=("label", "max"))
    table = meta.join(wide).reset_index()
    table["mci"] = table[list(bones)].mean(axis=1, skipna=True)
    table["y_true"] = pd.to_numeric(table["y_true"], errors="coerce").astype("Int64")
    return table


def truth_correlation(measurements: pd.DataFrame, root: Path) -> dict[str, float] | None:
    """Pearson r of measured vs true cortical index (phantom only; None without truth/bones.csv)."""
    path = Path(root) / "truth" / "bones.csv"
    if not path.is_file():
        return None
    truth = pd.read_csv(path, dtype={"image_id": str})[["image_id", "bone", "cortical_index"]]
    both = measurements.merge(truth.rename(columns={"cortical_index": "truth"}), on=["image_id", "bone"])
    both = both.dropna(subset=["cortical_index", "truth"])
    if len(both) < 3:
        return None
    per_subject = both.groupby("subject_id")[["cortical_index", "truth"]].mean()
    out = {"truth_r_bone": float(np.corrcoef(both["cortical_index"], both["truth"])[0, 1]),
           "truth_r_subject": float(np.corrcoef(per_subject["cortical_index"], per_subject["truth"])[0, 1]),
           "truth_bias": float((both["cortical_index"] - both["truth"]).mean()), "truth_n": int(len(both))}
    for bone, part in both.groupby("bone", sort=False):        # each bone's own r (truth_r_M2, ...)
        if len(part) >= 3:
            out[f"truth_r_{bone}"] = float(np.corrcoef(part["cortical_index"], part["truth"])[0, 1])
    return out


def radiogrammetry_stage(ctx: StageContext) -> dict:
    """Stage `radiogrammetry`: measure 2MCI on every `cls` image, fit and apply the logistic regression."""
    cfg: RadiogrammetryConfig = ctx.config.section("radiogrammetry")
    cfg.validate()
    if not ctx.datasets["cls"].has_labels:
        raise BenchError("the `cls` dataset has no labels; the radiogrammetry baseline needs DXA labels")
    measurements = measure_dataset(ctx, cfg)
    measurements.to_parquet(ctx.out_dir / "measurements.parquet", index=False)
    table = subject_table(measurements, tuple(cfg.bones))
    table.to_csv(ctx.out_dir / "subject_2mci.csv", index=False)
    fit = fit_logistic(table, list(cfg.bones), cfg.c_grid, ctx.log)
    table[["subject_id", "split", "y_true"]].assign(p_pos=fit.p_pos).to_parquet(
        ctx.out_dir / "predictions.parquet", index=False)
    metrics = {"C": fit.c, "mean_2mci": float(table["mci"].mean()),
               "measured_fraction": float(measurements["cortical_index"].notna().mean())}
    for bone in cfg.bones:
        metrics[f"mean_2mci_{bone}"] = float(table[bone].mean())
    check = truth_correlation(measurements, ctx.datasets["cls"].root)
    if check is not None:
        metrics.update(check)
        (ctx.out_dir / "truth_check.json").write_text(json.dumps(check, indent=2))
    for key, value in metrics.items():
        ctx.log(key, value)
    return {"metrics": metrics}
