"""Stage execution context and the content-addressed stage cache (DESIGN.md "Stages and caching").

A stage's output lives in ``results/cache/<stage>/<key>`` where the key hashes the stage's
function and its code version (``Stage.version``), its config sections (less the options only its
companions use, ``Stage.unkeyed``), the entry's options for it,
its inputs' keys, the fingerprints of the datasets it reads (bench.fingerprint), the seed (when
seeded), the resolved device type and the package version.
The folder is written atomically and carries ``_stage.json``; a folder without it never exists,
so an interrupted stage is redone: long trainings from their last resumable state (bench.checkpoint).
``_stage.json`` holds the key, its material, the stage's summary and ``seconds``: the function's
wall time, plus, for a stage resumed after an interruption, what the resumed state cost the earlier
attempts up to their last save (also given alone as ``resumed_seconds``).
"""
from __future__ import annotations

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
from bench.fingerprint import Fingerprint, stable_hash
from bench.registry import Stage

STAGE_MARKER = "_stage.json"
HISTORY_FILE = "history.parquet"


def derive_seed(*parts: int | str) -> int:
    """A 32-bit seed derived from (seed, stage name, ...): strings hashed with CRC32."""
    ints = [p if isinstance(p, int) else zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(ints).generate_state(1)[0])


def _fingerprint(value: Fingerprint | str, with_splits: bool) -> str:
    if isinstance(value, Fingerprint):
        return value.full if with_splits else value.content
    return value                         # a plain string (planning placeholders, tests): both at once


#: Options a stage's key leaves out: ``run.device`` is keyed as the resolved device type instead, so
#: ``auto``, ``cpu`` on a machine without a GPU, ``cuda`` and ``cuda:0`` share their outputs.
UNKEYED_OPTIONS: dict[str, tuple[str, ...]] = {"run": ("device",)}


def _keyed_options(config: Config, section: str, unkeyed: tuple[str, ...] = ()) -> Any:
    """The keyed values of a section, or of one option when `section` is "section.option"; `unkeyed`:
    the stage's "section.option"s its companions alone use (:class:`bench.registry.Stage`)."""
    name, _, option = section.partition(".")
    values = config.section_dict(name)
    if option:
        if option not in values:
            raise BenchError(f"a stage declares the option {section!r}, which section {name!r} does not have")
        return values[option]
    skip = {*UNKEYED_OPTIONS.get(name, ()), *(o.partition(".")[2] for o in unkeyed if o.partition(".")[0] == name)}
    return {k: v for k, v in values.items() if k not in skip}


def stage_key(stage: Stage, config: Config, seed: int, input_keys: Mapping[str, str],
              data_fingerprints: Mapping[str, Fingerprint | str], device_type: str) -> tuple[str, dict[str, Any]]:
    """The cache key of a stage and the material it hashes (saved beside the output).

    A dataset whose split the stage does not read (:meth:`Stage.split_roles`) keys it by its content only."""
    split_roles = stage.split_roles(config)
    material = {
        "stage": stage.name,
        "fn": f"{stage.fn.__module__}.{stage.fn.__qualname__}",
        "code": stage.version,
        "sections": {s: _keyed_options(config, s, stage.unkeyed) for s in stage.sections},
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
        summary = stage.function(ctx) or {}
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
