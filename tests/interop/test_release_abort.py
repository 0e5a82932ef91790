"""Ending associations, driven by a raw-socket peer: A-ABORT mid-association,
A-RELEASE, and release collisions on each side (PS3.8 Table 9-10, Sta9-Sta12).

Each test checks the exact bytes the raw peer receives against PS3.8."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.interop.conftest import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    HERE,
    RELEASE_RP,
    RELEASE_RQ,
    RawPeer,
    RawServer,
    abort_pdu,
    associate_ac_for,
    free_port,
    run_script,
    start_node,
    stop,
    wait_for_port,
)

pytestmark = pytest.mark.interop


def test_peer_abort_mid_association(shared_node):
    with RawPeer.connect(shared_node.port) as peer:
        peer.associate(calling="RAWABORT")
        assert peer.echo(message_id=7) == 0x0000
        peer.send(abort_pdu(source=0, reason=0))
        # Sta6 + A-ABORT PDU (Evt16) -> AA-3: indication, close the transport; nothing is sent.
        peer.expect_eof(timeout=3)
    line = shared_node.wait_log(r"calling=RAWABORT")
    assert "aborted" in line and "called=DIMSEKIT" in line, line
    shared_node.assert_healthy()


def test_peer_abort_before_any_message(shared_node):
    with RawPeer.connect(shared_node.port) as peer:
        peer.associate(calling="RAWABORT2")
        peer.send(abort_pdu(source=2, reason=0))  # a provider-side abort from the peer
        peer.expect_eof(timeout=3)
    assert "aborted" in shared_node.wait_log(r"calling=RAWABORT2")
    shared_node.assert_healthy()


def test_release_by_raw_peer(shared_node):
    with RawPeer.connect(shared_node.port) as peer:
        peer.associate(calling="RAWREL")
        assert peer.echo() == 0x0000
        peer.send(RELEASE_RQ)
        # Sta6 + A-RELEASE-RQ (Evt12) -> AR-2, the node answers (Evt14 in Sta8) -> AR-4:
        # exactly an A-RELEASE-RP, then it waits (Sta13) for us to close.
        assert peer.recv_pdu() == RELEASE_RP
        peer.assert_open_for(0.3)
    assert "released" in shared_node.wait_log(r"calling=RAWREL")
    shared_node.assert_healthy()


def test_release_collision_dimsekit_requestor():
    """dimsekit asks to release; the raw acceptor answers with its own A-RELEASE-RQ."""

    def colliding_acceptor(peer: RawPeer) -> list[str]:
        rq = peer.recv_pdu()
        assert rq[0] == A_ASSOCIATE_RQ
        peer.send(associate_ac_for(rq))
        assert peer.recv_pdu() == RELEASE_RQ  # dimsekit: Sta6 + Evt11 -> AR-1
        peer.send(RELEASE_RQ)  # collision: dimsekit (requestor) in Sta7 + Evt12 -> AR-8 -> Sta9
        # The requestor answers first: Sta9 + Evt14 -> AR-9, A-RELEASE-RP, -> Sta11.
        assert peer.recv_pdu() == RELEASE_RP
        peer.send(RELEASE_RP)  # our (acceptor) answer: dimsekit Sta11 + Evt13 -> AR-3, closes
        peer.expect_eof(timeout=3)
        return ["ok"]

    server = RawServer(colliding_acceptor)
    with server:
        result = run_script("_scu.py", "release", str(server.port), "RAWSCP")
        assert server.join() == ["ok"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["established", "released", "closed"], result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_release_collision_dimsekit_acceptor(tmp_path):
    """An embedded dimsekit acceptor asks to release; the raw requestor asks too."""
    port = free_port()
    out = (tmp_path / "node.out").open("wb")
    proc = subprocess.Popen([sys.executable, str(HERE / "_release_node.py"), str(port)],
                            stdout=out, stderr=subprocess.STDOUT)
    out.close()
    try:
        wait_for_port(port, 10, proc)
        with RawPeer.connect(port) as peer:
            peer.associate(calling="RAWCOLL")
            assert peer.recv_pdu() == RELEASE_RQ  # dimsekit (acceptor): Sta6 + Evt11 -> AR-1 -> Sta7
            peer.send(RELEASE_RQ)  # collision: dimsekit Sta7 + Evt12 -> AR-8 -> Sta10
            # The acceptor side waits for the requestor's A-RELEASE-RP (Sta10): nothing yet.
            peer.assert_open_for(0.3)
            peer.send(RELEASE_RP)  # as requestor we answer first (AR-9)
            # dimsekit Sta10 + Evt13 -> AR-10 -> Sta12; its response -> AR-4: A-RELEASE-RP.
            assert peer.recv_pdu() == RELEASE_RP
            peer.assert_open_for(0.3)  # Sta13: the acceptor waits for the requestor to close
        code = proc.wait(10)
    finally:
        stop(proc)
    output = (tmp_path / "node.out").read_text()
    assert code == 0, output
    lines = [line for line in output.splitlines() if line in {"listening", "release requested", "released", "closed"}]
    assert lines == ["listening", "release requested", "released", "closed"], output
    assert "Traceback" not in output, output


def test_node_aborts_an_idle_association(tmp_path):
    node = start_node(tmp_path, config="[limits]\nidle_timeout = 1\n")
    try:
        with RawPeer.connect(node.port) as peer:
            peer.associate(calling="IDLER")
            assert peer.echo() == 0x0000
            started = time.monotonic()
            pdu = peer.recv_pdu(timeout=3)  # idle for 1 s -> the node aborts
            waited = time.monotonic() - started
            assert pdu[0] == A_ABORT, pdu.hex()
            assert 0.5 <= waited <= 2.0, f"aborted after {waited:.2f} s of idleness, idle_timeout is 1 s"
        assert "idle" in node.wait_log(r"calling=IDLER ")
        node.assert_healthy()
    finally:
        code = stop(node.proc)
    assert code == 0, node.log_text()
