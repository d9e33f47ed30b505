"""COCO class names -> class ids (bench.data.CLASS_NAMES) for the COCO import (bench.data.coco).

A user-editable mapping (YAML/JSON: ``coco name: ulna | radius | M1..M5 | 0..7 | background | null``)
on top of :func:`default_class`, which recognises common names ("ulna", "distal radius",
"metacarpal 1", "1st metacarpal", "MC1", "M1", "metacarpal I", "thumb metacarpal", ...) and other
hand bones (carpals, phalanges, sesamoids), which are background (:data:`IGNORE`).
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from bench.data.format import BONES, CLASS_NAMES
from bench.errors import BenchError

IGNORE = 0  # class id of names that are ignored (background)
_ORDINALS = {"1": 1, "2": 2, "3": 3, "4": 4, "5": 5, "1st": 1, "2nd": 2, "3rd": 3, "4th": 4, "5th": 5,
             "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "i": 1, "ii": 2, "iii": 3,
             "iv": 4, "v": 5, "thumb": 1, "pollex": 1, "index": 2, "middle": 3, "ring": 4,
             "little": 5, "small": 5, "pinky": 5, "pinkie": 5}
_ORD = "|".join(sorted(_ORDINALS, key=len, reverse=True))
_MC = r"(?:metacarpals?|metacarpus|mc|m)"
_MC_PATTERNS = (re.compile(rf"^{_MC}(?:finger)?({_ORD})(?:finger)?$"),
                re.compile(rf"^({_ORD})(?:finger|digit|ray)?{_MC}$"))
_BACKGROUND_WORDS = ("phalan", "carp", "scaphoid", "lunate", "triquetr", "pisiform", "trapezi",
                     "trapezoid", "capitate", "hamate", "sesamoid", "background", "soft tissue",
                     "marker", "ring", "watch", "collimat")
_STOP_WORDS = {"bone", "bones", "the", "left", "right", "distal", "shaft", "of", "os"}


def normalise_name(name: str) -> str:
    """Lower case, words only, without words that do not change the bone ('left', 'bone', ...)."""
    words = re.sub(r"[^a-z0-9]+", " ", str(name).lower()).split()
    return " ".join(w for w in words if w not in _STOP_WORDS)


def default_class(name: str) -> int | None:
    """Class id for a common bone name, 0 for other structures (background), None if unknown."""
    norm = normalise_name(name)
    compact = norm.replace(" ", "")
    for cid, cname in enumerate(CLASS_NAMES):
        if compact == cname.lower():
            return cid
    if compact in ("ulna", "ulnar"):
        return BONES["ulna"]
    if compact in ("radius", "radial"):
        return BONES["radius"]
    for pattern in _MC_PATTERNS:
        match = pattern.match(compact)
        if match:
            return BONES[f"M{_ORDINALS[match.group(1)]}"]
    if any(word in norm for word in _BACKGROUND_WORDS) and "metacarp" not in norm:
        return IGNORE
    return None


def _target_to_class(value: object, key: str, source: Path) -> int:
    """A class-map value (bone name, id, background/null) -> class id."""
    if value is None or (isinstance(value, str) and value.strip().lower() in
                         ("", "background", "null", "none", "ignore")):
        return IGNORE
    if isinstance(value, bool):
        raise BenchError(f"{source}: {key!r} maps to {value!r}; use a bone name or class id")
    if isinstance(value, int) and 0 <= value < len(CLASS_NAMES):
        return value
    cid = default_class(str(value)) if isinstance(value, str) else None
    if cid is None:
        raise BenchError(f"{source}: {key!r} maps to {value!r}, which is not a class; use one of "
                         f"{', '.join(CLASS_NAMES)}, a class id 0-{len(CLASS_NAMES) - 1} or null")
    return cid


def load_class_map(path: Path | None) -> dict[str, int]:
    """Read a user class map (YAML or JSON, name -> bone) as normalised name -> class id."""
    if path is None:
        return {}
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BenchError(f"cannot read class map {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise BenchError(f"class map {path} must be a mapping 'coco class name: bone' "
                         f"(bones: {', '.join(CLASS_NAMES)}; null or background to ignore)")
    return {normalise_name(k): _target_to_class(v, str(k), path) for k, v in data.items()}


__all__ = ["IGNORE", "default_class", "load_class_map", "normalise_name"]
