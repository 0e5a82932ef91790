"""A dimsekit storage SCP for bench_store_large.py, in its own process.

    python benchmarks/store_receiver.py PORT [--expect-size N] [--max-pdu N] [--spool-dir DIR]

An ApplicationEntity whose only plugin is a test plugin that declares a
Storage service class for the benchmark's SOP class (no entry points are
loaded, so no built-in storage plugin competes for it).  The data
set of each C-STORE goes where dimsekit puts it by default -- a SpooledSink:
memory up to 1 MiB, then an anonymous temporary file -- and the handler only
checks its size (0x0000 when it is ``--expect-size`` or no size was given,
0xA700 otherwise), then drops the temporary file.  One line per C-STORE on
stdout.
"""

from __future__ import annotations

import argparse
import resource
import sys

from twisted.internet import reactor

from dimsekit.ae import ApplicationEntity
from dimsekit.config import Config, Limits, NodeConfig
from dimsekit.hookspecs import hookimpl
from dimsekit.plugin import make_plugin_manager
from dimsekit.registry import ServiceClass

#: Multi-frame Grayscale Byte Secondary Capture Image Storage
SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.2"


class BenchStorage:
    """The test storage plugin: check the size, answer, forget the data."""

    def __init__(self, expect_size: int | None) -> None:
        self.expect_size = expect_size

    def handle_store(self, request) -> int:  # type: ignore[no-untyped-def]
        sink = request.sink
        size = sink.size if sink is not None else 0
        ok = self.expect_size is None or size == self.expect_size
        where = "temporary file" if getattr(sink, "on_disk", False) else "memory"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"C-STORE {request.sop_instance_uid}: {size} bytes in {where}, "
              f"{'as expected' if ok else f'EXPECTED {self.expect_size}'}; peak RSS {peak} KiB", flush=True)
        if sink is not None:
            sink.abort()  # deletes the temporary file
        return 0x0000 if ok else 0xA700

    @hookimpl
    def dimsekit_service_classes(self) -> list[ServiceClass]:
        return [ServiceClass(name="bench-storage", sop_classes=(SOP_CLASS,), handlers={"C-STORE": self.handle_store})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--expect-size", type=int, default=None)
    parser.add_argument("--max-pdu", type=int, default=None, help="our Maximum Length Received (default: dimsekit's)")
    parser.add_argument("--profile", default=None, help="write cProfile statistics here when stopped (SIGTERM)")
    args = parser.parse_args()
    limits = Limits() if args.max_pdu is None else Limits(max_pdu=args.max_pdu)
    config = Config(node=NodeConfig(ae_title="DIMSEKIT"), limits=limits)
    # Only the test plugin: no built-in storage/archive plugin competing for the SOP class.
    pm = make_plugin_manager(load_entrypoints=False, plugins=[BenchStorage(args.expect_size)])
    ae = ApplicationEntity(config=config, plugin_manager=pm)
    ae.listen(args.port, "127.0.0.1")
    print(f"listening on 127.0.0.1:{args.port}", flush=True)
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        reactor.run()
        profiler.disable()
        profiler.dump_stats(args.profile)
    else:
        reactor.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
