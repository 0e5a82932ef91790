"""Run a command with a terminal of its own (a pseudo-terminal), as when someone starts
it from a shell: OpenSSL asks for a key's pass phrase on the controlling terminal
(``/dev/tty``), so a test without one would never see the prompt.  Test code."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

#: makes the pseudo-terminal on its stdin the controlling terminal of a new session, then runs argv[1:]
_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execvp(sys.argv[1], sys.argv[1:])\n"
)


def run_on_a_terminal(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                      timeout: float = 20.0) -> tuple[int | None, str]:
    """Run ``cmd`` with a pseudo-terminal as its controlling terminal, stdin, stdout and
    stderr; nothing is ever typed.  Returns (exit status, or None if it was still
    running after ``timeout`` seconds and was killed; what it wrote to the terminal)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", _TAKE_TERMINAL, *cmd], stdin=slave, stdout=slave, stderr=slave,
            env=dict(env) if env is not None else None, start_new_session=True,
        )
    finally:
        os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every process holding the terminal has closed it
                    chunk = b""
                if not chunk:
                    break
                output += chunk
            elif proc.poll() is not None:
                break
        try:
            code: int | None = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
    finally:
        if proc.poll() is None:
            proc.kill()  # by PID: the process we started
            proc.wait(10)
        os.close(master)
    return code, output.decode(errors="replace").replace("\r\n", "\n")
