"""Storage Commitment Push Model against pynetdicom, both ways.

* pynetdicom as the SCU against a dimsekit node under twistd (storage into
  its archive, then N-ACTION): the report on the same association; on a
  separate association when the SCU releases right after the N-ACTION and
  listens as SCP of its own (role selection); and, when the SCU cannot be
  reached, after the node restarts (the request was kept in SQLite).
* ``dimsekit commit --wait`` against a pynetdicom commitment SCP: the report
  on the same association, and with ``--port`` on an association the SCP opens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation

from tests.interop.conftest import DIMSEKIT_CLI, _finish_node, free_port, run, start_node, tiny_ct

pytestmark = pytest.mark.interop

SC = "1.2.840.10008.1.20.1"
SC_INSTANCE = "1.2.840.10008.1.20.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"


def ct_image() -> Dataset:
    """A tiny CT image (4x4 pixels), with File Meta Information."""
    return tiny_ct(patient_id="COMMIT-1", patient_name="Commit^Test")


def action_information(transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


class Reports:
    """N-EVENT-REPORTs as pynetdicom received them."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = threading.Event()

    def handle(self, event) -> tuple[int, None]:
        assoc = event.assoc
        context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == SC)
        self.received.append({
            "event_type": event.event_type,
            "info": event.event_information,
            "class": event.request.AffectedSOPClassUID,
            "instance": event.request.AffectedSOPInstanceUID,
            "calling": assoc.requestor.ae_title,
            "we_requested": assoc.is_requestor,
            "roles": (context.as_scu, context.as_scp),
            "proposed_roles": [
                (item.sop_class_uid, item.scu_role, item.scp_role)
                for item in assoc.requestor.user_information
                if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
            ],
        })
        self.arrived.set()
        return 0x0000, None

    def wait(self, timeout: float = 15.0) -> dict[str, Any]:
        assert self.arrived.wait(timeout), f"no N-EVENT-REPORT within {timeout} s"
        return self.received[0]


def reasons(info: Dataset) -> dict[str, int]:
    return {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in info.get("FailedSOPSequence", [])}


def committed(info: Dataset) -> set[str]:
    return {str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])}


class Modality:
    """pynetdicom as a storage and storage commitment SCU."""

    def __init__(self, port: int, reports: Reports, title: str = "PYNSCU") -> None:
        self.ae = AE(ae_title=title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 10
        for uid in (CT, SC, VERIFICATION):
            self.ae.add_requested_context(uid, ExplicitVRLittleEndian)
        self.assoc = self.ae.associate(
            "127.0.0.1", port, ae_title="DIMSEKIT", evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)]
        )
        assert self.assoc.is_established, "pynetdicom could not associate"

    def store(self, ds: Dataset) -> None:
        status = self.assoc.send_c_store(ds)
        assert status is not None and status.Status == 0x0000, status

    def request_commitment(self, transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
        status, _ = self.assoc.send_n_action(action_information(transaction_uid, references), 1, SC, SC_INSTANCE)
        assert status is not None, "no N-ACTION response"
        return status

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()
        self.ae.shutdown()


class Listener:
    """pynetdicom listening as the SCU of Storage Commitment for the report (it
    takes the SCU role the SCP's role selection leaves it)."""

    def __init__(self, reports: Reports, port: int | None = None, title: str = "PYNSCU") -> None:
        self.ae = AE(ae_title=title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 10
        self.ae.add_supported_context(SC, ExplicitVRLittleEndian, scu_role=False, scp_role=True)
        self.server = self.ae.start_server(
            ("127.0.0.1", port or 0), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, reports.handle)]
        )
        self.port = self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()


def node_config(listener_port: int, **commitment: Any) -> str:
    settings = "".join(f"{k} = {v}\n" for k, v in commitment.items())
    return (
        f'[[remote]]\nae_title = "PYNSCU"\nhost = "127.0.0.1"\nport = {listener_port}\n\n'
        f"[plugins.commitment]\n{settings}"
    )


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_report_on_the_same_association(tmp_path: Path):
    node = start_node(tmp_path, "--data-dir", str(tmp_path / "data"))
    try:
        reports = Reports()
        modality = Modality(node.port, reports)
        try:
            first, second = ct_image(), ct_image()
            modality.store(first)
            modality.store(second)
            missing = str(generate_uid())
            txn = str(generate_uid())
            refs = [(CT, first.SOPInstanceUID), (CT, second.SOPInstanceUID), (CT, missing), (MR, first.SOPInstanceUID)]
            assert modality.request_commitment(txn, refs).Status == 0x0000
            got = reports.wait()
            assert modality.assoc.send_c_echo().Status == 0x0000
        finally:
            modality.close()
        assert got["we_requested"] and got["calling"] == "PYNSCU"  # the association the SCU opened
        assert (got["class"], got["instance"], got["event_type"]) == (SC, SC_INSTANCE, 2)
        info = got["info"]
        assert info.TransactionUID == txn
        assert committed(info) == {first.SOPInstanceUID, second.SOPInstanceUID}
        assert info.RetrieveAETitle == "DIMSEKIT"
        # the same instance asked with the wrong SOP class appears as failed too
        assert reasons(info) == {missing: 0x0112, first.SOPInstanceUID: 0x0119}
        node.wait_log(rf"storage commitment {txn}: report .* delivered to PYNSCU on the same association")
    finally:
        _finish_node(node)


def test_a_request_past_the_dimse_n_data_set_limit_is_refused_and_the_association_goes_on(tmp_path: Path):
    """An N-ACTION whose Action Information passes ``[limits] max_n_dataset_size`` (here 64 KiB:
    2,000 references) is discarded as it arrives and refused with 0213H Resource Limitation;
    the same association's next, smaller request is performed and reported."""
    node = start_node(tmp_path, "--data-dir", str(tmp_path / "data"), config="[limits]\nmax_n_dataset_size = 65536\n")
    try:
        reports = Reports()
        modality = Modality(node.port, reports)
        try:
            image = ct_image()
            modality.store(image)
            many = [(CT, str(generate_uid())) for _ in range(2000)]
            status = modality.request_commitment(str(generate_uid()), many)
            assert status.Status == 0x0213  # Resource Limitation (PS3.7 C.5)
            assert status.ErrorComment == "Data set longer than 65536 bytes"
            txn = str(generate_uid())
            assert modality.request_commitment(txn, [(CT, image.SOPInstanceUID)]).Status == 0x0000
            got = reports.wait()
        finally:
            modality.close()
        assert (got["event_type"], got["info"].TransactionUID) == (1, txn)
        node.wait_log("with status 0x0213: Data set longer than 65536 bytes")
        node.assert_healthy()
    finally:
        _finish_node(node)


def test_report_on_a_separate_association_with_role_selection(tmp_path: Path):
    reports = Reports()
    listener = Listener(reports)
    # report_delay: the SCU has surely released by then, even on a loaded machine (else the
    # report would rightly go on its association, still there)
    config = node_config(listener.port, report_delay=1)
    node = start_node(tmp_path, "--data-dir", str(tmp_path / "data"), config=config)
    try:
        unused = Reports()
        modality = Modality(node.port, unused)
        try:
            image = ct_image()
            modality.store(image)
            txn = str(generate_uid())
            assert modality.request_commitment(txn, [(CT, image.SOPInstanceUID)]).Status == 0x0000
        finally:
            modality.close()  # released right after the N-ACTION response
        got = reports.wait()
        assert unused.received == []
        assert not got["we_requested"] and got["calling"] == "DIMSEKIT"
        assert got["proposed_roles"] == [(SC, False, True)]  # dimsekit proposed itself as SCP only
        assert got["roles"] == (True, False)  # pynetdicom is the SCU on that context
        assert (got["event_type"], got["info"].TransactionUID) == (1, txn)
        assert committed(got["info"]) == {image.SOPInstanceUID}
        node.wait_log(rf"storage commitment {txn}: report .* delivered to PYNSCU on a new association")
        node.assert_healthy()
    finally:
        listener.close()
        _finish_node(node)


def test_pending_request_is_resent_after_a_restart(tmp_path: Path):
    data = tmp_path / "data"
    port = free_port()  # where the SCU will listen -- nobody yet
    # report_delay: the SCU has surely released by then (else the report would rightly
    # go on its association, still there, and nothing would be pending)
    config = node_config(port, retry_interval=60, max_attempts=1, connect_timeout=2, report_delay=1)
    node = start_node(_fresh(tmp_path / "run1"), "--data-dir", str(data), config=config)
    txn = str(generate_uid())
    try:
        modality = Modality(node.port, Reports())
        try:
            image = ct_image()
            modality.store(image)
            assert modality.request_commitment(txn, [(CT, image.SOPInstanceUID)]).Status == 0x0000
        finally:
            modality.close()
        node.wait_log(rf"storage commitment {txn}: cannot associate with PYNSCU", timeout=10)
    finally:
        _finish_node(node)

    reports = Reports()
    listener = Listener(reports, port)
    try:
        again = start_node(_fresh(tmp_path / "run2"), "--data-dir", str(data), config=config)
        try:
            got = reports.wait()
            assert (got["event_type"], got["info"].TransactionUID) == (1, txn)
            assert committed(got["info"]) == {image.SOPInstanceUID}
            again.wait_log(rf"storage commitment {txn}: resending the report for PYNSCU after a restart")
            again.wait_log(rf"storage commitment {txn}: report .* delivered to PYNSCU on a new association")
        finally:
            _finish_node(again)
    finally:
        listener.close()


# -- dimsekit commit against a pynetdicom commitment SCP -------------------------------------------


class PynetdicomCommitmentSCP:
    """A pynetdicom Storage Commitment SCP that "has" the instances in ``known``;
    it reports on the same association, or on a new one to ``report_to``."""

    def __init__(self, known: set[str], report_to: tuple[str, int] | None = None) -> None:
        self.known = known
        self.report_to = report_to
        self.actions: list[Dataset] = []
        self.report_status: list[int] = []
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []
        self.ae = AE(ae_title="PYNCOMMIT")
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 10
        self.ae.add_supported_context(SC, ExplicitVRLittleEndian)
        self.ae.add_requested_context(SC, ExplicitVRLittleEndian)
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_N_ACTION, self._action)]
        )
        self.port = self.server.server_address[1]

    def _action(self, event):
        info = event.action_information
        self.actions.append(info)
        thread = threading.Thread(target=self._report, args=(event.assoc, info), daemon=True)
        self.threads.append(thread)
        thread.start()
        return 0x0000, None

    def _report(self, assoc, info: Dataset) -> None:
        try:
            time.sleep(0.2)  # after the N-ACTION response
            report = Dataset()
            report.TransactionUID = info.TransactionUID
            ok, failed = [], []
            for item in info.ReferencedSOPSequence:
                copy = Dataset()
                copy.ReferencedSOPClassUID = item.ReferencedSOPClassUID
                copy.ReferencedSOPInstanceUID = item.ReferencedSOPInstanceUID
                if item.ReferencedSOPInstanceUID in self.known:
                    ok.append(copy)
                else:
                    copy.FailureReason = 0x0112
                    failed.append(copy)
            if ok:
                report.ReferencedSOPSequence = ok
            if failed:
                report.FailedSOPSequence = failed
            event_type = 2 if failed else 1
            if self.report_to is None:
                status, _ = assoc.send_n_event_report(report, event_type, SC, SC_INSTANCE)
            else:
                role = build_role(SC, scu_role=False, scp_role=True)
                other = self.ae.associate(*self.report_to, ae_title="COMMITSCU", ext_neg=[role])
                assert other.is_established, "pynetdicom could not associate with the CLI"
                status, _ = other.send_n_event_report(report, event_type, SC, SC_INSTANCE)
                other.release()
            self.report_status.append(status.Status if status is not None else -1)
        except BaseException as exc:  # checked by the test
            self.errors.append(exc)

    def close(self) -> None:
        for thread in self.threads:
            thread.join(10)
        self.server.shutdown()
        self.ae.shutdown()
        assert not self.errors, self.errors


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    paths = []
    for index in range(3):
        ds = ct_image()
        path = tmp_path / f"img{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_cli_commit_wait_on_the_same_association(files: list[Path]):
    known = {_uid(files[0]), _uid(files[1])}
    scp = PynetdicomCommitmentSCP(known)
    try:
        result = run([*DIMSEKIT_CLI, "commit", "127.0.0.1", str(scp.port), "-aec", "PYNCOMMIT",
                      *map(str, files), "--wait", "-to", "10"], timeout=30)
    finally:
        scp.close()
    assert result.returncode == 1, result.stdout + result.stderr  # one instance failed
    (action,) = scp.actions
    assert {str(i.ReferencedSOPInstanceUID) for i in action.ReferencedSOPSequence} == {_uid(f) for f in files}
    assert {str(i.ReferencedSOPClassUID) for i in action.ReferencedSOPSequence} == {CT}
    assert action.TransactionUID in result.stdout
    assert scp.report_status == [0x0000]
    for path in files[:2]:
        assert f"committed  {_uid(path)}  {path}" in result.stdout
    assert f"failed     {_uid(files[2])}  0x0112 No such object instance  {files[2]}" in result.stdout
    assert "Event Type 2: 2 committed, 1 failed" in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_commit_wait_on_an_incoming_association(files: list[Path]):
    listen = free_port()
    scp = PynetdicomCommitmentSCP({_uid(f) for f in files}, report_to=("127.0.0.1", listen))
    try:
        result = run([*DIMSEKIT_CLI, "commit", "127.0.0.1", str(scp.port), "-aec", "PYNCOMMIT", "-aet", "COMMITSCU",
                      *map(str, files), "--port", str(listen), "-to", "10"], timeout=30)
    finally:
        scp.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert scp.report_status == [0x0000]
    assert "Event Type 1: 3 committed, 0 failed" in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_commit_gives_up_after_the_timeout(files: list[Path]):
    scp = PynetdicomCommitmentSCP(set(), report_to=("127.0.0.1", 9))  # reports to a closed port: never arrives
    try:
        started = time.monotonic()
        result = run([*DIMSEKIT_CLI, "commit", "127.0.0.1", str(scp.port), "-aec", "PYNCOMMIT",
                      str(files[0]), "--wait", "-to", "2"], timeout=30)
        elapsed = time.monotonic() - started
    finally:
        for thread in scp.threads:
            thread.join(10)
        scp.errors.clear()  # its report could not reach the closed port: expected here
        scp.close()
    assert result.returncode == 1
    assert ("no N-EVENT-REPORT on the association within 2 s (an SCP that reports on an association of its own "
            "needs --port N, and to know AE DIMSEKIT at this host and that port)") in result.stderr
    assert elapsed < 15


@pytest.fixture(autouse=True)
def _bounded() -> Iterator[None]:
    started = time.monotonic()
    yield
    assert time.monotonic() - started < 60, "an interop test took more than a minute"
