"""`bench perf seg` instrumentation: the OT solve is timed inside the real training step."""
from __future__ import annotations

from methods.segmentation import ot
from methods.segmentation.config import SegmentationConfig
from methods.segmentation.perf import benchmark_seg_step, timed_solver


def _tiny(**kw) -> SegmentationConfig:
    return SegmentationConfig(base_width=4, max_width=8, levels=3, convs=1, samples=2, working_size=32, **kw)


def test_timed_solver_records_each_call_and_restores():
    original = ot.relaxed_couplings
    times: list[float] = []
    with timed_solver(times):
        assert ot.relaxed_couplings is not original
        plan = ot.relaxed_couplings([[[0.2, 0.9], [0.7, 0.1]]], [0.5, 0.5], 1.0)
    assert ot.relaxed_couplings is original and len(times) == 1 and times[0] > 0
    assert abs(plan[0][0, 0] - 0.5) < 1e-12 and abs(plan[0][1, 1] - 0.5) < 1e-12


def test_mose_step_reports_the_solve_of_every_step_and_single_has_none():
    mose = benchmark_seg_step(_tiny(), "cpu", batch=4, steps=2, warmup=1)
    assert mose["canvas"] == [32, 24] and mose["samples_per_image"] == 8
    assert 0 < mose["ot_solve_ms"] < mose["step_ms"] and 0 < mose["ot_share"] < 1
    assert abs(mose["images_per_s"] - 4 / (mose["step_ms"] / 1e3)) < 1e-6
    single = benchmark_seg_step(_tiny(model="single"), "cpu", batch=4, steps=2, warmup=1)
    assert single["ot_solve_ms"] == 0 and single["ot_share"] == 0


def test_peak_memory_is_reported():
    import sys

    import pytest
    import torch

    from methods.segmentation.perf import peak_memory_bytes

    if not sys.platform.startswith("linux"):
        pytest.skip("the CPU peak is read from /proc")
    freed = torch.ones(2**28)                 # 1 GiB touched and freed: glibc keeps it (bench.allocator), and the
    del freed                                 # measurement hands it back first, or the step would reuse it unseen
    held = []
    base = peak_memory_bytes(torch.device("cpu"), lambda: None)
    grown = peak_memory_bytes(torch.device("cpu"), lambda: held.append(torch.ones(64, 2**20)))   # 256 MiB, touched
    assert base > 0 and grown - base > 200 * 2**20
    r = benchmark_seg_step(_tiny(micro_batch=2), "cpu", batch=4, steps=1, warmup=0)
    assert r["micro_batch"] == 2 and r["peak_memory_bytes"] > 0
