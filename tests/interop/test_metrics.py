"""The metrics page of a twistd node that DCMTK and pynetdicom peers used: it counts what they did."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

from tests.interop.conftest import (
    CT_IMAGE_STORAGE,
    VERIFICATION,
    _finish_node,
    dcmtk,
    echoscu,
    free_port,
    run,
    start_node,
    tiny_ct,
)

pytestmark = pytest.mark.interop


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def ended(peer: str, outcome: str) -> tuple[tuple[str, str], ...]:
    return (("outcome", outcome), ("peer_ae", peer), ("role", "acceptor"))


def answered(peer: str, command: str, status: str = "success") -> tuple[tuple[str, str], ...]:
    return (("command", command), ("peer_ae", peer), ("status", status))


def test_the_node_counts_dcmtk_and_pynetdicom_peers(tmp_path):
    page = free_port()
    node = start_node(tmp_path, config=f"[node]\ncheck_called_ae = true\n[plugins.metrics]\nport = {page}\n")
    try:
        node.wait_log(rf"metrics: http://127\.0\.0\.1:{page}/metrics")
        assert echoscu(node.port, "-aet", "ECHOSCU").returncode == 0
        assert echoscu(node.port, "-aet", "ECHOSCU", "-aec", "SOMEONE").returncode != 0  # rejected
        study = str(generate_uid())
        files = []
        for i in range(3):
            ds = tiny_ct(study=study)
            files.append(tmp_path / f"ct{i}.dcm")
            ds.save_as(files[-1], enforce_file_format=True)
        stored = run([dcmtk("storescu"), "-aet", "STORESCU", "-aec", "DIMSEKIT", "127.0.0.1", str(node.port),
                      *map(str, files)])
        assert stored.returncode == 0, stored.stderr
        with socket.create_connection(("127.0.0.1", node.port)):
            pass  # a connection that never asks for an association

        # pynetdicom: C-ECHO, then C-GET of the study (the node sends it 3 C-STOREs), then A-ABORT
        ae = AE(ae_title="PYNETDICOM")
        ae.add_requested_context(VERIFICATION)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_requested_context(CT_IMAGE_STORAGE)
        received = []

        def on_store(event):
            received.append(event.request.AffectedSOPInstanceUID)
            return 0x0000

        assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT",
                             ext_neg=[build_role(CT_IMAGE_STORAGE, scp_role=True)],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = study
        statuses = [status.Status for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
        assert statuses[-1] == 0x0000 and len(received) == 3
        found = scrape(page)
        assert found["dimsekit_associations_active"][(("role", "acceptor"),)] == 1.0
        # while it lasts: what it asked for and what the node sent it
        assert found["dimsekit_requests_answered_total"][answered("PYNETDICOM", "C-GET")] == 1.0
        assert found["dimsekit_requests_sent_total"] == {answered("PYNETDICOM", "C-STORE"): 3.0}
        assoc.abort()
        ae.shutdown()

        deadline = time.monotonic() + 10  # the node sees the abort's connection close a moment later
        while True:
            found = scrape(page)
            if found["dimsekit_associations_active"][(("role", "acceptor"),)] == 0.0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert found["dimsekit_associations_total"] == {
            ended("ECHOSCU", "released"): 1.0,
            ended("ECHOSCU", "rejected"): 1.0,
            ended("STORESCU", "released"): 1.0,
            ended("", "failed"): 2.0,  # ours, and start_node's probe of the port
            ended("PYNETDICOM", "aborted"): 1.0,
        }
        assert found["dimsekit_requests_answered_total"] == {
            answered("ECHOSCU", "C-ECHO"): 1.0,
            answered("STORESCU", "C-STORE"): 3.0,
            answered("PYNETDICOM", "C-ECHO"): 1.0,
            answered("PYNETDICOM", "C-GET"): 1.0,
        }
        assert found["dimsekit_requests_sent_total"] == {answered("PYNETDICOM", "C-STORE"): 3.0}
        archived = sum(f.stat().st_size for f in (tmp_path / "dimsekit-data").rglob("*.dcm"))
        assert found["dimsekit_stored_bytes_total"] == {(("peer_ae", "STORESCU"),): float(archived)}
        assert found["dimsekit_associations_active"] == {(("role", "acceptor"),): 0.0, (("role", "requestor"),): 0.0}
        assert found["dimsekit_associations_limit"] == {(): 64.0}
        (free,) = found["dimsekit_data_dir_free_bytes"].values()
        assert free > 0
        assert found["process_open_fds"][()] > 0
    finally:
        _finish_node(node)  # exit 0 on SIGTERM, no traceback
    assert "GET /metrics" not in node.log_text()  # scrapes are not logged


def test_a_metrics_port_in_use_is_said_and_dicom_goes_on(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        page = taken.getsockname()[1]
        node = start_node(tmp_path, config=f"[plugins.metrics]\nport = {page}\n")
        try:
            line = node.wait_log(r"metrics: cannot serve them")
            assert f"127.0.0.1:{page}" in line
            assert echoscu(node.port).returncode == 0
        finally:
            _finish_node(node)
