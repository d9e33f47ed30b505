"""`bench data import`: radiographs (PNG/TIFF/JPEG/DICOM) + metadata CSV and/or COCO -> dataset."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.errors import BenchError


def _pair(text: str, what: str) -> tuple[str, str]:
    if "=" not in text:
        raise BenchError(f"{what} {text!r} must look like NAME=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def register(subparsers: argparse._SubParsersAction) -> None:
    from bench.data.metadata import COLUMN_ALIASES
    from bench.data.splits import DEFAULT_FRACTIONS

    parser = subparsers.add_parser(
        "import", help="import radiographs + a metadata CSV and/or COCO annotations as a dataset",
        description="Build a dataset folder (manifest.csv, masks/, annotators.csv, dataset.json) "
                    "from a folder of PNG/TIFF/JPEG (8/16-bit) or DICOM radiographs with a CSV "
                    "of subject id, T-score or label, sex and age (label = T-score < -2.5 when "
                    "only the T-score is given), and/or COCO JSON exports whose polygons become "
                    "label maps (one annotator per file, or an 'annotator' attribute).")
    parser.add_argument("source", nargs="?", type=Path, metavar="IMAGES",
                        help="folder of radiographs (searched recursively); same as --images")
    parser.add_argument("--images", type=Path, default=None, metavar="DIR", help="folder of radiographs")
    parser.add_argument("--csv", type=Path, default=None, metavar="FILE",
                        help="metadata CSV naming each image by file name or image id")
    parser.add_argument("--out", "-o", type=Path, required=True, metavar="DIR",
                        help="dataset folder to create (outside the image folder)")
    parser.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                        help=f"CSV column of a field ({', '.join(COLUMN_ALIASES)}); "
                             "FIELD= marks it absent; repeatable")
    parser.add_argument("--coco", action="append", default=[], metavar="[NAME=]FILE.json",
                        help="COCO export; one annotator per file (NAME, default the file stem) "
                             "unless annotations carry an 'annotator' attribute; repeatable")
    parser.add_argument("--class-map", type=Path, default=None, metavar="FILE.yaml",
                        help="COCO class name -> ulna|radius|M1..M5|background|null (YAML or JSON)")
    parser.add_argument("--weight", action="append", default=[], metavar="ANNOTATOR=W",
                        help="annotator weight beta (normalised per image; default equal)")
    parser.add_argument("--copy", action="store_true",
                        help="convert images to 16-bit PNG under DIR/images (default: reference in place)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave unreadable/missing images out and list them (DIR/skipped.csv)")
    parser.add_argument("--split-seed", type=int, default=0, metavar="N",
                        help="seed of the subject-wise stratified split (default: 0)")
    parser.add_argument("--fractions", type=float, nargs=3, default=list(DEFAULT_FRACTIONS),
                        metavar=("TRAIN", "VAL", "TEST"), help="split fractions (default: 0.8 0.1 0.1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument("--ignore-dicom-tags", action="store_true",
                        help="do not fill what the CSV lacks (subject id without a subject column, sex, age, "
                             "laterality, site) from the DICOM headers (PatientID, PatientSex, PatientAge or "
                             "BirthDate, ImageLaterality, InstitutionName)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.data.importers import ImportConfig, import_dataset

    if args.source and args.images and args.source.resolve() != args.images.resolve():
        raise BenchError(f"two image folders given ({args.source} and --images {args.images}); give one")
    images = args.images or args.source
    if images is None:
        raise BenchError("give the folder of radiographs: `bench data import DIR ...` or --images DIR")
    columns = {k: (v or None) for k, v in (_pair(c, "--column") for c in args.column)}
    coco = []
    for spec in args.coco:
        name, path = _pair(spec, "--coco") if "=" in spec else (None, spec)
        coco.append((name or None, Path(path)))
    weights = {}
    for spec in args.weight:
        name, value = _pair(spec, "--weight")
        try:
            weights[name] = float(value)
        except ValueError as exc:
            raise BenchError(f"--weight {spec!r}: {value!r} is not a number") from exc
    if not coco and (args.class_map or weights):
        given = " and ".join(o for o, on in (("--class-map", args.class_map), ("--weight", weights)) if on)
        raise BenchError(f"{given} belong to a COCO import (bone masks); give the exports with --coco FILE.json")
    cfg = ImportConfig(images=images, out=args.out, csv=args.csv, columns=columns, coco=coco,
                       class_map=args.class_map, weights=weights, copy=args.copy,
                       skip_bad=args.skip_bad, split_seed=args.split_seed,
                       fractions=tuple(args.fractions), overwrite=args.overwrite,
                       dicom_tags=not args.ignore_dicom_tags)
    report = import_dataset(cfg)
    if report.columns:
        print(report.columns)
    for warning in report.warnings:
        print(f"bench: warning: {warning}", file=sys.stderr)
    if report.skipped:
        print(f"skipped {len(report.skipped)} image(s) (listed in {report.out / 'skipped.csv'}):",
              file=sys.stderr)
        for file, reason in report.skipped:
            print(f"  {file}: {reason}", file=sys.stderr)
    print(f"imported {report.n_images} image(s) of {report.n_subjects} subject(s), "
          f"{report.n_masks} mask(s) -> {report.out}")
    print(f"check it with `bench data check {report.out}`, look at it with `bench data show {report.out}`")
    return 0
