"""Pixel digests (bench.data.digests): the same pixels in any file give one digest, another pixel another."""
from __future__ import annotations

import hashlib

import numpy as np
import tifffile

from bench.data.digests import file_digests, pixel_digest
from bench.data.imageio import write_png16


def test_a_digest_follows_the_pixels_not_the_file(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 65536, size=(24, 17), dtype=np.uint16)
    write_png16(tmp_path / "a.png", stored.astype(np.float32) / 65535.0)
    tifffile.imwrite(tmp_path / "b.tif", stored, compression="zlib")            # another format and folder name
    changed = stored.copy()
    changed[3, 5] ^= 1                                                           # one grey level, one pixel
    tifffile.imwrite(tmp_path / "c.tif", changed)
    tifffile.imwrite(tmp_path / "d.tif", stored.reshape(17, 24))                 # same values, other shape
    a, b, c, d = file_digests(tmp_path / n for n in ("a.png", "b.tif", "c.tif", "d.tif"))
    assert a == b and len({a, c, d}) == 3
    pixels = stored.astype(np.float32) / np.float32(65535.0)
    expected = hashlib.sha256(b"24x17;" + pixels.tobytes()).hexdigest()[:16]     # the documented scheme
    assert a == pixel_digest(pixels) == expected
    assert pixel_digest(pixels.astype(np.float64)) == a and pixel_digest(np.asfortranarray(pixels)) == a
