"""Dataset fingerprints: what a stage's cache key knows of the data it reads (DESIGN.md "Stages and caching").

A fingerprint hashes the bytes of ``manifest.csv``, ``annotators.csv`` and ``dataset.json``, then the
*content* of every file under ``images/``, ``masks/`` and ``truth/`` (with its relative path) and of
every image the manifest names outside ``images/`` (an import without ``--copy`` points at the
original files by absolute path). So a radiograph or a mask rewritten in place, even at the same
size, changes the key, and a cache hit never returns an output computed from other pixels.

Content digests (BLAKE2b) are memoised in ``<dataset>/.content-hashes.json`` by path, size and
modification time, so a large dataset is read once, not on every run; a memo that cannot be
written (a read-only dataset) only costs the reading. The *content* fingerprint leaves out how
the data is split: the manifest's ``split`` and ``fold`` columns and the ``split`` / ``kfold``
records ``bench data split`` keeps in ``dataset.json``, so re-splitting the labelled data does not
retrain what reads no split (segmentation, SSL pretraining, landmarks).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.errors import BenchError

MEMO_FILE = ".content-hashes.json"
HASHED_FOLDERS: tuple[str, ...] = ("images", "masks", "truth")
SPLIT_COLUMNS: tuple[str, ...] = ("split", "fold")
SPLIT_RECORDS: tuple[str, ...] = ("split", "kfold")        # dataset.json keys written by `bench data split`
_CHUNK = 1 << 20


def stable_hash(obj: object) -> str:
    """SHA-256 of the canonical JSON of `obj` (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class _Memo:
    """path -> (size, mtime_ns, digest) of a dataset's files, read from and saved to its memo file."""

    def __init__(self, root: Path) -> None:
        self.path = root / MEMO_FILE
        try:
            loaded = json.loads(self.path.read_text())
            self.entries: dict[str, list] = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            self.entries = {}
        self.changed = False

    def digest(self, file: Path, name: str) -> str:
        st = file.stat()
        known = self.entries.get(name)
        if isinstance(known, list) and len(known) == 3 and known[:2] == [st.st_size, st.st_mtime_ns]:
            return str(known[2])
        h = hashlib.blake2b(digest_size=20)
        with open(file, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        self.entries[name] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
        self.changed = True
        return h.hexdigest()

    def save(self) -> None:
        if not self.changed:
            return
        from bench.atomic import atomic_write_text

        try:
            atomic_write_text(self.path, json.dumps(self.entries, sort_keys=True))
        except (OSError, BenchError):
            pass                                  # a read-only dataset: digests are recomputed next time


def _external_images(root: Path, manifest: bytes) -> list[Path]:
    """Files the manifest's ``path`` column names outside the dataset's hashed folders."""
    try:
        rows = list(csv.DictReader(io.StringIO(manifest.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error):
        return []                                 # `bench data check` reports an unreadable manifest
    inside = [(root / f).resolve() for f in HASHED_FOLDERS]
    out = []
    for row in rows:
        text = (row.get("path") or "").strip()
        if not text:
            continue
        p = Path(text)
        p = p if p.is_absolute() else root / p
        resolved = p.resolve()
        if not any(resolved.is_relative_to(base) for base in inside) and p.is_file():
            out.append(p)
    return sorted(set(out))


def fingerprint_parts(root: Path) -> list[bytes]:
    """What a dataset's fingerprint hashes, in order: the name and bytes of manifest.csv, annotators.csv
    and dataset.json ("-" when absent), then each hashed file's path and content digest (module docstring)."""
    root = Path(root)
    parts: list[bytes] = []
    for name in ("manifest.csv", "annotators.csv", "dataset.json"):
        p = root / name
        parts += [name.encode(), p.read_bytes() if p.is_file() else b"-"]
    memo = _Memo(root)
    for sub in HASHED_FOLDERS:
        base = root / sub
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                if p.is_file():
                    rel = p.relative_to(root).as_posix()
                    parts.append(f"{rel}:{memo.digest(p, rel)}".encode())
    for p in _external_images(root, parts[1]):
        name = str(p.resolve())
        parts.append(f"external {name}:{memo.digest(p, name)}".encode())
    memo.save()
    return parts


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def dataset_fingerprint(root: Path) -> str:
    """Hash of a dataset's metadata files and its files' contents, splits included."""
    return _digest(fingerprint_parts(root))


def _without_split_records(meta: bytes) -> bytes:
    """dataset.json without what `bench data split` records; other bytes as they are."""
    try:
        data = json.loads(meta)
    except ValueError:
        return meta
    if not isinstance(data, dict) or not any(k in data for k in SPLIT_RECORDS):
        return meta
    return json.dumps({k: v for k, v in data.items() if k not in SPLIT_RECORDS}, sort_keys=True).encode()


def _content(root: Path, parts: list[bytes]) -> str:
    """The fingerprint without the manifest's split and fold columns and dataset.json's split records."""
    h = hashlib.sha256()
    manifest = Path(root) / "manifest.csv"
    if manifest.is_file():
        frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        frame = frame.drop(columns=[c for c in SPLIT_COLUMNS if c in frame.columns])
        h.update(b"manifest-content:" + frame.to_csv(index=False, lineterminator="\n").encode())
    rest = parts[2:]                              # everything but manifest.csv
    rest = rest[:3] + [_without_split_records(rest[3])] + rest[4:]
    h.update(_digest(rest).encode())
    return h.hexdigest()


def content_fingerprint(root: Path) -> str:
    """:func:`dataset_fingerprint` without the splits: what the data is, not how it is split."""
    return _content(root, fingerprint_parts(root))


@dataclass(frozen=True)
class Fingerprint:
    """A dataset as a stage keys it: `full` (content and splits) or `content` (without the splits)."""

    full: str
    content: str

    @classmethod
    def of(cls, root: Path, splits: pd.Series | None = None) -> "Fingerprint":
        """The folder's fingerprints (one listing of its files); `splits` (image_id-aligned, e.g. a fold's)
        replaces the manifest's split."""
        parts = fingerprint_parts(root)
        content = _content(root, parts)
        if splits is None:
            return cls(_digest(parts), content)
        return cls(stable_hash({"content": content, "splits": [str(v) for v in splits]}), content)
