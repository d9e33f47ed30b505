"""The patch store: every bone patch of both datasets, as one array plus an index (DESIGN.md "Stages").

A store is a folder::

    patches.npy      N × P × P uint16 (value / 65535 = intensity in [0, 1]), memory-mapped on open
    index.parquet    one row per patch (INDEX_COLUMNS, then any extra columns); ``row`` indexes the array
    store.json       format, N, P, dtype, counts; written last: a folder without it is not a store

Every image gets a row for each of its patches, missing bones included (their patch is all zero and
``missing`` is True): filter with :meth:`PatchStore.present` (or ``~index.missing``) before training.
Writes are atomic at the store level: ``store.json`` is removed first, the array and the index go to
temporary files renamed into place, and ``store.json`` is written last, so an interrupted write
leaves no store rather than a mixed one. The array is written streaming through a memory map, so a
paper-size store (about 1 GB) never sits in memory.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from bench.atomic import atomic_write_text
from bench.errors import BenchError
from methods.bones import UINT16_MAX, BonePatch

FORMAT = "osteobench-patches-1"
ARRAY_FILE, INDEX_FILE, META_FILE = "patches.npy", "index.parquet", "store.json"
INDEX_COLUMNS: tuple[str, ...] = (
    "image_id", "subject_id", "role", "split", "bone", "bone_id", "label",
    "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "crop_x0", "crop_y0", "crop_x1", "crop_y1",
    "coverage", "angle_deg", "area_px", "area_mm2", "confidence", "touches_border", "component_fraction",
    "missing", "reason", "note", "row",
)
IMAGE_KEYS: tuple[str, ...] = ("image_id", "subject_id", "role", "split", "label")


def patch_row(info: Mapping[str, Any], p: BonePatch, row: int) -> dict[str, Any]:
    """One index row: the image's `info` (IMAGE_KEYS and any extras) and the patch's measurements."""
    missing_info = [k for k in IMAGE_KEYS if k not in info]
    if missing_info:
        raise BenchError(f"patch store: image info lacks {', '.join(missing_info)} (have {', '.join(info)})")
    bbox = p.bbox if p.bbox is not None else (-1, -1, -1, -1)
    crop = p.crop if p.crop is not None else (-1, -1, -1, -1)
    out = {k: info[k] for k in IMAGE_KEYS}
    out.update(bone=p.bone, bone_id=p.bone_id,
               bbox_x0=bbox[0], bbox_y0=bbox[1], bbox_x1=bbox[2], bbox_y1=bbox[3],
               crop_x0=crop[0], crop_y0=crop[1], crop_x1=crop[2], crop_y1=crop[3],
               coverage=p.coverage, angle_deg=p.angle_deg, area_px=p.area_px, area_mm2=p.area_mm2,
               confidence=p.confidence, touches_border=p.touches_border,
               component_fraction=p.component_fraction, missing=p.missing, reason=p.reason, note=p.note,
               row=row)
    out.update({k: v for k, v in info.items() if k not in out})
    return out


class StoreWriter:
    """Streams patches into ``out_dir`` (see the module docstring); use :func:`write_store` or
    ``with StoreWriter(out_dir, P, capacity) as w: w.add(info, patches)``."""

    def __init__(self, out_dir: str | Path, patch_size: int, capacity: int):
        if capacity < 0 or patch_size < 1:
            raise ValueError(f"capacity {capacity} and patch_size {patch_size} must be positive")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / META_FILE).unlink(missing_ok=True)  # the old store (if any) is no longer valid
        self.patch_size, self.capacity = patch_size, capacity
        fd, tmp = tempfile.mkstemp(prefix=f".{ARRAY_FILE}.tmp-", dir=self.out_dir)
        os.close(fd)
        self._tmp = Path(tmp)
        self._array = np.lib.format.open_memmap(self._tmp, mode="w+", dtype=np.uint16,
                                                shape=(capacity, patch_size, patch_size))
        self.rows: list[dict[str, Any]] = []

    def add(self, info: Mapping[str, Any], patches: Sequence[BonePatch]) -> None:
        """Append one image's patches (a missing patch is stored as zeros)."""
        for p in patches:
            n = len(self.rows)
            if n >= self.capacity:
                raise BenchError(f"patch store: more than the announced {self.capacity} patches")
            if p.patch is not None:
                if p.patch.shape != (self.patch_size, self.patch_size) or p.patch.dtype != np.uint16:
                    raise BenchError(f"patch store: patch {info.get('image_id')}/{p.bone} is {p.patch.dtype} "
                                     f"{p.patch.shape}; expected uint16 {self.patch_size}×{self.patch_size}")
                self._array[n] = p.patch
            self.rows.append(patch_row(info, p, n))

    def close(self, meta: Mapping[str, Any] | None = None) -> "PatchStore":
        """Finish: trim the array to the patches added, rename files into place, write store.json."""
        n = len(self.rows)
        self._array.flush()
        src = self._array
        if n != self.capacity:
            fd, tmp = tempfile.mkstemp(prefix=f".{ARRAY_FILE}.tmp-", dir=self.out_dir)
            os.close(fd)
            trimmed = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint16, shape=(n, *src.shape[1:]))
            for start in range(0, n, 1024):
                trimmed[start:start + 1024] = src[start:min(start + 1024, n)]
            trimmed.flush()
            del trimmed
            self._tmp.unlink()
            self._tmp = Path(tmp)
        del src
        self._array = None  # type: ignore[assignment]
        os.replace(self._tmp, self.out_dir / ARRAY_FILE)
        index = _index_frame(self.rows)
        fd, tmp = tempfile.mkstemp(prefix=f".{INDEX_FILE}.tmp-", dir=self.out_dir)
        os.close(fd)
        index.to_parquet(tmp, index=False)
        os.replace(tmp, self.out_dir / INDEX_FILE)
        present = index[~index["missing"]]
        info = {"format": FORMAT, "n": n, "patch_size": self.patch_size, "dtype": "uint16",
                "scale": UINT16_MAX, "n_present": int(len(present)),
                "missing_by_reason": {str(k): int(v) for k, v in index.loc[index["missing"], "reason"].value_counts().items()},
                **dict(meta or {})}
        atomic_write_text(self.out_dir / META_FILE, json.dumps(info, indent=2, sort_keys=True, default=str))
        return PatchStore.open(self.out_dir)

    def abort(self) -> None:
        self._array = None  # type: ignore[assignment]
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _index_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The index with INDEX_COLUMNS first and stable dtypes (label nullable Int64)."""
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=list(INDEX_COLUMNS))
    cols = list(INDEX_COLUMNS) + [c for c in df.columns if c not in INDEX_COLUMNS]
    df = df.reindex(columns=cols)
    df["label"] = pd.to_numeric(df["label"], errors="coerce").astype("Int64")
    for c in ("bone_id", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1", "crop_x0", "crop_y0", "crop_x1",
              "crop_y1", "area_px", "row"):
        df[c] = df[c].astype(np.int64)
    for c in ("coverage", "angle_deg", "area_mm2", "confidence", "component_fraction"):
        df[c] = df[c].astype(np.float64)
    for c in ("missing", "touches_border"):
        df[c] = df[c].astype(bool)
    for c in ("image_id", "subject_id", "role", "split", "bone", "reason", "note"):
        df[c] = df[c].astype(str)
    return df


def write_store(out_dir: str | Path, images: Iterable[tuple[Mapping[str, Any], Sequence[BonePatch]]],
                patch_size: int, capacity: int | None = None, meta: Mapping[str, Any] | None = None) -> "PatchStore":
    """Write a store from (image info, that image's patches) pairs; info holds IMAGE_KEYS (+ extras).

    `capacity` (the number of patches, if known) lets the array stream to disk; without it the
    pairs are collected first.
    """
    if capacity is None:
        images = list(images)
        capacity = sum(len(p) for _, p in images)
    with StoreWriter(out_dir, patch_size, capacity) as writer:
        for info, patches in images:
            writer.add(info, patches)
        return writer.close(meta)


@dataclass
class PatchStore:
    """An opened store: ``.index`` (DataFrame), ``.array`` (memory-mapped N×P×P uint16), ``.meta``."""

    root: Path
    index: pd.DataFrame
    array: np.ndarray
    meta: dict
    _tensors: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | Path) -> "PatchStore":
        root = Path(root)
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise BenchError(f"{root} is not a patch store (no {META_FILE}); it is written by the `extract` "
                             "or `extract_raw` stage, and an interrupted write leaves none: run the stage again")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise BenchError(f"{meta_path} has format {meta.get('format')!r}; expected {FORMAT!r} "
                             "(written by another osteobench version: clear the cache and rerun)")
        array = np.load(root / ARRAY_FILE, mmap_mode="r")
        index = pd.read_parquet(root / INDEX_FILE)
        if not (len(index) == array.shape[0] == meta["n"]) or array.shape[1:] != (meta["patch_size"],) * 2:
            raise BenchError(f"patch store {root} is inconsistent: index {len(index)} rows, array "
                             f"{array.shape}, store.json n={meta['n']}; rerun the extract stage")
        return cls(root=root, index=index, array=array, meta=meta)

    def with_splits(self, datasets: Mapping[str, Any]) -> "PatchStore":
        """This store with the split column of the run's datasets (``role`` → bench.data.Dataset).

        The extract stage reads no split (bench.registry.Stage.split_roles), so one store serves
        every split of the same data, e.g. every fold of a cross-validation; the stages that train
        or select on a split take it from the datasets they run with, through this.
        """
        index = self.index.copy()
        for role, dataset in datasets.items():
            rows = (index["role"] == role).to_numpy()
            if not rows.any():
                continue
            split_of = dict(zip(dataset.manifest["image_id"].astype(str), dataset.manifest["split"].astype(str)))
            ids = index.loc[rows, "image_id"].astype(str)
            unknown = sorted(set(ids) - set(split_of))
            if unknown:
                raise BenchError(f"the patch store {self.root} has `{role}` images the dataset lacks "
                                 f"({unknown[:3]}); it was cut from other data: clear its cache folder and rerun")
            index.loc[rows, "split"] = ids.map(split_of).to_numpy()
        return PatchStore(root=self.root, index=index, array=self.array, meta=self.meta, _tensors=self._tensors)

    @property
    def patch_size(self) -> int:
        return int(self.meta["patch_size"])

    def __len__(self) -> int:
        return len(self.index)

    def present(self, **equals: Any) -> pd.DataFrame:
        """Index rows of patches that are not missing, optionally filtered (``role="cls"``, ``split="train"``)."""
        return self.select(**equals).query("~missing")

    def select(self, **equals: Any) -> pd.DataFrame:
        """Index rows whose columns equal the given values (a list/tuple value means 'any of')."""
        mask = np.ones(len(self.index), dtype=bool)
        for col, value in equals.items():
            if col not in self.index.columns:
                raise BenchError(f"patch index has no column {col!r}; columns: {', '.join(self.index.columns)}")
            vals = list(value) if isinstance(value, (list, tuple, set)) else [value]
            mask &= self.index[col].isin(vals).to_numpy()
        return self.index[mask]

    def tensor(self, device: Any = "cpu", dtype: Any = None):
        """The whole array as a torch tensor on `device`, loaded once: uint16 (default) or uint8 (÷257)."""
        import torch

        dtype = dtype or torch.uint16
        if dtype not in (torch.uint16, torch.uint8):
            raise BenchError(f"PatchStore.tensor stores uint16 or uint8, not {dtype}; convert batches with .floats()")
        key = (str(torch.device(device)), dtype)
        if key not in self._tensors:
            arr = np.array(self.array, copy=True)  # a writable in-memory copy (the memmap is read-only)
            if dtype == torch.uint8:
                arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
            self._tensors[key] = torch.from_numpy(arr).to(device)
        return self._tensors[key]

    def floats(self, rows: Any, device: Any = "cpu", dtype: Any = None):
        """Patches `rows` (array positions: ints, a list, the ``row`` column) as float B×1×P×P in [0, 1]."""
        import torch

        t = self.tensor(device, dtype)
        rows = torch.as_tensor(np.array(rows, dtype=np.int64), device=t.device)
        if t.dtype == torch.uint8:
            return (t.index_select(0, rows).float() / 255.0).unsqueeze(1)
        # uint16 kernels are sparse on CUDA: gather through the bit-identical int16 view, widen, unwrap
        picked = t.view(torch.int16).index_select(0, rows).to(torch.int32) & UINT16_MAX
        return (picked.float() / float(UINT16_MAX)).unsqueeze(1)
