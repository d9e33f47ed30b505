"""The best trial as a config overlay for ``bench run --config`` (issue 8).

Format: the nested YAML that bench.config.load_config_file reads, one ``segmentation`` mapping
with the best trial's parameters (only those it drew: a plateau trial has no anneal length), after
a comment header naming the study, target, value and trial::

    # bench tune: study seg-gl, target seg (validation GED, lower is better), best trial 7
    segmentation:
      gamma0: 0.61
      gamma_schedule: plateau
      gamma_patience: 6
      lam: 0.35

Epoch counts (patience, anneal length) are those of the trainings the trials ran (the study's profile
and its ``--set``/``--config`` overrides, which the header lists with the number of epochs). The file is
checked by resolving it before it is written (atomically).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from bench.atomic import atomic_write_text
from bench.config import resolve
from bench.tune.space import SECTION, as_overrides

OVERLAY_FILE = "best.yaml"


def overlay_dict(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Trial parameters → ``{"segmentation": {name: value}}`` (names checked against the space)."""
    as_overrides(params)
    return {SECTION: {k: (v.item() if hasattr(v, "item") else v) for k, v in params.items()}}


def write_overlay(path: Path, params: Mapping[str, Any], header: list[str], profile: str) -> Path:
    """Write the overlay of `params` to `path` with `header` comment lines; return the path."""
    data = overlay_dict(params)
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(data, sort_keys=False,
                                                                        default_flow_style=False)
    resolve(profile, sets={f"{SECTION}.{k}": v for k, v in data[SECTION].items()})   # the values are valid
    atomic_write_text(path, text)
    return Path(path)
