"""Evaluation of stochastic segmentations (segmentation.md §7): GED, Hungarian IoU, pixel ECE, Dice.

Conventions (all on hard label maps, class ids of ``bench.data.BONES``):

* distance d(a, y) = mean over the evaluated classes (default the seven bones, background
  excluded) of 1 - IoU_c, IoU_c = (|a_c & y_c| + 1e-8) / (|a_c | y_c| + 1e-8). A class absent from
  both maps is left out of the mean (NaN-mean, as MoSE and the Probabilistic U-Net evaluation);
  if every class is absent from both, d = 0 (d(empty, empty) = 0); one empty, one not gives 1.
* GED (squared generalised energy distance) is the weighted V-statistic with diagonal terms:
  2 sum p_i q_j d(s_i, y_j) - sum p_i p_i' d(s_i, s_i') - sum q_j q_j' d(y_j, y_j').
  Weights default to uniform and are normalised to sum 1.
* Hungarian IoU: uniform weights with N % M == 0: the N x M distance matrix is tiled N/M times
  column-wise, matched with ``linear_sum_assignment`` and the mean of 1 - d over the pairs
  reported; otherwise the OT form sum T (1 - D) with T = ot.emd(p, q, D).
* pixel ECE: top-label, multi-class generalisation of the reference (the Cityscapes form):
  confidence = max over classes of the (mixture mean) probability, "accuracy" = weighted fraction
  of annotators whose label equals the argmax class. Ten equal bins over (0, 1] (bin k holds
  (k/n, (k+1)/n]); ECE = sum_k (n_k / n) |acc_k - conf_k| over all pixels of all images pooled.
  Returned as a fraction (multiply by 100 for the README's %).
* Dice per bone: 2|a & b| / (|a| + |b|); NaN when the bone is absent from both maps (no evidence
  either way: average with nanmean).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from bench.data.format import BONE_IDS, BONES
from bench.errors import BenchError

IOU_EPS = 1e-8     # reference eps in the metric IoU


def _maps(x, name: str) -> np.ndarray:
    """Integer label maps as K x H x W (a single H x W map becomes K = 1)."""
    arr = np.asarray(x)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] < 1:
        raise BenchError(f"{name}: expected label maps K x H x W (or one H x W map), got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise BenchError(f"{name}: label maps must hold integer class ids, got dtype {arr.dtype}")
    return arr


def _weights(w, k: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(k, 1.0 / k)
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.shape != (k,) or not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise BenchError(f"{name}: expected {k} finite non-negative weights with a positive sum, got {w}")
    return w / w.sum()


def _pair(samples, annotations) -> tuple[np.ndarray, np.ndarray]:
    s, y = _maps(samples, "samples"), _maps(annotations, "annotations")
    if s.shape[1:] != y.shape[1:]:
        raise BenchError(f"samples are {s.shape[1]}x{s.shape[2]} but annotations {y.shape[1]}x{y.shape[2]}; "
                         "crop or resample both to the same grid")
    return s, y


def pairwise_distances(maps, classes: Sequence[int] = BONE_IDS) -> np.ndarray:
    """K x K matrix of d(maps_i, maps_j) (module docstring), one Gram matrix per class."""
    x = _maps(maps, "maps")
    k, pixels = x.shape[0], x.shape[1] * x.shape[2]
    flat = x.reshape(k, pixels)
    dtype = np.float32 if pixels < 2 ** 24 else np.float64       # integer counts stay exact
    total = np.zeros((k, k))
    count = np.zeros((k, k))
    for c in classes:
        ind = (flat == c).astype(dtype)
        inter = (ind @ ind.T).astype(np.float64)
        area = np.diag(inter)
        union = area[:, None] + area[None, :] - inter
        present = union > 0
        total += np.where(present, 1.0 - (inter + IOU_EPS) / (union + IOU_EPS), 0.0)
        count += present
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def ged_components(samples, annotations, sample_weights=None, annotation_weights=None,
                   classes: Sequence[int] = BONE_IDS) -> dict[str, float]:
    """GED and its three terms: ``cross`` E d(s, y), ``sample_diversity`` E d(s, s'),
    ``annotation_diversity`` E d(y, y') (V-statistics, diagonal included)."""
    s, y = _pair(samples, annotations)
    p = _weights(sample_weights, s.shape[0], "sample_weights")
    q = _weights(annotation_weights, y.shape[0], "annotation_weights")
    d = pairwise_distances(np.concatenate([s, y]), classes)
    n = s.shape[0]
    cross = float(p @ d[:n, n:] @ q)
    div_s = float(p @ d[:n, :n] @ p)
    div_y = float(q @ d[n:, n:] @ q)
    return {"ged": 2.0 * cross - div_s - div_y, "cross": cross, "sample_diversity": div_s,
            "annotation_diversity": div_y}


def ged(samples, annotations, sample_weights=None, annotation_weights=None,
        classes: Sequence[int] = BONE_IDS) -> float:
    """Squared GED of S x H x W sample maps against M x H x W annotations (module docstring)."""
    return ged_components(samples, annotations, sample_weights, annotation_weights, classes)["ged"]


def hungarian_iou(samples, annotations, sample_weights=None, annotation_weights=None,
                  classes: Sequence[int] = BONE_IDS) -> float:
    """Hungarian-matched IoU (M-IoU, segmentation.md §7.3); the OT form for weighted/unequal sets."""
    s, y = _pair(samples, annotations)
    n, m = s.shape[0], y.shape[0]
    p = _weights(sample_weights, n, "sample_weights")
    q = _weights(annotation_weights, m, "annotation_weights")
    d = pairwise_distances(np.concatenate([s, y]), classes)[:n, n:]
    uniform = np.allclose(p, 1.0 / n, rtol=0, atol=1e-12) and np.allclose(q, 1.0 / m, rtol=0, atol=1e-12)
    if uniform and n % m == 0:
        from scipy.optimize import linear_sum_assignment

        tiled = np.tile(d, (1, n // m))
        rows, cols = linear_sum_assignment(tiled)
        return float(np.mean(1.0 - tiled[rows, cols]))
    import ot

    plan = ot.emd(p, q, d)
    return float(np.sum(plan * (1.0 - d)))


def _ece_image(probs, labels, weights) -> tuple[np.ndarray, np.ndarray]:
    pr = np.asarray(probs, dtype=np.float64)
    lab = _maps(labels, "labels")
    if pr.ndim != 3 or pr.shape[0] < 2 or pr.shape[1:] != lab.shape[1:]:
        raise BenchError(f"pixel_ece: probabilities must be C x H x W (C >= 2) on the grid of the labels "
                         f"{lab.shape[1:]}, got shape {pr.shape}")
    if not np.isfinite(pr).all() or pr.min() < -1e-6 or pr.max() > 1 + 1e-6:
        raise BenchError("pixel_ece: probabilities must be finite and within [0, 1]")
    q = _weights(weights, lab.shape[0], "annotation_weights")
    pred = pr.argmax(0)
    conf = pr.max(0)
    acc = np.tensordot(q, (lab == pred[None]).astype(np.float64), axes=1)
    return conf.ravel(), acc.ravel()


def pixel_ece(probs, labels, n_bins: int = 10, annotation_weights=None) -> float:
    """Top-label pixel ECE (module docstring) of one image or of lists of images pooled.

    ``probs``: C x H x W mean class probabilities (or a list of them); ``labels``: M x H x W (or
    H x W) annotator label maps (or a list); ``annotation_weights``: per image, M weights
    (uniform when None).
    """
    return ece_of_bins(ece_bins(probs, labels, n_bins, annotation_weights))


def ece_bins(probs, labels, n_bins: int = 10, annotation_weights=None) -> np.ndarray:
    """The pixel counts, summed confidences and summed accuracies per confidence bin (3 x n_bins) behind
    :func:`pixel_ece`; bins of several calls add up (an evaluation in chunks of images)."""
    if n_bins < 1:
        raise BenchError(f"pixel_ece: n_bins = {n_bins} must be >= 1")
    if isinstance(probs, (list, tuple)):
        if not isinstance(labels, (list, tuple)) or len(labels) != len(probs):
            raise BenchError("pixel_ece: with a list of probability maps, pass a list of label maps of the "
                             "same length")
        weights = annotation_weights if annotation_weights is not None else [None] * len(probs)
        pairs = list(zip(probs, labels, weights))
    else:
        pairs = [(probs, labels, annotation_weights)]
    bins = np.zeros((3, n_bins))
    for pr, lab, w in pairs:
        conf, acc = _ece_image(pr, lab, w)
        idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
        bins[0] += np.bincount(idx, minlength=n_bins)
        bins[1] += np.bincount(idx, weights=conf, minlength=n_bins)
        bins[2] += np.bincount(idx, weights=acc, minlength=n_bins)
    return bins


def ece_of_bins(bins: np.ndarray) -> float:
    """The ECE of :func:`ece_bins` (NaN without pixels)."""
    total = bins[0].sum()
    return float(np.abs(bins[2] - bins[1]).sum() / total) if total > 0 else float("nan")


def dice_per_bone(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of each bone of ``bench.data.BONES`` between two H x W label maps; NaN if absent in both."""
    a, b = np.asarray(pred), np.asarray(truth)
    if a.shape != b.shape or a.ndim != 2:
        raise BenchError(f"dice_per_bone: prediction {a.shape} and truth {b.shape} must be H x W maps of the "
                         "same size")
    if a.dtype.kind not in "iub" or b.dtype.kind not in "iub":
        raise BenchError("dice_per_bone: label maps must hold integer class ids")
    a, b = a.astype(np.int64).ravel(), b.astype(np.int64).ravel()
    if a.size and min(a.min(), b.min()) < 0:
        raise BenchError("dice_per_bone: label maps must not hold negative class ids")
    k = int(max(a.max(initial=0), b.max(initial=0), max(BONE_IDS))) + 1
    conf = np.bincount(a * k + b, minlength=k * k).reshape(k, k)
    out = {}
    for name, c in BONES.items():
        denom = conf[c].sum() + conf[:, c].sum()
        out[name] = float(2.0 * conf[c, c] / denom) if denom > 0 else float("nan")
    return out
