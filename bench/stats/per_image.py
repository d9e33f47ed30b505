"""Paired bootstrap of a per-image metric of two segmenters (each trained with one or more seeds) on
the same images: what `bench compare-seg` reports (e.g. the paper's Table 5, MoSE vs single decoder).

Estimand: the mean over images of (the mean over a's seeds − the mean over b's seeds) of the metric
(GED, Hungarian IoU, Dice...). Each replicate resamples the images with replacement, shared by every
seed of both (paired by image), and the seeds of a and of b independently with replacement (two
training procedures' seeds are not paired), as bench.stats.bootstrap.hierarchical_bootstrap does for
subjects; with one seed each it is the paired image bootstrap. The CI and the p-value follow that
module (:func:`bench.stats.bootstrap.summarise`: percentile interval, sign-proportion p-value).
Images where some seed's value is NaN (a bone absent from both maps) are left out of that metric.
"""
from __future__ import annotations

import numpy as np

from bench.errors import BenchError
from bench.stats.bootstrap import BootstrapResult, summarise


def per_image_bootstrap(metric: str, values_a: np.ndarray, values_b: np.ndarray, n_boot: int = 2000,
                        seed: int = 0, alpha: float = 0.05) -> BootstrapResult:
    """`values_a`: images × seeds of a, `values_b`: images × seeds of b (the same images, in order)."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0] or min(a.shape[1], b.shape[1]) < 1:
        raise BenchError(f"{metric}: values must be images x seeds for both, on the same images "
                         f"(got {a.shape} and {b.shape})")
    if n_boot < 1 or not 0 < alpha < 1:
        raise BenchError(f"n_boot must be >= 1 and alpha in (0, 1), got {n_boot} and {alpha}")
    keep = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    a, b = a[keep], b[keep]
    n = a.shape[0]
    if n == 0:
        return summarise(metric, np.nan, np.nan, np.full(n_boot, np.nan), alpha)
    rng_images = np.random.default_rng(np.random.SeedSequence([int(seed), 0]))
    rng_seeds = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
    images = rng_images.integers(0, n, size=(n_boot, n))
    ja = rng_seeds.integers(0, a.shape[1], size=(n_boot, a.shape[1]))
    jb = rng_seeds.integers(0, b.shape[1], size=(n_boot, b.shape[1]))
    mean_a = a[images].mean(axis=1)                  # B × S_a: each seed's mean over the resampled images
    mean_b = b[images].mean(axis=1)
    rows = np.arange(n_boot)[:, None]
    diffs = mean_a[rows, ja].mean(axis=1) - mean_b[rows, jb].mean(axis=1)
    return summarise(metric, float(a.mean()), float(b.mean()), diffs, alpha)
