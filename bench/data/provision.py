"""Datasets a run uses: the user's folders, or the built-in phantom generated once and cached.

Without ``--data-seg``/``--data-cls`` a run uses the phantom presets (``public`` for `seg`,
``clinical`` for `cls`) at the run's profile, generated under ``results/cache/phantom/`` and reused
by every entry and seed (a dataset is fixed across seeds, as in the paper).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from bench import __version__
from bench.config import Config
from bench.data.format import Dataset
from bench.errors import BenchError

ROLES: dict[str, str] = {"seg": "public", "cls": "clinical"}  # role -> phantom preset


def phantom_suffix() -> str:
    """How this osteobench's cached phantoms end: the package and the generator version."""
    from bench.data.phantom.presets import GENERATOR_VERSION

    return f"-v{__version__}-{GENERATOR_VERSION}"


def phantom_dir(cache_root: Path, preset: str, profile: str, seed: int) -> Path:
    """The cached phantom's folder, named by the package and the generator version (a new generator
    never reuses an older phantom)."""
    return Path(cache_root) / "phantom" / f"{preset}-{profile}-seed{seed}{phantom_suffix()}"


def planned_paths(config: Config, cache_root: Path, roles: Iterable[str] | None = None) -> dict[str, Path]:
    """Where each role's dataset (or only those of `roles`) is (given folder) or will be (cached
    phantom), without generating."""
    out: dict[str, Path] = {}
    for role, preset in ROLES.items():
        if roles is not None and role not in roles:
            continue
        given = getattr(config.data, role)
        profile = config.data.phantom_profile or config.profile
        out[role] = Path(given).expanduser() if given else phantom_dir(cache_root, preset, profile,
                                                                         config.data.phantom_seed)
    return out


def check_given(config: Config) -> None:
    """Raise BenchError unless every dataset folder the config names (data.seg, data.cls) holds a manifest,
    and the `cls` one has labels (every run is scored on them: caught before any training, not at the probe)."""
    import pandas as pd

    for role in ROLES:
        given = getattr(config.data, role)
        path = Path(given).expanduser()
        if given and not (path / "manifest.csv").is_file():
            raise BenchError(f"--data-{role} {path}: " + ("no such folder" if not path.exists() else
                                                          "not a dataset folder (no manifest.csv)")
                             + "; make one with `bench data import` and check it with `bench data check`")
        if given and role == "cls":
            labels = pd.read_csv(path / "manifest.csv", usecols=lambda c: c == "label", dtype=str)
            if "label" not in labels.columns or not (labels["label"].fillna("").str.strip() != "").any():
                raise BenchError(f"--data-cls {path}: the dataset has no labels (manifest column `label`); every run "
                                 "is scored on the DXA labels of `cls`: import them with `bench data import --csv` "
                                 "(a T-score or label column)")


def provide(config: Config, cache_root: Path, progress: bool = False,
            roles: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Return {"seg": folder, "cls": folder} (or only `roles`), generating phantoms where no folder is given."""
    check_given(config)
    paths = planned_paths(config, cache_root, roles)
    for role, path in paths.items():
        if (path / "manifest.csv").is_file():
            continue
        from bench.data.phantom import PhantomConfig, synthesize
        from bench.data.phantom.writer import default_workers

        profile = config.data.phantom_profile or config.profile
        workers = default_workers(PhantomConfig.for_preset(ROLES[role], profile).n_images)
        synthesize(path, preset=ROLES[role], profile=profile, seed=config.data.phantom_seed, overwrite=True,
                   progress=progress, workers=workers)
    return paths


def open_all(paths: dict[str, Path]) -> dict[str, Dataset]:
    return {role: Dataset.open(p) for role, p in paths.items()}
