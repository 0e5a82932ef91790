"""C-ECHO throughput of DICOM servers, measured with one minimal raw-socket client.

    python benchmarks/bench_echo.py                 # full run (about 3 minutes)
    python benchmarks/bench_echo.py --quick         # 3 rounds, shorter runs

Servers, each started here on a free 127.0.0.1 port and stopped by PID:

* ``dimsekit``   -- ``twistd -n --pidfile= dimsekit --port N --interface 127.0.0.1``
* ``pynetdicom`` -- ``pynetdicom_scp.py`` (pynetdicom 3 AE, Verification, TCP_NODELAY patched on)
* ``dcmtk``      -- ``/usr/bin/storescp --ignore`` with ``TCP_NODELAY=1`` in its environment
* ``canned``     -- ``canned_scp.py``: fixed answers, no DICOM; the client's own ceiling
* ``dimsekit@DIR`` -- the same twistd node run from another source tree
  (``PYTHONPATH=DIR``), e.g. a copy of the code before a change: before/after
  in the same run (``--servers dimsekit,dimsekit@/tmp/before``)

Measures, for each server, in rounds (each round visits every server in
turn, so that a noisy neighbour slows all of them alike):

* C-ECHOs per second on one association (until ``--echo-count`` echoes or
  ``--echo-seconds``, whichever comes first);
* associations per second: connect, A-ASSOCIATE, one C-ECHO, A-RELEASE,
  close (until ``--assoc-count`` or ``--assoc-seconds``);
* ``dimsekit echo --repeat N`` round trips per second, against dimsekit and
  DCMTK (and pynetdicom): the figure the foundation issue asks for.  That is
  dimsekit's SCU *and* the server together.

Reported: the median of the rounds, and the ratios dimsekit/pynetdicom and
dimsekit/DCMTK (ratio of medians, with the range of the per-round ratios).
Results go to ``benchmarks/results/echo.{json,md}``.
"""

from __future__ import annotations

import argparse
import errno
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (  # noqa: E402
    HERE,
    Servers,
    dcmtk,
    environment,
    fmt,
    free_port,
    median,
    save,
    table,
    temp_dir,
    twistd,
    vm_hwm_kib,
)

from dimsekit.dimse.codec import decode_command, encode_command  # noqa: E402
from dimsekit.ul.negotiation import build_associate_rq  # noqa: E402
from dimsekit.ul.pdu import encode_pdata  # noqa: E402

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"

# ---------------------------------------------------------------------------
# The client: every PDU it sends is built once, here.
# ---------------------------------------------------------------------------
ASSOCIATE_RQ = build_associate_rq(
    called_ae_title="ANY-SCP", calling_ae_title="BENCH", contexts=[(VERIFICATION, (IMPLICIT_VR_LE,))]
).encode()
ECHO_RQ = encode_pdata(
    [(1, 0x03, encode_command({"CommandField": 0x0030, "MessageID": 1,
                               "AffectedSOPClassUID": VERIFICATION, "CommandDataSetType": 0x0101}))]
)
RELEASE_RQ = bytes.fromhex("05 00 00000004 00000000")


class RawClient:
    """One association on a plain blocking socket (TCP_NODELAY on)."""

    def __init__(self, port: int, local_port: int | None = None) -> None:
        if local_port is None:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        else:  # see assoc_run
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.settimeout(30)
            self.sock.bind(("127.0.0.1", local_port))
            self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def pdu(self) -> bytes:
        buf, recv = self.buf, self.sock.recv
        while True:
            if len(buf) >= 6:
                end = 6 + int.from_bytes(buf[2:6], "big")
                if len(buf) >= end:
                    pdu = bytes(buf[:end])
                    del buf[:end]
                    return pdu
            chunk = recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk

    def associate(self) -> None:
        self.sock.sendall(ASSOCIATE_RQ)
        pdu = self.pdu()
        if pdu[0] != 0x02:
            raise RuntimeError(f"association not accepted: PDU type {pdu[0]:02X}H")

    def echo(self) -> bytes:
        """Send the C-ECHO-RQ; return the response's command bytes."""
        self.sock.sendall(ECHO_RQ)
        command = b""
        while True:
            pdu = self.pdu()
            if pdu[0] != 0x04:
                raise RuntimeError(f"expected P-DATA-TF, got PDU type {pdu[0]:02X}H")
            pos, end = 6, len(pdu)
            while pos < end:  # PDV items: length (4), context (1), control (1), fragment
                item_end = pos + 4 + int.from_bytes(pdu[pos : pos + 4], "big")
                command += pdu[pos + 6 : item_end]
                control = pdu[pos + 5]
                pos = item_end
            if control & 0x03 == 0x03:  # last fragment of the command set
                return command

    def release(self) -> None:
        self.sock.sendall(RELEASE_RQ)
        pdu = self.pdu()
        if pdu[0] != 0x06:
            raise RuntimeError(f"expected A-RELEASE-RP, got PDU type {pdu[0]:02X}H")
        self.sock.close()


def echo_run(port: int, count: int, seconds: float) -> float:
    """C-ECHOs per second on one association."""
    client = RawClient(port)
    client.associate()
    status = decode_command(client.echo()).get("Status")
    if status != 0:
        raise RuntimeError(f"C-ECHO answered status {status}")
    echo = client.echo
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while done < count:
        for _ in range(100):
            echo()
        done += 100
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - started
    client.release()
    return done / elapsed


_next_port = [20000]


def _connect_from_next_port(port: int) -> RawClient:
    """A RawClient from the next local port in 20000-31999 that connects (TIME_WAIT reuse on loopback)."""
    for _ in range(200):
        local = _next_port[0]
        _next_port[0] = 20000 if local >= 31999 else local + 1
        if local == port:
            continue
        try:
            return RawClient(port, local)
        except OSError as exc:
            if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                raise
    return RawClient(port)


def assoc_run(port: int, count: int, seconds: float) -> float:
    """Associations per second: connect, associate, echo, release, close."""
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while done < count:
        # Each closed connection leaves the client's end in TIME_WAIT for 60 s;
        # with tens of thousands of them the kernel's search for a free port
        # in connect() grows slow (and a figure depends on what ran in the
        # minute before).  The client takes the ports in turn itself.
        client = _connect_from_next_port(port)
        client.associate()
        client.echo()
        client.release()
        done += 1
        if time.perf_counter() >= deadline:
            break
    return done / (time.perf_counter() - started)


def cli_run(port: int, repeat: int) -> float:
    """Round trips per second reported by ``dimsekit echo --repeat N``."""
    result = subprocess.run(
        [sys.executable, "-m", "dimsekit.cli", "echo", "127.0.0.1", str(port), "--repeat", str(repeat)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    match = re.search(r"\((\d+)/s\)", result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"dimsekit echo failed ({result.returncode}): {result.stdout}{result.stderr}")
    return float(match.group(1))


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------
def start_servers(servers: Servers, names: list[str], workdir: Path) -> dict[str, Any]:
    started = {}
    for name in names:
        port = free_port()
        if name == "dimsekit" or name.startswith("dimsekit@"):
            # "dimsekit@DIR": the node from another source tree (PYTHONPATH=DIR), e.g. the
            # code before a change, to compare in the same run.
            env = {"PYTHONPATH": name.partition("@")[2]} if "@" in name else None
            argv = [twistd(), "-n", "--pidfile=", "dimsekit", "--port", str(port), "--interface", "127.0.0.1"]
            node_dir = workdir / name.replace("/", "_")
            node_dir.mkdir()
            started[name] = servers.start(name.replace("/", "_"), argv, port, cwd=node_dir, env=env)
        elif name == "pynetdicom":
            argv = [sys.executable, str(HERE / "pynetdicom_scp.py"), str(port)]
            started[name] = servers.start(name, argv, port)
        elif name == "dcmtk":
            argv = [dcmtk("storescp"), "--ignore", "-od", str(workdir), str(port)]
            started[name] = servers.start(name, argv, port, env={"TCP_NODELAY": "1"})
        elif name == "canned":
            argv = [sys.executable, str(HERE / "canned_scp.py"), str(port)]
            started[name] = servers.start(name, argv, port)
        else:
            raise SystemExit(f"unknown server {name!r}")
    return started


def ratio_text(results: dict[str, list[float]], a: str, b: str) -> str:
    if not results.get(a) or not results.get(b):
        return "-"
    per_round = sorted(x / y for x, y in zip(results[a], results[b], strict=False) if y)
    overall = median(results[a]) / median(results[b])
    return f"{overall:.2f}x (rounds {per_round[0]:.2f}-{per_round[-1]:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description="C-ECHO benchmark: dimsekit vs pynetdicom vs DCMTK")
    parser.add_argument("--servers", default="dimsekit,pynetdicom,dcmtk,canned")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--echo-count", type=int, default=20000)
    parser.add_argument("--echo-seconds", type=float, default=3.0)
    parser.add_argument("--assoc-count", type=int, default=3000)
    parser.add_argument("--assoc-seconds", type=float, default=3.0)
    parser.add_argument("--cli-repeat", type=int, default=1000, help="dimsekit echo --repeat N (0: skip)")
    parser.add_argument("--cli-runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1.5 s runs")
    parser.add_argument("--name", default="echo", help="results file name (results/NAME.json)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.echo_seconds, args.assoc_seconds, args.cli_runs = 3, 1.5, 1.5, 1
    names = [n.strip() for n in args.servers.split(",") if n.strip()]

    echo: dict[str, list[float]] = {n: [] for n in names}
    assoc: dict[str, list[float]] = {n: [] for n in names}
    cli: dict[str, list[float]] = {}
    rss: dict[str, int | None] = {}
    with temp_dir("dimsekit-bench-") as workdir, Servers() as servers:
        started = start_servers(servers, names, workdir)
        for server in started.values():  # warm-up: imports, first association, caches
            echo_run(server.port, 500, 0.5)
            assoc_run(server.port, 20, 0.5)
        for round_ in range(args.rounds):
            for name, server in started.items():
                echo[name].append(echo_run(server.port, args.echo_count, args.echo_seconds))
            for name, server in started.items():
                assoc[name].append(assoc_run(server.port, args.assoc_count, args.assoc_seconds))
            print(
                f"round {round_ + 1}/{args.rounds}: "
                + ", ".join(f"{n} {echo[n][-1]:,.0f} echo/s {assoc[n][-1]:,.0f} assoc/s" for n in names),
                flush=True,
            )
        if args.cli_repeat:
            for name in ("dimsekit", "dcmtk", "pynetdicom"):
                if name in started:
                    cli[name] = [cli_run(started[name].port, args.cli_repeat) for _ in range(args.cli_runs)]
        for name, server in started.items():
            rss[name] = vm_hwm_kib(server.pid)

    rows = [
        [n, fmt(median(echo[n])), fmt(median(assoc[n])),
         fmt(median(cli[n])) if n in cli else "-", fmt((rss[n] or 0) / 1024, 1)]
        for n in names
    ]
    md = [
        f"# C-ECHO benchmark ({args.rounds} rounds; medians)\n",
        table(["server", "C-ECHO/s (one association)", "associations/s",
               f"`dimsekit echo --repeat {args.cli_repeat}` /s", "server peak RSS MB"], rows),
    ]
    ratios = []
    others = [("pynetdicom", "pynetdicom"), ("dcmtk", "DCMTK"), ("canned", "canned (client ceiling)")]
    others += [(n, f"{n} (other source tree)") for n in names if n.startswith("dimsekit@")]
    for other, label in others:
        if "dimsekit" in names and other in names:
            ratios.append([f"dimsekit / {label}", ratio_text(echo, "dimsekit", other),
                           ratio_text(assoc, "dimsekit", other)])
    if ratios:
        md.append("\n" + table(["ratio", "C-ECHO/s", "associations/s"], ratios))
        if "pynetdicom" in names and "dimsekit" in names:
            e = median(echo["dimsekit"]) / median(echo["pynetdicom"])
            a = median(assoc["dimsekit"]) / median(assoc["pynetdicom"])
            md.append(
                f"\nGoals: C-ECHO/s >= 10x pynetdicom: {'met' if e >= 10 else 'NOT met'} ({e:.1f}x); "
                f"associations/s >= 20x pynetdicom: {'met' if a >= 20 else 'NOT met'} ({a:.1f}x)\n"
            )
    markdown = "".join(md)
    data = {
        "environment": environment(),
        "settings": vars(args),
        "echo_per_s": echo,
        "assoc_per_s": assoc,
        "cli_echo_per_s": cli,
        "server_peak_rss_kib": rss,
        "medians": {n: {"echo_per_s": median(echo[n]), "assoc_per_s": median(assoc[n]),
                        "cli_echo_per_s": median(cli[n]) if n in cli else None} for n in names},
    }
    json_path, md_path = save(args.name, data, markdown)
    print()
    print(markdown)
    print(f"results: {json_path} {md_path}")


if __name__ == "__main__":
    main()
