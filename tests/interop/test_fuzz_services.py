"""Every service of a zero-configuration twistd node, fed damaged data sets (``_fuzz.py``).

The requestor is dimsekit's own library (it sends bytes it is given, unchecked);
the data sets (and, for some requests, the command sets) are damaged at random,
seeded, so a failure here is reproduced by running
``python tests/interop/_fuzz.py PORT SEED COUNT`` against a node.  What must hold
for any of them: each request is answered (any status the node chooses: a
failure, a refusal) -- not left without an answer, not an abort of the
association (but for a damaged command set, where an A-ABORT is one right
answer), not a traceback in the node's log; the log stays readable (no
control bytes, no line of a peer's 70 KB value, pydicom's complaints naming the
request and the peer); and the node still answers DCMTK ``echoscu`` afterwards.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.interop._otlp import Collector, attributes
from tests.interop.conftest import _finish_node, free_port, run, start_node

pytestmark = pytest.mark.interop

FUZZ = Path(__file__).with_name("_fuzz.py")
COUNT = 400
#: valid instances the requestor stores before the damaged requests
SEEDED = 6


@pytest.mark.parametrize(("seed", "traced", "tight"), [(1, False, False), (2, False, False), (3, True, False),
                                                    (4, True, True)])
def test_every_service_answers_damaged_data_sets(tmp_path, seed, traced, tight):
    # a C-MOVE destination the node knows, where nothing listens: sub-operations that fail
    config = f'[[remote]]\nae_title = "ELSEWHERE"\nhost = "127.0.0.1"\nport = {free_port()}\n'
    if tight:  # limits most damaged data sets pass: refused before any handler sees them, and traced
        config += "[limits]\nmax_n_dataset_size = 200\nmax_identifier_size = 300\n"
    collector = None
    if traced:  # the same, its spans exported over OTLP to a collector of the test
        collector = Collector()
        config += (f'[plugins.tracing]\nexporter = "otlp"\n'
                   f'endpoint = "http://127.0.0.1:{collector.port}/v1/traces"\n')
    node = start_node(tmp_path, config=config, env={"OTEL_BSP_SCHEDULE_DELAY": "200"})
    try:
        done = run([sys.executable, str(FUZZ), str(node.port), str(seed), str(COUNT)], timeout=300)
        lines = done.stdout.strip().splitlines()
        assert lines, f"no report from the requestor:\n{done.stderr[-3000:]}"
        report = json.loads(lines[-1])
        assert "error" not in report, report.get("traceback", report)
        outcomes = report["outcomes"]
        assert sum(outcomes.values()) == COUNT + SEEDED
        assert outcomes.get("seed-store 0x0000") == SEEDED
        unanswered = {k: v for k, v in outcomes.items()
                      if not re.fullmatch(r"[\w-]+ 0x[0-9A-F]{4}", k) and k != "command aborted"}
        assert unanswered == {}, unanswered  # timeouts, aborts of good commands, errors on our side
        # a damaged command set: answered and the echo behind it too, or the association aborted
        assert outcomes.get("command 0x0000", 0) > 0 and outcomes.get("command aborted", 0) > 0, outcomes
        # the damage reached past the first checks: some of each kind of request succeeded
        succeeded = {k.split()[0] for k in outcomes if k.endswith(" 0x0000")}
        if tight:  # refused past the limits: 0213H (DIMSE-N), A700H / A701H (queries)
            refused = {k.split()[0] for k in outcomes if k.endswith((" 0x0213", " 0xA700", " 0xA701"))}
            assert {"find", "get", "move", "commit", "mpps-create"} <= refused, outcomes
        else:
            assert {"find", "patient-find", "worklist", "get", "store", "mpps-create", "commit"} <= succeeded, outcomes
        node.assert_healthy()  # echoscu, and no Traceback in the log
        log = node.log_text()
        assert max(map(len, log.splitlines())) < 2000
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", log), "control bytes in the log"
        # what pydicom says of a damaged data set names the request and the peer (or the stored
        # instance read again), never a bare warning pointing into pydicom's files
        said = [line for line in log.splitlines() if "[dimsekit.pydicom#" in line]
        assert said or tight, "pydicom said nothing of 400 damaged data sets"
        assert [line for line in said if "] pydicom, " not in line] == []
        assert not re.search(r"pydicom/\w+\.py:\d+", log), "a warning of pydicom's not in the node's words"
    finally:
        _finish_node(node)
        if collector is not None:
            collector.close()
    if collector is not None:  # every kind of request has its spans; nothing failed to export
        names = {span.name for _resource, span in collector.spans}
        assert {"DICOM association", "C-FIND", "C-GET", "C-MOVE", "C-STORE", "N-CREATE", "N-SET",
                "N-ACTION"} <= names, names
        if tight:  # the requests refused at the DIMSE layer have their spans too
            statuses = {attributes(span).get("dicom.status") for _resource, span in collector.spans}
            assert {0x0213, 0xA700, 0xA701} <= statuses, statuses
        assert "tracing: " not in node.log_text().replace("tracing: spans of associations", "")
