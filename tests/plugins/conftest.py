"""Fixtures of the plugin tests: a fake reactor whose worker threads report back, a data
directory (the archive's), the log failures a test made (the services')."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.logger import globalLogPublisher

from tests.plugins.test_archive_support import ThreadedClock


@pytest.fixture
def clock() -> ThreadedClock:
    return ThreadedClock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def logged_failures():
    """Twisted log events that carry a traceback (a handler that raised)."""
    events: list = []

    def observe(event):
        if "log_failure" in event:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)
