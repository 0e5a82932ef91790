"""Fixtures for interop tests: real peers (DCMTK tools, pynetdicom, a dimsekit
node under twistd) on 127.0.0.1, free ports, processes stopped by PID.

Besides the peers, this module holds the test kit the interop tests share:

* :class:`RawPeer` -- a scripted DICOM peer on a plain socket, with no state
  machine of its own, to send exactly the bytes a test wants (bad ones too)
  and check exactly the bytes that come back;
* :class:`RawServer` -- the same, accepting one connection in a thread;
* :class:`SplittingProxy` -- a TCP proxy that re-chunks the byte stream at
  random (seeded) boundaries, down to 1-byte sends, and coalesces PDUs that
  arrive close together into one send;
* hand-written PDU and command-set bytes (:func:`echo_rq_pdata`,
  :func:`associate_ac_for`, ...), independent of dimsekit's own codec
  except where a test means to use it (the A-ASSOCIATE-RQ).

Every wait is bounded in time; every loop in count or time.
"""

from __future__ import annotations

import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dimsekit

DCMTK_BIN = Path("/usr/bin")
HERE = Path(__file__).resolve().parent

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# PDU types (PS3.8 Table 9-11 .. 9-26)
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF = 0x01, 0x02, 0x03, 0x04
A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x05, 0x06, 0x07

#: A-RELEASE-RQ and -RP (PS3.8 Tables 9-24, 9-25): type, reserved, length 4, 4 reserved bytes.
RELEASE_RQ = bytes.fromhex("05 00 00000004 00000000")
RELEASE_RP = bytes.fromhex("06 00 00000004 00000000")

_HEADER = struct.Struct(">BBI")


def dcmtk(tool: str) -> str:
    """The path of a DCMTK tool.

    pynetdicom installs console scripts named like DCMTK's (echoscu, storescp,
    ...) which come first on PATH here; DCMTK's own live in /usr/bin.  A
    missing tool fails the test: .ci/run installs DCMTK, nothing is skipped.
    """
    path = DCMTK_BIN / tool
    assert path.exists(), f"DCMTK's {tool} is missing at {path}: run .ci/run (apt-get install dcmtk)"
    return str(path)


def _twistd() -> str:
    """twistd of the Python running the tests (``python -m twisted`` is ``twist``, not twistd)."""
    sibling = Path(sys.executable).with_name("twistd")
    if sibling.exists():
        return str(sibling)
    found = shutil.which("twistd")
    assert found, "twistd not found next to the Python running the tests nor on PATH"
    return found


TWISTD = _twistd()


def _dimsekit_cli() -> list[str]:
    """The ``dimsekit`` console script of the Python running the tests."""
    sibling = Path(sys.executable).with_name("dimsekit")
    return [str(sibling)] if sibling.exists() else [sys.executable, "-m", "dimsekit.cli"]


DIMSEKIT_CLI = _dimsekit_cli()

#: an environment for the ``dimsekit`` tools and twistd nodes the tests start, so that they run
#: the dimsekit these tests import (a worktree's, not an installed one)
SAME_CODE = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(dimsekit.__file__).parent.parent),
                                                          os.environ.get("PYTHONPATH")]))}


def _close_pynetdicom_pause_race() -> None:
    """Mend a race in pynetdicom's SCU (seen with 3.0.4; pynetdicom issue 875).

    A ``send_*`` call pauses the association's reactor thread before it sends
    a request, and then takes the response off the DIMSE queue itself. The
    pause is a flag the reactor sets *before* it blocks and clears *after*;
    when the call clears the checkpoint just as the reactor wakes, it reads
    the stale flag, sends, and the reactor takes the response off the queue
    and drops it as "unexpected". The call then waits out its DIMSE timeout.
    In CI it broke an N-CREATE of ``test_print_pynetdicom`` once.

    The peer we test is pynetdicom's protocol, not that thread hand-off, so a
    message the reactor takes while a ``send_*`` call holds the checkpoint
    goes back to the front of the queue, where the call is waiting for it.
    Nothing else changes: outside a ``send_*`` call, pynetdicom serves and
    refuses messages as it ships.
    """
    from pynetdicom.association import Association

    serve = Association._serve_request
    if getattr(serve, "_dimsekit_mended", False):
        return

    def _serve_request(self: Any, msg: Any, context_id: int) -> None:
        if not self._reactor_checkpoint.is_set() and not msg.is_valid_request:
            waiting = self.dimse.msg_queue
            with waiting.mutex:
                waiting.queue.appendleft((context_id, msg))
                waiting.not_empty.notify()
            return
        serve(self, msg, context_id)

    _serve_request._dimsekit_mended = True  # type: ignore[attr-defined]
    Association._serve_request = _serve_request  # type: ignore[method-assign]


_close_pynetdicom_pause_race()


def start_pynetdicom_qrscp(base: Path, port: int, extra: str = "") -> tuple[subprocess.Popen, Path]:
    """pynetdicom's qrscp app as QRSCP on 127.0.0.1:``port``, its instances and database under
    ``base`` (``extra``: more INI lines, after [DEFAULT]'s); (process, its log), listening.
    ``stop(process)`` ends it."""
    config = base / "qrscp.ini"
    config.write_text(
        "[DEFAULT]\n"
        "ae_title: QRSCP\n"
        f"port: {port}\n"
        "max_pdu: 16382\n"
        "acse_timeout: 10\n"
        "dimse_timeout: 10\n"
        "network_timeout: 10\n"
        "bind_address: 127.0.0.1\n"
        f"instance_location: {base / 'instances'}\n"
        f"database_location: {base / 'instances.sqlite'}\n"
        + extra
    )
    log = base / "qrscp.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pynetdicom", "qrscp", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, cwd=base)
    try:
        wait_for_port(port, 20.0, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, log


#: CT Image Storage
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def tiny_ct(*, study: str | None = None, patient_id: str = "TINY-1", patient_name: str = "Tiny^Test") -> Any:
    """A tiny CT image (4x4 16-bit pixels) with File Meta Information; new UIDs (``study`` if given)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = str(generate_uid())
    ds.StudyInstanceUID = study or str(generate_uid())
    ds.SeriesInstanceUID = str(generate_uid())
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(32))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def same_data_set(received: Path, sent: Path) -> None:
    """The two Part 10 files hold the same data set (Data Set Trailing Padding aside:
    DCMTK's storescp does not keep it)."""
    from pydicom import dcmread

    got, original = dcmread(received), dcmread(sent)
    for ds in (got, original):
        if 0xFFFCFFFC in ds:
            del ds[0xFFFCFFFC]
    assert got.SOPInstanceUID == original.SOPInstanceUID
    assert ("PixelData" in got) == ("PixelData" in original)
    if "PixelData" in original:
        assert got.PixelData == original.PixelData
    assert got == original


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """Stop a process we started, by PID: SIGTERM, then SIGKILL.  Returns its exit status.

    15 s: once in a CI run of the whole suite a node under load had not exited
    5 s after SIGTERM (alone it stops in well under a second)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            # A node dumps its threads' stacks to its stderr on SIGUSR2: say where it hung.
            proc.send_signal(signal.SIGUSR2)
            time.sleep(2)
            proc.kill()
            proc.wait(timeout)
    return proc.returncode


def run(cmd: list[str], timeout: float = 60.0, **kwargs) -> subprocess.CompletedProcess:
    """Run a peer tool to completion (bounded in time)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def start_peer_script(script: Path, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, int, Path]:
    """Run one of this directory's peer scripts (``_fuzz_scp.py``, ``_flaky_store_scp.py``...)
    as ``python SCRIPT PORT *ARGS`` on a free port, the tests' code importable, and wait
    (bounded) until it listens.  Returns the process (stop it with :func:`stop`), the port,
    and the file its output (stdout and stderr) goes to."""
    port = free_port()
    root = str(Path(__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, SAME_CODE["PYTHONPATH"]]))}
    output = tmp_path / f"{script.stem.strip('_')}.out"
    with output.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(script), str(port), *args], env=env, cwd=tmp_path,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 20.0, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, port, output


def echoscu(port: int, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """DCMTK echoscu to 127.0.0.1:port (``-aec DIMSEKIT`` unless ``args`` say otherwise)."""
    if "-aec" not in args:
        args = ("-aec", "DIMSEKIT", *args)
    return run([dcmtk("echoscu"), *args, "127.0.0.1", str(port)], timeout=timeout)


# -- a dimsekit node under twistd -------------------------------------------------------


class Node:
    """A dimsekit node run by twistd in a subprocess."""

    def __init__(self, port: int, proc: subprocess.Popen, log: Path, workdir: Path) -> None:
        self.port = port
        self.proc = proc
        self.log = log
        self.workdir = workdir

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 5.0, since: int = 0) -> str:
        """Wait (bounded) for a log line matching the regular expression; return the line.
        ``since``: only what the log gained after that many characters (:meth:`log_text`'s
        length before the test acted) counts.

        Only whole lines count: twistd's log file is buffered, and a read may
        end inside a line the node is still writing (a loaded run matched
        "... handl" and missed the rest of the line)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log_text()[since:].split("\n")[:-1]:  # the last piece is not a whole line yet
                if regex.search(line):
                    return line
            if time.monotonic() >= deadline:
                raise AssertionError(f"no log line matches {pattern!r} after {timeout} s:\n{self.log_text()}")
            time.sleep(0.05)

    def assert_healthy(self) -> None:
        """Still running, answers DCMTK echoscu, and no Traceback in its log."""
        assert self.proc.poll() is None, f"node exited with {self.proc.returncode}:\n{self.log_text()}"
        result = echoscu(self.port)
        assert result.returncode == 0, f"echoscu failed after the test:\n{result.stdout}{result.stderr}\n{self.log_text()}"
        assert "Traceback" not in self.log_text(), self.log_text()


#: a command prefix that runs the rest with SIGINT at its default, as from a terminal (a test
#: run started in the background, as CI may be, has it ignored, and children inherit that)
WITH_SIGINT = [sys.executable, "-c",
               "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"]


def with_open_files(soft: int) -> list[str]:
    """A command prefix that runs the command with its soft limit of open files at ``soft``."""
    return [sys.executable, "-c",
            "import os, resource, sys; hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard)); os.execvp(sys.argv[2], sys.argv[2:])",
            str(soft)]


def start_node(tmp_path: Path, *args: str, config: str | None = None, env: dict | None = None,
               sigint: bool = False, open_files: int | None = None) -> Node:
    """A twistd node on a free port (``sigint``: with SIGINT at its default, see :data:`WITH_SIGINT`;
    ``open_files``: started with that soft limit of open files)."""
    port = free_port()
    log = tmp_path / "twistd.log"
    cmd = [*(WITH_SIGINT if sigint else ()), *(with_open_files(open_files) if open_files else ()),
           TWISTD, "-n", "--logfile", str(log), "--pidfile", "", "dimsekit",
           "--port", str(port), "--interface", "127.0.0.1"]
    if config is not None:
        cfg = tmp_path / "node.toml"
        cfg.write_text(config)
        cmd += ["--config", str(cfg)]
    cmd += list(args)
    output = (tmp_path / "twistd.out").open("wb")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, **(env or {})},
                            stdout=output, stderr=subprocess.STDOUT)
    output.close()
    try:
        wait_for_port(port, 20.0, proc)
    except Exception:
        stop(proc)
        out = (tmp_path / "twistd.out").read_text(errors="replace")
        raise RuntimeError(f"node did not start: {out}\n{log.read_text() if log.exists() else ''}") from None
    return Node(port, proc, log, tmp_path)


def _finish_node(n: Node) -> None:
    code = stop(n.proc)
    text = n.log_text()
    assert "Traceback" not in text, text
    out = n.workdir / "twistd.out"
    stderr = out.read_text(errors="replace") if out.exists() else ""
    assert code == 0, f"node exited with {code} on SIGTERM:\n{text}\n-- its stdout/stderr:\n{stderr}"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A zero-configuration dimsekit node on a free port."""
    n = start_node(tmp_path)
    yield n
    _finish_node(n)


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A zero-configuration node shared by the tests of one module (each test
    checks it with :meth:`Node.assert_healthy`)."""
    n = start_node(tmp_path_factory.mktemp("node"))
    yield n
    _finish_node(n)


# -- hand-written PDUs and command sets -----------------------------------------------


def associate_rq(calling: str = "RAWPEER", called: str = "DIMSEKIT",
                 contexts: list[tuple[str, list[str]]] | None = None) -> bytes:
    """An A-ASSOCIATE-RQ built with dimsekit's own builder (proposing Verification)."""
    from dimsekit.ul.negotiation import build_associate_rq

    rq = build_associate_rq(
        called_ae_title=called,
        calling_ae_title=calling,
        contexts=contexts or [(VERIFICATION, [IMPLICIT_VR_LE])],
    )
    return rq.encode()


def abort_pdu(source: int = 0, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 Table 9-26): reserved, reserved, source, reason/diag."""
    return _HEADER.pack(A_ABORT, 0, 4) + bytes([0, 0, source, reason])


def pdata_pdu(*pdvs: tuple[int, int, bytes]) -> bytes:
    """P-DATA-TF (PS3.8 Table 9-22) from (context ID, message control header, fragment) PDVs."""
    body = b"".join(struct.pack(">IBB", len(data) + 2, cid, control) + data for cid, control, data in pdvs)
    return _HEADER.pack(P_DATA_TF, 0, len(body)) + body


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def echo_rq_command(message_id: int = 1) -> bytes:
    """A C-ECHO-RQ command set (PS3.7 Table 9.3-12), Implicit VR Little Endian, written by hand."""
    uid = VERIFICATION.encode() + b"\x00"  # UI padded to even length with NUL
    body = (
        _element(0x0000, 0x0002, uid)  # Affected SOP Class UID
        + _element(0x0000, 0x0100, struct.pack("<H", 0x0030))  # Command Field: C-ECHO-RQ
        + _element(0x0000, 0x0110, struct.pack("<H", message_id))  # Message ID
        + _element(0x0000, 0x0800, struct.pack("<H", 0x0101))  # Command Data Set Type: none
    )
    return _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


def echo_rq_pdata(message_id: int = 1, context_id: int = 1) -> bytes:
    """A whole C-ECHO-RQ in one P-DATA-TF with one PDV (command, last fragment)."""
    return pdata_pdu((context_id, 0x03, echo_rq_command(message_id)))


def parse_command(data: bytes) -> dict[tuple[int, int], bytes]:
    """A command set (Implicit VR LE) as {(group, element): raw value}."""
    elements: dict[tuple[int, int], bytes] = {}
    offset = 0
    for _ in range(64):  # bounded: a command set has a handful of elements
        if offset >= len(data):
            break
        group, element, length = struct.unpack_from("<HHI", data, offset)
        offset += 8
        assert offset + length <= len(data), f"element ({group:04X},{element:04X}) overruns the command set"
        elements[(group, element)] = data[offset : offset + length]
        offset += length
    return elements


def pdvs_of(pdu: bytes) -> list[tuple[int, int, bytes]]:
    """The (context ID, control header, fragment) PDVs of a P-DATA-TF PDU."""
    assert pdu[0] == P_DATA_TF, f"expected P-DATA-TF, got PDU type {pdu[0]:02X}H"
    result = []
    offset = 6
    for _ in range(1024):
        if offset >= len(pdu):
            break
        length, cid, control = struct.unpack_from(">IBB", pdu, offset)
        result.append((cid, control, pdu[offset + 6 : offset + 4 + length]))
        offset += 4 + length
    return result


def echo_rsp_status(pdu: bytes, message_id: int = 1) -> int:
    """Check a C-ECHO-RSP in one P-DATA-TF PDU and return its status."""
    pdvs = pdvs_of(pdu)
    assert len(pdvs) == 1 and pdvs[0][1] == 0x03, f"expected one last command fragment, got {pdvs}"
    fields = parse_command(pdvs[0][2])
    assert struct.unpack("<H", fields[(0x0000, 0x0100)])[0] == 0x8030, "not a C-ECHO-RSP"
    assert struct.unpack("<H", fields[(0x0000, 0x0120)])[0] == message_id, "wrong Message ID Being Responded To"
    return struct.unpack("<H", fields[(0x0000, 0x0900)])[0]


def _items(data: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """(item type, item value) of the variable items from ``offset`` (2-byte lengths)."""
    for _ in range(1024):
        if offset + 4 > len(data):
            return
        kind, _reserved, length = struct.unpack_from(">BBH", data, offset)
        yield kind, data[offset + 4 : offset + 4 + length]
        offset += 4 + length


def _item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(value)) + value


def associate_ac_for(rq: bytes, transfer_syntax: str = IMPLICIT_VR_LE, max_length: int = 16384) -> bytes:
    """An A-ASSOCIATE-AC (PS3.8 Table 9-17) accepting every context of ``rq`` with
    ``transfer_syntax``; written by hand from the RQ's bytes."""
    assert rq[0] == A_ASSOCIATE_RQ
    contexts = []
    for kind, value in _items(rq, 74):
        if kind == 0x20:  # Presentation Context Item (RQ)
            ts = _item(0x40, transfer_syntax.encode())
            contexts.append(_item(0x21, bytes([value[0], 0, 0, 0]) + ts))
    user_info = _item(0x50, _item(0x51, struct.pack(">I", max_length)) + _item(0x52, b"1.2.3.4.5.6"))
    # bytes 7-74: version, reserved, called and calling AE (echoed, not tested), 32 reserved
    body = struct.pack(">HH", 1, 0) + rq[10:42] + bytes(32)
    body += _item(0x10, APPLICATION_CONTEXT.encode()) + b"".join(contexts) + user_info
    return _HEADER.pack(A_ASSOCIATE_AC, 0, len(body)) + body


def rj_fields(pdu: bytes) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ (PS3.8 Table 9-21)."""
    assert pdu[0] == A_ASSOCIATE_RJ and len(pdu) == 10, f"not an A-ASSOCIATE-RJ: {pdu.hex()}"
    return pdu[7], pdu[8], pdu[9]


def abort_fields(pdu: bytes) -> tuple[int, int]:
    """(source, reason) of an A-ABORT (PS3.8 Table 9-26)."""
    assert pdu[0] == A_ABORT and len(pdu) == 10, f"not an A-ABORT: {pdu.hex()}"
    return pdu[8], pdu[9]


# -- raw-socket peers ---------------------------------------------------------------------


class PeerClosed(AssertionError):
    """The other side closed the connection where a test expected a PDU."""


class RawPeer:
    """One end of a TCP connection that speaks DICOM only as the test scripts it."""

    MAX_PDU = 1 << 20  # refuse to buffer more than this for one PDU

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray()

    @classmethod
    def connect(cls, port: int, timeout: float = 5.0) -> RawPeer:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(sock)

    def __enter__(self) -> RawPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read what arrives before ``deadline``; False on EOF, TimeoutError on nothing."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("nothing arrived in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("nothing arrived in time") from None
        except ConnectionResetError:
            return False
        if not data:
            return False
        self._buffer += data
        return True

    def recv_pdu(self, timeout: float = 5.0) -> bytes:
        """The next whole PDU (header included).  :class:`PeerClosed` on EOF,
        TimeoutError if it is not complete within ``timeout``."""
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            if len(self._buffer) >= 6:
                _, _, length = _HEADER.unpack_from(self._buffer)
                assert length <= self.MAX_PDU, f"peer announced a PDU of {length} bytes"
                if len(self._buffer) >= 6 + length:
                    pdu = bytes(self._buffer[: 6 + length])
                    del self._buffer[: 6 + length]
                    return pdu
            if not self._fill(deadline):
                raise PeerClosed(f"connection closed; {len(self._buffer)} bytes of a PDU pending: {bytes(self._buffer).hex()}")
        raise AssertionError("recv_pdu: too many reads")

    def expect_eof(self, timeout: float = 5.0) -> float:
        """Wait for the other side to close, with nothing more sent; returns the seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        for _ in range(100_000):
            assert not self._buffer, f"unexpected bytes before close: {bytes(self._buffer).hex()}"
            try:
                if not self._fill(deadline):
                    return time.monotonic() - started
            except TimeoutError:
                raise AssertionError(f"connection still open after {timeout} s") from None
        raise AssertionError("expect_eof: too many reads")

    def assert_open_for(self, seconds: float) -> None:
        """Nothing arrives and the connection stays open for ``seconds``."""
        try:
            still_open = self._fill(time.monotonic() + seconds)
        except TimeoutError:
            return
        if not still_open:
            raise AssertionError(f"the other side closed within {seconds} s")
        raise AssertionError(f"unexpected bytes: {bytes(self._buffer).hex()}")

    # -- scripted exchanges --------------------------------------------------------------

    def associate(self, calling: str = "RAWPEER", called: str = "DIMSEKIT") -> bytes:
        """Send an A-ASSOCIATE-RQ proposing Verification; return the A-ASSOCIATE-AC."""
        self.send(associate_rq(calling, called))
        ac = self.recv_pdu()
        assert ac[0] == A_ASSOCIATE_AC, f"expected A-ASSOCIATE-AC, got {ac.hex()}"
        return ac

    def echo(self, message_id: int = 1) -> int:
        """A C-ECHO on context 1; returns its status."""
        self.send(echo_rq_pdata(message_id))
        return echo_rsp_status(self.recv_pdu(), message_id)

    def release(self) -> None:
        """A-RELEASE-RQ, expect exactly A-RELEASE-RP, then close."""
        self.send(RELEASE_RQ)
        assert self.recv_pdu() == RELEASE_RP
        self.close()


class RawServer:
    """Accept one connection on a free port and run ``script(peer)`` on it in a thread.

    ``join()`` waits (bounded) and re-raises what the script raised; the
    script's return value is in ``result``.
    """

    def __init__(self, script: Callable[[RawPeer], Any], accept_timeout: float = 10.0) -> None:
        self.script = script
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(accept_timeout)
        self.port = self.listener.getsockname()[1]
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with RawPeer(conn) as peer:
                self.result = self.script(peer)
        except BaseException as exc:  # handed to the test thread by join()
            self.error = exc
        finally:
            self.listener.close()

    def join(self, timeout: float = 15.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"raw server script still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.result

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()


class SilentServer:
    """Accepts connections, records what arrives, and never answers."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sockets = [self.listener]
        while not self._stop.is_set():
            readable, _, _ = select.select(sockets, [], [], 0.05)
            for s in readable:
                if s is self.listener:
                    conn, _ = s.accept()
                    sockets.append(conn)
                    self._conns.append(conn)
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    self.received += data
                else:
                    sockets.remove(s)

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(5)
        for s in (self.listener, *self._conns):
            s.close()


# -- the splitting proxy ----------------------------------------------------------------


class _PduCounter:
    """Tracks PDU boundaries in one direction of the stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[int]:
        """Offsets (within ``data``) just past each PDU that ends in ``data``."""
        start = len(self._buffer)
        self._buffer += data
        ends = []
        offset = 0
        for _ in range(100_000):
            if len(self._buffer) - offset < 6:
                break
            _, _, length = _HEADER.unpack_from(self._buffer, offset)
            if len(self._buffer) - offset < 6 + length:
                break
            offset += 6 + length
            ends.append(offset - start)
        del self._buffer[:offset]
        return ends


class SplittingProxy:
    """A TCP proxy between a peer and ``target_port`` that changes the framing.

    In both directions it gathers what arrives within ``gather`` seconds of
    the first byte into one batch (so PDUs sent close together are
    coalesced), then re-sends the batch in chunks of random size (seeded):
    1 byte, a few bytes, tens to hundreds of bytes, or the rest -- except
    that every other batch holding several whole PDUs goes out in one send.
    The sockets have TCP_NODELAY and the proxy pauses briefly now and then
    between chunks, so the receiver sees the pieces as separate reads.

    ``chunk_sizes`` and ``pdus_per_send`` (whole PDUs ending in each send)
    record what it did, so a test can check that it really split and
    coalesced.
    """

    def __init__(self, target_port: int, seed: int, gather: float = 0.01) -> None:
        self.target_port = target_port
        self.gather = gather
        self.rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.chunk_sizes: list[int] = []
        self.pdus_per_send: list[int] = []
        self.connections = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self.listener], [], [], 0.05)
            if not readable:
                continue
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError as exc:
                self.errors.append(exc)
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(5)
            self._sockets += [client, server]
            self.connections += 1
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _chunks(self, batch: bytes, ends: list[int], whole: bool) -> Iterator[bytes]:
        if whole:
            yield batch
            return
        offset = 0
        for _ in range(len(batch) + 1):
            if offset >= len(batch):
                return
            with self._rng_lock:
                pick = self.rng.random()
                if pick < 0.35:
                    size = 1
                elif pick < 0.6:
                    size = self.rng.randint(2, 7)
                elif pick < 0.9:
                    size = self.rng.randint(8, 300)
                else:
                    size = len(batch) - offset
            yield batch[offset : offset + size]
            offset += size

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        counter = _PduCounter()
        coalesce_next = True
        try:
            for _ in range(1_000_000):
                if self._stop.is_set():
                    return
                readable, _, _ = select.select([src], [], [], 0.05)
                if not readable:
                    continue
                data = src.recv(65536)
                if not data:
                    return
                batch = bytearray(data)
                eof = False
                deadline = time.monotonic() + self.gather
                for _ in range(10_000):  # gather what follows closely: coalescing
                    left = deadline - time.monotonic()
                    if left <= 0 or len(batch) > 1 << 20:
                        break
                    readable, _, _ = select.select([src], [], [], left)
                    if not readable:
                        break
                    more = src.recv(65536)
                    if not more:
                        eof = True
                        break
                    batch += more
                ends = counter.feed(bytes(batch))
                whole = len(ends) >= 2 and coalesce_next
                if len(ends) >= 2:
                    coalesce_next = not coalesce_next
                sent = 0
                for chunk in self._chunks(bytes(batch), ends, whole):
                    dst.sendall(chunk)
                    self.chunk_sizes.append(len(chunk))
                    self.pdus_per_send.append(sum(1 for e in ends if sent < e <= sent + len(chunk)))
                    sent += len(chunk)
                    with self._rng_lock:
                        pause = self.rng.random() < 0.3
                    if pause:
                        time.sleep(0.0003)
                if eof:
                    return
        except OSError:
            pass  # a side went away: pass the close on below
        except BaseException as exc:  # pragma: no cover - reported by close()
            self.errors.append(exc)
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def __enter__(self) -> SplittingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for s in (self.listener, *self._sockets):
            s.close()
        assert not self.errors, self.errors


# -- scripts run with dimsekit in a subprocess ---------------------------------------------


def run_script(name: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run one of the helper scripts next to this file (``_scu.py`` ...)."""
    return run([sys.executable, str(HERE / name), *args], timeout=timeout)
