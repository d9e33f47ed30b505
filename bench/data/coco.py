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
- An annotator's name becomes a file name (masks/<image_id>/<annotator>.png, :func:`safe_annotator`):
  Unicode letters and digits, '.', '_' and '-' are kept (NFC), anything else (path separators,
  spaces, control characters) becomes '_', with no leading dot. Two different names giving one file
  name (case ignored, as on Windows and macOS) are an error naming both (:class:`AnnotatorNames`):
  merging them would paint two people's shapes into one mask.
- Rasterisation of polygons and RLE: bench.data.coco_raster (pixel centres, even-odd rule,
  larger shapes painted first).
- A segmentation is a list of polygons or an RLE dict; anything else (a string, a number) is an
  error naming the annotation. Polygons lying entirely outside their image and images a file
  lists without any bone shape are left out with one warning each (up to 5 named, then a count).
"""
from __future__ import annotations

import json
import re
import unicodedata
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


_NAME_BYTES = 200  # longest annotator file name stem in UTF-8 bytes (file systems allow 255)


def safe_annotator(name: object) -> str:
    """Annotator name usable as a file name (masks/<image_id>/<annotator>.png): Unicode letters and
    digits, '.', '_' and '-' kept, other runs '_', no leading or trailing dot or '_'."""
    text = unicodedata.normalize("NFC", str(name))
    safe = re.sub(r"[^\w.-]+", "_", text).strip("._")
    safe = safe.encode("utf-8")[:_NAME_BYTES].decode("utf-8", errors="ignore").rstrip("._")
    return safe or "annotator"


class AnnotatorNames:
    """Source annotator names -> file-safe names (:func:`safe_annotator`); BenchError when two
    different names would share one file name (case ignored), so their masks would merge."""

    def __init__(self) -> None:
        self._by_key: dict[str, tuple[str, str]] = {}   # casefolded safe name -> (source name, where)
        self.renamed: dict[str, str] = {}                # source name -> safe name, where they differ

    def safe(self, name: object, where: str) -> str:
        """The file-safe name of `name` (`where`: where it comes from, for the error)."""
        source = unicodedata.normalize("NFC", str(name)).strip()
        safe = safe_annotator(source)
        first, first_where = self._by_key.setdefault(safe.casefold(), (source, where))
        if first != source:
            raise BenchError(
                f"annotators {first!r} ({first_where}) and {source!r} ({where}) would share the mask file "
                f"name {safe + '.png'!r} (annotator names keep letters, digits, '.', '_' and '-', and case is "
                "ignored), which would merge their masks; rename one of them (in its COCO file, or a file's "
                "annotator with --coco NAME=FILE.json)")
        if safe != source:
            self.renamed[source] = safe
        return safe


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


def _annotator_of(ann: dict, default: str, names: AnnotatorNames, where: str) -> str:
    """The annotation's own annotator (attributes.annotator, else a top-level annotator), else `default`."""
    attrs = ann.get("attributes") if isinstance(ann.get("attributes"), dict) else {}
    name = attrs.get("annotator", ann.get("annotator"))
    return names.safe(name, where) if name not in (None, "") else default


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


def _same_file_annotator(name: str, first: Path, first_named: bool, path: Path, named: bool) -> None:
    """BenchError for two COCO files given one annotator name, saying how each got it."""
    if not first_named and not named:
        raise BenchError(f"COCO files {first} and {path} both default to annotator {name!r} (their file "
                         "names); name them: --coco NAME=FILE.json")
    how = lambda p, n: f"{p} is named {name!r}" if n else f"{p} defaults to {name!r} (its file name)"  # noqa: E731
    raise BenchError(f"COCO files {first} and {path} would be one annotator: {how(first, first_named)} and "
                     f"{how(path, named)}; give each file its own annotator name: --coco NAME=FILE.json")


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
    names = AnnotatorNames()
    file_annotators: dict[str, tuple[Path, bool]] = {}   # source name -> (file, named by the user)
    order = 0
    for name, path in files:
        source = unicodedata.normalize("NFC", str(name or Path(path).stem)).strip()
        if source in file_annotators:
            _same_file_annotator(source, *file_annotators[source], Path(path), bool(name))
        file_annotators[source] = (Path(path), bool(name))
        default = names.safe(source, f"--coco {source}={path}" if name else f"the file name of {path}")
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
                image.shapes.setdefault(_annotator_of(ann, default, names, where), []).append(shape)
                drawn.add(ann["image_id"])
        bare += [f"{path}, image {n}" for i, n in names_by_id.items() if i not in drawn]
    if unknown:
        listing = ", ".join(f"{n!r} ({k} annotations)" for n, k in sorted(unknown.items()))
        template = "\n".join(f"  {json.dumps(n)}: null   # or ulna, radius, M1..M5" for n in sorted(unknown))
        raise BenchError(f"unknown COCO class name(s): {listing}. Map them to bones in a class map "
                         f"file and pass --class-map FILE.yaml, e.g.\n{template}")
    warnings = [f"ignored {k} annotation(s) of class {n!r} (background)" for n, k in sorted(ignored.items())]
    if names.renamed:
        warnings.append("annotator names changed to fit file names (masks/<image_id>/<annotator>.png and "
                        "annotators.csv): " + some([f"{a!r} -> {b!r}" for a, b in names.renamed.items()]))
    if no_geometry:
        warnings.append(f"ignored {no_geometry} annotation(s) without a polygon or RLE (bbox only)")
    if outside:
        warnings.append(f"ignored the polygon(s) of {len(outside)} annotation(s) lying entirely outside their "
                        f"image ({some(outside)}); check the export's coordinates and image sizes")
    if bare:
        warnings.append(f"{len(bare)} image(s) have no bone annotation in a COCO file listing them, so that "
                        f"file gives them no mask ({some(bare)})")
    return CocoImport(images=images, classes=classes, warnings=warnings, missing=list(missing))
