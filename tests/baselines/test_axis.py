import numpy as np

from baselines.axis import _centroid, component_pixels, largest_component
from bench.data.format import BONES


def test_component_pixels_equal_the_whole_map_computation():
    """The bounding-box shortcut gives exactly the largest component of the whole map, ties included."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        labels = np.zeros((60, 45), dtype=np.uint8)
        for value in BONES.values():
            for _ in range(rng.integers(0, 4)):           # islands, some of equal size
                r, c = rng.integers(0, 55), rng.integers(0, 40)
                h, w = rng.integers(1, 6), rng.integers(1, 6)
                labels[r:r + h, c:c + w] = value
        for bone, value in BONES.items():
            rows, cols = component_pixels(labels, bone)
            ref_rows, ref_cols = np.nonzero(largest_component(labels == value))
            assert np.array_equal(rows, ref_rows) and np.array_equal(cols, ref_cols), (trial, bone)
        names = ("M1", "M2", "M3", "M4", "M5")
        rows, cols = np.nonzero(np.isin(labels, [BONES[n] for n in names]))
        got = _centroid(labels, names)
        assert (got is None) == (rows.size == 0)
        if got is not None:
            np.testing.assert_allclose(got, [rows.mean(), cols.mean()], rtol=1e-12)
