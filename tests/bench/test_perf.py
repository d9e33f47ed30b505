"""`bench perf ssl|suite` (issue 9): consistent numbers, the conventional pipeline's views, the
suite projection counting each distinct stage key once, user errors. No timing thresholds."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import registry
from bench.cli import main
from bench.config import resolve
from bench.errors import BenchError
from bench.perf_suite import (CostPart, PlanningRunner, StageCost, compare_measured, plan_suite, print_comparison,
                              project)
from bench.perf_timing import time_steps
from bench.runner import Runner
from methods.multicrop import MultiCropConfig
from methods.augment import AugmentConfig
from methods.patch_store import write_store
from methods.bones import BonePatch
from bench.perf_timing import Measurer
from methods.perf_suite import builtin_cost_models
from methods.ssl.perf import ConventionalViews, benchmark_ssl, conventional_loader, synthetic_store
from methods.ssl.pretrain import build_pretrainer, gather, make_views, pretrain_step, train_step

TINY = {"ssl.encoder": "resnet18", "multicrop.global_size": 32, "multicrop.local_size": 16,
        "patches.patch_size": 40, "heads.hidden_dim": 32, "heads.out_dim": 16, "run.device": "cpu"}


def _config(**sets):
    registry.load_entries()                                  # registers the method's config sections
    return resolve("smoke", sets={**TINY, **sets})


def test_time_steps_excludes_warmup_and_averages(monkeypatch):
    clock = {"t": 100.0}
    monkeypatch.setattr("bench.perf_timing.time.perf_counter", lambda: clock["t"])
    calls = []

    def step(i):
        calls.append(i)
        clock["t"] += 0.25 if i >= 2 else 10.0      # warm-up calls are slow and must not count
    assert time_steps(step, steps=4, warmup=2, device="cpu") == pytest.approx(0.25)
    assert calls == [0, 1, 2, 3, 4, 5]
    with pytest.raises(BenchError):
        time_steps(step, steps=0, warmup=0, device="cpu")


def test_synthetic_store_is_bone_like_and_seeded():
    a = synthetic_store(20, 32, seed=3)
    assert a.dtype == np.uint16 and a.shape == (20, 32, 32)
    frac = (a > 0).mean(axis=(1, 2))
    # ellipse area π·a·b with semi-axes a in [0.30, 0.45], b in [0.07, 0.20] of the side: [0.066, 0.283]
    assert (frac > 0.05).all() and (frac < 0.30).all()
    assert np.array_equal(a, synthetic_store(20, 32, seed=3)) and not np.array_equal(a, synthetic_store(20, 32, seed=4))


def test_conventional_views_shapes_range_and_worker_independence():
    mc = MultiCropConfig(global_size=24, local_size=12)
    array = synthetic_store(12, 40, seed=0)
    ds = ConventionalViews(array, np.arange(12), np.full(12, -1), mc, AugmentConfig(), seed=5)
    views, label = ds[3]
    assert [tuple(v.shape) for v in views] == [(1, 24, 24)] * 2 + [(1, 12, 12)] * 4 and label == -1
    assert all(v.dtype == torch.float32 and v.min() >= 0 and v.max() <= 1 for v in views)
    assert all(torch.equal(x, y) for x, y in zip(views, ds[3][0]))     # a function of (seed, index)
    assert not torch.equal(views[0], views[1])                          # two different global crops
    in_process = [b for b in torch.utils.data.DataLoader(ds, batch_size=4, num_workers=0)]
    two_workers = [b for b in torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)]
    for (va, _), (vb, _) in zip(in_process, two_workers):
        assert all(torch.equal(x, y) for x, y in zip(va, vb))
    batch, labels = next(iter(conventional_loader(ds, 4, 0, pin=False)))
    assert [tuple(v.shape) for v in batch] == [(4, 1, 24, 24)] * 2 + [(4, 1, 12, 12)] * 4 and labels.shape == (4,)


def test_model_only_step_is_the_stage_step_without_its_data_part():
    cfg = _config()
    data16 = torch.from_numpy(synthetic_store(8, 40, seed=1)).view(torch.int16)
    rows, labels = torch.arange(4), torch.full((4,), -1)
    params = []
    for split in (False, True):
        torch.manual_seed(0)
        p = build_pretrainer(cfg.ssl, cfg.heads, "cpu")
        p.start_epoch(0)
        gen = torch.Generator().manual_seed(7)
        if split:
            views = make_views(gather(data16, rows), cfg.multicrop, cfg.augment, cfg.ssl.crop_policy, gen)
            loss = train_step(p, views, labels, 0.05, cfg.multicrop.n_global)
        else:
            loss = pretrain_step(p, data16, rows, labels, cfg.multicrop, cfg.augment, gen, 0.05)
        params.append((loss, [t.detach().clone() for t in p.model.parameters()]))
    assert torch.equal(params[0][0], params[1][0])
    assert all(torch.equal(a, b) for a, b in zip(params[0][1], params[1][1]))


def test_benchmark_ssl_numbers_are_consistent():
    r = benchmark_ssl(_config(), "cpu", batch=4, steps=1, warmup=1, n_patches=12, workers=0)
    assert r["device"].startswith("CPU") and r["batch"] == 4 and r["views"] == "2x32 + 4x16"
    for feed in ("end_to_end", "model_only", "conventional", "loader_only"):
        m = r[feed]
        assert m["step_ms"] > 0 and m["samples_per_s"] == pytest.approx(4 / (m["step_ms"] / 1e3))
    assert r["end_to_end_over_model_only"] == pytest.approx(
        r["end_to_end"]["samples_per_s"] / r["model_only"]["samples_per_s"])
    assert r["end_to_end_over_conventional"] == pytest.approx(
        r["end_to_end"]["step_ms"] ** -1 / r["conventional"]["step_ms"] ** -1)


def test_benchmark_ssl_reads_the_pretraining_rows_of_a_real_store(tmp_path):
    patches = synthetic_store(10, 40, seed=2)
    images = []
    for i in range(10):
        role, split = ("seg", "train") if i < 6 else ("cls", "train")
        info = {"image_id": f"im{i}", "subject_id": f"s{i}", "role": role, "split": split,
                "label": None if role == "seg" else i % 2}
        bone = BonePatch("ulna", 1, patches[i], coverage=float((patches[i] > 0).mean()))
        images.append((info, [bone, BonePatch("radius", 2, None, missing=True, reason="absent")]))
    store = write_store(tmp_path / "store", images, patch_size=40)
    r = benchmark_ssl(_config(**{"ssl.method": "supcon"}), "cpu", batch=4, steps=1, warmup=0, store=store,
                      feeds=("end_to_end",))
    assert "patch store" in r["source"] and r["end_to_end"]["steps"] == 1
    with pytest.raises(BenchError, match="fewer than the batch"):
        benchmark_ssl(_config(), "cpu", batch=8, store=store, feeds=("end_to_end",))   # 6 seg patches < 8


@pytest.mark.parametrize("kw", [{"batch": 1}, {"steps": 0}, {"feeds": ("ceiling",)}, {"n_patches": 3}])
def test_benchmark_ssl_rejects_bad_arguments(kw):
    args = {"batch": 4, "n_patches": 12, **kw}
    with pytest.raises(BenchError):
        benchmark_ssl(_config(), "cpu", workers=0, **args)


# --------------------------------------------------------------------------- suite projection
def test_projection_counts_each_distinct_stage_key_once(tmp_path, tiny_dataset):
    registry.load_entries(["toy_entries"])
    data = [f"data.seg={tiny_dataset}", f"data.cls={tiny_dataset}"]
    stages = plan_suite(["toy", "toy-fail"], [0, 1], "smoke", "cpu", sets=data, results=str(tmp_path))
    runner = Runner(tmp_path, profile="smoke", sets=data, device="cpu", progress=False)
    planned = {(s.name, s.key) for p in runner.plan(["toy", "toy-fail"], [0, 1], generate=False) for s in p.stages}
    assert {(s.name, s.key) for s in stages} == planned and len(stages) == len(planned) == 6
    prep0 = next(s for s in stages if s.name == "toy_prep" and s.seed == 0)
    assert prep0.users == ["toy/seed0", "toy-fail/seed0"]            # shared: computed once for both
    models = {"toy_entries.toy_prep": lambda st, cfg, dev: StageCost([CostPart("steps", 10, 0.5)]),
              "toy_entries.toy_probe": lambda st, cfg, dev: StageCost([CostPart("a", 3, 0.1), CostPart("b", 2, 1.0)])}
    proj = project(stages, "cpu", models)
    assert proj.total_seconds == pytest.approx(2 * 5.0 + 2 * 2.3)
    assert proj.unpriced == ["toy_entries.toy_fail"]
    assert proj.by_stage()["toy_prep"] == {"count": 2, "seconds": pytest.approx(10.0)}


def test_measured_seconds_of_a_run_set_against_its_projection(tmp_path, tiny_dataset, capsys):
    """After `bench run`, `--measured` reads each planned stage's _stage.json seconds from the same
    cache: the failed stage is not cached, the shared toy_prep counts once, the ratio is measured/projected."""
    import json

    registry.load_entries(["toy_entries"])
    data = [f"data.seg={tiny_dataset}", f"data.cls={tiny_dataset}"]
    Runner(tmp_path, profile="smoke", sets=data, device="cpu", progress=False).run(["toy", "toy-fail"], [0])
    stages = plan_suite(["toy", "toy-fail"], [0], "smoke", "cpu", sets=data, results=str(tmp_path))
    models = {"toy_entries.toy_prep": lambda st, cfg, dev: StageCost([CostPart("steps", 4, 0.5)]),
              "toy_entries.toy_probe": lambda st, cfg, dev: StageCost([CostPart("steps", 1, 3.0)]),
              "toy_entries.toy_fail": lambda st, cfg, dev: StageCost([CostPart("steps", 1, 7.0)])}
    proj = project(stages, "cpu", models)
    cache = tmp_path / "cache"
    recorded = {s.name: json.loads((cache / s.name / s.key / "_stage.json").read_text())["seconds"]
                for s in stages if (cache / s.name / s.key / "_stage.json").is_file()}
    assert sorted(recorded) == ["toy_prep", "toy_probe"]                # toy_fail raised: nothing cached
    for s in stages:                                                   # the marker says a real duration
        if s.name in recorded:
            recorded[s.name] = 2.5 if s.name == "toy_prep" else 1.5
            marker = cache / s.name / s.key / "_stage.json"
            marker.write_text(json.dumps({**json.loads(marker.read_text()), "seconds": recorded[s.name]}))
    cmp = compare_measured(proj, cache)
    assert cmp["toy_prep"] == {"count": 1, "found": 1, "projected": 2.0, "measured": 2.5, "ratio": 1.25}
    assert cmp["toy_probe"] == {"count": 1, "found": 1, "projected": 3.0, "measured": 1.5, "ratio": 0.5}
    assert cmp["toy_fail"]["found"] == 0 and cmp["toy_fail"]["ratio"] != cmp["toy_fail"]["ratio"]
    assert list(cmp)[-1] == "total" and cmp["total"] == {"count": 3, "found": 2, "projected": 5.0, "measured": 4.0,
                                                          "ratio": 0.8}
    assert compare_measured(proj, tmp_path / "elsewhere")["total"]["found"] == 0
    print_comparison(cmp, cache)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["toy_probe", "1/1", "0:00:03", "0:00:02", "0.50"] for line in lines)
    assert any(line.split() == ["total", "2/3", "0:00:05", "0:00:04", "0.80"] for line in lines)


def test_cli_measured_finds_a_default_bench_run(capsys, tmp_path, tiny_dataset):
    """`bench run` and `bench perf suite --measured`, both with their default --device (auto: run.device
    keys the cache), plan the same stage keys."""
    common = ["--entry", "toy", "--plugin", "toy_entries", "--seeds", "0", "--results", str(tmp_path),
              "--set", f"data.seg={tiny_dataset}", "--set", f"data.cls={tiny_dataset}"]
    assert main(["run", *common, "--no-mlflow"]) == 0
    capsys.readouterr()
    assert main(["perf", "suite", *common, "--profile", "smoke", "--measured", "--repeats", "1", "--warmup", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[lines.index(next(x for x in lines if x.startswith("measured:"))):]
            if line.split()[:1] in (["toy_prep"], ["toy_probe"], ["total"])] == [
        ["toy_prep", "1/1"], ["toy_probe", "1/1"], ["total", "2/2"]]


def test_cli_measured_without_a_run_says_what_to_do(capsys, tmp_path):
    args = ["perf", "suite", "--entry", "clinical", "--profile", "smoke", "--device", "cpu", "--seeds", "0",
            "--results", str(tmp_path), "--repeats", "1", "--warmup", "0", "--measured"]
    assert main(args) == 0
    assert "none of these stages is cached there: run `bench run`" in capsys.readouterr().out


class _FixedMeasurer(Measurer):
    """Every measurement is 1 ms (per image: 2 ms): the projection is then units × constants."""

    def cached(self, key, fn):
        return 1e-3

    def per_image_s(self, key, preset, profile, work, threads=1):
        return 2e-3


def test_paper_suite_plan_without_data_and_units_from_the_config(tmp_path):
    registry.load_entries()
    names = registry.resolve_suite("paper")
    stages = plan_suite(names, [0, 1], "smoke", "cpu", results=str(tmp_path))
    counts = {}
    for s in stages:
        counts[s.name] = counts.get(s.name, 0) + 1
    # per seed: 2 segmentations (MoSE, single) and their evaluations, 2 extracts, 1 extract_raw and their 3
    # contact sheets, 16 pretrainings and probes (4 methods x full / single-decoder / convcrop / noseg),
    # 7 one-off stages; clinical is unseeded
    assert counts == {"segment": 4, "segment_eval": 4, "extract": 4, "extract_raw": 2, "patch_sheet": 6,
                      "pretrain": 32, "probe": 32, "supervised": 2, "deepdxa": 2, "jang": 2, "landmarks": 2,
                      "hsieh": 2, "wang": 2, "radiogrammetry": 2, "clinical": 1}
    assert not (tmp_path / "cache" / "phantom").exists()              # planning generated nothing
    proj = project(stages, "cpu", builtin_cost_models("cpu", measurer=_FixedMeasurer("cpu")))
    assert proj.unpriced == []
    rows = {(r["stage"], r["entry"]): dict((n, u) for n, u, _ in r["parts"]) for r in proj.rows if r["seed"] == 0}
    # smoke phantoms: public 40 images (32/4/4), clinical 60 (48/6/6)
    seg = rows[("segment", "convcrop-simclr")]                         # the MoSE model's first user
    assert seg == {"train steps": 60 * 16, "val images (forward)": 60 * 4, "val GED": 60 * 4,
                   "predict seg images": 40, "predict cls images": 60}
    assert rows[("segment_eval", "convcrop-simclr")] == {"predict eval images (+ mirrored)": 8,   # val and test
                                                         "eval images (forward)": 8, "eval GED": 8}
    assert rows[("pretrain", "simclr")] == {"train steps": 2 * 6}      # 280 patches // 32 = 8, capped at 6
    assert rows[("supervised", "supervised")]["train steps"] == 3 * 21  # 48 x 7 = 336 patches / 16
    assert rows[("extract", "convcrop-simclr")] == {"seg images": 40, "cls images": 60}
    assert proj.by_stage()["extract"]["seconds"] == pytest.approx(4 * 100 * 2e-3)


def test_cross_validated_plan_shares_what_reads_no_cls_split(tmp_path):
    """`--folds 5`: segmentation, extraction, landmarks and SimCLR pretraining once; probes, SupCon
    pretraining and the supervised baselines per fold, on the fold's (smaller) train split."""
    registry.load_entries()
    names = ["simclr", "supcon", "hsieh", "clinical"]
    stages = plan_suite(names, [0], "smoke", "cpu", results=str(tmp_path), folds=5)
    counts = {}
    for s in stages:
        counts[s.name] = counts.get(s.name, 0) + 1
    assert counts == {"segment": 1, "segment_eval": 1, "extract": 1, "patch_sheet": 1, "pretrain": 1 + 5,
                      "probe": 2 * 5, "landmarks": 1, "hsieh": 5, "clinical": 5}
    proj = project(stages, "cpu", builtin_cost_models("cpu", measurer=_FixedMeasurer("cpu")))
    hsieh = [dict((n, u) for n, u, _ in r["parts"]) for r in proj.rows if r["stage"] == "hsieh"]
    plain = project(plan_suite(["hsieh"], [0], "smoke", "cpu", results=str(tmp_path)), "cpu",
                    builtin_cost_models("cpu", measurer=_FixedMeasurer("cpu")))
    single = next(dict((n, u) for n, u, _ in r["parts"]) for r in plain.rows if r["stage"] == "hsieh")
    # smoke clinical: 60 images; a fold trains on 60 x 4/5 x 8/9 = 43 (val 5) instead of the split's 48 (val 6);
    # 7 ROIs per image, batch 16, 3 epochs
    assert single["train steps"] == 3 * 21 and single["val forward"] == 3 * 6 * 7
    assert all(h["train steps"] == 3 * 19 and h["val forward"] == 3 * 5 * 7 for h in hsieh) and len(hsieh) == 5


def test_planning_runner_keys_equal_the_runners_when_data_exist(tmp_path, tiny_dataset):
    registry.load_entries(["toy_entries"])
    kw = dict(profile="smoke", data_seg=str(tiny_dataset), data_cls=str(tiny_dataset), device="cpu", progress=False)
    a = [s.key for p in PlanningRunner(tmp_path, **kw).plan(["toy"], [0], generate=False) for s in p.stages]
    b = [s.key for p in Runner(tmp_path, **kw).plan(["toy"], [0], generate=False) for s in p.stages]
    assert a == b and None not in a


def test_cli_user_errors_exit_2(capsys, tmp_path):
    assert main(["perf", "ssl", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    assert main(["perf", "ssl", "--patches", str(tmp_path / "nowhere"), "--device", "cpu"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["perf", "suite", "--suite", "tabel3", "--device", "cpu", "--results", str(tmp_path)]) == 2
    assert "unknown suite" in capsys.readouterr().err
    assert main(["perf", "suite", "--entry", "simclrr", "--device", "cpu", "--results", str(tmp_path)]) == 2
    assert "did you mean simclr" in capsys.readouterr().err
    assert main(["perf", "ssl", "--set", "ssl.compile=fast", "--device", "cpu"]) == 2
    assert "ssl.compile" in capsys.readouterr().err
    assert main(["perf", "seg", "--set", "segmentation.compile=fast", "--device", "cpu", "--profile", "smoke"]) == 2
    assert "segmentation.compile" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["perf", "suite", "--device", "cuda", "--results", str(tmp_path)]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_cli_projects_chosen_entries_with_sets(capsys, tmp_path):
    """`--entry` projects those entries; `--set` reaches the plan (truth masks: no segmentation)."""
    args = ["perf", "suite", "--entry", "clinical", "radiogrammetry", "--profile", "smoke", "--device", "cpu",
            "--seeds", "0", "--results", str(tmp_path), "--repeats", "1", "--warmup", "0"]
    assert main(args + ["--set", "radiogrammetry.source=truth"]) == 0
    out = capsys.readouterr().out
    assert "`bench run --entry clinical radiogrammetry --profile smoke --seeds 0`" in out
    assert "2 distinct stage computations" in out and "segment" not in out


def test_threaded_per_image_time_is_a_round_over_its_threads():
    """per_image_s with threads=T times T images at once and divides by T (what threaded loading costs)."""
    import time as _time

    m = Measurer("cpu", steps=2, warmup=0)
    calls = []

    def work(image, labels, spacing):
        calls.append(1)
        _time.sleep(0.05)                      # sleeps overlap in threads, as GIL-free decoding does
    one = m.per_image_s("k", "public", "smoke", work)
    four = m.per_image_s("k", "public", "smoke", work, threads=4)
    assert one == pytest.approx(0.05, rel=0.5) and four == pytest.approx(0.05 / 4, rel=0.6)
    assert len(calls) == 2 + 2 * 4


@pytest.mark.parametrize("model, n", [("mose", 4 * 1), ("single", 1)])
def test_segment_projection_times_the_validation_ged_of_its_samples(model, n):
    """The segment cost prices each validation image's GED: K x S samples (smoke: S = 1) or one map
    against the phantom's 3 annotators on the smoke canvas (128 rows), batched as the loop does."""
    from methods.perf_suite import segment_cost

    registry.load_entries()                  # registers the config sections

    class Recording(Measurer):
        def __init__(self):
            super().__init__("cpu", steps=1, warmup=0)
            self.keys, self.ged = [], None

        def cached(self, key, fn):
            self.keys.append(key)
            if key[0] == "seg-ged":
                self.ged = fn()
                return self.ged
            if key[0] == "seg-val-forward":
                self.forward = fn()
                return self.forward
            return 1e-3

    m = Recording()
    # eval_samples (the final evaluation's standard form) does not change the loop's compact validation
    cost = segment_cost(m, None, resolve("smoke", sets={"segmentation.model": model, "segmentation.eval_samples": 5}))
    ged_keys = [k for k in m.keys if k[0] == "seg-ged"]
    assert len(ged_keys) == 1 and ged_keys[0][1:3] == (n, 3) and ged_keys[0][3] == 128 and ged_keys[0][5] == 8
    parts = {p.name: p for p in cost.parts}
    assert parts["val GED"].seconds == m.ged > 0 and parts["val GED"].units == 60 * 4     # 60 epochs x 4 images
    # the validation forward is the loop's (on the canvas), not a prediction upsampled to native size
    assert [k[2] for k in m.keys if k[0] == "seg-val-forward"] == [(128, 80)]
    assert parts["val images (forward)"].seconds == m.forward > 0 and parts["val images (forward)"].units == 60 * 4
    assert parts["predict seg images"].seconds == 1e-3


@pytest.mark.parametrize("mode,device,compiled", [("off", "cpu", False), ("default", "cpu", True),
                                                   ("auto", "cpu", False), ("auto", "cuda", True)])
def test_segment_projection_prices_the_compilation_once(monkeypatch, mode, device, compiled):
    """With segmentation.compile the projection adds one "compile" part: the first (warm-up) step's
    time less a timed step; eager training has none. ``auto`` compiles the MoSE U-Net on CUDA only."""
    import methods.segmentation.perf as seg_perf
    from methods.perf_suite import segment_cost

    import methods.compiling as compiling

    registry.load_entries()
    monkeypatch.setattr(compiling, "triton_available", lambda: True)
    monkeypatch.setattr(seg_perf, "benchmark_seg_step",
                        lambda cfg, device, **kw: {"step_ms": 100.0, "first_step_s": 2.5 if compiled else 0.1})

    class StepsOnly(Measurer):
        def cached(self, key, fn):
            return fn() if key[0] == "seg-step" else 1e-3

    cost = segment_cost(StepsOnly(device, steps=1, warmup=0), None,
                        resolve("smoke", sets={"segmentation.compile": mode}))
    parts = {p.name: p for p in cost.parts}
    assert parts["train steps"].seconds == pytest.approx(0.1)
    if not compiled:
        assert "compile" not in parts
    else:
        assert parts["compile"].units == 1 and parts["compile"].seconds == pytest.approx(2.4)
