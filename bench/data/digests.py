"""Pixel digests of radiographs: how `bench evaluate` recognises an image a bundle was trained on.

The digest is the first 16 hex digits of the SHA-256 of an image's shape and its float32 pixels as
:func:`bench.data.imageio.read_image` returns them (bone bright, [0, 1]). It follows the pixels,
not the file: a copy, a rename or a re-import of the same image (another folder, PNG compression
level, DICOM → PNG with the same values) has the same digest; any change to a pixel value (a
re-windowed DICOM, a JPEG re-encoding, a crop) gives another. 64 bits: a chance collision among
10⁵ images has probability about 3·10⁻¹⁰.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

import numpy as np

SCHEME = "sha256[:16] of 'HxW;' and the float32 pixels of bench.data.imageio.read_image"


def pixel_digest(pixels: np.ndarray) -> str:
    """The digest of one radiograph's pixels (any float array; taken as C-contiguous float32)."""
    array = np.ascontiguousarray(pixels, dtype=np.float32)
    digest = hashlib.sha256(f"{'x'.join(map(str, array.shape))};".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def file_digests(paths: Iterable[Path]) -> list[str]:
    """The pixel digest of each image file, read as the harness reads it (a 1400 × 900 16-bit PNG:
    30-40 ms on one core of the development machine, so about 45 s for the paper-sized datasets
    that `bench export` reads)."""
    from bench.data.imageio import read_image

    return [pixel_digest(read_image(Path(p)).pixels) for p in paths]
