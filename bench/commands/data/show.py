"""`bench data show DIR [--out PATH] [--n N] [--seed S]`: contact sheet and summary of a dataset."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "show", help="contact sheet with mask overlays and a label-balance summary (paper Tables 1-2)",
        description="Render DIR/show/contact_sheet.png (radiographs with every annotator's bone "
                    "contours), summary.png and summary.md (label balance by sex and age as the "
                    "paper's Tables 1-2, counts per split and site, bones visible, annotators).")
    parser.add_argument("dir", type=Path, metavar="DIR", help="dataset folder (has manifest.csv)")
    parser.add_argument("--out", type=Path, default=None, metavar="PATH",
                        help="output folder (default: DIR/show)")
    parser.add_argument("--n", type=int, default=12, metavar="N",
                        help="radiographs on the contact sheet (default: 12)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of the random choice of radiographs (default: 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bench.data.show import show

    paths = show(args.dir, out_dir=args.out, n=args.n, seed=args.seed)
    print(f"contact sheet: {paths['contact_sheet']}")
    print(f"summary:       {paths['summary']}")
    print(f"               {paths['summary_md']}")
    tables = [p for k, p in paths.items() if k.startswith("summary_") and k != "summary_md"]
    if tables:
        print(f"tables (CSV):  {tables[0].parent}/summary_*.csv ({len(tables)} files)")
    return 0
