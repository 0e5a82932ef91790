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


# ---------------------------------------------------------------------------
# AssociationPair: two ApplicationEntity objects joined in memory
# ---------------------------------------------------------------------------
#
# Everything Twisted is imported inside the functions below, so that importing
# this module for UpperLayerPair alone does not import Twisted.

#: Where the acceptor of an :class:`AssociationPair` pretends to listen.
_PAIR_HOST = "127.0.0.1"


class MemoryConnection:
    """One in-memory transport connection of an :class:`AssociationPair`.

    Each side writes into a ``StringTransport``; :meth:`pump` carries the
    bytes over.  When either side calls ``loseConnection()`` the bytes it
    wrote before are still delivered, then both protocols get
    ``connectionLost`` (a side that asked to close reads nothing more, as a
    real socket would).

    :ivar requestor_protocol: the requestor's :class:`~dimsekit.protocol.DicomProtocol`.
    :ivar acceptor_protocol: the acceptor's.
    :ivar requestor_transport: the requestor's ``StringTransport`` (what it wrote, not yet
        pumped; ``pauses`` counts the times it paused the producer).
    :ivar acceptor_transport: the acceptor's.
    :ivar closed: both sides have had ``connectionLost``.
    """

    def __init__(
        self,
        requestor_protocol: Any,
        acceptor_protocol: Any,
        client_port: int,
        server_port: int,
        write_buffer: int | None = None,
    ) -> None:
        from twisted.internet.address import IPv4Address

        client = IPv4Address("TCP", _PAIR_HOST, client_port)
        server = IPv4Address("TCP", _PAIR_HOST, server_port)
        transport = _memory_transport_class()
        self.requestor_protocol = requestor_protocol
        self.acceptor_protocol = acceptor_protocol
        self.requestor_transport = transport(hostAddress=client, peerAddress=server)
        self.acceptor_transport = transport(hostAddress=server, peerAddress=client)
        self.requestor_transport.write_buffer = self.acceptor_transport.write_buffer = write_buffer
        self.closed = False

    @property
    def requestor_association(self) -> Any:
        """The requestor's :class:`~dimsekit.association.Association`."""
        return self.requestor_protocol.user

    @property
    def acceptor_association(self) -> Any:
        """The acceptor's :class:`~dimsekit.association.Association`."""
        return self.acceptor_protocol.user

    def open(self) -> None:
        """Connect both protocols: the acceptor first (it starts ARTIM, Evt5),
        then the requestor (Evt2: it writes its A-ASSOCIATE-RQ)."""
        self.acceptor_protocol.makeConnection(self.acceptor_transport)
        self.requestor_protocol.makeConnection(self.requestor_transport)

    def pump(self) -> bool:
        """Move what each side wrote to the other once, and close the connection
        if a side asked to; True if anything happened."""
        if self.closed:
            self.requestor_transport.clear()
            self.acceptor_transport.clear()
            return False
        moved = False
        ends = (
            (self.requestor_transport, self.acceptor_transport, self.acceptor_protocol),
            (self.acceptor_transport, self.requestor_transport, self.requestor_protocol),
        )
        for source, sink, receiver in ends:
            producer = source.producer
            if producer is not None and not source.streaming:
                before = source.io.tell()
                producer.resumeProducing()  # a pull producer: the buffer is empty, ask for more
                moved = moved or source.io.tell() > before
            data = source.value()
            if not data:
                continue
            source.clear()
            moved = True
            if not sink.disconnecting and not self.closed:
                receiver.dataReceived(data)
            source.drained()
        if (
            not moved
            and not self.closed
            and (self.requestor_transport.disconnecting or self.acceptor_transport.disconnecting)
        ):
            self.lose()
            moved = True
        return moved

    def lose(self, reason: Any = None) -> None:
        """End the connection now, unsent bytes dropped: both sides get
        ``connectionLost(reason)`` (default: a clean close)."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        if self.closed:
            return
        self.closed = True
        failure = reason if reason is not None else Failure(ConnectionDone("closed in memory"))
        if not isinstance(failure, Failure):
            failure = Failure(failure)
        self.requestor_transport.clear()
        self.acceptor_transport.clear()
        self.requestor_transport.disconnecting = self.acceptor_transport.disconnecting = True
        self.requestor_protocol.connectionLost(failure)
        self.acceptor_protocol.connectionLost(failure)


_transport_class: type | None = None


def _memory_transport_class() -> type:
    """A StringTransport with an optional write buffer limit (made once, lazily)."""
    global _transport_class
    if _transport_class is None:
        from twisted.internet.testing import StringTransport

        class MemoryTransport(StringTransport):
            """Pauses a streaming producer when more than ``write_buffer`` bytes
            wait to be pumped, and resumes it once they were, as a TCP
            transport does with its send buffer."""

            write_buffer: int | None = None
            producer_paused = False
            pauses = 0

            def write(self, data: bytes) -> None:
                super().write(data)
                limit = self.write_buffer
                if (
                    limit is not None
                    and self.streaming
                    and self.producer is not None
                    and not self.producer_paused
                    and self.io.tell() > limit
                ):
                    self.producer_paused = True
                    self.pauses += 1
                    self.producer.pauseProducing()

            def drained(self) -> None:
                if self.producer_paused and self.producer is not None:
                    self.producer_paused = False
                    self.producer.resumeProducing()

        _transport_class = MemoryTransport
    return _transport_class


class _MemoryClientEndpoint:
    """An ``IStreamClientEndpoint`` that connects to the pair's acceptor in memory."""

    def __init__(self, pair: AssociationPair) -> None:
        self._pair = pair

    def connect(self, factory: Any) -> Any:
        from twisted.internet import defer
        from twisted.internet.address import IPv4Address

        pair = self._pair
        client_port = 40000 + len(pair.connections)
        server_port = pair.acceptor.config.node.port
        requestor_protocol = factory.buildProtocol(IPv4Address("TCP", _PAIR_HOST, server_port))
        acceptor_protocol = pair.acceptor.server_factory().buildProtocol(
            IPv4Address("TCP", _PAIR_HOST, client_port)
        )
        connection = MemoryConnection(
            requestor_protocol, acceptor_protocol, client_port, server_port, pair.write_buffer
        )
        pair.connections.append(connection)
        connection.open()
        return defer.succeed(requestor_protocol)


class AssociationPair:
    """Two :class:`~dimsekit.ae.ApplicationEntity` objects, an acceptor and a
    requestor, whose protocols are joined in memory on a fake clock.

    The whole stack runs -- negotiation, the plugins' accept and
    authenticate hooks, DIMSE dispatch to the acceptor's handlers, the
    association end hooks, timeouts -- but bytes move only when :meth:`pump`
    is called (most methods pump for you) and time only when :meth:`advance`
    says so.  No socket, no thread, no real reactor, no sleeping::

        from dimsekit import hookimpl, make_plugin_manager, ServiceClass
        from dimsekit.testing import AssociationPair

        class EchoPlugin:
            @hookimpl
            def dimsekit_service_classes(self):
                return [ServiceClass(name="echo", sop_classes=("1.2.840.10008.1.1",),
                                     handlers={"C-ECHO": lambda request: 0x0000})]

        pair = AssociationPair(make_plugin_manager(load_entrypoints=False, plugins=[EchoPlugin()]))
        assoc = pair.associate(contexts=["1.2.840.10008.1.1"])   # a live Association
        assert pair.result(assoc.echo()) == 0x0000
        pair.result(assoc.release())
        assert pair.requestor_association.ended == "released"

    :param plugin_manager: the acceptor's plugins; by default every plugin of
        the ``dimsekit`` entry-point group (the built-ins included), as a node has.
    :param requestor_plugin_manager: the requestor's plugins; by default none.
    :param acceptor_config: the acceptor's :class:`~dimsekit.config.Config`
        (limits, access list, ``check_called_ae``, plugin sections).
    :param requestor_config: the requestor's (its limits: DIMSE timeout, ...).
    :param acceptor_ae_title: default ``"ACCEPTOR"``.
    :param requestor_ae_title: default ``"REQUESTOR"``.
    :param reactor: what both sides use for time; a fresh
        ``twisted.internet.testing.MemoryReactorClock`` by default.
    :param write_buffer: bytes a side may write before its transport pauses a
        streaming producer (the association's send queue), as a full TCP send
        buffer does; :meth:`pump` resumes it once the bytes moved.  None (the
        default): never pause.

    :ivar acceptor: the acceptor's ApplicationEntity.
    :ivar requestor: the requestor's ApplicationEntity.
    :ivar reactor: the fake reactor (also the clock).
    :ivar connections: every :class:`MemoryConnection` made, oldest first.
    :ivar endpoint: an ``IStreamClientEndpoint`` reaching the acceptor, for
        calling ``pair.requestor.associate(endpoint=pair.endpoint, ...)`` yourself.
    """

    #: Upper bound on pump rounds, so that two peers talking forever fail the
    #: test instead of hanging it.
    max_rounds = 100_000

    def __init__(
        self,
        plugin_manager: Any = None,
        *,
        requestor_plugin_manager: Any = None,
        acceptor_config: Any = None,
        requestor_config: Any = None,
        acceptor_ae_title: str = "ACCEPTOR",
        requestor_ae_title: str = "REQUESTOR",
        reactor: Any = None,
        write_buffer: int | None = None,
    ) -> None:
        from twisted.internet.interfaces import IStreamClientEndpoint
        from twisted.internet.testing import MemoryReactorClock
        from zope.interface import directlyProvides

        from dimsekit.ae import ApplicationEntity
        from dimsekit.plugin import make_plugin_manager

        self.reactor = reactor if reactor is not None else MemoryReactorClock()
        if requestor_plugin_manager is None:
            requestor_plugin_manager = make_plugin_manager(load_entrypoints=False)
        self.acceptor = ApplicationEntity(
            acceptor_ae_title,
            config=acceptor_config,
            plugin_manager=plugin_manager,
            reactor=self.reactor,
        )
        self.requestor = ApplicationEntity(
            requestor_ae_title,
            config=requestor_config,
            plugin_manager=requestor_plugin_manager,
            reactor=self.reactor,
        )
        self.write_buffer = write_buffer
        self.connections: list[MemoryConnection] = []
        self.endpoint = _MemoryClientEndpoint(self)
        directlyProvides(self.endpoint, IStreamClientEndpoint)

    # -- making associations --------------------------------------------------

    def connect(
        self,
        contexts: Iterable[Any] = (_VERIFICATION,),
        *,
        called: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Request an association and pump; return the Deferred of
        :meth:`ApplicationEntity.associate <dimsekit.ae.ApplicationEntity.associate>`
        (already fired unless a hook of the acceptor is still deciding).

        :param contexts: as for ``associate``; Verification by default.
        :param called: the Called AE Title; the acceptor's title by default.
        :param kwargs: more ``associate`` arguments (``maximum_length``,
            ``roles``, ``async_window``, ``user_identity``).
        """
        d = self.requestor.associate(
            called=self.acceptor.ae_title if called is None else called,
            contexts=contexts,
            endpoint=self.endpoint,
            **kwargs,
        )
        self.pump()
        return d

    def associate(
        self,
        contexts: Iterable[Any] = (_VERIFICATION,),
        *,
        called: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Request an association and return the live requestor
        :class:`~dimsekit.association.Association`.

        Same arguments as :meth:`connect`.

        :raises AssociationRejected: the acceptor rejected it (as would any
            other failure of the Deferred, e.g. AssociationAborted).
        :raises AssertionError: no answer came (an asynchronous hook of the
            acceptor is waiting: use :meth:`connect` and :meth:`advance`).
        """
        return self.result(self.connect(contexts, called=called, **kwargs))

    # -- moving bytes and time -------------------------------------------------

    def pump(self) -> None:
        """Deliver everything written, both ways, on every connection, until
        nothing moves (replies to replies included); close connections that a
        side asked to close."""
        for _ in range(self.max_rounds):
            moved = False
            for connection in self.connections:
                moved = connection.pump() or moved
            if not moved:
                return
        raise AssertionError(f"the peers were still talking after {self.max_rounds} pump rounds")

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the fake clock, firing each timer at its time
        and pumping after each, so timeouts happen in the order they would."""
        clock = self.reactor
        target = clock.seconds() + seconds
        self.pump()
        while True:
            due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() <= target]
            if not due:
                break
            clock.advance(max(0.0, min(due) - clock.seconds()))
            self.pump()
        clock.advance(max(0.0, target - clock.seconds()))
        self.pump()

    def result(self, awaitable: Any) -> Any:
        """Pump, then return what a Deferred (or coroutine) fired with, or raise
        the exception it failed with.  The Deferred's result is consumed.

        :raises AssertionError: it has not fired (it waits for time to pass:
            :meth:`advance` first).
        """
        import inspect

        from twisted.internet.defer import Deferred
        from twisted.python.failure import Failure

        d = Deferred.fromCoroutine(awaitable) if inspect.iscoroutine(awaitable) else awaitable
        self.pump()
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        if not outcome:
            raise AssertionError(f"{d!r} has not fired (does it wait for the clock? advance() it)")
        value = outcome[0]
        if isinstance(value, Failure):
            value.raiseException()
        return value

    def disconnect(self, reason: Any = None) -> None:
        """Drop the newest connection as a network failure would: unsent bytes
        are lost and both sides get ``connectionLost`` (default reason:
        ``twisted.internet.error.ConnectionLost``)."""
        from twisted.internet.error import ConnectionLost

        self._newest().lose(reason if reason is not None else ConnectionLost("dropped in memory"))

    # -- what happened -----------------------------------------------------------

    @property
    def requestor_association(self) -> Any:
        """The requestor's Association on the newest connection."""
        return self._newest().requestor_association

    @property
    def acceptor_association(self) -> Any:
        """The acceptor's Association on the newest connection."""
        return self._newest().acceptor_association

    def _newest(self) -> MemoryConnection:
        if not self.connections:
            raise AssertionError("no connection yet: call associate() or connect() first")
        return self.connections[-1]


__all__ += ["AssociationPair", "MemoryConnection"]
