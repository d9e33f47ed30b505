"""`bench data agreement DIR [--split S] [--n N]`: per-bone Dice between the annotators, their
consensus and (on a phantom) the exact masks (methods.segmentation.agreement)."""
from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import BenchError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "agreement", help="per-bone Dice of the annotators against their consensus (and the truth of a phantom)",
        description="What Dice a model trained on the annotations can reach: each annotator against the "
                    "β-weighted consensus and, where truth/masks exists, the annotators and the consensus "
                    "against the exact masks; weighted means per bone, also written as CSV.")
    parser.add_argument("dir", type=Path, metavar="DIR", help="dataset folder (has manifest.csv)")
    parser.add_argument("--split", default=None, help="only this split (default: all images with masks)")
    parser.add_argument("--n", type=int, default=None, metavar="N", help="only the first N images")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE", help="CSV (default: DIR/agreement.csv)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.atomic import atomic_write_text
    from bench.data.format import Dataset
    from methods.segmentation.agreement import dataset_agreement

    if args.n is not None and args.n < 1:
        raise BenchError(f"--n {args.n}: give a number of images >= 1 (or leave --n out for all)")
    table = dataset_agreement(Dataset.open(args.dir), split=args.split, limit=args.n)
    print(table.round(3).to_string())
    out = args.out or Path(args.dir) / "agreement.csv"
    atomic_write_text(out, table.to_csv())
    print(f"written: {out}")
    return 0
