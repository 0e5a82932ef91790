"""Ask a peer to send instances to an AE with C-MOVE, like DCMTK movescu.

    dimsekit move HOST PORT -aec PACS --dest WORKSTATION -k StudyInstanceUID=1.2.3
    dimsekit move HOST PORT -aec PACS -aet ME --store-port 11113 --out-dir study/ -k StudyInstanceUID=1.2.3

--dest names the move destination (default: our own AE title, -aet).  The
peer must know that title (its table of AEs: title -> host, port).  With
--store-port N, dimsekit also listens on port N as the destination for the
time of the move (as movescu --port does) and writes what arrives, unparsed,
as DICOM Part 10 files DIR/<SOP Instance UID>.dcm (--out-dir, default the
current directory); it accepts every storage SOP class in the uncompressed
and the usual compressed transfer syntaxes.

Information model, keys, progress, summary and exit status as for
``dimsekit get`` (exit 1 also when the peer answers 0xA801, Move
Destination unknown, or when the listening port cannot be opened).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import IO, Any

from pydicom.uid import UID
from twisted.internet import defer, task
from twisted.python.failure import Failure

from dimsekit.cli import add_common_arguments, add_total_timeout_argument
from dimsekit.cli._keys import BadKey
from dimsekit.cli._scu import describe_failure, end_cleanly
from dimsekit.cli.find import (
    MODELS,
    add_key_options,
    add_model_options,
    make_scu_ae,
    model_of,
    quiet_pydicom,
    retrieve_identifier,
)
from dimsekit.cli.get import (
    RETRIEVE_TRANSFER_SYNTAXES,
    Progress,
    Receiver,
    _isatty,
    _release,
    all_storage_sop_classes,
    retrieve_outcome,
)
from dimsekit.config import ConfigError, check_ae_title
from dimsekit.dimse.status import QR_MOVE
from dimsekit.hookspecs import hookimpl
from dimsekit.registry import ServiceClass
from dimsekit.uids import VERIFICATION

__all__ = ["add_arguments", "run", "StoragePlugin", "destination_ae"]


class StoragePlugin:
    """A plugin object for the move destination's AE: storage SCP into a
    :class:`~dimsekit.cli.get.Receiver`, and verification."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver

    @hookimpl
    def dimsekit_service_classes(self) -> list[ServiceClass]:
        return [
            ServiceClass(name="move-destination", sop_classes=all_storage_sop_classes(),
                         handlers={"C-STORE": self.receiver}, transfer_syntaxes=RETRIEVE_TRANSFER_SYNTAXES,
                         sink_factories={"C-STORE": self.receiver.sink_for}),  # into its file as it arrives
            ServiceClass(name="verification", sop_classes=(VERIFICATION,), handlers={"C-ECHO": lambda request: 0}),
        ]


def destination_ae(reactor: Any, args: argparse.Namespace, receiver: Receiver) -> Any:
    """The application entity that takes the sub-operations (AE title -aet)."""
    from dimsekit.cli._scu import make_ae

    return make_ae(reactor, args, plugins=[StoragePlugin(receiver)], idle_timeout=max(args.timeout, 60.0))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_total_timeout_argument(parser)
    add_model_options(parser, worklist=False)
    add_key_options(parser)
    parser.add_argument("--dest", "-aem", metavar="AET", default=None,
                        help="the move destination's AE title (default: our own, -aet)")
    parser.add_argument("--store-port", "--port", type=int, metavar="N", default=None,
                        help="receive the instances ourselves: listen on port N while the move runs")
    parser.add_argument("--store-interface", metavar="ADDRESS", default="",
                        help="address to listen on with --store-port (default: all)")
    parser.add_argument("--out-dir", "-od", metavar="DIR", default=None,
                        help="with --store-port: where to write what arrives (default: the current directory)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary; only errors")


def run(reactor: Any, args: argparse.Namespace) -> defer.Deferred:
    quiet_pydicom()
    return defer.Deferred.fromCoroutine(_run(reactor, args, sys.stdout, sys.stderr))


async def _run(reactor: Any, args: argparse.Namespace, out: IO[str], err: IO[str], make: Any = None) -> int:
    try:
        model = model_of(args)
        identifier = retrieve_identifier(args, model)
        destination = check_ae_title(args.dest or args.aet, "--dest")
        if args.out_dir is not None and args.store_port is None:
            raise BadKey("--out-dir needs --store-port: without it another AE receives the instances")
        if args.store_port is not None and not 0 <= args.store_port <= 65535:
            raise BadKey(f"--store-port {args.store_port} is not a TCP port")
    except (BadKey, ConfigError) as exc:
        print(f"dimsekit move: {exc}", file=err)
        return 2
    move_sop = MODELS[model][2]
    assert move_sop is not None
    receiver: Receiver | None = None
    current: list[Any] = []  # the C-MOVE operation, once started
    listening = None
    store_ae = None
    progress: Progress
    if args.store_port is not None:
        directory = Path(args.out_dir or ".")
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"dimsekit move: cannot use {directory}: {exc.strerror or exc}", file=err)
            return 2
        def on_change() -> None:
            progress.show()
            for moving in current:  # an instance arrived: the C-MOVE is progressing
                moving.progressing()

        receiver = Receiver(reactor, directory, on_change=on_change)
        store_ae = destination_ae(reactor, args, receiver)
        try:
            listening = await store_ae.listen(args.store_port, interface=args.store_interface)
        except Exception:
            print(f"dimsekit move: cannot listen on port {args.store_port}: {describe_failure(Failure())}", file=err)
            return 1
    progress = Progress(err, not args.quiet and _isatty(err), receiver)
    ae = (make or make_scu_ae)(reactor, args)
    association = None
    try:
        try:
            association = await ae.associate(
                args.host, args.port, called=args.called, contexts=[move_sop], connect_timeout=args.timeout,
            )
        except Exception:
            print(f"dimsekit move: {describe_failure(Failure())}", file=err)
            return 1
        if association.negotiated.context_for(move_sop, as_scu=True) is None:
            print(f"dimsekit move: the peer did not accept {UID(move_sop).name}", file=err)
            await _release(association)
            return 1
        started = time.monotonic()
        operation = association.move(identifier, destination, move_sop, total_timeout=args.total_timeout)
        current.append(operation)
        try:
            async for response in operation:
                progress.response(response)
            final = await operation
        except Exception:
            progress.clear()
            written = f" ({receiver.files} file{'s' if receiver.files != 1 else ''} written)" if receiver else ""
            print(f"dimsekit move: {describe_failure(Failure())}{written}", file=err)
            return 1
        await _release(association)
        if store_ae is not None:
            await _drain(reactor, store_ae, args.timeout)
        progress.clear()
        return retrieve_outcome("move", QR_MOVE, final, progress, receiver, time.monotonic() - started,
                                args, out, err)
    finally:
        await end_cleanly(reactor, association)
        if listening is not None:
            await listening.stopListening()
        if store_ae is not None:
            for incoming in list(store_ae.active):
                if not incoming.ended:
                    incoming.abort("dimsekit move is exiting")
            await end_cleanly(reactor)


async def _drain(reactor: Any, store_ae: Any, timeout: float) -> None:
    """Let the peer release the associations that carried the sub-operations (bounded)."""
    deadline = reactor.seconds() + min(timeout, 5.0)
    while store_ae.active and reactor.seconds() < deadline:
        await task.deferLater(reactor, 0.02, lambda: None)
