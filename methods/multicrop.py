"""Conventional and bone-aware multi-crop (paper "Multi-crop data augmentation", Fig. 3).

Each patch gives ``n_global`` global views (224 px) and ``n_local`` local views (96 px), the
paper's 2 + 4. A view is a random-resized crop (torchvision ``RandomResizedCrop`` semantics: area
fraction ``s`` uniform in the scale range, aspect ratio log-uniform in ``ratio``, position uniform
inside the patch), resampled to the view size bilinearly (align_corners=False) on the patches'
device. The ``n`` crops of one view size are drawn at once and resampled by one ``grid_sample`` (the
crops of a patch stacked along the grid's rows), so a batch takes two resamplings, not n_global +
n_local. (:mod:`methods.views` composes the paper's flips, rotation and translation into that same
resampling for SSL pretraining.)

Scale ranges (fractions of the patch area) default to global (0.4, 1.0) and local (0.05, 0.4):
the multi-crop ranges of DINO (SwAV's own are (0.14, 1.0) and (0.05, 0.14); set
``global_scale``/``local_scale`` for those). We use the wider ranges because a masked bone
patch is background outside the bone, so SwAV's small crops would more often miss it.

Policies:

* ``conventional``: the first draw is the crop (Table 7's ablation).
* ``bone-aware``: the paper's rejection sampling, vectorised. ``max_tries`` candidate boxes are
  drawn per sample at once; the non-zero fraction of each is read from a summed-area table of the
  patch's non-zero mask (four lookups per box); the first candidate with at least
  ``min_fraction`` (10 %) non-zero pixels is taken. When none passes (rare unless the bone is
  tiny), the same T box sizes are tried once more centred on the centroid of the patch's non-zero
  pixels (``recentre_fallback``, our addition: it rescues small bones that random positions
  miss), and the first of those that passes is taken; else the candidate with the largest
  fraction (the cap: no loop, no hang on patches that never reach 10 %).

Conventions: box sides are clamped to the patch (instead of torchvision's re-draw when a side
does not fit) and box edges are snapped to whole pixels, so the fraction from the table is
exactly that of the pixels the view is resampled from. Bilinear resampling spreads non-zero
values (a view pixel is non-zero when any of its up to four source pixels is), so an enlarged
box's view has at least the box's fraction; a shrunk one (a large local crop) can lose up to
about one view row/column of it (the tests check the views themselves).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from methods.affine import affine_grid

POLICIES = ("bone-aware", "conventional")
Policy = Literal["bone-aware", "conventional"]


@dataclass
class MultiCropConfig:
    """Multi-crop views per patch (paper: 2 global 224 px + 4 local 96 px, ≥ 10 % bone per crop)."""

    n_global: int = 2                               # global views per patch
    n_local: int = 4                                # local views per patch
    global_size: int = 224                          # side of a global view in pixels
    local_size: int = 96                            # side of a local view in pixels
    global_scale: tuple[float, float] = (0.4, 1.0)  # area fraction range of a global crop (DINO; SwAV uses 0.14-1)
    local_scale: tuple[float, float] = (0.05, 0.4)  # area fraction range of a local crop (DINO; SwAV uses 0.05-0.14)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)     # aspect ratio (w/h) range, drawn log-uniformly
    min_fraction: float = 0.10                      # bone-aware: minimum fraction of non-zero pixels per crop
    max_tries: int = 32                             # bone-aware: candidate boxes drawn per crop (then the best)
    recentre_fallback: bool = True                  # bone-aware: also try the drawn sizes centred on the bone centroid

    def validate(self) -> None:
        """Raise BenchError naming the bad option."""
        for name in ("n_global", "n_local"):
            if getattr(self, name) < 0:
                raise BenchError(f"multicrop.{name} = {getattr(self, name)} must be >= 0")
        if self.n_global + self.n_local < 1:
            raise BenchError("multicrop needs at least one view: set multicrop.n_global >= 1")
        for name in ("global_size", "local_size", "max_tries"):
            if getattr(self, name) < 1:
                raise BenchError(f"multicrop.{name} = {getattr(self, name)} must be >= 1")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise BenchError(f"multicrop.{name} = {(lo, hi)} must satisfy 0 < lo <= hi <= 1 "
                                 "(fractions of the patch area)")
        lo, hi = self.ratio
        if not 0 < lo <= hi:
            raise BenchError(f"multicrop.ratio = {(lo, hi)} must satisfy 0 < lo <= hi, e.g. (0.75, 1.333)")
        if not 0 <= self.min_fraction <= 1:
            raise BenchError(f"multicrop.min_fraction = {self.min_fraction} must be in [0, 1]")


@dataclass
class Boxes:
    """Crop boxes in fractions of the patch: centre (cx, cy) and size (w, h), each of length B."""

    cx: torch.Tensor
    cy: torch.Tensor
    w: torch.Tensor
    h: torch.Tensor

    def cat(self, other: "Boxes") -> "Boxes":
        """Candidates of both (…×T each) side by side along the last axis: …×2T."""
        return Boxes(*(torch.cat([a, b], dim=-1) for a, b in zip(vars(self).values(), vars(other).values())))

    def take(self, index: torch.Tensor) -> "Boxes":
        """Selection along the last axis: from …×T candidates, `index` (…) picks one each."""
        pick = lambda t: t.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # noqa: E731
        return Boxes(pick(self.cx), pick(self.cy), pick(self.w), pick(self.h))

    def theta(self) -> torch.Tensor:
        """…×2×3 ``affine_grid`` matrices mapping a view's normalised coordinates into the box."""
        zero = torch.zeros_like(self.w)
        return torch.stack([torch.stack([self.w, zero, 2 * self.cx - 1], dim=-1),
                            torch.stack([zero, self.h, 2 * self.cy - 1], dim=-1)], dim=-2)


def nonzero_table(patches: torch.Tensor) -> torch.Tensor:
    """Summed-area table of the non-zero mask: B×(H+1)×(W+1) int32, zero first row and column."""
    mask = (patches[:, 0] != 0).to(torch.int32)
    sat = mask.cumsum(dim=1, dtype=torch.int32).cumsum(dim=2, dtype=torch.int32)
    return F.pad(sat, (1, 0, 1, 0))


def draw_boxes(batch: int, tries: int | tuple[int, ...], scale: tuple[float, float], ratio: tuple[float, float],
               height: int, width: int, generator: torch.Generator, device: torch.device) -> Boxes:
    """B×T (or B×`tries` for a tuple) random-resized-crop boxes (area fraction uniform in `scale`,
    aspect log-uniform)."""
    g = generator
    shape = (batch, *tries) if isinstance(tries, tuple) else (batch, tries)
    u = torch.rand((4, *shape), generator=g, device=g.device).to(device, non_blocking=True)
    area = (scale[0] + (scale[1] - scale[0]) * u[0]) * (height * width)
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
    aspect = torch.exp(log_r)
    w = (torch.sqrt(area * aspect) / width).clamp(max=1.0)
    h = (torch.sqrt(area / aspect) / height).clamp(max=1.0)
    cx = w / 2 + (1 - w) * u[2]
    cy = h / 2 + (1 - h) * u[3]
    return snap(Boxes(cx, cy, w, h), height, width)


def snap(boxes: Boxes, height: int, width: int) -> Boxes:
    """Snap box edges to whole pixels (at least one pixel wide), so a view samples exactly the
    pixels whose non-zero fraction the summed-area table measures."""
    x0, x1 = _pixel_bounds(boxes.cx, boxes.w, width)
    y0, y1 = _pixel_bounds(boxes.cy, boxes.h, height)
    dtype = boxes.cx.dtype
    return Boxes(((x0 + x1) / (2 * width)).to(dtype), ((y0 + y1) / (2 * height)).to(dtype),
                 ((x1 - x0) / width).to(dtype), ((y1 - y0) / height).to(dtype))


def _pixel_bounds(centre: torch.Tensor, size: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-open pixel index range [lo, hi) of a box side, rounded to whole pixels, at least 1 px."""
    lo = torch.round((centre - size / 2) * n).long().clamp(0, n - 1)
    hi = torch.round((centre + size / 2) * n).long().clamp(1, n)
    return lo, torch.maximum(hi, lo + 1)


def box_fractions(table: torch.Tensor, boxes: Boxes) -> torch.Tensor:
    """Non-zero fraction of each box (B×…) from the summed-area table (four gathers)."""
    b, hp, wp = table.shape
    h, w = hp - 1, wp - 1
    x0, x1 = _pixel_bounds(boxes.cx, boxes.w, w)
    y0, y1 = _pixel_bounds(boxes.cy, boxes.h, h)
    flat = table.reshape(b, -1)
    at = lambda yy, xx: flat.gather(1, (yy * wp + xx).reshape(b, -1)).reshape(yy.shape)  # noqa: E731
    count = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
    area = (x1 - x0) * (y1 - y0)
    return count.to(torch.float32) / area.to(torch.float32)


def centroid(patches: torch.Tensor) -> torch.Tensor:
    """Centre of mass (x, y) of each patch's non-zero pixels, in fractions (B×2); the centre if empty."""
    mask = (patches[:, 0] != 0).to(torch.float32)
    h, w = mask.shape[-2:]
    xs = (torch.arange(w, device=mask.device, dtype=torch.float32) + 0.5) / w
    ys = (torch.arange(h, device=mask.device, dtype=torch.float32) + 0.5) / h
    total = mask.sum(dim=(1, 2))
    cx = (mask.sum(dim=1) * xs).sum(dim=1) / total.clamp_min(1)
    cy = (mask.sum(dim=2) * ys).sum(dim=1) / total.clamp_min(1)
    empty = total == 0
    return torch.stack([torch.where(empty, 0.5, cx), torch.where(empty, 0.5, cy)], dim=1)


def recentre(boxes: Boxes, centre: torch.Tensor, height: int, width: int) -> Boxes:
    """The same box sizes (B×…) moved to `centre` (B×2, fractions), kept inside the patch, snapped."""
    at = lambda c: c.reshape(-1, *([1] * (boxes.cx.dim() - 1))).expand_as(boxes.cx)  # noqa: E731
    cx = torch.minimum(torch.maximum(at(centre[:, 0]), boxes.w / 2), 1 - boxes.w / 2)
    cy = torch.minimum(torch.maximum(at(centre[:, 1]), boxes.h / 2), 1 - boxes.h / 2)
    return snap(Boxes(cx, cy, boxes.w, boxes.h), height, width)


def candidates(batch: int, scale: tuple[float, float], cfg: MultiCropConfig, policy: Policy, height: int,
               width: int, generator: torch.Generator, device: torch.device,
               centre: torch.Tensor | None = None, crops: int | None = None) -> Boxes:
    """The candidate boxes of one crop (B×T), or of `crops` crops at once (B×crops×T): 1
    (conventional) or ``max_tries`` random draws (bone-aware), followed by their re-centred copies
    when ``recentre_fallback`` and `centre` are given."""
    tries = cfg.max_tries if policy == "bone-aware" else 1
    cand = draw_boxes(batch, tries if crops is None else (crops, tries), scale, cfg.ratio, height, width,
                      generator, device)
    if policy == "bone-aware" and cfg.recentre_fallback and centre is not None:
        cand = cand.cat(recentre(cand, centre, height, width))
    return cand


def choose(fractions: torch.Tensor, min_fraction: float) -> torch.Tensor:
    """Index (…) of the first candidate along the last axis reaching `min_fraction`, else of the best."""
    passed = fractions >= min_fraction
    first = passed.to(torch.uint8).argmax(dim=-1)          # argmax returns the first maximum
    best = fractions.argmax(dim=-1)
    return torch.where(passed.any(dim=-1), first, best)


def sample_crops(patches: torch.Tensor, n: int, scale: tuple[float, float], cfg: MultiCropConfig,
                 policy: Policy, generator: torch.Generator, table: torch.Tensor | None = None,
                 centre: torch.Tensor | None = None) -> tuple[Boxes, torch.Tensor]:
    """`n` crops per patch, drawn at once: their boxes (fields B×n) and non-zero fractions (B×n).

    `table` (:func:`nonzero_table`) and `centre` (:func:`centroid`) are computed when not given.
    """
    b, _, h, w = patches.shape
    if table is None:
        table = nonzero_table(patches)
    if centre is None and policy == "bone-aware" and cfg.recentre_fallback:
        centre = centroid(patches)
    cand = candidates(b, scale, cfg, policy, h, w, generator, patches.device, centre, crops=n)
    frac = box_fractions(table, cand)
    if policy == "conventional":
        index = torch.zeros((b, n), dtype=torch.long, device=patches.device)
    else:
        index = choose(frac, cfg.min_fraction)
    return cand.take(index), frac.gather(-1, index.unsqueeze(-1)).squeeze(-1)


def crop_group(patches: torch.Tensor, grid: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample B patches at a B×n×S×S×2 grid (n views each) in one ``grid_sample``: B×n×S×S.

    The n grids of a patch are stacked along the grid's rows, so the patches are not repeated.
    """
    b, n, s, s2, _ = grid.shape
    out = F.grid_sample(patches, grid.reshape(b, n * s, s2, 2), mode=mode, padding_mode="zeros",
                        align_corners=False)
    return out.view(b, n, s, s2)


def crop_resize(patches: torch.Tensor, boxes: Boxes, size: int) -> torch.Tensor:
    """Resample each patch's box to size×size (bilinear, zeros outside): B×1×size×size for boxes of
    length B, B×n×size×size for boxes with fields B×n."""
    grouped = boxes.w.dim() == 2
    theta = boxes.theta().to(patches.dtype)
    b, n = theta.shape[0], theta.shape[1] if grouped else 1
    grid = affine_grid(theta.reshape(b * n, 2, 3), size, size).view(b, n, size, size, 2)
    return crop_group(patches, grid)


def check_patches(patches: torch.Tensor, policy: str) -> None:
    if not isinstance(patches, torch.Tensor) or patches.dim() != 4 or patches.shape[1] != 1:
        shape = tuple(patches.shape) if isinstance(patches, torch.Tensor) else type(patches).__name__
        raise BenchError(f"multicrop expects patches as a B×1×P×P tensor, got {shape}")
    if not patches.is_floating_point():
        raise BenchError(f"multicrop expects float patches (e.g. from methods.encoders.to_input), "
                         f"got dtype {patches.dtype}")
    if policy not in POLICIES:
        raise BenchError(f"unknown multi-crop policy {policy!r}; choose one of {', '.join(POLICIES)}")


def multicrop(patches: torch.Tensor, cfg: MultiCropConfig | None = None, policy: Policy = "bone-aware",
              generator: torch.Generator | None = None, *, return_fractions: bool = False
              ) -> list[torch.Tensor] | tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Multi-crop views of B×1×P×P patches: global views first (B×1×224×224), then locals (B×1×96×96).

    With ``return_fractions=True`` also returns, per view, the non-zero fraction (length B) of the
    chosen box as measured by the summed-area table, for tests and logging.
    """
    cfg = cfg or MultiCropConfig()
    cfg.validate()
    check_patches(patches, policy)
    if generator is None:
        raise BenchError("multicrop needs an explicitly seeded torch.Generator (randomness is never global)")
    table = nonzero_table(patches)
    centre = centroid(patches) if policy == "bone-aware" and cfg.recentre_fallback else None
    views: list[torch.Tensor] = []
    fractions: list[torch.Tensor] = []
    for n, scale, size in view_groups(cfg):
        boxes, frac = sample_crops(patches, n, scale, cfg, policy, generator, table, centre)
        group = crop_resize(patches, boxes, size)
        views.extend(v.unsqueeze(1) for v in group.unbind(1))
        fractions.extend(frac.unbind(1))
    return (views, fractions) if return_fractions else views


def view_groups(cfg: MultiCropConfig) -> list[tuple[int, tuple[float, float], int]]:
    """(number of crops, scale range, view size) of the global then the local views; empty groups left out."""
    return [(n, scale, size) for n, scale, size in ((cfg.n_global, cfg.global_scale, cfg.global_size),
                                                    (cfg.n_local, cfg.local_scale, cfg.local_size)) if n > 0]


__all__ = ["MultiCropConfig", "Boxes", "POLICIES", "nonzero_table", "draw_boxes", "box_fractions",
           "snap", "centroid", "recentre", "candidates", "choose", "sample_crops", "crop_group", "crop_resize",
           "view_groups", "check_patches", "multicrop"]
