"""Profile a dimsekit node serving the raw C-ECHO client of bench_echo.py.

    python benchmarks/profile_echo.py [--mode echo|assoc|both] [--top 40]

Starts ``twistd -n --pidfile= --profile=FILE --profiler=cprofile --savestats
dimsekit ...`` (twistd's own profiling: the whole node, reactor included),
drives it with ``bench_echo.RawClient`` -- ``--echoes`` C-ECHOs on one
association and/or ``--assocs`` whole associations -- then stops it with
SIGTERM (the node stops its reactor; twistd writes the statistics) and
prints the top functions by own time and by cumulative time.  The raw
statistics stay in ``benchmarks/results/profile-<mode>.prof`` for
``python -m pstats`` or snakeviz.

cProfile slows the node several times over: read the proportions, not the
absolute times.
"""

from __future__ import annotations

import argparse
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import RESULTS, Servers, free_port, temp_dir, twistd  # noqa: E402
from bench_echo import RawClient  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("echo", "assoc", "both"), default="both")
    parser.add_argument("--echoes", type=int, default=20000)
    parser.add_argument("--assocs", type=int, default=2000)
    parser.add_argument("--top", type=int, default=35)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    prof = RESULTS / f"profile-{args.mode}.prof"
    prof.unlink(missing_ok=True)
    with temp_dir("dimsekit-prof-") as workdir, Servers() as servers:
        port = free_port()
        server = servers.start(
            "dimsekit-profiled",
            [twistd(), "-n", "--pidfile=", f"--profile={prof}", "--profiler=cprofile", "--savestats",
             "dimsekit", "--port", str(port), "--interface", "127.0.0.1"],
            port, cwd=workdir,
        )
        started = time.perf_counter()
        if args.mode in ("echo", "both"):
            client = RawClient(port)
            client.associate()
            for _ in range(args.echoes):
                client.echo()
            client.release()
        if args.mode in ("assoc", "both"):
            for _ in range(args.assocs):
                client = RawClient(port)
                client.associate()
                client.echo()
                client.release()
        print(f"driven in {time.perf_counter() - started:.1f} s (under the profiler)")
        servers.stop(server, timeout=60)
    if not prof.exists():
        raise SystemExit(f"no profile written; see {server.log}")
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(str(prof), stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(args.top)
        print(f"==== by {order} ====")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:20000])
    print(f"profile: {prof}")


if __name__ == "__main__":
    main()
