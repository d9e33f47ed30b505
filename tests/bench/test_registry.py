"""Entries, suites and discovery (bench.registry)."""
from __future__ import annotations

import pytest

from bench import registry
from bench.errors import BenchError
from bench.registry import Entry, Stage


def _noop(ctx):
    return None


def test_entry_validation():
    with pytest.raises(ValueError, match="no earlier stage"):
        Entry("x", "d", stages=(Stage("b", _noop, inputs=("a",)),))
    with pytest.raises(ValueError, match="kind"):
        Entry("x", "d", stages=(Stage("a", _noop),), kind="weird")


def test_suites_select_by_table_and_pattern():
    registry.load_entries(["toy_entries"])
    try:
        registry.register(Entry("toyfull", "parent", stages=(Stage("a", _noop),), kind="full", table="table3"))
        registry.register(Entry("toyabl", "ablation", stages=(Stage("a", _noop),), kind="ablation",
                                table="table4", parent="toyfull"))
        assert set(registry.resolve_suite("table4")) >= {"toyabl", "toyfull"}  # parent joins for Δ
        assert "toyabl" not in registry.resolve_suite("table3")
        assert "toy" not in registry.resolve_suite("paper")  # kind=example stays out of suites
        assert registry.select(["toy*"]) == ["toy", "toy-fail", "toy-optional", "toy-reported", "toyabl", "toyfull"]
        with pytest.raises(BenchError, match="did you mean toyfull"):
            registry.get("toyful")
        with pytest.raises(BenchError, match="unknown suite"):
            registry.resolve_suite("tabel3")
    finally:
        registry.unregister("toyfull")
        registry.unregister("toyabl")


def test_bad_plugin_is_a_bench_error():
    with pytest.raises(BenchError, match="cannot import plugin"):
        registry.load_entries(["no_such_module_xyz"])


def test_builtin_entries_are_discovered():
    registry.load_entries()
    assert "clinical" in registry.entries()
    assert registry.entries()["clinical"].table == "table8"


def test_stages_to_run_drop_what_no_later_stage_reads():
    from types import SimpleNamespace

    seg = Stage("seg", _noop)
    cut = Stage("cut", _noop, inputs=("seg",), needs=lambda c: ("seg",) if c.source == "predicted" else ())
    side = Stage("side", _noop)                       # nobody's input (run for its own outputs): always runs
    train = Stage("train", _noop, inputs=("cut",))
    last = Stage("probe", _noop, inputs=("cut", "train"))
    entry = Entry("chain", "d", stages=(seg, cut, side, train, last), kind="example")
    predicted = registry.stages_to_run(entry, SimpleNamespace(source="predicted"))
    assert [(s.name, reads) for s, reads in predicted] == [("seg", ()), ("cut", ("seg",)), ("side", ()),
                                                           ("train", ("cut",)), ("probe", ("cut", "train"))]
    truth = registry.stages_to_run(entry, SimpleNamespace(source="truth"))
    assert [(s.name, reads) for s, reads in truth] == [("cut", ()), ("side", ()), ("train", ("cut",)),
                                                       ("probe", ("cut", "train"))]
    wrong = Stage("cut", _noop, inputs=("seg",), needs=lambda c: ("segment",))
    with pytest.raises(ValueError, match="not among its inputs"):
        registry.stages_to_run(Entry("bad", "d", stages=(seg, wrong), kind="example"), SimpleNamespace())


def test_whole_image_probe_is_keyed_by_the_patch_size_alone():
    """The `noseg-*` probe reads patches.patch_size only: the contact sheet's figure_images must not
    rerun it (the companion rule), a patch size must."""
    from bench.config import resolve
    from bench.stage import stage_key
    from methods.pipeline import PROBE_WHOLE

    def key(*sets: str) -> str:
        config = resolve("smoke", sets=list(sets))
        return stage_key(PROBE_WHOLE, config, 0, {"pretrain": "p"}, {"cls": "c"}, "cpu")[0]

    base = key()
    assert key("patches.figure_images=1") == base and key("patches.margin=0.3") == base
    assert key("patches.patch_size=48") != base
