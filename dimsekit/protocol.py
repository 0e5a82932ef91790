"""The Twisted adapter: one :class:`DicomProtocol` per transport connection.

The protocol is a translator (STYLE habit 9): bytes from the transport go into
the sans-I/O :class:`~dimsekit.ul.connection.UpperLayer`; its outputs are
carried out here (write, close) or handed to the *user* above (the
association), and the one timer the core asks for is kept as a single
``IDelayedCall`` on the injected reactor.  State never changes here.

Latency: every DICOM socket gets ``TCP_NODELAY``; on Linux ``TCP_QUICKACK`` is
re-armed after a read that we did not answer at once, because a peer that
leaves Nagle on and writes a PDU in pieces (DCMTK as shipped) otherwise
stalls ~40 ms per message against our delayed ACKs.  A read we answered in
the same turn needs no such call: the answer carries the ACK.

Small writes (commands, responses, association PDUs) go to the socket in the
reactor turn that makes them when nothing is queued before them, rather than
on the next turn (see :meth:`DicomProtocol._write_now`).

Throughput: the transport's block size (``bufferSize``: how much one read
takes, how much may wait to be written before we are paused) grows while a
data set streams in (to 1 MiB) or out (to 256 KiB) and falls back to
Twisted's 64 KiB when traffic is request/response again.  Over TLS, the
plaintext of the TLS records of one read is gathered and handed to the upper
layer once, in the next reactor turn, rather than record by record (see
:meth:`DicomProtocol.dataReceived`).
"""

from __future__ import annotations

import socket
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet import protocol, tcp
from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IReactorTime,
    ISSLTransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from dimsekit.errors import ConnectionLost
from dimsekit.tls import describe_tls_failure
from dimsekit.ul import outputs as out
from dimsekit.ul.connection import UpperLayer
from dimsekit.ul.fsm import State

__all__ = ["DicomProtocol", "UpperLayerUser", "set_low_latency"]

_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)

# A Twisted TCP transport reads in blocks of ``bufferSize`` bytes and pauses
# its producer once that much is waiting to be written; Twisted's default is
# 64 KiB.  Bulk transfers go faster with bigger blocks, request/response
# traffic does not, so the block grows while data streams and falls back when
# it stops.  Measured with benchmarks/bench_store_large.py (loopback, 16 KiB
# PDUs): reading, 1 MiB blocks beat 64 and 256 KiB; writing, 256 KiB beats
# 64 KiB and 1 MiB (Twisted joins its pending writes into one block, and
# blocks of 1 MiB and more cost fresh pages each time).
_BLOCK_MIN = 1 << 16
_BLOCK_MAX = 1 << 20
_WRITE_BLOCK = 1 << 18
#: a P-DATA write at least this long is a data set fragment of a bulk transfer
_BULK_PDU = 8192

#: indication output -> the UpperLayerUser method it goes to
_INDICATIONS: dict[type, str] = {
    out.AssociateIndication: "association_indication",
    out.AssociateAccepted: "association_accepted",
    out.AssociateRejected: "association_rejected",
    out.ProviderRejection: "association_rejected_by_provider",
    out.PDataIndication: "pdata_indication",
    out.ReleaseIndication: "release_indication",
    out.ReleaseConfirmation: "release_confirmation",
    out.AbortIndication: "abort_indication",
    out.ProviderAbortIndication: "abort_indication",
}

#: No association any more: the table has no cell for a user primitive here
#: (but Evt1 in Sta1, which is not issued through :meth:`DicomProtocol.call`).
_OVER = frozenset({State.STA1, State.STA13})


class UpperLayerUser(TypingProtocol):
    """What the protocol hands the upper layer's indications to (the association)."""

    def connection_made(self, protocol: DicomProtocol) -> None: ...
    def association_indication(self, output: out.AssociateIndication) -> None: ...
    def association_accepted(self, output: out.AssociateAccepted) -> None: ...
    def association_rejected(self, output: out.AssociateRejected) -> None: ...
    def association_rejected_by_provider(self, output: out.ProviderRejection) -> None: ...
    def pdata_indication(self, output: out.PDataIndication) -> None: ...
    def release_indication(self, output: out.ReleaseIndication) -> None: ...
    def release_confirmation(self, output: out.ReleaseConfirmation) -> None: ...
    def abort_indication(self, output: out.AbortIndication | out.ProviderAbortIndication) -> None: ...
    def connection_lost(self, reason: Failure) -> None: ...
    # Optional: ``busy() -> bool``, work in progress (the idle timeout then waits).


def set_low_latency(transport: Any, quickack: bool = True) -> socket.socket | None:
    """TCP_NODELAY (and TCP_QUICKACK where the OS has it) on the transport's socket.

    Returns the socket (None: the transport has none, or it refused)."""
    handle = _socket_of(transport)
    if handle is None:
        return None
    try:
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if quickack and _TCP_QUICKACK is not None:
            handle.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
    except OSError:
        return None
    return handle


def _can_write_now(transport: Any) -> bool:
    """Whether :meth:`DicomProtocol._write_now` may use this transport: a
    plain (not TLS) Twisted TCP connection with the write queue it reads.

    The class decides all but TLS (the queue's attributes are class-level
    defaults of Twisted's FileDescriptor), so that part is remembered per class.
    """
    kind = type(transport)
    queue = _WRITE_QUEUE_BY_CLASS.get(kind)
    if queue is None:
        queue = _WRITE_QUEUE_BY_CLASS[kind] = isinstance(transport, tcp.Connection) and all(
            hasattr(transport, name) for name in _QUEUE_ATTRIBUTES
        )
    return queue and not transport.TLS


#: transport class -> whether it has the write queue _write_now reads
_WRITE_QUEUE_BY_CLASS: dict[type, bool] = {}


#: the parts of Twisted's FileDescriptor write queue that _write_now reads
_QUEUE_ATTRIBUTES = ("_tempDataLen", "dataBuffer", "offset", "connected", "disconnecting", "_writeDisconnected")


def _peer_of(transport: Any) -> str:
    """``host:port`` of the peer, for log lines."""
    try:
        address = transport.getPeer()
        return f"{address.host}:{address.port}"
    except Exception:
        return "peer"


def _socket_of(transport: Any) -> socket.socket | None:
    get_handle = getattr(transport, "getHandle", None)
    if get_handle is None:
        return None
    handle = get_handle()
    if not hasattr(handle, "setsockopt"):  # TLS: the OpenSSL connection wraps the socket
        inner = getattr(transport, "transport", None)
        return _socket_of(inner) if inner is not None and inner is not transport else None
    return handle


#: why a TLS connection ended when it closed before its handshake was done (no TLS error
#: to name: the peer, or something between, just closed it)
TLS_CLOSED_EARLY = ("TLS handshake failed: the connection closed before the handshake was done "
                    "(does the peer speak TLS on this connection?)")


@implementer(IHandshakeListener)
class DicomProtocol(protocol.Protocol):
    """Bytes <-> the sans-I/O upper layer, for one connection (acceptor or requestor).

    :param user: receives the indications (an association).
    :param upper_layer: the core; its ``is_requestor`` decides how the
        connection starts (Evt2 for a requestor, Evt5 for an acceptor).
    :param reactor: provides ``seconds()`` and ``callLater()``.
    """

    _log = Logger()

    def __init__(self, user: UpperLayerUser, upper_layer: UpperLayer, reactor: IReactorTime) -> None:
        self.user = user
        self.ul = upper_layer
        self.reactor = reactor
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        self._socket: socket.socket | None = None
        #: the transport whose ``bufferSize`` we tune (None: it has none, e.g. TLS)
        self._sized: Any = None
        #: small writes may skip Twisted's queue (see _write_now)
        self._direct = False
        #: something was written since the current read began (dataReceived)
        self._wrote = False
        #: the transport is TLS (a handshake failure is then worth a line of its own)
        self._tls = False
        #: its TLS handshake is done (IHandshakeListener)
        self._handshake_done = False
        #: register_producer() registered one, unregistered when we close
        self._producer_registered = False
        #: TLS: the records' plaintext of one read, handed on together (see dataReceived)
        self._tls_pending: list[bytes] = []

    # -- twisted.internet.interfaces.IProtocol --------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        # No TCP_QUICKACK yet: a new connection starts in quick-ACK mode, and
        # dataReceived re-arms it after any read it does not answer at once.
        self._tls = ISSLTransport.providedBy(transport)
        sock = set_low_latency(transport, quickack=False)
        self._socket = sock if _TCP_QUICKACK is not None else None
        if type(getattr(transport, "bufferSize", None)) is int:
            self._sized = transport
        self._direct = _can_write_now(transport)
        self.user.connection_made(self)
        now = self.reactor.seconds()
        if self.ul.is_requestor:
            self.run(self.ul.transport_connected(now))
        else:
            self.run(self.ul.transport_accepted(now))
            if self._direct and transport.connected and not transport.disconnecting:
                # A requestor sends its A-ASSOCIATE-RQ as soon as it is
                # connected, so it is usually waiting by the time we accept:
                # read it now rather than after another turn of the reactor
                # (~2 % more associations/s).  Nothing there: EAGAIN, no harm.
                # An end of stream or an error found here is left to the
                # reactor, which sees the socket readable again (a reset then
                # shows as a close) -- what doRead returns is for the reactor.
                transport.doRead()

    def dataReceived(self, data: bytes) -> None:
        if self._tls:
            # Twisted's TLS transport hands on each TLS record's plaintext as
            # it decrypts it, in one loop per read from the socket.  A sender
            # writing a PDU's header and its data as two TLS writes (DCMTK)
            # makes two records a PDU: 68 calls for a 525 KB CT instance, each
            # through the whole upper layer.  The plaintext of one read is
            # gathered here and handed on once, in the next reactor turn
            # (which runs at once: a call is due).
            pending = self._tls_pending
            pending.append(data)
            if len(pending) == 1:
                self.reactor.callLater(0, self._tls_received)
            return
        self._received(data)

    def _tls_received(self) -> None:
        pending, self._tls_pending = self._tls_pending, []
        if pending:
            self._received(pending[0] if len(pending) == 1 else b"".join(pending))

    def _received(self, data: bytes) -> None:
        sized = self._sized
        if sized is not None:
            # Adapt the read size to the traffic: a read that filled the
            # block means more is waiting (a data set streaming in), so read
            # in bigger blocks -- fewer reactor turns per megabyte; a small
            # read means request/response traffic, back to Twisted's default.
            size = sized.bufferSize
            if len(data) >= size:
                if size < _BLOCK_MAX:
                    sized.bufferSize = min(size * 4, _BLOCK_MAX)
            elif size > _BLOCK_MIN and len(data) < _BLOCK_MIN:
                sized.bufferSize = _BLOCK_MIN
        self._wrote = False
        self.run(self.ul.receive_data(data, self.reactor.seconds()))
        if self._socket is not None and not self._wrote:
            # Nothing sent back yet (a PDU still incomplete, a data set
            # streaming in, an answer that comes later): acknowledge now.
            try:
                self._socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)  # type: ignore[arg-type]
            except OSError:
                self._socket = None

    def handshakeCompleted(self) -> None:
        """IHandshakeListener: the TLS handshake is done (the TLS transport calls this)."""
        self._handshake_done = True

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self._tls_pending:
            self._tls_received()  # what was read before the end comes first
        # A failed TLS handshake says why (the association's log line and error carry it).
        # A connection closed with no TLS error before the handshake was done is one too:
        # a peer that does not speak TLS (DCMTK closes on a ClientHello), a port scan.
        tls = None
        if self._tls:
            tls = describe_tls_failure(reason.value, self.transport)
            if tls is None and not self._handshake_done:
                tls = TLS_CLOSED_EARLY
        if tls is not None:
            reason = Failure(ConnectionLost(tls))
            self.run(self.ul.transport_closed(self.reactor.seconds(), tls))
        else:
            self.run(self.ul.transport_closed(self.reactor.seconds()))
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.user.connection_lost(reason)

    # -- primitives from the user ----------------------------------------------

    def send_pdata(self, pdus: bytes) -> bool:
        """Send encoded P-DATA-TF PDU(s) (P-DATA request).

        Returns False, sending nothing, when the association can no longer
        carry data: the peer's A-ABORT or A-RELEASE-RQ may have been read in
        the same chunk as the request being answered, and the user learns of
        it from the next indication.
        """
        if not self.ul.can_send_pdata():
            return False
        sized = self._sized
        if sized is not None and len(pdus) >= _BULK_PDU and sized.bufferSize < _WRITE_BLOCK:
            # A data set going out in full-size PDUs: let the transport buffer
            # more before it pauses us (its producer) -- fewer pause/resume
            # turns per megabyte, memory still bounded.
            sized.bufferSize = _WRITE_BLOCK
        self.run(self.ul.send_pdata(pdus, self.reactor.seconds()))
        return True

    @property
    def send_batch(self) -> int:
        """How many bytes of P-DATA-TF PDUs a sender may hand :meth:`send_pdata` at once:
        the transport's block size (what it takes before it pauses its producer),
        or, for a transport without one, no more than one bulk PDU."""
        sized = self._sized
        return sized.bufferSize if sized is not None else _BULK_PDU

    def abort(self, reason: str = "aborted by the local user") -> None:
        """A-ABORT request (Evt15); nothing happens where the table has no cell for it."""
        self.run(self.ul.abort(self.reactor.seconds(), reason))

    def call(self, method: str, *args: Any) -> bool:
        """Issue a primitive on the core (``accept``, ``reject``, ``release``,
        ``release_response``, ``abort``, ``invalid_pdu``) and carry out its outputs.

        Returns False, doing nothing, when the association is already over
        (Sta1, Sta13): the core handles every PDU of a read before the user
        sees the first indication, so an answer to an A-RELEASE-RQ read
        together with an A-ABORT comes too late -- the user learns of the end
        from the next indication.  Misuse while the association lives raises
        :class:`~dimsekit.errors.LocalProtocolError`.

        The core's primitives take ``now`` last, except ``abort(now, reason)``,
        whose reason is optional.
        """
        if method == "abort":
            self.abort(*args)
            return True
        if self.ul.state in _OVER:
            return False
        self.run(getattr(self.ul, method)(*args, self.reactor.seconds()))
        return True

    # -- carrying out outputs ---------------------------------------------------

    def run(self, outputs: list[out.Output]) -> None:
        """Carry out the core's outputs in order, then re-arm the timer."""
        for item in outputs:
            kind = type(item)
            if kind is out.Transmit:
                self._wrote = True
                if self._direct:
                    self._write_now(item.data)
                else:
                    self.transport.write(item.data)  # type: ignore[union-attr]
            elif kind is out.CloseTransport:
                self.close_transport()
            elif kind is out.OpenTransport:
                pass  # the requestor's endpoint opened the connection before we existed
            else:
                getattr(self.user, _INDICATIONS[kind])(item)
        self._arm_timer()

    def close_transport(self) -> None:
        """Close the connection once what is queued is written.  The association
        (registered as the transport's producer) is unregistered first: a TLS
        transport does not send its close_notify, nor close, while a producer is
        registered, so the connection stayed open until the peer gave up.  A TLS
        connection whose handshake is not done is aborted."""
        transport = self.transport
        if transport is None:
            return
        if self._producer_registered:
            self._producer_registered = False
            transport.unregisterProducer()
        if self._tls and not self._handshake_done:
            # Before its handshake is done a TLS transport keeps what we wrote (our
            # A-ASSOCIATE-RQ) for after it, and its loseConnection waits for that: with a
            # peer that never answers, for ever.  Nothing can reach the peer yet: abort.
            transport.abortConnection()
            return
        transport.loseConnection()

    def register_producer(self, producer: Any) -> None:
        """Register the (streaming) producer the transport pauses when its buffer fills."""
        self.transport.registerProducer(producer, True)  # type: ignore[union-attr]
        self._producer_registered = True

    def _write_now(self, data: bytes) -> None:
        """``transport.write``, but a small write finding nothing queued goes
        out at once, in this reactor turn.

        Twisted's ``write`` only queues: the bytes leave on the next reactor
        turn, after an ``epoll_ctl`` to watch for writability, an
        ``epoll_wait``, and another ``epoll_ctl`` once written.  For
        request/response traffic (a C-ECHO, every response, the association
        PDUs) that is a fifth of a round trip (benchmarks/bench_echo.py,
        with and without, same run: about +20 % C-ECHO/s, +15 % associations/s).
        So when the transport holds nothing (so order is kept) and is open,
        a write under _BULK_PDU bytes is handed to the transport's own
        ``writeSomeData`` (its error handling included); whatever the socket
        did not take, or any failure, goes through ``write`` as before, which
        then also sees the error and closes.  Data set fragments are left
        to Twisted's queue, which batches them into fewer system calls.
        Only plain TCP transports qualify (:meth:`connectionMade`).
        """
        transport: Any = self.transport
        if (
            len(data) < _BULK_PDU
            and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and not transport.TLS
        ):
            sent = transport.writeSomeData(data)
            if type(sent) is int and sent > 0:
                if sent == len(data):
                    return
                data = data[sent:]
        transport.write(data)

    def _arm_timer(self) -> None:
        deadline = self.ul.next_deadline()
        if deadline is None:
            return  # a timer left running fires, finds nothing due, and is not re-armed
        timer = self._timer
        if timer is not None:  # pending: only _fire and connectionLost clear it
            if self._timer_at <= deadline:  # type: ignore[operator]
                return  # fires early, finds nothing due, re-arms for the later deadline
            timer.cancel()
        self._timer_at = deadline
        self._timer = self.reactor.callLater(max(0.0, deadline - self.reactor.seconds()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.ul.state == State.STA1:
            return
        busy = getattr(self.user, "busy", None)
        self.run(self.ul.handle_timer(self.reactor.seconds(), busy=busy is not None and busy()))
