"""PS3.8 Table 9-10, cell by cell, through the sans-I/O upper layer.

Two checks per cell of the 13 x 19 table (247 tests):

1. ``fsm.TRANSITIONS`` holds the action our independent copy of the table
   (``table_9_10.py``, typed from the standard) has -- or neither has one;
2. an :class:`UpperLayer` driven into the cell's state through real
   primitives and PDU bytes, then given the cell's event with a real payload,
   does what the action says: next state, the PDUs it transmits (decoded),
   the primitives it indicates, whether it closes the transport, and the
   timers (ARTIM started, restarted, stopped) as seen through
   ``next_deadline()``.

Expectations are written from the action definitions of PS3.8 Tables 9-6 to
9-9 (``NEXT_STATE`` in ``table_9_10.py`` and ``_expected_outputs`` below),
never from ``fsm.py``.  Blank cells: a primitive of the local user raises
LocalProtocolError (A-ABORT excepted: it is lenient and does nothing);
anything else is ignored.  Either way nothing changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from dimsekit.errors import LocalProtocolError
from dimsekit.testing import accept_all, verification_rq
from dimsekit.ul import fsm
from dimsekit.ul import outputs as out
from dimsekit.ul.connection import Timeouts, UpperLayer
from dimsekit.ul.fsm import TRANSITIONS, Action, Event, State
from dimsekit.ul.pdu import (
    Abort,
    AssociateRJ,
    PDataTF,
    PresentationDataValue,
    ReleaseRP,
    ReleaseRQ,
    decode,
)

from .table_9_10 import EVENTS, NEXT_STATE, STATES, TABLE_9_10

# Distinct values so that a deadline says which timer it is.
ARTIM, ACSE, IDLE = 30.0, 25.0, 70.0
TIMEOUTS = Timeouts(artim=ARTIM, acse=ACSE, idle=IDLE)
SETUP = 0.0  # every state is reached at this time
NOW = 10.0  # every event (but ARTIM expiry) happens at this time

RQ = verification_rq("SCP", "SCU")
AC = accept_all(RQ)
RJ = AssociateRJ(result=1, source=1, reason=7)  # permanent, user, called AE not recognized
PDATA = PDataTF(pdvs=(PresentationDataValue(context_id=1, control=0x03, data=b"\x08\x00\x00\x00"),))
USER_ABORT = Abort(source=0, reason=0)
#: An unrecognized PDU type (PS3.8 Table 9-26 reason 1): an invalid PDU (Evt19).
GARBAGE = b"\x99\x00\x00\x00\x00\x00"

# -- getting an UpperLayer into each state -------------------------------------------

Step = Callable[[UpperLayer], object]


def _receive(pdu_bytes: bytes) -> Step:
    return lambda ul: ul.receive_data(pdu_bytes, SETUP)


ACCEPTED: Step = lambda ul: ul.transport_accepted(SETUP)  # noqa: E731
REQUESTED: Step = lambda ul: ul.request_association(RQ, SETUP)  # noqa: E731
CONNECTED: Step = lambda ul: ul.transport_connected(SETUP)  # noqa: E731
ACCEPT: Step = lambda ul: ul.accept(AC, SETUP)  # noqa: E731
REJECT: Step = lambda ul: ul.reject(RJ, SETUP)  # noqa: E731
RELEASE: Step = lambda ul: ul.release(SETUP)  # noqa: E731
RELEASE_RESPONSE: Step = lambda ul: ul.release_response(SETUP)  # noqa: E731
RQ_IN = _receive(RQ.encode())
AC_IN = _receive(AC.encode())
RELEASE_RQ_IN = _receive(ReleaseRQ().encode())
RELEASE_RP_IN = _receive(ReleaseRP().encode())

_REQUESTOR_STA6 = [REQUESTED, CONNECTED, AC_IN]
_ACCEPTOR_STA6 = [ACCEPTED, RQ_IN, ACCEPT]

#: How each state is reached.  Sta4/5/9/11 exist only for the requestor,
#: Sta2/3/10/12 only for the acceptor; Sta6/7 are tested as the requestor,
#: Sta8/13 as the acceptor (Sta13 after rejecting, so ARTIM runs since SETUP).
PATHS: dict[State, list[Step]] = {
    State.STA1: [],
    State.STA2: [ACCEPTED],
    State.STA3: [ACCEPTED, RQ_IN],
    State.STA4: [REQUESTED],
    State.STA5: [REQUESTED, CONNECTED],
    State.STA6: _REQUESTOR_STA6,
    State.STA7: [*_REQUESTOR_STA6, RELEASE],
    State.STA8: [*_ACCEPTOR_STA6, RELEASE_RQ_IN],
    State.STA9: [*_REQUESTOR_STA6, RELEASE, RELEASE_RQ_IN],
    State.STA10: [*_ACCEPTOR_STA6, RELEASE, RELEASE_RQ_IN],
    State.STA11: [*_REQUESTOR_STA6, RELEASE, RELEASE_RQ_IN, RELEASE_RESPONSE],
    State.STA12: [*_ACCEPTOR_STA6, RELEASE, RELEASE_RQ_IN, RELEASE_RP_IN],
    State.STA13: [ACCEPTED, RQ_IN, REJECT],
}


def drive(state: State) -> UpperLayer:
    """A fresh UpperLayer brought to ``state`` at time SETUP, the real way."""
    ul = UpperLayer(timeouts=TIMEOUTS)
    for step in PATHS[state]:
        step(ul)
    assert ul.state == state, f"could not drive to {state.name}: got {ul.state.name}"
    return ul


# -- firing each event -----------------------------------------------------------------


def fire(ul: UpperLayer, event: Event) -> list[out.Output]:
    """Give ``ul`` the event with a suitable payload, at time NOW (ARTIM expiry:
    at the ARTIM deadline, or, where ARTIM is not running, as a late timer)."""
    match event:
        case Event.EVT1:
            return ul.request_association(RQ, NOW)
        case Event.EVT2:
            return ul.transport_connected(NOW)
        case Event.EVT3:
            return ul.receive_data(AC.encode(), NOW)
        case Event.EVT4:
            return ul.receive_data(RJ.encode(), NOW)
        case Event.EVT5:
            return ul.transport_accepted(NOW)
        case Event.EVT6:
            return ul.receive_data(RQ.encode(), NOW)
        case Event.EVT7:
            return ul.accept(AC, NOW)
        case Event.EVT8:
            return ul.reject(RJ, NOW)
        case Event.EVT9:
            return ul.send_pdata(PDATA.encode(), NOW)
        case Event.EVT10:
            return ul.receive_data(PDATA.encode(), NOW)
        case Event.EVT11:
            return ul.release(NOW)
        case Event.EVT12:
            return ul.receive_data(ReleaseRQ().encode(), NOW)
        case Event.EVT13:
            return ul.receive_data(ReleaseRP().encode(), NOW)
        case Event.EVT14:
            return ul.release_response(NOW)
        case Event.EVT15:
            return ul.abort(NOW)
        case Event.EVT16:
            return ul.receive_data(USER_ABORT.encode(), NOW)
        case Event.EVT17:
            return ul.transport_closed(NOW)
        case Event.EVT18:
            if ul._artim is None:
                # No ARTIM runs in this state: make one expire anyway, as a
                # timer that fires after its cell has been left would.
                ul._artim = NOW
            return ul.handle_timer(ul._artim)
        case Event.EVT19:
            return ul.receive_data(GARBAGE, NOW)
    raise AssertionError(event)


def time_of(event: Event) -> float:
    return SETUP + ARTIM if event == Event.EVT18 else NOW


# -- what each action must do (PS3.8 Tables 9-6 to 9-9) --------------------------------


def _abort_sent(event: Event) -> Abort:
    """The A-ABORT an abort action sends, for the event that triggered it.

    Our own A-ABORT request: service-user source.  Anything the peer did
    wrong: service-provider source (2), reason unrecognized-PDU (1) for the
    garbage of Evt19, unexpected-PDU (2) for a valid PDU in the wrong state.
    """
    if event == Event.EVT15:
        return Abort(source=0, reason=0)
    return Abort(source=2, reason=1 if event == Event.EVT19 else 2)


PROVIDER_ABORT = "A-P-ABORT indication"


def _expected_outputs(action: str, event: Event) -> list[object]:
    """The outputs of ``action``, in a comparable form (see :func:`normalise`)."""
    return {
        "AE-1": [out.OpenTransport()],
        "AE-2": [RQ],
        "AE-3": [out.AssociateAccepted(AC)],
        "AE-4": [out.AssociateRejected(RJ), out.CloseTransport()],
        "AE-5": [],
        "AE-6": [out.AssociateIndication(RQ)],
        "AE-7": [AC],
        "AE-8": [RJ],
        "DT-1": [PDATA],
        "DT-2": [out.PDataIndication(PDATA)],
        "AR-1": [ReleaseRQ()],
        "AR-2": [out.ReleaseIndication(collision=False)],
        "AR-3": [out.ReleaseConfirmation(), out.CloseTransport()],
        "AR-4": [ReleaseRP()],
        "AR-5": [],
        "AR-6": [out.PDataIndication(PDATA)],
        "AR-7": [PDATA],
        "AR-8": [out.ReleaseIndication(collision=True)],
        "AR-9": [ReleaseRP()],
        "AR-10": [out.ReleaseConfirmation()],
        "AA-1": [_abort_sent(event)] + ([] if event == Event.EVT15 else [PROVIDER_ABORT]),
        "AA-2": [out.CloseTransport()],
        "AA-3": [out.AbortIndication(source=0, reason=0), out.CloseTransport()],
        "AA-4": [PROVIDER_ABORT],
        "AA-5": [],
        "AA-6": [],
        "AA-7": [_abort_sent(event)],
        "AA-8": [_abort_sent(event), PROVIDER_ABORT],
    }[action]


#: Actions that start (or restart) ARTIM.
_STARTS_ARTIM = {"AE-5", "AE-8", "AR-4", "AA-1", "AA-8"}
#: States in which we wait for the peer's A-ASSOCIATE-AC/RJ or A-RELEASE-RP (ACSE timeout).
_ACSE_WAIT = {State.STA5, State.STA7, State.STA10, State.STA11}


def _expected_deadline(
    action: str, before: State, after: State, deadline_before: float | None
) -> float | None:
    """``next_deadline()`` after the action, from the timers the connection keeps
    (module docstring of ``connection.py``): ARTIM, ACSE timeout, idle timeout."""
    if after == State.STA1:
        return None  # every timer stops when the connection is over
    if action in _STARTS_ARTIM:
        return NOW + ARTIM
    if after == State.STA13:
        return deadline_before  # AA-6, AA-7: ARTIM keeps running, not restarted
    if after == State.STA6:
        return NOW + IDLE  # activity
    if after in _ACSE_WAIT:
        return deadline_before if before in _ACSE_WAIT else NOW + ACSE
    return None  # Sta3, Sta4, Sta8, Sta9, Sta12: waiting for the local user or the transport


def _expected_next_state(action: str, is_requestor: bool) -> State:
    name = NEXT_STATE[action]
    if action == "AE-6":
        name = "Sta3"  # the A-ASSOCIATE-RQ is acceptable (version 1)
    elif action == "AR-8":
        name = "Sta9" if is_requestor else "Sta10"
    return State[name.upper()]


def normalise(outputs: list[out.Output]) -> list[object]:
    """Transmit -> the PDU(s) its bytes decode to; A-P-ABORT -> a marker (its
    reason is free text, checked non-empty); everything else as is."""
    result: list[object] = []
    for item in outputs:
        if isinstance(item, out.Transmit):
            data = bytes(item.data)
            while data:
                decoded = decode(data)
                assert decoded is not None, f"Transmit holds a partial PDU: {data!r}"
                pdu, used = decoded
                result.append(pdu)
                data = data[used:]
        elif isinstance(item, out.ProviderAbortIndication):
            assert isinstance(item.reason, str) and item.reason
            result.append(PROVIDER_ABORT)
        else:
            result.append(item)
    return result


# -- the 247 cells ----------------------------------------------------------------------

CELLS = [(State[s.upper()], Event[e.upper()]) for s in STATES for e in EVENTS]
USER_PRIMITIVES = {Event.EVT1, Event.EVT7, Event.EVT8, Event.EVT9, Event.EVT11, Event.EVT14}


def _action_name(action: Action | None) -> str:
    return action.name.replace("_", "-") if action is not None else ""


@pytest.mark.parametrize(
    ("state", "event"), CELLS, ids=[f"Sta{s.value}-Evt{e.value}" for s, e in CELLS]
)
def test_cell(state: State, event: Event) -> None:
    cell = (f"Sta{state.value}", f"Evt{event.value}")
    action = TABLE_9_10.get(cell, "")
    assert _action_name(TRANSITIONS.get((state, event))) == action, (
        f"fsm.TRANSITIONS and PS3.8 Table 9-10 differ at {cell}"
    )

    ul = drive(state)
    role = ul.is_requestor
    deadline = ul.next_deadline()

    if not action:
        if event in USER_PRIMITIVES:
            with pytest.raises(LocalProtocolError):
                fire(ul, event)
        else:
            # A-ABORT request (lenient), transport and timer events, PDUs
            # where no transport is open: nothing at all happens.
            assert fire(ul, event) == []
        assert ul.state == state
        assert ul.is_requestor == role
        if event != Event.EVT18:  # the forced late ARTIM is gone, nothing else moved
            assert ul.next_deadline() == deadline
        return

    outputs = fire(ul, event)
    expected_state = _expected_next_state(action, role)
    assert ul.state == expected_state
    assert normalise(outputs) == _expected_outputs(action, event)
    if event == Event.EVT18:
        assert ul.next_deadline() is None  # AA-2: stop ARTIM, close
    else:
        assert ul.next_deadline() == _expected_deadline(action, state, expected_state, deadline)


# -- the table as a whole ------------------------------------------------------------------


def test_transitions_match_table_9_10() -> None:
    """All 247 cells at once, so that a disagreement lists every cell."""
    mismatches = [
        (
            f"Sta{s.value}",
            f"Evt{e.value}",
            _action_name(TRANSITIONS.get((s, e))),
            TABLE_9_10.get((f"Sta{s.value}", f"Evt{e.value}"), ""),
        )
        for s, e in CELLS
        if _action_name(TRANSITIONS.get((s, e)))
        != TABLE_9_10.get((f"Sta{s.value}", f"Evt{e.value}"), "")
    ]
    assert mismatches == []
    assert len(CELLS) == 13 * 19 == 247


def test_independent_table_is_well_formed() -> None:
    assert set(TABLE_9_10) <= {(s, e) for s in STATES for e in EVENTS}
    assert len(TABLE_9_10) == 123  # filled cells; the other 124 are blank
    assert set(TABLE_9_10.values()) == set(NEXT_STATE)  # every action is used somewhere


def test_enums_are_the_standards() -> None:
    assert [s.value for s in State] == list(range(1, 14))
    assert [e.value for e in Event] == list(range(1, 20))
    assert {_action_name(a) for a in Action} == set(NEXT_STATE)
    assert set(fsm.ACTIONS) == set(Action)
    assert set(fsm.STATE_DESCRIPTIONS) == set(State)
    assert set(fsm.EVENT_DESCRIPTIONS) == set(Event)


def test_release_pdus_match_the_codec() -> None:
    assert fsm._RELEASE_RQ == ReleaseRQ().encode()
    assert fsm._RELEASE_RP == ReleaseRP().encode()
    assert decode(fsm._RELEASE_RQ) == (ReleaseRQ(), 10)
    assert decode(fsm._RELEASE_RP) == (ReleaseRP(), 10)


# -- the branches inside actions ---------------------------------------------------------


def test_ar_8_acceptor_goes_to_sta10() -> None:
    """AR-8: release collision, association-acceptor side -> Sta10 (the cell test
    covers the requestor, Sta9); the ACSE timer of Sta7 keeps running."""
    ul = drive(State.STA1)
    for step in [*_ACCEPTOR_STA6, RELEASE]:
        step(ul)
    assert ul.state == State.STA7 and not ul.is_requestor
    outputs = ul.receive_data(ReleaseRQ().encode(), NOW)
    assert outputs == [out.ReleaseIndication(collision=True)]
    assert ul.state == State.STA10
    assert ul.next_deadline() == SETUP + ACSE


def test_aa_3_provider_source_is_an_a_p_abort() -> None:
    """AA-3: an A-ABORT from the peer's service-provider gives A-P-ABORT."""
    ul = drive(State.STA6)
    outputs = ul.receive_data(Abort(source=2, reason=6).encode(), NOW)
    assert outputs[1:] == [out.CloseTransport()]
    [indication] = outputs[:1]
    assert isinstance(indication, out.ProviderAbortIndication)
    assert "invalid-PDU-parameter value" in indication.reason
    assert ul.state == State.STA1


def test_aa_3_user_source_keeps_the_reason() -> None:
    ul = drive(State.STA7)
    assert ul.receive_data(Abort(source=0, reason=0).encode(), NOW) == [
        out.AbortIndication(source=0, reason=0),
        out.CloseTransport(),
    ]


def test_ae_6_unacceptable_request_is_rejected_by_the_provider() -> None:
    """AE-6, "otherwise" branch: a protocol version without bit 0 is rejected
    (permanent, service-provider ACSE, protocol-version-not-supported) and
    ARTIM restarts; next state Sta13."""
    ul = drive(State.STA2)
    bad = dataclasses.replace(RQ, protocol_version=2)
    outputs = ul.receive_data(bad.encode(), NOW)
    rj = AssociateRJ(result=1, source=2, reason=2)
    assert normalise(outputs) == [rj, out.ProviderRejection(bad, rj)]
    assert ul.state == State.STA13
    assert ul.next_deadline() == NOW + ARTIM


def test_aa_8_carries_the_invalid_pdu_reason() -> None:
    """AA-8 on an invalid PDU: the A-ABORT carries the decoder's reason
    (a P-DATA-TF above our maximum length: invalid-PDU-parameter value, 6)."""
    ul = drive(State.STA6)
    oversized = b"\x04\x00" + (ul.maximum_length + 1).to_bytes(4, "big")
    outputs = ul.receive_data(oversized, NOW)
    assert normalise(outputs) == [Abort(source=2, reason=6), PROVIDER_ABORT]
    assert ul.state == State.STA13


@pytest.mark.parametrize("state", [State.STA1, State.STA2, State.STA13])
def test_abort_is_lenient_where_the_table_is_blank(state: State) -> None:
    ul = drive(state)
    assert ul.abort(NOW) == []
    assert ul.state == state


def test_actions_are_pure() -> None:
    """The same context gives the same result, and nothing is kept between calls."""
    ctx = fsm.ActionContext(event=Event.EVT12, is_requestor=True)
    assert fsm.ar_8(ctx) == fsm.ar_8(ctx) == (State.STA9, [out.ReleaseIndication(collision=True)])
    first = fsm.aa_8(fsm.ActionContext(event=Event.EVT10, is_requestor=False, payload=PDATA))
    first[1].clear()
    assert (
        len(fsm.aa_8(fsm.ActionContext(event=Event.EVT10, is_requestor=False, payload=PDATA))[1])
        == 3
    )
