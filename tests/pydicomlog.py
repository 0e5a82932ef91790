"""What a test sees of pydicom's messages in the node's log (``dimsekit.libraries_log``)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from twisted.logger import formatEvent, globalLogPublisher

from dimsekit import libraries_log


@contextmanager
def pydicom_log_lines() -> Iterator[Callable[[], list[str]]]:
    """A fresh handler on the "pydicom" logger while the block runs (one a node of this
    process installed is set aside: its memory of what it said is not the test's), and a
    function giving the node-log lines said so far.  pydicom's warnings are ignored."""
    logged: list[dict] = []
    logger = logging.getLogger("pydicom")
    handlers, propagate = list(logger.handlers), logger.propagate
    logger.handlers[:] = [h for h in handlers if not isinstance(h, libraries_log.ToNodeLog)]
    logger.addHandler(libraries_log._PydicomToNodeLog(libraries_log._pydicom_log, "pydicom"))
    globalLogPublisher.addObserver(logged.append)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield lambda: [formatEvent(e) for e in logged if e.get("log_namespace") == "dimsekit.pydicom"]
    finally:
        globalLogPublisher.removeObserver(logged.append)
        logger.handlers[:] = handlers
        logger.propagate = propagate
