"""`bench perf TARGET`: throughput benchmarks (not timed tests).

Targets are functions in PERF_TARGETS taking the parsed arguments and returning a dict of
results; they print their own lines. Implemented: `phantom` (images/s of the phantom renderer
for the public and clinical presets, on one CPU core). `seg`: segmentation step time and OT
share (methods.segmentation.perf). `ssl`: pretraining samples/s of the harness end to end, of the
model alone and of a conventional CPU-fed fp32 pipeline (methods.ssl.perf). `suite`: projected
wall time of ``bench run --suite S --profile P --seeds ...`` from measured stage steps
(bench.perf_suite, cost models in methods.perf_suite).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

from bench.errors import BenchError


@contextlib.contextmanager
def one_core() -> Iterator[str]:
    """Pin this process to one CPU core for the duration (where the OS allows it)."""
    if not hasattr(os, "sched_getaffinity"):
        yield "unpinned"
        return
    before = os.sched_getaffinity(0)
    core = min(before)
    try:
        os.sched_setaffinity(0, {core})
        yield f"core {core}"
    finally:
        os.sched_setaffinity(0, before)


def perf_phantom(args: argparse.Namespace) -> dict:
    """images/s of the phantom for both presets: render (image + exact mask) and full write."""
    import numpy as np

    from bench.data.format import mask_path
    from bench.data.imageio import write_label_map, write_png16
    from bench.data.phantom import PhantomConfig, dataset_styles, label_map, make_case
    from bench.data.phantom.imaging import render_subject
    from bench.data.phantom.nuisance import sample_nuisance
    from bench.data.phantom.subject import sample_subject

    results = {}
    with one_core() as where, tempfile.TemporaryDirectory() as tmp:
        print(f"phantom renderer, profile {args.profile}, {args.repeats} images per preset, {where}")
        for preset in ("public", "clinical"):
            cfg = PhantomConfig.for_preset(preset, args.profile)
            styles = dataset_styles(cfg, 0)
            make_case(cfg, 0, 0, styles)                         # warm-up (imports, caches)
            cases = []
            for i in range(args.repeats):
                rng = np.random.default_rng(np.random.SeedSequence([i, 7]))
                subject = sample_subject(cfg, rng, f"perf-{i}")
                cases.append((subject, sample_nuisance(cfg, subject, rng), rng))
            t0 = time.perf_counter()
            for subject, nuisance, rng in cases:
                render_subject(cfg, subject, nuisance, rng)
            render_s = (time.perf_counter() - t0) / args.repeats
            t0 = time.perf_counter()
            for i in range(args.repeats):
                case = make_case(cfg, 0, i + 1, styles)
                r = case.rendering
                write_png16(Path(tmp) / f"{case.image_id}.png", r.image)
                (Path(tmp) / "masks" / case.image_id).mkdir(parents=True, exist_ok=True)
                for a in case.annotations:
                    lm = label_map(r.truth.shape, r.bones, cfg.pixel_spacing_mm, r.field, a)
                    write_label_map(mask_path(Path(tmp), case.image_id, a.style.name), lm)
            full_s = (time.perf_counter() - t0) / args.repeats
            results[preset] = dict(height=cfg.height, width=cfg.width, render_images_per_s=1 / render_s,
                                   full_images_per_s=1 / full_s)
            print(f"  {preset:9s} {cfg.height}x{cfg.width} px: {1 / render_s:6.2f} images/s render "
                  f"(image and exact mask), {1 / full_s:6.2f} images/s with "
                  f"{cfg.annotators} annotator maps and PNG encoding")
    return results


def perf_seg(args: argparse.Namespace) -> list[dict]:
    """Segmentation training step at batch --batch-size and the OT solve's share (issue 4)."""
    from bench.config import parse_sets
    from bench.hardware import resolve_device
    from methods.segmentation.perf import perf_seg as run_seg

    return run_seg(args.profile, str(resolve_device(args.device)), batch=args.batch_size or 16, steps=args.repeats,
                   sets=parse_sets(args.sets))


def perf_ssl(args: argparse.Namespace) -> dict:
    """SSL pretraining: (a) end to end, (b) model-only ceiling, (c) conventional pipeline (issue 9)."""
    from bench.config import parse_sets
    from methods.ssl.perf import perf_ssl as run_ssl

    return run_ssl(args.profile, args.device, batch=args.batch_size, steps=args.repeats, warmup=args.warmup,
                   method=args.method, patches=args.patches, workers=args.workers, sets=parse_sets(args.sets),
                   feeds=tuple(args.feeds))


def perf_suite(args: argparse.Namespace) -> dict:
    """Projected wall time of a suite at a profile and seeds, from measured per-stage steps (issue 9)."""
    from bench import registry
    from bench.perf_suite import compare_measured, cost_models, plan_suite, print_comparison, print_projection, project
    from bench.perf_timing import device_name
    from bench.hardware import resolve_device
    from methods.perf_suite import builtin_cost_models

    registry.load_entries(args.plugin)
    device = resolve_device(args.device)
    names = [registry.get(n).name for n in args.entries] if args.entries else registry.resolve_suite(args.suite)
    what = f"--entry {' '.join(names)}" if args.entries else f"--suite {args.suite}"
    # planned with --device as given (auto by default, as `bench run`): run.device keys the stage cache, so
    # --measured finds the stages of a `bench run` with the same --device
    stages = plan_suite(names, args.seeds, args.profile, args.device, sets=args.sets, results=str(args.results),
                        folds=args.folds)
    if args.folds:
        what += f" --folds {args.folds}"
    models = {**builtin_cost_models(device, steps=args.repeats, warmup=args.warmup), **cost_models()}
    proj = project(stages, device, models)
    print_projection(proj, f"projected `bench run {what} --profile {args.profile} --seeds "
                           f"{' '.join(map(str, args.seeds))}`: {len(names)} entries, {len(stages)} distinct stage "
                           f"computations; {args.repeats} timed steps per measurement after {args.warmup} warm-up; "
                           f"device {device_name(device)}")
    out = {"total_seconds": proj.total_seconds, "stages": proj.by_stage(), "unpriced": proj.unpriced}
    if args.measured:
        cache_root = Path(args.results) / "cache"
        out["measured"] = compare_measured(proj, cache_root)
        print_comparison(out["measured"], cache_root)
    return out


#: target name -> benchmark function.
PERF_TARGETS: dict[str, Callable[[argparse.Namespace], dict | list]] = {
    "phantom": perf_phantom,
    "seg": perf_seg,
    "ssl": perf_ssl,
    "suite": perf_suite,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("perf", help="throughput benchmarks (images/s, ...)",
                                   description="Print throughput numbers of a component.")
    parser.add_argument("target", choices=sorted(PERF_TARGETS), help="what to benchmark")
    parser.add_argument("--repeats", type=int, default=4, metavar="N",
                        help="items timed per measurement (default: 4)")
    parser.add_argument("--profile", choices=("smoke", "quick", "paper"), default="paper",
                        help="data size / config profile (default: paper, i.e. full size)")
    parser.add_argument("--device", default="auto", help="seg, ssl, suite: auto | cpu | cuda (default: auto, "
                        "cuda when available)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="seg: images per step (default: 16); ssl: patches per step (default: the profile's "
                        "ssl.batch_size, 128 at paper)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N",
                        help="ssl, suite: untimed warm-up steps per measurement (default: 3)")
    parser.add_argument("--method", choices=("simclr", "supcon", "swav", "vicreg"), default="simclr",
                        help="ssl: SSL objective (default: simclr)")
    parser.add_argument("--patches", default=None, metavar="DIR",
                        help="ssl: a patch store (an extract stage folder) instead of a synthetic one")
    parser.add_argument("--feeds", nargs="+", choices=("end_to_end", "model_only", "conventional"),
                        default=["end_to_end", "model_only", "conventional"],
                        help="ssl: which of (a) end_to_end, (b) model_only, (c) conventional to measure (default: all)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="ssl: DataLoader workers of the conventional pipeline (default: all usable cores)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="seg, ssl, suite: override an option as `bench run --set` does, e.g. "
                        "--set ssl.compile=default or --set segmentation.micro_batch=4 (repeatable)")
    parser.add_argument("--suite", default="paper", help="suite: the suite to project (default: paper)")
    parser.add_argument("--entry", dest="entries", nargs="+", default=[], metavar="E",
                        help="suite: project these entries instead of a suite")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="suite: seeds (default: 0 1 2)")
    parser.add_argument("--folds", type=int, default=None, metavar="K",
                        help="suite: project `bench run --folds K` (every fold; stages that read no `cls` split once)")
    parser.add_argument("--results", default="results", help="suite: results folder whose cached phantoms are "
                        "used for the plan when present (default: ./results)")
    parser.add_argument("--measured", action="store_true",
                        help="suite: also print, per stage, the seconds the same plan's stages took in --results' "
                        "cache (after `bench run` with the same options) beside their projection")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="suite: import MODULE to register more entries (repeatable)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise BenchError("--repeats and --batch-size must be at least 1")
    if args.warmup < 0 or (args.workers is not None and args.workers < 0):
        raise BenchError("--warmup and --workers must be at least 0")
    if args.patches is not None and not Path(args.patches).is_dir():
        raise BenchError(f"--patches {args.patches} is not a folder; give an extract stage's output folder "
                         "(results/cache/extract/<key>)")
    if args.target != "phantom":
        apply_settings(args)
    PERF_TARGETS[args.target](args)
    return 0


def apply_settings(args: argparse.Namespace) -> None:
    """The process-wide torch settings a run with this profile, --set and device would use
    (bench.torch_settings: threads, deterministic algorithms, cuDNN autotuning), so the benchmark
    times the kernels a run uses; printed first."""
    from bench import registry
    from bench.config import parse_sets, resolve
    from bench.hardware import resolve_device
    from bench.torch_settings import apply_run_settings

    registry.load_entries(args.plugin)                  # --set may name any entry's section
    run_cfg = resolve(args.profile, sets=parse_sets(args.sets)).run
    deterministic = apply_run_settings(run_cfg, resolve_device(args.device))
    print(f"torch settings (run.deterministic={run_cfg.deterministic}): deterministic algorithms "
          f"{'on' if deterministic else 'off'}" + ("" if deterministic else ", cuDNN autotuned on CUDA"))
