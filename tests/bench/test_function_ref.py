"""Stage functions named "module:function" (bench.function_ref): imported when called, keyed as the function."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import resolve
from bench.errors import BenchError
from bench.function_ref import FunctionRef
from bench.registry import Stage
from bench.stage import stage_key

ROOT = Path(__file__).resolve().parents[2]


def test_a_reference_carries_the_functions_names_and_calls_it():
    from methods.stages import probe_stage

    ref = FunctionRef("methods.stages:probe_stage")
    assert (ref.__module__, ref.__qualname__, ref.__name__) == (probe_stage.__module__, probe_stage.__qualname__,
                                                                 probe_stage.__name__)
    assert ref.resolve() is probe_stage
    nested = FunctionRef("os.path:join")
    assert nested("a", "b") == os.path.join("a", "b")
    assert FunctionRef("os.path:join") == nested and hash(FunctionRef("os.path:join")) == hash(nested)
    assert FunctionRef("os.path:split") != nested
    again = pickle.loads(pickle.dumps(nested))
    assert again == nested and again("c", "d") == os.path.join("c", "d")


@pytest.mark.parametrize("ref", ["methods.stages.probe_stage", ":probe_stage", "methods.stages:", "a b:c", "m:f-g"])
def test_a_malformed_reference_is_refused_when_declared(ref):
    with pytest.raises(ValueError, match="package.module:function"):
        FunctionRef(ref)


def test_a_reference_to_nothing_fails_when_called_with_what_is_missing():
    with pytest.raises(BenchError, match="module 'os.path' has no 'no_such_function'"):
        FunctionRef("os.path:no_such_function")()
    with pytest.raises(BenchError, match="not callable"):
        FunctionRef("os:sep")()
    with pytest.raises(BenchError, match="there is no module 'no_such_module_xyz'; it must be importable"):
        FunctionRef("no_such_module_xyz.sub:f")()
    with pytest.raises(BenchError, match="there is no module 'os.no_such_sub'"):
        FunctionRef("os.no_such_sub:f")()


def test_a_module_missing_a_dependency_says_so_itself(tmp_path, monkeypatch):
    (tmp_path / "needs_a_missing_dependency.py").write_text("import no_such_dependency_xyz\ndef f():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        FunctionRef("needs_a_missing_dependency:f")()


def test_a_named_stage_function_keys_the_cache_as_the_function_itself():
    from methods.stages import probe_stage

    config = resolve("smoke")
    named = Stage("probe", "methods.stages:probe_stage", sections=("probe", "run"), datasets=("cls",))
    direct = Stage("probe", probe_stage, sections=("probe", "run"), datasets=("cls",))
    assert isinstance(named.fn, FunctionRef) and named.function is probe_stage and direct.function is probe_stage
    args = (config, 0, {}, {"cls": "fingerprint"}, "cpu")
    assert stage_key(named, *args) == stage_key(direct, *args)


def test_the_built_in_registry_loads_without_torch_and_reads_every_section_on_demand():
    """`bench list` and a misspelt entry need no torch; resolving a config imports the declared sections."""
    code = ("import sys\n"
            "from bench import config, registry\n"
            "registry.load_entries()\n"
            "heavy = sorted(m for m in ('torch', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules)\n"
            "assert not heavy, heavy\n"
            "assert len(registry.entries()) == 23, sorted(registry.entries())\n"
            "resolved = config.resolve('smoke', sets=['segmentation.experts=3', 'vgg.mlp_ratio=0.5'])\n"
            "assert resolved.segmentation.experts == 3\n"
            "print(sorted(config.sections()))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OSTEOBENCH_PLUGINS": ""}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(["augment", "checkpoint", "data", "heads", "landmarks", "multicrop", "patches",
                                       "probe", "radiogrammetry", "roi", "run", "segmentation", "ssl", "supervised",
                                       "vgg", "wang"])


def test_declared_section_modules_load_once_on_first_read_even_from_threads(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from bench import config

    (tmp_path / "lazy_section_ok.py").write_text(
        "from dataclasses import dataclass\n"
        "from bench.config import register_section\n"
        "LOADS = []\n"
        "LOADS.append(1)\n"
        "@dataclass\n"
        "class LazyConfig:\n"
        "    width: int = 3\n"
        "register_section('lazysec', LazyConfig, {'smoke': {'width': 5}})\n")
    (tmp_path / "lazy_section_broken.py").write_text("raise RuntimeError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(config, "_SECTIONS", dict(config._SECTIONS))
    monkeypatch.setattr(config, "_SECTION_MODULES", [])
    config.declare_section_modules("lazy_section_broken")
    with pytest.raises(RuntimeError, match="broken on purpose"):
        config.sections()
    assert config._SECTION_MODULES == ["lazy_section_broken"]       # still declared: the next read says it again
    config._SECTION_MODULES.clear()
    config.declare_section_modules("lazy_section_ok", "lazy_section_ok")
    assert "lazy_section_ok" not in sys.modules and "lazysec" not in config._SECTIONS
    with ThreadPoolExecutor(8) as pool:
        widths = list(pool.map(lambda _: config.resolve("smoke").lazysec.width, range(16)))
    assert widths == [5] * 16 and sys.modules["lazy_section_ok"].LOADS == [1]
    assert "lazysec.width" in config.valid_keys()
    monkeypatch.delitem(sys.modules, "lazy_section_ok")


def test_a_misnamed_stage_function_stops_the_run_before_any_stage(tmp_path, tiny_dataset):
    from bench import registry
    from bench.registry import Entry
    from bench.runner import Runner

    first = Stage("prepare", "os.path:join", datasets=("cls",))
    registry.register(Entry("misnamed-fn", "a typo in its last stage's function", kind="example",
                            stages=(first, Stage("fit", "os.path:jion", inputs=("prepare",), datasets=("cls",)))))
    try:
        runner = Runner(tmp_path / "results", suite="t", profile="smoke", data_seg=str(tiny_dataset),
                        data_cls=str(tiny_dataset), device="cpu", progress=False)
        with pytest.raises(BenchError, match="stage function 'os.path:jion': module 'os.path' has no 'jion'"):
            runner.validate(["misnamed-fn"])
        assert not (tmp_path / "results").exists()
    finally:
        registry.unregister("misnamed-fn")


def test_a_plugin_declaring_a_malformed_reference_is_a_bench_error(tmp_path, monkeypatch):
    from bench import registry

    (tmp_path / "plugin_bad_reference.py").write_text(
        "from bench.registry import Entry, Stage, register\n"
        "register(Entry('bad-reference', 'x', stages=(Stage('fit', 'plugin_bad_reference.fit'),)))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BenchError, match="plugin module 'plugin_bad_reference': function reference "
                                         "'plugin_bad_reference.fit': write it as 'package.module:function'"):
        registry.load_entries(["plugin_bad_reference"])
    assert "bad-reference" not in registry.entries()
