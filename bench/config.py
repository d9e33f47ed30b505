"""Configuration: dataclass sections, profiles, validated overrides (DESIGN.md "Entries, suites, profiles").

A resolved configuration is one dataclass instance per registered *section* (``data``, ``run``,
and whatever sections methods register, e.g. ``segmentation``). Values are layered, later wins:

    dataclass defaults → profile values (smoke | quick | paper) → ``--config file.yaml`` files
    → ``--set section.key=value`` → the entry's own overrides (what makes an ablation that ablation)

An entry's overrides come last on purpose: ``single-decoder-simclr`` always has one decoder.
Overriding a key the entry fixes is reported as a warning. Unknown keys and wrong types raise
``BenchError`` naming the key and the nearest valid ones; so does a section's ``validate()`` (bad
values, e.g. ``segmentation.gamma0=2``), called on every section once the layers are applied.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import threading
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from bench.config_values import coerce, type_name
from bench.errors import BenchError, warn_once
from bench.torch_settings import DeterministicMode

PROFILES: tuple[str, ...] = ("smoke", "quick", "paper")


@dataclass
class SectionSpec:
    cls: type
    profiles: dict[str, dict[str, Any]]
    doc: str


_SECTIONS: dict[str, SectionSpec] = {}
_SECTION_MODULES: list[str] = []        # declared, not imported yet (declare_section_modules)
_IMPORTING = threading.RLock()          # reentrant: a declared module may read the configuration as it loads


def register_section(name: str, cls: type, profiles: Mapping[str, Mapping[str, Any]] | None = None) -> type:
    """Register a dataclass as config section `name`, with per-profile values."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"config section {name!r} must be a dataclass, got {cls!r}")
    profiles = {p: dict(v) for p, v in (profiles or {}).items()}
    for profile, values in profiles.items():
        if profile not in PROFILES:
            raise ValueError(f"section {name!r}: unknown profile {profile!r}")
        _check_keys(name, cls, values)
    _SECTIONS[name] = SectionSpec(cls=cls, profiles=profiles, doc=(cls.__doc__ or "").strip())
    return cls


def declare_section_modules(*modules: str) -> None:
    """Name modules whose import registers sections; they are imported when the configuration is first
    read (resolved, listed, described). Entries declare their sections this way instead of importing the
    modules (which import torch): loading the registry stays fast (bench.function_ref)."""
    for module in modules:
        if module not in _SECTION_MODULES:
            _SECTION_MODULES.append(module)


def _registered() -> dict[str, SectionSpec]:
    """Every section, the declared modules imported first (once; a module that fails stays declared)."""
    with _IMPORTING:
        while _SECTION_MODULES:
            module = _SECTION_MODULES.pop(0)
            try:
                importlib.import_module(module)
            except BaseException:
                _SECTION_MODULES.insert(0, module)
                raise
    return _SECTIONS


def sections() -> dict[str, SectionSpec]:
    """The registered sections (after entries were loaded, methods' sections are here too)."""
    return dict(_registered())


# --------------------------------------------------------------------------- the engine's sections
@dataclass
class DataConfig:
    """Which datasets a run uses (DESIGN.md: `seg` trains segmentation and SSL, `cls` has DXA labels)."""

    seg: str = ""               # dataset folder with masks (no labels needed); empty: built-in phantom `public`
    cls: str = ""               # dataset folder with DXA labels; empty: built-in phantom `clinical`
    phantom_seed: int = 0       # seed of the generated phantoms (shared by every run seed, like a real dataset)
    phantom_profile: str = ""   # size of the generated phantoms; empty: the run's profile
    folds: int = 0              # k-fold cross-validation of `cls` (bench.data.folds); 0: its own split
    fold: int = 0               # with folds >= 2: the fold held out as the test split (bench run --folds)
    fold_seed: int = 0          # draws the folds (when `cls` has no fold column) and each fold's val split
    fold_by: str = ""           # a `cls` manifest column, e.g. site: one fold per value (leave-one-site-out)

    def validate(self) -> None:
        if self.phantom_profile and self.phantom_profile not in PROFILES:
            raise BenchError(f"data.phantom_profile = {self.phantom_profile!r}: use one of {', '.join(PROFILES)} "
                             "(or leave it empty: the run's profile)")
        if self.phantom_seed < 0:
            raise BenchError(f"data.phantom_seed = {self.phantom_seed}: use a seed >= 0")
        if self.folds == 1 or self.folds < 0:
            raise BenchError(f"data.folds = {self.folds}: use 0 (the dataset's own split) or a number of folds >= 2")
        if not self.folds and self.fold:
            raise BenchError(f"data.fold = {self.fold} picks a fold of a cross-validation: give data.folds "
                             "(or bench run --folds K --fold k)")
        if self.folds and not 0 <= self.fold < self.folds:
            raise BenchError(f"data.fold = {self.fold} is not one of the folds 0..{self.folds - 1}")


def check_device_name(name: str, option: str = "--device") -> None:
    """Raise BenchError unless `name` is auto, cpu, cuda or cuda:N (whether a GPU exists is
    bench.hardware.resolve_device's question)."""
    index = name[5:] if name.startswith("cuda:") else ""
    if name not in ("auto", "cpu", "cuda") and not index.isdigit():
        raise BenchError(f"{option} = {name!r}: use auto, cpu, cuda or cuda:N")


@dataclass
class RunConfig:
    """Execution settings that can change numbers (so they key the stage cache)."""

    device: str = "auto"        # auto | cpu | cuda (auto: cuda when available)
    deterministic: DeterministicMode = "auto"  # auto: deterministic on CPU, cuDNN autotuned on CUDA | true | false
    num_threads: int = 0        # torch intra-op threads; 0: torch's default

    def validate(self) -> None:
        check_device_name(self.device, "run.device")
        if self.num_threads < 0:
            raise BenchError(f"run.num_threads = {self.num_threads} must be >= 0 (0: torch's default)")


@dataclass
class CheckpointConfig:
    """Resumable long trainings (bench.checkpoint); keys no cache: saving and resuming change no result."""

    minutes: float = 10.0       # save a resumable state at epoch ends at most this often; 0: never

    def validate(self) -> None:
        if not self.minutes >= 0:
            raise BenchError(f"checkpoint.minutes = {self.minutes} must be >= 0 (0: no resumable states)")


register_section("data", DataConfig)
register_section("run", RunConfig)
register_section("checkpoint", CheckpointConfig)


# --------------------------------------------------------------------------- resolved config
class Config:
    """A resolved configuration: ``cfg.segmentation.gamma0``; ``cfg.to_dict()`` for saving."""

    def __init__(self, profile: str, values: dict[str, Any]):
        self.profile = profile
        self._values = values

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"config has no section {name!r}; sections: {', '.join(sorted(values))}")

    def section(self, name: str) -> Any:
        if name not in self._values:
            raise BenchError(f"config has no section {name!r}; sections: {', '.join(sorted(self._values))}")
        return self._values[name]

    def section_dict(self, name: str) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self.section(name)))

    def to_dict(self, sections: Iterable[str] | None = None) -> dict[str, Any]:
        """Profile and section values; only `sections` (those registered) when given."""
        wanted = set(self._values) if sections is None else set(sections) & set(self._values)
        out: dict[str, Any] = {"profile": self.profile}
        for name in sorted(wanted):
            out[name] = self.section_dict(name)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def get(self, dotted: str) -> Any:
        section, key = _split_key(dotted)
        return getattr(self.section(section), key)


def resolve(profile: str = "smoke", *, config_files: Iterable[str | Path] = (),
            sets: Iterable[str] | Mapping[str, Any] = (),
            entry_overrides: Mapping[str, Any] | None = None,
            entry_name: str = "") -> Config:
    """Build the resolved configuration (layering documented in the module docstring)."""
    if profile not in PROFILES:
        raise BenchError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    layers: list[tuple[str, dict[str, Any]]] = []
    for path in config_files:
        layers.append((f"config file {path}", load_config_file(path, profile)))
    user_sets = parse_sets(sets)
    if user_sets:
        layers.append(("--set", user_sets))
    values: dict[str, Any] = {}
    for name, spec in _registered().items():
        values[name] = spec.cls(**_coerce_all(name, spec.cls, spec.profiles.get(profile, {}), "profile"))
    user_keys: set[str] = set()
    for source, layer in layers:
        _apply(values, layer, source)
        user_keys |= set(layer)
    if entry_overrides:
        clash = sorted(user_keys & set(entry_overrides))
        if clash:       # once a process: a run resolves each entry several times
            warn_once(f"entry {entry_name!r} fixes {', '.join(clash)}; your value is ignored for this entry (an "
                      "ablation keeps what defines it)", stacklevel=2)
        _apply(values, dict(entry_overrides), f"entry {entry_name}")
    for section in values.values():   # bad values fail here, before any stage runs, not hours later
        validate = getattr(section, "validate", None)
        if callable(validate):
            validate()
    return Config(profile, values)


def parse_sets(sets: Iterable[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``["a.b=1", ...]`` → ``{"a.b": "1"}`` (strings are coerced against the field type later)."""
    if isinstance(sets, Mapping):
        return dict(sets)
    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise BenchError(f"--set {item!r} must look like section.key=value, e.g. segmentation.gamma0=0.5")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _unique_keys_loader() -> type:
    """A yaml SafeLoader refusing a key given twice in one mapping (plain YAML keeps the last silently)."""
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            seen: set = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep=deep)
    return UniqueKeys


def load_config_file(path: str | Path, profile: str | None = None) -> dict[str, Any]:
    """Read a YAML or JSON overlay: nested ``{section: {key: value}}`` or flat dotted keys, or a run's
    saved ``config.json`` (its ``config`` mapping: rerun with exactly a run's options); an option
    given twice (in one mapping, or nested and dotted) is an error. A ``profile`` key (a saved
    config.json has one) does not choose the profile: one other than `profile` is warned about."""
    import yaml

    path = Path(path)
    if path.is_dir():
        raise BenchError(f"config file {path} is a folder; give a YAML or JSON file")
    if not path.is_file():
        raise BenchError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BenchError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); give a "
                         "YAML or JSON file") from exc
    except OSError as exc:
        raise BenchError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_unique_keys_loader()) or {}
    except yaml.YAMLError as exc:
        raise BenchError(f"config file {path} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BenchError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    if isinstance(data.get("config"), dict) and "run_key" in data:     # a run's config.json (bench.results)
        data = {"profile": data.get("profile"), **data["config"]}
        if isinstance(data.get("data"), dict) and data["data"].get("fold") == "all":
            # a pooled cross-validation (bench.cv): its folds come from `bench run --folds`
            data["data"] = {k: v for k, v in data["data"].items() if k != "fold"}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "profile":
            if profile is not None and value != profile:            # once per file, however often resolved
                warn_once(f"config file {path} says profile {value!r}; the run's profile is {profile!r} "
                          "(--profile chooses it; the file's options apply on top)", stacklevel=2)
            continue
        items = ([(f"{key}.{sub}", v) for sub, v in value.items()] if isinstance(value, dict)
                 else [(str(key), value)])
        for dotted, v in items:
            if dotted in flat:
                raise BenchError(f"config file {path} gives {dotted} twice (nested and as a dotted key); keep one")
            flat[dotted] = v
    return flat


def valid_keys() -> list[str]:
    return [f"{s}.{f.name}" for s, spec in _registered().items() for f in dataclasses.fields(spec.cls)]


def describe() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, one-line doc) for every option; docs come from field comments."""
    rows = []
    for s, spec in _registered().items():
        hints = typing.get_type_hints(spec.cls)
        docs = _field_comments(spec.cls)
        for f in dataclasses.fields(spec.cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
            rows.append((f"{s}.{f.name}", type_name(hints[f.name]), default, docs.get(f.name, "")))
    return rows


# --------------------------------------------------------------------------- internals
def _split_key(dotted: str) -> tuple[str, str]:
    if "." not in dotted:
        raise BenchError(f"option {dotted!r} must be section.key; valid options include "
                         f"{', '.join(difflib.get_close_matches(dotted, valid_keys(), n=5, cutoff=0.3)) or ', '.join(valid_keys()[:5])}")
    section, key = dotted.split(".", 1)
    return section, key


def _unknown(dotted: str, source: str) -> BenchError:
    near = difflib.get_close_matches(dotted, valid_keys(), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(near)}?" if near else "; `bench list --options` lists them all"
    return BenchError(f"unknown option {dotted!r} (from {source}){hint}")


def _check_keys(section: str, cls: type, values: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            raise _unknown(f"{section}.{key}", "profile")


def _apply(values: dict[str, Any], layer: Mapping[str, Any], source: str) -> None:
    for dotted, raw in layer.items():
        section, key = _split_key(dotted)
        if section not in values:
            raise _unknown(dotted, source)
        obj = values[section]
        names = {f.name for f in dataclasses.fields(obj)}
        if key not in names:
            raise _unknown(dotted, source)
        hints = typing.get_type_hints(type(obj))
        setattr(obj, key, coerce(raw, hints[key], dotted, source))


def _coerce_all(section: str, cls: type, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {k: coerce(v, hints[k], f"{section}.{k}", source) for k, v in values.items()}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _field_comments(cls: type) -> dict[str, str]:
    """One-line docs of the fields: the trailing ``# comment`` of each field in the source."""
    import inspect

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    for line in lines:
        stripped = line.strip()
        if ":" in stripped and "#" in stripped and not stripped.startswith(("#", '"')):
            name = stripped.split(":", 1)[0].strip()
            if name.isidentifier():
                docs[name] = stripped.split("#", 1)[1].strip()
    return docs
