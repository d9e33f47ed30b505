"""Trabecular texture: an oriented band-pass network whose density and strut thickness fall with T.

A periodic tile of Gaussian noise is band-pass filtered in the Fourier domain around the
network spacing `wavelength_mm` (trabecular separation, which grows as bone density falls),
with more energy across the bone axis so that struts run along it (load-bearing trabeculae).
Thresholding at the (1 - f) quantile gives a strut map covering the area fraction f; the
strut thickness therefore shrinks with f. f and the wavelength derive from the trabecular
density (BV/TV) of each bone. When the detector pixel is coarser than the tile pixel the strut
map is low-passed to the pixel size before sampling (the detector integrates over its pixel).

Tiles are sampled in bone-local coordinates (u along the axis, v across), in millimetres, so
the texture follows each bone's orientation and has the same physical scale at any spacing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

TILE = 256                    # tile side (px); a power of two so indices wrap with a bit mask
CONTRAST = 0.5                # share of the trabecular attenuation carried by the strut pattern


def wavelength_for(density: float) -> float:
    """Network spacing (mm): 0.6 mm at BV/TV 0.20, sparser as density falls."""
    return float(np.clip(0.6 * (0.20 / max(density, 1e-3)) ** 0.5, 0.4, 1.3))


def area_fraction_for(density: float) -> float:
    """Projected strut area fraction: grows with BV/TV (thicker struts), clipped to [0.12, 0.7]."""
    return float(np.clip(2.0 * density, 0.12, 0.7))


@dataclass
class TrabecularTexture:
    """One subject's periodic texture; :meth:`pattern` gives the strut map for a bone."""

    noise: np.ndarray             # (TILE, TILE) band-pass Gaussian field, unit variance
    tile_mm: float                # tile pixel size (mm)
    pixel_mm: float               # detector pixel size the pattern will be sampled at
    _cache: dict = field(default_factory=dict)

    @classmethod
    def generate(cls, rng: np.random.Generator, density: float, pixel_mm: float,
                 anisotropy: float = 0.5) -> "TrabecularTexture":
        lam = wavelength_for(density)
        tile_mm = lam / 6.0
        white = rng.standard_normal((TILE, TILE)).astype(np.float32)
        ky = np.fft.fftfreq(TILE, d=tile_mm)[:, None]          # rows: across the bone (v)
        kx = np.fft.rfftfreq(TILE, d=tile_mm)[None, :]         # cols: along the bone (u)
        k = np.hypot(kx, ky)
        k0 = 1.0 / lam
        cos2 = np.where(k > 0, (ky ** 2 - kx ** 2) / np.maximum(k, 1e-9) ** 2, 0.0)
        w = np.exp(-0.5 * ((k - k0) / (0.35 * k0)) ** 2) * (1.0 + anisotropy * cos2)
        field_ = np.fft.irfft2(np.fft.rfft2(white) * w, s=(TILE, TILE)).astype(np.float32)
        field_ /= field_.std() + 1e-12
        return cls(noise=field_, tile_mm=tile_mm, pixel_mm=pixel_mm)

    def pattern(self, density: float) -> np.ndarray:
        """Texture multiplier (TILE, TILE), mean 1: (1 - CONTRAST) + CONTRAST * struts / f."""
        f = round(area_fraction_for(density), 2)
        if f not in self._cache:
            struts = (self.noise > norm.ppf(1.0 - f)).astype(np.float32)
            sigma_px = 0.5 * self.pixel_mm / self.tile_mm
            if sigma_px > 0.75:      # detector pixel coarser than the struts: integrate
                ky = np.fft.fftfreq(TILE)[:, None]
                kx = np.fft.rfftfreq(TILE)[None, :]
                g = np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (kx ** 2 + ky ** 2))
                struts = np.fft.irfft2(np.fft.rfft2(struts) * g, s=(TILE, TILE)).astype(np.float32)
            mean = float(struts.mean()) or 1.0
            self._cache[f] = ((1.0 - CONTRAST) + CONTRAST * struts / mean).astype(np.float32)
        return self._cache[f]

    def sample(self, pattern: np.ndarray, u: np.ndarray, v: np.ndarray,
               offset: tuple[int, int]) -> np.ndarray:
        """Nearest-neighbour lookup of `pattern` at bone-local coordinates u, v (mm)."""
        inv = 1.0 / self.tile_mm
        iu = (u * inv).astype(np.int32)
        iu += offset[0]
        iu &= TILE - 1
        iv = (v * inv).astype(np.int32)
        iv += offset[1]
        iv &= TILE - 1
        return pattern[iv, iu]
