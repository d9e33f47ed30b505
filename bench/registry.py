"""Registry of entries and suites (DESIGN.md "Entries, suites, profiles"; timm's decorator registry).

An :class:`Entry` is a named, runnable composition of cacheable :class:`Stage` s plus the config
overrides that define it, and the paper table and row it reproduces. ``@register`` adds one;
suites select entries by fnmatch patterns or by paper table. Entries are discovered by importing
``methods.entries`` and ``baselines.entries``, the ``osteobench.entries`` entry-point group (a
user's package), and the modules named in ``OSTEOBENCH_PLUGINS`` (comma separated) or ``--plugin``.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import warnings
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from bench.errors import BenchError
from bench.function_ref import FunctionRef

if TYPE_CHECKING:
    from bench.stage import StageContext

KINDS: tuple[str, ...] = ("full", "ablation", "baseline", "reference", "example")
PAPER_TABLES: tuple[str, ...] = ("table3", "table4", "table5", "table6", "table7", "table8")


@dataclass(frozen=True)
class Stage:
    """One cacheable step. Its output folder is keyed by the hash of everything listed here.

    ``version`` is how a code change reaches the cache: the key holds no hash of the code, so a fix
    that changes what a stage writes (not a refactor, not a docstring) must raise its ``version``;
    every later stage reading it is then recomputed too, as its key holds the input's key.

    ``companions`` are stages that report on this one's output (an evaluation, figures): each reads
    only this stage, runs right after it whenever it runs, and nothing reads the companion. The options
    only a companion uses are listed in ``unkeyed`` ("section.option"): they stay out of this stage's
    key, so asking for other evaluation splits or more figures recomputes the companion alone, never
    this stage or the stages after it. The stage function must not read an unkeyed option.

    ``fn`` is the function or its name, "package.module:function" (:class:`bench.function_ref.FunctionRef`,
    imported when the stage runs: the built-in entries name theirs, so loading the registry imports no
    torch). The function receives a :class:`bench.stage.StageContext`, writes its outputs into
    ``ctx.out_dir`` and may return a small JSON-able summary. The last stage of an entry writes
    ``bone_predictions.parquet`` (subject_id, split, bone, y_true, p_pos) or, for entries without
    bones, ``predictions.parquet`` (subject_id, split, y_true, p_pos).
    """

    name: str                                   # cache folder name, e.g. "segment", "pretrain"
    fn: Callable[["StageContext"], Mapping[str, Any] | None] | str   # a str becomes a FunctionRef
    sections: tuple[str, ...] = ()              # config sections (or single "section.option"s) that key the cache
    inputs: tuple[str, ...] = ()                # earlier stages (by name) whose outputs it reads
    options: Mapping[str, Any] = field(default_factory=dict)  # entry-specific options (keyed too)
    seeded: bool = True                         # whether the run seed keys the cache
    datasets: tuple[str, ...] = ("seg", "cls")  # datasets whose fingerprints key the cache
    needs: Callable[[Any], Iterable[str]] | None = None  # config -> the inputs it reads under it (None: all)
    splits: tuple[str, ...] | Callable[[Any], Iterable[str]] | None = None  # datasets whose split it reads (None: all)
    version: int = 1                            # the code's version, keyed: bump it when a change alters the output
    companions: tuple["Stage", ...] = ()        # stages reporting on this one's output, run after it (docstring)
    unkeyed: tuple[str, ...] = ()               # "section.option"s of its sections only its companions use

    def __post_init__(self) -> None:
        if isinstance(self.fn, str):
            object.__setattr__(self, "fn", FunctionRef(self.fn))
        for companion in self.companions:
            if companion.inputs != (self.name,) or companion.companions:
                raise ValueError(f"stage {self.name!r}: companion {companion.name!r} must read {self.name!r} "
                                 f"alone and have no companions of its own")
        sections = {s.partition(".")[0] for s in self.sections if "." not in s}
        for option in self.unkeyed:
            if option.partition(".")[0] not in sections or "." not in option:
                raise ValueError(f"stage {self.name!r}: unkeyed option {option!r} is not a 'section.option' of a "
                                 f"whole section it declares ({sorted(sections)})")

    @property
    def function(self) -> Callable[["StageContext"], Mapping[str, Any] | None]:
        """The stage function itself, a named one imported now (called directly, a warning it raises with a
        stacklevel for its caller names the runner, not bench.function_ref)."""
        return self.fn.resolve() if isinstance(self.fn, FunctionRef) else self.fn

    def reads(self, config: Any) -> tuple[str, ...]:
        """The inputs this stage reads under `config`: all of ``inputs``, or those ``needs`` names.

        E.g. bone patches cut from the annotators' masks (``patches.source=annotator``) do not read
        the segmentation model: the stage's cache key then leaves it out, and the runner does not
        train it unless another stage reads it (:func:`stages_to_run`).
        """
        if self.needs is None:
            return self.inputs
        needed = set(self.needs(config))
        unknown = needed - set(self.inputs)
        if unknown:
            raise ValueError(f"stage {self.name!r}: needs() named {sorted(unknown)}, not among its inputs "
                             f"{list(self.inputs)}")
        return tuple(i for i in self.inputs if i in needed)

    def split_roles(self, config: Any) -> tuple[str, ...]:
        """The datasets whose train/val/test assignment this stage reads under `config`.

        Its cache key holds those datasets' full fingerprints and the content alone (images, masks,
        labels; bench.fingerprint.content_fingerprint) of the others: e.g. the segmentation model reads
        the `seg` split, not the `cls` one, so the folds of a cross-validation (bench.data.folds)
        share it. None (the default): every dataset it declares.
        """
        if self.splits is None:
            return self.datasets
        roles = set(self.splits(config) if callable(self.splits) else self.splits)
        return tuple(d for d in self.datasets if d in roles)


@dataclass(frozen=True)
class Entry:
    """A registered method, ablation or baseline."""

    name: str
    description: str
    stages: tuple[Stage, ...]
    kind: str = "full"                          # full | ablation | baseline | reference | example
    table: str | None = None                    # paper table it reproduces, e.g. "table3"
    row: str | None = None                      # the row label in that table, e.g. "SimCLR"
    tags: tuple[str, ...] = ()
    parent: str | None = None                   # the full-method entry an ablation is compared with
    overrides: Mapping[str, Any] = field(default_factory=dict)  # config it fixes ("ssl.method": "simclr")
    citation: str = ""
    info: Mapping[str, str] = field(default_factory=dict)  # extra table columns, e.g. {"roi": ..., "architecture": ...}

    @property
    def all_stages(self) -> tuple[Stage, ...]:
        """Its stages in order, each followed by its companions."""
        return tuple(s for stage in self.stages for s in (stage, *stage.companions))

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"entry {self.name!r}: kind {self.kind!r} not in {KINDS}")
        if not self.stages:
            raise ValueError(f"entry {self.name!r} has no stages")
        names = [s.name for s in self.all_stages]
        if len(set(names)) != len(names):
            raise ValueError(f"entry {self.name!r}: duplicate stage names {names}")
        main = [s.name for s in self.stages]       # a companion is read by no stage
        for i, stage in enumerate(self.stages):
            missing = [d for d in stage.inputs if d not in main[:i]]
            if missing:
                raise ValueError(f"entry {self.name!r}: stage {stage.name!r} reads {missing}, "
                                 "which no earlier stage produces")


def stages_to_run(entry: Entry, config: Any) -> list[tuple[Stage, tuple[str, ...]]]:
    """The entry's stages to run under `config`, in entry order, each with the inputs it reads
    (:meth:`Stage.reads`), and each followed by its companions. A stage that other stages declare as
    an input is left out when, under `config`, none of the stages that run reads it; a stage nobody
    declares as an input (the last one, or one run for its own outputs) always runs."""
    reads = {s.name: s.reads(config) for s in entry.stages}
    declared = {name for s in entry.stages for name in s.inputs}
    required = {entry.stages[-1].name} | {s.name for s in entry.stages if s.name not in declared}
    for stage in reversed(entry.stages):
        if stage.name in required:
            required.update(reads[stage.name])
    return [(s, reads[s.name] if s is stage else s.reads(config)) for stage in entry.stages
            if stage.name in required for s in (stage, *stage.companions)]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    patterns: tuple[str, ...] = ()              # fnmatch patterns over entry names
    tables: tuple[str, ...] = ()                # entries reproducing these paper tables (+ their parents)
    exclude_kinds: tuple[str, ...] = ("example",)
    include_kinds: tuple[str, ...] = ()         # every entry of these kinds joins (Table 8 compares with the full method)


_ENTRIES: dict[str, Entry] = {}
_SUITES: dict[str, Suite] = {}
_LOADED = False


def register(entry: Entry | Callable[[], Entry]) -> Any:
    """Register an entry; usable as ``register(Entry(...))`` or as a decorator on a factory."""
    obj = entry() if callable(entry) and not isinstance(entry, Entry) else entry
    if not isinstance(obj, Entry):
        raise TypeError(f"register expects an Entry or a function returning one, got {obj!r}")
    if obj.name in _ENTRIES and _ENTRIES[obj.name] != obj:
        warnings.warn(f"entry {obj.name!r} registered twice; the later definition wins", stacklevel=2)
    _ENTRIES[obj.name] = obj
    return entry


def register_suite(suite: Suite) -> Suite:
    _SUITES[suite.name] = suite
    return suite


def unregister(name: str) -> None:
    """Remove an entry (tests use it to clean up)."""
    _ENTRIES.pop(name, None)


for _t in PAPER_TABLES:
    register_suite(Suite(_t, f"entries reproducing the paper's {_t.replace('table', 'Table ')}", tables=(_t,),
                         include_kinds=("full",) if _t == "table8" else ()))
register_suite(Suite("paper", "every entry of the paper's Tables 3-8 and the extra baselines",
                     patterns=("*",), exclude_kinds=("example",)))
register_suite(Suite("smoke", "the paper suite; meant for the smoke profile (CPU, minutes)",
                     patterns=("*",), exclude_kinds=("example",)))


def load_entries(plugins: Iterable[str] = ()) -> None:
    """Import the modules that register entries (idempotent for the built-in ones)."""
    global _LOADED
    modules = [] if _LOADED else ["methods.entries", "baselines.entries"]
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists but something it imports is missing
                raise
    if not _LOADED:
        for ep in entry_points(group="osteobench.entries"):
            ep.load()
    _LOADED = True
    extra = [p for p in os.environ.get("OSTEOBENCH_PLUGINS", "").split(",") if p.strip()]
    for name in [*extra, *plugins]:
        try:
            importlib.import_module(name.strip())
        except ImportError as exc:
            raise BenchError(f"cannot import plugin module {name!r}: {exc}; it must be importable "
                             "(installed, or on PYTHONPATH)") from exc
        except ValueError as exc:           # what Stage, Entry and FunctionRef say of a bad definition
            raise BenchError(f"plugin module {name!r}: {exc}") from exc


def entries() -> dict[str, Entry]:
    return dict(sorted(_ENTRIES.items()))


def suites() -> dict[str, Suite]:
    return dict(_SUITES)


def get(name: str) -> Entry:
    if name not in _ENTRIES:
        near = difflib.get_close_matches(name, list(_ENTRIES), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else "; `bench list` shows the entries"
        raise BenchError(f"unknown entry {name!r}{hint}")
    return _ENTRIES[name]


def select(patterns: Iterable[str], exclude_kinds: Iterable[str] = ()) -> list[str]:
    """Entry names matching any fnmatch pattern, in registry order; a pattern matching none raises."""
    names = sorted(_ENTRIES)
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits and not any(ch in pattern for ch in "*?["):
            get(pattern)  # raises with suggestions
        chosen += [h for h in hits if h not in chosen and _ENTRIES[h].kind not in exclude_kinds]
    return chosen


def resolve_suite(name: str) -> list[str]:
    """The entries of a suite (a table suite adds the parents its Δ columns compare with)."""
    if name not in _SUITES:
        near = difflib.get_close_matches(name, list(_SUITES), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise BenchError(f"unknown suite {name!r}{hint}; suites: {', '.join(sorted(_SUITES))}")
    suite = _SUITES[name]
    chosen = select(suite.patterns, suite.exclude_kinds) if suite.patterns else []
    for entry in _ENTRIES.values():
        if entry.kind in suite.include_kinds and entry.name not in chosen:
            chosen.append(entry.name)
        if entry.table in suite.tables and entry.kind not in suite.exclude_kinds:
            for n in (entry.parent, entry.name):
                if n and n in _ENTRIES and n not in chosen:
                    chosen.append(n)
    return chosen
