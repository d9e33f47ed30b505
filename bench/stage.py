"""Stage execution context and the content-addressed stage cache (DESIGN.md "Stages and caching").

A stage's output lives in ``results/cache/<stage>/<key>`` where the key hashes the stage's
function, its config sections, the entry's options for it, its inputs' keys, the fingerprints of
the datasets it reads, the seed (when seeded), the resolved device type and the package version.
The folder is written atomically and carries ``_stage.json``; a folder without it never exists,
so an interrupted stage is redone: long trainings from their last resumable state (bench.checkpoint).
``_stage.json`` holds the key, its material, the stage's summary and ``seconds``: the function's
wall time, plus, for a stage resumed after an interruption, what the resumed state cost the earlier
attempts up to their last save (also given alone as ``resumed_seconds``).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench import __version__
from bench.atomic import atomic_dir
from bench.checkpoint import Resumer, resume_dir
from bench.errors import BenchError
from bench.config import Config
from bench.data.format import Dataset
from bench.registry import Stage

STAGE_MARKER = "_stage.json"
HISTORY_FILE = "history.parquet"


def stable_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON of `obj` (sorted keys)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def derive_seed(*parts: int | str) -> int:
    """A 32-bit seed derived from (seed, stage name, ...): strings hashed with CRC32."""
    ints = [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0])


def _fingerprint_parts(root: Path) -> list[bytes]:
    """What a dataset's fingerprint hashes, in order: the name and bytes of manifest.csv, annotators.csv
    and dataset.json ("-" when absent), then every image's and mask's relative path and size."""
    root = Path(root)
    parts: list[bytes] = []
    for name in ("manifest.csv", "annotators.csv", "dataset.json"):
        p = root / name
        parts += [name.encode(), p.read_bytes() if p.is_file() else b"-"]
    for sub in ("images", "masks"):
        base = root / sub
        if base.is_dir():
            parts += [f"{p.relative_to(root)}:{p.stat().st_size}".encode() for p in sorted(base.rglob("*"))
                      if p.is_file()]
    return parts


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def dataset_fingerprint(root: Path) -> str:
    """Hash of a dataset's metadata files and its images' names and sizes (cheap, content-sensitive)."""
    return _digest(_fingerprint_parts(root))


SPLIT_COLUMNS: tuple[str, ...] = ("split", "fold")


def _content(root: Path, parts: list[bytes]) -> str:
    """The fingerprint without the manifest's split and fold columns (`parts` from _fingerprint_parts)."""
    h = hashlib.sha256()
    manifest = Path(root) / "manifest.csv"
    if manifest.is_file():
        frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        frame = frame.drop(columns=[c for c in SPLIT_COLUMNS if c in frame.columns])
        h.update(b"manifest-content:" + frame.to_csv(index=False, lineterminator="\n").encode())
    h.update(_digest(parts[2:]).encode())            # everything but manifest.csv
    return h.hexdigest()


def content_fingerprint(root: Path) -> str:
    """:func:`dataset_fingerprint` without the split and fold columns: what the data is, not how it is split."""
    return _content(root, _fingerprint_parts(root))


@dataclass(frozen=True)
class Fingerprint:
    """A dataset as a stage keys it: `full` (content and splits) or `content` (without the splits)."""

    full: str
    content: str

    @classmethod
    def of(cls, root: Path, splits: pd.Series | None = None) -> "Fingerprint":
        """The folder's fingerprints (one listing of its files); `splits` (image_id-aligned, e.g. a fold's)
        replaces the manifest's split."""
        parts = _fingerprint_parts(root)
        content = _content(root, parts)
        if splits is None:
            return cls(_digest(parts), content)
        return cls(stable_hash({"content": content, "splits": [str(v) for v in splits]}), content)


def _fingerprint(value: Fingerprint | str, with_splits: bool) -> str:
    if isinstance(value, Fingerprint):
        return value.full if with_splits else value.content
    return value                         # a plain string (planning placeholders, tests): both at once


def stage_key(stage: Stage, config: Config, seed: int, input_keys: Mapping[str, str],
              data_fingerprints: Mapping[str, Fingerprint | str], device_type: str) -> tuple[str, dict[str, Any]]:
    """The cache key of a stage and the material it hashes (saved beside the output).

    A dataset whose split the stage does not read (:meth:`Stage.split_roles`) keys it by its content only."""
    split_roles = stage.split_roles(config)
    material = {
        "stage": stage.name,
        "fn": f"{stage.fn.__module__}.{stage.fn.__qualname__}",
        "sections": {s: config.section_dict(s) for s in stage.sections},
        "options": dict(stage.options),
        "inputs": dict(input_keys),
        "data": {d: _fingerprint(data_fingerprints[d], d in split_roles)
                 for d in stage.datasets if d in data_fingerprints},
        "seed": seed if stage.seeded else None,
        "device": device_type,
        "version": __version__,
    }
    return stable_hash(material)[:16], material


@dataclass
class StageContext:
    """What a stage function sees."""

    stage: Stage
    config: Config
    seed: int
    out_dir: Path                              # write outputs here (a temp dir renamed on success)
    inputs: dict[str, Path]                    # earlier stages' output folders, by stage name
    datasets: dict[str, Dataset]               # "seg", "cls"
    device: Any                                # torch.device
    options: Mapping[str, Any] = field(default_factory=dict)
    _history: list[dict[str, Any]] = field(default_factory=list)
    resume_dir: Path | None = None             # where a long training keeps its resumable state (bench.checkpoint)
    _resumers: list[Resumer] = field(default_factory=list)

    def rng(self, name: str = "") -> np.random.Generator:
        """A numpy generator seeded from (seed, stage, name)."""
        return np.random.default_rng(derive_seed(self.seed, self.stage.name, name))

    def torch_generator(self, name: str = "", device: Any = "cpu"):
        import torch

        gen = torch.Generator(device=device)
        gen.manual_seed(derive_seed(self.seed, self.stage.name, name))
        return gen

    def resumer(self) -> Resumer:
        """The stage's resumable state (``checkpoint.minutes``; off without a resume folder)."""
        try:
            minutes = float(self.config.section("checkpoint").minutes)
        except BenchError:                     # a hand-built config without the section: never save
            minutes = 0.0
        resumer = Resumer(self.resume_dir, 60.0 * minutes, self._history)
        self._resumers.append(resumer)
        return resumer

    @property
    def resumed_seconds(self) -> float:
        """What the resumed state cost the earlier, interrupted attempts (0 without a resume)."""
        return max((r.earlier_s for r in self._resumers), default=0.0)

    def log(self, metric: str, value: float, epoch: int | None = None) -> None:
        """Record a per-epoch (or final, epoch None) metric; saved as history and sent to MLflow."""
        self._history.append({"stage": self.stage.name, "epoch": -1 if epoch is None else int(epoch),
                              "metric": metric, "value": float(value)})


def is_cached(path: Path) -> bool:
    return (path / STAGE_MARKER).is_file()


def run_stage(stage: Stage, *, cache_root: Path, key: str, material: dict[str, Any],
              config: Config, seed: int, inputs: dict[str, Path], datasets: dict[str, Dataset],
              device: Any) -> Path:
    """Run `stage` into ``cache_root/<stage>/<key>`` unless it is cached; return the folder."""
    import torch

    target = cache_root / stage.name / key
    if is_cached(target):
        return target
    resume = resume_dir(cache_root, stage.name, key)
    with atomic_dir(target, overwrite=True) as tmp:
        ctx = StageContext(stage=stage, config=config, seed=seed, out_dir=tmp, inputs=inputs,
                           datasets=datasets, device=device, options=stage.options, resume_dir=resume)
        torch.manual_seed(derive_seed(seed, stage.name, "torch"))
        started = time.time()
        summary = stage.fn(ctx) or {}
        if ctx._history:
            pd.DataFrame(ctx._history).to_parquet(tmp / HISTORY_FILE, index=False)
        marker = {"key": key, "material": material, "summary": summary,   # seconds: resumed attempts included
                  "seconds": round(time.time() - started + ctx.resumed_seconds, 3)}
        if ctx.resumed_seconds:
            marker["resumed_seconds"] = round(ctx.resumed_seconds, 3)
        (tmp / STAGE_MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True, default=str))
    shutil.rmtree(resume, ignore_errors=True)              # complete: the resumable state is spent
    return target


def read_history(path: Path) -> pd.DataFrame:
    p = Path(path) / HISTORY_FILE
    return pd.read_parquet(p) if p.is_file() else pd.DataFrame(columns=["stage", "epoch", "metric", "value"])
