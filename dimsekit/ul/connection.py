"""The sans-I/O DICOM Upper Layer: bytes and primitives in, outputs out.

:class:`UpperLayer` is one side of one transport connection.  It owns the
state machine (``fsm.py``), frames PDUs out of the incoming byte stream and
keeps the protocol's timers as deadlines.  It performs no I/O and reads no
clock: every entry point takes ``now`` (seconds, any monotonic origin) and
returns the outputs (``outputs.py``) for the caller to carry out;
:meth:`UpperLayer.next_deadline` says when :meth:`UpperLayer.handle_timer`
must be called next.

Timers (each a deadline, ``None`` when not running):

* ARTIM (PS3.8 9.1.5): on a freshly accepted connection until its
  A-ASSOCIATE-RQ arrives (so a silent or non-DICOM client cannot hold a slot),
  and in Sta13 until the peer closes.  Expiry is Evt18.
* ACSE timeout: waiting for A-ASSOCIATE-AC/RJ (Sta5) or A-RELEASE-RP (Sta7,
  Sta10, Sta11).  Expiry aborts the association (Evt15 and an A-P-ABORT
  indication naming the timeout).
* Idle timeout: an established association (Sta6) on which nothing was sent
  or received for that long, and no work is in progress (``handle_timer``'s
  ``busy``), is aborted the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from dimsekit.errors import LocalProtocolError, RemoteProtocolError
from dimsekit.ul import outputs as out
from dimsekit.ul.fsm import (
    CELLS,
    EVENT_DESCRIPTIONS,
    STATE_DESCRIPTIONS,
    TRANSITIONS,
    USER_EVENTS,
    Action,
    ActionContext,
    Event,
    StartARTIM,
    State,
    StopARTIM,
)
from dimsekit.ul.pdu import (
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    PresentationDataValue,
    ReleaseRP,
    ReleaseRQ,
    decode,
    decode_from,
    extend_pdata,
)

__all__ = ["UpperLayer", "Timeouts", "DEFAULT_MAXIMUM_LENGTH"]


def _pdata_indication(pdvs: list[PresentationDataValue]) -> out.PDataIndication:
    """One P-DATA indication carrying ``pdvs`` (those of one or more P-DATA-TF PDUs)."""
    return out.PDataIndication(PDataTF(tuple(pdvs)))

#: ``tuple.__new__``: makes a named tuple from its fields in one C call
_make_tuple = tuple.__new__

#: Our default Maximum Length Received (the largest P-DATA-TF variable field we accept).
DEFAULT_MAXIMUM_LENGTH = 16384

# Which event a received PDU is (PS3.8 Table 9-10 rows).
_EVENT_FOR_PDU: dict[type, Event] = {
    AssociateAC: Event.EVT3,
    AssociateRJ: Event.EVT4,
    AssociateRQ: Event.EVT6,
    PDataTF: Event.EVT10,
    ReleaseRQ: Event.EVT12,
    ReleaseRP: Event.EVT13,
    Abort: Event.EVT16,
}

# The two cells inlined as fast paths (UpperLayer.send_pdata, the P-DATA-TF runs of receive_data):
# fail at import, not at run time, should the table ever say otherwise.
if (
    TRANSITIONS[(State.STA6, Event.EVT9)] is not Action.DT_1
    or TRANSITIONS[(State.STA6, Event.EVT10)] is not Action.DT_2
):  # pragma: no cover
    raise ImportError("Table 9-10: Sta6 x Evt9/Evt10 are no longer DT-1/DT-2; update connection.py")

#: the PDU header: type, reserved, length (PS3.8 9.3.1)
_HEADER_SIZE = 6

# States in which we wait for the peer's ACSE answer (A-ASSOCIATE-AC/RJ, A-RELEASE-RP).
_ACSE_WAIT = frozenset({State.STA5, State.STA7, State.STA10, State.STA11})


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """The upper layer's timeouts, in seconds.  ``None`` disables one.

    Defaults are no shorter than the field's usual ones (DCMTK and dcm4che
    use 30 s for ARTIM/ACSE; an idle association is commonly dropped after a
    minute).
    """

    artim: float = 30.0
    acse: float | None = 30.0
    idle: float | None = 60.0


class UpperLayer:
    """One side of a DICOM UL connection, without I/O.

    :param maximum_length: our Maximum Length Received: a P-DATA-TF longer than
        this is an invalid PDU (0 = no limit).
    :param timeouts: see :class:`Timeouts`.
    """

    def __init__(self, *, maximum_length: int = DEFAULT_MAXIMUM_LENGTH, timeouts: Timeouts | None = None) -> None:
        self.state = State.STA1
        self.is_requestor = False
        self.maximum_length = maximum_length
        self.timeouts = timeouts or Timeouts()
        self._buffer = bytearray()
        self._discarding = False  # framing lost after an invalid PDU
        self._pending_rq: AssociateRQ | None = None
        self._artim: float | None = None
        self._acse: float | None = None
        self._last_activity = 0.0

    # -- the local user's primitives ----------------------------------------

    def request_association(self, rq: AssociateRQ, now: float) -> list[out.Output]:
        """A-ASSOCIATE request (Evt1): become the requestor and open the transport."""
        self._check(Event.EVT1)
        self.is_requestor = True
        self._pending_rq = rq
        return self._handle(Event.EVT1, rq, now)

    def transport_connected(self, now: float) -> list[out.Output]:
        """Transport connect confirmation (Evt2): send the pending A-ASSOCIATE-RQ."""
        return self._handle(Event.EVT2, self._pending_rq, now)

    def transport_accepted(self, now: float) -> list[out.Output]:
        """Transport connection indication (Evt5): we are the acceptor."""
        if (self.state, Event.EVT5) in TRANSITIONS:  # not in a blank cell: keep our role
            self.is_requestor = False
        return self._handle(Event.EVT5, None, now)

    def accept(self, ac: AssociateAC | bytes, now: float) -> list[out.Output]:
        """A-ASSOCIATE response, accept (Evt7): the A-ASSOCIATE-AC, or its encoding."""
        return self._handle(Event.EVT7, ac, now)

    def reject(self, rj: AssociateRJ, now: float) -> list[out.Output]:
        """A-ASSOCIATE response, reject (Evt8)."""
        return self._handle(Event.EVT8, rj, now)

    def send_pdata(self, pdu: bytes, now: float) -> list[out.Output]:
        """P-DATA request (Evt9): ``pdu`` is one or more encoded P-DATA-TF PDUs."""
        self._last_activity = now
        if self.state is State.STA6:
            # Table 9-10, Sta6 x Evt9 = DT-1 (checked at import, above): send
            # the P-DATA-TF, stay in Sta6.  Inlined: the sending hot path.
            return [out.Transmit(pdu)]
        return self._handle(Event.EVT9, pdu, now)

    def can_send_pdata(self) -> bool:
        """Whether a P-DATA request is allowed now (Sta6, or Sta8 before our release response)."""
        state = self.state
        return state is State.STA6 or state is State.STA8

    def release(self, now: float) -> list[out.Output]:
        """A-RELEASE request (Evt11)."""
        return self._handle(Event.EVT11, None, now)

    def release_response(self, now: float) -> list[out.Output]:
        """A-RELEASE response (Evt14)."""
        return self._handle(Event.EVT14, None, now)

    def invalid_pdu(self, error: RemoteProtocolError, now: float) -> list[out.Output]:
        """The local user found a PDU this core handed on invalid: an
        A-ASSOCIATE-AC that does not answer our request (PS3.8 7.1.1.14),
        PDVs that break the message sequence (PS3.8 Annex E).  That is Evt19,
        as for a PDU the decoder refused: in Sta6, AA-8 -- an A-ABORT with the
        service-provider source and ``error``'s reason, not the service-user's
        A-ABORT of :meth:`abort`."""
        return self._handle(Event.EVT19, error, now)

    def abort(self, now: float, reason: str = "aborted by the local user") -> list[out.Output]:
        """A-ABORT request (Evt15).  Allowed in any state: where the table has no
        cell for it (no association yet, or already ending) nothing happens."""
        if (self.state, Event.EVT15) not in TRANSITIONS:
            return []
        return self._handle(Event.EVT15, reason, now)

    # -- the transport ---------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[out.Output]:
        """Bytes arrived from the peer: frame and handle every complete PDU.

        Any split is fine: one PDU over many calls, many PDUs in one call.
        After an invalid PDU the rest of the stream is discarded (framing is
        lost) and the table's abort action runs (Evt19).

        Copies: the PDUs wholly inside ``data`` are decoded in place, their
        PDV data handed on as read-only views of ``data`` (no copy: a data
        set fragment reaches its sink as a memoryview); only a PDU cut by the
        end of a chunk is gathered in a buffer, and only its own bytes (never
        the rest of the chunk) are appended to it, copied out once decoded.
        """
        if self._discarding or self.state is State.STA1:
            return []
        self._last_activity = now
        if type(data) is not bytes:
            data = bytes(data)
        results: list[out.Output] = []
        buffer = self._buffer
        pos = 0
        end = len(data)
        pdvs: list[PresentationDataValue] = []
        invalid: RemoteProtocolError | None = None
        try:
            if buffer:
                pos = self._complete_buffered(data, now, results)
            maximum = self.maximum_length
            view = memoryview(data)  # data is bytes: immutable, safe to hand out views of
            while pos < end and not self._discarding and self.state is not State.STA1:
                if self.state is State.STA6:
                    # Table 9-10, Sta6 x Evt10 = DT-2 (checked at import, above): P-DATA
                    # indication, stay in Sta6.  The PDV items of consecutive P-DATA-TF PDUs of one read
                    # go up in one indication, in their order: a data set streaming
                    # in is some sixty PDUs a read.
                    after = extend_pdata(view, pos, maximum, pdvs)
                    if after >= 0:
                        pos = after
                        continue
                    if pdvs:
                        results.append(_pdata_indication(pdvs))
                        pdvs = []
                decoded = decode_from(view, pos, maximum)
                if decoded is None:
                    break
                pdu, pos = decoded
                self._pdu_received(pdu, now, results)
        except RemoteProtocolError as exc:
            invalid = exc
        if pdvs:  # before an invalid PDU, the valid ones it followed, as they came
            results.append(_pdata_indication(pdvs))
        if invalid is not None:
            self._discarding = True
            buffer.clear()
            results += self._handle(Event.EVT19, invalid, now)
            return results
        if self._discarding or self.state is State.STA1:  # transport being closed: ignore the rest
            buffer.clear()
        elif pos < end:
            with memoryview(data) as view:
                buffer += view[pos:]
        return results

    def _complete_buffered(self, data: bytes, now: float, results: list[out.Output]) -> int:
        """Finish the PDU begun in an earlier chunk with the front of ``data``.

        Takes from ``data`` only what that PDU still lacks: first its 6-byte
        header, whose length is checked (by the decoder) before any of the
        body is waited for, then the rest of its body.  Returns how much of
        ``data`` was used; the buffer is empty again unless ``data`` ran out.
        """
        buffer = self._buffer
        pos = 0
        end = len(data)
        with memoryview(data) as view:
            if len(buffer) < _HEADER_SIZE:
                take = min(_HEADER_SIZE - len(buffer), end)
                buffer += view[:take]
                pos = take
                if len(buffer) < _HEADER_SIZE:
                    return pos
            decoded = decode(buffer, self.maximum_length)  # checks the header; None: body incomplete
            if decoded is None:
                total = _HEADER_SIZE + int.from_bytes(buffer[2:_HEADER_SIZE], "big")
                take = min(total - len(buffer), end - pos)
                buffer += view[pos : pos + take]
                pos += take
                if len(buffer) < total:
                    return pos
                decoded = decode(buffer, self.maximum_length)
                if decoded is None:  # cannot happen: the buffer holds the whole PDU
                    raise RemoteProtocolError("PDU framing lost", abort_source=2, abort_reason=6)
        buffer.clear()
        self._pdu_received(decoded[0], now, results)
        return pos

    def _pdu_received(self, pdu: object, now: float, results: list[out.Output]) -> None:
        """Run the event a received PDU is, adding its outputs to ``results``."""
        results += self._handle(_EVENT_FOR_PDU[type(pdu)], pdu, now)

    def transport_closed(self, now: float, why: str = "transport connection closed by the peer") -> list[out.Output]:
        """Transport connection closed indication (Evt17); ``why`` says how, when the transport knows
        (a failed TLS handshake)."""
        self._buffer.clear()
        return self._handle(Event.EVT17, why, now)

    # -- timers --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        deadline = self._artim
        acse = self._acse
        if acse is not None and (deadline is None or acse < deadline):
            deadline = acse
        if self.state is State.STA6:
            idle = self.timeouts.idle
            if idle is not None:
                idle += self._last_activity
                if deadline is None or idle < deadline:
                    deadline = idle
        return deadline

    def handle_timer(self, now: float, *, busy: bool = False) -> list[out.Output]:
        """Run whatever timer has expired by ``now`` (nothing if none has).

        ``busy``: the user has work in progress on the association (a request
        whose answer it awaits, one it is performing), so the association is
        not idle however quiet the wire: the idle deadline moves on from ``now``.
        """
        if self._artim is not None and now >= self._artim:
            self._artim = None
            return self._handle(Event.EVT18, "ARTIM timer expired", now)
        if self._acse is not None and now >= self._acse:
            waiting = "A-ASSOCIATE-AC/RJ" if self.state == State.STA5 else "A-RELEASE-RP"
            return self._timeout_abort(now, f"no {waiting} from the peer within {self.timeouts.acse:g} s")
        idle = self._idle_deadline()
        if idle is not None and now >= idle:
            if busy:
                self._last_activity = now
                return []
            return self._timeout_abort(now, f"association idle for {self.timeouts.idle:g} s")
        return []

    # -- internals -----------------------------------------------------------

    def _idle_deadline(self) -> float | None:
        if self.state != State.STA6 or self.timeouts.idle is None:
            return None
        return self._last_activity + self.timeouts.idle

    def _timeout_abort(self, now: float, why: str) -> list[out.Output]:
        results = self._handle(Event.EVT15, why, now)
        return [*results, out.ProviderAbortIndication(why)]

    def _check(self, event: Event) -> None:
        if (self.state, event) not in TRANSITIONS:
            raise LocalProtocolError(
                f"{EVENT_DESCRIPTIONS[event]} is not allowed in {self.state.name} "
                f"({STATE_DESCRIPTIONS[self.state]})"
            )

    def _handle(self, event: Event, payload: object, now: float) -> list[out.Output]:
        """Look the cell up, run its action, apply timer changes, return outputs."""
        previous = self.state
        action = CELLS[previous][event]  # TRANSITIONS[(state, event)], as its function
        if action is None:
            if event in USER_EVENTS:
                self._check(event)
            # A blank cell for a non-user event: a late timer, a close after we
            # closed, a PDU while the transport is not open.  Nothing to do.
            return []
        # ActionContext(event, self.is_requestor, payload), without the named
        # tuple's Python-level __new__ (one is made for every event)
        state, outputs = action(_make_tuple(ActionContext, (event, self.is_requestor, payload)))
        self.state = state
        results: list[out.Output] = []
        for item in outputs:
            kind = type(item)
            if kind is StartARTIM:
                self._artim = now + self.timeouts.artim
            elif kind is StopARTIM:
                self._artim = None
            else:
                results.append(item)  # type: ignore[arg-type]
        if state is not previous:
            if state in _ACSE_WAIT and self.timeouts.acse is not None:
                if previous not in _ACSE_WAIT:
                    self._acse = now + self.timeouts.acse
            else:
                self._acse = None
            if state is State.STA6:
                self._last_activity = now
        return results
