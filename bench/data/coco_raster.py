"""COCO geometry -> label maps for the COCO import (bench.data.coco).

- Polygons: COCO pixel (i, j) covers [j, j+1) x [i, i+1); a pixel belongs to a polygon when its
  centre (j + .5, i + .5) is inside (even-odd rule, scanline fill; exact for fractional vertices,
  which PIL's ImageDraw truncates).
- RLE: uncompressed counts or the compressed COCO string, decoded here (pycocotools' column-major
  run-length layout; no pycocotools needed).
- Larger shapes are painted first so small bones that overlap them stay visible.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bench.errors import BenchError


@dataclass
class Shape:
    """One annotation: a class id and its geometry (polygons in pixels, or a decoded RLE mask)."""
    class_id: int
    polygons: list[np.ndarray] = field(default_factory=list)  # each (n, 2) x, y
    rle: np.ndarray | None = None                             # bool H x W
    area: float = 0.0                                         # painting order: larger first
    order: int = 0                                            # annotation order as tie-break


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


def polygon_area(poly: np.ndarray) -> float:
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


__all__ = ["Shape", "decode_rle", "decode_rle_string", "fill_polygon", "polygon_area", "rasterise"]
