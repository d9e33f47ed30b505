"""Runner: caching across seeds and entries, resume after a kill, failure isolation, determinism."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cli_calls import bench

from bench import registry, results as store
from bench.runner import Runner, entry_config

TESTS = Path(__file__).parent


@pytest.fixture(autouse=True)
def toy_registered():
    registry.load_entries(["toy_entries"])


def _runner(tmp_path: Path, data: Path, **kw) -> Runner:
    return Runner(tmp_path / "results", suite="t", profile="smoke", data_seg=str(data), data_cls=str(data),
                  device="cpu", progress=False, **kw)


def _log(tmp_path: Path) -> list[str]:
    p = tmp_path / "toy.log"
    return p.read_text().split() if p.exists() else []


def test_two_seeds_then_everything_cached(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("TOY_LOG", str(tmp_path / "toy.log"))
    out1 = _runner(tmp_path, tiny_dataset).run(["toy"], [0, 1])
    assert [o.status for o in out1] == ["done", "done"]
    assert _log(tmp_path) == ["toy_prep", "toy_probe", "toy_prep", "toy_probe"]
    m0 = store.read_run(store.run_dir(tmp_path / "results", "t", "toy", 0)).metrics
    assert m0["test"]["auc"] == out1[0].metrics["test"]["auc"]
    assert out1[0].metrics["extra"]["strength"] != out1[1].metrics["extra"]["strength"]  # seeds differ

    marker = store.write_failure(tmp_path / "results", "t", "toy", 1, "an attempt with another config failed")
    out2 = _runner(tmp_path, tiny_dataset).run(["toy"], [0, 1])
    assert [o.status for o in out2] == ["skipped", "skipped"]
    assert len(_log(tmp_path)) == 4  # no stage ran again
    assert not marker.exists()       # the latest attempt of seed 1 found its run done: not failed any more
    assert [json.dumps(o.metrics, sort_keys=True) for o in out2] == \
        [json.dumps(o.metrics, sort_keys=True) for o in out1]             # NaN-safe (a separated split's slope)


def test_a_stage_input_the_config_drops_is_neither_run_nor_keyed(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("TOY_LOG", str(tmp_path / "toy.log"))
    with_prep = _runner(tmp_path, tiny_dataset).run(["toy-optional"], [0])[0]
    assert _log(tmp_path) == ["toy_prep", "toy_probe"]
    runner = _runner(tmp_path, tiny_dataset, sets=["toy.use_prep=false"])
    planned = runner.plan(["toy-optional"], [0])[0]
    assert [s.name for s in planned.stages] == ["toy_probe"]
    without = runner.run(["toy-optional"], [0])[0]
    assert _log(tmp_path) == ["toy_prep", "toy_probe", "toy_probe"]          # toy_prep did not run again
    assert without.metrics["extra"]["strength"] == 1.5 != with_prep.metrics["extra"]["strength"]
    assert without.run_key != with_prep.run_key
    probes = sorted((tmp_path / "results" / "cache" / "toy_probe").glob("*/_stage.json"))
    inputs = sorted(sorted(json.loads(p.read_text())["material"]["inputs"]) for p in probes)
    assert inputs == [[], ["toy_prep"]]                                     # the key holds only what it reads
    # a seed changes nothing the probe reads without toy_prep except its own seed
    assert [s.name for s in runner.plan(["toy-optional"], [1])[0].stages] == ["toy_probe"]


def test_a_companion_runs_with_its_stage_and_its_options_key_it_alone(tmp_path, tiny_dataset, monkeypatch):
    """`toy_report` (a companion of `toy_prep`) runs right after it; its option toy.report_lines keys the
    companion only, so changing it recomputes the report and nothing else."""
    monkeypatch.setenv("TOY_LOG", str(tmp_path / "toy.log"))
    first = _runner(tmp_path, tiny_dataset).run(["toy-reported"], [0])[0]
    assert first.status == "done" and _log(tmp_path) == ["toy_prep", "toy_report", "toy_probe"]
    cache = tmp_path / "results" / "cache"
    assert (cache / "toy_report" / first.stage_keys["toy_report"] / "report.txt").read_text().count("\n") == 2
    runner = _runner(tmp_path, tiny_dataset, sets=["toy.report_lines=5"])
    planned = runner.plan(["toy-reported"], [0])[0]
    assert [(s.name, s.cached) for s in planned.stages] == [("toy_prep", True), ("toy_report", False),
                                                             ("toy_probe", True)]
    again = runner.run(["toy-reported"], [0])[0]
    assert _log(tmp_path) == ["toy_prep", "toy_report", "toy_probe", "toy_report"]
    assert {k: v for k, v in again.stage_keys.items() if k != "toy_report"} == \
        {k: v for k, v in first.stage_keys.items() if k != "toy_report"}
    assert (cache / "toy_report" / again.stage_keys["toy_report"] / "report.txt").read_text().count("\n") == 5
    assert json.dumps(again.metrics, sort_keys=True) == json.dumps(first.metrics, sort_keys=True)   # NaN-safe
    assert again.run_key != first.run_key                       # the run records the new report
    history = store.read_run(store.run_dir(tmp_path / "results", "t", "toy-reported", 0)).history
    assert "reported_strength" in set(history["metric"])                          # the companion's log reaches it
    # a keyed option of the stage still keys it (and so its companion and what reads it)
    assert not any(s.cached for s in _runner(tmp_path, tiny_dataset, sets=["toy.strength=3"]).plan(
        ["toy-reported"], [0])[0].stages)
    # a stage left out under the config takes its companion along
    assert [s.name for s in _runner(tmp_path, tiny_dataset, sets=["toy.use_prep=false"]).plan(
        ["toy-reported"], [0])[0].stages] == ["toy_probe"]


def test_companion_and_unkeyed_declarations_are_checked():
    from bench.registry import Entry, Stage

    def fn(ctx):
        return None
    with pytest.raises(ValueError, match="must read 'a' alone"):
        Stage("a", fn, companions=(Stage("c", fn, inputs=("b",)),))
    with pytest.raises(ValueError, match="not a 'section.option' of a whole section"):
        Stage("a", fn, sections=("toy.strength",), unkeyed=("toy.report_lines",))
    with pytest.raises(ValueError, match="not a 'section.option'"):
        Stage("a", fn, sections=("toy",), unkeyed=("toy",))
    report = Stage("c", fn, inputs=("a",))
    with pytest.raises(ValueError, match="duplicate stage names"):
        Entry("e", "", stages=(Stage("a", fn, companions=(report,)), Stage("c", fn, inputs=("a",))))
    with pytest.raises(ValueError, match="reads \\['c'\\]"):      # nothing may read a companion
        Entry("e", "", stages=(Stage("a", fn, companions=(report,)), Stage("b", fn, inputs=("c",))))


def test_same_seed_identical_metrics_without_cache(tmp_path, tiny_dataset):
    a = _runner(tmp_path / "a", tiny_dataset).run(["toy"], [3])[0].metrics
    b = _runner(tmp_path / "b", tiny_dataset).run(["toy"], [3])[0].metrics
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_config_change_reruns_only_affected_stage(tmp_path, tiny_dataset, monkeypatch):
    monkeypatch.setenv("TOY_LOG", str(tmp_path / "toy.log"))
    _runner(tmp_path, tiny_dataset).run(["toy"], [0])
    # toy_prep keys on the `run` section: changing it reruns prep and probe
    _runner(tmp_path, tiny_dataset, sets=["run.num_threads=1"]).run(["toy"], [0])
    assert _log(tmp_path) == ["toy_prep", "toy_probe"] * 2


def test_code_versions_rerun_what_they_cover(tmp_path, tiny_dataset, monkeypatch):
    """METRICS_VERSION re-evaluates finished runs from the cached stages; a stage's ``version`` reruns
    it and the stages that read it (the key holds no hash of the code)."""
    import toy_entries
    from bench import runner as runner_module

    monkeypatch.setenv("TOY_LOG", str(tmp_path / "toy.log"))
    assert [o.status for o in _runner(tmp_path, tiny_dataset).run(["toy"], [0])] == ["done"]
    monkeypatch.setattr(runner_module, "METRICS_VERSION", runner_module.METRICS_VERSION + 1)
    assert [o.status for o in _runner(tmp_path, tiny_dataset).run(["toy"], [0])] == ["done"]
    assert _log(tmp_path) == ["toy_prep", "toy_probe"]              # re-evaluated, no stage recomputed
    assert [o.status for o in _runner(tmp_path, tiny_dataset).run(["toy"], [0])] == ["skipped"]
    object.__setattr__(toy_entries.PREP, "version", 2)             # Stage is frozen: a code change bumps it
    try:
        assert [o.status for o in _runner(tmp_path, tiny_dataset).run(["toy"], [0])] == ["done"]
    finally:
        object.__setattr__(toy_entries.PREP, "version", 1)
    assert _log(tmp_path) == ["toy_prep", "toy_probe"] * 2


def test_a_run_is_written_under_its_run_lock(tmp_path, tiny_dataset, monkeypatch):
    """Two processes finishing one (suite, entry, seed) write its folder in turn (locking.run_lock)."""
    import fcntl

    from bench import runner as runner_module
    from bench.executors.locking import lock_path

    held = []
    write_run = store.write_run

    def checking_write_run(results, suite, entry, seed, **kw):
        with open(lock_path(results / "cache", f"run-{suite}-{entry}-seed{seed}"), "a+") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            except BlockingIOError:
                held.append(True)
        return write_run(results, suite, entry, seed, **kw)

    monkeypatch.setattr(runner_module.store, "write_run", checking_write_run)
    assert [o.status for o in _runner(tmp_path, tiny_dataset).run(["toy"], [0])] == ["done"]
    assert held == [True]


def test_failing_entry_does_not_stop_the_others(tmp_path, tiny_dataset):
    outcomes = _runner(tmp_path, tiny_dataset).run(["toy-fail", "toy"], [0])
    assert [(o.entry, o.status) for o in outcomes] == [("toy-fail", "failed"), ("toy", "done")]
    assert "always fails" in outcomes[0].error
    failed = tmp_path / "results" / "t" / "toy-fail" / "seed0.failed" / "traceback.txt"
    assert "RuntimeError" in failed.read_text()


def _cli(tmp_path: Path, data: Path, *extra: str, env: dict | None = None, in_process: bool = False
         ) -> subprocess.CompletedProcess:
    """`bench run` of the toy entry, seeds 0 and 1: a process of its own (one that can be killed), or
    `in_process` (tests/cli_calls.py: no seconds of imports)."""
    argv = ["run", "--entry", "toy", "--name", "t", "--seeds", "0", "1", "--results", str(tmp_path / "results"),
            "--data-seg", str(data), "--data-cls", str(data), "--device", "cpu", "--plugin", "toy_entries",
            "--no-mlflow", *extra]
    run_env = {"TOY_LOG": str(tmp_path / "toy.log"), **(env or {})}
    if in_process:
        return bench(*argv, env=run_env)
    full_env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **run_env}
    return subprocess.run([sys.executable, "-m", "bench.cli", *argv], capture_output=True, text=True, env=full_env,
                          timeout=300)


def test_killed_run_resumes_only_unfinished_part(tmp_path, tiny_dataset):
    killed = _cli(tmp_path, tiny_dataset, env={"TOY_KILL_AT": "toy_probe"})
    assert killed.returncode != 0
    assert _log(tmp_path) == ["toy_prep", "toy_probe"]
    assert not (tmp_path / "results" / "t" / "toy" / "seed0").exists()  # nothing half-written
    stray = [p for p in (tmp_path / "results" / "cache").rglob("*") if p.name.startswith(".") and p.is_dir()]
    resumed = _cli(tmp_path, tiny_dataset, in_process=True)
    assert resumed.returncode == 0, resumed.stderr
    # prep of seed 0 was cached; probe of seed 0 and both stages of seed 1 run
    assert _log(tmp_path)[2:] == ["toy_probe", "toy_prep", "toy_probe"]
    again = _cli(tmp_path, tiny_dataset, in_process=True)
    assert again.returncode == 0 and len(_log(tmp_path)) == 5
    assert "2 already done" in again.stdout
    assert stray  # the killed stage left only a hidden temp dir, never a cache entry


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary_folder(tmp_path, tiny_dataset):
    """A batch scheduler's SIGTERM: exit 143 with one line, the stage's temp folder removed, then a rerun
    computes what was cut."""
    import signal
    import time

    cmd = [sys.executable, "-m", "bench.cli", "run", "--entry", "toy", "--name", "t", "--seeds", "0",
           "--results", str(tmp_path / "results"), "--data-seg", str(tiny_dataset), "--data-cls", str(tiny_dataset),
           "--device", "cpu", "--plugin", "toy_entries", "--no-mlflow"]
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "TOY_LOG": str(tmp_path / "toy.log"), "TOY_SLEEP_AT": "toy_probe"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 240
    while _log(tmp_path) != ["toy_prep", "toy_probe"] and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert _log(tmp_path) == ["toy_prep", "toy_probe"]           # inside the (sleeping) probe stage
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err, err
    cache = tmp_path / "results" / "cache"
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]   # the cut stage's temp folder is gone
    assert not list(cache.glob("toy_probe/*/_stage.json")) and list(cache.glob("toy_prep/*/_stage.json"))
    assert _cli(tmp_path, tiny_dataset, "--seeds", "0", in_process=True).returncode == 0
    assert _log(tmp_path)[2:] == ["toy_probe"]


def test_cli_exit_codes_and_dry_run(tmp_path, tiny_dataset):
    """A user's error exits 2 with one line and no traceback (checked once in a process of its own; the
    other cases run in this process), a failed run exits 1, a dry run runs nothing."""
    bad = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--entry", "nosuch", "--results",
                          str(tmp_path / "r")], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown entry" in bad.stderr and "Traceback" not in bad.stderr
    dry = _cli(tmp_path, tiny_dataset, "--dry-run", in_process=True)
    assert dry.returncode == 0 and "to run" in dry.stdout and not _log(tmp_path)
    common = ["--plugin", "toy_entries", "--no-mlflow", "--device", "cpu"]
    fail = bench("run", "--entry", "toy-fail", "toy", "--results", str(tmp_path / "r"), "--data-seg", str(tiny_dataset),
                 "--data-cls", str(tiny_dataset), *common)
    assert fail.returncode == 1 and "FAILED toy-fail" in fail.stdout
    # bad data options stop the command before any run (not one failed run per entry and seed)
    import shutil

    unlabelled = tmp_path / "unlabelled"
    shutil.copytree(tiny_dataset, unlabelled)
    manifest = pd.read_csv(unlabelled / "manifest.csv")
    manifest["label"] = None
    manifest.to_csv(unlabelled / "manifest.csv", index=False)
    for extra, needle, dry in ((["--data-cls", str(tmp_path / "nowhere")], "no such folder", []),
                               (["--data-cls", str(unlabelled)], "the dataset has no labels", []),
                               (["--data-seg", str(tmp_path)], "not a dataset folder", ["--dry-run"]),
                               (["--set", "data.phantom_profile=huge"], "data.phantom_profile", []),
                               (["--set", "data.phantom_seed=-1"], "data.phantom_seed", ["--dry-run"])):
        bad = bench("run", "--entry", "toy", "--results", str(tmp_path / "r2"), *common, *extra, *dry)
        assert bad.returncode == 2 and needle in bad.stderr and bad.stderr.startswith("bench: error:"), (extra, bad)
    assert not (tmp_path / "r2" / "adhoc").exists()


def test_predictions_and_history_stored(tmp_path, tiny_dataset):
    _runner(tmp_path, tiny_dataset).run(["toy"], [0])
    run = store.read_run(store.run_dir(tmp_path / "results", "t", "toy", 0))
    manifest = pd.read_csv(tiny_dataset / "manifest.csv", dtype={"subject_id": str})
    assert sorted(run.predictions["subject_id"]) == sorted(manifest["subject_id"])
    assert (run.predictions["n_bones"] == 7).all()
    assert set(run.history["metric"]) == {"loss"}
    assert run.config["config"]["profile"] == "smoke" and run.config["entry"] == "toy"


def test_mlflow_holds_one_parent_per_entry_and_one_child_per_seed(tmp_path, tiny_dataset):
    from bench.tracking import Tracker

    tracker = Tracker(tmp_path / "results")
    runner = _runner(tmp_path, tiny_dataset, tracker=tracker)
    runner.run(["toy", "toy-fail"], [0, 1])
    runner.run(["toy"], [0, 1])  # resume: no duplicate runs
    client = tracker.client
    exp = client.get_experiment_by_name("osteobench/t")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = {r.data.tags["osteobench.entry"]: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert set(parents) == {"toy", "toy-fail"}
    toy_children = [r for r in children if r.data.tags["mlflow.parentRunId"] == parents["toy"].info.run_id]
    assert sorted(r.data.tags["osteobench.seed"] for r in toy_children) == ["0", "1"]
    for child in toy_children:
        seed = int(child.data.tags["osteobench.seed"])
        saved = store.read_run(store.run_dir(tmp_path / "results", "t", "toy", seed))
        assert child.data.params["profile"] == "smoke"
        assert child.data.params["run.device"] == "cpu"
        assert child.data.metrics["test_auc"] == pytest.approx(saved.metrics["test"]["auc"])
    assert parents["toy-fail"].info.status == "FAILED"


def test_a_run_made_without_mlflow_is_logged_when_rerun_with_it(tmp_path, tiny_dataset):
    from bench.tracking import Tracker

    assert [o.status for o in _runner(tmp_path, tiny_dataset).run(["toy"], [0])] == ["done"]   # --no-mlflow
    tracker = Tracker(tmp_path / "results")
    assert [o.status for o in _runner(tmp_path, tiny_dataset, tracker=tracker).run(["toy"], [0])] == ["skipped"]
    _runner(tmp_path, tiny_dataset, tracker=tracker).run(["toy"], [0])               # logged once, not twice
    exp = tracker.client.get_experiment_by_name("osteobench/t")
    runs = tracker.client.search_runs([exp.experiment_id], max_results=100)
    parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    saved = store.read_run(store.run_dir(tmp_path / "results", "t", "toy", 0))
    assert children[0].data.metrics["test_auc"] == pytest.approx(saved.metrics["test"]["auc"])
    assert children[0].data.params["profile"] == "smoke"


def test_run_key_ignores_sections_the_entry_does_not_use(tmp_path, tiny_dataset, monkeypatch):
    """A section registered by some unrelated import changes neither the run key nor config.json."""
    import dataclasses

    from bench import config as cfg_mod

    runner = _runner(tmp_path, tiny_dataset)
    entry = registry.get("toy")
    before = runner.plan_run(entry, 0)

    @dataclasses.dataclass
    class Unrelated:
        knob: int = 1

    monkeypatch.setattr(cfg_mod, "_SECTIONS", dict(cfg_mod._SECTIONS))
    cfg_mod.register_section("unrelated_test_section", Unrelated)
    after = runner.plan_run(entry, 0)
    assert "unrelated_test_section" in after.config.to_dict()
    assert after.run_key == before.run_key
    used = {"data", "run"}.union(*(s.sections for s in entry.stages))
    run_config = entry_config(entry, after.config)
    assert set(run_config) == {"profile"} | (used & set(after.config.to_dict()))
    # how the device and the data were spelled does not make another run: only what they are
    spelled = Runner(tmp_path / "results", suite="t", profile="smoke", data_seg=str(tiny_dataset) + "/.",
                     data_cls=str(tiny_dataset), device="auto", progress=False,
                     sets=["data.phantom_profile=smoke"]).plan_run(entry, 0)
    assert spelled.run_key == before.run_key
    quick = Runner(tmp_path / "results", suite="t", profile="smoke", data_seg=str(tiny_dataset),
                   data_cls=str(tiny_dataset), device="cpu", progress=False, sets=["run.num_threads=1"]).plan_run(entry, 0)
    assert quick.run_key != before.run_key


def test_an_entry_generates_only_the_datasets_its_stages_read(tmp_path, tiny_dataset):
    """`toy` reads `cls` alone: with no `seg` folder given, no `public` phantom is generated for it."""
    from bench.runner import data_roles

    runner = Runner(tmp_path / "results", suite="t", profile="smoke", data_cls=str(tiny_dataset), device="cpu",
                    progress=False)
    entry = registry.get("toy")
    assert data_roles(entry, runner.configure(entry)) == ("cls",)
    assert [o.status for o in runner.run(["toy"], [0])] == ["done"]
    assert not (tmp_path / "results" / "cache" / "phantom").exists()
    assert set(store.read_run(store.run_dir(tmp_path / "results", "t", "toy", 0)).config["data"]) == {"cls"}
    registry.load_entries()
    simclr = registry.get("simclr")                           # a segmentation trained on `seg`: both
    assert data_roles(simclr, runner.configure(simclr)) == ("seg", "cls")
