"""dimsekit mpps (the CLI) against a dimsekit node under twistd: a step's life,
input from DICOM JSON and DICOM files, and the exit status of each refusal."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.interop.conftest import DIMSEKIT_CLI, run

pytestmark = pytest.mark.interop


def cli(port: int, *args: str) -> Any:
    action, rest = args[0], args[1:]
    return run([*DIMSEKIT_CLI, "mpps", action, "127.0.0.1", str(port), "-aec", "DIMSEKIT", "-aet", "CLIMOD",
                "-to", "10", *rest], timeout=60)


def test_a_step_from_create_to_completed(shared_node, tmp_path):
    port = shared_node.port
    done = cli(port, "create", "-k", "Modality=CT", "-k", "PatientID=CLI-1", "--scp-uid", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    uid = Dataset.from_json(json.loads(done.stdout)).SOPInstanceUID
    assert uid and uid in done.stderr

    done = cli(port, "set", uid, "--status", "COMPLETED")
    assert done.returncode == 1
    assert "0x0121" in done.stderr and "PerformedSeriesSequence (0040,0340)" in done.stderr

    done = cli(port, "set", uid, "--status", "COMPLETED", "-k",
               f"PerformedSeriesSequence[0].SeriesInstanceUID={generate_uid()}",
               "-k", "PerformedSeriesSequence[0].ProtocolName=Head")
    assert done.returncode == 0, done.stdout + done.stderr

    done = cli(port, "set", uid, "-k", "PerformedProcedureStepDescription=late")
    assert done.returncode == 1
    assert "0x0110" in done.stderr and "Error ID 0xA710" in done.stderr
    assert "may no longer be updated" in done.stderr

    done = cli(port, "get", uid)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "COMPLETED" in done.stdout and "CLI-1" in done.stdout and "CLIMOD" in done.stdout
    shared_node.wait_log(rf"MPPS {uid} updated by CLIMOD \(IN PROGRESS -> COMPLETED\)")
    shared_node.assert_healthy()


def test_create_from_files(shared_node, tmp_path):
    port = shared_node.port
    step = Dataset()
    step.Modality = "US"
    step.PatientID = "FROM-JSON"
    (tmp_path / "step.json").write_text(step.to_json())
    uid = str(generate_uid())
    done = cli(port, "create", "--uid", uid, "-f", str(tmp_path / "step.json"), "-k", "PatientName=Over^Ride")
    assert done.returncode == 0, done.stdout + done.stderr
    got = cli(port, "get", uid, "PatientID", "PatientName", "Modality", "--json")
    assert got.returncode == 0, got.stderr
    back = Dataset.from_json(json.loads(got.stdout))
    assert (back.PatientID, str(back.PatientName), back.Modality) == ("FROM-JSON", "Over^Ride", "US")

    step.PatientID = "FROM-DCM"
    step.file_meta = FileMetaDataset()
    step.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    step.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    step.file_meta.MediaStorageSOPInstanceUID = uid
    step.save_as(tmp_path / "step.dcm", enforce_file_format=True)
    other = str(generate_uid())
    done = cli(port, "create", "--uid", other, "-f", str(tmp_path / "step.dcm"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "FROM-DCM" in cli(port, "get", other, "PatientID").stdout


def test_refusals_and_their_exit_status(shared_node, tmp_path):
    port = shared_node.port
    uid = str(generate_uid())
    assert cli(port, "create", "--uid", uid, "-k", "Modality=MR").returncode == 0
    done = cli(port, "create", "--uid", uid, "-k", "Modality=MR")
    assert done.returncode == 1 and "0x0111" in done.stderr and done.stdout == ""
    done = cli(port, "create", "-k", "PatientID=no-modality")
    assert done.returncode == 1 and "0x0120" in done.stderr and "Modality (0008,0060)" in done.stderr
    done = cli(port, "create", "-k", "Modality=CT", "-k", "PerformedProcedureStepStatus=COMPLETED")
    assert done.returncode == 1 and "0x0106" in done.stderr
    done = cli(port, "set", "1.2.3.4.5.6.7", "-k", "PerformedProcedureStepDescription=x")
    assert done.returncode == 1 and "0x0112" in done.stderr
    done = cli(port, "set", uid, "-k", "Modality=CT")
    assert done.returncode == 1 and "0x0106" in done.stderr
    done = cli(port, "get", uid, "DeviceSerialNumber", "Modality")
    assert done.returncode == 0 and "0x0001" in done.stderr and "MR" in done.stdout  # a warning
    done = cli(port, "get", "1.2.3.4.5.6.7")
    assert done.returncode == 1 and "0x0112" in done.stderr
    done = cli(port, "create", "-k", "NotAKeyword=1")
    assert done.returncode == 2 and "NotAKeyword" in done.stderr
    done = run([*DIMSEKIT_CLI, "mpps", "get", "127.0.0.1", "1", "1.2.3", "-to", "5"], timeout=30)
    assert done.returncode == 1 and "refused" in done.stderr
    shared_node.assert_healthy()
