"""What a run logs, in MLflow's terms (bench.tracking): config → params, metrics → keys, history → steps.

- Config: nested mappings and dataclasses flatten to dotted keys; lists and tuples become JSON.
- Final metrics ``{split: {m: v}}`` → ``split_m``; NaN stays NaN (an undefined AUC stays visible);
  None and non-numbers are skipped (they stay in ``metrics.json``).
- History rows (stage, epoch, metric, value) → ``<stage>/<metric>`` at ``step = epoch``.
- Names: characters MLflow rejects become ``_``; tags are cut to MLflow's length limit; filter
  literals are quoted the way MLflow's parser reads them.
"""
from __future__ import annotations

import dataclasses
import json
import numbers
import os
import re
from typing import TYPE_CHECKING, Any, Mapping

from bench.errors import BenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

HISTORY_COLUMNS = ("stage", "epoch", "metric", "value")


def flatten(config: Mapping, prefix: str = "") -> dict[str, str | float | int | bool]:
    """Nested mappings (and dataclasses) → dotted keys; lists/tuples → JSON; None → "None".

    ``{"segmentation": {"gamma0": 0.5}, "crops": [224, 96]}`` →
    ``{"segmentation.gamma0": 0.5, "crops": "[224, 96]"}``. Two inputs that flatten to the same
    key (``{"a.b": 1, "a": {"b": 2}}``) raise BenchError.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise BenchError(f"flatten expects a mapping of config values, got {type(config).__name__}")
    out: dict[str, str | float | int | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            items = flatten(value, prefix=f"{name}.")
            if not items:
                items = {name: "{}"}
        else:
            items = {name: param_value(value)}
        for k, v in items.items():
            if k in out:
                raise BenchError(f"config key {k!r} occurs twice after flattening nested keys with '.'; "
                                 "rename one of them")
            out[k] = v
    return out


def param_value(value: Any) -> str | float | int | bool:
    if value is None:
        return "None"
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numbers.Number) and hasattr(value, "item"):  # numpy scalar
        return value.item()
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def final_metrics(metrics: Mapping, prefix: str = "") -> dict[str, float]:
    """``{split: {metric: v}}`` → ``{"split_metric": v}`` (any depth, joined with ``_``).

    Numbers (bools included) become floats, NaN stays NaN; None and non-numbers are skipped.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(final_metrics(value, prefix=f"{name}_"))
        elif isinstance(value, numbers.Number) and not isinstance(value, complex):
            out[name] = float(value)
    return out


def mlflow_key(name: str) -> str:
    r"""An MLflow-valid param/metric key: characters outside ``[/\w.\- :]`` become ``_``,
    empty path parts are dropped (MLflow rejects names that normalise to another path)."""
    name = re.sub(r"[^/\w.\- :]", "_", str(name))
    return "/".join(part for part in name.split("/") if part not in ("", ".", "..")) or "_"


def filter_literal(value: str) -> str:
    """A string literal for an MLflow filter (MLflow's parser has no escape for quotes)."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise BenchError(f"name {value!r} contains both quote characters; MLflow cannot search for it. "
                     "Rename the entry or suite.")


def tag_values(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """Tag values as strings within MLflow's length limit."""
    from mlflow.utils.validation import MAX_TAG_VAL_LENGTH

    return {str(k): str(x)[:MAX_TAG_VAL_LENGTH] for k, x in (tags or {}).items()}


def history_metrics(history: pd.DataFrame | None) -> list[tuple[str, float, int]]:
    """Rows (stage, epoch, metric, value) → (``"<stage>/<metric>"``, value, step = epoch)."""
    if history is None or len(history) == 0:
        return []
    missing = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if missing:
        raise BenchError(f"history lacks columns {missing}; expected {list(HISTORY_COLUMNS)}")
    out = []
    for stage, epoch, metric, value in history[list(HISTORY_COLUMNS)].itertuples(index=False, name=None):
        try:
            value = float(value)
            step = int(epoch)
        except (TypeError, ValueError) as exc:
            raise BenchError(f"history row ({stage}, {epoch}, {metric}, {value!r}) needs an integer "
                             f"epoch and a numeric value: {exc}") from None
        out.append((f"{stage}/{metric}", value, step))
    return out
