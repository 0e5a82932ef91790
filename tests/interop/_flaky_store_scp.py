"""A storage SCP that misbehaves at random (seeded): a C-MOVE destination from hell.

    python _flaky_store_scp.py PORT SEED

Listens as FLAKY on 127.0.0.1:PORT (prints ``listening``) for CT Image Storage and
answers each C-STORE at random: Success, a warning (B000, B007), a failure (A700,
C000, 0110), a status no standard defines (1234), a pending status (FF00: not a
C-STORE answer), after a pause of up to 0.3 s -- or aborts the association.  Prints
one line per C-STORE (``store <uid> <what>``); runs until killed.
"""

from __future__ import annotations

import random
import sys
from typing import Any

from twisted.internet import task

CT = "1.2.840.10008.5.1.4.1.1.2"


def serve(port: int, seed: int) -> Any:
    from twisted.internet import reactor

    from dimsekit import ApplicationEntity
    from dimsekit.config import Config, NodeConfig
    from dimsekit.hookspecs import hookimpl
    from dimsekit.plugin import make_plugin_manager
    from dimsekit.registry import ServiceClass

    r = random.Random(seed)

    async def store(request: Any) -> Any:
        what = r.choice([0x0000] * 5 + [0xB000, 0xB007, 0xA700, 0xC000, 0x0110, 0x1234, 0xFF00, "abort"])
        print(f"store {request.sop_instance_uid} {what if isinstance(what, str) else f'0x{what:04X}'}", flush=True)
        await task.deferLater(reactor, r.choice([0, 0, 0.05, 0.3]), lambda: None)
        if what == "abort":
            request.association.abort("the flaky SCP aborts")
            return 0x0000  # never sent
        return what

    class Flaky:
        @hookimpl
        def dimsekit_service_classes(self) -> list[ServiceClass]:
            return [ServiceClass(name="flaky-storage", sop_classes=(CT,), handlers={"C-STORE": store})]

    pm = make_plugin_manager(load_entrypoints=False, plugins=[Flaky()])
    ae = ApplicationEntity(config=Config(node=NodeConfig(ae_title="FLAKY")), plugin_manager=pm, reactor=reactor)
    return ae.listen(port, "127.0.0.1").addCallback(lambda _: print("listening", flush=True))


if __name__ == "__main__":
    from twisted.internet import reactor

    serve(int(sys.argv[1]), int(sys.argv[2])).addErrback(lambda f: (print(f.getTraceback(), flush=True), reactor.stop()))
    reactor.run()
