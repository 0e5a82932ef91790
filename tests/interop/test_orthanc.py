"""Orthanc, a PACS many hospitals run, against dimsekit -- both ways.

Orthanc (``/usr/sbin/Orthanc``, installed by ``.ci/run`` with apt-get like DCMTK) runs on free
ports with its own storage in ``tmp_path`` and a Maximum Length Received of 4,096 bytes, the
smallest it allows: every data set either side sends it is cut into PDUs of its size (LESSONS.md
15: a client that sent larger PDUs than Orthanc takes broke against it).  Its REST API (on
localhost only) drives it as an SCU and shows what it stored.

* dimsekit's tools as Orthanc's peer: ``echo``, ``store`` (several SOP classes and transfer
  syntaxes, compressed ones as they are), ``find``, ``get``, ``move`` to a dimsekit node, and
  ``commit`` with the report on an association Orthanc opens back;
* Orthanc as the node's peer: C-ECHO, C-STORE, C-FIND, C-MOVE (the node sends to Orthanc),
  storage commitment (the report on a new association to Orthanc) and a worklist query;
* ``find -W`` against Orthanc's worklist plugin;
* all of it over DICOM TLS (PS3.15 B.1) both ways, certificates checked both ways.

Every data set is compared, element by element, with the file it came from.

Orthanc 1.10 has no setting for the address it listens on: like DCMTK's storescp in the other
tests, it listens on every interface, on free ports; everything here connects to 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian

from tests.interop.conftest import (
    DIMSEKIT_CLI,
    Node,
    _finish_node,
    free_port,
    run,
    same_data_set,
    start_node,
    stop,
    tiny_ct,
    wait_for_port,
)
from tests.interop.test_node_tls import start_tls_node
from tests.interop.test_worklist_dcmtk import save, wl_item
from tests.tlscerts import make_tls_files

pytestmark = pytest.mark.interop

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
ORTHANC_AE = "ORTHANC"
NODE_AE = "DIMSEKIT"
#: the smallest Maximum Length Received Orthanc allows
ORTHANC_MAX_PDU = 4096


class Orthanc:
    """An Orthanc server in a subprocess: its DICOM port, its REST API, stopped by PID."""

    def __init__(self, workdir: Path, **settings: Any) -> None:
        assert ORTHANC_BIN.exists(), "Orthanc is missing: .ci/run installs it (apt-get install orthanc)"
        self.workdir = workdir
        #: what a test makes Orthanc log as an error on purpose (any other error line fails it)
        self.expected_errors: list[str] = []
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.http = free_port(), free_port()
        config = {
            "Name": "dimsekit-interop",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "storage"),
            "StorageCompression": False,
            "HttpPort": self.http,
            "RemoteAccessAllowed": False,  # the REST API answers localhost only
            "AuthenticationEnabled": False,
            "DicomPort": self.port,
            "DicomAet": ORTHANC_AE,
            "DicomCheckCalledAet": True,
            "MaximumPduLength": ORTHANC_MAX_PDU,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomScuTimeout": 20,
            "Plugins": [],
            "ConcurrentJobs": 1,
            **settings,
        }
        self.config = workdir / "orthanc.json"
        self.config.write_text(json.dumps(config))
        self.log = workdir / "orthanc.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([str(ORTHANC_BIN), str(self.config)], cwd=workdir,
                                         stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, 30.0, self.proc)
            wait_for_port(self.http, 30.0, self.proc)
        except BaseException:
            self.stop()
            raise

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        code = stop(self.proc)
        assert code == 0, f"Orthanc exited with {code}:\n{self.log_text()}"

    def rest(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=data, method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                content = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Orthanc {method} {path}: {exc.code} {exc.read()!r}\n{self.log_text()}") from None
        return content if raw else json.loads(content or b"null")

    def add_modality(self, name: str, ae_title: str, port: int) -> None:
        self.rest("PUT", f"/modalities/{name}", {"AET": ae_title, "Host": "127.0.0.1", "Port": port})

    def upload(self, path: Path) -> str:
        return self.rest("POST", "/instances", path.read_bytes())["ID"]

    def instance_id(self, sop_instance_uid: str) -> str | None:
        found = self.rest("POST", "/tools/lookup", sop_instance_uid.encode())
        ids = [entry["ID"] for entry in found if entry["Type"] == "Instance"]
        return ids[0] if ids else None

    def instance_count(self) -> int:
        return int(self.rest("GET", "/statistics")["CountInstances"])

    def stored_copy(self, sop_instance_uid: str, where: Path) -> Path:
        """The Part 10 file Orthanc keeps for the instance, written to ``where``."""
        ident = self.instance_id(sop_instance_uid)
        assert ident is not None, f"Orthanc has no instance {sop_instance_uid}"
        where.write_bytes(self.rest("GET", f"/instances/{ident}/file", raw=True))
        return where

    def delete_all(self) -> None:
        for patient in self.rest("GET", "/patients"):
            self.rest("DELETE", f"/patients/{patient}")
        assert self.instance_count() == 0


@pytest.fixture
def orthanc(tmp_path: Path):
    server = Orthanc(tmp_path / "orthanc-run")
    yield server
    server.stop()
    errors = [line for line in server.log_text().splitlines()
              if re.match(r"E\d{4} ", line) and not any(text in line for text in server.expected_errors)]
    assert not errors, server.log_text()


def _files(directory: Path) -> dict[str, Path]:
    """Data sets of several SOP classes and transfer syntaxes, by SOP Instance UID (new UIDs for the
    tiny ones; pydicom's test files as they are: JPEG 2000, RLE, an RT Plan without pixels)."""
    directory.mkdir(parents=True)
    files: dict[str, Path] = {}
    first = tiny_ct(patient_id="ORTHANC-1", patient_name="Müller^Jürgen")
    first.SpecificCharacterSet = "ISO_IR 192"
    first.StudyDescription = "Thorax"
    second = tiny_ct(study=first.StudyInstanceUID, patient_id="ORTHANC-1", patient_name="Müller^Jürgen")
    second.SpecificCharacterSet = "ISO_IR 192"
    second.SeriesInstanceUID = first.SeriesInstanceUID
    second.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian  # a second syntax for the same SOP class
    large = tiny_ct(patient_id="ORTHANC-2", patient_name="Large^Image")
    large.Rows = large.Columns = 512  # 512 KiB of pixels: 128 PDUs of Orthanc's size
    large.PixelData = bytes(range(256)) * 2048
    for name, ds in (("tiny-explicit.dcm", first), ("tiny-implicit.dcm", second), ("large.dcm", large)):
        ds.save_as(directory / name, enforce_file_format=True)
    for name in ("JPEG2000.dcm", "SC_rgb_rle.dcm", "rtplan.dcm", "CT_small.dcm"):
        shutil.copy(get_testdata_file(name), directory / name)
    for path in sorted(directory.iterdir()):
        files[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    assert len(files) == 7
    return files


def _cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    done = run([*DIMSEKIT_CLI, *args], timeout=timeout)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def _node_copy(node: Node, sop_instance_uid: str) -> Path:
    found = list((node.workdir / "data").rglob(f"{sop_instance_uid}.dcm"))
    assert len(found) == 1, f"the node holds {found} for {sop_instance_uid}"
    return found[0]


def test_dimsekit_tools_against_orthanc(tmp_path: Path, orthanc: Orthanc):
    files = _files(tmp_path / "sent")
    node = start_node(tmp_path, "--data-dir", str(tmp_path / "data"))
    try:
        orthanc.add_modality("node", NODE_AE, node.port)
        peer = ["-aec", ORTHANC_AE, "-to", "20", "127.0.0.1", str(orthanc.port)]

        echo = _cli("echo", *peer)
        assert echo.returncode == 0 and "1/1 Success" in echo.stdout, echo.stdout + echo.stderr

        # store: every instance arrives, its data set the one sent (compressed ones as they are)
        sent = _cli("store", *peer, str(tmp_path / "sent"))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "Stored 7 of 7 instances" in sent.stdout and "7 Success" in sent.stdout, sent.stdout
        assert orthanc.instance_count() == 7
        for uid, path in files.items():
            same_data_set(orthanc.stored_copy(uid, tmp_path / "orthanc-copy.dcm"), path)

        # find: the studies, at the image level the instances of one series, texts in UTF-8
        studies = json.loads(_cli("find", *peer, "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID",
                                  "-k", "PatientName", "--json").stdout)
        study_uids = {match["0020000D"]["Value"][0] for match in studies}
        expected = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files.values()}
        assert study_uids == expected
        tiny = dcmread(tmp_path / "sent" / "tiny-explicit.dcm")
        images = json.loads(_cli("find", *peer, "-S", "-k", "QueryRetrieveLevel=IMAGE", "-k",
                                 f"StudyInstanceUID={tiny.StudyInstanceUID}", "-k",
                                 f"SeriesInstanceUID={tiny.SeriesInstanceUID}", "-k", "SOPInstanceUID",
                                 "-k", "PatientName", "--json").stdout)
        assert sorted(m["00080018"]["Value"][0] for m in images) == sorted(
            str(dcmread(tmp_path / "sent" / n).SOPInstanceUID) for n in ("tiny-explicit.dcm", "tiny-implicit.dcm"))
        assert {m["00100010"]["Value"][0]["Alphabetic"] for m in images} == {"Müller^Jürgen"}

        # get: the study comes back over Orthanc's association, whole
        got = _cli("get", *peer, "-S", "-k", "QueryRetrieveLevel=STUDY", "-k",
                   f"StudyInstanceUID={tiny.StudyInstanceUID}", "--out-dir", str(tmp_path / "got"))
        assert got.returncode == 0, got.stdout + got.stderr
        assert "2 completed, 0 failed" in got.stdout + got.stderr
        # a JPEG 2000 image: Orthanc cannot transcode it to what get proposes first, and says so
        # with a failed C-GET-RSP that carries its Failed SOP Instance UID List after the command
        # elements; get reads it, and asks again in the image's own transfer syntax
        j2k = dcmread(tmp_path / "sent" / "JPEG2000.dcm", stop_before_pixels=True)
        orthanc.expected_errors += ["C-GET SCP: Cannot transcode", "IGetRequestHandler Failed: Not implemented yet"]
        got = _cli("get", *peer, "-v", "-S", "-k", "QueryRetrieveLevel=STUDY", "-k",
                   f"StudyInstanceUID={j2k.StudyInstanceUID}", "--out-dir", str(tmp_path / "got"))
        assert got.returncode == 0, got.stdout + got.stderr
        assert "1 completed (1 of them on a retry in their own transfer syntaxes), 0 failed" in got.stdout + got.stderr
        received = sorted((tmp_path / "got").iterdir())
        assert len(received) == 3
        for path in received:
            same_data_set(path, files[str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)])

        # move: Orthanc sends every study to the node, in PDUs of the node's size
        for study in sorted(expected):
            moved = _cli("move", *peer, "-S", "-aet", "MOVER", "--dest", NODE_AE, "-k", "QueryRetrieveLevel=STUDY",
                         "-k", f"StudyInstanceUID={study}")
            assert moved.returncode == 0, moved.stdout + moved.stderr
            assert "0 failed" in moved.stdout + moved.stderr
        for uid, path in files.items():
            same_data_set(_node_copy(node, uid), path)
        # a destination Orthanc does not know: it answers C000 (PS3.4 has A801), and move says what
        # to check
        orthanc.expected_errors += ["NOSUCHAE", "IMoveRequestHandler Failed: Accessing an inexistent item"]
        unknown = _cli("move", *peer, "-S", "-aet", "MOVER", "--dest", "NOSUCHAE", "-k", "QueryRetrieveLevel=STUDY",
                       "-k", f"StudyInstanceUID={tiny.StudyInstanceUID}")
        assert unknown.returncode == 1, unknown.stdout + unknown.stderr
        assert ("(no sub-operation was attempted: does the peer know the move destination NOSUCHAE, its AE title, "
                "host and port?)") in unknown.stderr

        # commit: Orthanc has the instances it was sent, not one it was not; its report comes on
        # an association it opens to the tool
        listen = free_port()
        orthanc.add_modality("committer", "COMMITTER", listen)
        stranger = tmp_path / "never-sent.dcm"
        tiny_ct().save_as(stranger, enforce_file_format=True)
        committed = _cli("commit", *peer, "-aet", "COMMITTER", "--port", str(listen), "--listen-interface",
                         "127.0.0.1", str(tmp_path / "sent"), str(stranger), timeout=90)
        assert committed.returncode == 1, committed.stdout + committed.stderr
        lines = committed.stdout.splitlines()
        for uid, path in files.items():
            assert f"committed  {uid}  {path}" in lines, committed.stdout
        assert any(line.startswith("failed") and str(stranger) in line for line in lines), committed.stdout
        assert "Event Type 2: 7 committed, 1 failed" in committed.stdout
        # without --port the report cannot come: Orthanc reports on an association it opens (to a
        # port where nothing listens here), and the tool says what to do
        orthanc.add_modality("noport", "NOPORT", free_port())
        orthanc.expected_errors.append("NOPORT")
        waited = _cli("commit", *peer, "-aet", "NOPORT", "-to", "3", "--wait", str(stranger), timeout=60)
        assert waited.returncode == 1, waited.stdout + waited.stderr
        assert ("no N-EVENT-REPORT on the association within 3 s (an SCP that reports on an association of its "
                "own needs --port N, and to know AE NOPORT at this host and that port)") in waited.stderr
        node.assert_healthy()
    finally:
        _finish_node(node)


def test_orthanc_against_the_node(tmp_path: Path, orthanc: Orthanc):
    files = _files(tmp_path / "sent")
    worklist = tmp_path / "worklist"
    save(wl_item("Orthanc^Ödön", "WL-ORTHANC", "CT", "20261129", "0930", station="ORTHANC"), worklist / "a.wl")
    config = (
        f'[[remote]]\nae_title = "{ORTHANC_AE}"\nhost = "127.0.0.1"\nport = {orthanc.port}\n\n'
        f'[plugins.worklist]\nfolder = "{worklist}"\n'
    )
    node = start_node(tmp_path, "--data-dir", str(tmp_path / "data"), config=config)
    try:
        orthanc.add_modality("node", NODE_AE, node.port)
        ids = [orthanc.upload(path) for path in files.values()]
        assert orthanc.instance_count() == 7

        assert orthanc.rest("POST", "/modalities/node/echo", {}) == {}

        # C-STORE from Orthanc: every instance, its data set the one Orthanc was given
        pushed = orthanc.rest("POST", "/modalities/node/store", {"Resources": ids, "Synchronous": True})
        assert pushed["InstancesCount"] == 7 and pushed["FailedInstancesCount"] == 0, pushed
        for uid, path in files.items():
            same_data_set(_node_copy(node, uid), path)

        # C-FIND from Orthanc: the node's studies
        query = orthanc.rest("POST", "/modalities/node/query",
                             {"Level": "Study", "Query": {"StudyInstanceUID": "", "PatientName": "", "ModalitiesInStudy": ""}})
        answers = orthanc.rest("GET", f"/queries/{query['ID']}/answers?expand&simplify")
        expected = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files.values()}
        assert {answer["StudyInstanceUID"] for answer in answers} == expected
        names = {answer["StudyInstanceUID"]: answer.get("PatientName") for answer in answers}
        tiny = dcmread(tmp_path / "sent" / "tiny-explicit.dcm")
        assert names[str(tiny.StudyInstanceUID)] == "Müller^Jürgen"

        # C-MOVE from Orthanc: the node sends everything back to Orthanc (emptied first)
        orthanc.delete_all()
        moved = orthanc.rest("POST", f"/queries/{query['ID']}/retrieve",
                             {"TargetAet": ORTHANC_AE, "Synchronous": True})
        assert len(moved["Query"]) == len(expected), moved
        assert orthanc.instance_count() == 7
        for uid, path in files.items():
            same_data_set(orthanc.stored_copy(uid, tmp_path / "orthanc-copy.dcm"), path)
        node.wait_log(rf"association requestor .* called={ORTHANC_AE} .* requested=\[C-STORE \d+\]")

        # storage commitment from Orthanc: the report on a new association to Orthanc
        references = [[str(dcmread(p, stop_before_pixels=True).SOPClassUID), uid] for uid, p in files.items()]
        references.append(["1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.99.1"])
        job = orthanc.rest("POST", "/modalities/node/storage-commitment", {"DicomInstances": references, "Timeout": 20})
        report = _until(lambda: _finished(orthanc.rest("GET", job["Path"])), 30.0)
        assert report["Status"] == "Failure", report
        assert {item["SOPInstanceUID"] for item in report["Success"]} == set(files)
        assert [(item["SOPInstanceUID"], item["FailureReason"]) for item in report["Failures"]] == [
            ("1.2.826.0.1.3680043.8.498.99.1", 0x0112)]
        node.wait_log(r"storage commitment .*: report \(event type 2: 7 committed, 1 failed\) delivered to ORTHANC")

        # a worklist query from Orthanc
        items = orthanc.rest("POST", "/modalities/node/find-worklist?simplify",
                             {"PatientName": "", "PatientID": "",
                              "ScheduledProcedureStepSequence": [{"Modality": "CT", "ScheduledStationAETitle": ""}]})
        assert [(item["PatientName"], item["PatientID"]) for item in items] == [("Orthanc^Ödön", "WL-ORTHANC")], items
        node.assert_healthy()
    finally:
        _finish_node(node)


def _finished(status: dict[str, Any]) -> dict[str, Any] | None:
    return None if status.get("Status") == "Pending" else status


def _until(poll, timeout: float) -> Any:
    """``poll()``'s first answer other than None, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = poll()
        if result is not None:
            return result
        time.sleep(0.1)
    raise AssertionError(f"no answer within {timeout} s")


def test_worklist_from_orthancs_plugin(tmp_path: Path):
    folder = tmp_path / "worklists"
    save(wl_item("Wörk^List", "WL-1", "CT", "20261129", "0930"), folder / "a.wl")
    save(wl_item("Other^Item", "WL-2", "MR", "20261130", "1000", station="MR1"), folder / "b.wl")
    orthanc = Orthanc(tmp_path / "orthanc-run", Plugins=["/usr/share/orthanc/plugins/libModalityWorklists.so"],
                      Worklists={"Enable": True, "Database": str(folder)}, DicomAlwaysAllowFindWorklist=True)
    try:
        peer = ["-aec", ORTHANC_AE, "-to", "20", "127.0.0.1", str(orthanc.port)]
        every = _cli("find", "-W", *peer, "--json")
        assert every.returncode == 0, every.stdout + every.stderr
        items = json.loads(every.stdout)
        assert sorted(item["00100010"]["Value"][0]["Alphabetic"] for item in items) == ["Other^Item", "Wörk^List"]
        mr = _cli("find", "-W", *peer, "--json", "-k", "ScheduledProcedureStepSequence[0].Modality=MR")
        (item,) = json.loads(mr.stdout)
        assert item["00100020"]["Value"] == ["WL-2"]
        assert item["00400100"]["Value"][0]["00400001"]["Value"] == ["MR1"]
    finally:
        orthanc.stop()


def test_tls_both_ways(tmp_path: Path):
    """Orthanc's DICOM TLS and the node's: each end presents a certificate of the test CA and
    checks the other's; one of a CA it does not trust is refused."""
    certs = make_tls_files(tmp_path / "certs")
    orthanc = Orthanc(tmp_path / "orthanc-run", DicomTlsEnabled=True, DicomTlsCertificate=str(certs.node_cert),
                      DicomTlsPrivateKey=str(certs.node_key), DicomTlsTrustedCertificates=str(certs.ca),
                      DicomTlsRemoteCertificateRequired=True)
    try:
        (tmp_path / "node").mkdir()
        node = start_tls_node(tmp_path / "node", certs, {ORTHANC_AE: (orthanc.port, True)})
        try:
            files = _files(tmp_path / "sent")
            secure = ["+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca)]
            peer = ["-aec", ORTHANC_AE, "-to", "20", "127.0.0.1", str(orthanc.port)]
            sent = _cli("store", *secure, *peer, str(tmp_path / "sent"))
            assert sent.returncode == 0 and "7 Success" in sent.stdout, sent.stdout + sent.stderr
            for uid, path in files.items():
                same_data_set(orthanc.stored_copy(uid, tmp_path / "orthanc-copy.dcm"), path)
            found = _cli("find", *secure, *peer, "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "--json")
            studies = {match["0020000D"]["Value"][0] for match in json.loads(found.stdout)}
            assert studies == {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in files.values()}
            rogue = _cli("echo", "+tls", str(certs.rogue_key), str(certs.rogue_cert), "+cf", str(certs.ca), *peer)
            assert rogue.returncode == 1 and "TLS handshake failed" in rogue.stderr, rogue.stdout + rogue.stderr
            orthanc.expected_errors.append("TLS")  # it logs the rogue handshake it refused

            # Orthanc -> the node's TLS port: C-STORE, then C-MOVE back to Orthanc over TLS
            orthanc.rest("PUT", "/modalities/node", {"AET": NODE_AE, "Host": "127.0.0.1", "Port": node.tls_port,
                                                     "UseDicomTls": True})
            ids = orthanc.rest("GET", "/instances")
            pushed = orthanc.rest("POST", "/modalities/node/store", {"Resources": ids, "Synchronous": True})
            assert pushed["InstancesCount"] == 7 and pushed["FailedInstancesCount"] == 0, pushed
            for uid, path in files.items():
                found_files = list(node.data.rglob(f"{uid}.dcm"))
                assert len(found_files) == 1
                same_data_set(found_files[0], path)
            query = orthanc.rest("POST", "/modalities/node/query", {"Level": "Study", "Query": {}})
            orthanc.delete_all()
            orthanc.rest("POST", f"/queries/{query['ID']}/retrieve", {"TargetAet": ORTHANC_AE, "Synchronous": True})
            assert orthanc.instance_count() == 7
            node.node.wait_log(rf"association requestor .* called={ORTHANC_AE} .* requested=\[C-STORE \d+\]")
            assert node.tls_failures() == 0
        finally:
            _finish_node(node.node)
    finally:
        orthanc.stop()
