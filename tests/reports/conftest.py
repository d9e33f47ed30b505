"""Fixtures of the report tests; the toy suite itself is in suite_data.py (imported by name)."""
from __future__ import annotations

import pytest

from bench import registry
from suite_data import ENTRIES


@pytest.fixture
def registered():
    """Register the rt_ entries for one test, then remove them."""
    registry.load_entries()  # the real entries first, so that ours are never overwritten afterwards
    for e in ENTRIES:
        registry.register(e)
    yield {e.name: e for e in ENTRIES}
    for e in ENTRIES:
        registry.unregister(e.name)
