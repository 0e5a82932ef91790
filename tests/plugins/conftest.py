"""Fixtures of the archive tests: a fake reactor whose worker threads report back, a data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plugins.test_archive_support import ThreadedClock


@pytest.fixture
def clock() -> ThreadedClock:
    return ThreadedClock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data"
