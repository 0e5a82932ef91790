"""Test kit of the storage interop tests (no tests of its own).

* :func:`build_corpus` -- pydicom's test files, each under a fresh SOP Instance
  UID, across SOP classes and transfer syntaxes (uncompressed, big endian,
  deflated, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE);
* :func:`storescu_config` -- a DCMTK ``storescu -xf`` profile proposing, per
  SOP class found, the exact transfer syntax of each file (DCMTK 3.6.7 proposes
  only uncompressed syntaxes otherwise);
* :class:`RecordingProxy` -- a TCP proxy that records what the sender sends
  (so a test compares the archive with the bytes actually on the wire) and can
  stall after a byte budget (to catch a sender mid-instance);
* :func:`stores_on_the_wire` -- the data sets of the C-STORE-RQs in a recording;
* raw C-STORE-RQ bytes written by hand (any SOP Instance UID, even invalid ones);
* :func:`index_rows` -- the node's index, read-only; :func:`wait_until`.

Every wait is bounded.
"""

from __future__ import annotations

import select
import socket
import sqlite3
import struct
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.interop.conftest import (
    A_ASSOCIATE_AC,
    RawPeer,
    associate_rq,
    parse_command,
    pdata_pdu,
    pdvs_of,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"

#: pydicom test files: SOP classes x transfer syntaxes
CORPUS = (
    "CT_small.dcm",                   # CT, Explicit VR LE
    "MR_small.dcm",                   # MR, Explicit VR LE
    "MR_small_implicit.dcm",          # Implicit VR LE
    "MR_small_bigendian.dcm",         # Explicit VR BE
    "MR_small_RLE.dcm",               # RLE Lossless
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS Lossless
    "MR_small_jp2klossless.dcm",      # JPEG 2000 Lossless
    "JPEG2000.dcm",                   # JPEG 2000, Secondary Capture
    "image_dfl.dcm",                  # Deflated Explicit VR LE
    "SC_rgb_jpeg_gdcm.dcm",           # JPEG Lossless SV1
    "JPGExtended.dcm",                # JPEG Extended
    "SC_rgb_jpeg_dcmtk.dcm",          # JPEG Baseline
    "examples_ybr_color.dcm",         # US multi-frame, JPEG Baseline
    "rtplan.dcm",                     # RT Plan, Implicit VR LE
    "rtdose.dcm",                     # RT Dose
    "test-SR.dcm",                    # Comprehensive SR
    "waveform_ecg.dcm",               # 12-lead ECG
    "liver_1frame.dcm",               # Segmentation
    "SC_rgb_rle_16bit.dcm",           # RLE, 16-bit colour
    "JPEGLSNearLossless_08.dcm",      # JPEG-LS near-lossless
    "examples_rgb_color.dcm",         # US, RGB
    "SC_rgb_small_odd.dcm",           # odd dimensions
)


def build_corpus(directory: Path) -> list[Path]:
    """Copies of :data:`CORPUS` with fresh SOP Instance UIDs (and Study/Series UIDs where missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for number, name in enumerate(CORPUS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(get_testdata_file(name))
            uid = generate_uid()
            ds.SOPInstanceUID = uid
            ds.file_meta.MediaStorageSOPInstanceUID = uid
            if "StudyInstanceUID" not in ds:
                ds.StudyInstanceUID = generate_uid()
            if "SeriesInstanceUID" not in ds:
                ds.SeriesInstanceUID = generate_uid()
            path = directory / f"{number:02d}_{name}"
            ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def big_instance(path: Path, megabytes: int = 8) -> Dataset:
    """A CT-like Part 10 file (Explicit VR LE) of about ``megabytes``."""
    side = int((megabytes * (1 << 20) / 2) ** 0.5)
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "BIG"
    ds.PatientName = "Big^Instance"
    ds.Modality = "CT"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (side * side * 2 // 256) + b"\x00" * (side * side * 2 % 256)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return ds


def storescu_config(files: list[Path], path: Path, profile: str = "Corpus") -> str:
    """Write a ``storescu -xf`` configuration for ``files``; returns the profile name."""
    from dimsekit.datasets import part10_info

    pairs = sorted({(i.sop_class_uid, i.transfer_syntax) for i in map(part10_info, files)})
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]", "[Uncompressed]",
             "TransferSyntax1 = 1.2.840.10008.1.2.1", "TransferSyntax2 = 1.2.840.10008.1.2"]
    for number, ts in enumerate(syntaxes):
        lines += [f"[TS{number}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", f"[{profile}]"]
    contexts = [f"{sop}\\Uncompressed" for sop in sorted({sop for sop, _ in pairs})]
    contexts += [f"{sop}\\TS{syntaxes.index(ts)}" for sop, ts in pairs]
    assert len(contexts) <= 128, "too many presentation contexts for one association"
    lines += [f"PresentationContext{n} = {c}" for n, c in enumerate(contexts, 1)]
    lines += ["[[Profiles]]", f"[{profile}]", f"PresentationContexts = {profile}"]
    path.write_text("\n".join(lines) + "\n")
    return profile


class RecordingProxy:
    """Forward connections to ``target_port``, recording what the client sends.

    :param budget: forward at most this many client bytes per connection,
        then stop reading from the client (it stalls mid-send); ``stalled`` is set.
    """

    def __init__(self, target_port: int, budget: int | None = None) -> None:
        self.target_port = target_port
        self.budget = budget
        self.recordings: list[bytearray] = []
        self.stalled = threading.Event()
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self._spawn(self._accept)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.listener], [], [], 0.05)
            if not readable:
                continue
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                continue
            recording = bytearray()
            self.recordings.append(recording)
            self._sockets += [client, server]
            self._spawn(self._pump, client, server, recording)
            self._spawn(self._pump, server, client, None)

    def _pump(self, src: socket.socket, dst: socket.socket, recording: bytearray | None) -> None:
        sent = 0
        try:
            for _ in range(10_000_000):
                if self._stop.is_set():
                    return
                if recording is not None and self.budget is not None and sent >= self.budget:
                    self.stalled.set()
                    time.sleep(0.02)
                    continue
                readable, _, _ = select.select([src], [], [], 0.05)
                if not readable:
                    continue
                want = 65536 if recording is None or self.budget is None else min(65536, self.budget - sent)
                data = src.recv(want)
                if not data:
                    return
                dst.sendall(data)
                sent += len(data)
                if recording is not None:
                    recording += data
        except OSError:
            return
        finally:
            if not self._stop.is_set():
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    def close(self) -> None:
        """Close every connection (both sides see the connection end)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for s in (self.listener, *self._sockets):
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> RecordingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _uid(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii")


def stores_on_the_wire(stream: bytes) -> tuple[dict[str, bytes], list[int]]:
    """({SOP Instance UID: data set bytes} of every C-STORE-RQ, lengths of the P-DATA-TF PDUs)."""
    datasets: dict[str, bytes] = {}
    pdu_lengths: list[int] = []
    command = bytearray()
    dataset = bytearray()
    current: str | None = None
    offset = 0
    for _ in range(10_000_000):
        if offset + 6 > len(stream):
            break
        kind, _reserved, length = struct.unpack_from(">BBI", stream, offset)
        pdu = stream[offset : offset + 6 + length]
        offset += 6 + length
        if kind != 0x04:
            continue
        pdu_lengths.append(length)
        for _cid, control, fragment in pdvs_of(pdu):
            if control & 0x01:
                command += fragment
                if control & 0x02:
                    fields = parse_command(bytes(command))
                    command = bytearray()
                    is_store = struct.unpack("<H", fields[(0x0000, 0x0100)])[0] == 0x0001
                    current = _uid(fields[(0x0000, 0x1000)]) if is_store else None
            else:
                dataset += fragment
                if control & 0x02:
                    if current is not None:
                        datasets[current] = bytes(dataset)
                    dataset = bytearray()
    return datasets, pdu_lengths


# -- hand-written C-STORE-RQs ------------------------------------------------------------------------


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _ui(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def store_rq_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set (PS3.7 Table 9.3-1), Implicit VR LE, with any UID at all."""
    body = (
        _element(0x00000002, _ui(sop_class))
        + _element(0x00000100, struct.pack("<H", 0x0001))
        + _element(0x00000110, struct.pack("<H", message_id))
        + _element(0x00000700, struct.pack("<H", 0x0000))
        + _element(0x00000800, struct.pack("<H", 0x0000))
        + _element(0x00001000, _ui(sop_instance))
    )
    return _element(0x00000000, struct.pack("<I", len(body))) + body


def store_rq_pdus(context_id: int, command: bytes, dataset: bytes, *, fragment: int = 8000,
                  stop_after: int | None = None) -> list[bytes]:
    """P-DATA-TF PDUs of a C-STORE-RQ: the command, then the data set in fragments.

    :param stop_after: send only this many data set bytes (none of them marked last).
    """
    pdus = [pdata_pdu((context_id, 0x03, command))]
    end = len(dataset) if stop_after is None else stop_after
    for offset in range(0, end, fragment):
        chunk = dataset[offset : min(offset + fragment, end)]
        last = stop_after is None and offset + fragment >= len(dataset)
        pdus.append(pdata_pdu((context_id, 0x02 if last else 0x00, chunk)))
    return pdus


def store_rsp_status(pdu: bytes, message_id: int = 1) -> tuple[int, dict[tuple[int, int], bytes]]:
    """Check a C-STORE-RSP in one P-DATA-TF PDU; (status, all its fields)."""
    (pdv,) = pdvs_of(pdu)
    assert pdv[1] == 0x03, f"expected one last command fragment, got {pdv}"
    fields = parse_command(pdv[2])
    assert struct.unpack("<H", fields[(0x0000, 0x0100)])[0] == 0x8001, "not a C-STORE-RSP"
    assert struct.unpack("<H", fields[(0x0000, 0x0120)])[0] == message_id
    return struct.unpack("<H", fields[(0x0000, 0x0900)])[0], fields


def associate_for_storage(peer: RawPeer, sop_class: str = CT_IMAGE_STORAGE, ts: str = EXPLICIT_VR_LE) -> int:
    """Associate proposing one storage context; its (accepted) context ID."""
    peer.send(associate_rq("RAWSTORE", "DIMSEKIT", contexts=[(sop_class, [ts])]))
    ac = peer.recv_pdu()
    assert ac[0] == A_ASSOCIATE_AC, f"expected A-ASSOCIATE-AC, got {ac.hex()}"
    # the presentation context item (21H) of the AC: ID, reserved, result (0 = acceptance)
    offset = 74
    while offset < len(ac):
        kind, _r, length = struct.unpack_from(">BBH", ac, offset)
        if kind == 0x21:
            context_id, result = ac[offset + 4], ac[offset + 6]
            assert result == 0, f"context {context_id} not accepted (result {result})"
            return context_id
        offset += 4 + length
    raise AssertionError("no presentation context in the A-ASSOCIATE-AC")


# -- the node's archive ------------------------------------------------------------------------------


def index_rows(data_dir: Path, sql: str = "SELECT * FROM instance", *params: Any) -> list[dict[str, Any]]:
    """Rows of the node's index (read-only; empty if there is no index yet)."""
    path = data_dir / "index.sqlite"
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in conn.execute(sql, params)]
    finally:
        conn.close()


def stored_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*.dcm") if ".quarantine" not in p.parts)


def temp_files(data_dir: Path) -> list[Path]:
    incoming = data_dir / ".incoming"
    return sorted(incoming.iterdir()) if incoming.exists() else []


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        time.sleep(0.05)
