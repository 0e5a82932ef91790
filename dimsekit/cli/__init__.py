"""The ``dimsekit`` command: SCU tools that a DCMTK user feels at home with.

Each subcommand is a module of this package with ``add_arguments(parser)``
and ``run(reactor, args) -> Deferred[int]`` (the exit code).  Options follow
DCMTK where it has one (``-aet``, ``-aec``, ``-to``) and have long forms too.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import task

from dimsekit import __version__
from dimsekit.config import MAX_PDU_RULE, ConfigError, check_ae_title, valid_max_pdu
from dimsekit.memory import tune_allocator

__all__ = ["main", "add_common_arguments", "SUBCOMMANDS"]

#: subcommand name -> module under dimsekit.cli
SUBCOMMANDS = {
    "echo": "dimsekit.cli.echo",
    "store": "dimsekit.cli.store",
    "mpps": "dimsekit.cli.mpps",
    "commit": "dimsekit.cli.commit",
    "print": "dimsekit.cli.print",
    "find": "dimsekit.cli.find",
    "get": "dimsekit.cli.get",
    "move": "dimsekit.cli.move",
    "worklist": "dimsekit.cli.worklist",
}


def _ae_title(text: str) -> str:
    try:
        return check_ae_title(text, "AE title")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("AE title: ")) from None


def _checked(parse: Callable[[str], Any], valid: Callable[[Any], bool], rule: str) -> Callable[[str], Any]:
    """An argparse ``type``: ``parse(text)``, refused with ``rule`` unless ``valid``."""

    def check(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(rule.format(text=text))
        return value

    return check


_tcp_port = _checked(int, lambda port: 1 <= port <= 65535, "{text!r} is not a TCP port (1-65535)")
_seconds = _checked(float, lambda s: math.isfinite(s) and s > 0, "{text!r} is not a number of seconds more than 0")
_max_pdu = _checked(int, valid_max_pdu, "{text!r}: " + MAX_PDU_RULE)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """HOST PORT and the association options every SCU tool takes."""
    parser.add_argument("host", help="peer host name or address")
    parser.add_argument("port", type=_tcp_port, help="peer TCP port")
    parser.add_argument("-aet", "--aet", type=_ae_title, default="DIMSEKIT", help="our AE title (default DIMSEKIT)")
    parser.add_argument("-aec", "--called", type=_ae_title, default="ANY-SCP",
                        help="the peer's AE title (default ANY-SCP)")
    parser.add_argument(
        "-to", "--timeout", type=_seconds, default=30.0,
        help="seconds to wait for the connection, the association and each response (default 30)",
    )
    parser.add_argument("--max-pdu", type=_max_pdu, default=None,
                        help="our Maximum Length Received (default 16384; 0 = no limit)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log protocol events to stderr")


def _parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="dimsekit", description="DICOM network tools (dimsekit).")
    parser.add_argument("--version", action="version", version=f"dimsekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        sub_parser = sub.add_parser(
            name,
            help=module.__doc__.strip().splitlines()[0],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dimsekit`` console script."""
    args = _parser().parse_args(argv)
    tune_allocator()  # get/move receive data sets in bulk reads, as the node does
    if getattr(args, "verbose", False):
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    codes: list[int] = []

    def _run(reactor: object) -> object:
        return args.module.run(reactor, args).addCallback(codes.append)

    try:
        task.react(_run)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code) if isinstance(exc.code, int) else 1
    return codes[0] if codes else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
