"""dimsekit's public test kit: protocol peers joined in memory, with a fake clock.

Plugin authors and application writers use these to test code that sits on
top of dimsekit without sockets, threads or a reactor, and without sleeping.

:class:`UpperLayerPair`
    Two sans-I/O upper layers (:class:`~dimsekit.ul.connection.UpperLayer`),
    an association-requestor and an association-acceptor, joined by an
    in-memory transport.  You issue PS3.8 primitives on either side, then
    decide when (and in how many pieces) the bytes each side wrote reach the
    other; every indication each side received is recorded.  Holding bytes
    back is how a release collision or an abort crossing a PDU in flight is
    provoked.  Time only moves when :meth:`UpperLayerPair.advance` says so.

A typical test::

    from dimsekit.testing import ACCEPTOR, REQUESTOR, UpperLayerPair

    pair = UpperLayerPair()
    rq, ac = pair.establish()                     # A-ASSOCIATE, both in Sta6
    assert pair.take(ACCEPTOR) == [AssociateIndication(rq)]
    pair.send_pdata(REQUESTOR, pdu.encode())      # pdu: a PDataTF; queued, not delivered
    pair.pump()                                   # deliver everything, both ways
    assert pair.take(ACCEPTOR) == [PDataIndication(pdu)]
    pair.release_association()                    # A-RELEASE, both back in Sta1

(``AssociationPair`` -- two Twisted protocols and associations pumped
together -- will live here too.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dimsekit.ul import outputs as out
from dimsekit.ul.connection import DEFAULT_MAXIMUM_LENGTH, Timeouts, UpperLayer
from dimsekit.ul.fsm import State
from dimsekit.ul.items import (
    MaximumLength,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
)
from dimsekit.ul.pdu import AssociateAC, AssociateRJ, AssociateRQ

__all__ = [
    "REQUESTOR",
    "ACCEPTOR",
    "UpperLayerPair",
    "verification_rq",
    "accept_all",
]

#: Side names used by :class:`UpperLayerPair`.
REQUESTOR = "requestor"
ACCEPTOR = "acceptor"
_SIDES = (REQUESTOR, ACCEPTOR)

#: Verification SOP Class and Implicit VR Little Endian (PS3.4 A.4, PS3.5 A.1).
_VERIFICATION = "1.2.840.10008.1.1"
_IMPLICIT_VR_LE = "1.2.840.10008.1.2"

# Internal events that are not outputs of the core.
_TRANSPORT_OUTPUTS = (out.Transmit, out.CloseTransport, out.OpenTransport)


def verification_rq(
    called: str = "ACCEPTOR", calling: str = "REQUESTOR", *, maximum_length: int = 16384
) -> AssociateRQ:
    """A minimal A-ASSOCIATE-RQ: one presentation context (ID 1) proposing the
    Verification SOP Class over Implicit VR Little Endian."""
    return AssociateRQ(
        called_ae_title=called,
        calling_ae_title=calling,
        presentation_contexts=(
            PresentationContextRQ(
                context_id=1, abstract_syntax=_VERIFICATION, transfer_syntaxes=(_IMPLICIT_VR_LE,)
            ),
        ),
        user_information=UserInformation(items=(MaximumLength(maximum_length=maximum_length),)),
    )


def accept_all(rq: AssociateRQ, *, maximum_length: int = 16384) -> AssociateAC:
    """An A-ASSOCIATE-AC accepting every presentation context of ``rq`` with
    its first proposed transfer syntax (PS3.8 Table 9-18, result 0)."""
    return AssociateAC(
        called_ae_title=rq.called_ae_title,
        calling_ae_title=rq.calling_ae_title,
        presentation_contexts=tuple(
            PresentationContextAC(
                context_id=pc.context_id, result=0, transfer_syntax=pc.transfer_syntaxes[0]
            )
            for pc in rq.presentation_contexts
        ),
        user_information=UserInformation(items=(MaximumLength(maximum_length=maximum_length),)),
    )


class UpperLayerPair:
    """An association-requestor and an association-acceptor joined in memory.

    Each side is a real :class:`~dimsekit.ul.connection.UpperLayer`
    (``pair.requestor``, ``pair.acceptor``; ``pair.side(name)``).  The pair
    plays the transport and the clock around them:

    * **Primitives** (:meth:`call` and the named shortcuts :meth:`accept`,
      :meth:`send_pdata`, :meth:`release`, ...) run on one side at the pair's
      time ``now``.  The bytes that side transmits are queued, *not*
      delivered; :class:`~dimsekit.errors.LocalProtocolError` from a
      primitive the state does not allow propagates unchanged.
    * **Delivery** (:meth:`deliver`, :meth:`pump`) hands queued bytes to the
      other side, whole or split at chosen offsets.  A side that closed the
      transport (a ``CloseTransport`` output) still has its queued bytes
      delivered, like TCP flushing before FIN; then its peer gets the
      transport-closed indication (Evt17).  Bytes sent *to* a side that has
      closed are discarded, as a reset connection would.
    * **Time** (:meth:`advance`, :meth:`settle`) moves the fake clock and
      runs whichever side's timers fall due (ARTIM, ACSE and idle timeouts).

    Everything either side's core reported that is not a transport action --
    indications and confirmations -- is recorded in ``indications[side]``, in
    order; :meth:`take` pops them.

    The convenience scenarios :meth:`establish` and :meth:`release_association`
    pump for you.

    :param timeouts: used for both sides unless a side is given.
    :param maximum_length: both sides' Maximum Length Received.
    :param requestor: an :class:`UpperLayer` to use as the requestor (Sta1).
    :param acceptor: an :class:`UpperLayer` to use as the acceptor (Sta1).
    :param start: the clock's initial value, in seconds.
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts | None = None,
        maximum_length: int = DEFAULT_MAXIMUM_LENGTH,
        requestor: UpperLayer | None = None,
        acceptor: UpperLayer | None = None,
        start: float = 0.0,
    ) -> None:
        self.requestor = requestor or UpperLayer(maximum_length=maximum_length, timeouts=timeouts)
        self.acceptor = acceptor or UpperLayer(maximum_length=maximum_length, timeouts=timeouts)
        #: The fake clock, in seconds.
        self.now = start
        #: Indications and confirmations each side's core reported, in order.
        self.indications: dict[str, list[out.Output]] = {side: [] for side in _SIDES}
        #: Every Transmit each side made, in order (the wire log).
        self.transmitted: dict[str, list[bytes]] = {side: [] for side in _SIDES}
        #: Bytes each side wrote that the other side has not been given yet.
        self.in_flight: dict[str, bytearray] = {side: bytearray() for side in _SIDES}
        self._connected = False
        self._closed_by: set[str] = set()  # sides that issued CloseTransport
        self._told_closed: set[str] = set()  # sides given the transport-closed indication
        self._indicated_rq: AssociateRQ | None = None  # the last A-ASSOCIATE indication's RQ

    # -- sides ---------------------------------------------------------------

    def side(self, name: str) -> UpperLayer:
        """The :class:`UpperLayer` of ``name`` (:data:`REQUESTOR` or :data:`ACCEPTOR`)."""
        if name == REQUESTOR:
            return self.requestor
        if name == ACCEPTOR:
            return self.acceptor
        raise ValueError(f"side must be {REQUESTOR!r} or {ACCEPTOR!r}, not {name!r}")

    @staticmethod
    def peer_of(name: str) -> str:
        """The other side's name."""
        return ACCEPTOR if name == REQUESTOR else REQUESTOR

    @property
    def states(self) -> tuple[State, State]:
        """``(requestor state, acceptor state)``."""
        return self.requestor.state, self.acceptor.state

    @property
    def transport_open(self) -> bool:
        """Whether the in-memory transport connection is up (connected, not closed)."""
        return self._connected and not self._closed_by and not self._told_closed

    @property
    def transport_closed(self) -> bool:
        """Whether the connection existed and has now closed at both ends: each
        side either closed it or was told it closed."""
        return self._connected and all(self.closed(s) for s in _SIDES)

    def closed(self, side: str) -> bool:
        """Whether ``side``'s end of the transport is closed: it closed the
        connection, or it was told the connection closed (Evt17)."""
        return side in self._closed_by or side in self._told_closed

    def take(self, side: str) -> list[out.Output]:
        """Pop and return the indications ``side`` received since the last take."""
        taken = self.indications[side]
        self.indications[side] = []
        return taken

    # -- the transport -------------------------------------------------------

    def connect(self, rq: AssociateRQ | None = None) -> AssociateRQ:
        """A-ASSOCIATE request on the requestor, and the transport connection it
        opens: Evt1 (Sta1 -> Sta4), Evt5 on the acceptor (Sta1 -> Sta2), Evt2 on
        the requestor (Sta4 -> Sta5).  The A-ASSOCIATE-RQ is left in flight.

        :returns: the A-ASSOCIATE-RQ (``rq`` or :func:`verification_rq`).
        """
        rq = rq if rq is not None else verification_rq()
        outputs = self.call(REQUESTOR, "request_association", rq)
        if not any(isinstance(o, out.OpenTransport) for o in outputs):
            raise AssertionError(f"A-ASSOCIATE request did not open a transport: {outputs!r}")
        self._connected = True
        self._process(ACCEPTOR, self.acceptor.transport_accepted(self.now))
        self._process(REQUESTOR, self.requestor.transport_connected(self.now))
        return rq

    def deliver(
        self,
        side: str,
        *,
        size: int | None = None,
        splits: Iterable[int] = (),
        chunk_size: int | None = None,
    ) -> list[out.Output]:
        """Give the bytes ``side`` wrote to its peer (``receive_data``).

        :param size: deliver only the first ``size`` bytes in flight (the rest
            stays queued); default all of them.
        :param splits: offsets (within the delivered bytes) at which to cut
            them into separate ``receive_data`` calls.
        :param chunk_size: cut them into pieces of this many bytes instead.
        :returns: the outputs of the peer's core, in order.

        When everything ``side`` wrote has been delivered and ``side`` has
        closed the transport, the peer then gets the transport-closed
        indication (Evt17); its outputs are included.
        """
        peer = self.peer_of(side)
        queue = self.in_flight[side]
        count = len(queue) if size is None else min(size, len(queue))
        data = bytes(queue[:count])
        del queue[:count]
        results: list[out.Output] = []
        if data and peer not in self._closed_by:
            core = self.side(peer)
            for chunk in _cut(data, splits, chunk_size):
                results += self._process(peer, core.receive_data(chunk, self.now))
                if peer in self._closed_by:
                    break  # its socket is closed: the rest goes nowhere
        if not queue and side in self._closed_by:
            results += self._tell_closed(peer)
        return results

    def pump(self, *, max_rounds: int = 1000) -> None:
        """Deliver everything in flight, both ways, until nothing is left
        (replies included), the requestor's bytes first in each round."""
        for _ in range(max_rounds):
            if not self._has_work():
                return
            for side in _SIDES:
                self.deliver(side)
        raise AssertionError(f"pump: still exchanging PDUs after {max_rounds} rounds")

    def drop_connection(self) -> None:
        """The network fails: bytes in flight are lost and both sides get the
        transport-closed indication (Evt17) at once."""
        for side in _SIDES:
            self.in_flight[side].clear()
        for side in _SIDES:
            if side not in self._closed_by:
                self._tell_closed(side)

    # -- time ----------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earlier of the two sides' next deadlines, or None."""
        deadlines = [
            d
            for d in (self.requestor.next_deadline(), self.acceptor.next_deadline())
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def advance(self, seconds: float, *, pump: bool = True) -> None:
        """Move the clock ``seconds`` forward, running every timer that falls
        due on the way, in order, each at its own deadline (the requestor's
        first when both fall due at the same time).

        :param pump: deliver what the timers made the sides send (and anything
            else in flight) after each one; ``False`` leaves it in flight.
        """
        if seconds < 0:
            raise ValueError("time does not run backwards")
        target = self.now + seconds
        for _ in range(10000):
            due = [
                (deadline, side)
                for side in _SIDES
                if (deadline := self.side(side).next_deadline()) is not None and deadline <= target
            ]
            if not due:
                break
            deadline, side = min(due, key=lambda d: (d[0], _SIDES.index(d[1])))
            self.now = max(self.now, deadline)
            core = self.side(side)
            self._process(side, core.handle_timer(self.now))
            if (after := core.next_deadline()) is not None and after <= self.now:
                raise AssertionError(
                    f"{side}: timer due at {after} still pending after handle_timer({self.now})"
                )
            if pump:
                self.pump()
        else:
            raise AssertionError("advance: timers keep firing")
        self.now = target

    def settle(self, *, limit: float = 3600.0) -> None:
        """Deliver everything and let time pass until neither side has anything
        left to do: both idle (Sta1), or no deadline is pending on either.

        Waits at most ``limit`` seconds of fake time.  Useful at the end of a
        test to check that an exchange ends by itself.
        """
        end = self.now + limit
        self.pump()
        for _ in range(10000):
            if self.states == (State.STA1, State.STA1):
                return
            deadline = self.next_deadline()
            if deadline is None or deadline > end:
                return
            self.advance(max(0.0, deadline - self.now))
        raise AssertionError("settle: timers keep firing")

    # -- primitives ----------------------------------------------------------

    def call(self, side: str, primitive: str, *args: Any, **kwargs: Any) -> list[out.Output]:
        """Run ``primitive`` (an :class:`UpperLayer` method name: ``accept``,
        ``reject``, ``send_pdata``, ``release``, ``release_response``,
        ``abort``, ...) on ``side`` with ``*args`` and the pair's ``now``.

        :returns: that side's outputs (its transmissions are queued, not delivered).
        :raises LocalProtocolError: the primitive is not allowed in the side's state.
        """
        method = getattr(self.side(side), primitive)
        return self._process(side, method(*args, self.now, **kwargs))

    def accept(self, ac: AssociateAC | None = None) -> list[out.Output]:
        """A-ASSOCIATE response (accept) on the acceptor; by default
        :func:`accept_all` of the A-ASSOCIATE-RQ it was indicated."""
        if ac is None:
            ac = accept_all(self._require_indicated_rq())
        return self.call(ACCEPTOR, "accept", ac)

    def reject(self, rj: AssociateRJ) -> list[out.Output]:
        """A-ASSOCIATE response (reject) on the acceptor, with an ``AssociateRJ``."""
        return self.call(ACCEPTOR, "reject", rj)

    def send_pdata(self, side: str, pdata: bytes) -> list[out.Output]:
        """P-DATA request on ``side``: ``pdata`` is one or more encoded P-DATA-TF PDUs."""
        return self.call(side, "send_pdata", pdata)

    def release(self, side: str = REQUESTOR) -> list[out.Output]:
        """A-RELEASE request on ``side`` (not pumped)."""
        return self.call(side, "release")

    def release_response(self, side: str) -> list[out.Output]:
        """A-RELEASE response on ``side`` (not pumped)."""
        return self.call(side, "release_response")

    def abort(self, side: str, reason: str = "aborted by the local user") -> list[out.Output]:
        """A-ABORT request on ``side`` (not pumped)."""
        return self.call(side, "abort", reason=reason)

    # -- scenarios -----------------------------------------------------------

    def establish(
        self, rq: AssociateRQ | None = None, ac: AssociateAC | None = None
    ) -> tuple[AssociateRQ, AssociateAC]:
        """Connect, deliver the A-ASSOCIATE-RQ, accept it and deliver the AC.

        :returns: the RQ and AC exchanged.
        :raises AssertionError: the association did not reach Sta6 on both sides.
        """
        rq = self.connect(rq)
        self.pump()
        if ac is None:
            ac = accept_all(self._require_indicated_rq())
        self.accept(ac)
        self.pump()
        if self.states != (State.STA6, State.STA6):
            raise AssertionError(f"association not established: states {self._state_names()}")
        return rq, ac

    def release_association(self, side: str = REQUESTOR) -> None:
        """Release the association from ``side``: A-RELEASE request, the peer
        answers its A-RELEASE indication, everything delivered, the transport
        closed.

        :raises AssertionError: both sides did not end in Sta1.
        """
        self.release(side)
        self.pump()
        peer = self.peer_of(side)
        if self.side(peer).state == State.STA8:
            self.release_response(peer)
        self.pump()
        if self.states != (State.STA1, State.STA1):
            raise AssertionError(f"release did not complete: states {self._state_names()}")

    # -- internals -----------------------------------------------------------

    def _process(self, side: str, outputs: list[out.Output]) -> list[out.Output]:
        for item in outputs:
            if isinstance(item, out.Transmit):
                if side in self._closed_by or side in self._told_closed:
                    raise AssertionError(f"{side} transmitted on a closed transport: {item!r}")
                self.in_flight[side] += item.data
                self.transmitted[side].append(item.data)
            elif isinstance(item, out.CloseTransport):
                self._closed_by.add(side)
            elif not isinstance(item, _TRANSPORT_OUTPUTS):
                if isinstance(item, out.AssociateIndication):
                    self._indicated_rq = item.rq
                self.indications[side].append(item)
        return outputs

    def _tell_closed(self, side: str) -> list[out.Output]:
        if side in self._told_closed or side in self._closed_by:
            return []
        self._told_closed.add(side)
        self.in_flight[side].clear()  # what it still had to say goes nowhere now
        return self._process(side, self.side(side).transport_closed(self.now))

    def _has_work(self) -> bool:
        if any(self.in_flight[side] for side in _SIDES):
            return True
        # a close whose indication has not reached the peer yet
        return any(
            self.peer_of(side) not in self._told_closed
            and self.peer_of(side) not in self._closed_by
            for side in self._closed_by
        )

    def _require_indicated_rq(self) -> AssociateRQ:
        if self._indicated_rq is None:
            raise AssertionError("the acceptor has not been indicated an A-ASSOCIATE-RQ")
        return self._indicated_rq

    def _state_names(self) -> str:
        return f"requestor {self.requestor.state.name}, acceptor {self.acceptor.state.name}"


def _cut(data: bytes, splits: Iterable[int], chunk_size: int | None) -> Sequence[bytes]:
    """``data`` cut at ``splits`` (offsets), or into ``chunk_size`` pieces."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    points = sorted({p for p in splits if 0 < p < len(data)})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]
