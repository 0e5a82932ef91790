"""``twistd dimsekit``: found by twistd, starts, answers, stops cleanly on SIGTERM."""

from __future__ import annotations

import signal
import socket

import pytest

from tests.interop.conftest import TWISTD, echoscu, run, start_node

pytestmark = pytest.mark.interop


def test_twistd_help_lists_dimsekit():
    result = run([TWISTD, "--help"], timeout=30)
    assert result.returncode == 0, result.stderr
    commands = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("    ") and line.split()]
    assert "dimsekit" in commands, result.stdout


def test_twistd_dimsekit_help_shows_its_options():
    result = run([TWISTD, "dimsekit", "--help"], timeout=30)
    assert result.returncode == 0, result.stderr
    for option in ("--port", "--aet", "--config"):
        assert option in result.stdout, result.stdout


def test_node_starts_answers_and_stops_cleanly_on_sigterm(tmp_path):
    node = start_node(tmp_path)
    try:
        result = echoscu(node.port)
        assert result.returncode == 0, result.stdout + result.stderr
        node.wait_log(r"calling=ECHOSCU called=DIMSEKIT .*released")
        node.proc.send_signal(signal.SIGTERM)
        code = node.proc.wait(10)
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(5)
    text = node.log_text()
    assert code == 0, f"twistd exited with {code} on SIGTERM:\n{text}"
    assert "Traceback" not in text, text
    assert "Main loop terminated" in text, text
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", node.port), timeout=1).close()


def test_bad_config_stops_start_up_with_a_message(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_associations = 0\n")
    result = run([TWISTD, "-n", "--pidfile", "", "dimsekit", "--config", str(config)], timeout=30)
    assert result.returncode != 0
    assert "max_associations" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
