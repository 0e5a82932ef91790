"""The node's log (dimsekit.tap): twistd's text lines, byte for byte, with the
timestamp made once per second; installed only when the operator did not
choose --logger or --syslog."""

from __future__ import annotations

import io
import signal
import sys

import pytest
from twisted.logger import FileLogObserver, LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.scripts.twistd import ServerOptions

from dimsekit import tap

T0 = 1_790_000_000.25  # some time, a quarter into its second


def events():
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        failure = Failure()
    return [
        {"log_format": "hello {who}", "who": "world", "log_time": T0, "log_level": LogLevel.info,
         "log_namespace": "dimsekit.association"},
        {"log_format": "pre-formatted {{braces}}", "log_time": T0 + 0.5, "log_system": "dimsekit.association#info"},
        {"log_format": "two\nlines", "log_time": T0 + 1, "log_level": LogLevel.warn, "log_namespace": "x"},
        {"log_format": "it failed", "log_time": T0 + 2, "log_failure": failure, "log_level": LogLevel.critical,
         "log_namespace": "y"},
        {"log_format": "no time"},
        {"log_format": "whole line, no fields", "log_time": T0, "log_system": "dimsekit.association#info",
         "text": "whole line", "log_level": LogLevel.info, "log_namespace": "dimsekit.association"},
        {"log_format": "whole\nline", "log_time": T0, "log_system": "sys"},
        {"log_format": "", "log_time": T0, "log_system": "sys"},
        {"log_format": "with system, no time", "log_system": "sys"},
        {"log_format": "system not text", "log_time": T0, "log_system": 7},
        {"log_format": "a failure too", "log_time": T0, "log_system": "sys", "log_failure": failure},
        {"log_format": "{x} escaped }} {{", "x": 1, "log_time": T0, "log_system": "sys"},
        {"log_format": "é non-ASCII", "log_time": T0 - 3600},
        {},
    ]


def test_lines_are_twisteds():
    formatter = tap.NodeLogFormatter()
    for event in events():
        assert formatter(event) == formatEventAsClassicLogText(event)


def test_a_long_warning_is_cut():
    """A library's warning quoting what a peer sent (pydicom quotes a 70 KB value) is cut
    as our own messages quoting peers are; a short one is Twisted's line, unchanged."""
    formatter = tap.NodeLogFormatter()

    def warning(text):
        return {"log_format": "{filename}:{lineno}: {category}: {warning}", "warning": text,
                "category": "builtins.UserWarning", "filename": "valuerep.py", "lineno": 440,
                "log_time": T0, "log_namespace": "twisted.logger._global", "log_level": LogLevel.warn}

    short = warning("Invalid value for VR UI: '1.2.3.'")
    assert formatter(short) == formatEventAsClassicLogText(short)
    line = formatter(warning("Invalid value for VR UI: '" + "x" * 70_000 + "'"))
    assert len(line) < 500
    assert line.rstrip().endswith("... (70027 characters)")
    assert "valuerep.py:440: builtins.UserWarning: Invalid value for VR UI: 'xxx" in line
    binary = formatter(warning("Unknown encoding 'A\x00B\nC\x1b\x85'"))
    assert binary.endswith("Unknown encoding 'A\\x00B\\x0aC\\x1b\\x85'\n")  # one line, no control bytes


def test_control_characters_from_peers_are_escaped():
    """An AE title of escape sequences, a NUL, a carriage return: written as \\xNN, in the
    association lines (given whole) as in formatted ones; a new line stays a continuation
    line (tab-indented: no line of the peer's can pass for one of ours)."""
    formatter = tap.NodeLogFormatter()
    whole = {"log_format": "association acceptor calling=\x1b[31mEVIL\x00\r\x85 called=X\nnext",
             "log_time": T0, "log_system": "dimsekit.association#info"}
    line = formatter(whole)
    assert line.endswith("calling=\\x1b[31mEVIL\\x00\\x0d\\x85 called=X\n\tnext\n")
    formatted = {"log_format": "C-FIND from {peer}", "peer": "A\x07B", "log_time": T0, "log_level": LogLevel.info,
                 "log_namespace": "dimsekit.qr"}
    assert formatter(formatted).endswith("C-FIND from A\\x07B\n")


@pytest.mark.parametrize(("message", "line"), [
    ("plain text, é and 山田", "plain text, é and 山田"),
    ("tab\there\r\n", "tab\\x09here\\x0d\\x0a"),
    (b"\x00\x7f", "b'\\x00\\x7f'"),  # str() of it: already escaped
    ("x" * 301, "x" * 300 + "... (301 characters)"),
    ("x" * 300, "x" * 300),
])
def test_for_log(message, line):
    from dimsekit.errors import for_log

    assert for_log(message) == line


def test_timestamp_made_once_per_second(monkeypatch):
    calls = []
    real = tap.formatTime

    def counting(when):
        calls.append(when)
        return real(when)

    monkeypatch.setattr(tap, "formatTime", counting)
    formatter = tap.NodeLogFormatter()
    stamps = [formatter.format_time(t) for t in (T0, T0 + 0.5, T0 + 0.7, T0 + 1, T0 + 1.7, T0 + 5, T0)]
    assert len(calls) == 4  # seconds T0, T0+1, T0+5, T0 again
    assert stamps == [real(t) for t in (T0, T0 + 0.5, T0 + 0.7, T0 + 1, T0 + 1.7, T0 + 5, T0)]
    assert formatter.format_time(None) == "-"


def parse(*argv):
    options = ServerOptions()
    options.parseOptions([*argv, "dimsekit", "--port", "1"])
    return options


def test_node_observer_installed_by_default(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    options = parse("-n", "--pidfile=")
    observer = options["logger"]()
    assert isinstance(observer, FileLogObserver)
    observer({"log_format": "association {n}", "n": 1, "log_time": T0, "log_system": "s"})
    assert out.getvalue() == formatEventAsClassicLogText({"log_format": "association 1", "log_time": T0, "log_system": "s"})


def test_operator_choices_are_kept():
    assert parse("-n", "--logger", "twisted.logger.textFileLogObserver")["logger"].__name__ == "textFileLogObserver"
    if "syslog" in ServerOptions().keys():
        assert parse("-n", "--syslog")["logger"] is None


def test_logfile_and_rotation_signal(tmp_path):
    previous = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        path = tmp_path / "node.log"
        observer = tap.node_log_observer({"logfile": str(path), "nodaemon": True})
        observer({"log_format": "one line", "log_time": T0, "log_system": "s"})
        assert path.read_text() == formatEventAsClassicLogText({"log_format": "one line", "log_time": T0, "log_system": "s"})
        assert callable(signal.getsignal(signal.SIGUSR1))  # rotation on SIGUSR1, as twistd does
        handler = signal.getsignal(signal.SIGUSR1)
        tap.node_log_observer({"logfile": str(tmp_path / "other.log"), "nodaemon": True})
        assert signal.getsignal(signal.SIGUSR1) is handler  # an existing handler is left alone
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_where_lines_go(monkeypatch, tmp_path):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # no process-wide handler from a test
    assert tap.node_log_observer({"logfile": "-", "nodaemon": True})._outFile is out
    assert tap.node_log_observer({"logfile": None, "nodaemon": True})._outFile is out
    if hasattr(signal, "SIGUSR1"):
        with pytest.raises(SystemExit):
            tap.node_log_observer({"logfile": "-", "nodaemon": False})
        daemon = tap.node_log_observer({"logfile": None, "nodaemon": False})
        assert daemon._outFile.path == str(tmp_path / "twistd.log")


def test_sigusr2_stack_dump_is_registered_only_where_nothing_else_handles_it(tmp_path):
    import faulthandler

    usr2 = signal.SIGUSR2
    assert tap.dump_stacks_on(None) is False
    previous = signal.signal(usr2, lambda signum, frame: None)
    try:
        assert tap.dump_stacks_on(usr2) is False  # someone else's handler is left alone
    finally:
        signal.signal(usr2, previous)
    with (tmp_path / "dump.txt").open("w") as out:
        assert tap.dump_stacks_on(usr2, out) is True
        try:
            signal.raise_signal(usr2)
        finally:
            faulthandler.unregister(usr2)
    assert "Current thread" in (tmp_path / "dump.txt").read_text()


def test_the_signal_handlers_only_hand_over_to_the_reactor(monkeypatch):
    """The handler may run anywhere in the main thread -- inside the log file's lock, say: it
    must not log (that hung the node: a deadlock on the lock it interrupted).  The reactor
    thread logs and stops."""
    from twisted.logger import globalLogPublisher

    class Reactor:
        def __init__(self):
            self.queued, self.stopped = [], 0

        def callFromThread(self, f, *args):  # noqa: N802 - the reactor's name
            self.queued.append((f, args))

        def stop(self):
            self.stopped += 1

    reactor = Reactor()
    logged: list[str] = []

    def observe(event):
        logged.append(str(event.get("log_format", "")))

    twisteds_sigint: list[int] = []

    def sigint(signum, frame):  # as Twisted's: logs, then stops
        logged.append("Received SIGINT")
        twisteds_sigint.append(signum)

    previous = signal.getsignal(signal.SIGTERM), signal.signal(signal.SIGINT, sigint)
    globalLogPublisher.addObserver(observe)
    try:
        tap.StopOnSIGTERM()._install(reactor)
        handler = signal.getsignal(signal.SIGTERM)
        handler(signal.SIGTERM, None)
        assert logged == [] and reactor.stopped == 0  # only queued
        [(f, args)] = reactor.queued
        f(*args)
        assert reactor.stopped == 1
        assert any("received SIGTERM" in line for line in logged), logged
        # SIGINT: Twisted's own handler, run by the reactor thread
        logged.clear()
        signal.getsignal(signal.SIGINT)(signal.SIGINT, None)
        assert logged == [] and twisteds_sigint == []
        f, args = reactor.queued[1]
        f(*args)
        assert twisteds_sigint == [signal.SIGINT] and logged == ["Received SIGINT"]
    finally:
        globalLogPublisher.removeObserver(observe)
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        sigusr2 = getattr(signal, "SIGUSR2", None)
        if sigusr2 is not None:  # _install registered the stack dump there too
            import faulthandler

            faulthandler.unregister(sigusr2)
