"""`bench tune` (issue 8) on smoke phantoms with a tiny segmentation model (levels 3, width 4, 32 rows).

Checks: the search space's bounds and conditionals; the downstream score by hand from validation
rows only; a study that runs, resumes (a second session adds trials, with its own sampler stream),
logs every trial as an MLflow child of the study's run and writes an overlay that changes the next
resolved config; two processes on one journal completing N trials in total with unique numbers; a
seg objective blind to the test split (perturbed test masks and images → the same value, a
perturbed val mask → another); MedianPruner wiring (a trial worse than a perfect one is pruned
after its first epoch); the report's tuning section; bad inputs → BenchError. The study machinery without training
(budget lock, seeded sampler, storages, failed trials) is in test_tune_storage.py.
The downstream objective (one full smoke trial, about 30 s) is marked slow.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from bench import registry
from bench.cli import main
from bench.config import resolve
from bench.data.format import Dataset, mask_path
from bench.data.imageio import read_label_map, write_label_map, write_png16
from bench.data.phantom import synthesize
from bench.errors import BenchError
from bench.tune import TuneRequest, run_tune
from bench.tune.data import validation_score
from bench.tune.session import Setup
from bench.tune.space import FEASIBILITY_MARGIN, make_space, suggest
from bench.tune.study import JOURNAL_FILE, SESSIONS, WORKER
from study_runs import journal

TINY = ["segmentation.levels=3", "segmentation.base_width=4", "segmentation.max_width=16",
        "segmentation.working_size=32", "segmentation.epochs=1", "segmentation.batch_size=16",
        "segmentation.predict_batch=16", "run.device=cpu", "tune.startup_trials=2"]


def sets_args(sets):
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune_data")
    return synthesize(root / "public", "public", "smoke", seed=0), synthesize(root / "clinical", "clinical", "smoke", seed=0)


def cli_args(phantoms, results, study, trials, *extra):
    return ["tune", "--target", "seg", "--trials", str(trials), "--study", study, "--results", str(results),
            "--data-seg", str(phantoms[0]), "--data-cls", str(phantoms[1]), *sets_args(TINY), *extra]


def load(results: Path, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=journal(results / "tune" / study / JOURNAL_FILE))


# --------------------------------------------------------------------------- pure pieces
def test_space_bounds_conditionals_and_bad_ranges():
    registry.load_entries()
    cfg = resolve("smoke")
    space = make_space(cfg.tune, cfg.segmentation)
    n = cfg.segmentation.experts * cfg.segmentation.samples
    assert space.gamma0 == (FEASIBILITY_MARGIN / n, 1.0) and space.anneal == (2, cfg.segmentation.epochs)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        o = suggest(trial, space)
        study.tell(trial, 0.0)
        assert space.gamma0[0] <= o["segmentation.gamma0"] <= 1.0 and 0.01 <= o["segmentation.lam"] <= 100.0
        kind = o["segmentation.gamma_schedule"]
        assert ("segmentation.gamma_patience" in o) == (kind == "plateau")
        assert ("segmentation.gamma_anneal_epochs" in o) == (kind in ("linear", "cosine"))
        resolve("smoke", sets=o).segmentation.validate()          # every point is a valid configuration
    assert {t.params["gamma_schedule"] for t in study.trials} == {"plateau", "linear", "cosine"}
    for sets, match in [({"tune.gamma0_low": 0.1}, "infeasible"), ({"tune.schedules": "plateau,warm"}, "warm"),
                        ({"tune.lam_low": 0.0}, "lam"), ({"tune.gamma0_high": 1.5}, "gamma0_high")]:
        with pytest.raises(BenchError, match=match):   # range errors when resolved, the floor in make_space
            bad = resolve("smoke", sets=sets)
            make_space(bad.tune, bad.segmentation)
    bad = resolve("smoke", sets={"tune.gamma0_high": 0.1})       # below the automatic floor 1.001 / N
    with pytest.raises(BenchError, match="raise tune.gamma0_high"):
        make_space(bad.tune, bad.segmentation)


def test_downstream_score_uses_validation_rows_only():
    # val: s1 (y=1) mean 0.8 -> TP; s2 (y=0) 0.3 -> TN; s3 (y=1) 0.4 -> FN; s4 (y=0) 0.7 -> FP
    # F1(pos) = F1(neg) = 2/(2+1+1) = 0.5; AUC = 3 of 4 (pos, neg) pairs ordered = 0.75
    val = [("s1", 1, 0.9, 0.7), ("s2", 0, 0.2, 0.4), ("s3", 1, 0.4, 0.4), ("s4", 0, 0.6, 0.8)]
    rows = [{"subject_id": s, "split": "val", "bone": b, "y_true": y, "p_pos": p}
            for s, y, *ps in val for b, p in zip(("ulna", "radius"), ps)]
    rng = np.random.default_rng(0)
    noise = [{"subject_id": f"{sp}{i}", "split": sp, "bone": "ulna", "y_true": int(rng.integers(2)),
              "p_pos": float(rng.random())} for sp in ("train", "test") for i in range(6)]
    frame = pd.DataFrame(rows + noise)
    score = validation_score(frame)
    assert score["val_macro_f1"] == pytest.approx(0.5) and score["val_auc"] == pytest.approx(0.75)
    assert score["value"] == pytest.approx(0.5 + 1e-5 * 0.75, abs=1e-12) and score["val_n"] == 4
    swapped = frame.copy()
    test = swapped["split"] == "test"
    swapped.loc[test, "y_true"] = 1 - swapped.loc[test, "y_true"]
    swapped.loc[test, "p_pos"] = 1 - swapped.loc[test, "p_pos"]
    assert validation_score(swapped) == score
    worse_auc = frame.copy()           # same decisions (same F1), but s3 (pos) and s2 (neg) swap order: AUC 0.5
    worse_auc.loc[worse_auc.subject_id == "s2", "p_pos"] = 0.45
    worse_auc.loc[worse_auc.subject_id == "s3", "p_pos"] = 0.35
    s2 = validation_score(worse_auc)
    assert s2["val_macro_f1"] == pytest.approx(0.5) and s2["val_auc"] == pytest.approx(0.5)
    assert s2["value"] < score["value"]
    with pytest.raises(BenchError, match="validation row"):
        validation_score(frame[frame.split != "val"])


# --------------------------------------------------------------------------- a study, end to end
@pytest.fixture(scope="module")
def tuned(phantoms, tmp_path_factory):
    results = tmp_path_factory.mktemp("tuned")
    assert main(cli_args(phantoms, results, "s1", 2)) == 0
    first = [dict(t.params) for t in load(results, "s1").trials]
    assert main(cli_args(phantoms, results, "s1", 3)) == 0          # resume: one more trial
    return results, first


def test_study_runs_resumes_and_logs_children(tuned):
    results, first = tuned
    study = load(results, "s1")
    trials = study.trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert [dict(t.params) for t in trials[:2]] == first            # the resumed study kept its trials
    assert study.user_attrs[SESSIONS] == 2
    values = [t.value for t in trials]
    assert all(np.isfinite(values)) and all(v > 0 for v in values)
    assert all(t.value == t.user_attrs["best_val_ged"] for t in trials)
    summary = json.loads((results / "tune" / "s1" / "summary.json").read_text())
    assert summary["trials"]["total"] == 3 and summary["sessions"] == 2
    assert summary["best"]["number"] == study.best_trial.number and summary["best"]["value"] == min(values)
    for name in ("best.yaml", "trials.csv", "history.png", "slice_gamma0_lam.png", "importance.png"):
        assert (results / "tune" / "s1" / name).is_file(), name
    assert len(pd.read_csv(results / "tune" / "s1" / "trials.csv")) == 3
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{results.resolve() / 'mlflow.db'}")
    exp = client.get_experiment_by_name("osteobench/tune")
    parents = client.search_runs([exp.experiment_id], "tags.`osteobench.optuna_study` = 's1' and "
                                 "tags.`osteobench.run_type` = 'entry'")
    assert len(parents) == 1
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    for run in children:
        t = trials[int(run.data.tags["osteobench.optuna_trial"])]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.metrics["objective"] == pytest.approx(t.value)
        assert float(run.data.params["gamma0"]) == pytest.approx(t.params["gamma0"])


def test_best_overlay_changes_the_next_resolved_config(tuned):
    results, _ = tuned
    best = load(results, "s1").best_trial
    overlay = results / "tune" / "s1" / "best.yaml"
    before, after = resolve("smoke"), resolve("smoke", config_files=[overlay])
    for key, value in best.params.items():
        assert getattr(after.segmentation, key) == value
    assert after.segmentation.gamma0 != before.segmentation.gamma0 and after.segmentation.lam != before.segmentation.lam
    header = [line for line in overlay.read_text().splitlines() if line.startswith("#")]
    assert f"# the trials ran with --set {' '.join(TINY)}" in header      # what the tuned values hold under
    assert any("those of 1-epoch trainings" in line for line in header)   # segmentation.epochs=1, not smoke's 60
    assert json.loads((results / "tune" / "s1" / "summary.json").read_text())["sets"] == TINY
    assert main(["run", "--entry", "simclr", "--config", str(overlay), "--dry-run",
                 "--results", str(results / "dry")]) == 0      # `bench run --config` accepts it


def test_report_tuning_section_copies_and_links_figures(tuned, tmp_path):
    from reports.index import links
    from reports.tuning import tuning_section

    results, _ = tuned
    best = load(results, "s1").best_trial
    lines = tuning_section(results, copy_to=tmp_path / "figures" / "tuning", link_prefix="figures/tuning")
    text = "\n".join(lines)
    assert "## Tuning" in text and "### Study `s1`" in text and f"best: trial {best.number}" in text
    found = links(text)                     # the report index's own link syntax, relative to the report folder
    assert len(found) == 3 and all((tmp_path / link).is_file() for link in found)
    assert tuning_section(tmp_path / "no-results") == []
    tuned_run = {"segmentation": {**best.params, "epochs": 1}}          # a run made with the overlay, and one not
    other = {"segmentation": {**best.params, "lam": best.params["lam"] * 1.001}}
    text = "\n".join(tuning_section(results, run_configs={"simclr": tuned_run, "swav": other, "clinical": {}}))
    assert "this suite's runs of `simclr` used these parameters" in text
    assert "no run of this suite used" in "\n".join(tuning_section(results, run_configs={"swav": other}))


# --------------------------------------------------------------------------- workers, test split, pruning
def test_two_processes_share_one_journal(phantoms, tmp_path):
    args = [sys.executable, "-m", "bench.cli", *cli_args(phantoms, tmp_path, "par", 4)]
    procs = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = load(tmp_path, "par")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert study.user_attrs[SESSIONS] == 2
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 4    # no duplicate proposals
    assert sum(o.count("tune par: trial") for o in outs) == 4
    assert len({t.user_attrs[WORKER] for t in study.trials}) <= 2
    from study_runs import assert_one_study_run

    assert_one_study_run(tmp_path, 4)


def _perturb(src: Path, dst: Path, split: str, images: bool) -> list[str]:
    """Copy dataset `src` to `dst` with the masks (and images) of `split` replaced by noise."""
    shutil.copytree(src, dst)
    ds = Dataset.open(dst)
    ids = ds.manifest.loc[ds.manifest["split"] == split, "image_id"].tolist()
    rng = np.random.default_rng(1)
    for image_id in ids:
        for annotator in ds.annotator_weights(image_id):
            p = mask_path(dst, image_id, annotator)
            shape = read_label_map(p).shape
            write_label_map(p, rng.integers(0, 8, shape).astype(np.uint8))
        if images:
            write_png16(ds.image_path(image_id), rng.random(ds.image(image_id).shape).astype(np.float32))
    return ids


def test_seg_objective_never_reads_the_test_split(phantoms, tmp_path):
    params = {"gamma0": 0.6, "gamma_schedule": "plateau", "gamma_patience": 3, "lam": 0.5}

    def value(data_seg: Path) -> float:
        setup = Setup(TuneRequest(target="seg", trials=1, study="x", results=tmp_path / "r", data_seg=str(data_seg),
                                  data_cls=str(phantoms[1]), sets=TINY, mlflow=False))
        objective = setup.objective()
        test_ids = set(Dataset.open(data_seg).manifest.query("split == 'test'")["image_id"])
        assert test_ids and not test_ids & set(objective.train.image_ids + objective.val.image_ids)
        trial = optuna.trial.FixedTrial(params)
        return objective(trial, setup.config(suggest(trial, setup.space))).value

    original = value(phantoms[0])
    changed = _perturb(phantoms[0], tmp_path / "test_noise", "test", images=True)
    assert changed and value(tmp_path / "test_noise") == original
    _perturb(phantoms[0], tmp_path / "val_noise", "val", images=False)
    assert value(tmp_path / "val_noise") != original                  # the check can see a change


def test_seg_objective_reads_the_data_as_the_segment_stage_does(phantoms, tmp_path):
    """Canvas, annotators and laterality (left hands mirrored, only unknown sides flippable) as in
    `bench run`'s segment stage, so the tuned γ/λ fit the training they will configure."""
    from methods.segmentation.data import load_split

    setup = Setup(TuneRequest(target="seg", trials=1, study="x", results=tmp_path / "r", data_seg=str(phantoms[0]),
                              data_cls=str(phantoms[1]), sets=TINY, mlflow=False))
    objective = setup.objective()
    seg, cfg = Dataset.open(phantoms[0]), setup.config({}).segmentation
    assert cfg.canonical_laterality
    stage = load_split(seg, ["train"], objective.train.canvas, "cpu", cfg.annotator_list, canonical=True)
    assert objective.train.image_ids == stage.image_ids and objective.train.mirrored.any()
    assert torch.equal(objective.train.images, stage.images) and torch.equal(objective.train.flippable,
                                                                              stage.flippable)


def test_a_clearly_worse_trial_is_pruned(phantoms, tmp_path):
    req = TuneRequest(target="seg", trials=2, study="p", results=tmp_path, data_seg=str(phantoms[0]),
                      data_cls=str(phantoms[1]), mlflow=False,
                      sets=TINY + ["segmentation.epochs=2", "tune.prune_startup_trials=1", "tune.prune_warmup_epochs=0"])
    space = Setup(req).space
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    (tmp_path / "tune" / "p").mkdir(parents=True)
    study = optuna.create_study(storage=journal(tmp_path / "tune" / "p" / JOURNAL_FILE), study_name="p",
                                direction="minimize")
    perfect = optuna.trial.create_trial(          # GED 0 at every epoch: any real trial is worse
        params={"gamma0": 0.5, "gamma_schedule": "plateau", "gamma_patience": 3, "lam": 1.0},
        distributions={"gamma0": FloatDistribution(*space.gamma0, log=True),
                       "gamma_schedule": CategoricalDistribution(list(space.schedules)),
                       "gamma_patience": IntDistribution(*space.patience),
                       "lam": FloatDistribution(*space.lam, log=True)},
        value=0.0, intermediate_values={0: 0.0, 1: 0.0})
    study.add_trial(perfect)
    summary = run_tune(req)
    pruned = load(tmp_path, "p").trials[1]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert list(pruned.intermediate_values) == [0] and pruned.intermediate_values[0] > 0   # stopped after epoch 0
    assert summary["trials"]["pruned"] == 1 and summary["best"]["number"] == 0


def test_the_study_identity_holds_the_data_content_not_its_path(phantoms, tmp_path):
    import shutil

    copy = tmp_path / "public"
    shutil.copytree(phantoms[0], copy)

    def identity(seg: Path) -> dict:
        return Setup(TuneRequest(target="seg", trials=1, study="i", results=tmp_path, data_seg=str(seg),
                                 data_cls=str(phantoms[1]), sets=TINY)).identity()

    first = identity(phantoms[0])
    assert set(first["data"]) == {"seg"}                  # the seg target reads no `cls` data
    assert identity(copy) == first                        # the same data elsewhere (another worker's mount)
    image = sorted((copy / "images").iterdir())[0]
    image.write_bytes(image.read_bytes()[::-1])           # same size, other pixels
    assert identity(copy)["data"] != first["data"]


def test_another_setup_is_refused_before_any_phantom_is_generated(phantoms, tmp_path, monkeypatch):
    from bench.tune import study as st
    from bench.tune.session import Setup as SessionSetup

    first = SessionSetup(TuneRequest(target="seg", trials=1, study="g", results=tmp_path, data_seg=str(phantoms[0]),
                                     data_cls=str(phantoms[1]), sets=TINY, mlflow=False))
    store = st.open_storage("", first.study_dir, tmp_path / "mlflow.db")
    st.join(st.open_study(store, "g", "minimize"), first.identity())

    def generate(self):
        raise AssertionError("phantoms generated before the setup was checked")

    monkeypatch.setattr(SessionSetup, "data_paths", generate)
    with pytest.raises(BenchError, match="another setup.*profile: 'smoke' → 'quick'"):
        run_tune(TuneRequest(target="seg", trials=1, study="g", results=tmp_path, profile="quick", sets=TINY,
                             mlflow=False))


def test_bad_inputs_raise_bench_errors(phantoms, tmp_path, capsys):
    base = dict(trials=1, study="b", results=tmp_path, data_seg=str(phantoms[0]), data_cls=str(phantoms[1]),
                sets=TINY)
    for changes, match in [({"target": "gamma"}, "unknown tuning target"), ({"target": "seg", "trials": 0}, "--trials"),
                           ({"target": "seg", "storage": "nosuchdriver://host/db"}, "Optuna storage"),
                           ({"target": "seg", "storage": f"sqlite:///{tmp_path.resolve()}/mlflow.db"}, "MLflow"),
                           ({"target": "seg", "study": "a/b"}, "study name"),
                           ({"target": "seg", "sets": TINY + ["segmentation.lam=2"]}, "searched"),
                           ({"target": "downstream", "entry": "noseg-simclr"}, "no 'segment' stage"),
                           ({"target": "downstream", "entry": "single-decoder-simclr"}, "mose"),
                           ({"target": "downstream", "entry": "simclr", "sets": TINY + ["patches.source=truth"]},
                            "does not read its 'segment' stage"),
                           ({"target": "downstream", "entry": "simclrr"}, "unknown entry")]:
        with pytest.raises(BenchError, match=match):
            run_tune(TuneRequest(**{**base, **changes}))
    assert not (tmp_path / "cache").exists()                  # refused before any data was generated
    assert main(cli_args(phantoms, tmp_path, "b", 0)) == 2
    assert "--trials" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:segmentation.*not learnt:UserWarning")   # a two-epoch segmenter: no bone yet
def test_downstream_trial_scores_validation_subjects_blind_to_test(phantoms, tmp_path):
    sets = TINY + ["tune.keep_trial_outputs=true", "patches.min_confidence=0", "patches.min_area_mm2=0",
                   "patches.min_relative_area=0", "patches.min_area_px=1", "ssl.epochs=1",
                   "ssl.max_steps_per_epoch=2", "probe.epochs=4"]
    summary = run_tune(TuneRequest(target="downstream", entry="simclr", trials=1, study="d", results=tmp_path,
                                   data_seg=str(phantoms[0]), data_cls=str(phantoms[1]), sets=sets, mlflow=False))
    trial = load(tmp_path, "d").trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and summary["best"]["number"] == 0
    outputs = tmp_path / "tune" / "d" / "trials" / "0000"
    preds = pd.read_parquet(next(outputs.rglob("bone_predictions.parquet")))
    assert "test" not in set(preds["split"]) and "val" in set(preds["split"])
    assert trial.value == pytest.approx(validation_score(preds)["value"])
    assert set(json.loads(next(outputs.rglob("eval.json")).read_text())["splits"]) == {"val"}
    # the same trial on copies whose test labels are flipped and test masks are noise: the same value
    cls = tmp_path / "cls_flipped"
    shutil.copytree(phantoms[1], cls)
    manifest = pd.read_csv(cls / "manifest.csv", dtype=str)
    test = manifest["split"] == "test"
    manifest.loc[test, "label"] = (1 - manifest.loc[test, "label"].astype(int)).astype(str)
    manifest.to_csv(cls / "manifest.csv", index=False)
    _perturb(phantoms[0], tmp_path / "seg_noise", "test", images=True)
    setup = Setup(TuneRequest(target="downstream", entry="simclr", trials=1, study="d2", results=tmp_path / "r2",
                              data_seg=str(tmp_path / "seg_noise"), data_cls=str(cls), sets=sets, mlflow=False))
    fixed = optuna.trial.FixedTrial(dict(trial.params), number=0)
    assert setup.objective()(fixed, setup.config(suggest(fixed, setup.space))).value == trial.value


def test_fewer_trials_than_the_study_holds_is_explained(tuned, phantoms, capsys):
    results, _ = tuned
    capsys.readouterr()
    assert main(cli_args(phantoms, results, "s1", 2)) == 0
    out = capsys.readouterr().out
    assert "3 trials" in out and "holds 3 counted trials, more than --trials 2" in out
    assert len(load(results, "s1").trials) == 3                      # nothing ran
