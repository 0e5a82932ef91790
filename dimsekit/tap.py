"""``twistd dimsekit``: options and service maker.

Zero configuration gives a working node on port 11112 with AE title DIMSEKIT;
``--config`` reads a TOML file (see :mod:`dimsekit.config`) and ``--port``,
``--aet``, ``--data-dir``, ``--interface`` override its ``[node]`` keys.

The log.  A node writes a line per association (and whatever else happens);
twistd's default text log works out the timestamp of every line from
scratch (time zone offset, ``strftime``): on a node answering thousands of
associations a second the log line took about a tenth of the time, half of
it for that timestamp.  Unless the operator chose ``--logger`` or
``--syslog``, the node therefore installs :func:`node_log_observer`: the same
file twistd would write (stdout with ``-n``, else ``--logfile`` or
``twistd.log``, rotated by size and on SIGUSR1), the same lines, byte for
byte, with the timestamp made once per second (:class:`NodeLogFormatter`).

Signals: SIGTERM stops the node gracefully, exit status 0
(:class:`StopOnSIGTERM`); SIGUSR1 rotates the log file; SIGUSR2 writes
every thread's Python stack to stderr (:func:`dump_stacks_on`), for a node
that seems stuck.
"""

from __future__ import annotations

import faulthandler
import functools
import io
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.error import ReactorNotRunning
from twisted.logger import FileLogObserver, Logger, formatEventAsClassicLogText, formatTime
from twisted.python import logfile, usage

from dimsekit.config import ConfigError, load
from dimsekit.errors import ControlEscaper, for_log
from dimsekit.signals import run_by_the_reactor

__all__ = ["Options", "makeService", "StopOnSIGTERM", "NodeLogFormatter", "node_log_observer"]

_log = Logger(namespace="dimsekit.tap")


class Options(usage.Options):
    """Command-line options of ``twistd dimsekit``."""

    synopsis = "[options]"
    longdesc = "Run a dimsekit DICOM node (verification, storage, query/retrieve, ...)."
    optParameters = [
        ["config", "c", None, "TOML configuration file."],
        ["port", "p", None, "TCP port to listen on (default 11112).", int],
        ["aet", "a", None, "Our AE title (default DIMSEKIT)."],
        ["interface", "i", None, "Address to listen on (default: all)."],
        ["data-dir", "d", None, "Where the archive keeps its files (default ./dimsekit-data)."],
        ["endpoint", "e", None, "A Twisted server endpoint string, overriding port/interface (e.g. tcp6:11112). "
         "Not for TLS (ssl: is refused): use the [tls] table."],
    ]

    def postOptions(self) -> None:
        try:
            config = load(self["config"])
            self["config_obj"] = config.override(
                port=self["port"], ae_title=self["aet"], interface=self["interface"], data_dir=self["data-dir"]
            )
        except ConfigError as exc:
            raise usage.UsageError(str(exc)) from None
        # twistd's own options (we are its sub-command): the node's log
        # observer, unless the operator chose where the log goes otherwise.
        # twistd resolves "logger" by name once we are done and calls it
        # without arguments when it starts logging.
        twistd = getattr(self, "parent", None)
        if twistd is not None and not twistd.get("logger") and not twistd.get("syslog"):
            global _node_log_observer_factory
            _node_log_observer_factory = functools.partial(node_log_observer, twistd)
            twistd["logger"] = f"{__name__}._node_log_observer_factory"


#: what twistd's "logger" names once Options.postOptions chose the node's observer
_node_log_observer_factory: Any = None


#: what a log line may not carry from a peer: control characters (an AE title with an
#: escape sequence would recolour an operator's terminal, a NUL makes grep call the log
#: binary) as ``\xNN`` -- but the new lines and tabs of the line's own continuation lines
_escape_controls = ControlEscaper(keep="\t\n")


class NodeLogFormatter:
    """Formats a log event into the line twistd's text log writes for it.

    :func:`twisted.logger.formatEventAsClassicLogText` with the RFC 3339
    timestamp (``2026-11-26T08:22:19+0000``, whole seconds) formatted once per
    second rather than once per line; and an event that carries its whole
    line as its format (no fields, its ``log_system`` given, no failure --
    the association lines) is put together directly.  The text is
    Twisted's, byte for byte (a test compares them) -- but for control
    characters other than new lines and tabs, which come from peers (an AE
    title of escape sequences) and are written as ``\\xNN``.
    """

    __slots__ = ("_second", "_stamp")

    def __init__(self) -> None:
        self._second: int | None = None
        self._stamp = "-"

    def format_time(self, when: float | None) -> str:
        """``twisted.logger.formatTime(when)``, remembered for the second."""
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            # The format has no fraction of a second, so any time within
            # this second gives the same text (the offset too: zone changes
            # happen on whole seconds).
            self._stamp = formatTime(when)
            self._second = second
        return self._stamp

    def __call__(self, event: dict[str, Any]) -> str | None:
        text = event.get("log_format")
        system = event.get("log_system")
        if (
            type(text) is str and type(system) is str and "{" not in text and "}" not in text
            and "log_failure" not in event and "log_flattened" not in event
        ):
            # A line given whole (the association lines; any format without
            # fields) with its system: what Twisted makes of it, without
            # running its formatter over it.
            if not text:
                return None
            line = f"{self.format_time(event.get('log_time'))} [{system}] {text}"
            return _escape_controls(line.replace("\n", "\n\t")) + "\n"
        warning = event.get("warning")
        if warning is not None:
            # a library's warning quoting what a peer sent (pydicom: "Invalid value for VR UI:
            # '<70 KB of binary>'"): escaped and cut as our own messages are
            event = {**event, "warning": for_log(warning)}
        line = formatEventAsClassicLogText(event, formatTime=self.format_time)
        return _escape_controls(line) if line is not None else None


def node_log_observer(twistd_options: Any) -> FileLogObserver:
    """The log observer of ``twistd dimsekit`` (see the module docstring).

    Where the lines go is twistd's choice for its options, made the way
    twistd makes it: ``--logfile -`` or ``-n`` without ``--logfile``: stdout
    (a daemon cannot log there); otherwise the ``--logfile`` (default
    ``twistd.log``), a :class:`twisted.python.logfile.LogFile` rotated by
    size and, where there is SIGUSR1 and no handler for it yet, on SIGUSR1.
    """
    name = twistd_options.get("logfile") or ""
    nodaemon = bool(twistd_options.get("nodaemon"))
    out: Any
    if name == "-":
        if not nodaemon and hasattr(signal, "SIGUSR1"):  # twistd's rule, on the platforms that daemonize
            sys.exit("Daemons cannot log to stdout, exiting!")
        out = sys.stdout
    elif not name and (nodaemon or not hasattr(signal, "SIGUSR1")):
        out = sys.stdout
    else:
        out = logfile.LogFile.fromFullPath(name or "twistd.log")
        sigusr1 = getattr(signal, "SIGUSR1", None)
        if sigusr1 is not None and not signal.getsignal(sigusr1):
            log_file = out

            def rotate(signum: int, frame: object) -> None:
                from twisted.internet import reactor

                reactor.callFromThread(log_file.rotate)

            signal.signal(sigusr1, rotate)
    return FileLogObserver(out, NodeLogFormatter())


def makeService(options: Options) -> service.IService:
    """Build the node service from the options."""
    from dimsekit import memory
    from dimsekit.ae import ApplicationEntity
    from dimsekit.config import ConfigError
    from dimsekit.registry import RegistryError

    outcome = memory.tune_allocator()
    if outcome == "tuned":
        _log.info(
            "glibc malloc tuned for bulk reads: mmap threshold {mmap} MiB, trim threshold {trim} MiB",
            mmap=memory.MMAP_THRESHOLD >> 20, trim=memory.TRIM_THRESHOLD >> 20,
        )
    else:
        _log.info("malloc left as it is ({why})", why=outcome)
    from twisted.internet import reactor as running_reactor

    from dimsekit.libraries_log import route_pydicom
    from dimsekit.resources import raise_open_files_limit

    route_pydicom()  # what pydicom finds wrong in a peer's data set, said with the peer and request

    raised = raise_open_files_limit(reactor=running_reactor)
    if raised is not None:
        _log.info("open files limit raised from {before} to {after} (connections, instances being written)",
                  before=raised[0], after=raised[1])
    config = options["config_obj"]
    node = config.node
    try:
        ae = ApplicationEntity(config=config)
    except (ConfigError, RegistryError) as exc:
        # A plugin refused its section, or two plugins claim one SOP class:
        # one line naming the problem, not a traceback.  twistd reports a
        # UsageError only while it parses the options; raised from here it
        # came out as a traceback, so exit with the line (status 1).
        raise SystemExit(f"dimsekit: {exc}") from None
    endpoint: Any = options["endpoint"]
    if endpoint is None:
        endpoint = f"tcp:{node.port}"
        if node.interface:
            # quoted: an IPv6 address's colons would split the description (a traceback at start)
            endpoint += f":interface={quoteStringArgument(node.interface)}"
    else:
        from twisted.internet import endpoints, reactor

        if endpoint.split(":", 1)[0].strip().lower() == "ssl":
            # Twisted's own TLS listener: no client certificate checked, its
            # cipher list, none of the [tls] checks -- quietly weaker than it looks.
            raise SystemExit(
                f"dimsekit: --endpoint {endpoint!r}: for TLS use the [tls] table of the configuration "
                "(certificate, private_key, ca_certificates, port): it checks the peers' certificates "
                "(verify_peer = false to accept any) and listens beside the plain port"
            )
        try:
            endpoints.serverFromString(reactor, endpoint)  # parsed only; nothing listens yet
        except Exception as exc:
            raise SystemExit(f"dimsekit: --endpoint {endpoint!r}: {exc}") from None
    ae.spool_dir = _check_data_dir(Path(node.data_dir).expanduser())
    node_service = service.MultiService()
    tls = config.tls
    tls_port = tls.port if tls is not None and tls.has_identity and tls.port else None
    _twistd_node_service()(ae, endpoint, tls_port=tls_port, tls_interface=node.interface).setServiceParent(node_service)
    StopOnSIGTERM().setServiceParent(node_service)
    return node_service


def _check_data_dir(path: Path) -> str:
    """A data directory the node cannot write in stops start-up with one line:
    the archive, the worklist and the commitment requests all live there, and a
    node started without it would refuse every C-STORE and answer every query
    with nothing.  Returns its ``.spool`` directory (made), where data sets that
    are not instances for the archive (a print job's image, a long query) are
    spooled past 1 MiB: on the archive's disk, not in a /tmp that is often memory."""
    spool = path / ".spool"
    try:
        spool.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=spool):
            pass
    except OSError as exc:
        raise SystemExit(f"dimsekit: data directory {path}: {exc.strerror or exc}") from None
    return str(spool)


def _twistd_node_service() -> type:
    """The DicomNodeService subclass twistd runs (made on use: tap imports little at start)."""
    from dimsekit.service import DicomNodeService

    class TwistdNodeService(DicomNodeService):
        """The node's listener under twistd: a port it cannot open (in use, not
        allowed) stops twistd with one line, exit status 1.  twistd starts the
        services before its reactor runs and drops what ``startService``
        returns, so the failed listen went unnoticed: the node ran on,
        listening nowhere."""

        def startService(self) -> Any:
            d = super().startService()
            failed: list[Any] = []

            def seen(failure: Any) -> Any:
                failed.append(failure)
                return failure

            d.addErrback(seen)
            if failed:  # TCP and TLS endpoints listen at once (the line reaches twistd's log too)
                d.addErrback(lambda failure: None)
                raise SystemExit(f"dimsekit: cannot listen on {self.listening_on}: "
                                 f"{failed[0].getErrorMessage()}")
            return d

    return TwistdNodeService


class StopOnSIGTERM(service.Service):
    """Make SIGTERM the ordinary way to stop a node: a graceful stop, exit status 0.

    twistd's own SIGTERM handler stops the reactor cleanly too, but then
    re-kills the process with the signal, so it exits "killed by SIGTERM"
    (status -15 / 143) and service managers and scripts see a failure.  Once
    the reactor runs (its handlers are installed by then) this service puts a
    handler in their place that stops the reactor -- the services stop as
    usual, associations are released or aborted -- and lets twistd exit 0.

    Twisted's SIGINT handler (Ctrl-C) stays, but runs in the reactor thread:
    it logs, which from the signal handler can hang the process (see
    :mod:`dimsekit.signals`).
    """

    name = "dimsekit-sigterm"

    def startService(self) -> None:
        super().startService()
        from twisted.internet import reactor

        reactor.callWhenRunning(self._install, reactor)

    def _install(self, reactor: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread

        def stop(signum: int, frame: object) -> None:
            _log.info("received SIGTERM, stopping the node")
            try:
                reactor.stop()
            except ReactorNotRunning:
                pass  # a second SIGTERM while stopping

        # Both run by the reactor thread, not in the signal handler: they log (see dimsekit.signals).
        signal.signal(signal.SIGTERM, stop)
        run_by_the_reactor(reactor, signal.SIGTERM)
        run_by_the_reactor(reactor, signal.SIGINT)  # Twisted's
        dump_stacks_on(getattr(signal, "SIGUSR2", None))


def dump_stacks_on(signum: int | None, file: Any = None) -> bool:
    """On ``signum`` (SIGUSR2 for the node), write every thread's Python stack to
    ``file`` (default: the process's stderr, file descriptor 2, whatever twistd
    put in ``sys.stderr``) -- ``kill -USR2 PID`` for a node that seems stuck.

    :mod:`faulthandler` does it from the signal handler itself, so it works
    even when the reactor thread never gets back to Python.  Not when
    something else already handles that signal; False then.
    """
    if signum is None or signal.getsignal(signum) not in (signal.SIG_DFL, None):
        return False
    # the process's own stderr: twistd puts a logging stand-in in sys.stderr
    out = file if file is not None else sys.__stderr__
    try:
        faulthandler.register(signum, file=out, all_threads=True, chain=False)
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False  # no usable file descriptor (stderr replaced, closed)
    return True
