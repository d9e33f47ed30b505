"""Label map → seven bone patches (paper "Multi-crop data augmentation", first paragraph; Fig. 3).

For each target bone (ulna, radius, M1–M5; ``bench.data.format.BONES``):

1. **Component.** The largest 8-connected component of the bone's class (``scipy.ndimage.label``);
   smaller blobs of the same class (spurious detections) are dropped. Ties: the first in raster order.
2. **Square crop (Fig. 3).** Bounding box ``bbox = (x0, y0, x1, y1)`` in native pixels, half open
   (``x1``/``y1`` one past the last column/row). Long side ``L = max(x1-x0, y1-y0)``; margin
   ``pad = round(margin · L)`` pixels (half up); square side ``s = L + 2·pad``; along each axis the
   box is centred with the odd pixel going to the right/bottom
   (``left = x0 - (s - w) // 2``). Parts of the square outside the image are zero (padding).
3. **Hadamard product.** ``image ⊙ mask`` at native resolution, where the mask is the component,
   optionally grown by a disk of ``dilation_mm`` (converted with the pixel spacing; when it is 0
   or the image has no spacing, ``dilation_px`` pixels), only onto background pixels (so a dilated
   ulna never takes in the radius or a dropped blob).
4. **Resize** of the ``s × s`` crop to ``patch_size`` with antialiased bilinear interpolation
   (``torch.nn.functional.interpolate(..., antialias=True)``: area-like when shrinking), clipped
   to [0, 1] and stored as ``uint16`` (value · 65535, rounded).

Recorded per bone: bbox, crop square, coverage (fraction of non-zero pixels of the stored patch),
principal-axis angle, component area (px and mm² when the spacing is known), the share of the
class's pixels in the kept component, whether it touches the image border, segmentation confidence.

**Angle convention.** From the component's second central moments; ``angle_deg`` is the angle of
the major axis from the image's vertical (fingers up), positive when the bone's upper end leans
to the right on screen (clockwise), in (-90, 90]. An upright metacarpal is about 0.

**Missing bones** (the paper's "fewer than seven target image segments") are marked
``missing=True`` with a ``reason`` code (the first that applies) and a human-readable ``note``;
they never raise. Codes:

* ``absent``: no pixel of the class.
* ``cut``: the component touches the image border and the bone is one of ``cut_bones`` (by default
  the metacarpals, which a hand radiograph shows whole; the ulna and radius run off the film by
  design and are kept).
* ``small``: area below ``min_area_px``, below ``min_area_mm2`` (when the spacing is known) or
  below ``min_relative_area`` × the median component area of the bones present in the same image
  (the expected bone size, measured on the image itself, so it is resolution- and FOV-free).
* ``low-confidence``: segmentation confidence below ``min_confidence`` (predicted maps only).

A missing bone has no patch (``patch is None``; the store keeps a zero patch in its row).

**Raw patches** (:func:`random_patches`, the no-segmentation ablation of paper Table 4): ``n``
square crops of the unmasked radiograph, side ``u · min(H, W)`` with ``u`` uniform in
``raw_scale`` (default 0.2–0.4: about the crop of a metacarpal in a hand radiograph), position
uniform over the squares that fit inside the image, resized like the bone patches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from bench.config import register_section
from bench.data.format import BONES
from bench.errors import BenchError

SOURCES = ("predicted", "annotator", "truth")
REASONS = ("absent", "cut", "small", "low-confidence")
UINT16_MAX = 65535
METACARPALS = ("M1", "M2", "M3", "M4", "M5")


@dataclass
class PatchConfig:
    """Bone patches: crop, mask, resize (paper Fig. 3) and when a bone counts as missing."""

    patch_size: int = 256                        # stored patch side in px (ours; the paper gives none: 256 holds the 224-px global views)
    margin: float = 0.10                         # margin around the bbox, as a fraction of its long side, each side
    dilation_mm: float = 0.0                     # grow the mask by a disk of this radius (mm); 0 = the mask as is (paper)
    dilation_px: int = 0                         # the same in px; used when dilation_mm is 0 or the image has no spacing
    min_area_px: int = 16                        # a smaller component is `small` (missing)
    min_area_mm2: float = 20.0                   # ... as is one below this many mm² (with a spacing; M1-M5 are > 200 mm²)
    min_relative_area: float = 0.15              # ... or one below this × the median area of the image's bones
    min_confidence: float = 0.5                  # predicted bones with a lower segmentation confidence are missing
    cut_bones: tuple[str, ...] = METACARPALS     # bones marked missing (`cut`) when they touch the image border
    source: Literal["predicted", "annotator", "truth"] = "predicted"  # label maps used (methods.extract)
    annotator: str = ""                          # source=annotator: whose masks; empty = highest weight (beta) per image
    raw_count: int = 7                           # extract_raw: random patches per radiograph (paper Table 4: seven)
    raw_scale: tuple[float, float] = (0.2, 0.4)  # extract_raw: crop side / the image's short side, uniform
    figure_images: int = 4                       # radiographs shown in figures/patches.png

    def validate(self) -> None:
        """Raise BenchError naming the first bad option."""
        checks = [
            (self.patch_size >= 8, "patches.patch_size must be >= 8"),
            (0.0 <= self.margin <= 2.0, "patches.margin must lie in [0, 2] (a fraction of the bone's long side)"),
            (self.dilation_mm >= 0 and self.dilation_px >= 0, "patches.dilation_mm and dilation_px must be >= 0"),
            (self.min_area_px >= 1 and self.min_area_mm2 >= 0, "patches.min_area_px must be >= 1, min_area_mm2 >= 0"),
            (0.0 <= self.min_relative_area < 1.0, "patches.min_relative_area must lie in [0, 1)"),
            (0.0 <= self.min_confidence <= 1.0, "patches.min_confidence must lie in [0, 1]"),
            (all(b in BONES for b in self.cut_bones),
             f"patches.cut_bones must name bones among {', '.join(BONES)}, got {', '.join(self.cut_bones)}"),
            (self.source in SOURCES, f"patches.source must be one of {', '.join(SOURCES)}"),
            (self.raw_count >= 1, "patches.raw_count must be >= 1"),
            (len(self.raw_scale) == 2 and 0.0 < self.raw_scale[0] <= self.raw_scale[1] <= 1.0,
             "patches.raw_scale must be two fractions 0 < lo <= hi <= 1, e.g. 0.2,0.4"),
            (self.figure_images >= 0, "patches.figure_images must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise BenchError(message)


register_section("patches", PatchConfig, {"smoke": {"patch_size": 64}, "quick": {"patch_size": 128},
                                          "paper": {"patch_size": 256}})

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (half open), native pixels


@dataclass
class BonePatch:
    """One bone (or raw) patch of one radiograph and what was measured on the way."""

    bone: str                          # bone name (BONES) or raw1..rawN for random patches
    bone_id: int                       # class id (1-7); 0 for raw patches
    patch: np.ndarray | None           # uint16 P×P; None when missing
    missing: bool = False
    reason: str = ""                   # "" or one of REASONS
    note: str = ""                     # human-readable details of the reason
    bbox: Box | None = None            # the component's bounding box
    crop: Box | None = None            # the square crop (may extend past the image)
    coverage: float = float("nan")     # fraction of non-zero pixels in the stored patch
    angle_deg: float = float("nan")    # principal-axis angle (module docstring)
    area_px: int = 0                   # pixels of the kept component
    area_mm2: float = float("nan")     # the same in mm² (NaN without a spacing)
    confidence: float = float("nan")   # segmentation confidence (NaN for annotator/truth masks)
    touches_border: bool = False       # the component reaches the image border
    component_fraction: float = float("nan")  # share of the class's pixels in the kept component


# --------------------------------------------------------------------------- geometry
def square_crop(bbox: Box, margin: float) -> Box:
    """The square around `bbox` with `margin` × its long side on each side (module docstring)."""
    x0, y0, x1, y1 = bbox
    w, h = x1 - x0, y1 - y0
    long = max(w, h)
    pad = int(math.floor(margin * long + 0.5))
    side = long + 2 * pad
    left, top = x0 - (side - w) // 2, y0 - (side - h) // 2
    return left, top, left + side, top + side


def crop_padded(array: np.ndarray, box: Box) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` with zeros where the box extends past the array."""
    x0, y0, x1, y1 = box
    out = np.zeros((y1 - y0, x1 - x0), dtype=array.dtype)
    h, w = array.shape
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def resize_to_uint16(crop: np.ndarray, size: int) -> np.ndarray:
    """A float crop in [0, 1] → uint16 size×size (antialiased bilinear; identity when sizes match)."""
    x = np.asarray(crop, dtype=np.float32)
    if x.shape != (size, size):
        t = torch.from_numpy(np.ascontiguousarray(x))[None, None]
        x = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    return np.round(np.clip(x, 0.0, 1.0) * UINT16_MAX).astype(np.uint16)


def principal_angle(ys: np.ndarray, xs: np.ndarray) -> float:
    """Major-axis angle of a pixel set from its second central moments (module docstring convention)."""
    if len(xs) < 2:
        return float("nan")
    x = xs.astype(np.float64) - xs.mean()
    y = ys.astype(np.float64) - ys.mean()
    cxx, cyy, cxy = (x * x).mean(), (y * y).mean(), (x * y).mean()
    phi = 0.5 * math.atan2(2.0 * cxy, cxx - cyy)       # from +x, in image coordinates (y down)
    dx, dy = math.cos(phi), math.sin(phi)
    if dy > 0 or (dy == 0 and dx < 0):                  # point the axis up the screen
        dx, dy = -dx, -dy
    angle = math.degrees(math.atan2(dx, -dy))           # from vertical, clockwise positive
    return 90.0 if angle <= -90.0 + 1e-9 else angle


def dilation_radius(cfg: PatchConfig, pixel_spacing_mm: float | None) -> int:
    """Mask dilation in pixels: dilation_mm when it is set and the spacing known, else dilation_px."""
    if pixel_spacing_mm and pixel_spacing_mm > 0 and cfg.dilation_mm > 0:
        return int(math.floor(cfg.dilation_mm / pixel_spacing_mm + 0.5))
    return int(cfg.dilation_px)


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius


# --------------------------------------------------------------------------- extraction
@dataclass
class _Component:
    mask: np.ndarray        # bool, the component inside `sl`
    sl: tuple[slice, slice]
    area: int
    class_area: int


def _largest_components(labels: np.ndarray) -> dict[int, _Component]:
    """Per bone class present in `labels`: its largest 8-connected component."""
    out: dict[int, _Component] = {}
    objects = ndi.find_objects(labels, max_label=max(BONES.values()))
    structure = np.ones((3, 3), dtype=bool)
    for cid in BONES.values():
        sl = objects[cid - 1]
        if sl is None:
            continue
        cls_mask = labels[sl] == cid
        comp, n = ndi.label(cls_mask, structure=structure)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        sizes[0] = 0
        k = int(np.argmax(sizes))
        inner = ndi.find_objects((comp == k).astype(np.int32))[0]
        full = tuple(slice(s.start + i.start, s.start + i.stop) for s, i in zip(sl, inner))
        out[cid] = _Component(mask=comp[inner] == k, sl=full, area=int(sizes[k]), class_area=int(cls_mask.sum()))
    return out


def _check_inputs(image: np.ndarray, labels: np.ndarray) -> None:
    if image.ndim != 2:
        raise BenchError(f"extract_bones expects a 2-D grayscale image, got shape {image.shape}")
    if labels.shape != image.shape:
        raise BenchError(f"label map shape {labels.shape} differs from the image's {image.shape}; "
                         "label maps must be at the image's native resolution")


def extract_bones(image: np.ndarray, labels: np.ndarray, confidence: Mapping[str, float] | None,
                  cfg: PatchConfig, pixel_spacing_mm: float | None = None) -> list[BonePatch]:
    """The seven bone patches of one radiograph, in BONES order (module docstring for conventions).

    `image` is float in [0, 1] (bone bright), `labels` a uint8 label map of the same shape,
    `confidence` bone name → segmentation confidence (None for annotator/truth masks).
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    _check_inputs(image, labels)
    spacing = float(pixel_spacing_mm) if pixel_spacing_mm and np.isfinite(pixel_spacing_mm) and pixel_spacing_mm > 0 else None
    comps = _largest_components(labels)
    areas = [c.area for c in comps.values()]
    median_area = float(np.median(areas)) if areas else 0.0
    radius = dilation_radius(cfg, spacing)
    h, w = labels.shape
    out: list[BonePatch] = []
    for bone, cid in BONES.items():
        conf = float(confidence[bone]) if confidence is not None and bone in confidence else float("nan")
        comp = comps.get(cid)
        if comp is None:
            out.append(BonePatch(bone, cid, None, True, "absent", f"no pixel labelled {bone}", confidence=conf))
            continue
        (ys, xs) = np.nonzero(comp.mask)
        y0, x0 = comp.sl[0].start, comp.sl[1].start
        bbox = (x0, y0, comp.sl[1].stop, comp.sl[0].stop)
        border = bbox[0] == 0 or bbox[1] == 0 or bbox[2] == w or bbox[3] == h
        area_mm2 = comp.area * spacing ** 2 if spacing else float("nan")
        rec = BonePatch(bone, cid, None, bbox=bbox, crop=square_crop(bbox, cfg.margin),
                        angle_deg=principal_angle(ys + y0, xs + x0), area_px=comp.area, area_mm2=area_mm2,
                        confidence=conf, touches_border=bool(border),
                        component_fraction=comp.area / comp.class_area)
        problems = _problems(rec, cfg, median_area)
        if problems:
            rec.missing, rec.reason = True, problems[0][0]
            rec.note = "; ".join(p[1] for p in problems)
        else:
            rec.patch = _masked_patch(image, labels, comp, rec.crop, radius, cfg.patch_size)
            rec.coverage = float(np.count_nonzero(rec.patch)) / rec.patch.size
        out.append(rec)
    return out


def _problems(rec: BonePatch, cfg: PatchConfig, median_area: float) -> list[tuple[str, str]]:
    """(reason code, note) of every plausibility check `rec` fails, in REASONS order."""
    found: list[tuple[str, str]] = []
    if rec.touches_border and rec.bone in cfg.cut_bones:
        found.append(("cut", f"{rec.bone} touches the image border (bbox {rec.bbox}): cut by the field of view"))
    if rec.area_px < cfg.min_area_px:
        found.append(("small", f"{rec.area_px} px < min_area_px {cfg.min_area_px}"))
    elif np.isfinite(rec.area_mm2) and rec.area_mm2 < cfg.min_area_mm2:
        found.append(("small", f"{rec.area_mm2:.1f} mm² < min_area_mm2 {cfg.min_area_mm2:g}"))
    elif rec.area_px < cfg.min_relative_area * median_area:
        found.append(("small", f"{rec.area_px} px < {cfg.min_relative_area:g} × median bone area {median_area:.0f} px"))
    if np.isfinite(rec.confidence) and rec.confidence < cfg.min_confidence:
        found.append(("low-confidence", f"confidence {rec.confidence:.3f} < min_confidence {cfg.min_confidence:g}"))
    return found


def _masked_patch(image: np.ndarray, labels: np.ndarray, comp: _Component, crop: Box, radius: int,
                  size: int) -> np.ndarray:
    """image ⊙ mask inside the square `crop` (zero-padded), resized to size×size uint16."""
    h, w = labels.shape
    wx0, wy0, wx1, wy1 = max(crop[0], 0), max(crop[1], 0), min(crop[2], w), min(crop[3], h)
    mask = np.zeros((wy1 - wy0, wx1 - wx0), dtype=bool)
    sy, sx = comp.sl
    mask[sy.start - wy0:sy.stop - wy0, sx.start - wx0:sx.stop - wx0] = comp.mask
    if radius > 0:
        grown = ndi.binary_dilation(mask, structure=_disk(radius))
        mask = mask | (grown & (labels[wy0:wy1, wx0:wx1] == 0))
    window = np.where(mask, image[wy0:wy1, wx0:wx1], 0.0).astype(np.float32)
    full = np.zeros((crop[3] - crop[1], crop[2] - crop[0]), dtype=np.float32)
    full[wy0 - crop[1]:wy1 - crop[1], wx0 - crop[0]:wx1 - crop[0]] = window
    return resize_to_uint16(full, size)


def random_patches(image: np.ndarray, n: int = 7, *, rng: np.random.Generator, patch_size: int = 256,
                   scale: tuple[float, float] = (0.2, 0.4)) -> list[BonePatch]:
    """`n` random square crops of the unmasked radiograph (paper Table 4's no-segmentation input).

    Side ``round(u · min(H, W))``, ``u ~ U(scale)``, at least 1 px; top-left uniform over the
    positions where the square fits; resized to `patch_size` like the bone patches. Named raw1..rawN.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise BenchError(f"random_patches expects a 2-D grayscale image, got shape {image.shape}")
    lo, hi = scale
    if not 0.0 < lo <= hi <= 1.0:
        raise BenchError(f"random patch scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    h, w = image.shape
    out: list[BonePatch] = []
    for k in range(n):
        side = max(1, min(int(round(rng.uniform(lo, hi) * min(h, w))), h, w))
        x0 = int(rng.integers(0, w - side + 1))
        y0 = int(rng.integers(0, h - side + 1))
        box = (x0, y0, x0 + side, y0 + side)
        patch = resize_to_uint16(image[y0:y0 + side, x0:x0 + side], patch_size)
        out.append(BonePatch(f"raw{k + 1}", 0, patch, bbox=box, crop=box,
                             coverage=float(np.count_nonzero(patch)) / patch.size, area_px=side * side))
    return out
