"""A twistd node sends its traces over OTLP to a collector while DCMTK peers use it.

The collector (``_otlp.py``) is an HTTP server in the test process that decodes what it gets with
OpenTelemetry's own protobuf messages (``opentelemetry-proto``), as a real
collector would; the peers are DCMTK's echoscu and storescu.
"""

from __future__ import annotations

import socket
import time

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from pydicom.uid import generate_uid

from dimsekit_plugins import tracing
from tests.interop._otlp import Collector, attributes
from tests.interop.conftest import _finish_node, dcmtk, echoscu, run, start_node, tiny_ct

pytestmark = pytest.mark.interop


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


def test_a_node_sends_spans_of_what_dcmtk_peers_did(tmp_path, collector):
    config = (
        "[node]\ncheck_called_ae = true\n"
        f'[plugins.tracing]\nexporter = "otlp"\nendpoint = "http://127.0.0.1:{collector.port}/v1/traces"\n'
        'service_name = "archive-1"\n'
    )
    node = start_node(tmp_path, config=config, env={"OTEL_BSP_SCHEDULE_DELAY": "3000"})
    try:
        node.wait_log(rf"tracing: spans of associations and requests go to http://127\.0\.0\.1:{collector.port}/v1/traces")
        study = str(generate_uid())
        files = []
        for i in range(3):
            files.append(tmp_path / f"ct{i}.dcm")
            tiny_ct(study=study).save_as(files[-1], enforce_file_format=True)
        stored = run([dcmtk("storescu"), "-aet", "STORESCU", "-aec", "DIMSEKIT", "127.0.0.1", str(node.port),
                      *map(str, files)])
        assert stored.returncode == 0, stored.stderr
        # sent while the node runs, in batches (every 3 s here: the next ones only as it stops)
        collector.wait_for(lambda: len(collector.named("C-STORE")) == 3 and collector.named("DICOM association"))
        assert echoscu(node.port, "-aet", "ECHOSCU", "-aec", "SOMEONE").returncode != 0  # rejected
        assert echoscu(node.port, "-aet", "ECHOSCU").returncode == 0
    finally:
        _finish_node(node)  # SIGTERM: what is left is sent before the node exits
    collector.wait_for(lambda: len(collector.named("DICOM association")) == 3, seconds=2, what="all three associations")
    assert set(collector.paths) == {"/v1/traces"}
    assert {r["service.name"] for r, _s in collector.spans} == {"archive-1"}

    by_caller = {}
    for span in collector.named("DICOM association"):
        by_caller.setdefault(attributes(span)["dicom.calling_ae_title"], []).append(span)
    (store_assoc,) = by_caller["STORESCU"]
    echoed, rejected = sorted(by_caller["ECHOSCU"], key=lambda s: attributes(s)["dicom.called_ae_title"])
    assert store_assoc.kind == Span.SPAN_KIND_SERVER
    a = attributes(store_assoc)
    assert a["dicom.called_ae_title"] == "DIMSEKIT"
    assert a["dicom.role"] == "acceptor"
    assert a["network.peer.address"] == "127.0.0.1"
    assert a["dicom.association.outcome"] == "released"
    assert a["dicom.requests_answered"] == 3
    assert store_assoc.status.code == Status.STATUS_CODE_UNSET
    stores = collector.named("C-STORE")
    assert {s.parent_span_id for s in stores} == {store_assoc.span_id}
    assert {s.trace_id for s in stores} == {store_assoc.trace_id}
    for s in stores:
        sa = attributes(s)
        assert sa["dicom.status"] == 0 and sa["dicom.status_category"] == "success"
        assert sa["dicom.sop_class"] == "CT Image Storage"
        assert "dicom.sop_instance_uid" not in sa
        assert store_assoc.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano
        assert s.end_time_unix_nano <= store_assoc.end_time_unix_nano

    assert attributes(rejected)["dicom.called_ae_title"] == "SOMEONE"
    assert attributes(rejected)["dicom.association.outcome"] == "rejected"
    assert rejected.status.code == Status.STATUS_CODE_ERROR
    assert attributes(echoed)["dicom.association.outcome"] == "released"
    (echo,) = collector.named("C-ECHO")
    assert echo.parent_span_id == echoed.span_id
    assert attributes(echo)["dicom.status"] == 0


def test_a_collector_that_does_not_answer_neither_holds_the_node_nor_goes_unsaid(tmp_path):
    silent = socket.socket()  # connections are queued, never answered
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        config = (f'[plugins.tracing]\nexporter = "otlp"\n'
                  f'endpoint = "http://127.0.0.1:{silent.getsockname()[1]}/v1/traces"\n')
        node = start_node(tmp_path, config=config,
                          env={"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1"})
        try:
            for _ in range(3):
                assert echoscu(node.port).returncode == 0  # the node serves on
            node.wait_log(r"tracing: Failed to export", timeout=10)
            assert echoscu(node.port).returncode == 0
        finally:
            started = time.monotonic()
            _finish_node(node)  # exit status 0, no traceback
            took = time.monotonic() - started
        assert took < tracing.FLUSH_TIMEOUT + 5, f"stopping took {took:.1f} s"
    finally:
        silent.close()


def test_the_console_exporter_writes_a_line_of_json_a_span_into_the_log(tmp_path):
    import json

    node = start_node(tmp_path, config='[plugins.tracing]\nexporter = "console"\n',
                      env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        node.wait_log(r"tracing: spans of associations and requests go to the log")
        assert echoscu(node.port).returncode == 0
        node.wait_log(r'\{"name": "DICOM association"', timeout=10)
    finally:
        _finish_node(node)
    spans = [json.loads(line.split("[stdout#info] ", 1)[1]) for line in node.log_text().splitlines()
             if "[stdout#info] {" in line]
    by_name = {span["name"]: span for span in spans}
    assert set(by_name) == {"DICOM association", "C-ECHO"}, spans
    assert by_name["C-ECHO"]["parent_id"] == by_name["DICOM association"]["context"]["span_id"]
    assert by_name["C-ECHO"]["attributes"]["dicom.status"] == 0


def test_an_association_the_stopping_node_aborts_still_has_its_span_sent(tmp_path, collector):
    from pynetdicom import AE

    config = f'[plugins.tracing]\nexporter = "otlp"\nendpoint = "http://127.0.0.1:{collector.port}/v1/traces"\n'
    node = start_node(tmp_path, config=config, env={"OTEL_BSP_SCHEDULE_DELAY": "60000"})  # only the stop sends
    ae = AE(ae_title="LINGERER")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT")
    try:
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        _finish_node(node)  # SIGTERM: it waits for the association (5 s), then aborts it
    finally:
        assoc.abort()
    collector.wait_for(lambda: collector.named("DICOM association"), seconds=2, what="the association's span")
    (span,) = collector.named("DICOM association")
    assert attributes(span)["dicom.calling_ae_title"] == "LINGERER"
    assert attributes(span)["dicom.association.outcome"] == "aborted"
    assert "node shutting down" in attributes(span)["dicom.association.end"]
    (echo,) = collector.named("C-ECHO")
    assert echo.parent_span_id == span.span_id
