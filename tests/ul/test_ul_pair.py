"""Two upper layers talking: ``dimsekit.testing.UpperLayerPair``.

Whole exchanges (establish, P-DATA, release, reject, abort) through two real
cores, the release collision from both sides, PDUs crossing in flight, the
timers through the fake clock -- and a hypothesis state machine driving the
pair through random primitives, delivery orders and time, checking that only
disallowed primitives raise, that a closed transport means Sta1 on both sides
and that every exchange ends by itself with nothing left over.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from dimsekit.errors import LocalProtocolError
from dimsekit.testing import ACCEPTOR, REQUESTOR, UpperLayerPair, accept_all, verification_rq
from dimsekit.ul import outputs as out
from dimsekit.ul.connection import Timeouts
from dimsekit.ul.fsm import State
from dimsekit.ul.pdu import (
    Abort,
    AssociateRJ,
    PDataTF,
    PresentationDataValue,
    ReleaseRP,
    ReleaseRQ,
    decode,
)

from .table_9_10 import TABLE_9_10

STA1, STA6 = State.STA1, State.STA6


def pdata(payload: bytes) -> PDataTF:
    return PDataTF(pdvs=(PresentationDataValue(context_id=1, control=0x02, data=payload),))


ECHO_RQ = pdata(b"\x00\x00\x00\x00\x04\x00\x00\x00")
ECHO_RSP = pdata(b"\x00\x00\x00\x00\x04\x00\x00\x00\x30\x80")


def wire(pair: UpperLayerPair, side: str) -> list[object]:
    """The PDUs ``side`` transmitted, decoded."""
    pdus = []
    for data in pair.transmitted[side]:
        while data:
            decoded = decode(data)
            assert decoded is not None
            pdus.append(decoded[0])
            data = data[decoded[1] :]
    return pdus


def ended(pair: UpperLayerPair) -> None:
    assert pair.states == (STA1, STA1)
    assert pair.transport_closed
    assert not pair.in_flight[REQUESTOR] and not pair.in_flight[ACCEPTOR]
    assert pair.requestor.next_deadline() is None and pair.acceptor.next_deadline() is None


# -- whole exchanges -------------------------------------------------------------------------


def test_establish_pdata_release() -> None:
    pair = UpperLayerPair()
    rq, ac = pair.establish()
    assert pair.take(ACCEPTOR) == [out.AssociateIndication(rq)]
    assert pair.take(REQUESTOR) == [out.AssociateAccepted(ac)]
    assert pair.transport_open

    pair.send_pdata(REQUESTOR, ECHO_RQ.encode())
    assert pair.indications[ACCEPTOR] == []  # not delivered yet
    pair.pump()
    assert pair.take(ACCEPTOR) == [out.PDataIndication(ECHO_RQ)]
    pair.send_pdata(ACCEPTOR, ECHO_RSP.encode())
    pair.pump()
    assert pair.take(REQUESTOR) == [out.PDataIndication(ECHO_RSP)]

    pair.release_association(REQUESTOR)
    assert pair.take(ACCEPTOR) == [out.ReleaseIndication(collision=False)]
    assert pair.take(REQUESTOR) == [out.ReleaseConfirmation()]
    assert wire(pair, REQUESTOR) == [rq, ECHO_RQ, ReleaseRQ()]
    assert wire(pair, ACCEPTOR) == [ac, ECHO_RSP, ReleaseRP()]
    ended(pair)


def test_release_by_the_acceptor() -> None:
    pair = UpperLayerPair()
    pair.establish()
    pair.release_association(ACCEPTOR)
    assert pair.indications[REQUESTOR][-1] == out.ReleaseIndication(collision=False)
    assert pair.indications[ACCEPTOR][-1] == out.ReleaseConfirmation()
    ended(pair)


def test_pdata_during_release() -> None:
    """The acceptor's P-DATA crosses the requestor's A-RELEASE-RQ: the
    requestor still gets it in Sta7 (AR-6); the acceptor may send more in Sta8
    (AR-7) before answering."""
    pair = UpperLayerPair()
    pair.establish()
    pair.release(REQUESTOR)
    pair.send_pdata(ACCEPTOR, ECHO_RSP.encode())
    pair.pump()
    assert pair.states == (State.STA7, State.STA8)
    pair.send_pdata(ACCEPTOR, ECHO_RSP.encode())
    pair.release_response(ACCEPTOR)
    pair.pump()
    assert pair.indications[REQUESTOR][-3:] == [
        out.PDataIndication(ECHO_RSP),
        out.PDataIndication(ECHO_RSP),
        out.ReleaseConfirmation(),
    ]
    ended(pair)


@pytest.mark.parametrize("first", [REQUESTOR, ACCEPTOR])
def test_release_collision(first: str) -> None:
    """Both sides ask to release before either request arrives (PS3.8 Sta9-Sta12):
    the requestor answers first, then the acceptor; both end in Sta1."""
    pair = UpperLayerPair()
    pair.establish()
    pair.take(REQUESTOR), pair.take(ACCEPTOR)
    pair.release(REQUESTOR)
    pair.release(ACCEPTOR)
    pair.deliver(first)
    pair.deliver(pair.peer_of(first))
    assert pair.states == (State.STA9, State.STA10)
    assert pair.take(REQUESTOR) == [out.ReleaseIndication(collision=True)]
    assert pair.take(ACCEPTOR) == [out.ReleaseIndication(collision=True)]

    # The acceptor may not answer yet: its response comes after the confirmation.
    with pytest.raises(LocalProtocolError):
        pair.release_response(ACCEPTOR)
    pair.release_response(REQUESTOR)  # AR-9 -> Sta11
    pair.pump()  # acceptor AR-10 -> Sta12
    assert pair.states == (State.STA11, State.STA12)
    assert pair.take(ACCEPTOR) == [out.ReleaseConfirmation()]
    pair.release_response(ACCEPTOR)  # AR-4 -> Sta13
    pair.pump()  # requestor AR-3 closes, acceptor AR-5
    assert pair.take(REQUESTOR) == [out.ReleaseConfirmation()]
    assert pair.take(ACCEPTOR) == []
    assert wire(pair, REQUESTOR)[-2:] == [ReleaseRQ(), ReleaseRP()]
    assert wire(pair, ACCEPTOR)[-2:] == [ReleaseRQ(), ReleaseRP()]
    ended(pair)


@pytest.mark.parametrize("side", [REQUESTOR, ACCEPTOR])
def test_abort(side: str) -> None:
    pair = UpperLayerPair()
    pair.establish()
    pair.take(REQUESTOR), pair.take(ACCEPTOR)
    pair.abort(side)
    assert pair.side(side).state == State.STA13
    pair.pump()
    assert pair.take(pair.peer_of(side)) == [out.AbortIndication(source=0, reason=0)]
    assert pair.take(side) == []  # its own abort: no indication, AR-5 on the close
    assert wire(pair, side)[-1] == Abort(source=0, reason=0)
    ended(pair)


def test_aborts_crossing() -> None:
    """Both abort at once: each receives the other's A-ABORT in Sta13 (AA-2)."""
    pair = UpperLayerPair()
    pair.establish()
    pair.take(REQUESTOR), pair.take(ACCEPTOR)
    pair.abort(REQUESTOR)
    pair.abort(ACCEPTOR)
    pair.pump()
    assert pair.take(REQUESTOR) == [] and pair.take(ACCEPTOR) == []
    assert wire(pair, REQUESTOR)[1:] == wire(pair, ACCEPTOR)[1:] == [Abort(source=0, reason=0)]
    ended(pair)


def test_abort_crossing_pdata() -> None:
    """The acceptor aborts while the requestor's P-DATA is in flight: the
    P-DATA is ignored in Sta13 (AA-6)."""
    pair = UpperLayerPair()
    pair.establish()
    pair.take(REQUESTOR), pair.take(ACCEPTOR)
    pair.send_pdata(REQUESTOR, ECHO_RQ.encode())
    pair.abort(ACCEPTOR)
    pair.pump()
    assert pair.take(ACCEPTOR) == []
    assert pair.take(REQUESTOR) == [out.AbortIndication(source=0, reason=0)]
    assert wire(pair, ACCEPTOR)[1:] == [Abort(source=0, reason=0)]  # one A-ABORT, no answer
    ended(pair)


def test_reject() -> None:
    pair = UpperLayerPair()
    pair.connect()
    pair.pump()
    rj = AssociateRJ(result=1, source=1, reason=7)
    pair.reject(rj)
    assert pair.acceptor.state == State.STA13
    pair.pump()
    assert pair.take(REQUESTOR) == [out.AssociateRejected(rj)]
    ended(pair)


def test_split_delivery() -> None:
    """Every byte delivered on its own: the same exchange, the same indications."""
    pair = UpperLayerPair()
    rq = pair.connect()
    pair.deliver(REQUESTOR, chunk_size=1)
    assert pair.take(ACCEPTOR) == [out.AssociateIndication(rq)]
    pair.accept()
    pair.deliver(ACCEPTOR, splits=[1, 2, 6, 7, 50])
    assert pair.states == (STA6, STA6)
    pair.send_pdata(REQUESTOR, ECHO_RQ.encode() * 3)
    pair.deliver(REQUESTOR, size=5)
    assert pair.indications[ACCEPTOR] == []
    assert len(pair.in_flight[REQUESTOR]) == 3 * len(ECHO_RQ.encode()) - 5
    pair.deliver(REQUESTOR, chunk_size=7)
    assert pair.take(ACCEPTOR) == [out.PDataIndication(ECHO_RQ)] * 3
    pair.release_association()
    ended(pair)


# -- the fake clock --------------------------------------------------------------------------


def test_acse_timeout_when_the_acceptor_never_answers() -> None:
    pair = UpperLayerPair(timeouts=Timeouts(artim=30.0, acse=20.0, idle=None))
    pair.connect()
    pair.pump()
    assert pair.states == (State.STA5, State.STA3)
    pair.advance(19.0)
    assert pair.states == (State.STA5, State.STA3)
    pair.advance(1.0)
    assert pair.now == 20.0
    [indication] = pair.take(REQUESTOR)
    assert isinstance(indication, out.ProviderAbortIndication)
    assert pair.indications[ACCEPTOR][-1] == out.AbortIndication(source=0, reason=0)
    ended(pair)


def test_idle_timeout_through_the_pair() -> None:
    pair = UpperLayerPair(timeouts=Timeouts(artim=30.0, acse=20.0, idle=60.0))
    pair.establish()
    pair.advance(50.0)
    pair.send_pdata(REQUESTOR, ECHO_RQ.encode())
    pair.pump()
    pair.advance(59.0)  # the acceptor received at 50: its idle deadline is 110
    assert pair.states == (STA6, STA6)
    pair.advance(1.0)
    assert "idle" in pair.indications[REQUESTOR][-1].reason  # type: ignore[union-attr]
    ended(pair)


def test_artim_closes_when_the_peer_does_not() -> None:
    """The acceptor rejects; the RJ is held back, so the requestor cannot close;
    the acceptor's ARTIM closes the connection (the RJ still arrives first)."""
    pair = UpperLayerPair(timeouts=Timeouts(artim=30.0, acse=None, idle=None))
    pair.connect()
    pair.pump()
    pair.reject(AssociateRJ(result=2, source=3, reason=1))
    pair.advance(30.0, pump=False)
    assert pair.states == (State.STA5, STA1)
    assert pair.closed(ACCEPTOR) and not pair.closed(REQUESTOR)
    pair.pump()
    assert isinstance(pair.take(REQUESTOR)[-1], out.AssociateRejected)
    ended(pair)


def test_network_failure() -> None:
    pair = UpperLayerPair()
    pair.establish()
    pair.send_pdata(REQUESTOR, ECHO_RQ.encode())
    pair.drop_connection()
    assert pair.states == (STA1, STA1)
    assert isinstance(pair.indications[REQUESTOR][-1], out.ProviderAbortIndication)
    assert isinstance(pair.indications[ACCEPTOR][-1], out.ProviderAbortIndication)
    ended(pair)


def test_settle_ends_a_stuck_release() -> None:
    """Nobody answers the A-RELEASE indication: the requestor's ACSE timeout
    aborts, and ``settle`` lets it happen."""
    pair = UpperLayerPair()
    pair.establish()
    pair.release(REQUESTOR)
    pair.settle()
    ended(pair)


def test_pair_misuse() -> None:
    pair = UpperLayerPair()
    with pytest.raises(ValueError):
        pair.side("observer")
    with pytest.raises(LocalProtocolError):
        pair.release(REQUESTOR)  # Sta1
    with pytest.raises(AssertionError):
        pair.accept()  # nothing was indicated
    with pytest.raises(ValueError):
        pair.advance(-1.0)
    rq = verification_rq()
    assert accept_all(rq).presentation_contexts[0].transfer_syntax == "1.2.840.10008.1.2"


# -- random primitives and delivery orders ---------------------------------------------------

SIDES = st.sampled_from([REQUESTOR, ACCEPTOR])
RQ = verification_rq()
#: The local user's primitives (Evt7, 8, 9, 11, 14, 15) with an argument each needs.
PRIMITIVES: dict[str, tuple[str, tuple[object, ...]]] = {
    "accept": ("Evt7", (accept_all(RQ),)),
    "reject": ("Evt8", (AssociateRJ(result=1, source=1, reason=1),)),
    "send_pdata": ("Evt9", (ECHO_RQ.encode(),)),
    "release": ("Evt11", ()),
    "release_response": ("Evt14", ()),
    "abort": ("Evt15", ()),
}


class PairMachine(RuleBasedStateMachine):
    """Random primitives on either side, bytes delivered whole, in part or cut
    anywhere, either side first, time passing with or without delivery.

    ``progress`` issues a primitive the side's state allows (so that runs get
    past association establishment); ``anything`` issues any primitive,
    allowed or not, A-ABORT included."""

    @initialize()
    def connect(self) -> None:
        self.pair = UpperLayerPair()
        self.pair.connect(RQ)
        self.time_passed = False

    def _issue(self, side: str, primitive: str) -> None:
        event, args = PRIMITIVES[primitive]
        ul = self.pair.side(side)
        before = ul.state
        queued = bytes(self.pair.in_flight[side])
        allowed = (f"Sta{before.value}", event) in TABLE_9_10
        try:
            self.pair.call(side, primitive, *args)
        except LocalProtocolError:
            assert not allowed, f"{primitive} refused in {before.name}"
            assert ul.state == before
            assert bytes(self.pair.in_flight[side]) == queued
            return
        assert allowed or primitive == "abort", f"{primitive} accepted in {before.name}"

    @rule(side=SIDES, data=st.data())
    def progress(self, side: str, data: st.DataObject) -> None:
        state = f"Sta{self.pair.side(side).state.value}"
        allowed = sorted(
            name
            for name, (event, _) in PRIMITIVES.items()
            if name != "abort" and (state, event) in TABLE_9_10
        )
        if allowed:
            self._issue(side, data.draw(st.sampled_from(allowed), label="primitive"))

    @rule(side=SIDES, primitive=st.sampled_from(sorted(PRIMITIVES)))
    def anything(self, side: str, primitive: str) -> None:
        self._issue(side, primitive)

    @precondition(lambda self: self.pair.states == (STA6, STA6))
    @rule()
    def release_collision(self) -> None:
        self.pair.release(REQUESTOR)
        self.pair.release(ACCEPTOR)

    @rule(side=SIDES, data=st.data())
    def deliver(self, side: str, data: st.DataObject) -> None:
        waiting = len(self.pair.in_flight[side])
        size = data.draw(
            st.one_of(st.just(waiting), st.integers(min_value=0, max_value=waiting)), label="size"
        )
        splits = data.draw(
            st.lists(st.integers(min_value=1, max_value=max(1, size)), max_size=4), label="splits"
        )
        self.pair.deliver(side, size=size, splits=splits)

    @rule()
    def pump(self) -> None:
        self.pair.pump()

    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0, 21.0, 31.0, 61.0]), pump=st.booleans())
    def time_passes(self, seconds: float, pump: bool) -> None:
        self.time_passed = True
        self.pair.advance(seconds, pump=pump)

    @invariant()
    def closed_means_idle(self) -> None:
        for side in (REQUESTOR, ACCEPTOR):
            ul = self.pair.side(side)
            # Sta1 is reached exactly by closing the transport or being told it closed.
            assert (ul.state == STA1) == self.pair.closed(side), (side, ul.state)
            if ul.state == STA1:
                assert ul.next_deadline() is None

    @invariant()
    def correct_peers_never_see_a_provider_abort(self) -> None:
        """Between two correct upper layers nothing is unexpected or invalid:
        an A-P-ABORT can only come from a timeout."""
        if not self.time_passed:
            for side in (REQUESTOR, ACCEPTOR):
                assert not any(
                    isinstance(i, out.ProviderAbortIndication) for i in self.pair.indications[side]
                ), self.pair.indications[side]

    def teardown(self) -> None:
        pair = self.pair
        pair.settle()
        ended(pair)


PairMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pair_machine = PairMachine.TestCase
