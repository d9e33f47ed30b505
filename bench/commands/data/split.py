"""`bench data split DIR [--seed N] [--fractions A B C] [--kfold K]`: (re)assign subject-wise splits.

Rewrites the `split` column (or, with --kfold, writes a `fold` column) of DIR/manifest.csv in
place, atomically; every other cell is kept byte for byte. The seed and fractions are recorded
in dataset.json under "split" (or "kfold").
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from bench.errors import BenchError

if TYPE_CHECKING:
    import pandas as pd


def register(subparsers: argparse._SubParsersAction) -> None:
    from bench.data.splits import DEFAULT_FRACTIONS

    parser = subparsers.add_parser(
        "split", help="assign subject-wise stratified train/val/test splits (or k folds)",
        description="Rewrite the split column of DIR/manifest.csv: subject-wise (no subject in two "
                    "splits), stratified by label, fixed by --seed. With --kfold K, write a fold "
                    "column (0..K-1) instead and leave split as it is.")
    parser.add_argument("dir", type=Path, metavar="DIR", help="dataset folder (has manifest.csv)")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="split seed (default: 0)")
    parser.add_argument("--fractions", type=float, nargs=3, default=list(DEFAULT_FRACTIONS),
                        metavar=("TRAIN", "VAL", "TEST"), help="fractions (default: 0.8 0.1 0.1)")
    parser.add_argument("--kfold", type=int, default=None, metavar="K",
                        help="write a fold column with K subject-grouped stratified folds")
    parser.set_defaults(func=run)


def rewrite_splits(root: Path, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                   kfold: int | None = None) -> "pd.Series":
    """Reassign `split` (or write `fold`) in root/manifest.csv atomically; returns the new column."""
    import pandas as pd

    from bench.atomic import atomic_write_text
    from bench.data.splits import assign_splits, check_fractions, kfold_splits

    if kfold is None:
        fractions = check_fractions(fractions)          # before the manifest is read
    path = Path(root) / "manifest.csv"
    if not path.is_file():
        raise BenchError(f"{path} does not exist: {root} is not a dataset folder")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise BenchError(f"cannot read {path}: {exc}") from exc
    for col in ("subject_id", "label"):
        if col not in raw.columns:
            raise BenchError(f"{path} has no {col} column; `bench data check {root}` lists what is wrong")
    if (raw["subject_id"].str.strip() == "").any():
        raise BenchError(f"{path} has rows without subject_id; splits are subject-wise, fill them in")
    frame = pd.DataFrame({"subject_id": raw["subject_id"].str.strip(),
                          "label": pd.to_numeric(raw["label"], errors="coerce")})
    if kfold is not None:
        column, values = "fold", kfold_splits(frame, kfold, seed).astype(int).astype(str)
    else:
        column, values = "split", assign_splits(frame, seed, tuple(fractions))
    raw[column] = values.to_numpy()
    atomic_write_text(path, raw.to_csv(index=False, lineterminator="\n"))
    meta_path = Path(root) / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except ValueError:
        meta = None  # leave an unreadable dataset.json alone; `bench data check` reports it
    if isinstance(meta, dict):
        meta["kfold" if kfold is not None else "split"] = (
            {"seed": seed, "k": kfold} if kfold is not None else {"seed": seed, "fractions": list(fractions)})
        atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return raw[column]


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    values = rewrite_splits(args.dir, args.seed, tuple(args.fractions), args.kfold)
    raw = pd.read_csv(Path(args.dir) / "manifest.csv", dtype=str, keep_default_na=False)
    per = raw.groupby(values.name)["subject_id"].nunique()
    counts = ", ".join(f"{k}: {n} subject(s)" for k, n in per.items())
    print(f"wrote {values.name} to {Path(args.dir) / 'manifest.csv'} ({counts})")
    return 0
