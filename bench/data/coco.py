"""COCO JSON export -> per-annotator uint8 label maps with the seven target bones.

Conventions:
- Class names are mapped to class ids (bench.data.CLASS_NAMES) by a user-editable mapping
  (YAML/JSON: ``coco name: ulna | radius | M1..M5 | 0..7 | background | null``) on top of
  :func:`default_class`, which recognises common names ("ulna", "distal radius", "metacarpal 1",
  "1st metacarpal", "MC1", "M1", "metacarpal I", "thumb metacarpal", ...) and other hand bones
  (carpals, phalanges, sesamoids), which are background. Background/null classes are ignored
  with a warning; names nobody recognises are listed in one error.
- Annotators: the attribute ``annotator`` of an annotation's ``attributes`` (or a top-level
  ``annotator`` key), else the annotator named for its file (``NAME=file.json``, default: the
  file's stem). Images are matched across files by the file each name resolves to (``resolve``,
  e.g. the importer's lookup under the image folder: 'imgs/a.png' and '/data/export/a.png' are
  one image), else by the name itself. Files are read as UTF-8 (a byte-order mark is allowed).
- Rasterisation: COCO pixel (i, j) covers [j, j+1) x [i, i+1); a pixel belongs to a polygon when
  its centre (j + .5, i + .5) is inside (even-odd rule, scanline fill; exact for fractional
  vertices, which PIL's ImageDraw truncates). Larger shapes are painted first so small bones that
  overlap them stay visible. RLE (uncompressed counts or the compressed COCO string) is decoded
  here (pycocotools' column-major run-length layout; no pycocotools needed).
- A segmentation is a list of polygons or an RLE dict; anything else (a string, a number) is an
  error naming the annotation. Polygons lying entirely outside their image and images a file
  lists without any bone shape are left out with one warning each (up to 5 named, then a count).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
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


@dataclass
class Shape:
    """One annotation: a class id and its geometry (polygons in pixels, or a decoded RLE mask)."""
    class_id: int
    polygons: list[np.ndarray] = field(default_factory=list)  # each (n, 2) x, y
    rle: np.ndarray | None = None                             # bool H x W
    area: float = 0.0                                         # painting order: larger first
    order: int = 0                                            # annotation order as tie-break


@dataclass
class CocoImage:
    file_name: str
    width: int
    height: int
    shapes: dict[str, list[Shape]] = field(default_factory=dict)  # annotator -> shapes


@dataclass
class CocoImport:
    images: dict[str, CocoImage]                             # resolved file (else file name) -> image
    classes: dict[str, int]                                  # COCO class name -> class id used
    warnings: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)         # file names `resolve` found no file for


def decode_rle_string(counts: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string (pycocotools rleFrString) to run lengths."""
    s = counts.decode("ascii") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise BenchError("truncated compressed RLE string")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def decode_rle(segmentation: dict) -> np.ndarray:
    """COCO RLE dict {'size': [h, w], 'counts': list | str} -> bool mask (column-major runs, 0s first)."""
    try:
        h, w = (int(v) for v in segmentation["size"])
        counts = segmentation["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchError(f"RLE segmentation needs 'size': [h, w] and 'counts' ({exc})") from exc
    try:
        runs = decode_rle_string(counts) if isinstance(counts, (str, bytes)) else [int(c) for c in counts]
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise BenchError(f"RLE 'counts' must be a list of integers or a COCO RLE string ({exc})") from exc
    if any(r < 0 for r in runs):
        raise BenchError("RLE counts contain negative runs")
    if sum(runs) != h * w:
        raise BenchError(f"RLE counts add up to {sum(runs)} pixels; the size {h}x{w} needs {h * w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape((w, h)).T


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def fill_polygon(canvas: np.ndarray, poly: np.ndarray, value: int) -> None:
    """Set pixels whose centre (j + .5, i + .5) lies inside `poly` (x, y; even-odd rule) to `value`.

    Exact for fractional vertices (PIL's ImageDraw truncates them, shifting masks by up to 1 px).
    """
    h, w = canvas.shape
    x, y = poly[:, 0].astype(float), poly[:, 1].astype(float)
    x2, y2 = np.roll(x, -1), np.roll(y, -1)
    r0, r1 = max(0, int(np.floor(y.min() - 0.5))), min(h, int(np.ceil(y.max())) + 1)
    if r1 <= r0:
        return
    yc = np.arange(r0, r1, dtype=float)[:, None] + 0.5
    crosses = ((y <= yc) & (y2 > yc)) | ((y2 <= yc) & (y > yc))           # half-open: no double count
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.where(crosses, x + (yc - y) * (x2 - x) / (y2 - y), np.inf)
    xs.sort(axis=1)
    starts = np.clip(np.ceil(xs[:, 0::2] - 0.5), 0, w)                     # first centre >= a
    ends = np.clip(np.ceil(xs[:, 1::2] - 0.5), 0, w)                       # first centre >= b
    n = min(starts.shape[1], ends.shape[1])
    starts, ends = starts[:, :n], ends[:, :n]
    ok = np.isfinite(starts) & np.isfinite(ends) & (ends > starts)
    diff = np.zeros((r1 - r0, w + 1), dtype=np.int32)
    rows = np.broadcast_to(np.arange(r1 - r0)[:, None], starts.shape)
    np.add.at(diff, (rows[ok], starts[ok].astype(int)), 1)
    np.add.at(diff, (rows[ok], ends[ok].astype(int)), -1)
    inside = np.cumsum(diff[:, :w], axis=1) > 0
    canvas[r0:r1][inside] = value


def rasterise(shapes: list[Shape], height: int, width: int) -> np.ndarray:
    """Paint shapes into a uint8 label map, larger shapes first (ties: annotation order)."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    for shape in sorted(shapes, key=lambda s: (-s.area, s.order)):
        if shape.rle is not None:
            if shape.rle.shape != (height, width):
                raise BenchError(f"RLE mask of shape {shape.rle.shape} does not fit the image "
                                 f"({height}x{width})")
            canvas[shape.rle] = shape.class_id
        for poly in shape.polygons:
            fill_polygon(canvas, poly, shape.class_id)
    return canvas


def safe_annotator(name: object) -> str:
    """Annotator name usable as a file name (masks/<image_id>/<annotator>.png)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._")
    return safe or "annotator"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise BenchError(f"cannot read COCO file {path}: {exc}") from exc
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise BenchError(f"{path} is not a COCO export: it needs lists 'images', "
                             "'annotations' and 'categories'")
    return data


def _annotator_of(ann: dict, default: str) -> str:
    attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
    name = attrs.get("annotator", ann.get("annotator"))
    return safe_annotator(name) if name not in (None, "") else default


def some(items: list[str], limit: int = 5) -> str:
    """The first `limit` items joined, then how many more there are."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def _outside(poly: np.ndarray, image: CocoImage) -> bool:
    """True when the polygon's bounding box does not overlap the image (it can paint no pixel)."""
    x, y = poly[:, 0], poly[:, 1]
    return bool(x.max() <= 0 or y.max() <= 0 or x.min() >= image.width or y.min() >= image.height)


def _shape(ann: dict, class_id: int, order: int, where: str, image: CocoImage,
           outside: list[str]) -> Shape | None:
    """Geometry of one annotation; None when it has none (bbox only). Errors name `where`; polygons
    entirely outside the image are dropped and `where` appended to `outside`."""
    seg = ann.get("segmentation")
    if seg is not None and not isinstance(seg, (dict, list)):
        raise BenchError(f"{where}: segmentation is {type(seg).__name__} {str(seg)[:40]!r}; expected a list "
                         "of polygons [[x1, y1, x2, y2, ...]] or an RLE {'size': [h, w], 'counts': ...}; "
                         "fix or re-export the annotation")
    if isinstance(seg, dict):
        try:
            mask = decode_rle(seg)
        except BenchError as exc:
            raise BenchError(f"{where}: bad RLE segmentation: {exc}; re-export the annotation") from exc
        if mask.shape != (image.height, image.width):
            raise BenchError(f"{where}: the RLE mask is {mask.shape[0]}x{mask.shape[1]} (size [h, w]) but "
                             f"the image is {image.height}x{image.width}; re-export the annotation")
        return Shape(class_id, rle=mask, area=float(mask.sum()), order=order)
    if isinstance(seg, list) and seg:
        polys = []
        for flat in seg:
            try:
                pts = np.asarray(flat, dtype=float)
            except (TypeError, ValueError):
                raise BenchError(f"{where}: polygon {flat!r} has a coordinate that is not a number; "
                                 "fix or remove the annotation") from None
            if pts.ndim != 1 or pts.size % 2 or pts.size < 6:
                raise BenchError(f"{where}: a polygon needs at least 3 x,y pairs, got {pts.size} numbers")
            if not np.isfinite(pts).all():
                raise BenchError(f"{where}: a polygon has NaN or infinite coordinates; fix or remove the annotation")
            polys.append(pts.reshape(-1, 2))
        inside = [p for p in polys if not _outside(p, image)]
        if len(inside) < len(polys):
            outside.append(where)
        polys = inside
        return Shape(class_id, polygons=polys, area=sum(_polygon_area(p) for p in polys), order=order)
    return None


def load_coco(files: list[tuple[str | None, Path]], class_map: dict[str, int] | None = None,
              resolve: Callable[[str], str | None] | None = None) -> CocoImport:
    """Read COCO files ((annotator or None, path) pairs) into per-image, per-annotator shapes.

    `resolve` maps a file_name to the file it names (None: not found); images are merged by it.
    """
    class_map = class_map or {}
    images: dict[str, CocoImage] = {}
    missing: dict[str, None] = {}
    classes: dict[str, int] = {}
    unknown: dict[str, int] = {}
    ignored: dict[str, int] = {}
    no_geometry = 0
    outside: list[str] = []     # annotations with a polygon entirely outside the image
    bare: list[str] = []        # images a file lists without any bone shape
    file_annotators: dict[str, Path] = {}
    order = 0
    for name, path in files:
        default = safe_annotator(name) if name else safe_annotator(Path(path).stem)
        if default in file_annotators:
            raise BenchError(f"COCO files {file_annotators[default]} and {path} both default to "
                             f"annotator {default!r}; name them: --coco NAME=FILE.json")
        file_annotators[default] = Path(path)
        data = _read_json(path)
        cats = {c.get("id"): str(c.get("name", "")) for c in data["categories"] if isinstance(c, dict)}
        by_id: dict[object, CocoImage] = {}
        names_by_id: dict[object, str] = {}
        drawn: set[object] = set()              # image ids with a shape from this file (or not found)
        for img in data["images"]:
            try:
                fname, width, height = str(img["file_name"]), int(img["width"]), int(img["height"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BenchError(f"{path}: image entry {img!r} lacks file_name/width/height") from exc
            key = fname
            if resolve is not None:
                try:
                    found = resolve(fname)
                except BenchError as exc:
                    raise BenchError(f"{path}: image {fname}: {exc}") from exc
                if found is None:
                    missing[fname] = None
                    drawn.add(img.get("id"))    # reported as missing instead
                key = found or fname
            entry = images.setdefault(key, CocoImage(fname, width, height))
            if (entry.width, entry.height) != (width, height):
                other = f" (as {entry.file_name})" if entry.file_name != fname else ""
                raise BenchError(f"{path}: image {fname} is {width}x{height} here but "
                                 f"{entry.width}x{entry.height} in another COCO file{other}")
            by_id[img.get("id")] = entry
            names_by_id[img.get("id")] = fname
        for ann in data["annotations"]:
            where = f"{path} annotation {ann.get('id')}"
            if ann.get("image_id") not in by_id:
                raise BenchError(f"{where} refers to image_id {ann.get('image_id')!r}, not in 'images'")
            image = by_id[ann["image_id"]]
            where = f"{path}, image {names_by_id[ann['image_id']]}, annotation {ann.get('id')}"
            if ann.get("category_id") not in cats:
                raise BenchError(f"{where} refers to category_id {ann.get('category_id')!r}, "
                                 "not in 'categories'")
            cname = cats[ann["category_id"]]
            cid = class_map.get(normalise_name(cname), default_class(cname))
            if cid is None:
                unknown[cname] = unknown.get(cname, 0) + 1
                continue
            if cid == IGNORE:
                ignored[cname] = ignored.get(cname, 0) + 1
                continue
            classes[cname] = cid
            shape = _shape(ann, cid, order, where, image, outside)
            order += 1
            if shape is None:
                no_geometry += 1
                continue
            if shape.polygons or shape.rle is not None:
                image.shapes.setdefault(_annotator_of(ann, default), []).append(shape)
                drawn.add(ann["image_id"])
        bare += [f"{path}, image {n}" for i, n in names_by_id.items() if i not in drawn]
    if unknown:
        listing = ", ".join(f"{n!r} ({k} annotations)" for n, k in sorted(unknown.items()))
        template = "\n".join(f"  {json.dumps(n)}: null   # or ulna, radius, M1..M5" for n in sorted(unknown))
        raise BenchError(f"unknown COCO class name(s): {listing}. Map them to bones in a class map "
                         f"file and pass --class-map FILE.yaml, e.g.\n{template}")
    warnings = [f"ignored {k} annotation(s) of class {n!r} (background)" for n, k in sorted(ignored.items())]
    if no_geometry:
        warnings.append(f"ignored {no_geometry} annotation(s) without a polygon or RLE (bbox only)")
    if outside:
        warnings.append(f"ignored the polygon(s) of {len(outside)} annotation(s) lying entirely outside their "
                        f"image ({some(outside)}); check the export's coordinates and image sizes")
    if bare:
        warnings.append(f"{len(bare)} image(s) have no bone annotation in a COCO file listing them, so that "
                        f"file gives them no mask ({some(bare)})")
    return CocoImport(images=images, classes=classes, warnings=warnings, missing=list(missing))
