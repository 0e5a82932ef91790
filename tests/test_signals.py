"""dimsekit.signals: a signal's handler moved to the reactor thread (nothing run in the
signal handler itself but the hand-over)."""

from __future__ import annotations

import signal
import threading

from dimsekit.signals import run_by_the_reactor


class Reactor:
    def __init__(self) -> None:
        self.queued: list[tuple[object, tuple]] = []

    def callFromThread(self, f, *args):  # noqa: N802 - the reactor's name
        self.queued.append((f, args))


def test_the_handler_runs_when_the_reactor_gets_to_it():
    ran: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: ran.append(signum))
    try:
        reactor = Reactor()
        assert run_by_the_reactor(reactor, signal.SIGUSR1) is True
        signal.getsignal(signal.SIGUSR1)(signal.SIGUSR1, None)
        assert ran == []  # only queued
        [(f, args)] = reactor.queued
        f(*args)
        assert ran == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_nothing_to_move_for_an_ignored_or_default_signal_nor_off_the_main_thread():
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        assert run_by_the_reactor(Reactor(), signal.SIGUSR1) is False
        assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
        signal.signal(signal.SIGUSR1, signal.default_int_handler)  # Python's: KeyboardInterrupt, left alone
        assert run_by_the_reactor(Reactor(), signal.SIGUSR1) is False
        assert signal.getsignal(signal.SIGUSR1) is signal.default_int_handler
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        results: list[bool] = []
        thread = threading.Thread(target=lambda: results.append(run_by_the_reactor(Reactor(), signal.SIGUSR1)))
        thread.start()
        thread.join(5)
        assert results == [False]
    finally:
        signal.signal(signal.SIGUSR1, previous)
