"""Shared plumbing of the benchmarks: free ports, server processes stopped by
PID, peak RSS, medians, result files.

Every process a benchmark starts is a child started here: it binds
127.0.0.1 on a free port, and :class:`Servers` stops each one by its own PID
(SIGTERM, then SIGKILL after a bound) when the ``with`` block ends, whether
the benchmark finished or failed.  Nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DCMTK_BIN = Path("/usr/bin")


def dcmtk(tool: str) -> str:
    """DCMTK's own tool (pynetdicom installs look-alike scripts earlier on PATH)."""
    path = DCMTK_BIN / tool
    if not path.exists():
        raise SystemExit(f"DCMTK's {tool} is missing at {path} (apt-get install dcmtk)")
    return str(path)


def twistd() -> str:
    """twistd next to the running Python (the one dimsekit is installed in)."""
    sibling = Path(sys.executable).with_name("twistd")
    if sibling.exists():
        return str(sibling)
    found = shutil.which("twistd")
    if not found:
        raise SystemExit("twistd not found")
    return found


ORTHANC = Path("/usr/sbin/Orthanc")


def orthanc(out: Path, port: int, *, overwrite: bool = False, **settings: Any) -> list[str]:
    """The command of an Orthanc (the Debian package's) that stores into ``out`` -- its files and
    its SQLite index, no compression -- and listens for DICOM on ``port`` as ANY-SCP (its REST API
    on another free port, localhost only).  ``overwrite``: an instance sent again is stored again
    (Orthanc otherwise keeps the first copy and only reads the new one).  ``settings``: more of
    its configuration."""
    if not ORTHANC.exists():
        raise SystemExit(f"Orthanc is missing at {ORTHANC} (apt-get install orthanc)")
    out.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{out.name}.orthanc.json"
    config.write_text(json.dumps({
        "Name": "bench", "StorageDirectory": str(out), "IndexDirectory": str(out), "StorageCompression": False,
        "DicomPort": port, "DicomAet": "ANY-SCP", "HttpPort": free_port(), "RemoteAccessAllowed": False,
        "Plugins": [], "OverwriteInstances": overwrite, **settings,
    }))
    return [str(ORTHANC), str(config)]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until something accepts connections on 127.0.0.1:port (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before listening")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:g} s")


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size of a live process, from /proc/PID/status (VmHWM, KiB)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Server:
    """A server process under test."""

    name: str
    port: int
    proc: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Servers(contextlib.AbstractContextManager):
    """Starts servers; stops every one of them by PID on exit."""

    started: list[Server] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        port: int,
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        wait: bool = True,
    ) -> Server:
        RESULTS.mkdir(parents=True, exist_ok=True)
        log = RESULTS / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # Ctrl-C in the terminal reaches only us
            )
        server = Server(name, port, proc, log)
        self.started.append(server)
        if wait:
            try:
                wait_for_port(port, proc)
            except RuntimeError as exc:
                raise RuntimeError(f"{name}: {exc}; see {log}") from None
        return server

    def stop(self, server: Server, timeout: float = 10.0) -> None:
        proc = server.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if server in self.started:
            self.started.remove(server)

    def __exit__(self, *exc: Any) -> None:
        for server in list(reversed(self.started)):
            self.stop(server)


def create_cost(directory: Path, count: int = 200) -> float:
    """Median microseconds to create an empty file in a new subdirectory of ``directory``.

    The files stay (removing them would slow the next creations: see
    :func:`wait_for_fast_creates`); ``directory`` is the run's work directory,
    removed at its end.
    """
    probe = directory / f"create-probe-{time.monotonic_ns()}"
    probe.mkdir(parents=True)
    times = []
    for i in range(count):
        started = time.perf_counter()
        os.close(os.open(probe / str(i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def wait_for_fast_creates(directory: Path, *, limit_us: float = 60.0, timeout: float = 420.0) -> float:
    """Wait (bounded) until creating a file in ``directory``'s file system is cheap again.

    ext4 without a journal (this kind of machine's root file system) does not
    hand out an inode freed in the last minute -- five while its inode block
    is not yet written back -- and scans past every such inode at each
    creation: after some thousands of deletions (an earlier benchmark's
    output, a test run) a file costs ~0.1-0.7 ms to create instead of
    ~10 us, for every receiver, which hides what each one costs.  Probes every
    15 s; returns the last median (µs), said if still over the limit.
    """
    deadline = time.monotonic() + timeout
    cost = create_cost(directory)
    while cost > limit_us and time.monotonic() < deadline:
        print(f"creating a file costs {cost:.0f} us (recent deletions on this file system): "
              f"waiting for it to fall under {limit_us:.0f} us", flush=True)
        time.sleep(15)
        os.sync()
        cost = create_cost(directory)
    if cost > limit_us:
        print(f"creating a file still costs {cost:.0f} us: figures will be low for every receiver", flush=True)
    return cost


def settle(warm: Sequence[Path] = ()) -> bool:
    """Write back what the last receiver left, drop the page cache, read ``warm`` (files,
    directories) back in.

    Dropping needs root (``/proc/sys/vm/drop_caches``); without it only the
    write-back happens and False is returned.  Why: on a virtual machine whose
    host takes back the memory the guest frees (free page reporting, a
    balloon, DAMON), page cache growing into such memory made each file
    written cost more than the one before -- later receivers ran up to ~2x
    slower than the first.  From the same empty cache (the inputs read back
    in), every receiver starts alike.
    """
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as knob:
            knob.write("3\n")
    except OSError:
        return False
    for top in warm:
        for path in sorted(top.rglob("*")) if top.is_dir() else [top]:
            if path.is_file():
                with path.open("rb") as f:
                    while f.read(1 << 20):
                        pass
    return True


def prefault(nbytes: int) -> None:
    """Touch ``nbytes`` of fresh memory and free it again, just before a transfer.

    On a virtual machine whose host takes back memory the guest frees (free
    page reporting, ~2 s after the free), the first touch of such a page
    costs a trip to the host: a transfer whose receiver (or spool) needed
    1 GiB of fresh pages ran at ~1,000 MiB/s or at half that, depending on
    how much of it had been taken back (bench_store_large.py).  Freed just now, these pages are the
    ones the transfer gets, still backed.

    In a process of its own: the harness's peak RSS is inherited by the
    sender processes it starts (``getrusage`` counts it across ``exec``).
    """
    code = (f"b = bytearray({nbytes})\n"
            f"for i in range(0, {nbytes}, {os.sysconf('SC_PAGE_SIZE')}): b[i] = 1\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def environment() -> dict[str, Any]:
    """What a result depends on, recorded next to it."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for module in ("twisted", "pydicom", "pynetdicom"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - informational only
            pass
    try:
        info["dimsekit_commit"] = subprocess.run(
            ["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()
    except OSError:
        pass
    try:
        info["dcmtk"] = subprocess.run(
            [dcmtk("storescp"), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.splitlines()[0].strip("$ ")
    except (OSError, SystemExit, IndexError):
        pass
    return info


def save(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write results/<name>.json and results/<name>.md; return their paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{name}.json"
    md_path = RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:,.{digits}f}"


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory removed at the end, whatever happens."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
