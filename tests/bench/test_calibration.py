"""Calibration slope and calibration-in-the-large (bench.calibration)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from bench.calibration import calibration_slope_intercept
from bench.metrics import classification_metrics


def _cohort(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True risks with logits N(-0.8, 1.5) and outcomes drawn from them."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-0.8, 1.5, n)
    risk = 1 / (1 + np.exp(-logit))
    return (rng.random(n) < risk).astype(int), logit


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def test_calibrated_overconfident_and_shifted_predictions():
    y, logit = _cohort(20000, 0)
    slope, intercept = calibration_slope_intercept(y, _sigmoid(logit))
    assert slope == pytest.approx(1.0, abs=0.05) and intercept == pytest.approx(0.0, abs=0.05)
    slope, _ = calibration_slope_intercept(y, _sigmoid(2 * logit))            # too extreme: slope 1/2
    assert slope == pytest.approx(0.5, abs=0.03)
    slope, intercept = calibration_slope_intercept(y, _sigmoid(logit - 1.0))  # under-predicts the event rate
    assert slope == pytest.approx(1.0, abs=0.05) and intercept > 0.8


def test_against_a_direct_newton_fit():
    y, logit = _cohort(300, 1)
    p = _sigmoid(0.7 * logit + 0.3)
    x = np.log(p / (1 - p))
    beta = np.zeros(2)                                    # plain IRLS for logit P = a + b x
    design = np.column_stack([np.ones_like(x), x])
    for _ in range(50):
        mu = _sigmoid(design @ beta)
        w = mu * (1 - mu)
        beta += np.linalg.solve(design.T @ (w[:, None] * design), design.T @ (y - mu))
    a = 0.0                                               # intercept with offset x
    for _ in range(50):
        mu = _sigmoid(a + x)
        a += (y - mu).sum() / (mu * (1 - mu)).sum()
    slope, intercept = calibration_slope_intercept(y, p)
    assert slope == pytest.approx(beta[1], abs=1e-6) and intercept == pytest.approx(a, abs=1e-6)


def test_undefined_cases_are_nan():
    assert all(math.isnan(v) for v in calibration_slope_intercept(np.array([1, 1]), np.array([0.2, 0.9])))
    slope, intercept = calibration_slope_intercept(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.7, 0.9]))
    assert math.isnan(slope) and math.isfinite(intercept)                    # separated: no finite slope
    slope, _ = calibration_slope_intercept(np.array([0, 0, 1, 1]), np.array([0.2, 0.5, 0.5, 0.8]))
    assert math.isnan(slope)                 # quasi-separated (the classes touch at 0.5): no MLE either
    m = classification_metrics([0, 1, 1, 0, 1, 0], [0.2, 0.7, 0.4, 0.6, 0.9, 0.3])
    assert math.isfinite(m["calibration_slope"]) and math.isfinite(m["calibration_intercept"])
