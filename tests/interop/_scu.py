"""A dimsekit requestor driven through the library API, for the interop tests.

    python _scu.py echo PORT CALLED      associate, C-ECHO, release
    python _scu.py release PORT CALLED   associate, release (no C-ECHO)

Prints one line per step (``established``, ``echo 0x0000``, ``released``,
``closed``) and exits 0 when every step succeeded; on a failure prints
``error: ...`` and exits 1 (also when it is not done within 15 s).
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task


def say(text: str) -> None:
    print(text, flush=True)


async def main(reactor, mode: str, port: int, called: str) -> int:
    from dimsekit import ApplicationEntity
    from dimsekit.config import Config, Limits, NodeConfig
    from dimsekit.uids import VERIFICATION

    config = Config(node=NodeConfig(ae_title="DIMSEKIT-SCU"), limits=Limits(acse_timeout=5, dimse_timeout=5))
    ae = ApplicationEntity(config=config, reactor=reactor)
    assoc = await ae.associate("127.0.0.1", port, called=called, contexts=[VERIFICATION], connect_timeout=5)
    say("established")
    if mode == "echo":
        status = await assoc.echo()
        say(f"echo 0x{status:04X}")
    await assoc.release()
    say("released")
    for _ in range(60):  # the connection must close soon after the release (bounded: 3 s)
        if assoc.protocol is None:
            say("closed")
            return 0
        await task.deferLater(reactor, 0.05, lambda: None)
    say("error: connection still open 3 s after the release")
    return 1


def run(reactor) -> defer.Deferred:
    mode, port, called = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    d = defer.Deferred.fromCoroutine(main(reactor, mode, port, called))

    def failed(failure):
        say(f"error: {type(failure.value).__name__}: {failure.value}")
        return 1

    d.addErrback(failed)
    watchdog = reactor.callLater(15, lambda: d.cancel())

    def done(code):
        if watchdog.active():
            watchdog.cancel()
        return code

    return d.addBoth(done)


if __name__ == "__main__":
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # dimsekit's log (and any Traceback) on stderr, for the test to check
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    codes: list[int] = []
    try:
        task.react(lambda reactor: run(reactor).addCallback(codes.append))
    except SystemExit:
        pass
    sys.exit(codes[0] if codes else 3)
