"""MPPS against pynetdicom, both ways.

* pynetdicom as the modality (SCU) against a dimsekit node under twistd:
  N-CREATE, N-SET to COMPLETED, N-GET (MPPS Retrieve), the state rules on one
  association that survives each refusal, and the step still there after the
  node restarts on the same data directory.
* The dimsekit CLI as the SCU against a pynetdicom MPPS SCP in this process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt

from dimsekit.cli.mpps import create_defaults
from tests.interop.conftest import DIMSEKIT_CLI, _finish_node, run, start_node

pytestmark = pytest.mark.interop

MPPS = "1.2.840.10008.3.1.2.3.3"
MPPS_RETRIEVE = "1.2.840.10008.3.1.2.3.4"
VERIFICATION = "1.2.840.10008.1.1"
STATUS, END_DATE, SERIES, DESCRIPTION = 0x00400252, 0x00400250, 0x00400340, 0x00400254


def new_step(**values: Any) -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    ds.PatientName = "Interop^Pat"
    ds.PatientID = "PYN-1"
    create_defaults(ds, "PYNETDICOM")
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def completion() -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = "COMPLETED"
    ds.PerformedProcedureStepEndDate = "20260102"
    ds.PerformedProcedureStepEndTime = "101500"
    item = Dataset()
    item.SeriesInstanceUID = str(generate_uid())
    item.ProtocolName = "T1"
    item.PerformingPhysicianName = ""
    item.OperatorsName = ""
    item.SeriesDescription = ""
    item.RetrieveAETitle = ""
    item.ReferencedImageSequence = []
    ds.PerformedSeriesSequence = [item]
    return ds


class Modality:
    """pynetdicom as an MPPS SCU on one association."""

    def __init__(self, port: int) -> None:
        self.ae = AE(ae_title="PYNMODALITY")
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 10
        for uid in (MPPS, MPPS_RETRIEVE, VERIFICATION):
            self.ae.add_requested_context(uid)
        self.assoc = self.ae.associate("127.0.0.1", port, ae_title="DIMSEKIT")
        assert self.assoc.is_established, "pynetdicom could not associate"

    def create(self, ds: Dataset, uid: str) -> tuple[Dataset, Any]:
        status, attrs = self.assoc.send_n_create(ds, MPPS, uid)
        assert status is not None, "no N-CREATE response"
        return status, attrs

    def set(self, ds: Dataset, uid: str) -> Dataset:
        status, _ = self.assoc.send_n_set(ds, MPPS, uid)
        assert status is not None, "no N-SET response"
        return status

    def get(self, uid: str, tags: list[int]) -> tuple[Dataset, Any]:
        status, ds = self.assoc.send_n_get(tags, MPPS_RETRIEVE, uid)
        assert status is not None, "no N-GET response"
        return status, ds

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()
        self.ae.shutdown()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def test_pynetdicom_modality_against_the_node_and_a_restart(tmp_path: Path, data_dir: Path):
    uid = str(generate_uid())
    node = start_node(_fresh(tmp_path / "run1"), "--data-dir", str(data_dir))
    try:
        modality = Modality(node.port)
        try:
            status, _ = modality.create(new_step(), uid)
            assert status.Status == 0x0000
            # the state rules, each answered on the same association
            status, _ = modality.create(new_step(), uid)
            assert status.Status == 0x0111, status
            missing = new_step()
            del missing.Modality
            status, _ = modality.create(missing, str(generate_uid()))
            assert status.Status == 0x0120, status
            assert "Modality" in status.ErrorComment  # (pynetdicom keeps no Attribute Identifier List here)
            status = modality.set(completion(), str(generate_uid()))
            assert status.Status == 0x0112, status
            progress = Dataset()
            progress.PerformedProcedureStepDescription = "MR brain"
            assert modality.set(progress, uid).Status == 0x0000
            assert modality.set(completion(), uid).Status == 0x0000
            status = modality.set(progress, uid)
            assert status.Status == 0x0110, status
            assert status.ErrorID == 0xA710
            assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"
            status, got = modality.get(uid, [STATUS, DESCRIPTION, SERIES, 0x00100010])
            assert status.Status == 0x0000
            assert got.PerformedProcedureStepStatus == "COMPLETED"
            assert got.PerformedProcedureStepDescription == "MR brain"
            assert str(got.PatientName) == "Interop^Pat"
            assert len(got.PerformedSeriesSequence) == 1
            assert modality.assoc.send_c_echo().Status == 0x0000  # still alive after every refusal
        finally:
            modality.close()
        node.wait_log(rf"MPPS {uid} updated by PYNMODALITY \(IN PROGRESS -> COMPLETED\)")
    finally:
        _finish_node(node)
    assert (data_dir / "dimsekit.sqlite").exists()

    again = start_node(_fresh(tmp_path / "run2"), "--data-dir", str(data_dir))
    try:
        modality = Modality(again.port)
        try:
            status, got = modality.get(uid, [])
            assert status.Status == 0x0000
            assert got.PerformedProcedureStepStatus == "COMPLETED"
            assert got.PerformedProcedureStepDescription == "MR brain"
            assert got.Modality == "MR"
            status = modality.set(completion(), uid)
            assert (status.Status, status.ErrorID) == (0x0110, 0xA710)  # still final after the restart
            status, _ = modality.create(new_step(), uid)
            assert status.Status == 0x0111
        finally:
            modality.close()
        again.assert_healthy()
    finally:
        _finish_node(again)


def _fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


# -- the dimsekit CLI against a pynetdicom MPPS SCP ------------------------------------------------


class PynetdicomMPPS:
    """A pynetdicom MPPS (and Retrieve) SCP keeping steps in a dict."""

    def __init__(self) -> None:
        self.steps: dict[str, Dataset] = {}
        self.requests: list[tuple[str, str]] = []
        self.refuse_sets_with: Dataset | None = None
        self._lock = threading.Lock()
        self.ae = AE(ae_title="PYNMPPS")
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 10
        self.ae.add_supported_context(MPPS)
        self.ae.add_supported_context(MPPS_RETRIEVE)
        handlers = [(evt.EVT_N_CREATE, self._create), (evt.EVT_N_SET, self._set), (evt.EVT_N_GET, self._get)]
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def _create(self, event):
        uid = event.request.AffectedSOPInstanceUID
        with self._lock:
            self.requests.append(("N-CREATE", uid))
            if uid in self.steps:
                return 0x0111, None
            self.steps[uid] = event.attribute_list
        return 0x0000, None

    def _set(self, event):
        uid = event.request.RequestedSOPInstanceUID
        with self._lock:
            self.requests.append(("N-SET", uid))
            if self.refuse_sets_with is not None:
                return self.refuse_sets_with, None
            if uid not in self.steps:
                return 0x0112, None
            for element in event.modification_list:
                self.steps[uid][element.tag] = element
        return 0x0000, None

    def _get(self, event):
        uid = event.request.RequestedSOPInstanceUID
        with self._lock:
            self.requests.append(("N-GET", uid))
            step = self.steps.get(uid)
            if step is None:
                return 0x0112, None
            wanted = event.request.AttributeIdentifierList
            if not wanted:
                return 0x0000, step
            out = Dataset()
            for tag in ([wanted] if isinstance(wanted, int) else wanted):
                if tag in step:
                    out[tag] = step[tag]
            return 0x0000, out

    def shutdown(self) -> None:
        self.server.shutdown()
        self.ae.shutdown()


@pytest.fixture
def pynetdicom_mpps() -> Iterator[PynetdicomMPPS]:
    scp = PynetdicomMPPS()
    try:
        yield scp
    finally:
        scp.shutdown()


def cli(port: int, *args: str) -> Any:
    action, rest = args[0], args[1:]
    return run([*DIMSEKIT_CLI, "mpps", action, "127.0.0.1", str(port), "-aec", "PYNMPPS", "-aet", "DKMOD",
                "-to", "10", *rest], timeout=60)


def test_dimsekit_cli_against_a_pynetdicom_mpps_scp(pynetdicom_mpps: PynetdicomMPPS):
    scp = pynetdicom_mpps
    uid = str(generate_uid())
    done = cli(scp.port, "create", "--uid", uid, "-k", "Modality=CT", "-k", "PatientName=Cli^Test",
               "-k", "ScheduledStepAttributesSequence[0].AccessionNumber=ACC9", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "N-CREATE" in done.stderr and "Success" in done.stderr
    created = scp.steps[uid]
    assert created.Modality == "CT" and str(created.PatientName) == "Cli^Test"
    assert created.PerformedProcedureStepStatus == "IN PROGRESS"
    assert created.PerformedStationAETitle == "DKMOD"
    assert created.ScheduledStepAttributesSequence[0].AccessionNumber == "ACC9"
    assert "PerformedSeriesSequence" in created  # Type 2, zero length
    printed = Dataset.from_json(json.loads(done.stdout))
    assert printed.SOPInstanceUID == uid and printed.Modality == "CT"

    series_uid = str(generate_uid())
    done = cli(scp.port, "set", uid, "--status", "completed",
               "-k", f"PerformedSeriesSequence[0].SeriesInstanceUID={series_uid}",
               "-k", "PerformedSeriesSequence[0].ProtocolName=P1")
    assert done.returncode == 0, done.stdout + done.stderr
    step = scp.steps[uid]
    assert step.PerformedProcedureStepStatus == "COMPLETED"
    assert step.PerformedProcedureStepEndDate and step.PerformedProcedureStepEndTime
    assert step.PerformedSeriesSequence[0].SeriesInstanceUID == series_uid

    done = cli(scp.port, "get", uid, "PerformedProcedureStepStatus", "(0010,0010)", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    got = Dataset.from_json(json.loads(done.stdout))
    assert set(got.keys()) == {0x00100010, STATUS}
    assert got.PerformedProcedureStepStatus == "COMPLETED"

    refusal = Dataset()
    refusal.Status = 0x0110
    refusal.ErrorComment = "Performed Procedure Step Object may no longer be updated"
    refusal.ErrorID = 0xA710
    scp.refuse_sets_with = refusal
    done = cli(scp.port, "set", uid, "-k", "PerformedProcedureStepDescription=late")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "0x0110" in done.stderr and "Error ID 0xA710" in done.stderr
    assert done.stdout == ""

    done = cli(scp.port, "get", "1.2.3.4.5.6")
    assert done.returncode == 1 and "0x0112" in done.stderr
    assert [r[0] for r in scp.requests] == ["N-CREATE", "N-SET", "N-GET", "N-SET", "N-GET"]
