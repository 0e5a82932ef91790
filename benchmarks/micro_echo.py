"""The server's own Python cost of a C-ECHO and of an association, without sockets.

    python benchmarks/micro_echo.py [--echoes 20000] [--assocs 2000] [--repeat 5]

An acceptor exactly as a node builds it (``ApplicationEntity.server_factory()
.buildProtocol``: DicomProtocol + UpperLayer + Association, the installed
plugins) is fed the raw client's bytes through Twisted's ``StringTransport``
on a ``task.Clock``: no reactor, no system calls.  What it measures is
dimsekit's own code per C-ECHO (bytes in -> bytes out) and per association
(connect, A-ASSOCIATE-RQ, C-ECHO, A-RELEASE-RQ, close), the part that
optimisations of dimsekit can change; bench_echo.py measures the whole.
It also times the receive path a C-STORE takes (:func:`receive_us`: upper
layer framing, PDV decoding, command decoding and validation, reassembly into
a sink that only counts) per small (1.4 KB) and CT-sized (512 KB) message.

Per-association log lines go to a throw-away observer that formats them
as the node's log observer does (:func:`dimsekit.tap.node_log_observer`'s
formatter), so that their cost is counted.  Prints the median microseconds
of ``--repeat`` runs, and the association's cost phase by phase: connect
(buildProtocol + makeConnection), A-ASSOCIATE-RQ -> AC, the C-ECHO, the
A-RELEASE-RQ -> RP and the close (end hooks, the log line).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_echo import ASSOCIATE_RQ, ECHO_RQ, RELEASE_RQ  # noqa: E402
from twisted.internet import address, task  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.logger import FileLogObserver, globalLogPublisher, textFileLogObserver  # noqa: E402

from dimsekit.ae import ApplicationEntity  # noqa: E402

try:
    from dimsekit.tap import NodeLogFormatter  # noqa: E402
except ImportError:  # an older tree (PYTHONPATH=DIR): the node logged through twistd's default observer
    NodeLogFormatter = None  # type: ignore[assignment,misc]

PHASES = ("connect", "RQ -> AC", "C-ECHO", "release", "close")


class _Transport(StringTransport):
    """StringTransport whose written bytes are dropped (keeps memory flat)."""

    def write(self, data: bytes) -> None:
        self.written = data


def make_connection(ae: ApplicationEntity) -> tuple[object, _Transport]:
    factory = ae.server_factory()
    proto = factory.buildProtocol(address.IPv4Address("TCP", "127.0.0.1", 40000))
    transport = _Transport(peerAddress=address.IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    return proto, transport


def echo_us(ae: ApplicationEntity, n: int) -> float:
    proto, transport = make_connection(ae)
    proto.dataReceived(ASSOCIATE_RQ)
    assert transport.written[0] == 0x02, transport.written[:1]
    feed = proto.dataReceived
    started = time.perf_counter()
    for _ in range(n):
        feed(ECHO_RQ)
    elapsed = time.perf_counter() - started
    assert transport.written[0] == 0x04
    proto.dataReceived(RELEASE_RQ)
    proto.connectionLost()
    return elapsed / n * 1e6


def assoc_us(ae: ApplicationEntity, n: int, phases: list[float] | None = None) -> float:
    """Microseconds per association; ``phases`` (if given) gets the per-phase sums added."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    done = Failure(ConnectionDone())
    clock = time.perf_counter
    sums = [0.0] * len(PHASES)
    started = clock()
    for _ in range(n):
        t0 = clock()
        proto, transport = make_connection(ae)
        t1 = clock()
        proto.dataReceived(ASSOCIATE_RQ)
        t2 = clock()
        proto.dataReceived(ECHO_RQ)
        t3 = clock()
        proto.dataReceived(RELEASE_RQ)
        t4 = clock()
        proto.connectionLost(done)
        t5 = clock()
        sums[0] += t1 - t0
        sums[1] += t2 - t1
        sums[2] += t3 - t2
        sums[3] += t4 - t3
        sums[4] += t5 - t4
    elapsed = clock() - started
    assert not ae.active
    if phases is not None:
        phases[:] = [total / n * 1e6 for total in sums]
    return elapsed / n * 1e6


class _CountingSink:
    """A data set sink that only counts (the receive path without storage)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)

    def write_many(self, chunks: list[bytes | memoryview]) -> None:
        self.size += sum(map(len, chunks))

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def receive_us(dataset_size: int, n: int, read_size: int = 1 << 20) -> float:
    """Microseconds per C-STORE-RQ message received, sans-I/O: the bytes of
    ``n`` messages (command PDU, then the data set in 16 KiB P-DATA-TF PDUs,
    as storescu sends them) fed to an established UpperLayer in reads of
    ``read_size`` bytes, each PDV through the MessageAssembler into a sink
    that counts -- framing, PDU/PDV decoding, command decoding and
    validation, reassembly; no association, no storage."""
    from dimsekit.dimse.codec import encode_command
    from dimsekit.dimse.fragments import (
        CommandReceived,
        MessageAssembler,
        MessageReceived,
        fragment_message,
    )
    from dimsekit.ul import outputs as out
    from dimsekit.ul.connection import UpperLayer
    from dimsekit.ul.fsm import State

    pdus = []
    for message_id in range(1, n + 1):
        command = encode_command({
            "CommandField": 0x0001, "MessageID": message_id & 0xFFFF, "Priority": 0,
            "CommandDataSetType": 0x0000, "AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
            "AffectedSOPInstanceUID": f"1.2.826.0.1.3680043.8.498.{message_id}",
        })
        pdus.extend(fragment_message(1, command, bytes(dataset_size), 16384))
    stream = b"".join(pdus)
    reads = [stream[i : i + read_size] for i in range(0, len(stream), read_size)]
    ul = UpperLayer()
    ul.state = State.STA6
    assembler = MessageAssembler()
    received = 0
    started = time.perf_counter()
    receive_from = getattr(assembler, "receive_from", None)
    if receive_from is None:  # an older tree (PYTHONPATH=DIR): one PDV at a time
        def receive_from(pdvs, at):  # type: ignore[no-untyped-def]
            return assembler.receive_pdv(pdvs[at]), at + 1
    for chunk in reads:
        for output in ul.receive_data(chunk, 0.0):
            if type(output) is out.PDataIndication:
                pdvs = output.pdu.pdvs
                at = 0
                while at < len(pdvs):  # as Association.pdata_indication
                    events, at = receive_from(pdvs, at)
                    for event in events:
                        if type(event) is CommandReceived and event.has_dataset:
                            assembler.set_sink(_CountingSink())
                        elif type(event) is MessageReceived:
                            received += event.dataset.size
    elapsed = time.perf_counter() - started
    assert received == n * dataset_size, (received, n * dataset_size)
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--echoes", type=int, default=20000)
    parser.add_argument("--assocs", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--stores", type=int, default=2000, help="small C-STORE-RQ messages per receive run")
    args = parser.parse_args()
    sink = io.StringIO()
    observer = textFileLogObserver(sink) if NodeLogFormatter is None else FileLogObserver(sink, NodeLogFormatter())
    globalLogPublisher.addObserver(observer)
    try:
        ae = ApplicationEntity("DIMSEKIT", reactor=task.Clock())
        echo_us(ae, 500)
        assoc_us(ae, 50)
        echoes = [echo_us(ae, args.echoes) for _ in range(args.repeat)]
        assocs = []
        phases: list[list[float]] = []
        for _ in range(args.repeat):
            sink.seek(0)
            sink.truncate()
            phases.append([])
            assocs.append(assoc_us(ae, args.assocs, phases[-1]))
    finally:
        globalLogPublisher.removeObserver(observer)
    print(f"C-ECHO (bytes in -> bytes out):      {statistics.median(echoes):7.1f} us  (runs {', '.join(f'{x:.1f}' for x in echoes)})")
    print(f"association (RQ, echo, release, close): {statistics.median(assocs):7.1f} us  (runs {', '.join(f'{x:.1f}' for x in assocs)})")
    print("  by phase (median): " + ", ".join(
        f"{name} {statistics.median(run[i] for run in phases):.1f}" for i, name in enumerate(PHASES)
    ) + " us")
    for label, size, count in (("1.4 KB", 1400, args.stores), ("512 KB", 524288, max(args.stores // 20, 10))):
        receive_us(size, 10)
        runs = [receive_us(size, count) for _ in range(args.repeat)]
        print(f"C-STORE-RQ {label} received (no storage): {statistics.median(runs):7.1f} us  (runs {', '.join(f'{x:.1f}' for x in runs)})")


if __name__ == "__main__":
    main()
