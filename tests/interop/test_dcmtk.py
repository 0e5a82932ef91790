"""dimsekit against DCMTK: echoscu -> node, ``dimsekit echo`` -> storescp, and
the node's access rules as echoscu sees them."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from tests.interop.conftest import (
    DIMSEKIT_CLI,
    dcmtk,
    echoscu,
    free_port,
    run,
    start_node,
    stop,
    wait_for_port,
)

pytestmark = pytest.mark.interop


def test_echoscu_to_node(node):
    result = echoscu(node.port, "-aet", "DCMTKSCU", "-v")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Echo Response (Success)" in output, output
    line = node.wait_log(r"association acceptor .*calling=DCMTKSCU")
    assert "called=DIMSEKIT" in line, line
    # the accepted context, by UID or by name
    assert re.search(r"contexts=\[(1\.2\.840\.10008\.1\.1|Verification SOP Class)\]", line), line
    assert re.search(r"ended: released", line), line
    assert "peer=127.0.0.1:" in line, line


def test_echoscu_repeated_on_one_association(node):
    result = echoscu(node.port, "--repeat", "20", "-v")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("Received Echo Response (Success)") == 20, output


@pytest.fixture
def storescp(tmp_path) -> Iterator[int]:
    """DCMTK storescp (/usr/bin, not pynetdicom's) on a free port, AE title STORESCP."""
    port = free_port()
    out = (tmp_path / "storescp.out").open("wb")
    proc = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", str(port)], cwd=tmp_path,
                            stdout=out, stderr=subprocess.STDOUT)
    out.close()
    try:
        wait_for_port(port, 10, proc)
        yield port
    finally:
        stop(proc)


def test_dimsekit_echo_to_storescp(storescp):
    result = run([*DIMSEKIT_CLI, "echo", "127.0.0.1", str(storescp), "-aec", "STORESCP"], timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1/1 Success" in result.stdout, result.stdout


def test_dimsekit_echo_repeat_50_to_storescp(storescp):
    result = run([*DIMSEKIT_CLI, "echo", "127.0.0.1", str(storescp), "-aec", "STORESCP", "--repeat", "50"],
                 timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "50/50 Success" in result.stdout, result.stdout


CHECK_CALLED = """
[node]
check_called_ae = true
"""


def test_node_checking_called_ae_rejects_echoscu_to_wrong_title(tmp_path):
    node = start_node(tmp_path, config=CHECK_CALLED)
    try:
        result = echoscu(node.port, "-aec", "WRONG")
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "reject" in output.lower(), output
        assert "called ae title not recognized" in output.lower(), output
        node.wait_log(r"calling=ECHOSCU called=WRONG\b.*reject.*(1/1/7|called-AE-title-not-recognized)")
        node.assert_healthy()  # the right title is still accepted
    finally:
        assert stop(node.proc) == 0


ACCESS_LIST = """
[node]
allow_unknown_callers = false

[[remote]]
ae_title = "KNOWNSCU"
host = "127.0.0.1"
port = 11113
"""


def test_unknown_calling_ae_rejected_listed_one_accepted(tmp_path):
    node = start_node(tmp_path, config=ACCESS_LIST)
    try:
        result = echoscu(node.port, "-aet", "STRANGER")
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "calling ae title not recognized" in output.lower(), output
        node.wait_log(r"calling=STRANGER\b.*reject.*(1/1/3|calling-AE-title-not-recognized)")

        result = echoscu(node.port, "-aet", "KNOWNSCU", "-v")
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "Received Echo Response (Success)" in output, output
        assert "released" in node.wait_log(r"calling=KNOWNSCU")
        assert "Traceback" not in node.log_text()
    finally:
        assert stop(node.proc) == 0


def test_echoscu_aborting_instead_of_releasing(shared_node):
    result = echoscu(shared_node.port, "-aet", "DCMTKABORT", "--abort", "-v")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Echo Response (Success)" in output, output
    line = shared_node.wait_log(r"calling=DCMTKABORT ")
    assert "abort" in line, line
    shared_node.assert_healthy()


@pytest.mark.parametrize("options", [
    ("-pts", "38"),  # many transfer syntaxes per context, compressed ones included
    ("-ppc", "128", "-pts", "3"),  # the most presentation contexts a request can hold
    ("-pdu", "4096"),  # the smallest maximum PDU length echoscu offers
    ("-pdu", "131072"),
])
def test_echoscu_negotiation_variants(shared_node, options):
    result = echoscu(shared_node.port, *options, "-v")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Echo Response (Success)" in output, output
    shared_node.assert_healthy()


def test_many_echoscu_at_once(shared_node):
    procs = [subprocess.Popen([dcmtk("echoscu"), "-aec", "DIMSEKIT", "-aet", f"PARALLEL{i}", "--repeat", "5",
                               "127.0.0.1", str(shared_node.port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(16)]
    try:
        codes = [p.wait(30) for p in procs]
    finally:
        for p in procs:
            stop(p)
            if p.stdout:
                p.stdout.close()
    assert codes == [0] * 16, codes
    for i in range(16):
        assert "released" in shared_node.wait_log(rf"calling=PARALLEL{i} ")
    shared_node.assert_healthy()
