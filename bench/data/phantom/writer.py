"""Write a phantom dataset folder (DESIGN.md "Data contracts"), atomically.

    manifest.csv                    MANIFEST_COLUMNS + height, width, n_bones, preset
    images/<image_id>.png           16-bit radiographs, bone bright
    masks/<image_id>/<a>.png        annotator label maps (classes of bench.data.BONES)
    annotators.csv                  image_id, annotator, weight (beta, sums to 1 per image)
    dataset.json                    name, kind "phantom", preset, profile, seed, generator version,
                                    pixel spacing, image size, signal, oracle AUC, class names, ...
    truth/masks/<image_id>.png      exact label maps
    truth/bones.csv                 latent per-bone parameters, presence
    truth/subjects.csv              subject and nuisance parameters
    truth/annotations.csv           each annotator's choices per image

Randomness: subject i, its nuisance, texture, noise and annotations come from generators
seeded by SeedSequence([seed, preset code, stream, i]), so the same seed gives the same bytes,
and a smoke dataset's first subjects are those of the larger profiles of the same seed.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from bench.atomic import atomic_dir
from bench.data.format import CLASS_NAMES, mask_path, write_manifest
from bench.data.imageio import write_label_map, write_png16
from bench.data.phantom.annotators import (Annotation, AnnotatorStyle, annotator_styles, draw_annotations,
                                           label_map)
from bench.data.phantom.imaging import Rendering, render_subject
from bench.data.phantom.nuisance import Nuisance, sample_nuisance
from bench.data.phantom.presets import GENERATOR_VERSION, PhantomConfig
from bench.data.phantom.subject import TARGETS, Subject, oracle_auc, sample_subject
from bench.data.splits import assign_splits
from bench.errors import BenchError
from bench.hardware import usable_cores

PRESET_CODE = {"public": 1, "clinical": 2}
#: latent subjects behind the recorded oracle AUC: 20,000 move it by about +-0.001 between seeds
#: (2,000 moved it by +-0.015) for 0.2 s a synthesis
ORACLE_N = 20000


def _rng(seed: int, config: PhantomConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, PRESET_CODE[config.preset], *stream]))


@dataclass
class Case:
    """One generated image with everything known about it."""

    image_id: str
    subject: Subject
    nuisance: Nuisance
    rendering: Rendering
    annotations: list[Annotation]


def make_case(config: PhantomConfig, seed: int, index: int, styles: list[AnnotatorStyle]) -> Case:
    """Sample subject `index` of the dataset `seed`, its acquisition, and render it."""
    subject = sample_subject(config, _rng(seed, config, 1, index), f"{config.subject_prefix}-{index + 1:05d}")
    rng = _rng(seed, config, 2, index)
    nuisance = sample_nuisance(config, subject, rng)
    rendering = render_subject(config, subject, nuisance, rng)
    annotations = draw_annotations(styles, _rng(seed, config, 3, index))
    return Case(f"{subject.subject_id}-1", subject, nuisance, rendering, annotations)


def dataset_styles(config: PhantomConfig, seed: int) -> list[AnnotatorStyle]:
    return annotator_styles(config.annotators, _rng(seed, config, 0), config.head_exclusion)


def _progress(iterable, total: int, enabled: bool, desc: str):
    if enabled and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            return tqdm(iterable, total=total, desc=desc, leave=False)
        except ImportError:   # pragma: no cover
            pass
    return iterable


@dataclass
class CaseRecords:
    """The table rows one written case contributes (manifest, subjects, bones, annotators)."""

    row: dict
    subject: dict
    bones: list[dict]
    weights: list[dict]
    notes: list[dict]


def write_case(cfg: PhantomConfig, seed: int, index: int, styles: list[AnnotatorStyle], folder: Path) -> CaseRecords:
    """Render case `index` and write its image, exact and annotator label maps into `folder`."""
    case = make_case(cfg, seed, index, styles)
    r, subj, nz, iid = case.rendering, case.subject, case.nuisance, case.image_id
    write_png16(folder / "images" / f"{iid}.png", r.image)
    write_label_map(folder / "truth" / "masks" / f"{iid}.png", r.truth)
    (folder / "masks" / iid).mkdir()
    weights, notes = [], []
    for a in case.annotations:
        lm = label_map((cfg.height, cfg.width), r.bones, cfg.pixel_spacing_mm, r.field, a)
        write_label_map(mask_path(folder, iid, a.style.name), lm)
        weights.append(dict(image_id=iid, annotator=a.style.name, weight=a.weight))
        notes.append(dict(image_id=iid, annotator=a.style.name, weight=a.weight,
                          offset_mm=round(a.offset_mm, 4), exclude_head=a.exclude_head,
                          smoothing_mm=round(a.style.smoothing_mm, 4),
                          ripple_mm=round(a.style.ripple_mm, 4)))
    n_bones = int(sum(r.present.values()))
    row = dict(image_id=iid, subject_id=subj.subject_id, path=f"images/{iid}.png",
               sex=subj.sex if cfg.labeled else None, age=subj.age if cfg.labeled else None,
               t_score=round(subj.t_score, 3) if cfg.labeled else None,
               label=int(round(subj.t_score, 3) < -2.5) if cfg.labeled else None,
               laterality=nz.pose.laterality, pixel_spacing_mm=cfg.pixel_spacing_mm,
               site=nz.site, height=cfg.height, width=cfg.width, n_bones=n_bones,
               preset=cfg.preset)
    subject = dict(subject_id=subj.subject_id, image_id=iid, sex=subj.sex, age=subj.age,
                   t_score=round(subj.t_score, 3), label=int(round(subj.t_score, 3) < -2.5),
                   size=round(subj.size, 4), n_bones=n_bones, **nz.summary())
    pixels = r.extra["pixels"]
    bones = []
    for k, name in enumerate(TARGETS):
        b = subj.bone(name)
        reason = nz.missing_reason if name == nz.missing_bone else ("" if r.present[name] else "out_of_field")
        bones.append(dict(image_id=iid, subject_id=subj.subject_id, bone=name, class_id=k + 1,
                          cortical_index=round(b["cortical_index"], 5),
                          trabecular_density=round(b["trabecular_density"], 5),
                          outer_diameter_mm=round(b["outer_diameter_mm"], 4),
                          inner_diameter_mm=round(b["outer_diameter_mm"] * (1 - b["cortical_index"]), 4),
                          length_mm=round(b["length_mm"], 3), present=bool(r.present[name]),
                          pixels=pixels[name], missing_reason=reason))
    return CaseRecords(row, subject, bones, weights, notes)


def _write_case_star(args: tuple) -> CaseRecords:
    return write_case(*args)


def default_workers(n_images: int) -> int:
    """Processes for `n_images`: every usable core, one per 32 images at least (small sets in-process)."""
    return max(1, min(usable_cores(), n_images // 32))


def written_cases(cfg: PhantomConfig, seed: int, styles: list[AnnotatorStyle], folder: Path,
                  workers: int) -> Iterator[CaseRecords]:
    """Every case written into `folder`, its records yielded in index order; with `workers` > 1 the
    cases render in that many processes (:func:`worker_context`; each case depends on (seed, index)
    only, so the bytes do not depend on the number of workers)."""
    jobs = ((cfg, seed, i, styles, folder) for i in range(cfg.n_images))
    context = worker_context()
    if workers <= 1 or context is None:
        yield from map(_write_case_star, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(_write_case_star, jobs, chunksize=max(1, min(8, cfg.n_images // (4 * workers))))


def worker_context() -> multiprocessing.context.BaseContext | None:
    """How rendering workers start: forked on Linux (like torch's DataLoader workers: no main-module
    guard needed, the children only render with numpy/scipy and write PNGs), spawned elsewhere; None
    (render in this process) when a spawned worker could not re-import the main script (stdin)."""
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return multiprocessing.get_context("spawn") if main_file is None or os.path.isfile(main_file) else None


def synthesize(out: str | Path, preset: str = "public", profile: str = "smoke", seed: int = 0,
               config: PhantomConfig | None = None, overwrite: bool = False,
               progress: bool = False, workers: int = 1) -> Path:
    """Generate a phantom dataset into `out` (atomically) and return the folder.

    `config` overrides `preset`/`profile` (build one with PhantomConfig.for_preset(...).replace()).
    An existing `out` is refused unless `overwrite`. `workers` processes render the images (the
    output is the same for any number); `bench run` and `bench data synth` use
    :func:`default_workers` (all cores at the quick and paper sizes). Off Linux the workers are
    spawned, so a script of your own asking for more than one needs ``if __name__ == "__main__":``.
    """
    cfg = config if config is not None else PhantomConfig.for_preset(preset, profile)
    cfg.validate()
    out = Path(out)
    if out.exists() and not overwrite:
        raise BenchError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    if workers < 0:
        raise BenchError(f"phantom workers = {workers} must be >= 0 (0 or 1: in this process)")
    styles = dataset_styles(cfg, seed)
    auc = oracle_auc(cfg, ORACLE_N, seed)
    rows, bones, subjects, notes, weights = [], [], [], [], []
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for sub in ("images", "masks", "truth/masks"):
            (tmp / sub).mkdir(parents=True)
        cases = written_cases(cfg, seed, styles, tmp, workers)
        for rec in _progress(cases, cfg.n_images, progress, f"phantom {cfg.preset}"):
            rows.append(rec.row)
            subjects.append(rec.subject)
            bones.extend(rec.bones)
            weights.extend(rec.weights)
            notes.extend(rec.notes)
        manifest = pd.DataFrame(rows)
        split_seed = cfg.split_seed if cfg.split_seed is not None else seed
        manifest["split"] = assign_splits(manifest, split_seed)
        write_manifest(manifest, tmp / "manifest.csv")
        pd.DataFrame(weights).to_csv(tmp / "annotators.csv", index=False, lineterminator="\n")
        pd.DataFrame(notes).to_csv(tmp / "truth" / "annotations.csv", index=False, lineterminator="\n")
        pd.DataFrame(bones).to_csv(tmp / "truth" / "bones.csv", index=False, lineterminator="\n")
        pd.DataFrame(subjects).to_csv(tmp / "truth" / "subjects.csv", index=False, lineterminator="\n")
        meta = dict(
            name=f"phantom-{cfg.preset}-{cfg.profile}-seed{seed}", kind="phantom", preset=cfg.preset,
            profile=cfg.profile, seed=seed, split_seed=split_seed, generator_version=GENERATOR_VERSION,
            pixel_spacing_mm=cfg.pixel_spacing_mm, image_size=dict(height=cfg.height, width=cfg.width),
            field_of_view_mm=dict(height=round(cfg.field_mm[0], 3), width=round(cfg.field_mm[1], 3)),
            n_images=cfg.n_images, labeled=cfg.labeled, signal=cfg.signal, prevalence=cfg.prevalence,
            oracle_auc=round(auc, 4), oracle_auc_n_subjects=ORACLE_N,
            oracle_auc_definition="5-fold CV logistic regression on the true cortical index and "
                                  "trabecular density of the seven target bones (latent model, no images)",
            class_names=list(CLASS_NAMES), annotators=[dataclasses.asdict(s) for s in styles],
            config=dataclasses.asdict(cfg),
        )
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out
