"""Subject model: sex, age, T-score, label and the latent per-bone parameters.

* sex: female with probability `female_fraction` (clinical preset: 169/192 as paper Table 1).
* age: paper Table 2 (decade bins, uniform within a bin) or adult (uniform 18-90).
* T-score: mean falls with age after 40 (women) or 45 (men; men start 0.3 higher), plus
  N(0, 1) scatter, plus one offset solved by quadrature so that P(T < -2.5) equals the
  configured prevalence for that age/sex mix. label = T < -2.5 (the paper's rule).
* per target bone b (ulna, radius, M1-M5): the 2MCI-style cortical index
  CI_b = 1 - inner/outer diameter and the trabecular density (BV/TV) rho_b are
      CI_b  = CI0_b  + signal * 0.035 * (T + 1) + subject noise + bone noise
      rho_b = rho0_b + signal * 0.025 * (T + 1) + subject noise + bone noise
  `signal` is THE knob: 1.0 gives an oracle AUC (logistic regression on the 14 latent
  parameters, cross-validated) of about 0.90; 0 removes every T-score effect from the bones.
The standard-normal draws are kept on the subject so the same subject can be re-derived at
another T-score (:meth:`Subject.with_t_score`).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from bench.data.format import BONES
from bench.data.phantom.presets import PhantomConfig

TARGETS: tuple[str, ...] = tuple(BONES)            # ulna, radius, M1..M5 (class ids 1..7)
OSTEOPOROSIS_T = -2.5                               # label = T-score below this

# Table 2 of the paper: subjects per decade 10-19 ... 90-99 (all classes).
TABLE2_BINS = np.arange(10, 100, 10)
TABLE2_COUNTS = np.array([2, 8, 11, 28, 63, 44, 26, 9, 1], dtype=float)

# Latent bone model (values at T = -1; slopes per T-score unit at signal = 1).
CI0 = np.array([0.36, 0.33, 0.45, 0.47, 0.46, 0.42, 0.43])      # ulna radius M1..M5
RHO0 = np.array([0.19, 0.18, 0.21, 0.20, 0.20, 0.21, 0.21])
CI_SLOPE, RHO_SLOPE = 0.035, 0.025
CI_SUBJECT_SD, CI_BONE_SD = 0.038, 0.040
RHO_SUBJECT_SD, RHO_BONE_SD = 0.027, 0.030
T_SD = 1.0                                          # scatter of T around its age/sex mean

# Geometry: outer shaft diameter (mm) and length (mm) of a size-1.0 (female) subject.
DIAMETER0 = np.array([10.0, 12.5, 9.0, 8.0, 8.0, 6.8, 7.0])
LENGTH0 = np.array([235.0, 230.0, 44.0, 66.5, 64.0, 57.0, 53.5])
MALE_SIZE = 1.07


def t_mean(age: np.ndarray, female: np.ndarray) -> np.ndarray:
    """Mean T-score (before the prevalence offset) by age and sex."""
    age = np.asarray(age, dtype=float)
    f = -0.055 * np.maximum(age - 40.0, 0.0)
    m = 0.3 - 0.045 * np.maximum(age - 45.0, 0.0)
    return np.where(female, f, m)


def _age_grid(age_model: str) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes (ages) and weights of an age distribution."""
    if age_model == "table2":
        ages = (TABLE2_BINS[:, None] + np.arange(10)[None, :]).ravel().astype(float)
        w = np.repeat(TABLE2_COUNTS / TABLE2_COUNTS.sum() / 10.0, 10)
    else:
        ages = np.arange(18, 91, dtype=float)
        w = np.full(ages.shape, 1.0 / len(ages))
    return ages, w


@functools.lru_cache(maxsize=64)
def t_offset(prevalence: float, female_fraction: float, age_model: str) -> float:
    """Offset c with P(t_mean + c + N(0, T_SD) < -2.5) = prevalence (bisection on quadrature)."""
    ages, w = _age_grid(age_model)
    mf, mm = t_mean(ages, True), t_mean(ages, False)

    def prev(c: float) -> float:
        pf = norm.cdf((OSTEOPOROSIS_T - mf - c) / T_SD)
        pm = norm.cdf((OSTEOPOROSIS_T - mm - c) / T_SD)
        return float(np.sum(w * (female_fraction * pf + (1 - female_fraction) * pm)))

    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if prev(mid) > prevalence:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _sample_ages(rng: np.random.Generator, n: int, age_model: str) -> np.ndarray:
    if age_model == "table2":
        bins = rng.choice(TABLE2_BINS, size=n, p=TABLE2_COUNTS / TABLE2_COUNTS.sum())
        return bins + rng.integers(0, 10, size=n)
    return rng.integers(18, 91, size=n)


@dataclass
class Population:
    """n subjects as arrays (vectorised sampler; one row per subject)."""

    female: np.ndarray        # bool (n,)
    age: np.ndarray           # int (n,)
    t_score: np.ndarray       # float (n,)
    size: np.ndarray          # body-size factor (n,)
    z: np.ndarray             # standard-normal draws (n, 4, 7): ci subject/bone, rho subject/bone
    geo: np.ndarray           # standard-normal draws (n, 2, 7): diameter, length

    @property
    def label(self) -> np.ndarray:
        return (self.t_score < OSTEOPOROSIS_T).astype(int)


def sample_population(config: PhantomConfig, n: int, rng: np.random.Generator) -> Population:
    """Draw n subjects from the population of `config` (no geometry beyond sizes)."""
    female = rng.random(n) < config.female_fraction
    age = _sample_ages(rng, n, config.age_model)
    c = t_offset(config.prevalence, config.female_fraction, config.age_model)
    t = t_mean(age, female) + c + T_SD * rng.standard_normal(n)
    size = np.where(female, 1.0, MALE_SIZE) * np.exp(0.04 * rng.standard_normal(n))
    z = rng.standard_normal((n, 4, len(TARGETS)))
    z[:, 0, :] = z[:, 0, :1]       # subject-level draws are shared by the seven bones
    z[:, 2, :] = z[:, 2, :1]
    geo = rng.standard_normal((n, 2, len(TARGETS)))
    return Population(female=female, age=age, t_score=t, size=size, z=z, geo=geo)


def latent_bones(t_score: np.ndarray, z: np.ndarray, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Cortical index and trabecular density (n, 7) from T-scores (n,) and draws (n, 4, 7)."""
    dt = (np.asarray(t_score, dtype=float) + 1.0)[:, None]
    ci = CI0 + signal * CI_SLOPE * dt + CI_SUBJECT_SD * z[:, 0] + CI_BONE_SD * z[:, 1]
    rho = RHO0 + signal * RHO_SLOPE * dt + RHO_SUBJECT_SD * z[:, 2] + RHO_BONE_SD * z[:, 3]
    return np.clip(ci, 0.15, 0.75), np.clip(rho, 0.04, 0.40)


def bone_geometry(pop: Population) -> tuple[np.ndarray, np.ndarray]:
    """Outer shaft diameter and length (mm), (n, 7): size-scaled, slight periosteal growth with age."""
    growth = 1.0 + 0.0015 * np.clip(pop.age - 40, 0, None)
    diameter = DIAMETER0 * (pop.size * growth)[:, None] * np.exp(0.05 * pop.geo[:, 0])
    length = LENGTH0 * pop.size[:, None] * np.exp(0.025 * pop.geo[:, 1])
    return diameter, length


@dataclass(frozen=True)
class Subject:
    """One subject: demographics, T-score and the latent parameters of the seven target bones."""

    subject_id: str
    sex: str                           # "F" | "M"
    age: int
    t_score: float
    size: float                        # body-size factor scaling all anatomy
    signal: float                      # signal knob the latent parameters were derived with
    z: np.ndarray                      # (4, 7) standard-normal draws (see sample_population)
    cortical_index: np.ndarray         # (7,) 1 - inner/outer shaft diameter
    trabecular_density: np.ndarray     # (7,) BV/TV of the trabecular ends
    outer_diameter_mm: np.ndarray      # (7,) shaft outer diameter
    length_mm: np.ndarray              # (7,) bone length (radius/ulna: whole forearm bone)

    @property
    def label(self) -> int:
        return int(self.t_score < OSTEOPOROSIS_T)

    def bone(self, name: str) -> dict[str, float]:
        i = TARGETS.index(name)
        return dict(cortical_index=float(self.cortical_index[i]),
                    trabecular_density=float(self.trabecular_density[i]),
                    outer_diameter_mm=float(self.outer_diameter_mm[i]),
                    length_mm=float(self.length_mm[i]))

    def with_t_score(self, t_score: float) -> "Subject":
        """The same subject (same geometry and biological noise) at another T-score."""
        ci, rho = latent_bones(np.array([t_score]), self.z[None], self.signal)
        return dataclasses.replace(self, t_score=float(t_score), cortical_index=ci[0],
                                   trabecular_density=rho[0])


def subjects_from_population(pop: Population, ids: list[str], signal: float) -> list[Subject]:
    """Subject objects for every row of a population."""
    ci, rho = latent_bones(pop.t_score, pop.z, signal)
    diameter, length = bone_geometry(pop)
    return [Subject(subject_id=ids[i], sex="F" if pop.female[i] else "M", age=int(pop.age[i]),
                    t_score=float(pop.t_score[i]), size=float(pop.size[i]), signal=signal,
                    z=pop.z[i].copy(), cortical_index=ci[i], trabecular_density=rho[i],
                    outer_diameter_mm=diameter[i], length_mm=length[i])
            for i in range(len(ids))]


def sample_subject(config: PhantomConfig, rng: np.random.Generator, subject_id: str) -> Subject:
    """Draw one subject from the population of `config`."""
    return subjects_from_population(sample_population(config, 1, rng), [subject_id], config.signal)[0]


def oracle_features(pop: Population, signal: float) -> np.ndarray:
    """The oracle's inputs: cortical index and trabecular density of the seven bones, (n, 14)."""
    ci, rho = latent_bones(pop.t_score, pop.z, signal)
    return np.concatenate([ci, rho], axis=1)


def oracle_auc(config: PhantomConfig, n_subjects: int = 2000, seed: int = 0) -> float:
    """Cross-validated AUC of a logistic regression on the true latent bone parameters.

    Computed from the latent model only (no rendering): `n_subjects` subjects of the config's
    population, 5-fold stratified CV, AUC of the pooled out-of-fold probabilities.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x0AC1E]))
    pop = sample_population(config, n_subjects, rng)
    x, y = oracle_features(pop, config.signal), pop.label
    if y.min() == y.max():
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    p = cross_val_predict(model, x, y, cv=cv, method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))
