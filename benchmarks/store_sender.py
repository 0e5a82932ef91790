"""Send one Part 10 file with dimsekit (ApplicationEntity.associate + store), report JSON.

    python benchmarks/store_sender.py HOST PORT FILE [--called AET] [--max-pdu N]

Prints one JSON line: status, bytes of the file, seconds for the C-STORE
(request sent to response received) and for the whole association, and this
process's peak RSS (``getrusage``, KiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

from twisted.internet import defer, task

from dimsekit.ae import ApplicationEntity
from dimsekit.config import Config, Limits, NodeConfig
from dimsekit.datasets import part10_info


@defer.inlineCallbacks
def run(reactor, args):  # type: ignore[no-untyped-def]
    info = part10_info(args.file)
    limits = Limits() if args.max_pdu is None else Limits(max_pdu=args.max_pdu)
    ae = ApplicationEntity(config=Config(node=NodeConfig(ae_title="BENCHSCU"), limits=limits), reactor=reactor)
    started = time.perf_counter()
    assoc = yield ae.associate(
        args.host, args.port, called=args.called,
        contexts=[(info.sop_class_uid, [info.transfer_syntax])],
    )
    sent = time.perf_counter()
    response = yield assoc.store(args.file)
    stored = time.perf_counter()
    yield assoc.release()
    ended = time.perf_counter()
    result = {
        "status": response.status,
        "bytes": os.path.getsize(args.file),
        "dataset_bytes": info.dataset_length,
        "store_seconds": stored - sent,
        "total_seconds": ended - started,
        "peer_max_pdu": assoc.negotiated.peer_maximum_length,
        "sender_peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(json.dumps(result), flush=True)
    return 0 if response.status == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("file")
    parser.add_argument("--called", default="ANY-SCP")
    parser.add_argument("--max-pdu", type=int, default=None)
    parser.add_argument("--profile", default=None, help="write cProfile statistics of the run here")
    args = parser.parse_args()
    if args.profile:
        import atexit
        import cProfile

        profiler = cProfile.Profile()
        atexit.register(lambda: (profiler.disable(), profiler.dump_stats(args.profile)))
        profiler.enable()
    task.react(lambda reactor: run(reactor, args))


if __name__ == "__main__":
    sys.exit(main())
