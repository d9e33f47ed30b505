"""COCO JSON export -> per-annotator uint8 label maps with the seven target bones.

Conventions:
- Class names are mapped to class ids by a user-editable mapping on top of the common names
  (bench.data.coco_classes). Background/null classes are ignored with a warning; names nobody
  recognises are listed in one error.
- Annotators: the attribute ``annotator`` of an annotation's ``attributes`` (or a top-level
  ``annotator`` key), else the annotator named for its file (``NAME=file.json``, default: the
  file's stem). Images are matched across files by the file each name resolves to (``resolve``,
  e.g. the importer's lookup under the image folder: 'imgs/a.png' and '/data/export/a.png' are
  one image), else by the name itself. Files are read as UTF-8 (a byte-order mark is allowed).
- Rasterisation of polygons and RLE: bench.data.coco_raster (pixel centres, even-odd rule,
  larger shapes painted first).
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

from bench.data.coco_classes import IGNORE, default_class, normalise_name
from bench.data.coco_raster import Shape, decode_rle, polygon_area
from bench.errors import BenchError


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
        return Shape(class_id, polygons=polys, area=sum(polygon_area(p) for p in polys), order=order)
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
