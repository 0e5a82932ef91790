"""``--total-timeout`` of dimsekit find, get and move against an SCP whose operations never
end (a pending response every 0.2 s, for ever: LESSONS.md #30).  Each pending response
restarts --timeout's wait, so only --total-timeout ends them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.interop.conftest import DIMSEKIT_CLI, SAME_CODE, run, start_peer_script, stop

pytestmark = pytest.mark.interop

SCP = Path(__file__).with_name("_endless_scp.py")


@pytest.fixture
def endless_scp(tmp_path):
    scp, port, output = start_peer_script(SCP, tmp_path)
    try:
        yield port
    finally:
        stop(scp)
    assert "Traceback" not in output.read_text()


@pytest.mark.parametrize("tool", [
    ["find", "-k", "PatientID"],
    ["get", "-k", "StudyInstanceUID=1.2.3"],
    ["move", "-k", "StudyInstanceUID=1.2.3", "--dest", "ELSEWHERE"],
])
def test_total_timeout_ends_an_operation_that_never_ends(endless_scp, tmp_path, tool):
    argv = [*DIMSEKIT_CLI, tool[0], "127.0.0.1", str(endless_scp), "-aec", "ANY-SCP", "-to", "1",
            "--total-timeout", "2", *tool[1:]]
    if tool[0] == "get":
        argv += ["--out-dir", str(tmp_path / "got")]
    started = time.monotonic()
    done = run(argv, timeout=30, env={**os.environ, **SAME_CODE})
    took = time.monotonic() - started
    said = done.stdout + done.stderr
    assert done.returncode == 1, said
    assert "not finished within 2 s" in said, said
    assert 2 <= took < 10, took


def test_without_it_the_wait_for_each_response_does_not_end_it(endless_scp):
    # -to 1 with a pending response every 0.2 s: still running after 3 s (then stopped here)
    proc = subprocess.Popen([*DIMSEKIT_CLI, "find", "127.0.0.1", str(endless_scp), "-aec", "ANY-SCP", "-to", "1",
                             "-k", "PatientID"], env={**os.environ, **SAME_CODE},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        assert proc.poll() is None
    finally:
        stop(proc)
