"""Phantom latent model: demographics, oracle AUC, 2MCI separation, nuisance independence, missing rate.

No rendering here: the subject and nuisance samplers are fast, so the rates are checked on
many draws (issue 2, "Must hold").
"""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.data.phantom import PhantomConfig, oracle_auc, sample_nuisance, sample_population, sample_subject
from bench.data.phantom.anatomy import build_hand, target_points
from bench.data.phantom.subject import TABLE2_COUNTS, TARGETS, latent_bones, t_offset

CLINICAL = PhantomConfig.for_preset("clinical", "smoke")


@pytest.fixture(scope="module")
def population():
    return sample_population(CLINICAL, 20000, np.random.default_rng(np.random.SeedSequence([11])))


def test_clinical_demographics_follow_tables_1_and_2(population):
    female = population.female.mean()
    assert abs(female - 169 / 192) < 0.01                        # ~88 % female
    assert abs(population.label.mean() - 0.30) < 0.015           # configured prevalence
    assert population.age.min() >= 10 and population.age.max() <= 99
    decade = population.age // 10 * 10
    expected = TABLE2_COUNTS / TABLE2_COUNTS.sum()
    observed = np.array([(decade == d).mean() for d in range(10, 100, 10)])
    assert np.abs(observed - expected).max() < 0.015
    # Table 1 direction: osteoporosis is more frequent among women; it rises with age
    lab = population.label
    assert lab[population.female].mean() > lab[~population.female].mean()
    assert lab[population.age >= 70].mean() > lab[(population.age >= 40) & (population.age < 60)].mean()


@pytest.mark.parametrize("prevalence", [0.1, 0.5])
def test_prevalence_is_configurable(prevalence):
    cfg = CLINICAL.replace(prevalence=prevalence)
    pop = sample_population(cfg, 20000, np.random.default_rng(3))
    assert abs(pop.label.mean() - prevalence) < 0.015


def test_t_offset_solves_the_prevalence_exactly():
    from scipy.stats import norm

    from bench.data.phantom.subject import T_SD, _age_grid, t_mean

    c = t_offset(0.3, 0.7, "adult")
    ages, w = _age_grid("adult")
    p = sum(w * (0.7 * norm.cdf((-2.5 - t_mean(ages, True) - c) / T_SD)
                 + 0.3 * norm.cdf((-2.5 - t_mean(ages, False) - c) / T_SD)))
    assert p == pytest.approx(0.3, abs=1e-6)


def test_oracle_auc_about_090_at_default_signal_and_falls_with_signal():
    default = oracle_auc(CLINICAL, n_subjects=2000, seed=0)
    weak = oracle_auc(CLINICAL.replace(signal=0.5), n_subjects=2000, seed=0)
    none = oracle_auc(CLINICAL.replace(signal=0.0), n_subjects=2000, seed=0)
    assert 0.86 <= default <= 0.94
    assert weak < default - 0.05
    assert none < 0.6


def test_truth_2mci_separates_the_classes(population):
    ci, rho = latent_bones(population.t_score, population.z, CLINICAL.signal)
    y = population.label.astype(bool)
    m2 = ci[:, TARGETS.index("M2")]
    pooled = np.sqrt((m2[y].var(ddof=1) + m2[~y].var(ddof=1)) / 2)
    assert (m2[~y].mean() - m2[y].mean()) / pooled > 1.0          # Cohen's d
    assert 0.30 < m2.mean() < 0.55                               # plausible 2MCI values
    d_rho = (rho[~y].mean() - rho[y].mean())
    assert d_rho > 0                                             # denser trabeculae when normal


def test_same_subject_at_lower_t_has_thinner_cortex_and_sparser_trabeculae():
    s = sample_subject(CLINICAL, np.random.default_rng(5), "x")
    hi, lo = s.with_t_score(0.5), s.with_t_score(-3.5)
    assert np.all(lo.cortical_index < hi.cortical_index)
    assert np.all(lo.trabecular_density < hi.trabecular_density)
    assert np.array_equal(lo.outer_diameter_mm, hi.outer_diameter_mm)
    # slope at signal 1: 0.035 CI per T-score unit (unclipped range)
    assert hi.cortical_index[3] - lo.cortical_index[3] == pytest.approx(4 * 0.035, abs=1e-9)


def test_adult_anatomy_dimensions():
    pop = sample_population(CLINICAL, 4000, np.random.default_rng(8))
    from bench.data.phantom.subject import bone_geometry

    diameter, length = bone_geometry(pop)
    m2 = TARGETS.index("M2")
    assert 7.0 <= np.median(diameter[:, m2]) <= 9.0               # M2 shaft 7-9 mm
    assert 65.0 <= np.median(length[:, m2]) <= 72.0               # M2 65-72 mm
    from bench.data.phantom import clean_nuisance

    pose = clean_nuisance(CLINICAL).pose
    widths = [2 * build_hand(sample_subject(CLINICAL, np.random.default_rng(i), "x"), pose).target("radius").r_dist
              for i in range(40)]
    assert 20.0 <= np.median(widths) <= 25.0                      # distal radius 20-25 mm wide


@pytest.fixture(scope="module")
def nuisance_draws():
    cfg = CLINICAL
    rows = []
    for i in range(1200):
        rng = np.random.default_rng(np.random.SeedSequence([i, 99]))
        s = sample_subject(cfg, rng, f"s{i}")
        rows.append((s, sample_nuisance(cfg, s, rng)))
    return rows


def test_label_is_not_decodable_from_nuisance(nuisance_draws):
    feats, y = [], []
    for s, nz in nuisance_draws:
        f = nz.summary()
        feats.append([f["site"] == "B", np.log(f["dose_per_mm2"]), f["gamma"], f["window_lo_pct"],
                      f["window_hi_pct"], f["blur_mm"], f["heel"], f["collimated"], f["marker"] != "",
                      f["marker"] == "L", f["ring"] > 0, f["watch"], f["occluder"], f["laterality"] == "L",
                      abs(f["rotation_deg"]), f["scale"], f["spread"], f["thumb_deg"]])
        y.append(s.label)
    x, y = np.asarray(feats, dtype=float), np.asarray(y)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    p = cross_val_predict(model, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0),
                          method="predict_proba")[:, 1]
    assert roc_auc_score(y, p) < 0.65
    # every nuisance occurs
    summaries = [nz.summary() for _, nz in nuisance_draws]
    for key in ("collimated", "watch", "occluder", "blade"):
        assert any(sm[key] for sm in summaries), key
    assert {sm["site"] for sm in summaries} == {"A", "B"}
    assert {sm["laterality"] for sm in summaries} == {"L", "R"}
    assert any(sm["ring"] for sm in summaries) and any(sm["marker"] for sm in summaries)
    rot = np.array([sm["rotation_deg"] for sm in summaries])
    assert rot.min() < -20 and rot.max() > 20 and np.abs(rot).max() <= 25.0


def test_missing_bone_rate_about_three_percent(nuisance_draws):
    missing = np.array([bool(nz.missing_bone) for _, nz in nuisance_draws])
    assert 0.015 <= missing.mean() <= 0.05                        # ~3 % of 1200 draws
    for s, nz in nuisance_draws:
        hand = build_hand(s, nz.pose)
        x0, y0, x1, y1 = nz.field_mm
        for name in TARGETS:
            pts = target_points(hand.target(name), 35.0)
            inside = (pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1)
            if nz.blade is not None:
                inside &= pts @ np.array(nz.blade[:2]) < nz.blade[2]
            if name == nz.missing_bone and nz.missing_reason == "collimation":
                assert inside.mean() <= 0.2                          # cut out of the field
            elif name != nz.missing_bone:
                assert inside.mean() >= 0.9                          # the others stay in view
