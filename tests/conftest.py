"""Shared fixtures: tiny hand-made datasets that do not need the phantom generator."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "bench"))  # toy_entries plugin module
sys.path.insert(0, str(Path(__file__).parent))  # tiny_data

from tiny_data import write_tiny_dataset  # noqa: E402

from bench.allocator import keep_freed_memory  # noqa: E402

keep_freed_memory()     # the tests run what the CLI runs, with the CLI's allocator settings


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
