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
        assert registry.select(["toy*"]) == ["toy", "toy-fail", "toyabl", "toyfull"]
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
