"""Fixtures for interop tests: real peers (DCMTK tools, pynetdicom, a dimsekit
node under twistd) on 127.0.0.1, free ports, processes stopped by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DCMTK_BIN = Path("/usr/bin")


def dcmtk(tool: str) -> str:
    """The path of a DCMTK tool.

    pynetdicom installs console scripts named like DCMTK's (echoscu, storescp,
    ...) which come first on PATH here; DCMTK's own live in /usr/bin.  A
    missing tool fails the test: .ci/run installs DCMTK, nothing is skipped.
    """
    path = DCMTK_BIN / tool
    assert path.exists(), f"DCMTK's {tool} is missing at {path}: run .ci/run (apt-get install dcmtk)"
    return str(path)


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


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a process we started, by PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class Node:
    """A dimsekit node run by twistd in a subprocess."""

    def __init__(self, port: int, proc: subprocess.Popen, log: Path, workdir: Path) -> None:
        self.port = port
        self.proc = proc
        self.log = log
        self.workdir = workdir

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start_node(tmp_path: Path, *args: str, config: str | None = None, env: dict | None = None) -> Node:
    port = free_port()
    log = tmp_path / "twistd.log"
    cmd = [sys.executable, "-m", "twisted", "-n", "--logfile", str(log), "--pidfile", "", "dimsekit",
           "--port", str(port), "--interface", "127.0.0.1"]
    if config is not None:
        cfg = tmp_path / "node.toml"
        cfg.write_text(config)
        cmd += ["--config", str(cfg)]
    cmd += list(args)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, 20.0, proc)
    except Exception:
        stop(proc)
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        raise RuntimeError(f"node did not start: {out}\n{log.read_text() if log.exists() else ''}") from None
    return Node(port, proc, log, tmp_path)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A zero-configuration dimsekit node on a free port."""
    n = start_node(tmp_path)
    yield n
    stop(n.proc)
    assert "Traceback" not in n.log_text(), n.log_text()


def run(cmd: list[str], timeout: float = 60.0, **kwargs) -> subprocess.CompletedProcess:
    """Run a peer tool to completion (bounded in time)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
