"""Shared fixtures: tiny hand-made datasets that do not need the phantom generator."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The test files run in parallel worker processes (Makefile, pytest-xdist) on few cores: OpenMP's
# idle threads must not spin on a core another worker needs (README, set-up). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).parent / "bench"))  # toy_entries plugin module
sys.path.insert(0, str(Path(__file__).parent))  # tiny_data

from tiny_data import write_tiny_dataset  # noqa: E402

from bench.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()     # the tests run what the CLI runs, with the CLI's allocator settings


def _one_torch_thread() -> None:
    """Every test runs on one torch thread: the test files run in one worker process per core, and
    one count for the whole session keeps each test's numbers independent of which tests ran
    before it in its worker."""
    import torch

    torch.set_num_threads(1)


_one_torch_thread()


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (the Makefile's): one worker per CPU this process may run on (its affinity mask, not
    the host's count; xdist's own guess counts physical cores when psutil is installed, half the CPUs
    on a machine with two hardware threads per core, while every worker here is single-threaded)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return write_tiny_dataset(tmp_path / "tiny", n_subjects=60)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """A test that runs the CLI with ``run.num_threads=1`` (bench.torch_settings) leaves torch's thread
    count as it found it: later tests' numbers must not depend on which tests ran before them."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(params=["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def compile_backend(request, monkeypatch) -> str:
    """The backend the code's ``torch.compile`` calls get (``nn.Module.compile``, methods.compiling).

    ``aot_eager`` captures the graphs as inductor would (dynamo, functionalisation, AOT autograd's
    forward and backward graphs), so a compiled step that differs from the eager one through the
    capture fails with it too, and runs them with eager kernels. ``inductor`` (`make test-slow`) adds
    its C++ code generation, about a minute of g++ for each graph on the 2-core test machine; the
    training runs compile on CUDA, where the GPU checks (scripts/gpu-checks.sh) exercise it.
    """
    import torch

    original = torch.nn.Module.compile

    def compile_with_backend(self, *args, **kwargs):
        kwargs.setdefault("backend", request.param)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with_backend)
    return request.param
