"""An association that ended is freed at once, by reference counting: nothing
of it waits for Python's cyclic garbage collector (which a busy node would
otherwise run every few dozen associations)."""

from __future__ import annotations

import gc
import weakref

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from dimsekit.dimse.codec import encode_command
from dimsekit.hookspecs import hookimpl
from dimsekit.registry import ServiceClass
from dimsekit.ul.pdu import encode_single_pdata

from .test_acceptor_cache import RELEASE_RQ, VERIFICATION, connect, make_ae, rq_bytes

ECHO_RQ = encode_single_pdata(1, 0x03, encode_command({
    "CommandField": 0x0030, "MessageID": 1, "CommandDataSetType": 0x0101, "AffectedSOPClassUID": VERIFICATION,
}))


@pytest.fixture
def no_cyclic_gc():
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def run_association(ae):
    proto, transport = connect(ae)
    proto.dataReceived(rq_bytes())
    assert transport.value()[:1] == b"\x02"
    proto.dataReceived(ECHO_RQ)
    proto.dataReceived(RELEASE_RQ)
    proto.connectionLost(Failure(ConnectionDone()))
    return weakref.ref(proto.user), weakref.ref(proto)


def test_ended_association_is_freed_without_the_cyclic_collector(no_cyclic_gc):
    ae = make_ae()
    run_association(ae)  # warm-up: caches filled once
    association, protocol = run_association(ae)
    assert protocol() is None
    assert association() is None


class PendingEcho:
    """Answers C-ECHO with a Deferred kept here: the handler outlives its caller's reference."""

    def __init__(self):
        self.pending: list = []

    @hookimpl
    def dimsekit_service_classes(self):
        def echo(request):
            d = Deferred()
            self.pending.append((d, request))
            return d

        return [ServiceClass(name="test", sop_classes=(VERIFICATION,), handlers={"C-ECHO": echo})]


def test_the_runner_reaches_its_association_while_a_handler_runs():
    plugin = PendingEcho()
    ae = make_ae(plugin)
    proto, transport = connect(ae)
    proto.dataReceived(rq_bytes())
    transport.clear()
    proto.dataReceived(ECHO_RQ)
    assert transport.value() == b""
    ((d, request),) = plugin.pending
    association = weakref.ref(proto.user)
    del proto  # the transport's producer and the handler's Request hold the association now
    gc.collect()
    assert association() is request.association
    d.callback(0)  # the answer goes out through the runner
    assert transport.value()[:1] == b"\x04"
