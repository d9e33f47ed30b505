"""Logistic recalibration of predicted probabilities: calibration-in-the-large and the calibration slope.

What an external validation of a clinical prediction model reports beside its AUC (Van Calster
et al., "Calibration: the Achilles heel of predictive analytics", BMC Medicine 2019; TRIPOD):

* calibration slope: b in logit P(y = 1) = a + b * logit(p). 1 is ideal; below 1 the
  probabilities are too extreme (overfitting), above 1 too modest.
* calibration-in-the-large (the intercept): a in logit P(y = 1) = a + logit(p), the slope fixed
  at 1 (logit(p) an offset). 0 is ideal; above 0 the model under-predicts the event rate.

Both are maximum-likelihood fits of a binomial GLM (statsmodels). Probabilities are clipped to
[1e-6, 1 - 1e-6] before the logit. Undefined (NaN): fewer than two classes; for the slope, also
when logit(p) separates the classes, completely or with ties only at the boundary (the MLE diverges) or the fit does not converge.
"""
from __future__ import annotations

import warnings

import numpy as np

EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1.0 - EPS)
    return np.log(p / (1.0 - p))


def calibration_slope_intercept(y_true: np.ndarray, p_pos: np.ndarray) -> tuple[float, float]:
    """(calibration slope, calibration-in-the-large) of probabilities `p_pos` for 0/1 labels `y_true`."""
    import statsmodels.api as sm

    y = np.asarray(y_true, dtype=float)
    x = _logit(p_pos)
    if len(y) == 0 or y.min() == y.max():
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # separation and convergence warnings: handled below
        citl_fit = sm.GLM(y, np.ones((len(y), 1)), family=sm.families.Binomial(), offset=x).fit()
        intercept = float(citl_fit.params[0]) if citl_fit.converged else float("nan")
        # (quasi-)complete separation: no maximum-likelihood slope exists (the fit "converges" to
        # whatever its tolerance allows), also when the classes only touch at one tied value
        separated = x[y == 0].max() <= x[y == 1].min() or x[y == 1].max() <= x[y == 0].min()
        slope = float("nan")
        if not separated and np.ptp(x) > 0:
            fit = sm.GLM(y, sm.add_constant(x, has_constant="add"), family=sm.families.Binomial()).fit()
            slope = float(fit.params[1]) if fit.converged else float("nan")
    return slope, intercept
