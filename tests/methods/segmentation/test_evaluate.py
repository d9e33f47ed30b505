"""Segmentation evaluation: GED / M-IoU (reference case T9), distance conventions, ECE, Dice."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog
from sklearn.metrics import f1_score, jaccard_score

from bench.data import BONES
from bench.errors import BenchError
from methods.segmentation.evaluate import (dice_per_bone, ece_bins, ece_of_bins, ged, ged_components, hungarian_iou,
                                           pairwise_distances, pixel_ece)

FG = (1,)                                               # binary masks of the reference examples


def masks(*rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)[:, None, :]   # K x 1 x W


S2 = masks([1, 1, 0, 0], [0, 0, 0, 0])
Y2 = masks([1, 0, 0, 0], [0, 0, 0, 0])


# ---------------------------------------------------------------------------------- T9

def test_t9_distances():
    d = pairwise_distances(np.concatenate([S2, Y2]), FG)
    np.testing.assert_allclose(d[:2, 2:], [[.5, 1], [1, 0]], atol=1e-8)
    assert d[1, 3] == 0.0                                                  # d(empty, empty) = 0


def test_t9_uniform_ged_and_hungarian():
    assert ged(S2, Y2, classes=FG) == pytest.approx(0.25, abs=1e-7)
    assert hungarian_iou(S2, Y2, classes=FG) == pytest.approx(0.75, abs=1e-7)


def test_t9_weighted_ged_and_ot_miou():
    assert ged(S2, Y2, [.75, .25], [.5, .5], classes=FG) == pytest.approx(0.50, abs=1e-7)
    assert hungarian_iou(S2, Y2, [.75, .25], [.5, .5], classes=FG) == pytest.approx(0.50, abs=1e-7)


def test_t9_four_samples():
    s4 = masks([1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0])
    assert ged(s4, Y2, classes=FG) == pytest.approx(0.229167, abs=1e-6)
    assert hungarian_iou(s4, Y2, classes=FG) == pytest.approx(0.625, abs=1e-7)


def test_ged_components_and_identity():
    comp = ged_components(S2, Y2, classes=FG)
    # cross = mean(.5, 1, 1, 0); diversities: d(s0, s1) = 1 twice over 4 pairs, d(y0, y1) = 1 likewise
    assert comp["cross"] == pytest.approx(.625, abs=1e-7)
    assert comp["sample_diversity"] == pytest.approx(.5, abs=1e-7)
    assert comp["annotation_diversity"] == pytest.approx(.5, abs=1e-7)
    assert ged(Y2, Y2, classes=FG) == pytest.approx(0.0, abs=1e-12)       # same distribution
    empty = np.zeros((3, 4, 4), np.uint8)
    assert ged(empty, empty[:2]) == 0.0 and hungarian_iou(empty, empty[:1]) == 1.0


# ------------------------------------------------------------------ multi-class distance

def test_multiclass_distance_ignores_classes_absent_from_both():
    a = np.array([[1, 1, 2], [0, 0, 0]], np.uint8)
    b = np.array([[1, 0, 0], [3, 0, 0]], np.uint8)
    # ulna IoU 1/2, radius only in a (d 1), M1 only in b (d 1), M2-M5 absent from both (ignored)
    assert pairwise_distances(np.stack([a, b]))[0, 1] == pytest.approx(5 / 6, abs=1e-8)
    assert ged(a, b) == pytest.approx(5 / 3, abs=1e-7)


def test_pairwise_distances_match_sklearn_jaccard():
    rng = np.random.default_rng(np.random.SeedSequence([7, 1]))
    maps = rng.choice([0, 1, 2, 3, 5], size=(5, 9, 7), p=[.4, .2, .2, .1, .1]).astype(np.uint8)
    maps[4] = 0                                                         # one empty map
    d = pairwise_distances(maps)
    for i, j in itertools.product(range(5), repeat=2):
        a, b = maps[i].ravel(), maps[j].ravel()
        present = [c for c in range(1, 8) if (a == c).any() or (b == c).any()]
        expect = 1 - np.mean(jaccard_score(a, b, labels=present, average=None)) if present else 0.0
        assert d[i, j] == pytest.approx(expect, abs=1e-7)


# --------------------------------------------------------------------------- Hungarian

def test_hungarian_uniform_matches_bruteforce_over_permutations():
    rng = np.random.default_rng(np.random.SeedSequence([7, 2]))
    s = rng.integers(0, 4, size=(4, 6, 6)).astype(np.uint8)
    y = rng.integers(0, 4, size=(2, 6, 6)).astype(np.uint8)
    iou = 1 - pairwise_distances(np.concatenate([s, y]))[:4, 4:]
    tiled = np.tile(iou, (1, 2))
    best = max(np.mean(tiled[np.arange(4), list(p)]) for p in itertools.permutations(range(4)))
    assert hungarian_iou(s, y) == pytest.approx(best, abs=1e-12)


def test_hungarian_weighted_is_optimal_transport():
    rng = np.random.default_rng(np.random.SeedSequence([7, 3]))
    s = rng.integers(0, 4, size=(5, 6, 6)).astype(np.uint8)
    y = rng.integers(0, 4, size=(3, 6, 6)).astype(np.uint8)
    p, q = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(3))
    d = pairwise_distances(np.concatenate([s, y]))[:5, 5:]
    a_eq = np.vstack([np.kron(np.eye(5), np.ones((1, 3))), np.kron(np.ones((1, 5)), np.eye(3))])
    res = linprog(d.ravel(), A_eq=a_eq, b_eq=np.concatenate([p, q]), bounds=(0, None), method="highs")
    assert hungarian_iou(s, y, p, q) == pytest.approx(1 - res.fun, abs=1e-9)


def test_shape_and_weight_errors():
    with pytest.raises(BenchError):
        ged(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 5), np.uint8))
    with pytest.raises(BenchError):
        ged(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.uint8), sample_weights=[1, 1, 1])
    with pytest.raises(BenchError):
        hungarian_iou(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), np.uint8))       # float maps


# -------------------------------------------------------------------------------- ECE

def _binary_probs(fg) -> np.ndarray:
    fg = np.asarray(fg, dtype=np.float64)[None]
    return np.stack([1 - fg, fg])                                            # C=2 x 1 x W


ANN = np.array([[[1, 1, 0, 0]], [[1, 0, 0, 1]]], np.uint8)


def test_pixel_ece_hand_value():
    probs = _binary_probs([.92, .83, .26, .56])
    # top-label confidences .92 .83 .74 .56 (separate bins); argmax 1 1 0 1;
    # fraction of annotators agreeing: 1, .5, 1, .5
    expect = (.08 + .33 + .26 + .06) / 4
    assert pixel_ece(probs, ANN) == pytest.approx(expect, abs=1e-12)
    # annotator weights (.75, .25): agreement 1, .75, 1, .25
    expect_w = (.08 + .08 + .26 + .31) / 4
    assert pixel_ece(probs, ANN, annotation_weights=[.75, .25]) == pytest.approx(expect_w, abs=1e-12)


def test_pixel_ece_pools_bins_over_images():
    p1, p2 = _binary_probs([.92, .83, .26, .56]), _binary_probs([.86, .35, .62, .97])
    a2 = np.array([[[1, 0, 1, 1]], [[1, 0, 1, 1]]], np.uint8)
    pooled = pixel_ece([p1, p2], [ANN, a2])
    assert pooled == pytest.approx(pixel_ece(np.concatenate([p1, p2], 2), np.concatenate([ANN, a2], 2)), abs=1e-12)
    # image 2: confidences .86 .65 .62 .97, agreement 1 1 1 1. Bins pool pixels of both images, so the
    # over-confident .83 and the under-confident .86 partly cancel:
    # (.9,1]: .92 .97 | (.8,.9]: .83 .86 | (.7,.8]: .74 | (.6,.7]: .65 .62 | (.5,.6]: .56
    by_hand = (abs(2 - .92 - .97) + abs(1.5 - .83 - .86) + abs(1 - .74) + abs(2 - .65 - .62) + abs(.5 - .56)) / 8
    assert pooled == pytest.approx(by_hand, abs=1e-12)
    # the bins of separate calls add up (an evaluation in chunks of images)
    bins = ece_bins(p1, ANN) + ece_bins([p2], [a2])
    assert bins[0].sum() == 8 and ece_of_bins(bins) == pytest.approx(by_hand, abs=1e-12)
    assert np.isnan(ece_of_bins(ece_bins([], [])))


def test_pixel_ece_zero_when_calibrated():
    probs = _binary_probs([.75, .25])
    ann = np.array([[[1, 0]], [[1, 0]], [[1, 0]], [[0, 1]]], np.uint8)      # 3 of 4 agree with argmax
    assert pixel_ece(probs, ann) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(BenchError):
        pixel_ece(probs, ann[:, :, :1])


# ------------------------------------------------------------------------------- Dice

def test_dice_per_bone_hand_values():
    pred = np.array([[1, 1, 2, 0, 4], [3, 3, 0, 0, 0]], np.uint8)
    truth = np.array([[1, 0, 2, 2, 0], [0, 3, 3, 3, 0]], np.uint8)
    out = dice_per_bone(pred, truth)
    assert list(out) == list(BONES)
    assert out["ulna"] == pytest.approx(2 / 3) and out["radius"] == pytest.approx(2 / 3)
    assert out["M1"] == pytest.approx(2 / 5) and out["M2"] == 0.0
    assert all(np.isnan(out[k]) for k in ("M3", "M4", "M5"))


def test_dice_per_bone_matches_sklearn_f1():
    rng = np.random.default_rng(np.random.SeedSequence([7, 4]))
    pred = rng.integers(0, 8, size=(12, 10)).astype(np.uint8)
    truth = rng.integers(0, 8, size=(12, 10)).astype(np.uint8)
    f1 = f1_score(truth.ravel(), pred.ravel(), labels=list(BONES.values()), average=None)
    np.testing.assert_allclose(list(dice_per_bone(pred, truth).values()), f1, atol=1e-12)
    with pytest.raises(BenchError):
        dice_per_bone(pred, truth[:, :5])
