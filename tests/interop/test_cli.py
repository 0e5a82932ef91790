"""``dimsekit echo`` on failure: one line saying why, and a non-zero exit."""

from __future__ import annotations

import time

import pytest

from tests.interop.conftest import (
    A_ASSOCIATE_RQ,
    DIMSEKIT_CLI,
    P_DATA_TF,
    RawServer,
    SilentServer,
    abort_pdu,
    associate_ac_for,
    free_port,
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
