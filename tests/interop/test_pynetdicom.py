"""dimsekit against pynetdicom, both ways."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import (
    AsynchronousOperationsWindowNegotiation,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)

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


def _user_identity(kind: int, positive: bool) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = b"alice"
    if kind == 2:
        item.secondary_field = b"secret"
    item.positive_response_requested = positive
    return item


def _async_window() -> AsynchronousOperationsWindowNegotiation:
    item = AsynchronousOperationsWindowNegotiation()
    item.maximum_number_operations_invoked = 4
    item.maximum_number_operations_performed = 4
    return item


def _role() -> SCP_SCU_RoleSelectionNegotiation:
    item = SCP_SCU_RoleSelectionNegotiation()
    item.sop_class_uid = VERIFICATION
    item.scu_role = True
    item.scp_role = True
    return item


def _extended() -> SOPClassExtendedNegotiation:
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = VERIFICATION
    item.service_class_application_information = b"\x01\x00"
    return item


#: A SOP class no built-in plugin serves (a private UID under the UUID-derived 2.25 root).
UNSUPPORTED_SOP_CLASS = "2.25.174021893517063532386209851186236437197"

NEGOTIATIONS = {
    "user-identity-username-positive-response": ([(VERIFICATION,)], lambda: [_user_identity(1, True)]),
    "user-identity-password": ([(VERIFICATION,)], lambda: [_user_identity(2, False)]),
    "async-operations-window": ([(VERIFICATION,)], lambda: [_async_window()]),
    "role-selection": ([(VERIFICATION,)], lambda: [_role()]),
    "sop-class-extended": ([(VERIFICATION,)], lambda: [_extended()]),
    "explicit-vr-only": ([(VERIFICATION, ["1.2.840.10008.1.2.1"])], lambda: []),
    "unsupported-context-too": ([(UNSUPPORTED_SOP_CLASS,), (VERIFICATION,)], lambda: []),
}


@pytest.mark.parametrize("name", sorted(NEGOTIATIONS))
def test_pynetdicom_negotiation_variants(shared_node, name):
    contexts, items = NEGOTIATIONS[name]
    ae = AE(ae_title="PYNNEG")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    for context in contexts:
        ae.add_requested_context(*context)
    assoc = ae.associate("127.0.0.1", shared_node.port, ae_title="DIMSEKIT", ext_neg=items())
    try:
        assert assoc.is_established, name
        results = {c.abstract_syntax: c.result for c in assoc.accepted_contexts + assoc.rejected_contexts}
        assert results[VERIFICATION] == 0x00, results
        if UNSUPPORTED_SOP_CLASS in results:
            assert results[UNSUPPORTED_SOP_CLASS] == 0x03, results  # abstract-syntax-not-supported
        status = assoc.send_c_echo()
        assert status and status.Status == 0x0000
    finally:
        assoc.release()
        ae.shutdown()
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
    assert "Traceback" not in result.stderr, result.stderr
    assert pynetdicom_scp.requests == [("DIMSEKIT-SCU", "PYNSCP")]
