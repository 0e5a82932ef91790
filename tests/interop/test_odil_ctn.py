"""Two more implementations of their own against dimsekit: Odil (C++, its ``odil`` tool) and the
RSNA's Central Test Node (CTN, in C), both from the distribution's packages (``.ci/run``
installs them with apt-get, as it does DCMTK and Orthanc).

* **odil against the node**: echo; store of the seven data sets of the Orthanc test (JPEG 2000
  and RLE included: odil sends them on an uncompressed presentation context, their compressed
  fragments labelled Explicit VR Little Endian -- the node refuses them 0xC000 and keeps
  nothing, where it once stored files that said native pixels and held fragments); find, UTF-8
  names; get.
* **CTN against the node**: ``dicom_echo``; ``send_image`` (it sends every instance of a SOP
  class in the transfer syntax of the first: RLE labelled JPEG 2000, which the node refuses
  0xC000 where it once stored it); a worklist query by ``mwlQuery``; a film printed by ``print_client`` (Basic Grayscale Print
  Management: film session, film box, four image boxes, N-ACTION, N-DELETE).
* **dimsekit against CTN's ``simple_storage``**: ``echo``, ``store``, and a C-MOVE from the node.

Every data set stored is compared, element by element, with the file it came from.  Like
DCMTK's storescp in the other tests, ``simple_storage`` listens on every interface (it takes
only a port), on a free port; everything connects to 127.0.0.1.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.interop.conftest import (
    DIMSEKIT_CLI,
    _finish_node,
    free_port,
    run,
    same_data_set,
    start_node,
    stop,
)
from tests.interop.test_orthanc import _files, _node_copy
from tests.interop.test_worklist_dcmtk import save, wl_item

pytestmark = pytest.mark.interop

ODIL = "/usr/bin/odil"
NODE_AE = "DIMSEKIT"
COMPRESSED = ("JPEG2000.dcm", "SC_rgb_rle.dcm")


def _tool(path: str) -> str:
    assert Path(path).exists(), f"{path} is missing: .ci/run installs it (apt-get install odil ctn)"
    return path


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"{done.args[0]} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _canonical(ds: Dataset, path: str = "") -> list[tuple[str, str, object]]:
    """(path, VR, value) of every element, sequences' items included; a DS as numbers."""
    out: list[tuple[str, str, object]] = []
    for element in ds:
        where = f"{path}{element.tag}"
        if element.VR == "SQ":
            for n, item in enumerate(element.value):
                out += _canonical(item, f"{where}[{n}]")
        elif element.VR == "DS" and element.value not in (None, ""):
            values = element.value if element.VM > 1 else [element.value]
            out.append((where, "DS", tuple(round(float(v), 9) for v in values)))
        else:
            out.append((where, element.VR, element.value))
    return out


def _same_but_ds_text(received: Path, sent: Path) -> None:
    """:func:`same_data_set`, the text of DS values aside: odil re-formats every decimal string
    it sends from a double (0.700000 goes out as .6999999999999999, 17 characters where DS
    allows 16); the node keeps what it received."""
    got, original = dcmread(received), dcmread(sent)
    for ds in (got, original):
        if 0xFFFCFFFC in ds:
            del ds[0xFFFCFFFC]
    assert _canonical(got) == _canonical(original)


def test_odil_against_the_node(tmp_path: Path):
    odil = _tool(ODIL)
    files = _files(tmp_path / "sent")
    node = start_node(tmp_path, "--data-dir", str(tmp_path / "data"))
    try:
        peer = ["127.0.0.1", str(node.port), "ODIL", NODE_AE]
        _ok(run([odil, "echo", *peer]))
        node.wait_log(r"calling=ODIL .*handled=\[C-ECHO 1\]")

        _ok(run([odil, "store", *peer, *map(str, files.values())], timeout=120))
        node.wait_log(r"storage: ODIL sent 5 instance\(s\), .*, 2 refused")
        for uid, path in files.items():
            if path.name in COMPRESSED:
                assert not list((tmp_path / "data").rglob(f"{uid}.dcm")), f"{path.name} was stored"
                line = node.wait_log(rf"C-STORE {re.escape(uid)} from ODIL refused with 0xC000")
                assert "encapsulated Pixel Data in Explicit VR Little Endian (PS3.5 A.4)" in line
            else:
                _same_but_ds_text(_node_copy(node, uid), path)

        study = str(dcmread(files[next(u for u, p in files.items() if p.name == "tiny-explicit.dcm")]).StudyInstanceUID)
        found = _ok(run([odil, "find", *peer, "study", "QueryRetrieveLevel=STUDY", "PatientID=ORTHANC-1",
                         "PatientName", "StudyInstanceUID", "NumberOfStudyRelatedInstances", "StudyDescription"]))
        assert found.stdout.startswith("1 answer\n"), found.stdout
        assert "['Müller^Jürgen']" in found.stdout and f"['{study}']" in found.stdout
        assert re.search(r"Number of Study Related Instances +0020,1208 IS \[2\]", found.stdout), found.stdout

        out = tmp_path / "got"
        out.mkdir()
        _ok(run([odil, "get", "-d", str(out), *peer, "study", "QueryRetrieveLevel=STUDY",
                 f"StudyInstanceUID={study}"], timeout=120))
        got = sorted(out.iterdir())
        assert len(got) == 2, got
        for path in got:
            same_data_set(path, files[path.name])  # odil names each file by its SOP Instance UID
        node.wait_log(r"C-GET of 2 instance\(s\) for ODIL: 2 completed, 0 failed")
        node.assert_healthy()
    finally:
        _finish_node(node)


def _preformatted(path: Path) -> Path:
    """A preformatted grayscale image as CTN's print_client reads one: a bare data set, Implicit
    VR Little Endian, 64 x 64 pixels of 8 bits."""
    ds = Dataset()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(64)) * 64
    ds.save_as(path, implicit_vr=True, little_endian=True)
    return path


def _worklist_query(path: Path) -> Path:
    """mwlQuery's query (it sends an empty one without ``-f``): names, IDs, the step's modality."""
    query = Dataset()
    query.PatientName = ""
    query.PatientID = ""
    step = Dataset()
    step.Modality = ""
    step.ScheduledStationAETitle = "CTN"
    step.ScheduledProcedureStepStartDate = ""
    query.ScheduledProcedureStepSequence = [step]
    query.save_as(path, implicit_vr=True, little_endian=True)
    return path


def test_ctn_against_the_node(tmp_path: Path):
    files = _files(tmp_path / "sent")
    worklist = tmp_path / "worklist"
    save(wl_item("Ctn^Alpha", "WL-CTN-1", "CT", "20261129", "0930", station="CTN"), worklist / "a.wl")
    save(wl_item("Ctn^Beta", "WL-CTN-2", "MR", "20261129", "1030", station="CTN"), worklist / "b.wl")
    save(wl_item("Other^Station", "WL-OTHER", "US", "20261129", "1100", station="ELSEWHERE"), worklist / "c.wl")
    node = start_node(tmp_path, "--data-dir", str(tmp_path / "data"),
                      config=f'[plugins.worklist]\nfolder = "{worklist}"\n')
    try:
        at = ["127.0.0.1", str(node.port)]
        echo = _ok(run([_tool("/usr/bin/dicom_echo"), "-c", NODE_AE, "-r", "2", *at]))
        assert echo.stdout.count("Successful operation") == 2, echo.stdout
        node.wait_log(r"calling=DICOM_ECHO .*handled=\[C-ECHO 2\]")

        sent = _ok(run([_tool("/usr/bin/send_image"), "-q", "-c", NODE_AE, *at, *map(str, files.values())],
                       timeout=120))
        statuses = re.findall(r"Status:\s+([0-9a-f]{4})", sent.stdout)
        assert sorted(statuses) == ["0000"] * 6 + ["c000"], sent.stdout
        for uid, path in files.items():
            if path.name == "SC_rgb_rle.dcm":  # sent on the JPEG 2000 context JPEG2000.dcm opened
                assert not list((tmp_path / "data").rglob(f"{uid}.dcm")), "RLE stored as JPEG 2000"
                line = node.wait_log(rf"C-STORE {re.escape(uid)} from DICOM_TEST refused with 0xC000")
                assert "RLE data in JPEG 2000 Image Compression" in line
            else:
                same_data_set(_node_copy(node, uid), path)

        query = _worklist_query(tmp_path / "mwl-query.dcm")
        items = _ok(run([_tool("/usr/bin/mwlQuery"), "-c", NODE_AE, "-f", str(query), *at]))
        statuses = re.findall(r"Status:\s+([0-9a-f]{4})", items.stdout)
        assert statuses == ["ff00", "ff00", "0000"], items.stdout  # the two items of station CTN
        names = re.findall(r"PAT Patient Name//(\S+)", items.stdout)
        assert sorted(names) == ["Ctn^Alpha", "Ctn^Beta"], items.stdout
        assert sorted(re.findall(r"ID Modality//(\S+)", items.stdout)) == ["CT", "MR"]

        image = _preformatted(tmp_path / "preformatted.dcm")
        printed = _ok(run([_tool("/usr/bin/print_client"), "-c", NODE_AE, *at, *[str(image)] * 4], timeout=60))
        assert "Received N-ACTION Response, status success" in printed.stdout, printed.stdout
        line = node.wait_log(r"print: Film Box \S+ printed to (\S+\.png) for MIR_PRINT_SCU")
        png = Path(re.search(r"printed to (\S+\.png)", line).group(1))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        node.wait_log(r"calling=MIR_PRINT_SCU .*handled=\[N-GET 1, N-CREATE 2, N-SET 4, N-ACTION 1, N-DELETE 1\]"
                      r".*ended: released by the peer")
        node.assert_healthy()
    finally:
        _finish_node(node)


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Wait (bounded) until something listens on ``port`` -- from /proc/net/tcp, not by
    connecting: ``simple_storage`` stops listening after a connection that closes without an
    A-ASSOCIATE-RQ (as a probe's does), every later one refused."""
    deadline = time.monotonic() + timeout
    suffix = f":{port:04X}"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"simple_storage exited with {proc.returncode}"
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            rows = [line.split() for line in Path(table).read_text().splitlines()[1:]]
            if any(row[1].endswith(suffix) and row[3] == "0A" for row in rows):  # 0A: LISTEN
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def _same_as_ctn_wrote_it(received: Path, sent: Path) -> None:
    """:func:`same_data_set` for a file of ``simple_storage``, which writes some (an RT Plan) as a
    bare data set, without File Meta Information."""
    got, original = dcmread(received, force=True), dcmread(sent)
    for ds in (got, original):
        if 0xFFFCFFFC in ds:
            del ds[0xFFFCFFFC]
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert got.get("PixelData") == original.get("PixelData")
    assert got == original


def test_dimsekit_against_ctns_storage_scp(tmp_path: Path):
    files = _files(tmp_path / "sent")
    plain = [files[uid] for uid in files if files[uid].name in ("tiny-explicit.dcm", "large.dcm", "rtplan.dcm",
                                                                  "CT_small.dcm")]
    received = tmp_path / "ctn"
    received.mkdir()
    port = free_port()
    log = (tmp_path / "simple_storage.log").open("wb")
    ctn = subprocess.Popen([_tool("/usr/bin/simple_storage"), "-s", "-c", "CTNSCP", "-x", str(received), str(port)],
                           cwd=received, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    node = None
    try:
        _wait_listening(port, ctn)
        echo = _ok(run([*DIMSEKIT_CLI, "echo", "-aec", "CTNSCP", "127.0.0.1", str(port)]))
        assert "1/1 Success" in echo.stdout

        _ok(run([*DIMSEKIT_CLI, "store", "-aec", "CTNSCP", "127.0.0.1", str(port), *map(str, plain)], timeout=120))
        for path in plain:
            (copy,) = received.rglob(_uid(path))  # simple_storage: DIR/<modality>/<SOP Instance UID>
            _same_as_ctn_wrote_it(copy, path)

        # a C-MOVE from the node to simple_storage: two instances of a study it never had
        shutil.rmtree(received)
        received.mkdir()
        node = start_node(tmp_path, "--data-dir", str(tmp_path / "data"),
                          config=f'[[remote]]\nae_title = "CTNSCP"\nhost = "127.0.0.1"\nport = {port}\n')
        pair = [files[uid] for uid in files if files[uid].name in ("tiny-explicit.dcm", "tiny-implicit.dcm")]
        _ok(run([*DIMSEKIT_CLI, "store", "127.0.0.1", str(node.port), *map(str, pair)]))
        study = str(dcmread(pair[0]).StudyInstanceUID)
        moved = _ok(run([*DIMSEKIT_CLI, "move", "127.0.0.1", str(node.port), "--dest", "CTNSCP",
                         "-k", f"StudyInstanceUID={study}"], timeout=120))
        assert "2 completed" in moved.stdout + moved.stderr, moved.stdout + moved.stderr
        for path in pair:
            (copy,) = received.rglob(_uid(path))
            _same_as_ctn_wrote_it(copy, path)
        node.wait_log(r"C-MOVE of 2 instance\(s\) for \S+: 2 completed, 0 failed")
        node.assert_healthy()
    finally:
        if node is not None:
            _finish_node(node)
        stop(ctn)
