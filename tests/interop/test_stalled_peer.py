"""Peers that stop reading what the node sends them (LESSONS.md #29).

One asks for many C-FIND matches and then reads nothing: the node's sending
stalls once the kernel's buffers and Twisted's fill up; after ``dimse_timeout``
seconds of that it aborts the association, drops the connection, frees the slot
and closes the query's cursor -- instead of keeping all of it for ever -- and
goes on serving others.  Another sends requests as fast as it can and reads no
response: the node stops reading it (TCP then holds it back) instead of queueing
a response for every request it is sent.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from dimsekit.config import from_mapping
from dimsekit_plugins.worklist import WorklistStore, database_path
from tests.interop.conftest import (
    A_ASSOCIATE_AC,
    IMPLICIT_VR_LE,
    RELEASE_RP,
    RELEASE_RQ,
    RawPeer,
    _element,
    _finish_node,
    associate_rq,
    echo_rq_pdata,
    echo_rsp_status,
    echoscu,
    pdata_pdu,
    start_node,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]

MWL_FIND = "1.2.840.10008.5.1.4.31"
ITEMS = 6000


def worklist_item(i: int) -> Dataset:
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledStationAETitle = "CT1"
    step.ScheduledProcedureStepStartDate = "20260105"
    step.ScheduledProcedureStepStartTime = "0900"
    step.ScheduledProcedureStepID = f"SPS{i}"
    step.ScheduledProcedureStepDescription = "a step"
    ds = Dataset()
    ds.PatientName = f"PATIENT^{i}"
    ds.PatientID = f"P{i}"
    ds.PatientComments = "x" * 1000  # a large match: the buffers fill with fewer of them
    ds.AccessionNumber = f"A{i}"
    ds.RequestedProcedureID = f"RP{i}"
    ds.RequestedProcedureDescription = "a procedure"
    ds.StudyInstanceUID = generate_uid()
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def find_rq_pdata(context_id: int = 1, message_id: int = 1) -> bytes:
    """C-FIND-RQ (PS3.7 Table 9.3-2) for every worklist item, with Patient Comments returned."""
    uid = MWL_FIND.encode() + b"\x00"
    body = (
        _element(0x0000, 0x0002, uid)
        + _element(0x0000, 0x0100, struct.pack("<H", 0x0020))  # C-FIND-RQ
        + _element(0x0000, 0x0110, struct.pack("<H", message_id))
        + _element(0x0000, 0x0700, struct.pack("<H", 0))  # Priority: medium
        + _element(0x0000, 0x0800, struct.pack("<H", 0x0000))  # a data set follows
    )
    command = _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body
    identifier = Dataset()
    identifier.PatientName = ""
    identifier.PatientID = ""
    identifier.PatientComments = ""
    out = DicomBytesIO()
    out.is_implicit_VR = out.is_little_endian = True
    write_dataset(out, identifier)
    return pdata_pdu((context_id, 0x03, command)) + pdata_pdu((context_id, 0x02, out.getvalue()))


def test_a_peer_that_stops_reading_is_aborted_and_the_node_goes_on(tmp_path):
    config = from_mapping({"node": {"data_dir": str(tmp_path / "dimsekit-data")}})
    store = WorklistStore(database_path(config), create=True)
    store._add([worklist_item(i) for i in range(ITEMS)])
    store._close()
    node = start_node(tmp_path, config="[limits]\ndimse_timeout = 2\n")
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: it fills fast
        sock.settimeout(10)
        sock.connect(("127.0.0.1", node.port))
        with RawPeer(sock) as peer:
            peer.send(associate_rq(calling="STALLER", contexts=[(MWL_FIND, [IMPLICIT_VR_LE])]))
            assert peer.recv_pdu()[0] == A_ASSOCIATE_AC
            peer.send(find_rq_pdata())
            started = time.monotonic()
            line = node.wait_log(r"sending stalled", timeout=30)  # reading nothing meanwhile
            assert "the peer took nothing of what we sent for 2 s; aborting the association" in line
            assert time.monotonic() - started < 25
            # the connection was dropped: what is left to read ends, it does not block
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if not sock.recv(1 << 20):
                        break
                except ConnectionResetError:
                    break
            else:
                raise AssertionError("the connection is still open")
        node.wait_log(r"calling=STALLER .*ended: aborted: sending stalled", timeout=10)
        assert echoscu(node.port).returncode == 0  # the node goes on
    finally:
        _finish_node(node)  # exit 0 on SIGTERM, no traceback


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def flood_without_reading(sock: socket.socket, pid: int, calling: str = "FLOODER") -> int:
    """Associate on ``sock`` (its receive window small), send C-ECHO-RQs as fast as it takes them
    reading nothing, until TCP holds it back (a 2 s send timeout); check the node ``pid`` did not
    grow with them; then read every response, in order, and release.  How many were sent."""
    peer = RawPeer(sock)
    peer.send(associate_rq(calling=calling))
    assert peer.recv_pdu()[0] == A_ASSOCIATE_AC
    before = _rss_mib(pid)
    batch = b"".join(echo_rq_pdata(message_id) for message_id in range(1, 1001))
    sock.settimeout(2)
    sent = 0
    deadline = time.monotonic() + 30
    with pytest.raises(TimeoutError):  # TCP holds the peer back: its sending blocks
        while time.monotonic() < deadline:
            sock.sendall(batch)
            sent += 1000
    grown = _rss_mib(pid) - before
    assert grown < 64, f"the node grew by {grown:.0f} MiB for {sent} requests it could not answer"
    # sendall may have put part of the last batch out: those requests are answered too
    answered = 0
    for _ in range(sent + 1000):
        try:
            pdu = peer.recv_pdu(timeout=3)
        except TimeoutError:
            break
        assert echo_rsp_status(pdu, answered % 1000 + 1) == 0x0000
        answered += 1
    assert sent <= answered <= sent + 1000, (sent, answered)
    peer.send(RELEASE_RQ)
    assert peer.recv_pdu() == RELEASE_RP
    peer.close()
    return sent


def test_a_peer_that_sends_requests_and_reads_nothing_is_held_back_by_tcp(tmp_path):
    """C-ECHO-RQs sent as fast as a socket takes them, no response read: the node stops reading
    the peer once its responses pile up (it grew by ~35 MB/s before), then answers every one
    of them, in order, once the peer reads.  Over TLS: tests/interop/test_node_tls.py."""
    node = start_node(tmp_path)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", node.port))
        flood_without_reading(sock, node.proc.pid)
        node.wait_log(r"calling=FLOODER .*ended: released by the peer")
    finally:
        _finish_node(node)
