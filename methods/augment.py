"""Batched on-device augmentations of bone patches (paper "Multi-crop data augmentation").

The paper's augmentations: rotation in ±30°, horizontal and vertical translation within ±10 % of the
width/height, random horizontal and vertical flips, brightness and contrast from 50 % to 150 %.
Everything here works on a whole batch (B×1×H×W float, CPU or CUDA) with tensor ops: one
``F.grid_sample`` for flips + rotation + translation (the flips folded into its grid; by
``torch.where`` over a flipped copy when there is no rotation or translation), intensity by
broadcasting per-sample factors. There is no per-sample Python loop. Random parameters come only
from the ``torch.Generator`` passed in.

Conventions chosen:

* Geometry: positive angles rotate counter-clockwise *as displayed* (row 0 at the top), like
  ``torchvision.transforms.functional.rotate``; rotation is about the image centre, in pixel units
  (so non-square images are not sheared); translation (tx, ty) moves content right/down by
  tx·W, ty·H pixels. Pixels that come from outside the patch are zero (``padding_mode="zeros"``),
  which is what the masked background already is. Flips are applied first, then rotation +
  translation, then intensity.
* Intensity and the zero background: a bone patch is ``image ⊙ mask``, so zero means "not bone".
  Brightness ``b`` multiplies intensities (x → b·x, torchvision's brightness), which keeps zero
  zero. Contrast ``c`` blends with the mean *of the foreground* (x → c·x + (1−c)·μ_fg, μ_fg the
  mean of the sample's non-zero pixels after brightness) and is applied to foreground pixels
  only, so the background stays exactly zero and the bone/background boundary does not move.
  Foreground values are clamped to [0, 1]. For a patch without zeros (the ``noseg`` ablation's
  raw patches) this is exactly torchvision's brightness-then-contrast on a grayscale image
  (torchvision also blends with the image mean). With ``preserve_background=False`` the contrast
  mean is over all pixels and applied everywhere (torchvision semantics on masked patches).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.errors import BenchError
from methods.affine import affine_grid


@dataclass
class AugmentConfig:
    """Per-view augmentation parameters (paper values as defaults)."""

    rotation_deg: float = 30.0                      # rotation angle drawn uniformly in ±rotation_deg degrees
    translate: float = 0.10                         # shift drawn uniformly in ±translate of width (x) and height (y)
    hflip_p: float = 0.5                            # probability of a horizontal (left-right) flip
    vflip_p: float = 0.5                            # probability of a vertical (up-down) flip
    brightness: tuple[float, float] = (0.5, 1.5)    # brightness factor range (uniform), 1 = unchanged
    contrast: tuple[float, float] = (0.5, 1.5)      # contrast factor range (uniform), 1 = unchanged
    preserve_background: bool = True                # zero (masked) pixels stay zero; contrast about the foreground mean
    interpolation: str = "bilinear"                 # grid_sample mode for rotation/translation: bilinear | nearest

    def validate(self) -> None:
        """Raise BenchError naming the bad option."""
        if not 0 <= self.rotation_deg <= 180:
            raise BenchError(f"augment.rotation_deg = {self.rotation_deg} must be in [0, 180] degrees")
        if not 0 <= self.translate <= 1:
            raise BenchError(f"augment.translate = {self.translate} must be a fraction in [0, 1]")
        for name in ("hflip_p", "vflip_p"):
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise BenchError(f"augment.{name} = {p} must be a probability in [0, 1]")
        for name in ("brightness", "contrast"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise BenchError(f"augment.{name} = {(lo, hi)} must be a range (lo, hi) with 0 <= lo <= hi, "
                                 "e.g. (0.5, 1.5)")
        if self.interpolation not in ("bilinear", "nearest"):
            raise BenchError(f"augment.interpolation = {self.interpolation!r} must be bilinear or nearest")


@dataclass
class AugmentParams:
    """One batch's drawn parameters (each a tensor of length B on the images' device)."""

    angle_deg: torch.Tensor     # counter-clockwise rotation in degrees
    shift: torch.Tensor         # B×2 translation (x, y) as fractions of width/height
    hflip: torch.Tensor         # bool
    vflip: torch.Tensor         # bool
    brightness: torch.Tensor    # multiplicative factor
    contrast: torch.Tensor      # blend factor about the foreground mean


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator, device: torch.device,
             shape: tuple[int, ...] = ()) -> torch.Tensor:
    u = torch.rand((n, *shape), generator=generator, device=generator.device)
    return (lo + (hi - lo) * u).to(device, non_blocking=True)


def sample_params(batch: int, cfg: AugmentConfig, generator: torch.Generator,
                  device: torch.device | str = "cpu") -> AugmentParams:
    """Draw B parameter sets from `generator` (a generator on the images' device avoids a copy).

    The draws are made in a fixed order (angle, shift, hflip, vflip, brightness, contrast), so the
    same generator state gives the same parameters whatever the configured ranges.
    """
    cfg.validate()
    device = torch.device(device)
    angle = _uniform(batch, -cfg.rotation_deg, cfg.rotation_deg, generator, device)
    shift = _uniform(batch, -cfg.translate, cfg.translate, generator, device, (2,))
    hflip = _uniform(batch, 0.0, 1.0, generator, device) < cfg.hflip_p
    vflip = _uniform(batch, 0.0, 1.0, generator, device) < cfg.vflip_p
    bright = _uniform(batch, *cfg.brightness, generator, device)
    contrast = _uniform(batch, *cfg.contrast, generator, device)
    return AugmentParams(angle, shift, hflip, vflip, bright, contrast)


def affine_theta(angle_deg: torch.Tensor, shift: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """B×2×3 ``affine_grid`` matrices (align_corners=False) for rotation about the centre + shift.

    ``affine_grid`` maps *output* normalised coordinates to *input* ones, so this is the inverse of
    the forward motion: p_in = S⁻¹ R(−θ) S (p_out − t), with S = diag(W/2, H/2) converting
    normalised to pixel units (keeps rotations rigid on non-square images) and t = 2·shift in
    normalised units. A counter-clockwise display rotation is a clockwise one in (x right, y down)
    coordinates, hence the sign convention below.
    """
    a = torch.deg2rad(angle_deg.to(torch.float32))
    cos, sin = torch.cos(a), torch.sin(a)
    sx, sy = width / 2.0, height / 2.0
    # forward motion in pixel coordinates (y down): counter-clockwise on screen is
    # [[cos, sin], [-sin, cos]]; its inverse is the transpose.
    m00, m01 = cos, -sin * (sy / sx)
    m10, m11 = sin * (sx / sy), cos
    t = 2.0 * shift.to(torch.float32)
    tx, ty = t[:, 0], t[:, 1]
    b0 = -(m00 * tx + m01 * ty)
    b1 = -(m10 * tx + m11 * ty)
    row0 = torch.stack([m00, m01, b0], dim=1)
    row1 = torch.stack([m10, m11, b1], dim=1)
    return torch.stack([row0, row1], dim=1)


def rotate_translate(x: torch.Tensor, angle_deg: torch.Tensor, shift: torch.Tensor,
                     mode: str = "bilinear", hflip: torch.Tensor | None = None,
                     vflip: torch.Tensor | None = None) -> torch.Tensor:
    """Rotate each image by its angle (counter-clockwise, degrees) and shift it; zeros come in.

    With `hflip`/`vflip` (bool, length B) the image is flipped first, folded into the same grid:
    sampling the flipped image at q is sampling the image at (±q_x, ±q_y), so negating a row of
    theta flips exactly (pixel centres are symmetric with align_corners=False) without the two
    flipped copies of :func:`flip`.
    """
    b, _, h, w = x.shape
    theta = affine_theta(angle_deg, shift, h, w).to(device=x.device, dtype=x.dtype)
    if hflip is not None or vflip is not None:
        one = torch.ones(b, device=x.device, dtype=x.dtype)
        fx = torch.where(hflip.to(x.device), -one, one) if hflip is not None else one
        fy = torch.where(vflip.to(x.device), -one, one) if vflip is not None else one
        theta = theta * torch.stack([fx, fy], dim=1).unsqueeze(-1)
    return F.grid_sample(x, affine_grid(theta, h, w), mode=mode, padding_mode="zeros", align_corners=False)


def flip(x: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor) -> torch.Tensor:
    """Exact per-sample flips (bool vectors of length B), no interpolation."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    x = torch.where(hflip.view(shape), x.flip(-1), x)
    return torch.where(vflip.view(shape), x.flip(-2), x)


def adjust_intensity(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                     preserve_background: bool = True) -> torch.Tensor:
    """Brightness (x·b) then contrast (blend with the foreground mean); see the module docstring."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    b = brightness.to(x.dtype).view(shape)
    c = contrast.to(x.dtype).view(shape)
    y = x * b
    dims = tuple(range(1, x.dim()))
    if preserve_background:
        fg = x != 0
        count = fg.sum(dim=dims, keepdim=True).clamp_min(1)
        mean = (y * fg).sum(dim=dims, keepdim=True) / count
        y = (c * y + (1 - c) * mean).clamp(0, 1)
        return torch.where(fg, y, torch.zeros((), dtype=y.dtype, device=y.device))
    mean = y.mean(dim=dims, keepdim=True)
    return (c * y + (1 - c) * mean).clamp(0, 1)


def apply(x: torch.Tensor, params: AugmentParams, cfg: AugmentConfig) -> torch.Tensor:
    """Apply drawn parameters: flips, then rotation + translation (one grid), then intensity."""
    if cfg.rotation_deg > 0 or cfg.translate > 0:
        x = rotate_translate(x, params.angle_deg, params.shift, cfg.interpolation, params.hflip, params.vflip)
    else:
        x = flip(x, params.hflip, params.vflip)
    return adjust_intensity(x, params.brightness, params.contrast, cfg.preserve_background)


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 1:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise BenchError(f"augment expects a B×1×H×W float tensor, got {shape}; add the channel "
                         "axis with x.unsqueeze(1)")
    if not x.is_floating_point():
        raise BenchError(f"augment expects float intensities in [0, 1], got dtype {x.dtype}; "
                         "convert with methods.encoders.to_input")


def augment(x: torch.Tensor, cfg: AugmentConfig | None = None, generator: torch.Generator | None = None
            ) -> torch.Tensor:
    """Augment a batch B×1×H×W (float in [0, 1], CPU or CUDA) with parameters drawn from `generator`."""
    cfg = cfg or AugmentConfig()
    _check_images(x)
    if generator is None:
        raise BenchError("augment needs an explicitly seeded torch.Generator (randomness is never global)")
    params = sample_params(x.shape[0], cfg, generator, x.device)
    return apply(x, params, cfg)


__all__ = ["AugmentConfig", "AugmentParams", "sample_params", "affine_theta", "rotate_translate",
           "flip", "adjust_intensity", "apply", "augment"]
