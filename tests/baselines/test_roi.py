"""Jang's wrist box and its human-like jitter (seeded, bounded) and native-resolution crops, by hand."""
from __future__ import annotations

import numpy as np
import pytest

from bench.data.format import BONES
from baselines.roi import centred_box, crop_box, jitter_box, wrist_box


def test_wrist_box_keeps_only_the_distal_forearm():
    lab = np.zeros((200, 100), np.uint8)
    lab[20:60, 30:36] = BONES["M2"]
    lab[25:60, 50:56] = BONES["M4"]
    lab[80:200, 35:45] = BONES["radius"]         # distal end at row 80, runs off the bottom
    other = np.zeros_like(lab)
    other[18:60, 30:36] = BONES["M2"]            # a second annotator draws M2 two rows longer
    box = wrist_box([lab, other], spacing_mm=0.5, forearm_mm=20.0)
    # union over annotators; radius only within 20 mm = 40 px of its distal end (rows 80-120)
    assert box == (18.0, 30.0, 121.0, 56.0)
    assert wrist_box([np.zeros_like(lab)], 0.5, 20.0) is None


def test_jitter_is_seeded_and_bounded():
    box = (100.0, 50.0, 300.0, 150.0)            # 200 high, 100 wide
    margin, jitter = 0.05, 0.08
    grown = (90.0, 45.0, 310.0, 155.0)           # 220 x 110 after the margin
    draws = np.array([jitter_box(box, np.random.default_rng(s), margin, jitter) for s in range(300)])
    limits = jitter * np.array([220.0, 110.0, 220.0, 110.0])
    offsets = draws - np.array(grown)
    assert (np.abs(offsets) <= limits + 1e-9).all()
    assert (np.abs(offsets).max(axis=0) > 0.9 * limits).all()      # the whole range is used
    assert abs(np.corrcoef(offsets[:, 0], offsets[:, 2])[0, 1]) < 0.2  # sides move independently
    a = jitter_box(box, np.random.default_rng(7), margin, jitter)
    assert a == jitter_box(box, np.random.default_rng(7), margin, jitter)
    assert a != jitter_box(box, np.random.default_rng(8), margin, jitter)
    assert jitter_box(box, np.random.default_rng(7), 0.0, 0.0) == box


def test_crop_box_native_pad_square_and_outside_zero():
    image = np.arange(100, dtype=np.float32).reshape(10, 10) / 100
    crop = crop_box(image, (2.0, 3.0, 6.0, 5.0), size=4)       # 4 rows x 2 cols → centred in 4 x 4
    expected = np.zeros((4, 4), np.float32)
    expected[:, 1:3] = image[2:6, 3:5]
    np.testing.assert_array_equal(crop, expected)
    corner = crop_box(image, centred_box((0.0, 0.0), 4.0), size=4)  # rows/cols -2..1: half outside
    np.testing.assert_array_equal(corner[:2], 0)
    np.testing.assert_array_equal(corner[2:, 2:], image[:2, :2])
    flat = crop_box(np.full((10, 10), 0.3, np.float32), (1.0, 1.0, 9.0, 9.0), size=5)
    np.testing.assert_allclose(flat, 0.3, atol=1e-6)    # resizing keeps a uniform region's value
    small = crop_box(image, (0.0, 0.0, 10.0, 10.0), size=5)
    assert small.shape == (5, 5) and small.mean() == pytest.approx(image.mean(), abs=0.01)
