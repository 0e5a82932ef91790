"""Shared test configuration."""

import logging

import pytest
from hypothesis import HealthCheck, settings

from dimsekit import libraries_log
from tests.pydicomlog import pydicom_log_lines

settings.register_profile("ci", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _pydicom_logger_as_it_was():
    """A node made in this process (``tap.makeService``) routes pydicom's logger into its log
    (``route_pydicom``): not past the test that made it.  (pytest restores the warnings filters.)"""
    logger = logging.getLogger("pydicom")
    handlers, propagate = list(logger.handlers), logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.propagate = propagate


@pytest.fixture
def pydicom_said(monkeypatch):
    """The node-log lines of pydicom's messages (:func:`tests.pydicomlog.pydicom_log_lines`),
    with ``.clock``, a list whose item is the monotonic time the test moves."""
    clock = [1000.0]
    monkeypatch.setattr(libraries_log.time, "monotonic", lambda: clock[0])
    with pydicom_log_lines() as lines:
        lines.clock = clock  # type: ignore[attr-defined]
        yield lines
