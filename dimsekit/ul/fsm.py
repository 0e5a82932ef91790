"""The DICOM Upper Layer state machine (PS3.8 section 9.2), as data.

:class:`State` (Sta1-Sta13, Tables 9-1..9-5), :class:`Event` (Evt1-Evt19,
Table 9-10) and :class:`Action` (AE-1..8, DT-1..2, AR-1..10, AA-1..8, Tables
9-6..9-9) are IntEnums named after the standard.  :data:`TRANSITIONS` is
Table 9-10 written out: ``TRANSITIONS[(state, event)]`` is the action of that
cell.  A pair missing from it is a blank cell of the table.

Actions are pure functions ``action(ctx) -> (next_state, outputs)``.  They do
no I/O and keep no time: timer starts and stops are returned as
:class:`StartARTIM` / :class:`StopARTIM` outputs, which the connection core
(``connection.py``) turns into deadlines before handing the rest on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from dimsekit.errors import RemoteProtocolError, describe_abort
from dimsekit.ul import outputs as out
from dimsekit.ul.pdu import Abort, AssociateRJ

__all__ = [
    "State",
    "Event",
    "Action",
    "TRANSITIONS",
    "ACTIONS",
    "ActionContext",
    "StartARTIM",
    "StopARTIM",
    "STATE_DESCRIPTIONS",
    "CELLS",
    "EVENT_DESCRIPTIONS",
]


class State(IntEnum):
    """States of the DICOM UL protocol machine (PS3.8 Tables 9-1 to 9-5)."""

    STA1 = 1  #: Idle
    STA2 = 2  #: Transport connection open (Awaiting A-ASSOCIATE-RQ PDU)
    STA3 = 3  #: Awaiting local A-ASSOCIATE response primitive (from local user)
    STA4 = 4  #: Awaiting transport connection opening to complete (from local transport service)
    STA5 = 5  #: Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
    STA6 = 6  #: Association established and ready for data transfer
    STA7 = 7  #: Awaiting A-RELEASE-RP PDU
    STA8 = 8  #: Awaiting local A-RELEASE response primitive (from local user)
    STA9 = 9  #: Release collision requestor side; awaiting A-RELEASE response (from local user)
    STA10 = 10  #: Release collision acceptor side; awaiting A-RELEASE-RP PDU
    STA11 = 11  #: Release collision requestor side; awaiting A-RELEASE-RP PDU
    STA12 = 12  #: Release collision acceptor side; awaiting A-RELEASE response primitive (from local user)
    STA13 = 13  #: Awaiting Transport Connection Close Indication (Association no longer exists)


STATE_DESCRIPTIONS = {
    State.STA1: "Idle",
    State.STA2: "Transport connection open (Awaiting A-ASSOCIATE-RQ PDU)",
    State.STA3: "Awaiting local A-ASSOCIATE response primitive (from local user)",
    State.STA4: "Awaiting transport connection opening to complete (from local transport service)",
    State.STA5: "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU",
    State.STA6: "Association established and ready for data transfer",
    State.STA7: "Awaiting A-RELEASE-RP PDU",
    State.STA8: "Awaiting local A-RELEASE response primitive (from local user)",
    State.STA9: "Release collision requestor side; awaiting A-RELEASE response (from local user)",
    State.STA10: "Release collision acceptor side; awaiting A-RELEASE-RP PDU",
    State.STA11: "Release collision requestor side; awaiting A-RELEASE-RP PDU",
    State.STA12: "Release collision acceptor side; awaiting A-RELEASE response primitive (from local user)",
    State.STA13: "Awaiting Transport Connection Close Indication (Association no longer exists)",
}


class Event(IntEnum):
    """Events of the DICOM UL protocol machine (PS3.8 Table 9-10, first column)."""

    EVT1 = 1  #: A-ASSOCIATE request (local user)
    EVT2 = 2  #: Transport connect confirmation (local transport service)
    EVT3 = 3  #: A-ASSOCIATE-AC PDU (received on transport connection)
    EVT4 = 4  #: A-ASSOCIATE-RJ PDU (received on transport connection)
    EVT5 = 5  #: Transport connection indication (local transport service)
    EVT6 = 6  #: A-ASSOCIATE-RQ PDU (received on transport connection)
    EVT7 = 7  #: A-ASSOCIATE response primitive (accept)
    EVT8 = 8  #: A-ASSOCIATE response primitive (reject)
    EVT9 = 9  #: P-DATA request primitive
    EVT10 = 10  #: P-DATA-TF PDU
    EVT11 = 11  #: A-RELEASE request primitive
    EVT12 = 12  #: A-RELEASE-RQ PDU (received on open transport connection)
    EVT13 = 13  #: A-RELEASE-RP PDU (received on transport connection)
    EVT14 = 14  #: A-RELEASE response primitive
    EVT15 = 15  #: A-ABORT request primitive
    EVT16 = 16  #: A-ABORT PDU (received on open transport connection)
    EVT17 = 17  #: Transport connection closed indication (local transport service)
    EVT18 = 18  #: ARTIM timer expired (Association reject/release timer)
    EVT19 = 19  #: Unrecognized or invalid PDU received


EVENT_DESCRIPTIONS = {
    Event.EVT1: "A-ASSOCIATE request (local user)",
    Event.EVT2: "Transport connect confirmation (local transport service)",
    Event.EVT3: "A-ASSOCIATE-AC PDU (received on transport connection)",
    Event.EVT4: "A-ASSOCIATE-RJ PDU (received on transport connection)",
    Event.EVT5: "Transport connection indication (local transport service)",
    Event.EVT6: "A-ASSOCIATE-RQ PDU (received on transport connection)",
    Event.EVT7: "A-ASSOCIATE response primitive (accept)",
    Event.EVT8: "A-ASSOCIATE response primitive (reject)",
    Event.EVT9: "P-DATA request primitive",
    Event.EVT10: "P-DATA-TF PDU",
    Event.EVT11: "A-RELEASE request primitive",
    Event.EVT12: "A-RELEASE-RQ PDU (received on open transport connection)",
    Event.EVT13: "A-RELEASE-RP PDU (received on transport connection)",
    Event.EVT14: "A-RELEASE response primitive",
    Event.EVT15: "A-ABORT request primitive",
    Event.EVT16: "A-ABORT PDU (received on open transport connection)",
    Event.EVT17: "Transport connection closed indication (local transport service)",
    Event.EVT18: "ARTIM timer expired (Association reject/release timer)",
    Event.EVT19: "Unrecognized or invalid PDU received",
}

#: Events that come from the network; a blank cell for one of them cannot
#: happen in a state where the transport is open (the table fills them all).
NETWORK_EVENTS = frozenset(
    {Event.EVT3, Event.EVT4, Event.EVT6, Event.EVT10, Event.EVT12, Event.EVT13, Event.EVT16, Event.EVT19}
)
#: Events that are primitives of the local user: a blank cell is API misuse.
USER_EVENTS = frozenset(
    {Event.EVT1, Event.EVT7, Event.EVT8, Event.EVT9, Event.EVT11, Event.EVT14, Event.EVT15}
)


class Action(IntEnum):
    """Actions of the DICOM UL protocol machine (PS3.8 Tables 9-6 to 9-9)."""

    AE_1 = 1  #: Issue TRANSPORT CONNECT request primitive to local transport service
    AE_2 = 2  #: Send A-ASSOCIATE-RQ-PDU
    AE_3 = 3  #: Issue A-ASSOCIATE confirmation (accept) primitive
    AE_4 = 4  #: Issue A-ASSOCIATE confirmation (reject) primitive and close transport connection
    AE_5 = 5  #: Issue Transport connection response primitive; start ARTIM timer
    AE_6 = 6  #: Stop ARTIM; if the A-ASSOCIATE-RQ is acceptable by the service-provider issue A-ASSOCIATE indication, else send A-ASSOCIATE-RJ and start ARTIM
    AE_7 = 7  #: Send A-ASSOCIATE-AC PDU
    AE_8 = 8  #: Send A-ASSOCIATE-RJ PDU and start ARTIM timer
    DT_1 = 9  #: Send P-DATA-TF PDU
    DT_2 = 10  #: Send P-DATA indication primitive
    AR_1 = 11  #: Send A-RELEASE-RQ PDU
    AR_2 = 12  #: Issue A-RELEASE indication primitive
    AR_3 = 13  #: Issue A-RELEASE confirmation primitive, and close transport connection
    AR_4 = 14  #: Issue A-RELEASE-RP PDU and start ARTIM timer
    AR_5 = 15  #: Stop ARTIM timer
    AR_6 = 16  #: Issue P-DATA indication
    AR_7 = 17  #: Issue P-DATA-TF PDU
    AR_8 = 18  #: Issue A-RELEASE indication (release collision)
    AR_9 = 19  #: Send A-RELEASE-RP PDU
    AR_10 = 20  #: Issue A-RELEASE confirmation primitive
    AA_1 = 21  #: Send A-ABORT PDU (service-user source) and start (or restart) ARTIM timer
    AA_2 = 22  #: Stop ARTIM timer if running. Close transport connection
    AA_3 = 23  #: Issue A-ABORT (service-user source) or A-P-ABORT indication and close transport connection
    AA_4 = 24  #: Issue A-P-ABORT indication primitive
    AA_5 = 25  #: Stop ARTIM timer
    AA_6 = 26  #: Ignore PDU
    AA_7 = 27  #: Send A-ABORT PDU
    AA_8 = 28  #: Send A-ABORT PDU (service-provider source), issue an A-P-ABORT indication, and start ARTIM timer


# ---------------------------------------------------------------------------
# PS3.8 Table 9-10, DICOM Upper Layer Protocol State Transition Table.
# One line per event (the table's rows); states whose cell is blank are left
# out.  S/E/A below are short names used only to keep the rows readable.
# ---------------------------------------------------------------------------
S, E, A = State, Event, Action


def _row(event: Event, cells: dict[State, Action]) -> dict[tuple[State, Event], Action]:
    return {(state, event): action for state, action in cells.items()}


_ABORTING = {s: A.AA_8 for s in (S.STA3, S.STA5, S.STA6, S.STA7, S.STA8, S.STA9, S.STA10, S.STA11, S.STA12)}

TRANSITIONS: dict[tuple[State, Event], Action] = {
    # Evt1  A-ASSOCIATE request (local user)
    **_row(E.EVT1, {S.STA1: A.AE_1}),
    # Evt2  Transport connect confirmation (local transport service)
    **_row(E.EVT2, {S.STA4: A.AE_2}),
    # Evt3  A-ASSOCIATE-AC PDU received
    **_row(E.EVT3, {S.STA2: A.AA_1, **_ABORTING, S.STA5: A.AE_3, S.STA13: A.AA_6}),
    # Evt4  A-ASSOCIATE-RJ PDU received
    **_row(E.EVT4, {S.STA2: A.AA_1, **_ABORTING, S.STA5: A.AE_4, S.STA13: A.AA_6}),
    # Evt5  Transport connection indication (local transport service)
    **_row(E.EVT5, {S.STA1: A.AE_5}),
    # Evt6  A-ASSOCIATE-RQ PDU received
    **_row(E.EVT6, {S.STA2: A.AE_6, **_ABORTING, S.STA13: A.AA_7}),
    # Evt7  A-ASSOCIATE response primitive (accept)
    **_row(E.EVT7, {S.STA3: A.AE_7}),
    # Evt8  A-ASSOCIATE response primitive (reject)
    **_row(E.EVT8, {S.STA3: A.AE_8}),
    # Evt9  P-DATA request primitive
    **_row(E.EVT9, {S.STA6: A.DT_1, S.STA8: A.AR_7}),
    # Evt10 P-DATA-TF PDU received
    **_row(E.EVT10, {S.STA2: A.AA_1, **_ABORTING, S.STA6: A.DT_2, S.STA7: A.AR_6, S.STA13: A.AA_6}),
    # Evt11 A-RELEASE request primitive
    **_row(E.EVT11, {S.STA6: A.AR_1}),
    # Evt12 A-RELEASE-RQ PDU received
    **_row(E.EVT12, {S.STA2: A.AA_1, **_ABORTING, S.STA6: A.AR_2, S.STA7: A.AR_8, S.STA13: A.AA_6}),
    # Evt13 A-RELEASE-RP PDU received
    **_row(
        E.EVT13,
        {S.STA2: A.AA_1, **_ABORTING, S.STA7: A.AR_3, S.STA10: A.AR_10, S.STA11: A.AR_3, S.STA13: A.AA_6},
    ),
    # Evt14 A-RELEASE response primitive
    **_row(E.EVT14, {S.STA8: A.AR_4, S.STA9: A.AR_9, S.STA12: A.AR_4}),
    # Evt15 A-ABORT request primitive
    **_row(E.EVT15, {S.STA3: A.AA_1, S.STA4: A.AA_2, **{s: A.AA_1 for s in _ABORTING if s != S.STA3}}),
    # Evt16 A-ABORT PDU received
    **_row(E.EVT16, {S.STA2: A.AA_2, **{s: A.AA_3 for s in _ABORTING}, S.STA13: A.AA_2}),
    # Evt17 Transport connection closed indication
    **_row(
        E.EVT17,
        {S.STA2: A.AA_5, S.STA4: A.AA_4, **{s: A.AA_4 for s in _ABORTING}, S.STA13: A.AR_5},
    ),
    # Evt18 ARTIM timer expired
    **_row(E.EVT18, {S.STA2: A.AA_2, S.STA13: A.AA_2}),
    # Evt19 Unrecognized or invalid PDU received
    **_row(E.EVT19, {S.STA2: A.AA_1, **_ABORTING, S.STA13: A.AA_7}),
}
del S, E, A


# ---------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartARTIM:
    """Start (or restart) the ARTIM timer.  Consumed by the connection core."""


@dataclass(frozen=True, slots=True)
class StopARTIM:
    """Stop the ARTIM timer if it runs.  Consumed by the connection core."""


class ActionContext(NamedTuple):
    """What an action may look at: the event, its payload and our role.

    Immutable; a named tuple rather than a frozen dataclass because one is
    made for every event (a tuple is made several times faster).

    ``payload`` is, by event: the A-ASSOCIATE-RQ to send (Evt1, Evt2), the
    received PDU (Evt3, 4, 6, 10, 12, 13, 16), the AC or RJ to send (Evt7 -- an AC may come encoded --,
    Evt8), the encoded P-DATA-TF bytes to send (Evt9), the
    :class:`~dimsekit.errors.RemoteProtocolError` (Evt19), or a reason text
    (Evt15, Evt17, Evt18).
    """

    event: Event
    is_requestor: bool
    payload: object = None


Outputs = list[object]
ActionFunction = Callable[[ActionContext], tuple[State, Outputs]]


def _abort_for(ctx: ActionContext) -> Abort:
    """The A-ABORT to send when the peer did something wrong (service-provider source).

    An invalid PDU carries its own reason; any other PDU arriving where the
    table says abort is an unexpected PDU (Table 9-26 reason 2).
    """
    if isinstance(ctx.payload, RemoteProtocolError):
        return Abort(source=ctx.payload.abort_source, reason=ctx.payload.abort_reason)
    return Abort(source=2, reason=2)


def _why(ctx: ActionContext) -> str:
    if isinstance(ctx.payload, RemoteProtocolError):
        return f"invalid PDU from peer: {ctx.payload}"
    if ctx.event in NETWORK_EVENTS:
        return f"unexpected PDU from peer ({EVENT_DESCRIPTIONS[ctx.event]})"
    return str(ctx.payload or EVENT_DESCRIPTIONS[ctx.event])


def ae_1(ctx: ActionContext) -> tuple[State, Outputs]:
    """AE-1: issue TRANSPORT CONNECT request primitive; next state Sta4."""
    return State.STA4, [out.OpenTransport()]


def ae_2(ctx: ActionContext) -> tuple[State, Outputs]:
    """AE-2: send A-ASSOCIATE-RQ PDU; next state Sta5."""
    return State.STA5, [out.Transmit(ctx.payload.encode())]  # type: ignore[attr-defined]


def ae_3(ctx: ActionContext) -> tuple[State, Outputs]:
    """AE-3: issue A-ASSOCIATE confirmation (accept); next state Sta6."""
    return State.STA6, [out.AssociateAccepted(ctx.payload)]  # type: ignore[arg-type]


def ae_4(ctx: ActionContext) -> tuple[State, Outputs]:
    """AE-4: issue A-ASSOCIATE confirmation (reject), close transport; next state Sta1."""
    return State.STA1, [out.AssociateRejected(ctx.payload), _CLOSE]  # type: ignore[arg-type]


# Outputs are immutable values: those that never vary are made once, here.
_START_ARTIM = StartARTIM()
_STOP_ARTIM = StopARTIM()
_CLOSE = out.CloseTransport()
_RELEASE_CONFIRMATION = out.ReleaseConfirmation()
_RELEASE_INDICATION = out.ReleaseIndication(collision=False)
_RELEASE_COLLISION = out.ReleaseIndication(collision=True)


def ae_5(ctx: ActionContext) -> tuple[State, Outputs]:
    """AE-5: issue transport connection response, start ARTIM; next state Sta2."""
    return State.STA2, [_START_ARTIM]


def ae_6(ctx: ActionContext) -> tuple[State, Outputs]:
    """AE-6: stop ARTIM; indicate the A-ASSOCIATE-RQ if the service-provider
    can accept it (Sta3), else send A-ASSOCIATE-RJ and start ARTIM (Sta13).

    What the provider itself checks is the protocol version: only bit 0
    (version 1) is defined and is the one tested (PS3.8 Table 9-11, bytes 7-8);
    a request without it gets rejected-permanent, source service-provider
    (ACSE), protocol-version-not-supported (Table 9-21).
    """
    rq = ctx.payload
    if not rq.protocol_version & 0x0001:  # type: ignore[attr-defined]
        rj = AssociateRJ(result=1, source=2, reason=2)
        return State.STA13, [_STOP_ARTIM, out.Transmit(rj.encode()), out.ProviderRejection(rq, rj), _START_ARTIM]  # type: ignore[arg-type]
    return State.STA3, [_STOP_ARTIM, out.AssociateIndication(rq)]  # type: ignore[arg-type]


def ae_7(ctx: ActionContext) -> tuple[State, Outputs]:
    """AE-7: send A-ASSOCIATE-AC PDU; next state Sta6.

    The payload is the AC, or its encoding (an acceptor that answered the
    same request before keeps the bytes, see negotiation.NegotiationCache).
    """
    ac = ctx.payload
    return State.STA6, [out.Transmit(ac if type(ac) is bytes else ac.encode())]  # type: ignore[attr-defined]


def ae_8(ctx: ActionContext) -> tuple[State, Outputs]:
    """AE-8: send A-ASSOCIATE-RJ PDU and start ARTIM; next state Sta13."""
    return State.STA13, [out.Transmit(ctx.payload.encode()), _START_ARTIM]  # type: ignore[attr-defined]


def dt_1(ctx: ActionContext) -> tuple[State, Outputs]:
    """DT-1: send P-DATA-TF PDU; next state Sta6."""
    return State.STA6, [out.Transmit(ctx.payload)]  # type: ignore[arg-type]


def dt_2(ctx: ActionContext) -> tuple[State, Outputs]:
    """DT-2: send P-DATA indication primitive; next state Sta6."""
    return State.STA6, [out.PDataIndication(ctx.payload)]  # type: ignore[arg-type]


def ar_1(ctx: ActionContext) -> tuple[State, Outputs]:
    """AR-1: send A-RELEASE-RQ PDU; next state Sta7."""
    return State.STA7, [_TRANSMIT_RELEASE_RQ]


def ar_2(ctx: ActionContext) -> tuple[State, Outputs]:
    """AR-2: issue A-RELEASE indication primitive; next state Sta8."""
    return State.STA8, [_RELEASE_INDICATION]


def ar_3(ctx: ActionContext) -> tuple[State, Outputs]:
    """AR-3: issue A-RELEASE confirmation, close transport; next state Sta1."""
    return State.STA1, [_RELEASE_CONFIRMATION, _CLOSE]


def ar_4(ctx: ActionContext) -> tuple[State, Outputs]:
    """AR-4: issue A-RELEASE-RP PDU and start ARTIM; next state Sta13."""
    return State.STA13, [_TRANSMIT_RELEASE_RP, _START_ARTIM]


def ar_5(ctx: ActionContext) -> tuple[State, Outputs]:
    """AR-5: stop ARTIM; next state Sta1."""
    return State.STA1, [_STOP_ARTIM]


def ar_6(ctx: ActionContext) -> tuple[State, Outputs]:
    """AR-6: issue P-DATA indication; next state Sta7."""
    return State.STA7, [out.PDataIndication(ctx.payload)]  # type: ignore[arg-type]


def ar_7(ctx: ActionContext) -> tuple[State, Outputs]:
    """AR-7: issue P-DATA-TF PDU; next state Sta8."""
    return State.STA8, [out.Transmit(ctx.payload)]  # type: ignore[arg-type]


def ar_8(ctx: ActionContext) -> tuple[State, Outputs]:
    """AR-8: issue A-RELEASE indication (release collision); next state Sta9
    for the association-requestor, Sta10 for the acceptor."""
    return (State.STA9 if ctx.is_requestor else State.STA10), [_RELEASE_COLLISION]


def ar_9(ctx: ActionContext) -> tuple[State, Outputs]:
    """AR-9: send A-RELEASE-RP PDU; next state Sta11."""
    return State.STA11, [_TRANSMIT_RELEASE_RP]


def ar_10(ctx: ActionContext) -> tuple[State, Outputs]:
    """AR-10: issue A-RELEASE confirmation primitive; next state Sta12."""
    return State.STA12, [_RELEASE_CONFIRMATION]


def aa_1(ctx: ActionContext) -> tuple[State, Outputs]:
    """AA-1: send A-ABORT PDU and start (or restart) ARTIM; next state Sta13.

    For our own A-ABORT request (Evt15) the source is the service-user (0).
    The table also uses AA-1 when a PDU other than A-ASSOCIATE-RQ arrives on
    a fresh connection (Sta2); that abort is the service-provider's doing, so
    it carries source 2 and the reason (unexpected or invalid PDU).
    """
    if ctx.event == Event.EVT15:
        return State.STA13, [out.Transmit(Abort(source=0, reason=0).encode()), _START_ARTIM]
    # The peer's doing: tell the local user too, so the connection is logged with its reason.
    return State.STA13, [out.Transmit(_abort_for(ctx).encode()), out.ProviderAbortIndication(_why(ctx)), _START_ARTIM]


def aa_2(ctx: ActionContext) -> tuple[State, Outputs]:
    """AA-2: stop ARTIM if running, close transport; next state Sta1."""
    return State.STA1, [_STOP_ARTIM, _CLOSE]


def aa_3(ctx: ActionContext) -> tuple[State, Outputs]:
    """AA-3: issue A-ABORT indication (service-user initiated abort) or
    A-P-ABORT indication (service-provider initiated), close transport; Sta1."""
    pdu = ctx.payload
    if pdu.source == 0:  # type: ignore[attr-defined]
        indication: object = out.AbortIndication(source=pdu.source, reason=pdu.reason)  # type: ignore[attr-defined]
    else:
        indication = out.ProviderAbortIndication(describe_abort(pdu.source, pdu.reason))  # type: ignore[attr-defined]
    return State.STA1, [indication, _CLOSE]


def aa_4(ctx: ActionContext) -> tuple[State, Outputs]:
    """AA-4: issue A-P-ABORT indication primitive; next state Sta1."""
    return State.STA1, [out.ProviderAbortIndication(_why(ctx), transport_closed=ctx.event == Event.EVT17)]


def aa_5(ctx: ActionContext) -> tuple[State, Outputs]:
    """AA-5: stop ARTIM timer; next state Sta1."""
    return State.STA1, [_STOP_ARTIM]


def aa_6(ctx: ActionContext) -> tuple[State, Outputs]:
    """AA-6: ignore PDU; next state Sta13."""
    return State.STA13, []


def aa_7(ctx: ActionContext) -> tuple[State, Outputs]:
    """AA-7: send A-ABORT PDU; next state Sta13."""
    return State.STA13, [out.Transmit(_abort_for(ctx).encode())]


def aa_8(ctx: ActionContext) -> tuple[State, Outputs]:
    """AA-8: send A-ABORT PDU (service-provider source), issue A-P-ABORT
    indication, start ARTIM; next state Sta13."""
    return State.STA13, [
        out.Transmit(_abort_for(ctx).encode()),
        out.ProviderAbortIndication(_why(ctx)),
        _START_ARTIM,
    ]


ACTIONS: dict[Action, ActionFunction] = {
    Action.AE_1: ae_1, Action.AE_2: ae_2, Action.AE_3: ae_3, Action.AE_4: ae_4,
    Action.AE_5: ae_5, Action.AE_6: ae_6, Action.AE_7: ae_7, Action.AE_8: ae_8,
    Action.DT_1: dt_1, Action.DT_2: dt_2,
    Action.AR_1: ar_1, Action.AR_2: ar_2, Action.AR_3: ar_3, Action.AR_4: ar_4,
    Action.AR_5: ar_5, Action.AR_6: ar_6, Action.AR_7: ar_7, Action.AR_8: ar_8,
    Action.AR_9: ar_9, Action.AR_10: ar_10,
    Action.AA_1: aa_1, Action.AA_2: aa_2, Action.AA_3: aa_3, Action.AA_4: aa_4,
    Action.AA_5: aa_5, Action.AA_6: aa_6, Action.AA_7: aa_7, Action.AA_8: aa_8,
}  # fmt: skip


# The two release PDUs never change (PS3.8 Tables 9-24 and 9-25: type, reserved,
# length 4, four reserved bytes); a test checks them against the codec.
_RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
_TRANSMIT_RELEASE_RQ = out.Transmit(_RELEASE_RQ)
_TRANSMIT_RELEASE_RP = out.Transmit(_RELEASE_RP)


# ---------------------------------------------------------------------------
# The table again, indexed for the connection core: CELLS[state][event] is the
# action *function* of that cell, or None for a blank cell -- two list
# indexings instead of a tuple key, a dict lookup and a second one in ACTIONS.
# Derived from TRANSITIONS and ACTIONS, so the table stays the one source.
# ---------------------------------------------------------------------------
CELLS: list[list[ActionFunction | None]] = [[None] * (len(Event) + 1) for _ in range(len(State) + 1)]
for (_state, _event), _action in TRANSITIONS.items():
    CELLS[_state][_event] = ACTIONS[_action]
del _state, _event, _action
