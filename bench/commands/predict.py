"""`bench predict model.osteo IMAGES_OR_FOLDERS... --out DIR`: screen new radiographs (bench.predict)."""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="screen radiographs (PNG/TIFF/JPEG/DICOM) with an exported bundle")
    p.add_argument("bundle", type=Path, help="a .osteo file written by `bench export`")
    p.add_argument("inputs", nargs="+", type=Path, metavar="IMAGES_OR_FOLDERS",
                   help="image files and/or folders (searched recursively)")
    p.add_argument("--out", type=Path, required=True, help="folder for predictions.csv, predictions.json, overlays/")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")
    p.add_argument("--batch-size", type=int, default=8, help="radiographs per forward pass (default: 8)")
    p.add_argument("--pixel-spacing", type=float, default=None, metavar="MM",
                   help="pixel spacing (mm) for files that state none (PNG/JPEG often do not)")
    p.add_argument("--laterality", choices=("L", "R"), default=None,
                   help="the hand (L or R) of every input whose file states none (DICOM ImageLaterality or Laterality "
                        "win); without it a segmenter trained with canonical laterality detects the side")
    p.add_argument("--min-bones", type=int, default=None, help="fewer usable bones withhold the decision "
                   "(default: the bundle's, 4)")
    p.add_argument("--min-confidence", type=float, default=None, help="mean segmentation confidence below "
                   "this marks the result low-confidence (default: the bundle's, 0.6)")
    p.add_argument("--ood-factor", type=float, default=None, help="mean segmentation entropy above this × the "
                   "99th percentile on the run's own images flags out-of-distribution (default: the bundle's, 1.25)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the bundle's, 0.5)")
    p.add_argument("--no-laterality-check", action="store_true",
                   help="do not segment an image whose side is given a second time to check the side "
                        "(flag laterality-mismatch); halves the segmentation time")
    p.add_argument("--no-overlays", action="store_true", help="do not draw overlay PNGs")
    p.set_defaults(func=predict_command)


def predict_command(args: argparse.Namespace) -> int:
    from bench.predict import check_options, run_predictions
    from bench.hardware import resolve_device
    from methods.bundle import load_bundle
    from methods.screen import ScreenConfig

    check_options(args.batch_size, args.pixel_spacing, args.laterality)   # before the bundle loads
    bundle = load_bundle(args.bundle, resolve_device(args.device))
    bundle.screen = ScreenConfig.from_dict(bundle.meta.get("screening", {}), min_bones=args.min_bones,
                                           min_confidence=args.min_confidence, ood_factor=args.ood_factor,
                                           threshold=args.threshold,
                                           check_laterality=False if args.no_laterality_check else None)
    report = run_predictions(bundle, args.inputs, args.out, batch_size=args.batch_size,
                             overlays=not args.no_overlays, pixel_spacing_mm=args.pixel_spacing,
                             laterality=args.laterality)
    for s in report.skipped:
        print(f"skipped {s.file}: {s.error}", file=sys.stderr)
    for row in report.rows:
        p = row["probability"]
        prob = "   n/a" if not math.isfinite(p) else f"{p:6.3f}"
        flags = f"  [{row['flags']}]" if row["flags"] else ""
        print(f"{row['name']}: P(osteoporosis) {prob}  {row['decision']:<12} {row['status']}{flags}")
    fitted = [row["name"] for row in report.rows if row.get("seen") == "fit"]
    if fitted:
        print(f"bench: warning: {len(fitted)} image(s) are, pixel for pixel, images the bundle's models were fitted "
              f"on ({', '.join(fitted[:5])}{', ...' if len(fitted) > 5 else ''}): their predictions are not those of "
              "unseen radiographs (predictions.csv, column seen)", file=sys.stderr)
    print(f"{report.processed} image(s) screened, {len(report.skipped)} skipped; "
          f"{args.out / 'predictions.csv'}, {args.out / 'predictions.json'}")
    if report.processed == 0:
        print("bench: error: no image could be screened (see the messages above)", file=sys.stderr)
        return 2
    return 0
