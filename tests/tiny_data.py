"""Tiny hand-made datasets that do not need the phantom generator (importable as `tiny_data`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_tiny_dataset(root: Path, n_subjects: int = 40, seed: int = 0, labelled: bool = True) -> Path:
    """A manifest-only dataset (no images): enough for engine tests whose stages read the manifest."""
    from bench.data.format import write_manifest
    from bench.data.splits import assign_splits

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame({
        "image_id": [f"img{i:03d}" for i in range(n_subjects)],
        "subject_id": [f"s{i:03d}" for i in range(n_subjects)],
        "path": [f"images/img{i:03d}.png" for i in range(n_subjects)],
        "sex": rng.choice(["F", "M"], n_subjects, p=[0.85, 0.15]),
        "age": rng.integers(30, 90, n_subjects),
        "t_score": rng.normal(-1.5, 1.2, n_subjects).round(2),
        "laterality": "L", "pixel_spacing_mm": 0.1, "site": "A",
    })
    df["label"] = (df["t_score"] < -2.5).astype(int) if labelled else pd.NA
    df["split"] = assign_splits(df, seed)
    write_manifest(df, root / "manifest.csv")
    return root
