"""Classification metrics, subject aggregation (paper eq. 10) and model selection (paper "Metrics").

Conventions chosen here (the paper leaves them open):

* Subject decision (eq. 10): the mean over the bones present of the per-bone class probabilities,
  then argmax. With two classes the mean class probabilities are ``(1 - p_pos, p_pos)``, so the
  decision is ``p_pos > 0.5``; an exact tie at 0.5 goes to class 0 (normal), as ``numpy.argmax``
  picks the first maximum. ``classification_metrics`` thresholds with the same strict ``>``.
* Positive-label metrics (precision, recall, F1) use ``zero_division=0`` as scikit-learn does.
  ``macro_f1`` averages the F1 of both labels 0 and 1 (``labels=[0, 1]``) even when a split
  holds one class, so selection always compares the same quantity.
* Rows whose ``p_pos`` is NaN (a subject with no usable bone) are excluded and counted in
  ``n_unscored``; rows whose label is unknown are excluded and counted in ``n_unlabeled``.
* A split with a single class has no ROC curve: ``auc`` is NaN and a :class:`SingleClassWarning`
  is emitted instead of an error.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import (accuracy_score, average_precision_score, balanced_accuracy_score, brier_score_loss,
                             precision_recall_fscore_support, roc_auc_score, roc_curve)

from bench.calibration import calibration_slope_intercept
from bench.data.format import BONES, SPLITS
from bench.errors import BenchError

#: Version of the metric and aggregation code, in every run's key (bench.runner): bump it when a change
#: alters a run's metrics or predictions, so that `bench run` recomputes finished runs (stages stay cached).
METRICS_VERSION = 3   # 2: recall / specificity NaN without a positive / negative; 3: unscored subjects count

#: Per-bone probability columns of a subject table, in class-id order (ulna, radius, M1..M5).
BONE_COLUMNS: tuple[str, ...] = tuple(f"p_{name}" for name in BONES)
#: Columns of a subject table, in order: what :func:`aggregate_subjects` returns.
SUBJECT_COLUMNS: tuple[str, ...] = ("subject_id", "split", "y_true", "p_pos", "y_pred", "n_bones",
                                    *BONE_COLUMNS)
BONE_PREDICTION_COLUMNS: tuple[str, ...] = ("subject_id", "split", "bone", "y_true", "p_pos")
#: Keys of :func:`classification_metrics`, in a stable order.
METRIC_KEYS: tuple[str, ...] = ("precision", "recall", "f1", "accuracy", "auc", "macro_f1",
                                "specificity", "npv", "balanced_accuracy", "average_precision", "brier",
                                "sens_at_spec90", "spec_at_sens90", "calibration_slope", "calibration_intercept",
                                "n", "n_pos", "n_unscored", "n_unlabeled")
#: The fixed level of the ROC operating points sens_at_spec90 / spec_at_sens90.
OPERATING_LEVEL = 0.9
#: Subject decision threshold on the mean positive probability (eq. 10 with two classes).
DECISION_THRESHOLD = 0.5


class MetricsWarning(UserWarning):
    """Base class of the warnings this module emits."""


class SingleClassWarning(MetricsWarning):
    """A split holds fewer than two classes: AUC is undefined and reported as NaN."""


class NoUsableBoneWarning(MetricsWarning):
    """Some subjects have no bone with a probability: they are kept with p_pos NaN."""


# --------------------------------------------------------------------------- aggregation
def average_images(predictions: pd.DataFrame, by: Sequence[str] = ("subject_id", "split", "bone")) -> pd.DataFrame:
    """Several images of a subject count once: one row per `by` group with the mean p_pos of its
    rows (NaN, an unusable bone on one image, is skipped; all NaN stays NaN) and the max y_true.

    A subject photographed twice (both hands, a follow-up) then weighs as much as any other in
    eq. 10 and in the metrics; without a ``bone`` key, per-image (whole-radiograph) predictions
    become one row per subject.
    """
    missing = [c for c in (*by, "y_true", "p_pos") if c not in predictions.columns]
    if missing:
        raise BenchError(f"predictions lack columns {missing} to average several images of a subject")
    groups = predictions.groupby(list(by), sort=False, dropna=False)
    conflicting = groups["y_true"].nunique() > 1
    if conflicting.any():
        names = sorted({str(k[0] if isinstance(k, tuple) else k) for k in conflicting[conflicting].index})
        raise BenchError(f"subjects {names[:5]} have images with different labels; a subject has one DXA label: "
                         "fix the manifest (`bench data check` lists such problems)")
    return groups.agg(y_true=("y_true", "max"), p_pos=("p_pos", "mean")).reset_index()


def aggregate_subjects(bone_predictions: pd.DataFrame) -> pd.DataFrame:
    """Per-bone probabilities → one row per (subject_id, split) (paper eq. 10).

    Input columns: subject_id, split, bone (a name of ``bench.data.BONES``), y_true (0/1 or NA),
    p_pos (probability of the positive class in [0, 1], NaN for an unusable bone); one row per
    (subject_id, bone). Output: :data:`SUBJECT_COLUMNS`, where ``p_pos`` is the mean of the
    per-bone p_pos over the bones present, ``y_pred`` = argmax of the mean class probabilities
    (``p_pos > 0.5``, tie → 0), ``n_bones`` the number of bones averaged and ``p_<bone>`` the
    per-bone probabilities (NaN where missing). A subject with no usable bone keeps its row
    (p_pos NaN, y_pred NA, n_bones 0) and is named in a :class:`NoUsableBoneWarning`.
    Rows are ordered by split (train, val, test, then others) and subject_id.
    """
    if not isinstance(bone_predictions, pd.DataFrame):
        raise BenchError(f"aggregate_subjects expects a DataFrame, got {type(bone_predictions).__name__}")
    missing = [c for c in BONE_PREDICTION_COLUMNS if c not in bone_predictions.columns]
    if missing:
        raise BenchError(f"bone predictions lack columns {missing}; they need one row per (subject_id, bone) "
                         f"with columns {list(BONE_PREDICTION_COLUMNS)}")
    frame = bone_predictions[list(BONE_PREDICTION_COLUMNS)].copy()
    frame["bone"] = frame["bone"].astype(str)
    unknown = sorted(set(frame["bone"]) - set(BONES))
    if unknown:
        raise BenchError(f"unknown bone names {unknown}; use the names of bench.data.BONES: {list(BONES)}")
    frame["p_pos"] = _as_float(frame["p_pos"], "p_pos")
    bad = frame["p_pos"].notna() & ~frame["p_pos"].between(0.0, 1.0)
    if bad.any():
        raise BenchError(f"p_pos must be a probability in [0, 1] (NaN for an unusable bone); "
                         f"{int(bad.sum())} rows are outside, e.g. {frame.loc[bad, 'p_pos'].iloc[0]!r}")
    frame["y_true"] = _as_labels(frame["y_true"], "y_true")
    dup = frame.duplicated(["subject_id", "bone"], keep=False)
    if dup.any():
        first = frame.loc[dup].iloc[0]
        raise BenchError(f"subject {first['subject_id']!r} has several rows for bone {first['bone']}; give one "
                         "row per (subject_id, bone) (average several images of a bone beforehand)")
    crossing = frame.groupby("subject_id", sort=False)["split"].nunique()
    if (crossing > 1).any():
        raise BenchError(f"subjects {sorted(crossing[crossing > 1].index.astype(str))[:5]} appear in several "
                         "splits; splits must be subject-wise")
    labels = frame.groupby("subject_id", sort=False)["y_true"].agg(lambda s: s.dropna().nunique())
    if (labels > 1).any():
        raise BenchError(f"subjects {sorted(labels[labels > 1].index.astype(str))[:5]} have conflicting y_true "
                         "across bones; a label belongs to the subject")

    wide = frame.pivot(index="subject_id", columns="bone", values="p_pos")
    wide = wide.reindex(columns=list(BONES)).astype(float)
    wide.columns = list(BONE_COLUMNS)
    per_subject = frame.groupby("subject_id", sort=False).agg(
        split=("split", "first"), y_true=("y_true", lambda s: s.dropna().iloc[0] if s.notna().any() else pd.NA))
    out = per_subject.join(wide).reset_index()
    probs = out[list(BONE_COLUMNS)].to_numpy(dtype=float)
    n_bones = np.isfinite(probs).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pos = np.where(n_bones > 0, np.nansum(probs, axis=1) / np.maximum(n_bones, 1), np.nan)
    out["p_pos"] = mean_pos
    out["y_pred"] = _decide(mean_pos)
    out["n_bones"] = n_bones.astype(np.int64)
    out["y_true"] = out["y_true"].astype("Int64")
    out = out[list(SUBJECT_COLUMNS)]
    out = _order_rows(out).reset_index(drop=True)
    empty = out.loc[out["n_bones"] == 0, "subject_id"].astype(str).tolist()
    if empty:
        shown = ", ".join(empty[:20]) + (f" … ({len(empty)} in all)" if len(empty) > 20 else "")
        warnings.warn(f"{len(empty)} subject(s) have no usable bone and get no prediction (p_pos NaN): {shown}",
                      NoUsableBoneWarning, stacklevel=2)
    return out


def _decide(mean_pos: np.ndarray) -> pd.Series:
    """argmax over (1 - p, p) for each subject; first maximum on ties (class 0); NA where p is NaN."""
    mean_pos = np.asarray(mean_pos, dtype=float)
    stacked = np.stack([1.0 - mean_pos, mean_pos], axis=-1)
    pred = np.argmax(np.nan_to_num(stacked, nan=-1.0), axis=-1)
    return pd.Series(pd.array(np.where(np.isnan(mean_pos), None, pred).tolist(), dtype="Int64"))


def _order_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by split (train, val, test, then others alphabetically), then subject_id."""
    rank = {s: i for i, s in enumerate(SPLITS)}
    key = frame["split"].map(lambda s: (rank.get(s, len(SPLITS)), str(s)))
    order = sorted(range(len(frame)), key=lambda i: (key.iloc[i], str(frame["subject_id"].iloc[i])))
    return frame.iloc[order]


# --------------------------------------------------------------------------- metrics
def classification_metrics(y_true: Any, p_pos: Any, threshold: float = DECISION_THRESHOLD) -> dict[str, float]:
    """Positive-label precision, recall, F1, accuracy, AUC, plus macro-F1 and counts (paper "Metrics").

    Beyond the paper, what a screening study reports beside them: specificity and negative
    predictive value (recall and precision of the negative class), balanced accuracy, average
    precision (the area under the precision-recall curve, scikit-learn's step-wise estimate; its
    chance level is the prevalence), the Brier score of the probabilities, and two operating points
    of the ROC curve (:func:`roc_operating_points`): the best sensitivity with specificity >= 0.9
    and the best specificity with sensitivity >= 0.9. Their threshold is read off the curve of the
    same subjects, so they describe the curve, not a threshold fixed in advance as ``threshold``.
    And the calibration slope and calibration-in-the-large (bench.calibration), what an external
    validation reports beside the AUC.

    ``y_pred = p_pos > threshold`` (strict, as the subject decision). Rows with NaN p_pos count in
    ``n_unscored``, rows with unknown y_true in ``n_unlabeled``; both are excluded from everything
    else. ``n``/``n_pos`` count the scored rows and their positives. Fewer than two classes →
    ``auc`` NaN and a :class:`SingleClassWarning`; no scored row → every rate NaN. Recall
    (sensitivity) without a positive and specificity without a negative are NaN (undefined, as in
    bench.operating); precision, NPV and F1 follow scikit-learn's ``zero_division=0`` when nothing
    is predicted in their class, so that model selection by macro-F1 always has a number.
    """
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)):
        raise BenchError(f"threshold must be a finite number, got {threshold!r}")
    y = _as_labels(pd.Series(np.asarray(y_true, dtype=object).ravel()), "y_true")
    p = _as_float(pd.Series(np.asarray(p_pos, dtype=object).ravel()), "p_pos")
    if len(y) != len(p):
        raise BenchError(f"y_true has {len(y)} values but p_pos has {len(p)}; give one probability per label")
    if np.isinf(p.to_numpy()).any():
        raise BenchError("p_pos holds infinite values; give probabilities (NaN marks an unscored row)")
    unlabeled = y.isna().to_numpy()
    unscored = p.isna().to_numpy() & ~unlabeled
    keep = ~unlabeled & ~unscored
    yt = y.to_numpy(dtype=float, na_value=np.nan)[keep].astype(np.int64)
    ps = p.to_numpy(dtype=float)[keep]
    out: dict[str, float] = {k: float("nan") for k in METRIC_KEYS}
    out.update(n=int(keep.sum()), n_pos=int(yt.sum()), n_unscored=int(unscored.sum()),
               n_unlabeled=int(unlabeled.sum()))
    classes = np.unique(yt)
    if len(classes) < 2:
        warnings.warn(f"{len(classes)} class(es) among {len(yt)} scored subjects: AUC is undefined and "
                      "reported as NaN", SingleClassWarning, stacklevel=2)
    if len(yt) == 0:
        return out
    yp = (ps > threshold).astype(np.int64)
    prec, rec, f1, _ = precision_recall_fscore_support(yt, yp, labels=[0, 1], average=None, zero_division=0)
    out.update(precision=float(prec[1]), recall=float(rec[1]), f1=float(f1[1]),
               accuracy=float(accuracy_score(yt, yp)), macro_f1=float(np.mean(f1)),
               specificity=float(rec[0]), npv=float(prec[0]), brier=float(brier_score_loss(yt, ps, pos_label=1)))
    if not (yt == 1).any():
        out["recall"] = float("nan")
    if not (yt == 0).any():
        out["specificity"] = float("nan")
    if len(classes) == 2:
        out["auc"] = float(roc_auc_score(yt, ps))
        out["average_precision"] = float(average_precision_score(yt, ps))
        out["balanced_accuracy"] = float(balanced_accuracy_score(yt, yp))
        out["sens_at_spec90"], out["spec_at_sens90"] = roc_operating_points(yt, ps, OPERATING_LEVEL)
        out["calibration_slope"], out["calibration_intercept"] = calibration_slope_intercept(yt, ps)
    return out


def roc_operating_points(y_true: np.ndarray, p_pos: np.ndarray, level: float = OPERATING_LEVEL
                         ) -> tuple[float, float]:
    """(sensitivity at specificity >= level, specificity at sensitivity >= level) on the empirical ROC.

    The vertices of scikit-learn's ``roc_curve`` (drop_intermediate=False): every threshold that
    changes a decision; the best of those meeting the constraint (the curve's corner points, no
    interpolation between them, as screening studies quote "specificity at 90 % sensitivity").
    """
    fpr, tpr, _ = roc_curve(y_true, p_pos, drop_intermediate=False)
    sens = float(tpr[1 - fpr >= level - 1e-12].max())       # the (0, 0) vertex always qualifies
    spec = float((1 - fpr[tpr >= level - 1e-12]).max())     # the (1, 1) vertex always qualifies
    return sens, spec


def split_metrics(subjects: pd.DataFrame, threshold: float = DECISION_THRESHOLD) -> dict[str, dict[str, float]]:
    """:func:`classification_metrics` for each split present (train, val, test, then others).

    ``subjects`` is an :func:`aggregate_subjects`-style frame (needs split, y_true, p_pos). The
    warnings of a single-class split name the split.
    """
    missing = [c for c in ("split", "y_true", "p_pos") if c not in subjects.columns]
    if missing:
        raise BenchError(f"subject predictions lack columns {missing}; expected {list(SUBJECT_COLUMNS)}")
    present = list(dict.fromkeys(subjects["split"].astype(str)))
    order = [s for s in SPLITS if s in present] + sorted(s for s in present if s not in SPLITS)
    result: dict[str, dict[str, float]] = {}
    for split in order:
        rows = subjects[subjects["split"].astype(str) == split]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MetricsWarning)
            result[split] = classification_metrics(rows["y_true"], rows["p_pos"], threshold)
        for w in caught:
            if issubclass(w.category, MetricsWarning):
                warnings.warn(f"split {split!r}: {w.message}", w.category, stacklevel=2)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


# --------------------------------------------------------------------------- selection
def require_validation(n_labelled: int, what: str) -> None:
    """Model selection (paper "Metrics") needs labelled validation subjects; without any, every epoch
    (or C) would score NaN and the first would be kept silently: a BenchError instead."""
    if n_labelled <= 0:
        raise BenchError(f"{what} selects on the validation split of the `cls` dataset, which has no labelled "
                         "subject; re-split it with a validation fraction > 0 (`bench data split DIR --fractions "
                         "0.8 0.1 0.1`) or label some of its val subjects")


def select_best(history: Sequence[Mapping[str, float]], key: str = "val_macro_f1",
                tie_break: str | None = "val_auc") -> int:
    """Index of the best record: highest ``key`` (validation macro-F1, paper "Metrics").

    Ties (equal within 1e-12) are broken by the highest ``tie_break`` (validation AUC), then by the
    earliest index. NaN or a missing value counts as worst. A key absent from every record is an
    error (a misspelt name would otherwise silently select the first epoch).
    """
    records = list(history)
    if not records:
        raise BenchError("select_best got an empty history; evaluate at least one epoch/checkpoint")
    candidates = list(range(len(records)))
    for name in [key] + ([tie_break] if tie_break else []):
        if not any(name in r for r in records):
            known = sorted({k for r in records for k in r})
            raise BenchError(f"no history record has {name!r}; recorded keys are {known}")
        values = np.array([_score(records[i].get(name)) for i in candidates])
        if np.isnan(values).all():
            continue
        best = np.nanmax(values)
        candidates = [i for i, v in zip(candidates, values) if not np.isnan(v) and v >= best - 1e-12]
        if len(candidates) == 1:
            break
    return int(candidates[0])


def _score(value: Any) -> float:
    """A history value as a float; None, NA or a non-number is NaN (worst)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# --------------------------------------------------------------------------- coercion helpers
def _as_float(values: pd.Series, name: str) -> pd.Series:
    """Numbers (NaN/None/NA → NaN) as a float Series; anything else is a BenchError."""
    try:
        return pd.to_numeric(values.astype(object).where(values.notna(), np.nan), errors="raise").astype(float)
    except (TypeError, ValueError) as exc:
        raise BenchError(f"{name} must be numeric (NaN where unknown): {exc}") from None


def _as_labels(values: pd.Series, name: str) -> pd.Series:
    """0/1 labels (NA where unknown) as an Int64 Series; other values are a BenchError."""
    if values.dtype == bool:
        values = values.astype(np.int64)
    num = _as_float(values, name)
    bad = num.notna() & ~num.isin([0.0, 1.0])
    if bad.any():
        raise BenchError(f"{name} must be 0 (normal) or 1 (osteoporosis), NA where unknown; found "
                         f"{sorted(set(num[bad].tolist()))[:5]}")
    return num.astype("Int64")
