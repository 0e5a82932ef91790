"""The acceptor answers a request it has seen before from its negotiation cache,
and everything decided per association is still decided per association.

An :class:`~dimsekit.ae.ApplicationEntity`'s server protocols fed raw PDUs on
Twisted's ``StringTransport`` and a ``task.Clock``: no socket, no sleeping.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from twisted.internet import address, task
from twisted.internet.testing import StringTransport

from dimsekit.ae import ApplicationEntity
from dimsekit.config import Config, Limits, NodeConfig
from dimsekit.hookspecs import hookimpl
from dimsekit.plugin import make_plugin_manager
from dimsekit.registry import ServiceClass
from dimsekit.ul import negotiation, pdu
from dimsekit.ul.items import UserIdentityRQ
from dimsekit.ul.negotiation import build_associate_rq
from dimsekit.ul.pdu import AssociateRJ, decode

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IVLE = "1.2.840.10008.1.2"
PEER = address.IPv4Address("TCP", "127.0.0.1", 40000)


class Plugin:
    """Verification, an accept hook that refuses one caller, an authenticator."""

    def __init__(self):
        self.accept_calls = []
        self.authenticated = []

    @hookimpl
    def dimsekit_service_classes(self):
        return [ServiceClass(name="test", sop_classes=(VERIFICATION, CT), handlers={"C-ECHO": lambda r: 0})]

    @hookimpl
    def dimsekit_accept_association(self, request):
        self.accept_calls.append(request.rq.calling_ae_title)
        if request.rq.calling_ae_title == "REFUSED":
            return AssociateRJ(result=1, source=1, reason=3)
        return None

    @hookimpl
    def dimsekit_authenticate(self, identity, request):
        self.authenticated.append(identity.primary_field)
        return identity.primary_field == b"good"


def make_ae(plugin=None, **limits):
    pm = make_plugin_manager(load_entrypoints=False)
    pm.register(plugin or Plugin())
    config = Config(node=NodeConfig(), limits=Limits(**limits))
    return ApplicationEntity("NODE", config=config, plugin_manager=pm, reactor=task.Clock())


def connect(ae):
    proto = ae.server_factory().buildProtocol(PEER)
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    return proto, transport


def answer(ae, rq: bytes):
    """Send ``rq`` on a new connection; return (protocol, transport, answer PDU bytes)."""
    proto, transport = connect(ae)
    proto.dataReceived(rq)
    written = transport.value()
    transport.clear()
    return proto, transport, written


def rq_bytes(calling="SCU", contexts=((VERIFICATION, (IVLE,)),), **kwargs):
    return build_associate_rq(
        called_ae_title="NODE", calling_ae_title=calling, contexts=list(contexts), **kwargs
    ).encode()


@pytest.fixture(autouse=True)
def fresh_memo():
    pdu._rq_memo.clear()
    yield
    pdu._rq_memo.clear()


@pytest.fixture
def negotiations(monkeypatch):
    calls = []
    real = negotiation.negotiate_as_acceptor

    def counting(rq, policy, **kwargs):
        calls.append(rq.calling_ae_title)
        return real(rq, policy, **kwargs)

    monkeypatch.setattr(negotiation, "negotiate_as_acceptor", counting)
    return calls


RELEASE_RQ = bytes.fromhex("05 00 00000004 00000000")


def test_same_request_twice_identical_ac_negotiated_once(negotiations):
    ae = make_ae()
    raw = rq_bytes()
    proto1, _, ac1 = answer(ae, raw)
    proto2, _, ac2 = answer(ae, raw)
    assert ac1[0] == 0x02
    assert ac2 == ac1
    assert negotiations == ["SCU"]
    # both associations work, each with its own state
    assert proto1.user.negotiated is proto2.user.negotiated
    assert proto1.user is not proto2.user
    assert ae.active == {proto1.user, proto2.user}


def test_accept_hook_and_checks_still_run_every_time(negotiations):
    plugin = Plugin()
    ae = make_ae(plugin)
    answer(ae, rq_bytes())
    _, _, rj = answer(ae, rq_bytes(calling="REFUSED"))
    _, _, ac = answer(ae, rq_bytes())
    assert plugin.accept_calls == ["SCU", "REFUSED", "SCU"]
    assert rj[0] == 0x03 and ac[0] == 0x02
    assert negotiations == ["SCU"]


def test_association_limit_still_applies_to_cached_requests(negotiations):
    ae = make_ae(max_associations=1)
    raw = rq_bytes()
    proto, _, first = answer(ae, raw)
    _, _, second = answer(ae, raw)
    assert first[0] == 0x02
    assert decode(second)[0] == AssociateRJ(result=2, source=3, reason=2)  # local-limit-exceeded
    proto.dataReceived(RELEASE_RQ)
    proto.connectionLost()
    assert not ae.active
    _, _, third = answer(ae, raw)
    assert third == first
    assert negotiations == ["SCU"]


def test_called_ae_check_still_applies(negotiations):
    ae = make_ae()
    raw = rq_bytes()
    answer(ae, raw)
    ae.policy = replace(ae.policy, check_called_ae=True, ae_title="OTHER")
    _, _, rj = answer(ae, raw)
    assert decode(rj)[0] == AssociateRJ(result=1, source=1, reason=7)


def test_user_identity_is_decided_every_time(negotiations):
    plugin = Plugin()
    ae = make_ae(plugin)
    good = UserIdentityRQ(identity_type=1, positive_response_requested=False, primary_field=b"good")
    bad = replace(good, primary_field=b"bad")
    raw_good = rq_bytes(calling="ID", user_identity=good)
    for raw, kind in ((raw_good, 0x02), (raw_good, 0x02), (rq_bytes(calling="ID", user_identity=bad), 0x03)):
        _, _, written = answer(ae, raw)
        assert written[0] == kind
    assert plugin.authenticated == [b"good", b"good", b"bad"]
    assert negotiations == ["ID", "ID"]  # never from the cache


def test_different_contexts_are_negotiated_apart(negotiations):
    ae = make_ae()
    _, _, ac1 = answer(ae, rq_bytes())
    _, _, ac2 = answer(ae, rq_bytes(contexts=((VERIFICATION, (IVLE,)), (CT, (IVLE,)))))
    assert ac1 != ac2
    assert [pc.result for pc in decode(ac2)[0].presentation_contexts] == [0, 0]
    assert negotiations == ["SCU", "SCU"]


def test_policy_change_invalidates(negotiations):
    ae = make_ae()
    raw = rq_bytes()
    _, _, before = answer(ae, raw)
    ae.policy = replace(ae.policy, maximum_length=4096)  # a configuration change
    _, _, after = answer(ae, raw)
    assert decode(before)[0].user_information.maximum_length == 16384
    assert decode(after)[0].user_information.maximum_length == 4096
    _, _, again = answer(ae, raw)
    assert again == after
    assert negotiations == ["SCU", "SCU"]


def test_each_ae_has_its_own_cache(negotiations):
    raw = rq_bytes()
    first, second = make_ae(), make_ae(max_pdu=4096)
    _, _, ac1 = answer(first, raw)
    _, _, ac2 = answer(second, raw)
    assert decode(ac2)[0].user_information.maximum_length == 4096 != decode(ac1)[0].user_information.maximum_length
    assert negotiations == ["SCU", "SCU"]
