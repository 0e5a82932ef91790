"""``dimsekit store`` against real storage SCPs: DCMTK storescp and pynetdicom.

Every file sent must arrive with its data set bytes identical to the source
file's (compared from the data set offset of each Part 10 file: the receiver
may rewrite the File Meta Information, never the data set), in the transfer
syntax it had, over one association unless the test says otherwise.
"""

from __future__ import annotations

import os
import pty
import random
import re
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from dimsekit.datasets import dataset_uids, decode_dataset, encode_dataset, part10_info
from tests.interop.conftest import (
    A_ASSOCIATE_RQ,
    A_RELEASE_RQ,
    DIMSEKIT_CLI,
    RELEASE_RP,
    SAME_CODE,
    RawPeer,
    _finish_node,
    abort_pdu,
    associate_ac_for,
    dcmtk,
    free_port,
    parse_command,
    pdata_pdu,
    pdvs_of,
    run,
    start_node,
    stop,
    wait_for_port,
)
from tests.interop.test_storage_support import index_rows

pytestmark = pytest.mark.interop


ILE, ELE, EBE = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"

#: pydicom test files: distinct SOP instances, several SOP classes and transfer syntaxes
SAMPLES = [
    "CT_small.dcm",        # CT, Explicit VR Little Endian
    "MR_small_RLE.dcm",    # MR, RLE Lossless
    "JPEG2000.dcm",        # Secondary Capture, JPEG 2000
    "JPGExtended.dcm",     # Secondary Capture, JPEG Extended
    "rtdose.dcm",          # RT Dose, Implicit VR Little Endian
    "ExplVR_BigEnd.dcm",   # Ultrasound, Explicit VR Big Endian
    "reportsi.dcm",        # Basic Text SR, Explicit VR Little Endian
    "waveform_ecg.dcm",    # 12-lead ECG, Explicit VR Little Endian
    "693_J2KI.dcm",        # CT, JPEG 2000
]


def sample(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path, f"pydicom's test file {name} is missing"
    return Path(path)


def copy_samples(directory: Path, names: list[str] = SAMPLES) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        target = directory / name
        shutil.copyfile(sample(name), target)
        out.append(target)
    return out


def make_instance(path: Path, *, frames: int, seed: int, rows: int = 512, columns: int = 512) -> Path:
    """A 16-bit multi-frame secondary capture instance of random pixels (Explicit VR LE)."""
    ds = Dataset()
    ds.SOPClassUID = MULTIFRAME_WORD_SC
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7433.1.{seed}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.9.7433.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7433.3"
    ds.PatientName, ds.PatientID, ds.Modality = "Store^Test", "STORE1", "OT"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = random.Random(seed).randbytes(rows * columns * 2 * frames)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ELE
    ds.save_as(path, enforce_file_format=True)
    return path


def dataset_part(path: Path) -> tuple[str, str, bytes]:
    """(SOP Instance UID, transfer syntax, data set bytes) of a Part 10 file; the
    UID is the data set's (what the C-STORE-RQ names), not its File Meta's:
    some samples' disagree (pydicom's rtdose.dcm)."""
    info = part10_info(path)
    with path.open("rb") as f:
        f.seek(info.dataset_offset)
        return dataset_uids(info)[1] or info.sop_instance_uid, info.transfer_syntax, f.read()


def store(port: int, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return run([*DIMSEKIT_CLI, "store", "127.0.0.1", str(port), *args], timeout=timeout,
               env={**os.environ, **SAME_CODE})


def errors(stderr: str) -> list[str]:
    """The lines on stderr but the warnings (about a file's UIDs)."""
    return [line for line in stderr.splitlines() if not line.startswith("dimsekit store: warning: ")]


def summary_counts(stdout: str) -> tuple[int, int]:
    match = re.search(r"^Stored (\d+) of (\d+) instances", stdout, re.M)
    assert match, stdout
    return int(match[1]), int(match[2])


# -- DCMTK storescp ----------------------------------------------------------------------------


class StoreSCP:
    """DCMTK storescp (/usr/bin) on a free port: accepts every transfer syntax
    it knows and writes what it receives bit for bit (+B) into ``directory``."""

    def __init__(self, tmp_path: Path, *extra: str) -> None:
        self.port = free_port()
        self.directory = tmp_path / "received"
        self.directory.mkdir()
        self.log = tmp_path / "storescp.log"
        out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [dcmtk("storescp"), "-v", "-aet", "STORESCP", "+xa", "+B", "-od", str(self.directory),
             *extra, str(self.port)],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()
        wait_for_port(self.port, 10, self.proc)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def associations(self) -> int:
        """Associations accepted and then released (the port probe shows up as
        "Association Received" only)."""
        text = self.log_text()
        assert text.count("Association Acknowledged") == text.count("Association Release"), text
        return text.count("Association Acknowledged")

    def received(self) -> dict[str, tuple[str, bytes]]:
        """SOP Instance UID -> (transfer syntax, data set bytes) of every file written."""
        out = {}
        for path in sorted(self.directory.iterdir()):
            uid, ts, data = dataset_part(path)
            out[uid] = (ts, data)
        return out

    def close(self) -> None:
        stop(self.proc)


@pytest.fixture
def storescp(tmp_path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path)
    try:
        yield scp
    finally:
        scp.close()


def assert_identical(sources: list[Path], received: dict[str, tuple[str, bytes]]) -> None:
    for source in sources:
        uid, ts, data = dataset_part(source)
        assert uid in received, f"{source.name} ({uid}) did not arrive; got {sorted(received)}"
        got_ts, got = received[uid]
        assert got_ts == ts, f"{source.name}: arrived in {got_ts}, sent from {ts}"
        assert got == data, f"{source.name}: data set differs ({len(got)} bytes received, {len(data)} sent)"


def test_files_of_several_classes_and_syntaxes_to_storescp(storescp, tmp_path):
    files = copy_samples(tmp_path / "src")
    files.append(make_instance(tmp_path / "src" / "big.dcm", frames=24, seed=1))  # 12.6 MB
    result = store(storescp.port, "-aec", "STORESCP", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr + storescp.log_text()
    assert summary_counts(result.stdout) == (len(files), len(files))
    assert "0 Failure" in result.stdout and "1 association" in result.stdout
    received = storescp.received()
    assert len(received) == len(files)
    assert_identical(files, received)
    assert storescp.associations() == 1
    assert "Traceback" not in result.stderr


def test_directory_recursion_and_a_non_dicom_file_to_storescp_with_small_pdus(tmp_path):
    src = tmp_path / "src"
    top = copy_samples(src, SAMPLES[:3])
    nested = copy_samples(src / "series" / "more", SAMPLES[3:6])
    (src / "README.txt").write_text("not DICOM\n")
    scp = StoreSCP(tmp_path, "-pdu", "4096")  # the peer takes P-DATA-TF of at most 4096 bytes
    try:
        flat = store(scp.port, "-aec", "STORESCP", str(src))
        assert flat.returncode == 0, flat.stdout + flat.stderr
        assert summary_counts(flat.stdout) == (3, 3)
        assert re.search(r"^skipped  .*README\.txt: not a DICOM file$", flat.stdout, re.M), flat.stdout
        assert_identical(top, scp.received())
        assert len(scp.received()) == 3

        deep = store(scp.port, "-aec", "STORESCP", "--recurse", str(src))
        assert deep.returncode == 0, deep.stdout + deep.stderr
        assert summary_counts(deep.stdout) == (6, 6)
        assert "README.txt" in deep.stdout
        assert_identical(top + nested, scp.received())
        assert scp.associations() == 2
    finally:
        scp.close()


def test_refused_connection_is_one_line():
    result = store(free_port(), str(sample("CT_small.dcm")), timeout=30)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("dimsekit store: ") and "refused" in lines[0], result.stderr


def test_rejection_is_one_line(tmp_path):
    # storescp rejects a Calling AE Title it does not know when given an access list
    scp = StoreSCP(tmp_path, "--refuse")
    try:
        result = store(scp.port, "-aec", "STORESCP", str(sample("CT_small.dcm")), timeout=30)
    finally:
        scp.close()
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "rejected" in lines[0], result.stderr


def test_progress_line_on_a_terminal(storescp, tmp_path):
    files = copy_samples(tmp_path / "src", SAMPLES[:4])
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen([*DIMSEKIT_CLI, "store", "127.0.0.1", str(storescp.port), "-aec", "STORESCP",
                                 *map(str, files)], stdout=subprocess.PIPE, stderr=terminal, text=True)
        os.close(terminal)
        terminal = -1
        seen = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the terminal's other end closed
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        out, _ = proc.communicate(timeout=30)
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert proc.returncode == 0, out + seen.decode(errors="replace")
    text = seen.decode(errors="replace")
    assert re.search(r"\r\d+/4 instances\s+[\d.]+/[\d.]+ MB\s+[\d.]+ MB/s", text), repr(text)
    assert "4/4 instances" in text or summary_counts(out) == (4, 4)


# -- pynetdicom storage SCP ------------------------------------------------------------------


class PynetdicomStoreSCP:
    """A pynetdicom storage SCP in this process (non-blocking server) keeping
    the raw bytes of every data set it receives."""

    def __init__(self, contexts: list[tuple[str, list[str]]] | None = None) -> None:
        self.received: dict[str, tuple[str, bytes]] = {}
        self.associations: list[str] = []
        self._lock = threading.Lock()
        self.ae = AE(ae_title="PYNSTORE")
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 10
        self.ae.maximum_associations = 4
        if contexts is None:
            contexts = [(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]
        for abstract, syntaxes in contexts:
            self.ae.add_supported_context(abstract, syntaxes)
        self.server = self.ae.start_server(
            ("127.0.0.1", 0), block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted)],
        )
        self.port = self.server.server_address[1]

    def _on_accepted(self, event) -> None:
        with self._lock:
            self.associations.append(event.assoc.requestor.ae_title.strip())

    def _on_store(self, event) -> int:
        data = event.request.DataSet.getvalue()
        with self._lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] = (str(event.context.transfer_syntax), data)
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def pynetdicom_store_scp() -> Iterator[PynetdicomStoreSCP]:
    scp = PynetdicomStoreSCP()
    try:
        yield scp
    finally:
        scp.close()


def test_files_of_several_classes_and_syntaxes_to_pynetdicom(pynetdicom_store_scp, tmp_path):
    files = copy_samples(tmp_path / "src")
    files.append(make_instance(tmp_path / "src" / "big.dcm", frames=8, seed=2))
    result = store(pynetdicom_store_scp.port, "-aec", "PYNSTORE", "-aet", "DKSTORE", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_counts(result.stdout) == (len(files), len(files))
    assert len(pynetdicom_store_scp.received) == len(files)
    assert_identical(files, pynetdicom_store_scp.received)
    assert pynetdicom_store_scp.associations == ["DKSTORE"]


def test_uncompressed_files_reencoded_when_only_implicit_le_is_accepted(tmp_path):
    names = ["CT_small.dcm", "ExplVR_BigEnd.dcm", "rtdose.dcm", "JPEG2000.dcm"]
    files = copy_samples(tmp_path / "src", names)
    scp = PynetdicomStoreSCP([(cx.abstract_syntax, [ILE]) for cx in AllStoragePresentationContexts])
    try:
        result = store(scp.port, "-aec", "PYNSTORE", *map(str, files))
    finally:
        scp.close()
    # the JPEG 2000 file cannot go (no transcoding): listed, exit non-zero
    assert result.returncode == 1, result.stdout + result.stderr
    assert summary_counts(result.stdout) == (3, 4)
    assert re.search(r"^failure  .*JPEG2000\.dcm: .*JPEG 2000.*not decompressed: .*is lossy", result.stdout, re.M), result.stdout
    assert scp.associations == ["DIMSEKIT"]  # refused for good: no reconnecting in vain
    assert_identical([files[2]], scp.received)  # rtdose.dcm is Implicit VR LE already: sent raw
    for source in files[:2]:  # re-encoded by pydicom: the same elements and values
        original = dcmread(source)
        ts, data = scp.received[str(original.SOPInstanceUID)]
        assert ts == ILE
        got = decode_dataset(data, ILE)
        assert same_values(original, got), f"{source.name}: the data set changed in re-encoding"


def same_values(a: Dataset, b: Dataset) -> bool:
    """Same tags and values, group lengths aside (pydicom drops those) and VR aside
    (Implicit VR gives OW where the source said OB)."""
    tags_a = {e.tag for e in a if e.tag.element != 0}
    tags_b = {e.tag for e in b if e.tag.element != 0}
    return tags_a == tags_b and all(a[t].value == b[t].value for t in tags_a)


def test_a_sop_class_the_peer_does_not_support_fails_and_exits_non_zero(tmp_path):
    files = copy_samples(tmp_path / "src", ["CT_small.dcm", "MR_small_RLE.dcm", "693_J2KI.dcm"])
    scp = PynetdicomStoreSCP([(CT_IMAGE, ALL_TRANSFER_SYNTAXES)])
    try:
        result = store(scp.port, "-aec", "PYNSTORE", *map(str, files))
    finally:
        scp.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert summary_counts(result.stdout) == (2, 3)
    assert re.search(r"^failure  .*MR_small_RLE\.dcm: the peer does not support MR Image Storage", result.stdout,
                     re.M), result.stdout
    assert_identical([files[0], files[2]], scp.received)
    assert scp.associations == ["DIMSEKIT"]


# -- aborts: the file in flight fails, the rest go on a new association ------------------------------


class RawServers:
    """Accept connections on a free port one after the other and run
    ``scripts[n](peer)`` on the n-th, in a thread: :class:`RawServer` for a
    peer that is connected to again.  With the scripts used up, the listener
    closes (a new connection is refused).  ``connections`` counts those
    accepted; :meth:`close` stops waiting for more and re-raises what a script
    raised."""

    def __init__(self, scripts: list, accept_timeout: float = 20.0) -> None:
        self.scripts = scripts
        self.accept_timeout = accept_timeout
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _accept(self) -> socket.socket | None:
        deadline = time.monotonic() + self.accept_timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            readable, _, _ = select.select([self.listener], [], [], 0.05)
            if readable:
                conn, _ = self.listener.accept()
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return conn
        return None

    def _run(self) -> None:
        try:
            for script in self.scripts:
                conn = self._accept()
                if conn is None:
                    return
                self.connections += 1
                with RawPeer(conn) as peer:
                    script(peer)
        except BaseException as exc:  # handed to the test thread by close()
            self.error = exc
        finally:
            self.listener.close()

    def __enter__(self) -> RawServers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"raw server script still running after {timeout} s"
        self.listener.close()
        if self.error is not None:
            raise self.error


def _uid_value(uid: str) -> bytes:
    value = uid.encode()
    return value + b"\x00" if len(value) % 2 else value  # UI padded to even length with NUL


def _command_element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def store_rsp_pdu(context_id: int, message_id: int, sop_class: str, sop_instance: str, status: int = 0) -> bytes:
    """A C-STORE-RSP (PS3.7 Table 9.3-2) in one P-DATA-TF, written by hand."""
    body = (
        _command_element(0x0002, _uid_value(sop_class))  # Affected SOP Class UID
        + _command_element(0x0100, struct.pack("<H", 0x8001))  # Command Field: C-STORE-RSP
        + _command_element(0x0120, struct.pack("<H", message_id))  # Message ID Being Responded To
        + _command_element(0x0800, struct.pack("<H", 0x0101))  # Command Data Set Type: none
        + _command_element(0x0900, struct.pack("<H", status))  # Status
        + _command_element(0x1000, _uid_value(sop_instance))  # Affected SOP Instance UID
    )
    return pdata_pdu((context_id, 0x03, _command_element(0x0000, struct.pack("<I", len(body))) + body))


def receive_store(peer: RawPeer) -> tuple[int, int, str, str] | None:
    """Read one whole C-STORE-RQ, command and data set: (context ID, Message ID,
    SOP Class UID, SOP Instance UID) of its command; None for an A-RELEASE-RQ."""
    command = b""
    for _ in range(100_000):
        pdu = peer.recv_pdu(timeout=10)
        if pdu[0] == A_RELEASE_RQ:
            assert command == b"", "A-RELEASE-RQ in the middle of a message"
            return None
        for context_id, control, fragment in pdvs_of(pdu):
            if control & 0x01:
                command += fragment
            elif control & 0x02:  # the last fragment of the data set: the message is whole
                fields = parse_command(command)
                assert struct.unpack("<H", fields[(0x0000, 0x0100)])[0] == 0x0001, "not a C-STORE-RQ"
                return (context_id, struct.unpack("<H", fields[(0x0000, 0x0110)])[0],
                        fields[(0x0000, 0x0002)].rstrip(b"\x00").decode(),
                        fields[(0x0000, 0x1000)].rstrip(b"\x00").decode())
    raise AssertionError("receive_store: too many PDUs")


def accept(peer: RawPeer) -> None:
    rq = peer.recv_pdu()
    assert rq[0] == A_ASSOCIATE_RQ, rq[:1].hex()
    peer.send(associate_ac_for(rq, transfer_syntax=ILE))


def storing(received: list[str], *, then: str = "release", after: int | None = None):
    """A script: accept the association, store (answer Success to) every C-STORE-RQ,
    recording its SOP Instance UID in ``received``; with ``after``, only that many,
    and then, on the next one (read whole): ``then`` -- "abort" (A-ABORT) or "drop"
    (close the connection, no A-ABORT).  Otherwise answer the A-RELEASE-RQ."""
    def script(peer: RawPeer) -> None:
        accept(peer)
        for n in range(10_000):
            message = receive_store(peer)
            if message is None:
                peer.send(RELEASE_RP)
                peer.expect_eof()
                return
            context_id, message_id, sop_class, sop_instance = message
            if after is not None and n == after:
                received.append(f"aborted on {sop_instance}")
                if then == "abort":
                    peer.send(abort_pdu(source=0, reason=0))
                    peer.expect_eof()
                return  # "drop": the connection closes as the script ends
            received.append(sop_instance)
            peer.send(store_rsp_pdu(context_id, message_id, sop_class, sop_instance))
    return script


def small_instances(directory: Path, count: int) -> list[Path]:
    """``count`` small CT instances, Implicit VR Little Endian, distinct SOP Instance UIDs."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        ds = Dataset()
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.9.7433.4.{n}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.9.7433.4", "1.2.826.0.1.3680043.9.7433.4.99"
        ds.PatientName, ds.PatientID, ds.Modality = "Abort^Test", "ABORT1", "CT"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ILE
        path = directory / f"f{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def uid_of(path: Path) -> str:
    return part10_info(path).sop_instance_uid


def test_an_abort_mid_run_sends_that_file_again_first_and_the_rest_on_a_new_association(tmp_path):
    files = small_instances(tmp_path / "src", 6)
    first: list[str] = []
    second: list[str] = []
    with RawServers([storing(first, after=2, then="abort"), storing(second)]) as server:
        result = store(server.port, *map(str, files), timeout=60)
    assert server.connections == 2
    assert first == [uid_of(files[0]), uid_of(files[1]), f"aborted on {uid_of(files[2])}"]
    assert second == [uid_of(f) for f in files[2:]], "the file in flight again, then every other one"
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_counts(result.stdout) == (6, 6)
    summary = result.stdout.splitlines()[0]
    assert "(6 Success, 0 Warning, 0 Failure, 0 not sent)" in summary, summary
    assert summary.endswith("2 associations (1 reconnect after an abort or a lost connection)"), summary
    assert result.stderr.splitlines() == [
        "dimsekit store: aborted by the peer (A-ABORT); a new association for the 4 file(s) left, "
        "f2.dcm again first"], result.stderr


def test_a_peer_aborting_every_association_is_given_up_on_after_three(tmp_path):
    files = small_instances(tmp_path / "src", 6)
    received: list[str] = []
    # an A-ABORT, a dropped connection, an A-ABORT -- and more of them on offer
    scripts = [storing(received, after=0, then=how) for how in ["abort", "drop", "abort"] * 3]
    started = time.monotonic()
    with RawServers(scripts) as server:
        result = store(server.port, *map(str, files), timeout=60)
        took = time.monotonic() - started
    assert server.connections == 3, "no fourth try"
    # f0 lost twice (sent once more): failed; f1 in flight as the run gives up: failed
    assert received == [f"aborted on {uid_of(f)}" for f in (files[0], files[0], files[1])]
    assert result.returncode == 1, result.stdout + result.stderr
    assert summary_counts(result.stdout) == (0, 6)
    assert "(0 Success, 0 Warning, 2 Failure, 4 not sent)" in result.stdout.splitlines()[0], result.stdout
    for n, why in enumerate(["transport connection closed by the peer", "aborted by the peer (A-ABORT)"]):
        assert re.search(rf"^failure  .*f{n}\.dcm: {re.escape(why)}$", result.stdout, re.M), result.stdout
    for n in range(2, 6):
        assert re.search(rf"^not sent .*f{n}\.dcm$", result.stdout, re.M), result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("dimsekit store: gave up after 3 associations in a row aborted or not made ("), lines
    assert took < 20, f"took {took:.1f} s"  # 1 s + 2 s of pauses, no hang


def test_an_abort_and_then_no_peer_to_reconnect_to_gives_up_the_rest_not_sent(tmp_path):
    files = copy_samples(tmp_path / "src", ["rtdose.dcm", "rtplan.dcm"])  # both Implicit VR LE
    received: list[str] = []
    with RawServers([storing(received, after=0, then="abort")]) as server:  # then the port is closed
        result = store(server.port, *map(str, files), timeout=60)
    assert server.connections == 1
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^failure  .*rtdose\.dcm: .*abort", result.stdout, re.M), result.stdout
    assert re.search(r"^not sent .*rtplan\.dcm$", result.stdout, re.M), result.stdout
    assert summary_counts(result.stdout) == (0, 2)
    lines = errors(result.stderr)  # rtdose.dcm and rtplan.dcm each have a warning: their File Meta UIDs
    assert lines == [
        "dimsekit store: aborted by the peer (A-ABORT); a new association for the 2 file(s) left, "
        "rtdose.dcm again first",
        "dimsekit store: no new association (connection refused); trying again for 2 file(s)",
        "dimsekit store: gave up after 3 associations in a row aborted or not made (connection refused)",
    ], result.stderr


def test_max_aborts_1_stops_at_the_first_abort_in_one_line(tmp_path):
    files = small_instances(tmp_path / "src", 2)
    received: list[str] = []
    with RawServers([storing(received, after=0, then="abort"), storing(received)]) as server:
        result = store(server.port, "--max-aborts", "1", *map(str, files), timeout=60)
    assert server.connections == 1
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == ["dimsekit store: aborted by the peer (A-ABORT)"], result.stderr
    assert re.search(r"^not sent .*f1\.dcm$", result.stdout, re.M), result.stdout


def bare(source: Path, target: Path, transfer_syntax: str) -> Path:
    """``source``'s data set written without preamble and File Meta, in ``transfer_syntax``."""
    ds = dcmread(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(encode_dataset(ds, transfer_syntax))
    return target


def test_bare_data_sets_are_sent_in_the_syntax_they_are_in(storescp, tmp_path):
    # storescu sends files without File Meta too (+f, its default): so do we
    sources = {
        "ct.ile": (sample("CT_small.dcm"), ILE),
        "ct.ele": (sample("rtdose.dcm"), ELE),
        "us.ebe": (sample("ExplVR_BigEnd.dcm"), EBE),
    }
    files = [bare(src, tmp_path / "bare" / name, ts) for name, (src, ts) in sources.items()]
    compressed = tmp_path / "bare" / "j2k.raw"
    compressed.write_bytes(encode_dataset(dcmread(sample("JPEG2000.dcm")), ELE))  # encapsulated: syntax unknown
    result = store(storescp.port, "-aec", "STORESCP", str(tmp_path / "bare"))
    assert result.returncode == 0, result.stdout + result.stderr + storescp.log_text()
    assert summary_counts(result.stdout) == (3, 3), result.stdout
    assert re.search(r"^skipped  .*j2k\.raw: .*compressed", result.stdout, re.M), result.stdout
    received = storescp.received()
    for path, (src, ts) in zip(files, sources.values(), strict=True):
        uid = str(dcmread(src).SOPInstanceUID)
        assert received[uid] == (ts, path.read_bytes()), path.name
    assert storescp.associations() == 1


# -- File Meta UIDs that are not the data set's -------------------------------------------------


def edited(source: Path, target: Path, *, meta_instance: str) -> Path:
    """``source`` with its File Meta's Media Storage SOP Instance UID changed (as a
    hand edit or a bad converter leaves a file): the data set is untouched."""
    ds = dcmread(source)
    ds.file_meta.MediaStorageSOPInstanceUID = meta_instance
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=False)  # as it is: pydicom would copy the data set's UIDs into the meta
    return target


def test_files_whose_file_meta_uids_are_not_the_data_sets_are_stored_by_a_dimsekit_node(tmp_path):
    # A node checks the C-STORE-RQ against the data set (A900 "does not match"
    # otherwise): the tool must name the data set's UIDs, as storescu does.
    ct = edited(sample("CT_small.dcm"), tmp_path / "src" / "ct-edited.dcm", meta_instance="1.2.826.0.1.3680043.9.7433.5")
    rtdose = tmp_path / "src" / "rtdose.dcm"  # pydicom's: its File Meta says 1.2.999..., its data set 1.9.999...
    shutil.copyfile(sample("rtdose.dcm"), rtdose)
    good = copy_samples(tmp_path / "src", ["MR_small_RLE.dcm"])[0]
    files = [ct, rtdose, good]
    meta_uids = {part10_info(p).sop_instance_uid for p in files}
    dataset_uids_ = {str(dcmread(p).SOPInstanceUID) for p in files}
    assert len(meta_uids - dataset_uids_) == 2
    (tmp_path / "node").mkdir()
    node = start_node(tmp_path / "node", env=SAME_CODE)
    try:
        result = store(node.port, "-aec", "DIMSEKIT", *map(str, files))
        assert result.returncode == 0, result.stdout + result.stderr + node.log_text()
        assert summary_counts(result.stdout) == (3, 3)
        warnings = result.stderr.splitlines()
        assert len(warnings) == 2, result.stderr  # once per file that disagrees, none for the other
        for path, line in zip((ct, rtdose), warnings, strict=True):
            assert line.startswith(f"dimsekit store: warning: {path}: File Meta Information's Media Storage SOP "
                                   f"Instance UID {part10_info(path).sop_instance_uid} is not the data set's SOP "
                                   f"Instance UID {dcmread(path).SOPInstanceUID}"), line
        node.assert_healthy()
    finally:
        _finish_node(node)
    rows = {r["sop_instance_uid"]: r for r in index_rows(tmp_path / "node" / "dimsekit-data")}
    assert set(rows) == dataset_uids_, "the node indexes each instance under its data set's SOP Instance UID"
    for path in files:
        original = dcmread(path)
        row = rows[str(original.SOPInstanceUID)]
        assert row["sop_class_uid"] == original.SOPClassUID
        kept = tmp_path / "node" / "dimsekit-data" / row["path"]
        assert kept.read_bytes()[part10_info(kept).dataset_offset:] == dataset_part(path)[2], path.name
