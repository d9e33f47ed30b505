"""bench.stats.compare_entries / compare_all and `bench compare`: pairing rules, per-seed,
ensemble and pooled rows against the primitives, Holm across entries, files, MLflow, exit codes."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import BenchError, registry, stats
from bench.cli import main
from bench.metrics import classification_metrics
from bench.results import write_run

N = 40


def _predictions(y: np.ndarray, p: np.ndarray, subjects: list[str] | None = None) -> pd.DataFrame:
    subjects = subjects or [f"s{i:03d}" for i in range(len(y))]
    test = pd.DataFrame({"subject_id": subjects, "split": "test", "y_true": y.astype(int), "p_pos": p,
                         "y_pred": (p > 0.5).astype(int), "n_bones": 7})
    val = test.head(6).assign(split="val", subject_id=[f"v{i}" for i in range(6)])   # other splits are ignored
    return pd.concat([val, test], ignore_index=True)


def _labels() -> np.ndarray:
    return (np.arange(N) % 5 < 2).astype(int)   # 16 positives, 24 negatives


def _scores(strength: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(np.random.SeedSequence([seed, int(strength * 100)]))
    y = _labels()
    return np.round(1 / (1 + np.exp(-(strength * (2 * y - 1) + rng.normal(0, 1, N)))), 3)


def _write(results: Path, entry: str, strength: float, seeds=(0, 1), suite: str = "s", edit=None) -> None:
    for s in seeds:
        p = _scores(strength, 10 * s + len(entry))
        preds = _predictions(_labels(), p)
        if edit is not None:
            preds = edit(s, preds)
        write_run(results, suite, entry, s, config={"entry": entry, "seed": s},
                  metrics={"test": classification_metrics(preds.loc[preds.split == "test", "y_true"],
                                                          preds.loc[preds.split == "test", "p_pos"])},
                  predictions=preds)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    _write(root, "alpha", 1.5)
    _write(root, "beta_v2", 0.5)
    return root


def _test_rows(results: Path, entry: str, seed: int) -> pd.DataFrame:
    p = pd.read_parquet(results / "s" / entry / f"seed{seed}" / "predictions.parquet")
    return p[p["split"] == "test"].sort_values("subject_id")


def test_rows_per_seed_ensemble_and_pooled_match_the_primitives(results):
    frame = stats.compare_entries(results, "s", "alpha", "beta_v2", n_boot=300, seed=3)
    assert list(frame.columns) == list(stats.COMPARE_COLUMNS)
    assert list(frame["scope"]) == [sc for sc in ("seed0", "seed1", "ensemble", "pooled") for _ in range(3)]
    assert list(frame["metric"]) == ["auc", "f1", "accuracy"] * 4
    assert (frame["n_subjects"] == N).all() and (frame["n_pos"] == 16).all()   # val rows not used
    rows = frame.set_index(["scope", "metric"])
    per_seed = {}
    for s in (0, 1):
        a, b = _test_rows(results, "alpha", s), _test_rows(results, "beta_v2", s)
        y = a["y_true"].to_numpy(float)
        ma, mb = classification_metrics(y, a["p_pos"]), classification_metrics(y, b["p_pos"])
        boot = stats.paired_bootstrap(y, a["p_pos"], b["p_pos"], n_boot=300, seed=3)
        for m in ("auc", "f1", "accuracy"):
            r = rows.loc[(f"seed{s}", m)]
            assert (r.value_a, r.value_b) == (pytest.approx(ma[m]), pytest.approx(mb[m]))
            assert r.delta == pytest.approx(ma[m] - mb[m])
            assert (r.ci_low, r.ci_high, r.p_bootstrap) == (boot[m].ci_low, boot[m].ci_high, boot[m].p_value)
            per_seed.setdefault(m, []).append((ma[m], mb[m]))
        assert rows.loc[(f"seed{s}", "auc"), "p_delong"] == pytest.approx(stats.delong(y, a["p_pos"], b["p_pos"]).p)
        assert rows.loc[(f"seed{s}", "accuracy"), "p_mcnemar"] == pytest.approx(
            stats.mcnemar(y, a["p_pos"] > 0.5, b["p_pos"] > 0.5).p)
        assert np.isnan(rows.loc[(f"seed{s}", "f1"), "p_delong"]) and np.isnan(rows.loc[(f"seed{s}", "auc"), "p_mcnemar"])
    for m, vals in per_seed.items():     # pooled: mean over seeds, hierarchical bootstrap
        r = rows.loc[("pooled", m)]
        assert r.value_a == pytest.approx(np.mean([v[0] for v in vals]))
        assert r.delta == pytest.approx(np.mean([v[0] - v[1] for v in vals]))
        assert r.ci_low < r.delta < r.ci_high and np.isnan(r.p_delong) and r.n_seeds == 2
    ens_a = (_test_rows(results, "alpha", 0)["p_pos"].to_numpy() + _test_rows(results, "alpha", 1)["p_pos"].to_numpy()) / 2
    assert rows.loc[("ensemble", "auc"), "value_a"] == pytest.approx(classification_metrics(_labels(), ens_a)["auc"])
    assert rows.loc[("pooled", "auc"), "delta"] > 0   # the stronger entry wins
    swapped = stats.compare_entries(results, "s", "beta_v2", "alpha", n_boot=300, seed=3)
    np.testing.assert_allclose(swapped["delta"], -frame["delta"])


def test_not_the_same_subjects_seeds_or_labels_is_an_error(results, tmp_path):
    _write(results, "gamma", 1.0, edit=lambda s, p: p[p["subject_id"] != "s007"] if s == 1 else p)
    with pytest.raises(BenchError, match=r"not run on the same test subjects \(seed 1\).*s007"):
        stats.compare_entries(results, "s", "alpha", "gamma", n_boot=10)
    _write(results, "delta", 1.0, seeds=(0,))
    with pytest.raises(BenchError, match=r"seeds \[0, 1\] but 'delta' with \[0\]"):
        stats.compare_entries(results, "s", "alpha", "delta", n_boot=10)
    only0 = stats.compare_entries(results, "s", "alpha", "delta", n_boot=10, seeds=[0])
    assert list(only0["scope"].unique()) == ["seed0", "pooled"]
    _write(results, "eps", 1.0, edit=lambda s, p: p.assign(y_true=np.where(p["subject_id"] == "s003", 1 - p["y_true"],
                                                                           p["y_true"])))
    with pytest.raises(BenchError, match="disagree on the labels.*s003"):
        stats.compare_entries(results, "s", "alpha", "eps", n_boot=10)
    with pytest.raises(BenchError, match=r"entries \['nope'\] have no results"):
        stats.compare_entries(results, "s", "alpha", "nope", n_boot=10)


def test_unscored_subject_is_left_out_and_noted(results):
    _write(results, "zeta", 1.0,
           edit=lambda s, p: p.assign(p_pos=np.where(p["subject_id"] == "s004", np.nan, p["p_pos"])) if s == 0 else p)
    frame = stats.compare_entries(results, "s", "alpha", "zeta", n_boot=50)
    n = frame.groupby("scope")["n_subjects"].first()
    assert (n["seed0"], n["seed1"], n["ensemble"], n["pooled"]) == (N - 1, N, N - 1, N - 1)
    noted = frame.set_index("scope")["note"].str.contains("without a label or a probability")
    assert noted["seed0"].all() and noted["ensemble"].all() and noted["pooled"].all()
    assert not noted["seed1"].any()          # seed 1 lost nobody: its rows carry no note
    assert frame.loc[frame["scope"] == "pooled", "note"].str.contains("1 subjects unscored").all()


def test_compare_all_applies_holm_within_scope_and_metric(results):
    _write(results, "gamma", 0.0)
    (results / "s" / "compare").mkdir()     # the output folder is not an entry
    frame = stats.compare_all(results, "s", "alpha", n_boot=200)
    assert sorted(frame["entry_b"].unique()) == ["beta_v2", "gamma"]
    for (scope, metric), g in frame.groupby(["scope", "metric"]):
        assert len(g) == 2
        np.testing.assert_allclose(g["p_holm"], stats.holm(g["p_bootstrap"].to_numpy()))
        np.testing.assert_allclose(g["p_delong_holm"], stats.holm(g["p_delong"].to_numpy()), equal_nan=True)
    single = stats.compare_entries(results, "s", "alpha", "gamma", n_boot=200)
    got = frame[frame["entry_b"] == "gamma"].reset_index(drop=True)
    pd.testing.assert_frame_equal(got[single.columns], single)
    assert (frame.loc[(frame.entry_b == "gamma") & (frame.scope == "pooled"), "p_holm"] < 0.05).all()


def test_cli_writes_json_and_latex_and_finds_the_suite(results, capsys):
    assert main(["compare", "alpha", "beta_v2", "--results", str(results), "--n-boot", "200", "--no-mlflow"]) == 0
    out = capsys.readouterr().out
    assert "pooled" in out and "seed1" in out and "p_delong" in out
    doc = json.loads((results / "s" / "compare" / "alpha__beta_v2.json").read_text())
    assert doc["suite"] == "s" and doc["method"]["n_boot"] == 200 and len(doc["rows"]) == 12
    pooled_auc = next(r for r in doc["rows"] if r["scope"] == "pooled" and r["metric"] == "auc")
    frame = stats.compare_entries(results, "s", "alpha", "beta_v2", n_boot=200)
    assert pooled_auc["delta"] == pytest.approx(frame.set_index(["scope", "metric"]).loc[("pooled", "auc"), "delta"])
    assert pooled_auc["p_delong"] is None   # NaN written as null
    tex = (results / "s" / "compare" / "alpha__beta_v2.tex").read_text()
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"beta\_v2", r"$\Delta$", r"\caption{", "pooled"):
        assert token in tex, token
    assert not list((results / "s" / "compare").glob(".*tmp*"))   # no temporary leftovers
    test_json = (results / "s" / "compare" / "alpha__beta_v2.json").read_text()
    assert main(["compare", "alpha", "beta_v2", "--results", str(results), "--n-boot", "50", "--no-mlflow",
                 "--split", "val"]) == 0                   # another split: its own files, the test ones kept
    assert json.loads((results / "s" / "compare" / "alpha__beta_v2__val.json").read_text())["method"]["split"] == "val"
    assert (results / "s" / "compare" / "alpha__beta_v2.json").read_text() == test_json
    assert main(["compare", "alpha", "beta_v2", "--results", str(results), "--n-boot", "50", "--no-mlflow",
                 "--metric", "precision", "--seeds", "1", "0"]) == 0       # other metrics and seeds: their own files
    doc = json.loads((results / "s" / "compare" / "alpha__beta_v2__seeds-0-1__precision.json").read_text())
    assert {r["metric"] for r in doc["rows"]} == {"precision"}
    assert (results / "s" / "compare" / "alpha__beta_v2.json").read_text() == test_json

    assert main(["compare", "alpha", "--all", "--results", str(results), "--n-boot", "50", "--no-mlflow",
                 "--metric", "auc"]) == 0
    doc = json.loads((results / "s" / "compare" / "alpha__all__auc.json").read_text())
    assert {r["metric"] for r in doc["rows"]} == {"auc"} and "p_holm" in doc["rows"][0]
    assert r"p_\mathrm{Holm}" in (results / "s" / "compare" / "alpha__all__auc.tex").read_text()


@pytest.mark.parametrize("argv,message", [
    (["compare", "alpha", "nope"], "entries ['nope'] have no complete run in any suite"),
    (["compare", "alpha", "nope", "--suite", "s"], "entries ['nope'] have no results"),
    (["compare", "alpha", "beta_v2", "--all"], "one entry with --all"),
    (["compare", "alpha"], "one entry with --all"),
    (["compare", "alpha", "beta_v2", "--metric", "auroc"], "unknown metric"),
    (["compare", "alpha", "beta_v2", "--suite", "other"], "no suite 'other'"),
])
def test_cli_user_errors_exit_2(results, capsys, argv, message):
    assert main([*argv, "--results", str(results), "--no-mlflow", "--n-boot", "10"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_several_suites_need_suite_option(results, capsys):
    _write(results, "gamma", 1.0, suite="s3")
    assert main(["compare", "alpha", "gamma", "--results", str(results), "--no-mlflow", "--n-boot", "10"]) == 2
    assert "no suite under" in capsys.readouterr().err
    _write(results, "alpha", 1.5, suite="s2")
    _write(results, "beta_v2", 0.5, suite="s2")
    assert main(["compare", "alpha", "beta_v2", "--results", str(results), "--no-mlflow", "--n-boot", "10"]) == 2
    assert "choose one with --suite" in capsys.readouterr().err


def test_cli_logs_to_mlflow_once(results, capsys):
    argv = ["compare", "alpha", "beta_v2", "--results", str(results), "--n-boot", "100"]
    assert main(argv) == 0
    assert main(argv) == 0                       # identical output: the run is reused
    from mlflow import MlflowClient

    from bench.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(results))
    exp = client.get_experiment_by_name("osteobench/s")
    runs = client.search_runs([exp.experiment_id], "tags.`osteobench.run_type` = 'compare'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.info.run_name == "compare/alpha__beta_v2" and run.data.params["n_boot"] == "100"
    doc = json.loads((results / "s" / "compare" / "alpha__beta_v2.json").read_text())
    want = next(r for r in doc["rows"] if r["scope"] == "pooled" and r["metric"] == "auc")["delta"]
    assert run.data.metrics["pooled/auc/delta"] == pytest.approx(want)
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert arts == {"alpha__beta_v2.json", "alpha__beta_v2.tex"}


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (texlive-latex-recommended)")
def test_latex_compiles(results, tmp_path):
    assert main(["compare", "alpha", "beta_v2", "--results", str(results), "--n-boot", "50", "--no-mlflow"]) == 0
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n"
                   + (results / "s" / "compare" / "alpha__beta_v2.tex").read_text() + "\\end{document}\n")
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]


# --------------------------------------------------------------------------- real runs
@pytest.fixture
def toy_clone():
    registry.load_entries(["toy_entries"])
    toy = registry.get("toy")
    registry.register(registry.Entry("toy-clone", "the toy entry under another name", stages=toy.stages,
                                     kind="example"))
    yield
    registry.unregister("toy-clone")


def test_runner_results_of_identical_entries_compare_equal(tmp_path, toy_clone):
    from tiny_data import write_tiny_dataset

    from bench.runner import Runner

    data = write_tiny_dataset(tmp_path / "tiny", n_subjects=200, seed=1)
    runner = Runner(tmp_path / "results", suite="t", profile="smoke", data_seg=str(data), data_cls=str(data),
                    device="cpu", progress=False)
    assert [o.status for o in runner.run(["toy", "toy-clone"], [0, 1])] == ["done"] * 4
    frame = stats.compare_entries(tmp_path / "results", "t", "toy", "toy-clone", n_boot=200)
    assert list(frame["scope"].unique()) == ["seed0", "seed1", "ensemble", "pooled"]
    n_test = int((pd.read_csv(data / "manifest.csv")["split"] == "test").sum())
    assert (frame["n_subjects"] == n_test).all()
    assert (frame["delta"] == 0).all() and (frame["value_a"] > 0).all()
    per_model = frame[frame["scope"] != "pooled"]
    assert (per_model["p_bootstrap"] == 1).all()
    assert (per_model.loc[per_model.metric == "auc", "p_delong"] == 1).all()
    assert (per_model.loc[per_model.metric == "accuracy", "p_mcnemar"] == 1).all()
    assert (frame.loc[frame.scope == "pooled", "p_bootstrap"] > 0.5).all()
