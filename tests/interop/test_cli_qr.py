"""``dimsekit find / get / move`` against real Query/Retrieve SCPs: DCMTK
dcmqrscp over a test archive (its dcmqrscp.cfg written here, files indexed
with dcmqridx) and a pynetdicom AE whose handlers serve a few data sets
(pynetdicom's own qrscp app: tests/interop/test_cli_qr_qrscp.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from tests.interop.conftest import (
    DIMSEKIT_CLI,
    SAME_CODE,
    _finish_node,
    dcmtk,
    free_port,
    run,
    same_data_set,
    start_node,
    stop,
    tiny_ct,
    wait_for_port,
)

pytestmark = pytest.mark.interop

ROOT = "1.2.826.0.1.3680043.8.498.7745"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY_FIND, STUDY_GET, STUDY_MOVE = ("1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.2.2.3",
                                     "1.2.840.10008.5.1.4.1.2.2.2")
PATIENT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
TS = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]

#: (file, patient name, patient ID, study number, series number, instance number, study date)
CORPUS = [
    ("CT_small.dcm", "DOE^JOHN", "P1", 1, 1, 1, "20240101"),
    ("CT_small.dcm", "DOE^JOHN", "P1", 1, 1, 2, "20240101"),
    ("MR_small.dcm", "DOE^JANE", "P2", 2, 1, 1, "20240315"),
    ("CT_small.dcm", "ROE^RICHARD", "P3", 3, 1, 1, "20230704"),
]


def study_uid(n: int) -> str:
    return f"{ROOT}.{n}"


def make_corpus(directory: Path) -> dict[str, Dataset]:
    """Write the corpus as Part 10 files; SOP Instance UID -> data set."""
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, patient, pid, study, series, number, date in CORPUS:
        ds = dcmread(get_testdata_file(name, download=False))
        ds.PatientName, ds.PatientID, ds.StudyDate = patient, pid, date
        ds.StudyInstanceUID = study_uid(study)
        ds.SeriesInstanceUID = f"{study_uid(study)}.{series}"
        ds.SOPInstanceUID = f"{study_uid(study)}.{series}.{number}"
        ds.InstanceNumber = number
        ds.AccessionNumber = f"ACC{study}"
        ds.StudyDescription = f"study {study}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(directory / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        out[ds.SOPInstanceUID] = ds
    return out


def cli(command: str, port: int, *args: str, called: str = "QRSCP", timeout: float = 60) -> subprocess.CompletedProcess:
    return run([*DIMSEKIT_CLI, command, "127.0.0.1", str(port), "-aec", called, "-aet", "CLIQR", "-to", "10",
                *args], timeout=timeout)


def received(directory: Path) -> dict[str, Dataset]:
    return {ds.SOPInstanceUID: ds for ds in (dcmread(p) for p in sorted(directory.glob("*.dcm")))}


# -- DCMTK dcmqrscp ------------------------------------------------------------------------------


@dataclass
class QrScp:
    port: int
    store_port: int
    corpus: dict[str, Dataset]
    proc: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def dcmqrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QrScp]:
    base = tmp_path_factory.mktemp("dcmqrscp")
    storage = base / "db"
    corpus = make_corpus(storage)
    done = run([dcmtk("dcmqridx"), str(storage), *map(str, sorted(storage.glob("*.dcm")))])
    assert done.returncode == 0, done.stdout + done.stderr
    port, store_port = free_port(), free_port()
    (base / "dcmqrscp.cfg").write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 8\n"
        "HostTable BEGIN\n"
        f"cliqr = (CLIQR, 127.0.0.1, {store_port})\n"
        "HostTable END\n"
        "VendorTable BEGIN\nVendorTable END\n"
        "AETable BEGIN\n"
        f"QRSCP {storage} R (200, 1024mb) ANY\n"
        "AETable END\n"
    )
    log = base / "dcmqrscp.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([dcmtk("dcmqrscp"), "-c", str(base / "dcmqrscp.cfg"), str(port)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=base)
    try:
        wait_for_port(port, 10.0, proc)
        yield QrScp(port, store_port, corpus, proc, log)
    finally:
        stop(proc)


def test_find_study_level_table_and_json(dcmqrscp):
    done = cli("find", dcmqrscp.port, "-k", "PatientName=DOE*")
    assert done.returncode == 0, done.stdout + done.stderr
    header = done.stdout.splitlines()[0].split()
    assert header[:2] == ["PatientName", "PatientID"] and "StudyInstanceUID" in header
    assert "DOE^JOHN" in done.stdout and "DOE^JANE" in done.stdout and "ROE" not in done.stdout
    assert "2 matches" in done.stderr

    done = cli("find", dcmqrscp.port, "-k", "StudyDate=20240101-20241231", "-k", "StudyInstanceUID", "--json")
    assert done.returncode == 0, done.stderr
    matches = [Dataset.from_json(d) for d in json.loads(done.stdout)]  # stdout is the JSON array, nothing else
    assert sorted(m.StudyInstanceUID for m in matches) == [study_uid(1), study_uid(2)]
    assert all(m.QueryRetrieveLevel == "STUDY" for m in matches)


def test_find_patient_and_series_levels_and_dicom_files(dcmqrscp, tmp_path):
    done = cli("find", dcmqrscp.port, "-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID",
               "-k", "PatientName", "--json")
    assert done.returncode == 0, done.stderr
    assert sorted(d["00100020"]["Value"][0] for d in json.loads(done.stdout)) == ["P1", "P2", "P3"]

    done = cli("find", dcmqrscp.port, "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid(1)}",
               "-k", "(0020,000E)", "-k", "0008,0060", "--out-dir", str(tmp_path / "rsp"))
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "rsp").iterdir())
    assert [f.name for f in files] == ["rsp0001.dcm"]
    series = dcmread(files[0])
    assert (series.SeriesInstanceUID, series.Modality) == (f"{study_uid(1)}.1", "CT")


def test_find_refused_and_failure_statuses(dcmqrscp):
    done = cli("find", dcmqrscp.port, called="NOSUCHAE")
    assert done.returncode == 1
    assert "reject" in done.stderr.lower(), done.stderr
    assert done.stdout == ""
    done = cli("find", dcmqrscp.port, "-k", "QueryRetrieveLevel=FRAME")
    assert done.returncode == 2 and "FRAME" in done.stderr


def test_get_writes_the_instances(dcmqrscp, tmp_path):
    out = tmp_path / "got"
    done = cli("get", dcmqrscp.port, "-k", f"StudyInstanceUID={study_uid(1)}", "--out-dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 completed, 0 failed" in done.stdout and "2 files" in done.stdout
    got = received(out)
    assert sorted(got) == [f"{study_uid(1)}.1.1", f"{study_uid(1)}.1.2"]
    for uid, ds in got.items():
        assert ds.PixelData == dcmread_source(dcmqrscp, uid).PixelData
        assert ds.file_meta.MediaStorageSOPInstanceUID == uid

    done = cli("get", dcmqrscp.port, "-k", f"StudyInstanceUID={ROOT}.999", "--out-dir", str(tmp_path / "none"))
    assert done.returncode == 0, done.stderr
    assert "0 completed" in done.stdout


def dcmread_source(scp: QrScp, uid: str) -> Dataset:
    return scp.corpus[uid]


def test_move_to_ourselves_and_to_an_unknown_destination(dcmqrscp, tmp_path):
    out = tmp_path / "moved"
    done = cli("move", dcmqrscp.port, "-k", "PatientName=DOE*", "-k", "QueryRetrieveLevel=STUDY",
               "--store-port", str(dcmqrscp.store_port), "--out-dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 completed, 0 failed" in done.stdout
    assert sorted(received(out)) == sorted(uid for uid in dcmqrscp.corpus if not uid.startswith(study_uid(3)))

    done = cli("move", dcmqrscp.port, "--dest", "NOWHERE", "-k", f"StudyInstanceUID={study_uid(2)}")
    assert done.returncode == 1
    assert "0xA801" in done.stderr and "Move Destination unknown" in done.stderr


# -- a pynetdicom SCP ----------------------------------------------------------------------------------


class PynetdicomQr:
    """A pynetdicom AE in this process's threads: FIND (Study Root, Patient Root,
    Worklist), GET and MOVE over the corpus, recording what it was asked."""

    def __init__(self, corpus: dict[str, Dataset], destinations: dict[str, tuple[str, int]]) -> None:
        self.corpus = corpus
        self.destinations = destinations
        self.identifiers: list[Dataset] = []
        self.cancelled = False
        ae = AE(ae_title="PYNQR")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        for sop in (STUDY_FIND, PATIENT_FIND, WORKLIST_FIND, STUDY_GET, STUDY_MOVE):
            ae.add_supported_context(sop, TS)
        for sop in (CT, MR):
            ae.add_supported_context(sop, TS, scu_role=True, scp_role=True)
            ae.add_requested_context(sop, TS)
        handlers = [(evt.EVT_C_FIND, self.on_find), (evt.EVT_C_GET, self.on_get), (evt.EVT_C_MOVE, self.on_move)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def matches(self, identifier: Dataset) -> list[Dataset]:
        uid = str(identifier.get("StudyInstanceUID", "") or "")
        return [ds for ds in self.corpus.values() if not uid or ds.StudyInstanceUID == uid]

    def on_find(self, event: Any) -> Any:
        identifier = event.identifier
        self.identifiers.append(identifier)
        for n in range(5):
            if event.is_cancelled:
                self.cancelled = True
                yield 0xFE00, None
                return
            answer = Dataset()
            answer.PatientName = f"PYN^{n}"
            answer.StudyInstanceUID = study_uid(100 + n)
            if "ScheduledProcedureStepSequence" in identifier:
                step = Dataset()
                step.Modality = "CT"
                answer.ScheduledProcedureStepSequence = [step]
            yield 0xFF00, answer
            time.sleep(0.05)  # room for a C-CANCEL between matches

    def on_get(self, event: Any) -> Any:
        self.identifiers.append(event.identifier)
        found = self.matches(event.identifier)
        yield len(found)
        for ds in found:
            yield 0xFF00, ds

    def on_move(self, event: Any) -> Any:
        self.identifiers.append(event.identifier)
        destination = event.move_destination
        title = (destination.decode() if isinstance(destination, bytes) else destination).strip()
        if title not in self.destinations:
            yield None, None
            return
        yield self.destinations[title]
        found = self.matches(event.identifier)
        yield len(found)
        for ds in found:
            yield 0xFF00, ds

    def shutdown(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def pynetdicom_qr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PynetdicomQr]:
    corpus = make_corpus(tmp_path_factory.mktemp("pyn"))
    store_port = free_port()
    server = PynetdicomQr(corpus, {"CLIQR": ("127.0.0.1", store_port)})
    server.store_port = store_port  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.shutdown()


def test_pynetdicom_find_sends_the_keys_as_typed(pynetdicom_qr):
    done = cli("find", pynetdicom_qr.port, "-W", "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
               "-k", "(0040,0100)[0].(0040,0001)", "-k", "PatientName", "--json", called="PYNQR")
    assert done.returncode == 0, done.stderr
    matches = [Dataset.from_json(d) for d in json.loads(done.stdout)]
    assert [str(m.PatientName) for m in matches] == [f"PYN^{n}" for n in range(5)]
    assert matches[0].ScheduledProcedureStepSequence[0].Modality == "CT"
    sent = pynetdicom_qr.identifiers[-1]
    assert sorted(e.keyword for e in sent) == ["PatientName", "ScheduledProcedureStepSequence"]
    step = sent.ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT" and step["ScheduledStationAETitle"].is_empty


def test_pynetdicom_find_cancel(pynetdicom_qr):
    done = cli("find", pynetdicom_qr.port, "--cancel", "1", "--json", called="PYNQR")
    assert done.returncode == 0, done.stderr
    assert 1 <= len(json.loads(done.stdout)) < 5
    assert "Cancel" in done.stderr
    assert pynetdicom_qr.cancelled


def test_pynetdicom_get_and_move(pynetdicom_qr, tmp_path):
    done = cli("get", pynetdicom_qr.port, "-k", f"StudyInstanceUID={study_uid(1)}", "--out-dir", str(tmp_path / "g"),
               called="PYNQR")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(received(tmp_path / "g")) == [f"{study_uid(1)}.1.1", f"{study_uid(1)}.1.2"]
    assert pynetdicom_qr.identifiers[-1].QueryRetrieveLevel == "STUDY"

    done = cli("move", pynetdicom_qr.port, "-k", f"StudyInstanceUID={study_uid(2)}",
               "--store-port", str(pynetdicom_qr.store_port), "--out-dir", str(tmp_path / "m"), called="PYNQR")
    assert done.returncode == 0, done.stdout + done.stderr
    moved = received(tmp_path / "m")
    assert list(moved) == [f"{study_uid(2)}.1.1"]
    assert moved[f"{study_uid(2)}.1.1"].SOPClassUID == MR
    assert "1 completed, 0 failed" in done.stdout


def test_datetime_matching_a_peer_does_not_agree_to_is_named(pynetdicom_qr, dcmqrscp):
    # neither pynetdicom nor dcmqrscp answers C-FIND extended negotiation: the query goes ahead without it
    for port, called in ((pynetdicom_qr.port, "PYNQR"), (dcmqrscp.port, "QRSCP")):
        done = cli("find", port, "--datetime", "-k", "PatientName=DOE*", "--json", called=called)
        assert done.returncode == 0, done.stderr
        assert "did not agree to combined date and time matching" in done.stderr, done.stderr
        assert json.loads(done.stdout), f"{called}: no matches"


def test_get_writes_large_and_small_instances_into_their_files_as_they_arrive(tmp_path):
    """From a twistd node: a 6 MiB instance (past the 1 MiB a spool keeps in memory) and a
    tiny one.  Each goes into its file as it arrives (``.<name>.part``, renamed once
    complete): the same data sets as sent, and nothing left beside them."""
    node = start_node(tmp_path)
    try:
        study = f"{ROOT}.6000"
        sent = {}
        for rows in (1024, 4):  # 3 frames of 1024 x 1024 x 16 bits: 6 MiB
            ct = tiny_ct(study=study)
            ct.Rows = ct.Columns = rows
            ct.NumberOfFrames = 3 if rows > 4 else 1
            ct.PixelData = bytes(range(256)) * (rows * rows * 2 * int(ct.NumberOfFrames) // 256)
            path = tmp_path / f"sent-{rows}.dcm"
            ct.save_as(path, enforce_file_format=True)
            sent[ct.SOPInstanceUID] = path
        stored = run([dcmtk("storescu"), "-aec", "DIMSEKIT", "127.0.0.1", str(node.port), *map(str, sent.values())],
                     timeout=60)
        assert stored.returncode == 0, stored.stdout + stored.stderr
        out = tmp_path / "got"
        done = run([*DIMSEKIT_CLI, "get", "127.0.0.1", str(node.port), "-aec", "DIMSEKIT", "-to", "10",
                    "-k", f"StudyInstanceUID={study}", "--out-dir", str(out)], timeout=60,
                   env={**os.environ, **SAME_CODE})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 completed, 0 failed" in done.stdout
        assert sorted(p.name for p in out.iterdir()) == sorted(f"{uid}.dcm" for uid in sent)  # no .part left
        for uid, path in sent.items():
            same_data_set(out / f"{uid}.dcm", path)
        node.assert_healthy()
    finally:
        _finish_node(node)
