"""Signal handlers that only hand over to the reactor thread.

A Python signal handler runs between two bytecodes of the main thread --
possibly half-way into a lock that thread holds, such as the one Twisted's
file log observers write under (``twisted.python.threadable``'s lock, a
pure-Python RLock: taken, not yet marked as owned).  A handler that logs then
waits for that lock for ever: the process hangs instead of stopping.
Twisted's own SIGINT handler logs ("Received SIGINT, shutting down."), so the
node and the tools have it run by the reactor instead.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["run_by_the_reactor"]


def run_by_the_reactor(reactor: Any, signum: int) -> bool:
    """Have the current handler of ``signum`` run by ``reactor``'s thread, not in the signal
    handler; False where there is no such handler to move -- the signal ignored or at its
    default, Python's own SIGINT handler (its KeyboardInterrupt must interrupt the main
    thread: call this once the reactor runs, when Twisted's has replaced it), or not the main
    thread (only it can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    handler = signal.getsignal(signum)
    if not callable(handler) or handler is signal.default_int_handler:
        return False

    def hand_over(number: int, frame: object) -> None:
        reactor.callFromThread(handler, number, None)

    signal.signal(signum, hand_over)
    return True
