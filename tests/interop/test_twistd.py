"""``twistd dimsekit``: found by twistd, starts, answers, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from dimsekit.dimse.codec import encode_command
from tests.interop.conftest import (
    A_ABORT,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    P_DATA_TF,
    TWISTD,
    RawPeer,
    RawServer,
    abort_pdu,
    associate_ac_for,
    associate_rq,
    dcmtk,
    echoscu,
    free_port,
    parse_command,
    pdata_pdu,
    pdvs_of,
    run,
    start_node,
    stop,
    tiny_ct,
    wait_for_port,
)

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


@pytest.mark.parametrize(("signum", "exit_code", "line"), [
    (signal.SIGTERM, 0, "received SIGTERM, stopping the node"),
    # Ctrl-C: Twisted's handler, run by the reactor thread (dimsekit.signals); twistd exits by SIGINT
    (signal.SIGINT, -signal.SIGINT, "Received SIGINT, shutting down."),
])
def test_node_starts_answers_and_stops_cleanly_on_a_signal(tmp_path, signum, exit_code, line):
    node = start_node(tmp_path, sigint=signum == signal.SIGINT)
    try:
        result = echoscu(node.port)
        assert result.returncode == 0, result.stdout + result.stderr
        node.wait_log(r"calling=ECHOSCU called=DIMSEKIT .*released")
        node.proc.send_signal(signum)
        code = node.proc.wait(10)
    finally:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(5)
    text = node.log_text()
    assert code == exit_code, f"twistd exited with {code} on {signal.Signals(signum).name}:\n{text}"
    assert "Traceback" not in text, text
    assert line in text and "Main loop terminated" in text, text
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", node.port), timeout=1).close()


def reactor_stack_dumped(dump: str) -> bool:
    """The dump holds the reactor thread's whole stack: its main loop and,
    written last, twistd's script frame.  Not a frame of the poll itself --
    the signal may land while the reactor runs a callback or writes a log
    line, and then the poll is nowhere on the stack (a CI run failed so)."""
    return re.search(r"line \d+ in mainLoop\n", dump) is not None and re.search(r"line \d+ in <module>\n", dump) is not None


def test_sigusr2_dumps_every_threads_stack_and_the_node_goes_on(tmp_path):
    node = start_node(tmp_path)
    try:
        assert echoscu(node.port).returncode == 0  # the archive's threads exist by now
        node.proc.send_signal(signal.SIGUSR2)
        out = tmp_path / "twistd.out"
        # faulthandler writes the dump line by line, the reactor's outermost
        # frames last: read until they are there (or the deadline), not only
        # until the dump has begun
        deadline = time.monotonic() + 10
        while not reactor_stack_dumped(dump := out.read_text(errors="replace")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "Current thread" in dump and dump.count("Thread 0x") >= 1, dump
        assert reactor_stack_dumped(dump), dump
        node.assert_healthy()
    finally:
        stop(node.proc)


def test_bad_config_stops_start_up_with_a_message(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmax_associations = 0\n")
    result = run([TWISTD, "-n", "--pidfile", "", "dimsekit", "--config", str(config)], timeout=30)
    assert result.returncode != 0
    assert "max_associations" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_bad_plugin_section_stops_start_up_with_one_line(tmp_path):
    """A plugin refusing its [plugins.NAME] section (checked as the node is
    made, after the options) is one line naming the key too, not a traceback."""
    config = tmp_path / "bad.toml"
    config.write_text("[plugins.storage]\nno_such_key = 1\n")
    result = run([TWISTD, "-n", "--pidfile", "", "dimsekit", "--port", "0", "--data-dir", str(tmp_path / "data"),
                  "--config", str(config)], timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "plugins.storage.no_such_key: unknown key" in output, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "data").exists()  # nothing started


def test_a_port_in_use_stops_start_up_with_one_line(tmp_path):
    """The node's port is taken: twistd exits at once, non-zero, saying why --
    it went on running, listening nowhere and saying nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run([TWISTD, "-n", "--pidfile", "", "dimsekit", "--port", str(port), "--interface", "127.0.0.1",
                      "--data-dir", str(tmp_path / "data")], timeout=20)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert output.count(f"dimsekit: cannot listen on tcp:{port}:interface=127.0.0.1:") == 1, output
    assert "Address already in use" in output, output
    assert "Traceback" not in output, output


def test_a_bad_endpoint_stops_start_up_with_one_line(tmp_path):
    result = run([TWISTD, "-n", "--pidfile", "", "dimsekit", "--endpoint", "nosuchkind:1",
                  "--data-dir", str(tmp_path / "data")], timeout=20)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "dimsekit: --endpoint 'nosuchkind:1':" in output, output
    assert "Traceback" not in output, output


def test_an_unusable_data_directory_stops_start_up_with_one_line(tmp_path):
    # it ran on, refusing every C-STORE (A700) and finding nothing, after a traceback in its log
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = run([TWISTD, "-n", "--pidfile", "", "dimsekit", "--port", str(free_port()), "--interface", "127.0.0.1",
                  "--data-dir", str(blocker / "data")], timeout=20)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"dimsekit: data directory {blocker / 'data'}: Not a directory" in output, output
    assert "Traceback" not in output, output


def test_sigterm_lets_a_running_association_finish(tmp_path):
    node = start_node(tmp_path)
    try:
        with RawPeer.connect(node.port) as peer:
            peer.associate(calling="GRACEFUL")
            node.proc.send_signal(signal.SIGTERM)
            node.wait_log(r"waiting up to .* association")
            assert peer.echo() == 0x0000  # still served while the node waits for it
            started = time.monotonic()
            peer.release()
        code = node.proc.wait(5)
        assert time.monotonic() - started < 3, "the node kept waiting after the association ended"
    finally:
        stop(node.proc)
    assert code == 0, node.log_text()
    assert "Traceback" not in node.log_text()
    assert "released" in node.wait_log(r"calling=GRACEFUL")


def test_sigterm_aborts_associations_that_outlast_the_grace_period(tmp_path):
    node = start_node(tmp_path)
    try:
        with RawPeer.connect(node.port) as peer, RawPeer.connect(node.port) as other:
            peer.associate(calling="STUBBORN1")
            other.associate(calling="STUBBORN2")
            started = time.monotonic()
            node.proc.send_signal(signal.SIGTERM)
            for p in (peer, other):
                # the A-ABORT reaches the peer before the connection closes
                assert p.recv_pdu(timeout=10) == abort_pdu(source=0, reason=0)
                p.expect_eof(timeout=3)
            code = node.proc.wait(5)
            assert time.monotonic() - started < 9
    finally:
        stop(node.proc)
    assert code == 0, node.log_text()
    assert "Traceback" not in node.log_text()
    assert "shutting down" in node.wait_log(r"calling=STUBBORN2")


def test_sigterm_aborts_the_associations_the_node_opened(tmp_path):
    """A C-MOVE whose destination never answers its C-STORE: on SIGTERM the node
    waits its grace period, then aborts both the mover's association and the one
    it opened itself to the destination -- an A-ABORT, not a bare close."""
    from pydicom.data import get_testdata_file

    seen: dict[str, object] = {}

    def stuck_destination(peer: RawPeer) -> None:
        rq = peer.recv_pdu(timeout=20)
        peer.send(associate_ac_for(rq, EXPLICIT_VR_LE))
        first = peer.recv_pdu(timeout=10)  # the C-STORE-RQ, never answered
        seen["store"] = first[0]
        while True:
            pdu = peer.recv_pdu(timeout=20)
            if pdu[0] == A_ABORT:
                seen["abort"] = pdu
                seen["eof"] = peer.expect_eof(timeout=5)
                return

    with RawServer(stuck_destination, accept_timeout=30) as destination:
        node = start_node(tmp_path, config=(
            f'[[remote]]\nae_title = "STUCK"\nhost = "127.0.0.1"\nport = {destination.port}\n'))
        mover = None
        try:
            ct = get_testdata_file("CT_small.dcm")
            stored = run([dcmtk("storescu"), "-aec", "DIMSEKIT", "127.0.0.1", str(node.port), ct])
            assert stored.returncode == 0, stored.stdout + stored.stderr
            mover = subprocess.Popen(
                [dcmtk("movescu"), "-S", "-aec", "DIMSEKIT", "-aem", "STUCK", "-k", "QueryRetrieveLevel=STUDY",
                 "-k", f"StudyInstanceUID={dcmread(ct).StudyInstanceUID}", "127.0.0.1", str(node.port)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while "store" not in seen and time.monotonic() < deadline:
                time.sleep(0.05)
            assert "store" in seen, "the C-STORE sub-operation never reached the destination"
            node.proc.send_signal(signal.SIGTERM)
            destination.join(timeout=25)
            code = node.proc.wait(10)
        finally:
            stop(node.proc)
            if mover is not None:
                stop(mover)
    assert seen["store"] == P_DATA_TF
    assert seen.get("abort") == abort_pdu(source=0, reason=0), seen
    assert code == 0, node.log_text()
    assert "Traceback" not in node.log_text()


def test_a_node_started_with_few_open_files_raises_its_limit_and_takes_many_connections(tmp_path):
    """Started with a soft limit of 256 open files (systemd's default is 1,024), the node raises
    it toward the hard limit: 300 idle connections held open (a port scanner, each kept up to
    the ARTIM timeout), DCMTK echoscu and storescu still get through.  Before, the node hit
    EMFILE and refused them ("Peer aborted Association")."""
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or hard > 600, f"the hard limit {hard} leaves nothing to test"
    node = start_node(tmp_path, open_files=256)
    idle = []
    try:
        expected = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        node.wait_log(rf"open files limit raised from 256 to {expected} ")
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", node.port), timeout=5))
        assert echoscu(node.port).returncode == 0
        ds = tiny_ct()
        path = tmp_path / "ct.dcm"
        ds.save_as(path, enforce_file_format=True)
        stored = run([dcmtk("storescu"), "-aec", "DIMSEKIT", "127.0.0.1", str(node.port), str(path)])
        assert stored.returncode == 0, stored.stderr
        assert "EMFILE" not in node.log_text()
    finally:
        for connection in idle:
            connection.close()
        code = stop(node.proc)
    assert code == 0
    assert "Traceback" not in node.log_text()


def open_files(pid: int) -> list[str]:
    """What a process has open (/proc/PID/fd); a descriptor closed while they are read is skipped."""
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:  # closed since the listing (a connection, a file of the archive)
            continue
    return links


def test_a_large_query_is_spooled_under_the_data_directory(tmp_path):
    """A data set that is not an instance for the archive (here a 3 MiB C-FIND identifier)
    goes past its 1 MiB in memory into an anonymous file under ``<data dir>/.spool``:
    the disk the node was given, not a /tmp that is often memory.  Seen in the node's open
    files while the identifier is half sent."""


    find = "1.2.840.10008.5.1.4.1.2.2.1"
    node = start_node(tmp_path)
    spool = str(tmp_path / "dimsekit-data" / ".spool")
    try:
        with RawPeer.connect(node.port) as peer:
            peer.send(associate_rq(contexts=[(find, [IMPLICIT_VR_LE])]))
            assert peer.recv_pdu()[0] == 0x02  # A-ASSOCIATE-AC
            command = encode_command({"CommandField": 0x0020, "MessageID": 7, "AffectedSOPClassUID": find,
                                      "Priority": 0, "CommandDataSetType": 0x0001})
            level = b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY "
            blob = 3 << 20
            identifier = level + struct.pack("<HHI", 0x0009, 0x1010, blob) + bytes(blob)
            peer.send(pdata_pdu((1, 0x03, command)))
            step = 16000
            half = len(identifier) // 2
            for offset in range(0, half, step):
                peer.send(pdata_pdu((1, 0x00, identifier[offset:offset + step])))
            spooled = []
            for _ in range(100):  # bounded: 5 s
                spooled = [link for link in open_files(node.proc.pid) if link.startswith(spool + "/")]
                if spooled:
                    break
                time.sleep(0.05)
            assert spooled, f"no open file under {spool}"
            rest = range(half - half % step, len(identifier), step)
            for offset in rest:
                last = offset + step >= len(identifier)
                peer.send(pdata_pdu((1, 0x02 if last else 0x00, identifier[offset:offset + step])))
            status = None
            for _ in range(10):  # the final response (an empty archive: no pending ones)
                (cid, control, data), = pdvs_of(peer.recv_pdu(timeout=10))
                fields = parse_command(data)
                status = struct.unpack("<H", fields[(0x0000, 0x0900)])[0]
                if status not in (0xFF00, 0xFF01):
                    break
            assert status == 0x0000
            peer.release()
        assert os.listdir(spool) == []  # an anonymous file: nothing left behind
        node.assert_healthy()
    finally:
        code = stop(node.proc)
    assert code == 0, node.log_text()


def test_the_systemd_unit_starts_a_node_and_stops_it(tmp_path):
    """docs/deploy/dimsekit.service: its ExecStart (our twistd, a configuration and data
    directory of the test's) runs a node that answers DCMTK echoscu and stores what
    storescu sends, logs to stdout (the journal), and stops on SIGTERM within the unit's
    TimeoutStopSec with status 0 (Restart=on-failure would otherwise restart it).  When
    this machine has systemd-analyze, the unit also passes its verify."""
    unit = Path(__file__).parents[2] / "docs" / "deploy" / "dimsekit.service"
    service = {}
    section = None
    for line in unit.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith("#") and section == "Service":
            key, _, value = line.partition("=")
            service[key.strip()] = value.strip()
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/dimsekit/bin/twistd"
    port, data = free_port(), tmp_path / "state"
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\nport = {port}\ninterface = "127.0.0.1"\n')
    argv = [TWISTD] + [{"/etc/dimsekit/node.toml": str(config), "/var/lib/dimsekit": str(data)}.get(a, a)
                       for a in argv[1:]]
    if shutil.which("systemd-analyze"):
        local = tmp_path / "dimsekit.service"
        local.write_text(unit.read_text().replace(service["ExecStart"], shlex.join(argv)))
        verified = run(["systemd-analyze", "verify", str(local)], timeout=30)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    out = (tmp_path / "journal").open("wb")
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    try:
        wait_for_port(port, 20.0, proc)
        assert echoscu(port).returncode == 0
        ct = tiny_ct()
        sent = tmp_path / "ct.dcm"
        ct.save_as(sent, enforce_file_format=True)
        stored = run([dcmtk("storescu"), "-aec", "DIMSEKIT", "127.0.0.1", str(port), str(sent)], timeout=30)
        assert stored.returncode == 0, stored.stdout + stored.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=float(service["TimeoutStopSec"])) == 0
    finally:
        stop(proc)
    journal = (tmp_path / "journal").read_text()
    assert "listening on 127.0.0.1" in journal and "calling=STORESCU" in journal, journal
    assert "Traceback" not in journal, journal
    assert list(data.rglob(f"{ct.SOPInstanceUID}.dcm")), "the instance is not in the data directory"


def test_the_node_listens_on_an_ipv6_interface(tmp_path):
    """``--interface ::1`` (an IPv6 address: its colons used to split twistd's endpoint
    description, and the node died at start with a traceback)."""
    port = free_port()
    log = tmp_path / "twistd.log"
    proc = subprocess.Popen([TWISTD, "-n", "--logfile", str(log), "--pidfile", "", "dimsekit", "--port", str(port),
                             "--interface", "::1"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(200):  # bounded: 20 s
            try:
                sock = socket.create_connection(("::1", port), timeout=5)
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.1)
        else:
            raise AssertionError(f"nothing listens on [::1]:{port}\n{log.read_text()}")
        with sock:
            peer = RawPeer(sock)
            peer.associate()
            assert peer.echo() == 0x0000
            peer.release()
    finally:
        code = stop(proc)
    text = log.read_text()
    assert code == 0, text
    assert f"listening on ::1:{port}" in text and "Traceback" not in text, text
