"""pydicom's (and other libraries') stdlib log records in the node's log: what was being
read when pydicom complained, each message at most once a minute per peer."""

from __future__ import annotations

import logging
import warnings

from pydicom.uid import UID
from twisted.internet.defer import Deferred
from twisted.logger import formatEvent, globalLogPublisher

from dimsekit import libraries_log
from dimsekit.libraries_log import about, route_pydicom


def test_a_message_says_what_was_being_read_and_not_where_pydicom_points(pydicom_said):
    with about("MODALITY1", "reading C-FIND message 7 from MODALITY1"):
        UID("1.2.abc")
    UID("1.2.def")
    assert pydicom_said() == [
        "pydicom, reading C-FIND message 7 from MODALITY1: Invalid value for VR UI: '1.2.abc'.",
        "pydicom: Invalid value for VR UI: '1.2.def'.",  # nothing said what: pydicom's words alone
    ]


def test_the_text_of_what_is_read_is_made_only_when_pydicom_speaks(pydicom_said):
    made = []

    def what() -> str:
        made.append(1)
        return "storing 1.2.3 from CT1"

    with about("CT1", what):
        UID("1.2.3")  # valid: nothing said
    assert made == [] and pydicom_said() == []
    with about("CT1", what):
        UID("1.2.3.x")
    assert made == [1]
    assert pydicom_said() == ["pydicom, storing 1.2.3 from CT1: Invalid value for VR UI: '1.2.3.x'."]


def test_nested_blocks_the_innermost_speaks_and_the_outer_is_back_after(pydicom_said):
    with about("A", "reading N-SET message 1 from A"):
        with about("", "reading the stored mpps instance 1.2.3"):
            UID("1.2.in")
        UID("1.2.out")
    assert pydicom_said() == [
        "pydicom, reading the stored mpps instance 1.2.3: Invalid value for VR UI: '1.2.in'.",
        "pydicom, reading N-SET message 1 from A: Invalid value for VR UI: '1.2.out'.",
    ]


def test_a_coroutine_started_inside_is_about_it_after_its_awaits_and_nothing_else_is(pydicom_said):
    gate: Deferred = Deferred()

    async def handler() -> None:
        await gate
        UID("1.2.later")

    with about("MOD", "reading C-GET message 3 from MOD"):
        done = Deferred.fromCoroutine(handler())
    UID("1.2.meanwhile")  # the reactor doing something else while the handler waits
    gate.callback(None)
    assert done.called
    assert pydicom_said() == [
        "pydicom: Invalid value for VR UI: '1.2.meanwhile'.",
        "pydicom, reading C-GET message 3 from MOD: Invalid value for VR UI: '1.2.later'.",
    ]


def test_the_same_message_from_the_same_peer_is_said_once_a_minute_with_a_count(pydicom_said):
    for n in range(4):
        with about("CT1", f"storing 1.2.{n} from CT1"):
            UID("1.2.bad")
        pydicom_said.clock[0] += 10
    with about("CT2", "storing 1.2.9 from CT2"):
        UID("1.2.bad")  # another peer: said
    pydicom_said.clock[0] += 30  # a minute after CT1's first
    with about("CT1", "storing 1.2.5 from CT1"):
        UID("1.2.bad")
    assert pydicom_said() == [
        "pydicom, storing 1.2.0 from CT1: Invalid value for VR UI: '1.2.bad'.",
        "pydicom, storing 1.2.9 from CT2: Invalid value for VR UI: '1.2.bad'.",
        "pydicom, storing 1.2.5 from CT1: Invalid value for VR UI: '1.2.bad'. (3 more times in the last 60 s)",
    ]


def test_a_peers_control_bytes_are_escaped(pydicom_said):
    with about("X", "reading N-CREATE message 2 from X"):
        UID("1.2.\x1b[31m")
    assert pydicom_said() == ["pydicom, reading N-CREATE message 2 from X: Invalid value for VR UI: '1.2.\\x1b[31m'."]


def test_route_pydicom_says_each_message_once_in_the_node_log_not_as_a_warning():
    logged: list[dict] = []
    logger = logging.getLogger("pydicom")
    before = list(logger.handlers), logger.propagate
    globalLogPublisher.addObserver(logged.append)
    try:
        with warnings.catch_warnings(record=True) as caught:  # (restores the filters route_pydicom adds)
            warnings.simplefilter("always")
            route_pydicom()
            route_pydicom()  # twice (a second node in the process): one handler still
            with about("P", "reading C-FIND message 1 from P"):
                UID("1.2.route")
        assert [w for w in caught if "1.2.route" in str(w.message)] == []
        assert sum(isinstance(h, libraries_log._PydicomToNodeLog) for h in logger.handlers) == 1
        assert logger.propagate is False
    finally:
        globalLogPublisher.removeObserver(logged.append)
        logger.handlers[:] = before[0]
        logger.propagate = before[1]
    lines = [formatEvent(e) for e in logged if e.get("log_namespace") == "dimsekit.pydicom"]
    assert [line for line in lines if "1.2.route" in line] == [
        "pydicom, reading C-FIND message 1 from P: Invalid value for VR UI: '1.2.route'."
    ]
