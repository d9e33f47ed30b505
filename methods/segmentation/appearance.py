"""Appearance augmentation of segmentation batches: collimation frames and gamma (ours; the paper is silent).

Why: the U-Net z-scores each image over its canvas (reference), so the bones' standardised
brightness depends on what else the radiograph holds. A CR plate leaves the collimated border
white (phantom site B; common in real CR hand films): on 100 held-out smoke images the 256-row MoSE
of seed 0 reached a mean bone Dice of 0.918 on the 31 with a bright border against 0.976-0.980
on the rest, and failed on pub-00089-1 (a wide white frame around a dim, rotated hand; Dice 0.13,
0.90 with the frame painted black): its bones sat at z = 0.09, those of the training images at
0.8-2.5. Geometric augmentation does not vary that, and affine intensity changes (nnU-Net's
brightness and contrast) cancel in the z-score; what does vary it is the rest of the image and a
non-linear intensity map. Both are applied after the geometric augmentation, batched on the device:

* :func:`collimation_frames`: with probability ``frame_p`` the exposed field becomes an axis-aligned
  box whose edges are drawn uniformly between the canvas border and the annotated bones' bounding
  box (widened by ``FRAME_MARGIN`` pixels), and everything outside it is set to one level: white
  (uniform in [0.85, 1], an unexposed CR plate) or black (uniform in [0, 0.05], an electronic
  shutter), half each. Labels stay: no annotated pixel lies outside the box.
* :func:`random_gamma`: with probability ``gamma_p`` an image's intensities x in [0, 1] become x**g,
  g drawn as nnU-Net's GammaTransform does (half the draws uniform in [g_min, 1), half in [1, g_max];
  nnU-Net: p 0.3, range 0.7-1.5).
"""
from __future__ import annotations

import torch

FRAME_MARGIN = 4                 # pixels kept exposed around the bones' bounding box
WHITE = (0.85, 1.0)              # level of a bright (CR) frame
BLACK = (0.0, 0.05)              # level of a dark (electronic shutter) frame


def _extent(any_along: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last) index where a B x n bool is true; (n, -1) where it never is."""
    n = any_along.shape[1]
    idx = torch.arange(n, device=any_along.device)
    first = torch.where(any_along, idx, n).amin(dim=1)
    last = torch.where(any_along, idx, -1).amax(dim=1)
    return first, last


def _edges(lo: torch.Tensor, hi: torch.Tensor, n: int, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Field edges [start, stop) drawn uniformly between the canvas border and the box [lo, hi]."""
    lo = (lo - FRAME_MARGIN).clamp(min=0).float()
    hi = (hi + FRAME_MARGIN).clamp(max=n - 1).float()
    start = torch.floor(u[:, 0] * (lo + 1))                  # 0 .. lo
    stop = hi + 1 + torch.floor(u[:, 1] * (n - hi))          # hi + 1 .. n
    return start, stop.clamp(max=n)


def collimation_frames(images: torch.Tensor, labels: torch.Tensor, *, p: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Images (B x 1 x H x W in [0, 1]) with a random collimation frame on each with probability `p`
    (module docstring). `labels` (B x M x H x W, 0 = background) locate the bones; an image without
    any annotated pixel keeps its appearance."""
    b, _, h, w = images.shape
    dev = images.device
    u = torch.rand(b, 7, generator=generator, device=dev)
    fg = (labels > 0).any(dim=1)                                                    # B x H x W
    r0, r1 = _extent(fg.any(dim=2))
    c0, c1 = _extent(fg.any(dim=1))
    top, bottom = _edges(r0, r1, h, u[:, 0:2])
    left, right = _edges(c0, c1, w, u[:, 2:4])
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    outside = ((rows < top.view(b, 1, 1)) | (rows >= bottom.view(b, 1, 1))
               | (cols < left.view(b, 1, 1)) | (cols >= right.view(b, 1, 1)))
    apply = (u[:, 4] < p) & (r1 >= 0)
    white = u[:, 5] < 0.5
    lo = torch.where(white, WHITE[0], BLACK[0])
    hi = torch.where(white, WHITE[1], BLACK[1])
    level = (lo + (hi - lo) * u[:, 6]).to(images.dtype).view(b, 1, 1, 1)
    frame = (outside & apply.view(b, 1, 1)).unsqueeze(1)
    return torch.where(frame, level, images)


def random_gamma(images: torch.Tensor, *, p: float, g_min: float, g_max: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """x -> x**g per image with probability `p` (module docstring); images in [0, 1]."""
    b = images.shape[0]
    u = torch.rand(b, 3, generator=generator, device=images.device)
    below = (u[:, 1] < 0.5) & (g_min < 1.0)
    low, high = torch.where(below, g_min, max(g_min, 1.0)), torch.where(below, 1.0, g_max)
    g = torch.where(u[:, 0] < p, low + (high - low) * u[:, 2], 1.0).to(images.dtype)
    return images.clamp(min=0.0).pow(g.view(b, 1, 1, 1))


def augment_appearance(images: torch.Tensor, labels: torch.Tensor, *, frame_p: float, gamma_p: float,
                       gamma_min: float, gamma_max: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Frames, then gamma (module docstring); a probability of 0 draws nothing, so the generator's
    stream, and a training without appearance augmentation, stay as before."""
    if frame_p > 0.0:
        images = collimation_frames(images, labels, p=frame_p, generator=generator)
    if gamma_p > 0.0:
        images = random_gamma(images, p=gamma_p, g_min=gamma_min, g_max=gamma_max, generator=generator)
    return images


__all__ = ["augment_appearance", "collimation_frames", "random_gamma", "FRAME_MARGIN"]
