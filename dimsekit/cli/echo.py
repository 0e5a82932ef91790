"""Send C-ECHO (verification) requests to a peer, like DCMTK echoscu.

Exit status 0 when every C-ECHO got Success; 1 on rejection, abort, timeout,
refused connection or a non-Success status, with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from twisted.internet import defer

from dimsekit.cli import add_common_arguments
from dimsekit.cli._scu import end_cleanly, fail, make_ae
from dimsekit.dimse.status import describe
from dimsekit.uids import VERIFICATION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("-r", "--repeat", type=int, default=1, help="send N C-ECHOs on one association (default 1)")


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace):
    if args.repeat < 1:
        print("dimsekit echo: --repeat must be at least 1", file=sys.stderr)
        return 2
    ae = make_ae(reactor, args)
    state: dict[str, Any] = {}
    try:
        code = yield _echo(reactor, args, ae, state)
    finally:
        yield end_cleanly(reactor, state.get("association"))
    return code


@defer.inlineCallbacks
def _echo(reactor: Any, args: argparse.Namespace, ae: Any, state: dict[str, Any]):
    try:
        association = yield ae.associate(
            args.host, args.port, called=args.called, contexts=[VERIFICATION], connect_timeout=args.timeout
        )
    except Exception:
        return fail("echo", _failure())
    state["association"] = association
    started = time.perf_counter()
    failures = 0
    try:
        for _ in range(args.repeat):
            status = yield association.echo()
            if status != 0x0000:
                failures += 1
                print(f"dimsekit echo: C-ECHO answered {describe(status)}", file=sys.stderr)
        elapsed = time.perf_counter() - started
        yield association.release()
    except Exception:
        return fail("echo", _failure())
    rate = args.repeat / elapsed if elapsed > 0 else float("inf")
    print(
        f"C-ECHO {args.called}@{args.host}:{args.port}: {args.repeat - failures}/{args.repeat} Success, "
        f"{elapsed * 1000 / args.repeat:.3f} ms each ({rate:.0f}/s)"
    )
    return 0 if failures == 0 else 1


def _failure() -> Any:
    from twisted.python.failure import Failure

    return Failure()
