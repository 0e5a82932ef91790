"""The acceptor's fast path for requests seen before, sans-I/O.

* :mod:`dimsekit.ul.pdu` decodes the same A-ASSOCIATE-RQ bytes to the same
  (immutable) value, through a bounded memo;
* :class:`dimsekit.ul.negotiation.NegotiationCache` answers such a request
  again without negotiating -- unless its answer depends on more than the
  request and the policy (User Identity, SOP Class Extended Negotiation).
"""

from __future__ import annotations

import pytest

from dimsekit.errors import RemoteProtocolError
from dimsekit.ul import negotiation, pdu
from dimsekit.ul.fsm import ActionContext, Event, State, ae_7
from dimsekit.ul.items import (
    ImplementationClassUID,
    MaximumLength,
    PresentationContextRQ,
    SOPClassExtendedNegotiation,
    UserIdentityRQ,
    UserInformation,
)
from dimsekit.ul.negotiation import (
    AcceptorPolicy,
    ContextSupport,
    NegotiationCache,
    build_associate_rq,
    negotiate_as_acceptor,
)
from dimsekit.ul.pdu import AssociateRQ, decode, decode_from

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
IVLE = "1.2.840.10008.1.2"
EVLE = "1.2.840.10008.1.2.1"


def rq_bytes(*contexts, calling="SCU", **kwargs) -> bytes:
    return build_associate_rq(
        called_ae_title="NODE", calling_ae_title=calling, contexts=list(contexts or [(VERIFICATION, [IVLE])]),
        **kwargs,
    ).encode()


def policy(**kwargs) -> AcceptorPolicy:
    supported = kwargs.pop(
        "supported",
        [
            ContextSupport(abstract_syntax=VERIFICATION, transfer_syntaxes=(IVLE,)),
            ContextSupport(abstract_syntax=CT, transfer_syntaxes=(EVLE, IVLE)),
        ],
    )
    return AcceptorPolicy(ae_title="NODE", supported={s.abstract_syntax: s for s in supported}, **kwargs)


@pytest.fixture(autouse=True)
def empty_memo():
    pdu._rq_memo.clear()
    yield
    pdu._rq_memo.clear()


# -- the A-ASSOCIATE-RQ memo ----------------------------------------------------------


def test_same_bytes_decode_to_the_same_value():
    raw = rq_bytes()
    first, used = decode(raw)
    assert used == len(raw)
    second, _ = decode_from(b"junk" + raw, 4)
    assert second is first
    assert first == AssociateRQ(**{f: getattr(first, f) for f in first.__dataclass_fields__})


def test_different_bytes_decode_apart():
    a, _ = decode(rq_bytes(calling="ONE"))
    b, _ = decode(rq_bytes(calling="TWO"))
    assert a is not b
    assert (a.calling_ae_title, b.calling_ae_title) == ("ONE", "TWO")


def test_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(pdu, "_RQ_MEMO_ENTRIES", 3)
    values = [decode(rq_bytes(calling=f"SCU{i}"))[0] for i in range(5)]
    assert len(pdu._rq_memo) == 3
    assert decode(rq_bytes(calling="SCU4"))[0] is values[4]  # kept
    assert decode(rq_bytes(calling="SCU0"))[0] is not values[0]  # the oldest went first
    assert decode(rq_bytes(calling="SCU0"))[0] == values[0]


def test_large_requests_are_not_kept(monkeypatch):
    raw = rq_bytes(*[(CT, [IVLE, EVLE])] * 20)
    monkeypatch.setattr(pdu, "_RQ_MEMO_MAX_BODY", len(raw) - 7)  # the body is 6 bytes shorter
    assert decode(raw)[0] is not decode(raw)[0]
    assert not pdu._rq_memo
    monkeypatch.setattr(pdu, "_RQ_MEMO_MAX_BODY", len(raw) - 6)
    assert decode(raw)[0] is decode(raw)[0]


def test_malformed_request_raises_every_time_and_is_not_kept():
    raw = bytearray(rq_bytes())
    raw[74] = 0x99  # the application context item's type -> an unknown item; no context name left
    for _ in range(2):
        with pytest.raises(RemoteProtocolError):
            decode(bytes(raw))
    assert not pdu._rq_memo


# -- NegotiationCache -------------------------------------------------------------


@pytest.fixture
def count_negotiations(monkeypatch):
    calls = []
    real = negotiation.negotiate_as_acceptor

    def counting(rq, policy_, **kwargs):
        calls.append(rq)
        return real(rq, policy_, **kwargs)

    monkeypatch.setattr(negotiation, "negotiate_as_acceptor", counting)
    return calls


def test_same_request_twice_same_answer_negotiated_once(count_negotiations):
    cache = NegotiationCache(policy())
    rq = decode(rq_bytes((VERIFICATION, [IVLE]), (CT, [IVLE])))[0]
    ac1, neg1 = cache.negotiate(rq)
    ac2, neg2 = cache.negotiate(decode(rq_bytes((VERIFICATION, [IVLE]), (CT, [IVLE])))[0])
    assert ac2 == ac1
    assert neg2 is neg1
    assert len(count_negotiations) == 1
    assert (cache.hits, cache.misses) == (1, 1)
    # and the answer is the one negotiate_as_acceptor gives
    ac, neg = negotiate_as_acceptor(rq, cache.policy)
    assert ac1 == ac.encode()
    assert neg1 == neg


def test_different_request_is_negotiated(count_negotiations):
    cache = NegotiationCache(policy())
    ac1, _ = cache.negotiate(decode(rq_bytes((VERIFICATION, [IVLE])))[0])
    ac2, neg2 = cache.negotiate(decode(rq_bytes((CT, [EVLE])))[0])
    assert ac1 != ac2
    assert neg2.contexts[1].abstract_syntax == CT
    assert len(count_negotiations) == 2


def test_equal_request_decoded_apart_is_negotiated_again(count_negotiations):
    # identity, not equality, finds an answer: correct either way, only slower
    cache = NegotiationCache(policy())
    raw = rq_bytes()
    pdu._RQ_MEMO_MAX_BODY, saved = 0, pdu._RQ_MEMO_MAX_BODY
    try:
        first, second = decode(raw)[0], decode(raw)[0]
    finally:
        pdu._RQ_MEMO_MAX_BODY = saved
    assert first == second and first is not second
    assert cache.negotiate(first)[0] == cache.negotiate(second)[0]
    assert len(count_negotiations) == 2


def with_items(rq: AssociateRQ, *extra) -> AssociateRQ:
    info = UserInformation(items=rq.user_information.items + tuple(extra))
    return AssociateRQ(
        called_ae_title=rq.called_ae_title, calling_ae_title=rq.calling_ae_title,
        presentation_contexts=rq.presentation_contexts, user_information=info,
    )


IDENTITY = UserIdentityRQ(identity_type=1, positive_response_requested=True, primary_field=b"user")


def test_request_with_user_identity_is_never_cached(count_negotiations):
    cache = NegotiationCache(policy())
    rq = decode(with_items(decode(rq_bytes())[0], IDENTITY).encode())[0]
    assert not NegotiationCache.cacheable(rq)
    cache.negotiate(rq)
    cache.negotiate(rq)
    assert len(count_negotiations) == 2
    assert cache.hits == 0


def test_request_with_extended_negotiation_is_never_cached(count_negotiations):
    answers = iter([b"\x01", b"\x00"])
    support = ContextSupport(
        abstract_syntax=CT, transfer_syntaxes=(IVLE,), extended_negotiation=lambda info: next(answers)
    )
    cache = NegotiationCache(policy(supported=[support]))
    ext = SOPClassExtendedNegotiation(sop_class_uid=CT, service_class_application_information=b"\x01")
    rq = decode(with_items(decode(rq_bytes((CT, [IVLE])))[0], ext).encode())[0]
    assert not NegotiationCache.cacheable(rq)
    _, first = cache.negotiate(rq)
    _, second = cache.negotiate(rq)
    # the plugin's callable decided each time, and differently
    assert (first.extended[CT], second.extended[CT]) == (b"\x01", b"\x00")
    assert len(count_negotiations) == 2


def test_failed_negotiation_is_not_cached():
    def refuse(info):
        raise ValueError("no")

    support = ContextSupport(abstract_syntax=CT, transfer_syntaxes=(IVLE,), extended_negotiation=refuse)
    cache = NegotiationCache(policy(supported=[support]))
    ext = SOPClassExtendedNegotiation(sop_class_uid=CT, service_class_application_information=b"\x01")
    rq = decode(with_items(decode(rq_bytes((CT, [IVLE])))[0], ext).encode())[0]
    for _ in range(2):
        with pytest.raises(ValueError):
            cache.negotiate(rq)
    assert not cache._answers


def test_cache_is_bounded(count_negotiations):
    cache = NegotiationCache(policy(), size=2)
    rqs = [decode(rq_bytes(calling=f"SCU{i}"))[0] for i in range(3)]
    for rq in rqs:
        cache.negotiate(rq)
    assert len(cache._answers) == 2
    cache.negotiate(rqs[2])
    assert len(count_negotiations) == 3  # kept
    cache.negotiate(rqs[0])
    assert len(count_negotiations) == 4  # the oldest went first


def test_for_policy():
    first = policy()
    cache = NegotiationCache(first)
    cache.negotiate(decode(rq_bytes())[0])
    assert cache.for_policy(first) is cache
    other = cache.for_policy(policy(maximum_length=4096))
    assert other is not cache and not other._answers and other.size == cache.size
    ac, neg = other.negotiate(decode(rq_bytes())[0])
    assert neg.local_maximum_length == 4096
    assert decode(ac)[0].user_information.maximum_length == 4096


# -- AE-7 takes the AC encoded ---------------------------------------------------------


def test_ae_7_sends_an_encoded_ac_as_is():
    rq = decode(rq_bytes())[0]
    ac, _ = negotiate_as_acceptor(rq, policy())
    encoded = ac.encode()
    for payload in (ac, encoded):
        state, outputs = ae_7(ActionContext(event=Event.EVT7, is_requestor=False, payload=payload))
        assert state is State.STA6
        assert [o.data for o in outputs] == [encoded]


def test_upper_layer_accepts_encoded_ac():
    from dimsekit.ul.connection import UpperLayer

    ul = UpperLayer()
    ul.transport_accepted(0.0)
    raw = rq_bytes()
    [indication] = ul.receive_data(raw, 0.0)
    encoded, _ = NegotiationCache(policy()).negotiate(indication.rq)
    [transmit] = ul.accept(encoded, 0.0)
    assert transmit.data is encoded
    assert ul.state is State.STA6


def test_items_untouched():
    # the memo shares values: they must be immutable all the way down
    rq = decode(rq_bytes())[0]
    with pytest.raises(AttributeError):
        rq.calling_ae_title = "X"  # type: ignore[misc]
    assert isinstance(rq.presentation_contexts, tuple)
    assert isinstance(rq.presentation_contexts[0], PresentationContextRQ)
    assert isinstance(rq.user_information.items, tuple)
    assert isinstance(rq.user_information.items[0], MaximumLength | ImplementationClassUID)
