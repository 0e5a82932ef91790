"""Bad input from a raw-socket peer: the node answers as PS3.8 Table 9-10 says,
stays up, answers the next C-ECHO (DCMTK echoscu), and logs no Traceback.

The node here runs with ``[limits] artim_timeout = 1``, so the states in which
it waits for the peer to close (Sta13) or to send an A-ASSOCIATE-RQ (Sta2)
end within about a second.
"""

from __future__ import annotations

import random
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.interop.conftest import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    RELEASE_RP,
    RELEASE_RQ,
    Node,
    PeerClosed,
    RawPeer,
    abort_fields,
    abort_pdu,
    associate_rq,
    echo_rq_pdata,
    echoscu,
    pdata_pdu,
    rj_fields,
    start_node,
    stop,
)

pytestmark = pytest.mark.interop

ARTIM = 1.0
ARTIM_CONFIG = f"[limits]\nartim_timeout = {ARTIM:g}\n"

# A-ABORT reason/diag. when the source is the service-provider (PS3.8 Table 9-26)
UNRECOGNIZED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER = 1, 2, 6


@pytest.fixture(scope="module")
def artim_node(tmp_path_factory) -> Iterator[Node]:
    node = start_node(tmp_path_factory.mktemp("artim-node"), config=ARTIM_CONFIG)
    yield node
    code = stop(node.proc)
    assert "Traceback" not in node.log_text(), node.log_text()
    assert code == 0, node.log_text()


def expect_sta2_abort(peer: RawPeer, provider_reason: int, timeout: float = 1.0, *, artim: bool = False) -> float:
    """A PDU other than A-ASSOCIATE-RQ on a fresh connection (Sta2) is answered
    by AA-1: an A-ABORT, then Sta13 -- the node waits for the peer to close
    (until ARTIM expires, AA-2, checked when ``artim``).  Returns the seconds
    the A-ABORT took."""
    started = time.monotonic()
    pdu = peer.recv_pdu(timeout=timeout)
    took = time.monotonic() - started
    assert pdu[0] == A_ABORT, f"expected A-ABORT, got {pdu.hex()}"
    source, reason = abort_fields(pdu)
    # AA-1 is the service-user's A-ABORT in the table's words; a provider that
    # says why uses source 2 with a Table 9-26 reason.  Either is PS3.8.
    assert (source, reason) in {(0, 0), (2, provider_reason)}, f"A-ABORT source {source} reason {reason}"
    expect_waits_for_close(peer, artim=artim)
    return took


def expect_waits_for_close(peer: RawPeer, *, artim: bool = False) -> None:
    """Sta13: the node does not close at once (it waits for the peer to), and
    -- checked when ``artim`` -- closes by itself when ARTIM expires, sending
    nothing more."""
    peer.assert_open_for(0.3)
    if artim:
        waited = peer.expect_eof(timeout=ARTIM + 1.5)
        assert waited <= ARTIM + 1.0, f"closed {waited + 0.3:.2f} s after the A-ABORT, ARTIM is {ARTIM} s"


GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "tls-client-hello": bytes.fromhex("16030100a5010000a10303") + bytes(40),
    "random": bytes([0xA5]) + random.Random(2).randbytes(200),
    "nul-bytes": bytes(64),
}


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage(artim_node, name):
    with RawPeer.connect(artim_node.port) as peer:
        peer.send(GARBAGE[name])
        expect_sta2_abort(peer, UNRECOGNIZED_PDU, artim=name == "http")
    artim_node.assert_healthy()


def test_truncated_associate_rq_then_close(artim_node):
    rq = associate_rq(calling="TRUNCATED")
    with RawPeer.connect(artim_node.port) as peer:
        peer.send(rq[: len(rq) // 2])
        time.sleep(0.1)
        peer.sock.shutdown(socket.SHUT_WR)
        # Sta2 + transport closed (Evt17) -> AA-5: nothing sent, the connection ends.
        peer.expect_eof(timeout=2)
    artim_node.assert_healthy()


def test_truncated_associate_rq_then_silence(artim_node):
    rq = associate_rq(calling="TRUNCATED2")
    with RawPeer.connect(artim_node.port) as peer:
        peer.send(rq[:40])
        # Still Sta2, ARTIM running since the connection was accepted -> AA-2: closed, nothing sent.
        waited = peer.expect_eof(timeout=ARTIM + 1.5)
        assert waited >= ARTIM * 0.5, f"closed after {waited:.2f} s, before ARTIM ({ARTIM} s)"
    artim_node.assert_healthy()


@pytest.mark.parametrize(("pdu_type", "reason"), [(0x01, INVALID_PARAMETER), (0x04, INVALID_PARAMETER),
                                                  (0x02, INVALID_PARAMETER), (0x09, UNRECOGNIZED_PDU)])
def test_huge_pdu_length_on_fresh_connection(artim_node, pdu_type, reason):
    with RawPeer.connect(artim_node.port) as peer:
        peer.send(struct.pack(">BBI", pdu_type, 0, 0xFFFFFFF0) + bytes(64))
        took = expect_sta2_abort(peer, reason, timeout=1.0)
        assert took < 1.0
    artim_node.assert_healthy()


def test_huge_pdu_length_on_established_association(artim_node):
    with RawPeer.connect(artim_node.port) as peer:
        peer.associate(calling="HUGEPDATA")
        peer.send(struct.pack(">BBI", 0x04, 0, 0xFFFFFFF0) + bytes(64))
        started = time.monotonic()
        pdu = peer.recv_pdu(timeout=1.0)
        assert time.monotonic() - started < 1.0
        # Sta6 + invalid PDU (Evt19) -> AA-8: A-ABORT, service-provider source.
        assert abort_fields(pdu) == (2, INVALID_PARAMETER), pdu.hex()
        expect_waits_for_close(peer)
    assert "invalid PDU" in artim_node.wait_log(r"calling=HUGEPDATA")
    artim_node.assert_healthy()


def test_pdata_before_association(artim_node):
    with RawPeer.connect(artim_node.port) as peer:
        peer.send(echo_rq_pdata())
        expect_sta2_abort(peer, UNEXPECTED_PDU)
    artim_node.assert_healthy()


@pytest.mark.parametrize(("name", "pdu"), [
    ("A-RELEASE-RQ", RELEASE_RQ),
    ("A-RELEASE-RP", RELEASE_RP),
    ("A-ASSOCIATE-RJ", bytes.fromhex("03 00 00000004 00 01 01 01")),
])
def test_other_pdus_before_association(artim_node, name, pdu):
    with RawPeer.connect(artim_node.port) as peer:
        peer.send(pdu)
        expect_sta2_abort(peer, UNEXPECTED_PDU)
    artim_node.assert_healthy()


def test_abort_before_association(artim_node):
    with RawPeer.connect(artim_node.port) as peer:
        peer.send(abort_pdu())
        # Sta2 + A-ABORT PDU (Evt16) -> AA-2: close, nothing sent.
        waited = peer.expect_eof(timeout=1.0)
        assert waited < 1.0
    artim_node.assert_healthy()


def test_second_associate_rq_on_established_association(artim_node):
    with RawPeer.connect(artim_node.port) as peer:
        peer.associate(calling="TWICE")
        assert peer.echo() == 0x0000
        peer.send(associate_rq(calling="TWICE"))
        # Sta6 + A-ASSOCIATE-RQ (Evt6) -> AA-8: A-ABORT, service-provider, unexpected PDU.
        assert abort_fields(peer.recv_pdu(timeout=2)) == (2, UNEXPECTED_PDU)
        expect_waits_for_close(peer, artim=True)
    line = artim_node.wait_log(r"calling=TWICE")
    assert "unexpected" in line.lower() or "abort" in line.lower(), line
    artim_node.assert_healthy()


def test_release_then_never_close(artim_node):
    with RawPeer.connect(artim_node.port) as peer:
        peer.associate(calling="NOCLOSE")
        peer.send(RELEASE_RQ)
        assert peer.recv_pdu() == RELEASE_RP
        # AR-4 started ARTIM in Sta13: the node closes when it expires (AA-2).
        expect_waits_for_close(peer, artim=True)
    assert "released" in artim_node.wait_log(r"calling=NOCLOSE")
    artim_node.assert_healthy()


def test_unsupported_protocol_version(artim_node):
    rq = bytearray(associate_rq(calling="VERSION2"))
    rq[6:8] = b"\x00\x02"  # protocol-version without bit 0 (PS3.8 Table 9-11)
    with RawPeer.connect(artim_node.port) as peer:
        peer.send(bytes(rq))
        # rejected-permanent, service-provider (ACSE), protocol-version-not-supported (Table 9-21)
        assert rj_fields(peer.recv_pdu()) == (1, 2, 2)
        expect_waits_for_close(peer, artim=True)  # AE-8 / AE-6: RJ, then ARTIM
    artim_node.assert_healthy()


def expect_abort_and_close(peer: RawPeer) -> tuple[int, int]:
    """An A-ABORT (either source), and the connection ends once we close."""
    pdu = peer.recv_pdu(timeout=2)
    assert pdu[0] == A_ABORT, f"expected A-ABORT, got {pdu.hex()}"
    return abort_fields(pdu)


BAD_PDATA = {
    # a PDV item longer than what is left of its P-DATA-TF
    "pdv-overruns-pdu": bytes.fromhex("04 00 0000000a 000000ff 01 03 0000 0000"),
    "pdata-without-pdv": pdata_pdu(),
    "pdv-length-below-2": bytes.fromhex("04 00 00000006 00000001 01 03"),
    "command-set-of-garbage": pdata_pdu((1, 0x03, b"\xff" * 40)),
    "unaccepted-context-id": echo_rq_pdata(context_id=3),
    "data-set-before-command": pdata_pdu((1, 0x02, bytes(10))),
}


@pytest.mark.parametrize("name", sorted(BAD_PDATA))
def test_bad_pdata_on_established_association(artim_node, name):
    calling = f"BAD{sorted(BAD_PDATA).index(name)}"
    with RawPeer.connect(artim_node.port) as peer:
        peer.associate(calling=calling)
        peer.send(BAD_PDATA[name])
        source, reason = expect_abort_and_close(peer)
        assert source in (0, 2), (source, reason)
    assert "abort" in artim_node.wait_log(rf"calling={calling} ").lower()
    artim_node.assert_healthy()


def test_silent_connection_closed_after_artim(artim_node):
    with RawPeer.connect(artim_node.port) as peer:
        waited = peer.expect_eof(timeout=ARTIM + 1.5)  # nothing sent (AA-2), closed
    assert ARTIM * 0.5 <= waited <= ARTIM + 1.0, f"closed after {waited:.2f} s with ARTIM {ARTIM} s"
    artim_node.assert_healthy()


def test_many_silent_connections_do_not_stop_the_node(artim_node):
    peers = [RawPeer.connect(artim_node.port) for _ in range(20)]
    try:
        result = echoscu(artim_node.port)  # answered while they hang around
        assert result.returncode == 0, result.stdout + result.stderr
        for peer in peers:
            peer.expect_eof(timeout=ARTIM + 2)
    finally:
        for peer in peers:
            peer.close()
    artim_node.assert_healthy()


# -- the association limit ------------------------------------------------------------------

LIMIT_CONFIG = "[limits]\nmax_associations = 2\n"
TOO_MANY = (2, 3, 2)  # rejected-transient, service-provider (presentation), local-limit-exceeded


def rejected(port: int, calling: str) -> tuple[int, int, int]:
    with RawPeer.connect(port) as peer:
        peer.send(associate_rq(calling=calling))
        pdu = peer.recv_pdu()
        assert pdu[0] == A_ASSOCIATE_RJ, f"expected A-ASSOCIATE-RJ, got {pdu.hex()}"
        # AE-8: after the RJ the node waits (Sta13) for us to close.
        peer.assert_open_for(0.2)
        return rj_fields(pdu)


def accepted(port: int, calling: str) -> RawPeer:
    peer = RawPeer.connect(port)
    peer.send(associate_rq(calling=calling))
    pdu = peer.recv_pdu()
    assert pdu[0] == A_ASSOCIATE_AC, f"{calling}: expected A-ASSOCIATE-AC, got {pdu.hex()}"
    assert peer.echo() == 0x0000
    return peer


def _stop_holding(node: Node, peers: list[RawPeer]) -> None:
    """Close the raw peers a test holds, then stop the node (status 0 on SIGTERM)."""
    for peer in peers:
        peer.close()
    code = stop(node.proc)
    assert code == 0, node.log_text()


def test_max_associations(tmp_path):
    node = start_node(tmp_path, config=LIMIT_CONFIG)
    peers: list[RawPeer] = []
    try:
        a = accepted(node.port, "SLOT-A")
        b = accepted(node.port, "SLOT-B")
        peers += [a, b]
        assert rejected(node.port, "SLOT-C") == TOO_MANY
        node.wait_log(r"calling=SLOT-C\b.*reject.*(2/3/2|local-limit-exceeded)")
        assert a.echo(2) == 0 and b.echo(2) == 0  # the held ones still work

        a.release()  # ends by release
        node.wait_log(r"calling=SLOT-A .*released")
        d = accepted(node.port, "SLOT-D")
        peers.append(d)
        assert rejected(node.port, "SLOT-E") == TOO_MANY

        b.send(abort_pdu())  # ends by A-ABORT
        b.expect_eof(timeout=3)
        node.wait_log(r"calling=SLOT-B .*abort")
        f = accepted(node.port, "SLOT-F")
        peers.append(f)
        assert rejected(node.port, "SLOT-G") == TOO_MANY

        d.close()  # ends by the connection dropping, no A-ABORT
        node.wait_log(r"calling=SLOT-D ")
        h = accepted(node.port, "SLOT-H")
        peers.append(h)
        assert rejected(node.port, "SLOT-I") == TOO_MANY

        f.release()
        h.release()
        node.wait_log(r"calling=SLOT-H ")
        # both slots free again: two at once are accepted
        j, k = accepted(node.port, "SLOT-J"), accepted(node.port, "SLOT-K")
        peers += [j, k]
        j.release()
        k.release()
        node.wait_log(r"calling=SLOT-K ")
        node.assert_healthy()
    finally:
        _stop_holding(node, peers)


def test_max_associations_per_ae(tmp_path):
    """One calling AE title holding its share of associations is refused more (DCMTK
    ``echoscu`` sees the rejection), another AE still gets in, and a slot freed by a
    release is taken again."""
    node = start_node(tmp_path, config="[limits]\nmax_associations_per_ae = 2\n")
    peers: list[RawPeer] = []
    try:
        a, b = accepted(node.port, "HOLDER"), accepted(node.port, "HOLDER")
        peers += [a, b]
        refused = echoscu(node.port, "-aet", "HOLDER")
        assert refused.returncode != 0
        assert "Rejected" in refused.stdout + refused.stderr and "Local Limit Exceeded" in refused.stdout + refused.stderr
        node.wait_log(r"calling=HOLDER .*local-limit-exceeded: 2 associations at once from HOLDER "
                      r"\(\[limits\] max_associations_per_ae\)")
        assert rejected(node.port, "HOLDER") == TOO_MANY
        assert echoscu(node.port, "-aet", "OTHER").returncode == 0  # another AE is not held back
        assert a.echo(2) == 0 and b.echo(2) == 0
        a.release()
        node.wait_log(r"calling=HOLDER .*released")
        assert echoscu(node.port, "-aet", "HOLDER").returncode == 0  # the freed slot
        node.assert_healthy()
    finally:
        _stop_holding(node, peers)


def test_max_associations_concurrent_burst(tmp_path):
    """Many requests at once: exactly ``max_associations`` are accepted."""
    node = start_node(tmp_path, config=LIMIT_CONFIG)
    answers: list[int] = []
    lock = threading.Lock()
    peers: list[RawPeer] = []
    barrier = threading.Barrier(8, timeout=10)

    def one(index: int) -> None:
        peer = RawPeer.connect(node.port)
        with lock:
            peers.append(peer)
        barrier.wait()
        peer.send(associate_rq(calling=f"BURST{index}"))
        try:
            pdu = peer.recv_pdu()
        except PeerClosed:
            pdu = b"\x00"
        with lock:
            answers.append(pdu[0])

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(answers) == [A_ASSOCIATE_AC] * 2 + [A_ASSOCIATE_RJ] * 6, answers
    finally:
        for peer in peers:
            peer.close()
    try:
        for _ in range(100):  # bounded: the slots free once the node saw the closes
            if echoscu(node.port).returncode == 0:
                break
            time.sleep(0.05)
        node.assert_healthy()
    finally:
        code = stop(node.proc)
    assert code == 0, node.log_text()


PRE_ASSOCIATION_INPUT = {
    "tls-client-hello": (GARBAGE["tls-client-hello"], r"invalid|unrecognized"),
    "pdata-before-association": (echo_rq_pdata(), r"unexpected"),
}


@pytest.mark.parametrize("name", sorted(PRE_ASSOCIATION_INPUT))
def test_bad_input_before_association_is_logged_with_its_reason(artim_node, name):
    """DESIGN.md: bad input from the network gets a protocol-correct answer *and
    a log line*.  The line for the connection must say what was wrong -- not
    just "connection closed", as for a port probe that sends nothing."""
    data, why = PRE_ASSOCIATION_INPUT[name]
    # only what this test logs: the node is the module's, and an earlier connection of it may have
    # had the same client port (once in a CI run: its line, for other garbage, was found first)
    since = len(artim_node.log_text())
    with RawPeer.connect(artim_node.port) as peer:
        port = peer.sock.getsockname()[1]
        peer.send(data)
        assert peer.recv_pdu()[0] == A_ABORT
    line = artim_node.wait_log(rf"peer=127\.0\.0\.1:{port}\b", timeout=3, since=since)
    assert re.search(why, line, re.IGNORECASE), f"the log does not say why the connection ended: {line}"


def test_provider_rejection_is_logged(artim_node):
    """An A-ASSOCIATE-RQ the service-provider itself rejects (protocol version
    without bit 0, AE-6) is logged as a rejection, with its calling AE title."""
    rq = bytearray(associate_rq(calling="VERSION3"))
    rq[6:8] = b"\x00\x02"
    with RawPeer.connect(artim_node.port) as peer:
        peer.send(bytes(rq))
        assert rj_fields(peer.recv_pdu()) == (1, 2, 2)
    artim_node.wait_log(r"calling=VERSION3\b.*reject.*(1/2/2|protocol-version-not-supported)", timeout=2)


def test_an_ae_title_of_control_characters_does_not_reach_the_log_raw(node):
    """PS3.5 allows no control character in an AE title; a peer sending escape sequences,
    NULs or a new line anyway is answered as any other (the title is only ever echoed
    and compared), and the node's log shows them as \\xNN: no recoloured terminal, no log
    grep calls binary, no line of the peer's that passes for one of ours."""
    rq = bytearray(associate_rq())
    for calling in (b"\x1b[31mEVIL\x1b[0m\x00\x01", b"A\nFAKE LINE"):
        rq[26:42] = calling.ljust(16, b" ")
        with RawPeer.connect(node.port) as peer:
            peer.send(bytes(rq))
            assert peer.recv_pdu()[0] == A_ASSOCIATE_AC
            assert peer.echo() == 0x0000
            peer.release()
    line = node.wait_log(r"calling=\\x1b\[31mEVIL\\x1b\[0m\\x00\\x01 ")
    assert "released" in line
    node.wait_log(r"^\tFAKE LINE")
    log = node.log_text()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", log), "control bytes in the log"
    assert re.search(r"calling=A\n\tFAKE LINE", log)  # a continuation line, not one of ours
    node.assert_healthy()
