"""Option values against their dataclass field types (bench.config): ``--set`` strings converted where
unambiguous, anything else refused with a BenchError naming the option, its source and the type."""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

from bench.errors import BenchError


def coerce(value: Any, tp: Any, key: str, source: str = "") -> Any:
    """Check `value` against type `tp`, converting strings (from --set) where unambiguous."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = BenchError(f"option {key} = {value!r} (from {source}) is not a valid {type_name(tp)}")
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, source)
            except BenchError:
                continue
        raise bad
    if origin is typing.Literal:
        if isinstance(value, bool) and str(value).lower() in args:   # YAML reads `true` as a boolean
            return str(value).lower()
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise BenchError(f"option {key} = {value!r} (from {source}) must be one of "
                         f"{', '.join(map(str, args))}")
    if origin in (tuple, list):
        if isinstance(value, str):
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
            except json.JSONDecodeError as exc:
                raise bad from exc
        if not isinstance(value, (list, tuple)):
            raise bad
        item = args[0] if args else Any
        items = [coerce(v, item, key, source) if item is not Any else v for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise bad from None
        if not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):           # no option means anything by nan or inf
            raise BenchError(f"option {key} = {value!r} (from {source}) must be a finite number")
        return float(value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) or isinstance(value, tp):
        return value
    raise bad


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(map(repr, typing.get_args(tp)))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))
