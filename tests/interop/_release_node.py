"""An embedded dimsekit acceptor that asks to release every association it accepts.

    python _release_node.py PORT

Listens on 127.0.0.1:PORT; as soon as an association is established it
issues A-RELEASE itself (the acceptor side of a release collision, when the
peer asks too).  Prints ``listening``, ``release requested``, ``released``
(the release Deferred fired) and ``closed`` (the connection is gone), then
exits 0.  Exits 1 on an error, or when not done within 15 s.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task

from dimsekit.hookspecs import hookimpl


def say(text: str) -> None:
    print(text, flush=True)


class ReleaseAtOnce:
    """A plugin: release each association as soon as it is established."""

    def __init__(self, reactor, done: defer.Deferred) -> None:
        self.reactor = reactor
        self.done = done

    @hookimpl
    def dimsekit_on_association_established(self, association) -> None:
        self.reactor.callLater(0, self._release, association)

    def _release(self, association) -> None:
        say("release requested")
        d = association.release()
        d.addCallback(lambda _: self._released(association))
        d.addErrback(lambda f: self.done.callback(f"error: release failed: {f.value!r}") if not self.done.called else None)

    @defer.inlineCallbacks
    def _released(self, association):
        say("released")
        for _ in range(200):  # bounded: 10 s for the peer to close
            if association.protocol is None:
                say("closed")
                if not self.done.called:
                    self.done.callback(None)
                return
            yield task.deferLater(self.reactor, 0.05, lambda: None)
        if not self.done.called:
            self.done.callback("error: connection still open 10 s after the release")


async def main(reactor, port: int) -> int:
    from dimsekit import ApplicationEntity, make_plugin_manager
    from dimsekit.config import Config, Limits

    done: defer.Deferred = defer.Deferred()
    plugin = ReleaseAtOnce(reactor, done)
    pm = make_plugin_manager(plugins=[plugin])
    ae = ApplicationEntity(config=Config(limits=Limits(acse_timeout=5)), plugin_manager=pm, reactor=reactor)
    listening = await ae.listen(port, "127.0.0.1")
    say("listening")
    reactor.callLater(15, lambda: done.called or done.callback("error: timeout"))
    outcome = await done
    await listening.stopListening()
    if outcome is not None:
        say(outcome)
        return 1
    return 0


if __name__ == "__main__":
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # dimsekit's log (and any Traceback) on stderr, for the test to check
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    codes: list[int] = []
    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, int(sys.argv[1]))).addCallback(codes.append))
    except SystemExit:
        pass
    sys.exit(codes[0] if codes else 1)
