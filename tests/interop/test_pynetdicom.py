"""dimsekit against pynetdicom, both ways."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from pynetdicom import AE, evt

from tests.interop.conftest import DIMSEKIT_CLI, VERIFICATION, run, run_script

pytestmark = pytest.mark.interop


def pynetdicom_scu(port: int, called: str = "DIMSEKIT", calling: str = "PYNETDICOM", echoes: int = 1) -> list[int]:
    """Associate with pynetdicom, send C-ECHOs, release; the statuses."""
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "pynetdicom could not associate"
    statuses = []
    try:
        for _ in range(echoes):
            status = assoc.send_c_echo()
            assert status, "no C-ECHO response"
            statuses.append(int(status.Status))
    finally:
        assoc.release()
    assert assoc.is_released
    ae.shutdown()
    return statuses


def test_pynetdicom_scu_to_node(shared_node):
    assert pynetdicom_scu(shared_node.port, echoes=3) == [0, 0, 0]
    line = shared_node.wait_log(r"calling=PYNETDICOM called=DIMSEKIT")
    assert "released" in line, line
    shared_node.assert_healthy()


class PynetdicomSCP:
    """A pynetdicom Verification SCP on a free port (non-blocking server, shut down after)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.ae = AE(ae_title="PYNSCP")
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 5
        self.ae.add_supported_context(VERIFICATION)
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False,
                                           evt_handlers=[(evt.EVT_C_ECHO, self._on_echo)])
        self.port = self.server.server_address[1]

    def _on_echo(self, event) -> int:
        requestor = event.assoc.requestor
        with self._lock:
            self.requests.append((requestor.ae_title.strip(), event.assoc.acceptor.ae_title.strip()))
        return 0x0000

    def shutdown(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()


@pytest.fixture
def pynetdicom_scp() -> Iterator[PynetdicomSCP]:
    scp = PynetdicomSCP()
    try:
        yield scp
    finally:
        scp.shutdown()


def test_dimsekit_cli_echo_to_pynetdicom_scp(pynetdicom_scp):
    result = run([*DIMSEKIT_CLI, "echo", "127.0.0.1", str(pynetdicom_scp.port), "-aec", "PYNSCP",
                  "-aet", "DKCLI", "--repeat", "5"], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5/5 Success" in result.stdout
    assert pynetdicom_scp.requests == [("DKCLI", "PYNSCP")] * 5


def test_dimsekit_library_echo_to_pynetdicom_scp(pynetdicom_scp):
    result = run_script("_scu.py", "echo", str(pynetdicom_scp.port), "PYNSCP")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["established", "echo", "0x0000", "released", "closed"], result.stdout
    assert pynetdicom_scp.requests == [("DIMSEKIT-SCU", "PYNSCP")]
