"""The dataset folder contract (DESIGN.md "Data contracts") and a reader for it.

    manifest.csv       one row per image (MANIFEST_COLUMNS; label empty where unknown)
    images/            radiographs (16-bit PNG for generated data; imported data may point at originals)
    masks/<image_id>/<annotator>.png   uint8 label maps with the class ids below
    annotators.csv     image_id, annotator, weight (beta, sums to 1 per image)
    dataset.json       name, kind, pixel spacing, generator settings, oracle AUC (phantom) ...
    truth/             phantom only: exact masks and latent per-bone parameters
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError

#: Class names by id; id 0 is background. Other bones (carpals, phalanges) are background.
CLASS_NAMES: tuple[str, ...] = ("background", "ulna", "radius", "M1", "M2", "M3", "M4", "M5")
NUM_CLASSES = len(CLASS_NAMES)
#: The seven target bones: name -> class id.
BONES: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES) if i > 0}
BONE_IDS: tuple[int, ...] = tuple(BONES.values())

#: Required manifest columns, in order. Extra columns are kept.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image_id", "subject_id", "path", "split", "sex", "age", "t_score", "label",
    "laterality", "pixel_spacing_mm", "site",
)
ANNOTATOR_COLUMNS: tuple[str, ...] = ("image_id", "annotator", "weight")
SPLITS: tuple[str, ...] = ("train", "val", "test")


def mask_path(root: Path, image_id: str, annotator: str) -> Path:
    """Where the label map of `annotator` for `image_id` lives."""
    return Path(root) / "masks" / str(image_id) / f"{annotator}.png"


@dataclass
class Dataset:
    """A dataset folder opened for reading. Use :meth:`open`."""

    root: Path
    manifest: pd.DataFrame
    annotators: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | Path) -> "Dataset":
        """Read manifest.csv, annotators.csv (optional) and dataset.json (optional)."""
        root = Path(root)
        if not root.is_dir():
            raise BenchError(f"dataset folder {root} does not exist; create one with "
                             "`bench data synth` or `bench data import`")
        mpath = root / "manifest.csv"
        if not mpath.is_file():
            raise BenchError(f"{root} has no manifest.csv: not a dataset folder "
                             "(see DESIGN.md 'Data contracts'; `bench data check` lists problems)")
        manifest = read_manifest(mpath)
        apath = root / "annotators.csv"
        if apath.is_file():
            annotators = pd.read_csv(apath, dtype={"image_id": str, "annotator": str})
        else:
            annotators = pd.DataFrame(columns=list(ANNOTATOR_COLUMNS))
        jpath = root / "dataset.json"
        meta = json.loads(jpath.read_text()) if jpath.is_file() else {}
        return cls(root=root, manifest=manifest, annotators=annotators, meta=meta)

    @property
    def image_ids(self) -> list[str]:
        return self.manifest["image_id"].tolist()

    def row(self, image_id: str) -> pd.Series:
        rows = self.manifest[self.manifest["image_id"] == image_id]
        if rows.empty:
            raise BenchError(f"image_id {image_id!r} is not in {self.root / 'manifest.csv'}")
        return rows.iloc[0]

    def image_path(self, image_id: str) -> Path:
        p = Path(self.row(image_id)["path"])
        return p if p.is_absolute() else self.root / p

    def image(self, image_id: str) -> np.ndarray:
        """The radiograph as float32 in [0, 1], bone bright (see bench.data.imageio.read_image)."""
        from bench.data.imageio import read_image

        return read_image(self.image_path(image_id)).pixels

    def annotator_weights(self, image_id: str) -> dict[str, float]:
        """annotator -> beta for one image (empty if the image has no masks)."""
        rows = self.annotators[self.annotators["image_id"] == image_id]
        return dict(zip(rows["annotator"].astype(str), rows["weight"].astype(float)))

    def masks(self, image_id: str) -> dict[str, np.ndarray]:
        """annotator -> uint8 label map for one image."""
        from bench.data.imageio import read_label_map

        return {a: read_label_map(mask_path(self.root, image_id, a))
                for a in self.annotator_weights(image_id)}

    @property
    def has_labels(self) -> bool:
        return bool(self.manifest["label"].notna().any())


def read_manifest(path: Path) -> pd.DataFrame:
    """Read manifest.csv with the contract's dtypes; missing required columns raise BenchError."""
    df = pd.read_csv(path, dtype={"image_id": str, "subject_id": str, "path": str, "split": str,
                                  "sex": str, "laterality": str, "site": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise BenchError(f"{path} lacks column(s) {', '.join(missing)}; required columns are "
                         f"{', '.join(MANIFEST_COLUMNS)} (leave a value empty where unknown)")
    df["label"] = pd.to_numeric(df["label"], errors="coerce").astype("Int64")
    for col in ("age", "t_score", "pixel_spacing_mm"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def write_manifest(df: pd.DataFrame, path: Path) -> None:
    """Write a manifest with the required columns first (label as nullable int)."""
    cols = list(MANIFEST_COLUMNS) + [c for c in df.columns if c not in MANIFEST_COLUMNS]
    out = df.reindex(columns=cols)
    out["label"] = pd.to_numeric(out["label"], errors="coerce").astype("Int64")
    out.to_csv(path, index=False, lineterminator="\n")
