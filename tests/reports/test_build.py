"""build_report / `bench report`: every table and figure of a suite, an index whose links all exist,
atomic replacement, the standalone LaTeX document compiles, MLflow logging, and the CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from suite_data import SUITE, write_suite

from bench import registry
from bench.cli import main
from bench.errors import BenchError
from bench.registry import Entry, Stage
from reports.build import build_report
from reports.index import links

TABLES = ["table3", "table4", "table5", "table6", "table7", "table8"]


def _links_exist(index: Path) -> list[str]:
    targets = links(index.read_text(encoding="utf-8"))
    assert targets, "the index links nothing"
    missing = [t for t in targets if not (index.parent / t).is_file()]
    assert not missing, missing
    return targets


def test_full_suite_report(tmp_path, registered):
    results = write_suite(tmp_path / "results", history_for=("rt_simclr", "rt_deepdxa"))
    index = build_report(results, SUITE, n_boot=40, mlflow=False)
    report = results / SUITE / "report"
    assert index == report / "report.md"
    targets = _links_exist(index)
    for key in TABLES:
        assert f"tables/{key}.tex" in targets and f"tables/{key}.csv" in targets
    for stem in ["fig5_bone_probabilities", "training_rt_simclr", "training_rt_deepdxa", "segmentation_examples",
                 *(f"roc_{k}" for k in TABLES), *(f"calibration_{k}" for k in TABLES)]:
        assert f"figures/{stem}.png" in targets and f"figures/{stem}.pdf" in targets, stem
    assert "figures/examples/rt_simclr-seed0-run-example.png" in targets
    text = index.read_text(encoding="utf-8")
    assert "Best full-method entry: `rt_simclr`" in text and "| `rt_jang` | baseline | table8 |" in text
    # the CSV behind Table 4 has the Δ of every row and metric
    t4 = pd.read_csv(report / "tables" / "table4.csv")
    assert len(t4) == 2 * 3 and set(t4["reference"]) == {"rt_simclr", "rt_supcon"}
    assert (report / "tables" / "tables.tex").is_file()
    assert not [p for p in (results / SUITE).iterdir() if p.name.startswith(".")]  # no temp folder left


def test_subset_skips_tables_and_replaces_report(tmp_path, registered):
    results = write_suite(tmp_path / "results", ["rt_simclr", "rt_supcon", "rt_noseg_simclr"])
    out = tmp_path / "rep"
    (out / "stale").mkdir(parents=True)
    (out / "report.md").write_text("an earlier report")
    index = build_report(results, SUITE, out=out, entries=["rt_simclr", "rt_noseg_simclr"], n_boot=20,
                         mlflow=False)
    assert not (out / "stale").exists()  # an earlier report's folder is replaced as a whole
    targets = _links_exist(index)
    assert sorted(p.stem for p in (out / "tables").glob("table[0-9].tex")) == ["table3", "table4"]
    assert "tables/table5.tex" not in targets
    text = index.read_text(encoding="utf-8")
    assert "Not produced: Table 5: no entry of this table has results" in text
    assert "rt_supcon" not in text  # not among the chosen entries


def test_out_never_replaces_a_folder_that_holds_no_report(tmp_path, registered):
    results = write_suite(tmp_path / "results", ["rt_simclr"])
    before = sorted(p.name for p in (results / SUITE).iterdir())
    with pytest.raises(BenchError, match="holds no report"):
        build_report(results, SUITE, out=results / SUITE, n_boot=10, mlflow=False)
    assert sorted(p.name for p in (results / SUITE).iterdir()) == before     # the suite's runs are kept
    assert main(["report", "--suite", SUITE, "--results", str(results), "--out", str(results), "--no-mlflow"]) == 2


def test_entries_bring_their_references_and_a_missing_reference_is_said(tmp_path, registered):
    results = write_suite(tmp_path / "results", ["rt_simclr", "rt_supcon", "rt_noseg_simclr", "rt_noseg_supcon",
                                                 "rt_deepdxa"])
    index = build_report(results, SUITE, out=tmp_path / "a", entries=["rt_noseg_simclr", "rt_deepdxa"], n_boot=10,
                         mlflow=False)
    t4 = pd.read_csv(tmp_path / "a" / "tables" / "table4.csv")
    assert t4["delta"].notna().all() and set(t4["reference"]) == {"rt_simclr"}        # the parent came along
    assert "rt_supcon" in index.read_text(encoding="utf-8")                # a full entry: Table 8's "Ours" candidate
    shutil.rmtree(results / SUITE / "rt_supcon")
    build_report(results, SUITE, out=tmp_path / "b", n_boot=10, mlflow=False)
    tex = (tmp_path / "b" / "tables" / "table4.tex").read_text(encoding="utf-8")
    assert "its reference (rt\\_supcon) has no results in this suite" in tex


def test_unregistered_and_empty(tmp_path, registered):
    results = write_suite(tmp_path / "results", ["rt_simclr"])
    shutil.copytree(results / SUITE / "rt_simclr", results / SUITE / "rt_mystery")
    index = build_report(results, SUITE, n_boot=10, mlflow=False)
    text = index.read_text(encoding="utf-8")
    assert "['rt_mystery'] have results but are not registered" in text
    assert "figures/roc_other.png" in links(text)
    (results / "void").mkdir()
    assert main(["report", "--suite", "void", "--results", str(results), "--no-mlflow"]) == 2
    assert main(["report", "--suite", "nosuch", "--results", str(results), "--no-mlflow"]) == 2
    assert main(["report", "--suite", SUITE, "--results", str(results), "--entries", "nope", "--no-mlflow"]) == 2


def test_seeds_left_out_are_said_in_the_report(tmp_path, registered):
    from bench import results as store

    results = write_suite(tmp_path / "results", ["rt_simclr", "rt_noseg_simclr"])
    (results / SUITE / "rt_noseg_simclr" / "seed0" / "predictions.parquet").unlink()
    store.write_failure(results, SUITE, "rt_simclr", 1, "boom")
    with pytest.warns(UserWarning, match="left out"):
        text = build_report(results, SUITE, n_boot=10, mlflow=False).read_text(encoding="utf-8")
    assert "rt_noseg_simclr seed 0 is left out:" in text and "lacks predictions.parquet" in text
    assert "rt_simclr seed 1 is left out: its latest attempt failed" in text
    assert [line for line in text.splitlines() if line.startswith("| `rt_simclr`")][0].endswith("| 0 2 |")


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex is not installed (Debian: texlive-latex-base texlive-latex-recommended)")
def test_tables_tex_compiles(tmp_path, registered):
    results = write_suite(tmp_path / "results")
    build_report(results, SUITE, n_boot=10, mlflow=False)
    tables = results / SUITE / "report" / "tables"
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"], cwd=tables,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tables / "tables.pdf").read_bytes().startswith(b"%PDF")
    log = (tables / "tables.log").read_text(errors="replace")
    for problem in ("Overfull \\hbox", "Undefined control sequence", "Missing character", "LaTeX Error"):
        assert problem not in log, problem
    assert all(f"(./{k}.tex" in log for k in [*TABLES, "screening"])  # every generated table was input


def test_cli_and_mlflow(tmp_path, registered, capsys):
    results = write_suite(tmp_path / "results", ["rt_simclr", "rt_noseg_simclr"])
    code = main(["report", "--suite", SUITE, "--results", str(results), "--n-boot", "10",
                 "--fig5-entry", "rt_noseg_simclr"])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.strip() == f"report: {results / SUITE / 'report' / 'report.md'}"
    assert "rt_noseg_simclr" in (results / SUITE / "report" / "report.md").read_text()

    from mlflow import MlflowClient

    from bench.tracking import default_tracking_uri

    client = MlflowClient(tracking_uri=default_tracking_uri(results))
    exp = client.get_experiment_by_name(f"osteobench/{SUITE}")
    runs = client.search_runs([exp.experiment_id], "tags.`osteobench.run_type` = 'report'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["best_entry"] == "rt_simclr" and runs[0].data.params["n_boot"] == "10"
    files = {f.path for f in client.list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/report.md", "report/tables", "report/figures"} <= files


def test_cli_does_not_import_reports_at_startup():
    code = ("import sys, bench.cli; bench.cli.build_parser(); "
            "print(any(m == 'reports' or m.startswith('reports.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _seg_like(ctx):
    """A final stage that leaves an example picture in figures/ and a subject prediction table."""
    from suite_data import png_bytes, predictions

    (ctx.out_dir / "figures").mkdir()
    (ctx.out_dir / "figures" / "case.png").write_bytes(png_bytes())
    ctx.log("loss", 1.0, epoch=0)
    ctx.log("loss", 0.5, epoch=1)
    preds = predictions("rt_simclr", ctx.seed, bones=False).assign(subject_id=lambda f: f["subject_id"])
    manifest = ctx.datasets["cls"].manifest.drop_duplicates("subject_id")
    preds = preds.iloc[: len(manifest)].assign(subject_id=manifest["subject_id"].to_numpy(),
                                               split=manifest["split"].to_numpy(),
                                               y_true=manifest["label"].astype(int).to_numpy())
    preds[["subject_id", "split", "y_true", "p_pos"]].to_parquet(ctx.out_dir / "predictions.parquet")
    return None


def test_report_of_runner_results(tmp_path, tiny_dataset, registered):
    """Real result folders written by bench.runner: history, and a stage's figures/ picked up by the hook."""
    from bench.runner import Runner

    entry = Entry("rt_runner_full", "runner-made full entry", (Stage("rt_seg_like", _seg_like, datasets=("cls",)),),
                  kind="full", table="table3", row="Runner_full")
    registry.register(entry)
    try:
        runner = Runner(tmp_path / "results", suite="smk", profile="smoke", data_seg=str(tiny_dataset),
                        data_cls=str(tiny_dataset), device="cpu", progress=False)
        outcomes = runner.run(["rt_runner_full"], [0, 1])
        assert [o.status for o in outcomes] == ["done", "done"], [o.error for o in outcomes]
        index = build_report(tmp_path / "results", "smk", n_boot=20, mlflow=False)
    finally:
        registry.unregister("rt_runner_full")
    targets = _links_exist(index)
    assert "tables/table3.tex" in targets and "figures/training_rt_runner_full.png" in targets
    assert "figures/examples/rt_runner_full-seed0-rt_seg_like-case.png" in targets
    tex = (index.parent / "tables" / "table3.tex").read_text()
    assert "Runner\\_full" in tex
    config = json.loads((tmp_path / "results" / "smk" / "rt_runner_full" / "seed0" / "config.json").read_text())
    assert "rt_seg_like" in config["stages"]


@pytest.mark.slow
def test_smoke_suite_report(tmp_path):
    """Issue 7 "must hold": the report of a real smoke suite renders every table and figure; LaTeX compiles."""
    pytest.importorskip("methods.entries", reason="the method entries are not in the tree yet")
    results = tmp_path / "results"
    main(["run", "--suite", "smoke", "--results", str(results), "--no-mlflow", "--device", "cpu"])
    index = build_report(results, "smoke", n_boot=200, mlflow=False)
    targets = _links_exist(index)
    ran = {p.parent.name for p in (results / "smoke").glob("*/seed0/metrics.json")}
    known = registry.entries()
    for key in {known[e].table for e in ran if e in known and known[e].table}:
        assert f"tables/{key}.tex" in targets, key
        assert f"figures/roc_{key}.png" in targets and f"figures/calibration_{key}.png" in targets, key
    if any(known[e].kind == "full" for e in ran if e in known):
        assert "figures/fig5_bone_probabilities.png" in targets
    if shutil.which("pdflatex"):
        proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "tables.tex"],
                              cwd=index.parent / "tables", capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:]
