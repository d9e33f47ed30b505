"""`bench evaluate-seg SEGMENTER --data DATASET`: a trained segmenter on annotated radiographs it never saw
(methods.segmentation.external)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

EXPERIMENT = "segmentation"          # MLflow experiment osteobench/segmentation


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate-seg", help="external validation of a segmenter: Dice per bone, GED, laterality on a dataset "
                             "with bone masks",
        description="Segment every annotated radiograph of a dataset (bone masks from `bench data import --coco`, or "
                    "a phantom) with a trained segmenter, as its run's segment stage predicts, and score it as that "
                    "stage scores its test split: Dice per bone against the truth (phantoms), the annotators' "
                    "consensus and each annotator; GED, Hungarian IoU, pixel ECE; for a canonical-laterality model, "
                    "how often it finds the manifest's side when not told it. Writes summary.json and images.csv "
                    "(one row per image) to --out.")
    p.add_argument("segmenter", type=Path, metavar="SEGMENTER",
                   help="a bundle (.osteo from `bench export`), a run folder results/<suite>/<entry>/seed<k> whose "
                        "entry trains a segmenter (full method, ablations, radiogrammetry), or a segment stage's "
                        "model.pt")
    p.add_argument("--data", type=Path, required=True, help="a dataset folder with masks (bench data import / synth)")
    p.add_argument("--split", default="all", help="all: every annotated image (default); or one split of the "
                   "dataset's manifest, e.g. test")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <results>/segmentation/"
                   "<suite>-<entry>-seed<k>--<dataset folder name>); replaces only an earlier evaluate-seg output of the same "
                   "segmenter and dataset")
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder for the default --out")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--batch-size", type=int, default=None, help="radiographs per forward pass (default: the run's "
                   "segmentation.predict_batch)")
    p.add_argument("--seed", type=int, default=0, help="seed of the GED's latent draws (default: 0)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite under --results)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier evaluate-seg output of another dataset or segmenter in the output folder")
    p.add_argument("--no-laterality-check", action="store_true",
                   help="skip predicting each image of known side mirrored too (halves the prediction time of a "
                        "canonical-laterality model; no laterality_detection in the summary)")
    p.set_defaults(func=evaluate_seg_command)


def _fmt(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"


def print_summary(summary: dict[str, Any], out: Path) -> None:
    """A per-bone Dice table and the sample metrics."""
    from bench.data.format import BONES
    from methods.segmentation.external import lowest_bone

    annotators = summary["dice_annotators"]
    columns = [("vs truth", summary["dice_truth"]), ("vs consensus", summary["dice_consensus"]),
               ("consensus vs truth", summary["dice_consensus_truth"])]
    columns += [(f"vs {a}", d) for a, d in annotators.items()]
    columns = [(name, d) for name, d in columns if d]
    width = max(len(name) for name, _ in columns)
    print(f"{'bone':<8}" + "".join(f"{name:>{width + 2}}" for name, _ in columns))
    for bone in (*BONES, "mean"):
        print(f"{bone:<8}" + "".join(f"{_fmt(d[bone]):>{width + 2}}" for _, d in columns))
    low = lowest_bone(summary["dice_truth"] or summary["dice_consensus"])
    if low:
        print(f"lowest bone: {low[0]} {low[1]:.3f}")
    print(f"GED {_fmt(summary['ged'])} (cross {_fmt(summary['ged_cross'])}, sample diversity "
          f"{_fmt(summary['ged_sample_diversity'])}, annotation diversity {_fmt(summary['ged_annotation_diversity'])}), "
          f"Hungarian IoU {_fmt(summary['hungarian_iou'])}, pixel ECE {_fmt(summary['ece'])}")
    det = summary.get("laterality_detection")
    if det and det["n_images"]:
        wrong = f" (wrong: {', '.join(det['wrong'][:10])}{' ...' if len(det['wrong']) > 10 else ''})" if det["wrong"] else ""
        print(f"laterality found without being told: {det['n_images'] - len(det['wrong'])}/{det['n_images']}{wrong}")
    print(f"wrote {out / 'summary.json'} and {out / 'images.csv'}")


def log_evaluation(tracker: Any, name: str, summary: dict[str, Any], files: list[Path]) -> str:
    """One run ``evaluate-seg/<name>`` in the MLflow experiment ``osteobench/segmentation``: the
    segmenter and data as params, the eval.json metric names (seg_<split>_...), the two files."""
    import hashlib
    import time

    from bench.tracking import TAG_SUITE, TAG_TYPE
    from methods.segmentation.scoring import flat_metrics

    digest = hashlib.sha256(b"".join(Path(f).read_bytes() for f in files)).hexdigest()[:16]
    tags = {TAG_SUITE: EXPERIMENT, TAG_TYPE: "evaluate-seg", "osteobench.evaluate_seg.digest": digest}
    source = summary["segmenter"]
    params = {"segmenter_kind": source["kind"], "segmenter": source["path"], "entry": source.get("entry"),
              "seed": source.get("seed"), "data": summary["data"]["path"], "data_fingerprint": summary["data"]["fingerprint"],
              "split": summary["split"], "predict_draws": summary["predict_draws"],
              "eval_samples": summary["eval_samples"], "n_images": summary["n_images"]}
    now = int(time.time() * 1000)
    metrics = [(k, float(v), now, 0) for k, v in flat_metrics(summary["split"], summary).items()
               if v is not None and np.isfinite(v)]
    return tracker.log_once(EXPERIMENT, tags, f"evaluate-seg/{name}", params=params, metrics=metrics, files=files)


def check_seg_out(out: Path, fingerprint: str, overwrite: bool = False, segmenter: str | None = None) -> None:
    """BenchError unless `out` is new, empty, or an earlier evaluate-seg output (summary.json and images.csv
    only) of the same dataset and segmenter path (of others with `overwrite`): never a dataset, a bundle or
    other files."""
    from bench.errors import BenchError

    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise BenchError(f"--out {out} is a file; give a folder for the evaluation (summary.json, images.csv)")
    names = {p.name for p in out.iterdir()}
    try:
        earlier = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if names - {"summary.json", "images.csv"} or not isinstance(earlier, dict) or "segmenter" not in earlier:
        raise BenchError(f"--out {out} already holds other files (not an evaluate-seg output); choose a new or "
                         "empty folder")
    if (earlier.get("data") or {}).get("fingerprint") != fingerprint and not overwrite:
        raise BenchError(f"{out} holds the evaluation of another dataset ({(earlier.get('data') or {}).get('path')}, "
                         "or that folder before it changed); pass --overwrite to replace it, or choose another --out")
    before = (earlier.get("segmenter") or {}).get("path")
    if segmenter is not None and before not in (None, segmenter) and not overwrite:
        raise BenchError(f"{out} holds the evaluation of another segmenter ({before}); pass --overwrite to "
                         "replace it, or choose another --out")


def evaluate_seg_command(args: argparse.Namespace) -> int:
    from bench.atomic import atomic_dir
    from bench.data.format import Dataset
    from bench.errors import BenchError
    from bench.predict import json_safe
    from bench.hardware import resolve_device
    from bench.fingerprint import dataset_fingerprint
    from methods.segmentation.external import evaluate_segmenter, open_segmenter

    if args.batch_size is not None and args.batch_size < 1:
        raise BenchError(f"--batch-size {args.batch_size} must be >= 1")
    dataset = Dataset.open(args.data)                    # BenchError when it is not a dataset
    seg = open_segmenter(args.segmenter, resolve_device(args.device))
    if args.batch_size is not None:
        seg.batch_size = args.batch_size

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\r{done}/{total} radiographs", end="" if done < total else "\n", file=sys.stderr)

    default = args.results / "segmentation" / f"{seg.label}--{Path(args.data).resolve().name}"
    out = Path(os.path.abspath(args.out or default))
    fingerprint = dataset_fingerprint(Path(args.data))
    check_seg_out(out, fingerprint, args.overwrite, seg.source.get("path"))   # before the work, not after
    result = evaluate_segmenter(seg, dataset, split=args.split, seed=args.seed,
                                detect=not args.no_laterality_check, progress=progress)
    summary = {"segmenter": seg.source, "data": {"path": str(Path(args.data).resolve()), "fingerprint": fingerprint},
               "split": args.split, "seed": args.seed, "predict_draws": seg.draws, "eval_samples": seg.eval_samples,
               "canonical_laterality": bool(getattr(seg.model.spec, "canonical_laterality", False)),
               **result.summary}
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, sort_keys=True))
        result.images.to_csv(tmp / "images.csv", index=False)
    print(f"{seg.label} ({seg.source['kind']} {args.segmenter}) on {args.data}: {result.summary['n_images']} "
          f"annotated radiographs ({args.split})")
    print_summary(result.summary, out)
    if not args.no_mlflow:
        from bench.tracking import Tracker

        tracker = Tracker(args.results, uri=args.tracking_uri)
        if log_evaluation(tracker, out.name, summary, [out / "summary.json", out / "images.csv"]):
            print(f"logged to MLflow {tracker.uri}, experiment osteobench/{EXPERIMENT}")
    return 0
