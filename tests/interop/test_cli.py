"""``dimsekit echo`` on failure: one line saying why, and a non-zero exit."""

from __future__ import annotations

import struct
import time

import pytest

from tests.interop.conftest import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    DIMSEKIT_CLI,
    P_DATA_TF,
    RELEASE_RP,
    RELEASE_RQ,
    RawPeer,
    RawServer,
    SilentServer,
    _element,
    _finish_node,
    abort_fields,
    abort_pdu,
    associate_ac_for,
    echo_rq_command,
    echo_rsp_status,
    free_port,
    pdata_pdu,
    pdvs_of,
    run,
    start_node,
    stop,
)

pytestmark = pytest.mark.interop


def echo(port: int, *args: str, timeout: float = 30.0):
    return run([*DIMSEKIT_CLI, "echo", "127.0.0.1", str(port), *args], timeout=timeout)


def one_line_reason(result) -> str:
    """The failure output: exactly one line on stderr, nothing on stdout, exit non-zero."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert result.stdout == "", result.stdout
    assert lines[0].startswith("dimsekit echo: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0].lower()


def test_rejection(tmp_path):
    node = start_node(tmp_path, config="[node]\ncheck_called_ae = true\n")
    try:
        line = one_line_reason(echo(node.port, "-aec", "WRONG"))
        assert "rejected" in line and "called-ae-title-not-recognized" in line, line
    finally:
        assert stop(node.proc) == 0


def test_refused_connection():
    line = one_line_reason(echo(free_port(), timeout=20))
    assert "refused" in line, line


def test_timeout_on_a_peer_that_never_answers():
    with SilentServer() as server:
        started = time.monotonic()
        result = echo(server.port, "--timeout", "1", timeout=20)
        elapsed = time.monotonic() - started
        line = one_line_reason(result)
    assert "within 1 s" in line or "time" in line, line
    assert elapsed < 8, f"took {elapsed:.1f} s with --timeout 1"
    assert server.received[:1] == bytes([A_ASSOCIATE_RQ]), "the silent peer got no A-ASSOCIATE-RQ"


def test_abort_by_the_peer():
    def accept_then_abort(peer):
        rq = peer.recv_pdu()
        assert rq[0] == A_ASSOCIATE_RQ
        peer.send(associate_ac_for(rq))
        assert peer.recv_pdu()[0] == P_DATA_TF  # the C-ECHO-RQ
        peer.send(abort_pdu(source=0, reason=0))
        peer.expect_eof()  # AA-3: the requestor closes on A-ABORT

    server = RawServer(accept_then_abort)
    with server:
        line = one_line_reason(echo(server.port, timeout=20))
        server.join()
    assert "abort" in line, line


def _abort_after_the_request(peer):
    rq = peer.recv_pdu()
    assert rq[0] == A_ASSOCIATE_RQ
    peer.send(associate_ac_for(rq))
    assert peer.recv_pdu()[0] == P_DATA_TF  # the command set
    assert peer.recv_pdu()[0] == P_DATA_TF  # the identifier
    peer.send(abort_pdu(source=0, reason=0))
    peer.expect_eof()


@pytest.mark.parametrize("tool", ["find", "get", "move"])
def test_query_retrieve_tools_aborted_mid_operation_say_one_line(tool):
    """The operation fails under the tool's feet (A-ABORT; a timeout is the
    same): the reason on one line, and no 'Unhandled error in Deferred' with
    a traceback after it when the failed operation is collected."""
    server = RawServer(_abort_after_the_request)
    keys = [] if tool == "find" else ["-k", "StudyInstanceUID=1.2.3"]
    with server:
        result = run([*DIMSEKIT_CLI, tool, "127.0.0.1", str(server.port), *keys], timeout=20)
        server.join()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "Unhandled" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dimsekit {tool}: aborted by the peer"), result.stderr


# -- the CLI ends associations protocol-correctly, whatever went wrong ---------------------------


def _echo_rsp(message_id: int) -> bytes:
    """A C-ECHO-RSP (Success) in one P-DATA-TF, written by hand."""
    uid = b"1.2.840.10008.1.1\x00"
    body = (
        _element(0x0000, 0x0002, uid)
        + _element(0x0000, 0x0100, struct.pack("<H", 0x8030))
        + _element(0x0000, 0x0120, struct.pack("<H", message_id))
        + _element(0x0000, 0x0800, struct.pack("<H", 0x0101))
        + _element(0x0000, 0x0900, struct.pack("<H", 0x0000))
    )
    return pdata_pdu((1, 0x03, _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body))


def _reject_all_contexts(ac: bytes) -> bytes:
    """The A-ASSOCIATE-AC with every presentation context answered 3 (abstract syntax not supported)."""
    data = bytearray(ac)
    offset = 74
    for _ in range(256):
        if offset >= len(data):
            break
        if data[offset] == 0x21:
            data[offset + 6] = 3  # Result/Reason (PS3.8 Table 9-18, byte 7)
        offset += 4 + int.from_bytes(data[offset + 2 : offset + 4], "big")
    return bytes(data)


def _associated(peer: RawPeer, transform=lambda ac: ac) -> None:
    rq = peer.recv_pdu()
    assert rq[0] == A_ASSOCIATE_RQ
    peer.send(transform(associate_ac_for(rq)))


def garbage_instead_of_ac(peer: RawPeer) -> bytes:
    peer.recv_pdu()
    peer.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    return peer.recv_pdu()  # Sta5 + invalid PDU -> AA-8: A-ABORT


def no_usable_context(peer: RawPeer) -> bytes:
    _associated(peer, _reject_all_contexts)
    return peer.recv_pdu()  # the tool cannot echo; it must end the association


def wrong_message_id(peer: RawPeer) -> bytes:
    _associated(peer)
    assert peer.recv_pdu()[0] == P_DATA_TF
    peer.send(_echo_rsp(message_id=99))  # never the answer to message 1
    return peer.recv_pdu(timeout=6)  # DIMSE timeout -> A-ABORT


def silent_on_release(peer: RawPeer) -> bytes:
    _associated(peer)
    assert peer.recv_pdu()[0] == P_DATA_TF
    peer.send(_echo_rsp(message_id=1))
    assert peer.recv_pdu() == RELEASE_RQ
    return peer.recv_pdu(timeout=6)  # no A-RELEASE-RP: ACSE timeout -> A-ABORT (AA-1)


@pytest.mark.parametrize(("script", "expected_abort", "words"), [
    (garbage_instead_of_ac, {(2, 1)}, "invalid"),
    (no_usable_context, {(0, 0)}, "context"),
    (wrong_message_id, {(0, 0), (2, 0)}, "within 1 s"),
    (silent_on_release, {(0, 0), (2, 0)}, "within 1 s"),
])
def test_cli_sends_a_abort_before_it_exits(script, expected_abort, words):
    """Whatever goes wrong, the peer gets the A-ABORT PS3.8 has for it before the
    connection closes -- not a bare close because the tool exited first."""
    server = RawServer(script)
    with server:
        result = echo(server.port, "--timeout", "1", timeout=20)
        abort = server.join()
    line = one_line_reason(result)
    assert words in line, line
    assert abort[0] == A_ABORT, f"expected A-ABORT, got {abort.hex()}"
    assert abort_fields(abort) in expected_abort, abort.hex()


def test_ctrl_c_stops_a_tool_waiting_on_a_silent_peer():
    """SIGINT (Ctrl-C) ends a tool at once, -v logging included: Twisted's handler, which logs,
    runs in the reactor thread (from the signal handler it could hang on the log's lock)."""
    import os
    import signal
    import subprocess

    from tests.interop.conftest import SAME_CODE, WITH_SIGINT

    with SilentServer() as server:
        proc = subprocess.Popen([*WITH_SIGINT, *DIMSEKIT_CLI, "echo", "127.0.0.1", str(server.port), "-v", "-to", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **SAME_CODE})
        try:
            deadline = time.monotonic() + 15
            while not server.received and time.monotonic() < deadline:  # its A-ASSOCIATE-RQ is out
                time.sleep(0.05)
            assert server.received, "the tool never sent its A-ASSOCIATE-RQ"
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert proc.returncode != 0, out + err
    assert took < 5, took
    assert "Received SIGINT, shutting down." in err, err
    assert "Traceback" not in err, err


def _answer_with_elements_after_the_command_group(peer: RawPeer) -> bytes:
    """A C-FIND SCP that answers as Orthanc 1.10 answers a failed C-GET: after the response's
    command elements (no data set), a group-0008 length and a Failed SOP Instance UID List."""
    _associated(peer)
    pdvs: list = []
    for _ in range(16):  # the C-FIND-RQ: its command, then its Identifier's last fragment
        pdvs += pdvs_of(peer.recv_pdu())
        if pdvs and pdvs[-1][1] == 0x02:
            break
    context_id = pdvs[0][0]
    study_root_find = b"1.2.840.10008.5.1.4.1.2.2.1\x00"
    body = (
        _element(0x0000, 0x0002, study_root_find)
        + _element(0x0000, 0x0100, struct.pack("<H", 0x8020))  # C-FIND-RSP
        + _element(0x0000, 0x0120, struct.pack("<H", 1))
        + _element(0x0000, 0x0800, struct.pack("<H", 0x0101))
        + _element(0x0000, 0x0900, struct.pack("<H", 0x0000))
    )
    uid_list = b"1.2.826.0.1.3680043.8.498.1\x00"
    after = _element(0x0008, 0x0000, struct.pack("<I", 8 + len(uid_list))) + _element(0x0008, 0x0058, uid_list)
    command = _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body + after
    peer.send(pdata_pdu((context_id, 0x03, command)))
    request = peer.recv_pdu()
    peer.send(RELEASE_RP)
    return request


def test_a_response_with_elements_after_its_command_group_is_read_and_the_log_says_so():
    """Found against Orthanc 1.10: `dimsekit get` failed ("invalid response ... element (0008,0000)
    outside group 0000 in a command set") where DCMTK and pynetdicom read the response."""
    server = RawServer(_answer_with_elements_after_the_command_group)
    with server:
        result = run([*DIMSEKIT_CLI, "find", "127.0.0.1", str(server.port), "-v", "-to", "5",
                      "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"], timeout=30)
        last = server.join()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 matches (0x0000" in result.stdout + result.stderr
    assert ("put (0008,0000), (0008,0058) after the command elements of C-FIND-RSP (message 1): not part of a "
            "command set (PS3.7 6.3.1), left out") in result.stderr
    assert last == RELEASE_RQ
    assert "Traceback" not in result.stderr


def test_the_node_performs_a_request_with_elements_after_its_command_group_and_says_so(tmp_path):
    node = start_node(tmp_path)
    try:
        with RawPeer.connect(node.port) as peer:
            peer.associate()
            command = echo_rq_command(5) + _element(0x0010, 0x0010, b"PN")  # after the group: left out
            peer.send(pdata_pdu((1, 0x03, command)))
            assert echo_rsp_status(peer.recv_pdu(), 5) == 0x0000
            peer.release()
        node.wait_log(r"put \(0010,0010\) after the command elements of C-ECHO-RQ \(message 5\): not part of a "
                      r"command set \(PS3\.7 6\.3\.1\), left out")
    finally:
        _finish_node(node)
