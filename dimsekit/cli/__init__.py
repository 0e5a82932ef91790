"""The ``dimsekit`` command: SCU tools that a DCMTK user feels at home with.

Each subcommand is a module of this package with ``add_arguments(parser)``
and ``run(reactor, args) -> Deferred[int]`` (the exit code).  Options follow
DCMTK where it has one (``-aet``, ``-aec``, ``-to``) and have long forms too;
the TLS options are DCMTK's too, ``+`` included (``+tls``, ``+tla``, ``+cf``).
"""

from __future__ import annotations

import argparse
import io
import math
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import task

from dimsekit import __version__
from dimsekit.config import MAX_PDU_RULE, ConfigError, check_ae_title, valid_max_pdu
from dimsekit.errors import ControlEscaper
from dimsekit.memory import tune_allocator
from dimsekit.signals import run_by_the_reactor

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


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that also takes DCMTK's ``+`` options (``+tls``, ``+cf``).

    A word starting with ``+`` is an option only when it is exactly one this
    parser has: anything else (a file named ``+1.dcm``, ``--label +A``) stays
    an argument, as it was before ``+`` was an option prefix.  argparse would
    otherwise take it for an unknown option, or abbreviate (``+t``: ``+tls``?).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("prefix_chars", "-+")
        super().__init__(*args, **kwargs)

    def _parse_optional(self, arg_string: str) -> Any:
        if arg_string.startswith("+") and arg_string not in self._option_string_actions:
            return None  # a positional, or the value of the option before it
        return super()._parse_optional(arg_string)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """HOST PORT and the association options every SCU tool takes (TLS's among them)."""
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
    add_tls_arguments(parser)


def add_total_timeout_argument(parser: argparse.ArgumentParser) -> None:
    """``--total-timeout``: a bound on a whole C-FIND, C-GET or C-MOVE, however many pending
    responses keep coming (some SCPs send them for ever: LESSONS.md #30); --timeout bounds
    the wait for each response."""
    parser.add_argument(
        "--total-timeout", type=_seconds, default=None, metavar="SECONDS",
        help="give up on the whole operation after this long, however many pending responses keep "
             "coming (default: no limit; --timeout still bounds each response)",
    )


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """DCMTK's TLS options (PS3.15 B.1); :func:`dimsekit.cli._scu.tls_config` reads them.

    The ``+`` spellings need a parser with ``prefix_chars="-+"`` (the ``dimsekit``
    command's are): another parser gets the long forms only.
    """
    plus = "+" in parser.prefix_chars

    def names(dcmtk: str, *long: str) -> tuple[str, ...]:
        return (dcmtk, *long) if plus else long

    group = parser.add_argument_group(
        "TLS (PS3.15 B.1)",
        "Associations over TLS: +tls or +tla.  The peer's certificate is checked against\n"
        "the +cf files unless -ic is given.  Keys and certificates are PEM files (keys not encrypted).",
    )
    identity = group.add_mutually_exclusive_group()
    identity.add_argument(*names("+tls", "--tls", "--enable-tls"), dest="tls_identity", nargs=2,
                          metavar=("KEY", "CERT"), help="use TLS, with our private key and certificate")
    identity.add_argument(*names("+tla", "--anonymous-tls"), dest="anonymous_tls", action="store_true",
                          help="use TLS without a certificate of ours")
    group.add_argument(*names("+cf", "--add-cert-file"), dest="tls_trust", action="append", default=[],
                       metavar="FILE", help="trust the certificates in FILE (a root CA's, or the peer's own self-signed one); repeatable")
    group.add_argument("-ic", "--ignore-peer-cert", dest="tls_ignore_peer", action="store_true",
                       help="do not verify the peer's certificate (then no +cf is needed; not recommended)")
    group.add_argument(*names("+crl", "--add-crl-file"), dest="tls_crls", action="append", default=[],
                       metavar="FILE", help="check the peer's certificate against the certificate revocation list "
                                            "in FILE (PEM or DER); repeatable: give every issuing CA's")
    group.add_argument(*names("+cra", "--enable-crl-all"), dest="tls_crl_chain", action="store_true",
                       help="with +crl: check the CAs of the peer's chain below its root too (their issuers' CRLs "
                            "needed)")
    group.add_argument("--verify-hostname", dest="tls_verify_hostname", action="store_true",
                       help="also check that the peer's certificate names HOST (DCMTK does not)")
    group.add_argument("--tls-ciphers", dest="tls_ciphers", choices=("forward-secret", "compatible"), default=None,
                       help="TLS 1.2 cipher suites: forward-secret (default: ECDHE/DHE with AES-GCM or ChaCha20, "
                            "BCP 195) or compatible (also RSA key transport and AES-CBC, for older peers)")


def _parser() -> argparse.ArgumentParser:
    import importlib

    parser = _Parser(prog="dimsekit", description="DICOM network tools (dimsekit).")
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


def _check_tls(args: argparse.Namespace) -> str | None:
    """Why the TLS options cannot be used (one line), or None: before anything runs."""
    from dimsekit.cli._scu import tls_config
    from dimsekit.tls import TLSContext

    try:
        config = tls_config(args)
        if config is not None:
            TLSContext(config)  # reads every file: one missing is said here, not as a traceback later
    except ConfigError as exc:  # TLSError too
        return str(exc)
    return None


#: control characters a tool never writes itself (it writes new lines, tabs and, on a
#: terminal, carriage returns): from a peer -- a patient's name, an Error Comment -- they
#: are written as ``\\xNN`` (C0), ``\\u00NN`` (DEL, C1: the JSON escape, as ``find
#: --json`` leaves them raw in its strings), so that no peer can drive the user's terminal
_escape_foreign = ControlEscaper(keep="\t\n\r", json_high=True)


class TerminalSafe(io.TextIOBase):
    """A text stream writing to another one, escaping the control characters a tool never
    writes itself (see :data:`_escape_foreign`)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(_escape_foreign(text))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dimsekit`` console script (what it prints goes through
    :class:`TerminalSafe`)."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = TerminalSafe(sys.stdout), TerminalSafe(sys.stderr)
    try:
        with warnings.catch_warnings():
            # no Python warning (file, line, source) per odd value of a peer's data set or a
            # file's: the tools say what they could not use in their own words
            warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom\.")
            return _main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = streams


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    problem = _check_tls(args)
    if problem is not None:
        # (not print(): importing the subcommands bound this module's ``print`` to dimsekit.cli.print)
        tool = f"{args.command} {args.action}" if args.command == "mpps" else args.command  # as the tool says it
        sys.stderr.write(f"dimsekit {tool}: {problem}\n")
        return 2
    tune_allocator()  # get/move receive data sets in bulk reads, as the node does
    if getattr(args, "verbose", False):
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    codes: list[int] = []

    def _run(reactor: object) -> object:
        # Ctrl-C: Twisted's handler (installed as the reactor starts) logs -- with -v, to stderr
        reactor.callWhenRunning(run_by_the_reactor, reactor, signal.SIGINT)  # type: ignore[attr-defined]
        return args.module.run(reactor, args).addCallback(codes.append)

    try:
        task.react(_run)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return int(exc.code) if isinstance(exc.code, int) else 1
    return codes[0] if codes else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
