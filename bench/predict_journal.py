"""What an interrupted `bench predict` (or `bench evaluate`) keeps: the images already screened, so
that the rerun screens only the rest (bench.predict, bench.external).

The journal is the hidden folder ``.<out>.partial`` beside the output folder `out` (predictions, or
an evaluation's run folder). Its ``lock`` is held while a process screens into `out`;
``journal.json`` holds its key (the model's member checksums and description, and the screening
options; not the batch size: a prediction does not depend on its batch, methods.segmentation.predict,
beyond float round-off, measured up to 1e-8 in a confidence and 3e-8 in a probability on the CPU
between batches of 1 and 8); per screened image, ``done/<id>.json`` holds its CSV row and JSON record
and ``overlays/<name>.png`` its overlay. ``<id>`` hashes the file's resolved path and bytes (and what
else the caller says the screening depends on), so an image that changed is screened again. A rerun with another key starts afresh. When every image is done, the caller
writes its outputs (bench.predict: in a temporary folder that replaces `out`, the overlays
hard-linked from the journal) and deletes the journal.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from bench.atomic import atomic_write_bytes, atomic_write_text
from bench.fingerprint import stable_hash

JOURNAL_FILE = "journal.json"


def journal_key(predictor: Any, options: dict[str, Any]) -> str:
    """What the screening of an image depends on besides the image: the model and the options."""
    meta = getattr(predictor, "meta", None)
    model = predictor.describe() if hasattr(predictor, "describe") else {"type": type(predictor).__name__}
    files = meta.get("files") if isinstance(meta, dict) else None
    return stable_hash({"model": model, "files": files,
                        "options": {k: v for k, v in options.items() if k != "batch_size"}})[:16]


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


class Journal:
    """The journal of the predictions into `out` (module docstring)."""

    def __init__(self, out: Path, key: str):
        out = Path(os.path.abspath(out))
        self.root = out.with_name(f".{out.name}.partial")
        self.lock = self.root / "lock"         # held while screening into `out` (bench.executors.locking)
        self.key = key
        self._ids: dict[tuple[str, str], str] = {}

    def open(self) -> int:
        """Keep the journal of an interrupted run with the same key (another is cleared); return how
        many images it holds."""
        try:
            kept = json.loads((self.root / JOURNAL_FILE).read_text())["key"] == self.key
        except (OSError, ValueError, KeyError, TypeError):
            kept = False
        if not kept:
            for sub in ("done", "overlays"):
                shutil.rmtree(self.root / sub, ignore_errors=True)
        (self.root / "done").mkdir(parents=True, exist_ok=True)
        (self.root / "overlays").mkdir(exist_ok=True)
        atomic_write_text(self.root / JOURNAL_FILE, json.dumps({"key": self.key}))
        return sum(1 for _ in (self.root / "done").glob("*.json"))

    def image_id(self, file: Path, salt: str = "") -> str:
        """The file's resolved path and content (SHA-256 of its bytes: a file replaced by another of
        the same size and time is seen), and `salt` (what else the screening of this one image depends
        on, e.g. a manifest's spacing and side), hashed; once per file (lookup, then save)."""
        key = (str(file), salt)
        if key not in self._ids:
            self._ids[key] = self._hash(file, salt)
        return self._ids[key]

    @staticmethod
    def _hash(file: Path, salt: str) -> str:
        content = hashlib.sha256()
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                content.update(block)
        text = f"{Path(file).resolve()}|{content.hexdigest()}|{salt}"
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def overlay(self, name: str) -> Path:
        return self.root / "overlays" / f"{name}.png"

    def lookup(self, file: Path, name: str, overlays: bool, salt: str = "") -> tuple[dict, dict] | None:
        """(row, record) of `file` screened under `name` (with its overlay when `overlays`), or None."""
        try:
            done = json.loads((self.root / "done" / f"{self.image_id(file, salt)}.json").read_text())
        except (OSError, ValueError):
            return None
        if done.get("name") != name or (overlays and not self.overlay(name).is_file()):
            return None
        row, record = done["row"], done["record"]
        for fields in (row, record) if not overlays else ():
            if "overlay" in fields:
                fields["overlay"] = ""
        return row, record

    def save(self, file: Path, name: str, row: dict, record: dict, overlay: bytes | None, salt: str = "") -> None:
        """Record one screened image (its overlay first, so a record never lacks it)."""
        if overlay is not None:
            atomic_write_bytes(self.overlay(name), overlay)
        text = json.dumps({"name": name, "row": row, "record": record}, default=_plain)   # NaN kept
        atomic_write_text(self.root / "done" / f"{self.image_id(file, salt)}.json", text)

    def link_overlay(self, name: str, dst: Path) -> None:
        """Put the overlay of `name` at `dst` (a hard link; a copy across file systems)."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(self.overlay(name), dst)
        except OSError:
            shutil.copyfile(self.overlay(name), dst)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
