"""``dimsekit get`` of a study holding compressed instances from C-GET SCPs that
do not transcode these (lossy: JPEG Baseline, JPEG 2000): a dimsekit node (twistd; it decompresses lossless syntaxes only, by default), pynetdicom's qrscp app and DCMTK
dcmqrscp.

The study: CT_small (Explicit VR Little Endian) in one series, and two
Secondary Capture instances -- SC_rgb_jpeg_dcmtk (JPEG Baseline) and
JPEG2000 (JPEG 2000) -- in another.  The first C-GET's storage contexts
agree on an uncompressed syntax, so the peer cannot send the compressed two:
those sub-operations fail, and the tool asks for them again on an
association proposing their own syntaxes (what the node says in Available
Transfer Syntax UID; pynetdicom's qrscp says neither the SOP class nor the
syntax, and cannot match a list of UIDs: the fallbacks).  dcmqrscp accepts
no compressed context unless configured to: they fail again, said so.

The tool and the node run this worktree's code (SAME_CODE), every process is
stopped by PID, every wait is bounded.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.interop.conftest import (
    DIMSEKIT_CLI,
    SAME_CODE,
    Node,
    _finish_node,
    dcmtk,
    free_port,
    run,
    same_data_set,
    start_node,
    start_pynetdicom_qrscp,
    stop,
    wait_for_port,
)

pytestmark = pytest.mark.interop

STUDY = "1.2.826.0.1.3680043.8.498.7746.1"
PATIENT = "GETZ1"
CT_UID = f"{STUDY}.1.1"
JPEG_UID = f"{STUDY}.2.1"
J2K_UID = f"{STUDY}.2.2"
#: (test file, series, SOP Instance UID, its transfer syntax)
CORPUS = [
    ("CT_small.dcm", 1, CT_UID, "1.2.840.10008.1.2.1"),
    ("SC_rgb_jpeg_dcmtk.dcm", 2, JPEG_UID, "1.2.840.10008.1.2.4.50"),
    ("JPEG2000.dcm", 2, J2K_UID, "1.2.840.10008.1.2.4.91"),
]


def make_study(directory: Path) -> dict[str, Path]:
    """The three files in one study, each in its own transfer syntax; SOP Instance UID -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, series, uid, syntax in CORPUS:
        ds = dcmread(get_testdata_file(name, download=False))
        assert ds.file_meta.TransferSyntaxUID == syntax, name
        ds.PatientID, ds.PatientName = PATIENT, "GET^COMPRESSED"
        ds.StudyInstanceUID = STUDY
        ds.SeriesInstanceUID = f"{STUDY}.{series}"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        path = directory / f"{uid}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert dcmread(path).file_meta.TransferSyntaxUID == syntax, f"{name} was re-encoded"
        files[uid] = path
    return files


def cli(*args: object, timeout: float = 90) -> subprocess.CompletedProcess:
    return run([*DIMSEKIT_CLI, *map(str, args)], timeout=timeout, env={**os.environ, **SAME_CODE})


def get(port: int, called: str, out: Path, *args: object) -> subprocess.CompletedProcess:
    return cli("get", "127.0.0.1", port, "-aec", called, "-to", "10", "--out-dir", out, *args)


def check_all_received(done: subprocess.CompletedProcess, out: Path, files: dict[str, Path]) -> None:
    """Exit 0, the summary counts the two compressed ones as fetched on the retry, every data set as sent."""
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 completed (2 of them on a retry in their own transfer syntaxes), 0 failed" in done.stdout, done.stdout
    assert "0x0000" in done.stdout and "failed   " not in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    got = sorted(p.name for p in out.glob("*.dcm"))
    assert got == sorted(f"{uid}.dcm" for uid in files), got
    for uid, sent in files.items():
        received = out / f"{uid}.dcm"
        same_data_set(received, sent)
        if uid != CT_UID:  # sent as stored (the CT in the uncompressed syntax the peer chose)
            assert dcmread(received).file_meta.TransferSyntaxUID == dcmread(sent).file_meta.TransferSyntaxUID


# -- a dimsekit node ----------------------------------------------------------------------------


@dataclass
class Filled:
    node: Node
    files: dict[str, Path]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    base = tmp_path_factory.mktemp("node-compressed")
    files = make_study(base / "study")
    n = start_node(base, env=SAME_CODE)
    try:
        stored = cli("store", "127.0.0.1", n.port, "-aec", "DIMSEKIT", "-to", "10", *files.values())
        assert stored.returncode == 0, stored.stdout + stored.stderr
        assert "Stored 3 of 3 instances" in stored.stdout, stored.stdout
        yield Filled(n, files)
    finally:
        _finish_node(n)


def test_get_fetches_the_compressed_instances_of_a_study_from_a_node(node, tmp_path):
    out = tmp_path / "got"
    done = get(node.node.port, "DIMSEKIT", out, "-k", f"StudyInstanceUID={STUDY}")
    check_all_received(done, out, node.files)
    assert done.stderr == "", done.stderr
    # the retry: a C-FIND association, then one proposing Secondary Capture only
    node.node.wait_log(r"contexts=\[Secondary Capture Image Storage, Study Root Query/Retrieve "
                       r"Information Model - GET\] handled=\[C-GET 1\]", timeout=10)
    node.node.assert_healthy()


def test_patient_root_get_fetches_them_too(node, tmp_path):
    out = tmp_path / "got"
    done = get(node.node.port, "DIMSEKIT", out, "-P", "-k", f"PatientID={PATIENT}")
    check_all_received(done, out, node.files)


def test_without_the_retry_the_compressed_instances_fail_as_before(node, tmp_path):
    out = tmp_path / "got"
    done = get(node.node.port, "DIMSEKIT", out, "--no-retry-compressed", "-k", f"StudyInstanceUID={STUDY}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 completed, 2 failed, 0 warning" in done.stdout, done.stdout
    assert f"failed   {JPEG_UID}" in done.stdout and f"failed   {J2K_UID}" in done.stdout
    assert "on a retry" not in done.stdout and "asked for again" not in done.stderr, done.stdout + done.stderr
    assert [p.name for p in out.glob("*.dcm")] == [f"{CT_UID}.dcm"]
    same_data_set(out / f"{CT_UID}.dcm", node.files[CT_UID])


# -- pynetdicom's qrscp app ----------------------------------------------------------------------


def test_get_fetches_them_from_pynetdicom_qrscp(tmp_path):
    """qrscp returns neither SOP Class UID nor Available Transfer Syntax UID, and
    fails a C-FIND or C-GET listing several UIDs: the tool guesses the classes
    (those received, the common image ones) and asks one UID per request."""
    files = make_study(tmp_path / "study")
    port = free_port()
    proc, log = start_pynetdicom_qrscp(tmp_path, port)
    try:
        stored = cli("store", "127.0.0.1", port, "-aec", "QRSCP", "-to", "10", *files.values())
        assert stored.returncode == 0, stored.stdout + stored.stderr + log.read_text(errors="replace")
        out = tmp_path / "got"
        done = get(port, "QRSCP", out, "-k", f"StudyInstanceUID={STUDY}")
        check_all_received(done, out, files)
        refused = get(port, "QRSCP", tmp_path / "off", "--no-retry-compressed", "-k", f"StudyInstanceUID={STUDY}")
        assert refused.returncode == 1 and f"failed   {J2K_UID}" in refused.stdout, refused.stdout + refused.stderr
    finally:
        stop(proc)


# -- DCMTK dcmqrscp ------------------------------------------------------------------------------


def test_dcmqrscp_accepting_no_compressed_context_fails_them_again(tmp_path):
    """dcmqrscp accepts only its preferred (by default uncompressed) syntaxes for
    the retry's contexts: the retry cannot help; the outcome is the first one's,
    and a line says that nothing came on the retry."""
    storage = tmp_path / "db"
    files = make_study(storage)
    indexed = run([dcmtk("dcmqridx"), str(storage), *map(str, files.values())])
    assert indexed.returncode == 0, indexed.stdout + indexed.stderr
    port = free_port()
    (tmp_path / "dcmqrscp.cfg").write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 8\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nQRSCP {storage} R (200, 1024mb) ANY\nAETable END\n"
    )
    log = tmp_path / "dcmqrscp.log"
    with log.open("wb") as output:
        proc = subprocess.Popen([dcmtk("dcmqrscp"), "-c", str(tmp_path / "dcmqrscp.cfg"), str(port)],
                                stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        wait_for_port(port, 10.0, proc)
        out = tmp_path / "got"
        done = get(port, "QRSCP", out, "-k", f"StudyInstanceUID={STUDY}")
    finally:
        stop(proc)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 completed, 2 failed" in done.stdout, done.stdout
    assert f"failed   {JPEG_UID}" in done.stdout and f"failed   {J2K_UID}" in done.stdout
    assert "none of the 2 instance(s) asked for again came" in done.stderr, done.stderr
    assert [p.name for p in out.glob("*.dcm")] == [f"{CT_UID}.dcm"]


# -- a C-GET SCP that has a CT only in HTJ2K and sends it so --------------------------------------


def test_get_proposes_htj2k_to_a_peer_that_sends_only_that(tmp_path):
    """pynetdicom as a C-GET SCP taking CT Image Storage in HTJ2K Lossless only: ``dimsekit get``
    proposes HTJ2K in its first association, the instance arrives as sent, no retry."""
    import threading

    from pydicom.uid import HTJ2KLossless
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

    from tests.interop.test_storage_newer_syntaxes import CT_IMAGE_STORAGE, instance

    ct = instance(CT_IMAGE_STORAGE, HTJ2KLossless, Modality="CT", Rows=64, Columns=64, SamplesPerPixel=1,
                  PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16, HighBit=15,
                  PixelRepresentation=0)
    served = threading.Event()

    def on_get(event):
        yield 1
        yield 0xFF00, ct
        served.set()

    ae = AE(ae_title="HTJ2KSCP")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(CTImageStorage, [HTJ2KLossless], scu_role=True, scp_role=True)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)])
    try:
        out = tmp_path / "got"
        done = get(server.server_address[1], "HTJ2KSCP", out, "-k", f"StudyInstanceUID={ct.StudyInstanceUID}")
        assert served.is_set()
    finally:
        server.shutdown()
        ae.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 completed, 0 failed" in done.stdout, done.stdout
    received = dcmread(out / f"{ct.SOPInstanceUID}.dcm")
    assert received.file_meta.TransferSyntaxUID == HTJ2KLossless
    assert received.PixelData == ct.PixelData
