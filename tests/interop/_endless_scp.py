"""An SCP whose C-FIND, C-GET and C-MOVE never end: a pending response every 0.2 s, for ever
(as some C-MOVE SCPs do, LESSONS.md #30).

    python _endless_scp.py PORT

Serves Study Root FIND / GET / MOVE as ANY-SCP on 127.0.0.1:PORT (prints ``listening``);
runs until killed.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import task

FIND, MOVE, GET = (f"1.2.840.10008.5.1.4.1.2.2.{n}" for n in (1, 2, 3))


def serve(port: int) -> Any:
    from pydicom.dataset import Dataset
    from twisted.internet import reactor

    from dimsekit import ApplicationEntity
    from dimsekit.config import Config, NodeConfig
    from dimsekit.hookspecs import hookimpl
    from dimsekit.plugin import make_plugin_manager
    from dimsekit.registry import ServiceClass

    async def endless(request: Any) -> Any:
        n = 0
        while True:  # until the requestor cancels or goes away
            await task.deferLater(reactor, 0.2, lambda: None)
            n += 1
            if request.name == "C-FIND":
                match = Dataset()
                match.PatientID = str(n)
                yield 0xFF00, match
            else:
                yield 0xFF00, None, {"NumberOfRemainingSuboperations": 1, "NumberOfCompletedSuboperations": n,
                                     "NumberOfFailedSuboperations": 0, "NumberOfWarningSuboperations": 0}

    class Endless:
        @hookimpl
        def dimsekit_service_classes(self) -> list[ServiceClass]:
            return [ServiceClass(name="endless", sop_classes=(FIND, MOVE, GET),
                                 handlers={"C-FIND": endless, "C-GET": endless, "C-MOVE": endless})]

    pm = make_plugin_manager(load_entrypoints=False, plugins=[Endless()])
    ae = ApplicationEntity(config=Config(node=NodeConfig(ae_title="ANY-SCP")), plugin_manager=pm, reactor=reactor)
    return ae.listen(port, "127.0.0.1").addCallback(lambda _: print("listening", flush=True))


if __name__ == "__main__":
    from twisted.internet import reactor

    serve(int(sys.argv[1])).addErrback(lambda f: (print(f.getTraceback(), flush=True), reactor.stop()))
    reactor.run()
