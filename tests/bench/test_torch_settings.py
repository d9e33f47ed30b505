"""run.deterministic and the process-wide torch settings (bench.torch_settings): the modes per device,
set both ways by every run, and applied by `bench perf` as by `bench run`."""
from __future__ import annotations

import pytest
import torch

from bench import registry
from bench.cli import main
from bench.config import resolve
from bench.errors import BenchError
from bench.runner import Runner
from bench.torch_settings import apply_run_settings, deterministic_for


@pytest.fixture(autouse=True)
def restore_torch_settings():
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark, torch.get_num_threads())
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    torch.backends.cudnn.benchmark = before[2]
    torch.set_num_threads(before[3])


def _state() -> tuple[bool, bool]:
    return torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark


@pytest.mark.parametrize("mode, cpu, cuda", [("auto", True, False), ("true", True, True), ("false", False, False)])
def test_modes_per_device(mode, cpu, cuda):
    assert deterministic_for(mode, "cpu") is cpu
    assert deterministic_for(mode, torch.device("cuda", 0)) is cuda


@pytest.mark.parametrize("mode, device, expected", [
    ("auto", "cpu", (True, False)),
    ("auto", "cuda", (False, True)),          # cuDNN autotuned, no deterministic kernels (no GPU is touched)
    ("true", "cuda", (True, False)),
    ("false", "cpu", (False, False)),        # cudnn.benchmark only matters on CUDA
    ("false", "cuda", (False, True)),
])
def test_apply_sets_both_flags_both_ways(mode, device, expected):
    for start in (True, False):              # whatever the process had before
        torch.use_deterministic_algorithms(start)
        torch.backends.cudnn.benchmark = not start
        run = resolve("smoke", sets={"run.deterministic": mode, "run.num_threads": 1}).run
        assert apply_run_settings(run, device) is expected[0]
        assert _state() == expected and torch.get_num_threads() == 1
        if expected[0]:
            assert torch.is_deterministic_algorithms_warn_only_enabled()   # ops without a kernel only warn


def test_bad_mode_is_refused_at_resolve():
    with pytest.raises(BenchError, match="run.deterministic = 'yes' .* must be one of auto, true, false"):
        resolve("smoke", sets={"run.deterministic": "yes"})
    # YAML reads `deterministic: true` as a boolean (and older configs held one): the choice it spells
    assert resolve("smoke", sets={"run.deterministic": True}).run.deterministic == "true"
    assert resolve("smoke", sets={"run.deterministic": False}).run.deterministic == "false"
    with pytest.raises(BenchError, match="use one of auto, true, false"):
        deterministic_for("sometimes", "cpu")


def test_each_run_sets_its_own_mode(tmp_path, tiny_dataset):
    """Two runs in one process: the second does not inherit the first's mode."""
    registry.load_entries(["toy_entries"])
    data = {"data_seg": str(tiny_dataset), "data_cls": str(tiny_dataset)}
    for i, (mode, expected) in enumerate((("false", False), ("auto", True), ("false", False))):
        runner = Runner(tmp_path / str(i), profile="smoke", sets=[f"run.deterministic={mode}"], device="cpu",
                        progress=False, **data)
        assert [o.status for o in runner.run(["toy"], [0])] == ["done"]
        assert torch.are_deterministic_algorithms_enabled() is expected


def test_perf_applies_and_prints_the_runs_settings(capsys, tmp_path):
    torch.use_deterministic_algorithms(True)
    args = ["perf", "suite", "--entry", "clinical", "--profile", "smoke", "--device", "cpu", "--seeds", "0",
            "--results", str(tmp_path), "--repeats", "1", "--warmup", "0"]
    assert main(args + ["--set", "run.deterministic=false"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == ("torch settings (run.deterministic=false): deterministic "
                                                       "algorithms off, cuDNN autotuned on CUDA")
    assert not torch.are_deterministic_algorithms_enabled()
    assert main(args) == 0
    assert "(run.deterministic=auto): deterministic algorithms on" in capsys.readouterr().out
    assert torch.are_deterministic_algorithms_enabled()
    assert main(args + ["--set", "run.deterministic=sometimes"]) == 2
    assert "run.deterministic" in capsys.readouterr().err
