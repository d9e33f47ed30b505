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
