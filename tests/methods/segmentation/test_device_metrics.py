"""Batched GED on the device equals the numpy reference (methods.segmentation.evaluate)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.segmentation.device_metrics import IGNORE, ged_batched, ged_terms_batched, pairwise_distances_batched
from methods.segmentation.evaluate import ged, ged_components, pairwise_distances

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _blobs(rng: np.random.Generator, k: int, h: int, w: int) -> np.ndarray:
    """K label maps of rectangles of a few bone classes (some absent from some maps) on background."""
    maps = np.zeros((k, h, w), np.uint8)
    for i in range(k):
        for c in rng.choice(np.arange(1, 8), size=rng.integers(0, 5), replace=False):
            r0, c0 = rng.integers(0, h - 3), rng.integers(0, w - 3)
            maps[i, r0:r0 + rng.integers(2, h // 2), c0:c0 + rng.integers(2, w // 2)] = c
    return maps


@pytest.mark.parametrize("device", DEVICES)
def test_pairwise_distances_equal_numpy_per_image(device):
    rng = np.random.default_rng(0)
    maps = np.stack([_blobs(rng, 6, 23, 17) for _ in range(4)])
    maps[1, 2] = 0                                   # an empty map: d(empty, empty) = 0, 1 against the others
    got = pairwise_distances_batched(torch.from_numpy(maps).to(device)).cpu().numpy()
    for b in range(4):
        np.testing.assert_allclose(got[b], pairwise_distances(maps[b]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_ged_with_padding_and_weights_equals_numpy_on_the_cropped_maps(device):
    """Pixels outside each image's area (IGNORE) count for nothing; weights are normalised; a zero
    annotation weight drops that annotation, as the numpy form does when it is left out."""
    rng = np.random.default_rng(1)
    b, n, m, h, w = 5, 8, 3, 30, 22
    samples, annotations = _blobs(rng, b * n, h, w).reshape(b, n, h, w), _blobs(rng, b * m, h, w).reshape(b, m, h, w)
    p = rng.random((b, n)) * 3
    q = rng.random((b, m))
    q[2, 1] = 0.0
    crops = [(rng.integers(0, 5), rng.integers(0, 5), rng.integers(15, h - 5), rng.integers(12, w - 5))
             for _ in range(b)]
    s_pad, a_pad = samples.copy(), annotations.copy()
    for i, (t, l, hh, ww) in enumerate(crops):
        inside = np.zeros((h, w), bool)
        inside[t:t + hh, l:l + ww] = True
        s_pad[i][:, ~inside] = IGNORE
        a_pad[i][:, ~inside] = IGNORE
    got = ged_batched(torch.from_numpy(s_pad).to(device), torch.from_numpy(a_pad).to(device),
                      torch.from_numpy(p).float().to(device), torch.from_numpy(q).float().to(device)).cpu().numpy()
    terms = ged_terms_batched(torch.from_numpy(s_pad).to(device), torch.from_numpy(a_pad).to(device),
                              torch.from_numpy(p).float().to(device), torch.from_numpy(q).float().to(device)).cpu().numpy()
    for i, (t, l, hh, ww) in enumerate(crops):
        keep = q[i] > 0
        args = (samples[i][:, t:t + hh, l:l + ww], annotations[i][keep][:, t:t + hh, l:l + ww])
        weights = dict(sample_weights=p[i].astype(np.float32), annotation_weights=q[i][keep].astype(np.float32))
        assert got[i] == pytest.approx(ged(*args, **weights), abs=1e-7)
        expected = ged_components(*args, **weights)
        np.testing.assert_allclose(terms[i], [expected[k] for k in ("cross", "sample_diversity", "annotation_diversity")],
                                   rtol=0, atol=1e-7)
    assert np.isfinite(got).all() and len(set(np.round(got, 6))) == b       # the images differ
