"""DicomProtocol, the Twisted adapter, over a StringTransport and a task.Clock.

The user above the protocol is a recorder; the peer is played by hand with
encoded PDUs.  Nothing here opens a socket or sleeps (STYLE habit 15).
"""

from __future__ import annotations

import socket

from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from dimsekit.protocol import DicomProtocol, set_low_latency
from dimsekit.ul import outputs as out
from dimsekit.ul.connection import Timeouts, UpperLayer
from dimsekit.ul.fsm import State
from dimsekit.ul.items import (
    MaximumLength,
    PresentationContextAC,
    PresentationContextRQ,
    UserInformation,
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
)

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"


def associate_rq() -> AssociateRQ:
    return AssociateRQ(
        called_ae_title="ACCEPTOR",
        calling_ae_title="REQUESTOR",
        presentation_contexts=(
            PresentationContextRQ(context_id=1, abstract_syntax=VERIFICATION, transfer_syntaxes=(IMPLICIT_VR_LE,)),
        ),
        user_information=UserInformation(items=(MaximumLength(maximum_length=16384),)),
    )


def associate_ac() -> AssociateAC:
    return AssociateAC(
        called_ae_title="ACCEPTOR",
        calling_ae_title="REQUESTOR",
        presentation_contexts=(PresentationContextAC(context_id=1, result=0, transfer_syntax=IMPLICIT_VR_LE),),
        user_information=UserInformation(items=(MaximumLength(maximum_length=16384),)),
    )


def pdata() -> bytes:
    return PDataTF(pdvs=(PresentationDataValue(context_id=1, control=0x03, data=b"\0" * 8),)).encode()


def pdus_in(data: bytes) -> list:
    """Decode every whole PDU in ``data``."""
    found = []
    view = memoryview(data)
    while view:
        decoded = decode(view, 0)
        assert decoded is not None, "a PDU was cut short"
        pdu, used = decoded
        found.append(pdu)
        view = view[used:]
    return found


class RecordingUser:
    """An UpperLayerUser that records what it is handed."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []
        self.protocol: DicomProtocol | None = None

    def _record(self, name):
        return lambda item: self.events.append((name, item))

    def __getattr__(self, name):
        if name.startswith(("association_", "pdata_", "release_", "abort_")):
            return self._record(name)
        raise AttributeError(name)

    def connection_made(self, protocol):
        self.protocol = protocol
        self.events.append(("connection_made", protocol))

    def connection_lost(self, reason):
        self.events.append(("connection_lost", reason))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]

    def of(self, name: str) -> list[object]:
        return [item for n, item in self.events if n == name]


class FakeSocket:
    """Stands for the transport's socket: records setsockopt calls."""

    def __init__(self, fail: bool = False) -> None:
        self.options: list[tuple[int, int, int]] = []
        self.fail = fail

    def setsockopt(self, level, option, value):
        if self.fail:
            raise OSError("not a TCP socket")
        self.options.append((level, option, value))


class SocketTransport(StringTransport):
    """A StringTransport with a handle, as a TCP transport has."""

    def __init__(self, handle, **kwargs) -> None:
        super().__init__(**kwargs)
        self.handle = handle

    def getHandle(self):
        return self.handle


class ProtocolTestCase(SynchronousTestCase):
    def make(self, *, requestor: bool = False, timeouts: Timeouts | None = None, transport=None, user=None):
        self.clock = task.Clock()
        self.user = user or RecordingUser()
        self.ul = UpperLayer(timeouts=timeouts or Timeouts())
        if requestor:
            self.ul.request_association(associate_rq(), self.clock.seconds())
        self.transport = transport or StringTransport(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
        )
        self.protocol = DicomProtocol(self.user, self.ul, self.clock)
        self.protocol.makeConnection(self.transport)
        return self.protocol

    def written(self) -> list:
        data = self.transport.value()
        self.transport.clear()
        return pdus_in(data)

    def establish_as_acceptor(self, **kwargs):
        self.make(**kwargs)
        self.protocol.dataReceived(associate_rq().encode())
        self.protocol.call("accept", associate_ac())
        self.transport.clear()
        return self.protocol

    def assertOneTimer(self):
        calls = self.clock.getDelayedCalls()
        self.assertEqual(len(calls), 1, calls)
        return calls[0]


class ConnectionMadeTests(ProtocolTestCase):
    def test_acceptor_starts_artim_and_waits_silently(self):
        self.make()
        self.assertEqual(self.user.names(), ["connection_made"])
        self.assertIs(self.user.protocol, self.protocol)
        self.assertEqual(self.ul.state, State.STA2)
        self.assertEqual(self.transport.value(), b"")
        timer = self.assertOneTimer()
        self.assertEqual(timer.getTime(), 30.0)

    def test_an_rq_already_waiting_at_accept_is_read_at_once(self):
        # A plain TCP transport (writes go straight out) is read as soon as the
        # connection is made: the A-ASSOCIATE-RQ a requestor sent right after
        # connecting is handled without waiting for another reactor turn.
        rq = associate_rq().encode()
        test = self

        class WaitingTransport(StringTransport):
            connected, disconnecting = 1, False
            reads = 0

            def doRead(self):
                self.reads += 1
                if self.reads == 1:
                    return test.protocol.dataReceived(rq)
                return None  # nothing more (EAGAIN)

        import dimsekit.protocol as protocol_module

        self.patch(protocol_module, "_can_write_now", lambda transport: True)
        transport = WaitingTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.make(transport=transport)
        self.assertEqual(transport.reads, 1)
        self.assertEqual(self.user.names(), ["connection_made", "association_indication"])
        self.assertEqual(self.ul.state, State.STA3)

    def test_no_early_read_of_a_transport_that_is_closing_or_not_plain_tcp(self):
        import dimsekit.protocol as protocol_module

        # closing; or with no direct writes (TLS): not read early either
        for disconnecting, direct in ((True, True), (False, False)):

            class Unread(StringTransport):
                connected = 1

                def doRead(self):
                    raise AssertionError(f"read early (disconnecting={self.disconnecting})")

            Unread.disconnecting = disconnecting
            self.patch(protocol_module, "_can_write_now", lambda transport, direct=direct: direct)
            self.make(transport=Unread())
            self.assertEqual(self.user.names(), ["connection_made"])

    def test_artim_expiry_closes_the_transport(self):
        self.make()
        self.clock.advance(29.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.transport.value(), b"")  # AA-2: nothing is sent
        self.assertEqual(self.ul.state, State.STA1)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.user.names(), ["connection_made", "connection_lost"])

    def test_artim_follows_the_configured_timeout(self):
        self.make(timeouts=Timeouts(artim=5))
        self.clock.advance(5)
        self.assertTrue(self.transport.disconnecting)

    def test_requestor_sends_its_associate_rq(self):
        self.make(requestor=True)
        self.assertEqual(self.written(), [associate_rq()])
        self.assertEqual(self.ul.state, State.STA5)
        self.assertEqual(self.assertOneTimer().getTime(), 30.0)  # ACSE timeout


class AssociationTests(ProtocolTestCase):
    def test_associate_rq_is_indicated(self):
        self.make()
        self.protocol.dataReceived(associate_rq().encode())
        (indication,) = self.user.of("association_indication")
        self.assertEqual(indication, out.AssociateIndication(associate_rq()))
        self.assertEqual(self.ul.state, State.STA3)

    def test_rq_in_pieces(self):
        self.make()
        data = associate_rq().encode()
        for i in range(len(data)):
            self.protocol.dataReceived(data[i : i + 1])
        self.assertEqual(len(self.user.of("association_indication")), 1)

    def test_accept_writes_the_ac(self):
        self.make()
        self.protocol.dataReceived(associate_rq().encode())
        self.protocol.call("accept", associate_ac())
        self.assertEqual(self.transport.value()[:1], b"\x02")
        self.assertEqual(self.written(), [associate_ac()])
        self.assertEqual(self.ul.state, State.STA6)
        self.assertFalse(self.transport.disconnecting)

    def test_reject_writes_the_rj_and_waits_for_the_close(self):
        self.make()
        self.protocol.dataReceived(associate_rq().encode())
        rj = AssociateRJ(result=1, source=1, reason=7)
        self.protocol.call("reject", rj)
        self.assertEqual(self.written(), [rj])
        self.assertEqual(self.ul.state, State.STA13)
        self.clock.advance(30)  # ARTIM: the peer did not close
        self.assertTrue(self.transport.disconnecting)

    def test_requestor_gets_the_ac(self):
        self.make(requestor=True)
        self.written()
        self.protocol.dataReceived(associate_ac().encode())
        (accepted,) = self.user.of("association_accepted")
        self.assertEqual(accepted, out.AssociateAccepted(associate_ac()))

    def test_pdata_both_ways(self):
        self.establish_as_acceptor()
        self.protocol.dataReceived(pdata())
        (indication,) = self.user.of("pdata_indication")
        self.assertEqual(indication.pdu.pdvs[0].data, b"\0" * 8)
        self.protocol.send_pdata(pdata())
        self.assertEqual(self.transport.value(), pdata())

    def test_release_by_the_peer(self):
        self.establish_as_acceptor()
        self.protocol.dataReceived(ReleaseRQ().encode())
        self.assertEqual(self.user.of("release_indication"), [out.ReleaseIndication()])
        self.protocol.call("release_response")
        self.assertEqual(self.written(), [ReleaseRP()])
        self.assertEqual(self.ul.state, State.STA13)

    def test_local_abort(self):
        self.establish_as_acceptor()
        self.protocol.call("abort", "enough")
        self.assertEqual(self.written(), [Abort(source=0, reason=0)])
        self.assertEqual(self.ul.state, State.STA13)
        self.protocol.abort()  # again: no cell for it in Sta13, nothing happens
        self.assertEqual(self.transport.value(), b"")

    def test_abort_before_association_does_nothing(self):
        self.make()
        self.protocol.abort("early")
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.ul.state, State.STA2)

    def test_abort_from_the_peer(self):
        self.establish_as_acceptor()
        self.protocol.dataReceived(Abort(source=0, reason=0).encode())
        self.assertEqual(self.user.of("abort_indication"), [out.AbortIndication(source=0, reason=0)])
        self.assertTrue(self.transport.disconnecting)

    def test_garbage_is_answered_with_an_abort(self):
        self.establish_as_acceptor()
        self.protocol.dataReceived(b"\xff\x00\x00\x00\x00\x04abcd")
        (pdu,) = self.written()
        self.assertIsInstance(pdu, Abort)
        self.assertEqual(pdu.source, 2)
        (indication,) = self.user.of("abort_indication")
        self.assertIsInstance(indication, out.ProviderAbortIndication)


class StaleIndicationTests(ProtocolTestCase):
    """The core handles every PDU of a read before the user sees the first
    indication: answering one after the association ended is not an error."""

    def test_release_rq_and_abort_in_one_read(self):
        class AnswersRelease(RecordingUser):
            def release_indication(self, item):
                self.events.append(("release_indication", item))
                self.protocol.call("release_response")

        self.establish_as_acceptor(user=AnswersRelease())
        self.protocol.dataReceived(ReleaseRQ().encode() + Abort(source=0, reason=0).encode())
        self.assertEqual(self.user.names()[-2:], ["release_indication", "abort_indication"])
        self.assertEqual(self.transport.value(), b"")  # no A-RELEASE-RP after the abort
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.ul.state, State.STA1)

    def test_primitives_after_the_end_do_nothing(self):
        self.establish_as_acceptor()
        self.protocol.dataReceived(Abort(source=0, reason=0).encode())
        self.transport.clear()
        self.assertFalse(self.protocol.call("release"))
        self.assertFalse(self.protocol.call("release_response"))
        self.assertFalse(self.protocol.send_pdata(pdata()))
        self.assertEqual(self.transport.value(), b"")

    def test_misuse_while_alive_still_raises(self):
        from dimsekit.errors import LocalProtocolError

        self.establish_as_acceptor()
        with self.assertRaises(LocalProtocolError):
            self.protocol.call("release_response")  # nobody asked to release


class TimerTests(ProtocolTestCase):
    """One IDelayedCall at a time, re-armed lazily, none left after the end."""

    def test_later_deadline_keeps_the_armed_call(self):
        self.establish_as_acceptor(timeouts=Timeouts(artim=30, idle=60))
        timer = self.assertOneTimer()
        self.assertEqual(timer.getTime(), 30.0)  # left from ARTIM: fires early, re-arms
        self.clock.advance(10)
        self.protocol.dataReceived(pdata())  # idle deadline moves to 70
        self.assertIs(self.assertOneTimer(), timer)
        self.clock.advance(20)  # t=30: the early call finds nothing due
        self.assertFalse(self.transport.disconnecting)
        rearmed = self.assertOneTimer()
        self.assertIsNot(rearmed, timer)
        self.assertEqual(rearmed.getTime(), 70.0)
        self.clock.advance(40)  # t=70: idle
        self.assertEqual(self.written(), [Abort(source=0, reason=0)])
        (indication,) = self.user.of("abort_indication")
        self.assertIn("idle", indication.reason)
        self.assertEqual(self.assertOneTimer().getTime(), 100.0)  # ARTIM in Sta13

    def test_deadline_after_the_armed_call_keeps_it(self):
        self.establish_as_acceptor(timeouts=Timeouts(artim=30, idle=None))
        timer = self.assertOneTimer()  # ARTIM's, t=30, though ARTIM was stopped
        self.clock.advance(1)
        self.protocol.dataReceived(ReleaseRQ().encode())
        self.protocol.call("release_response")  # Sta13: ARTIM until t=31
        self.assertIs(self.assertOneTimer(), timer)  # 30 <= 31: kept
        self.clock.advance(29)
        self.assertEqual(self.assertOneTimer().getTime(), 31.0)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_earlier_deadline_replaces_the_armed_call(self):
        self.establish_as_acceptor(timeouts=Timeouts(artim=5, idle=60))
        self.clock.advance(5)  # the stale ARTIM call fires, re-arms for idle at t=60
        idle_call = self.assertOneTimer()
        self.assertEqual(idle_call.getTime(), 60.0)
        self.clock.advance(5)
        self.protocol.dataReceived(ReleaseRQ().encode())
        self.protocol.call("release_response")  # Sta13: ARTIM until t=15 < 60
        self.assertFalse(idle_call.active())
        self.assertEqual(self.assertOneTimer().getTime(), 15.0)
        self.clock.advance(5)
        self.assertTrue(self.transport.disconnecting)

    def test_connection_lost_cancels_the_armed_call(self):
        self.make(requestor=True, timeouts=Timeouts(acse=30))
        armed = self.assertOneTimer()  # ACSE until t=30
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(armed.active())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_call_left_after_connection_lost(self):
        self.establish_as_acceptor()
        self.assertOneTimer()
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertEqual(self.transport.value(), b"")

    def test_late_fire_in_sta1_does_nothing(self):
        self.make(timeouts=Timeouts(artim=30))
        self.protocol.dataReceived(associate_rq().encode())
        self.protocol.call("reject", AssociateRJ(result=1, source=1, reason=1))
        self.written()
        self.clock.advance(30)  # ARTIM in Sta13 closes
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.ul.state, State.STA1)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectionLostTests(ProtocolTestCase):
    def test_established_association_lost(self):
        self.establish_as_acceptor()
        reason = Failure(ConnectionDone())
        self.protocol.connectionLost(reason)
        self.assertEqual(self.user.names()[-2:], ["abort_indication", "connection_lost"])
        (indication,) = self.user.of("abort_indication")
        self.assertIsInstance(indication, out.ProviderAbortIndication)
        self.assertEqual(self.user.of("connection_lost"), [reason])
        self.assertEqual(self.ul.state, State.STA1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lost_before_association(self):
        self.make()
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.user.names(), ["connection_made", "connection_lost"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_requestor_lost_while_waiting_for_ac(self):
        self.make(requestor=True)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.user.names()[-2:], ["abort_indication", "connection_lost"])
        self.assertEqual(self.clock.getDelayedCalls(), [])


class LowLatencyTests(ProtocolTestCase):
    def test_tcp_nodelay_is_set_on_connection(self):
        handle = FakeSocket()
        self.make(transport=SocketTransport(handle))
        self.assertIn((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), handle.options)

    def test_only_tcp_nodelay_on_connection(self):
        # a new connection starts in quick-ACK mode: no TCP_QUICKACK call before the first read
        handle = FakeSocket()
        self.make(transport=SocketTransport(handle))
        self.assertEqual(handle.options, [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])

    def test_quickack_rearmed_after_a_read_not_answered_where_available(self):
        quickack = getattr(socket, "TCP_QUICKACK", None)
        handle = FakeSocket()
        self.make(transport=SocketTransport(handle))
        before = len(handle.options)
        self.protocol.dataReceived(associate_rq().encode())  # the user answers later
        if quickack is None:
            self.assertEqual(len(handle.options), before)
        else:
            self.assertEqual(handle.options[before:], [(socket.IPPROTO_TCP, quickack, 1)])

    def test_quickack_rearmed_after_part_of_a_pdu(self):
        quickack = getattr(socket, "TCP_QUICKACK", None)
        if quickack is None:
            self.skipTest("no TCP_QUICKACK here")
        handle = FakeSocket()
        self.make(transport=SocketTransport(handle))
        rq = associate_rq().encode()
        for part in (rq[:3], rq[3:20]):
            before = len(handle.options)
            self.protocol.dataReceived(part)
            self.assertEqual(handle.options[before:], [(socket.IPPROTO_TCP, quickack, 1)])

    def test_no_quickack_after_a_read_answered_at_once(self):
        # The answer carries the ACK: no system call for it.
        class Rejects(RecordingUser):
            def association_indication(self, item):
                self.protocol.call("reject", AssociateRJ(result=1, source=1, reason=1))

        handle = FakeSocket()
        self.make(transport=SocketTransport(handle), user=Rejects())
        before = len(handle.options)
        self.protocol.dataReceived(associate_rq().encode())
        self.assertEqual(self.written(), [AssociateRJ(result=1, source=1, reason=1)])
        self.assertEqual(handle.options[before:], [])

    def test_socket_errors_are_ignored(self):
        self.make(transport=SocketTransport(FakeSocket(fail=True)))
        self.protocol.dataReceived(associate_rq().encode())
        self.assertEqual(len(self.user.of("association_indication")), 1)

    def test_transport_without_a_socket(self):
        set_low_latency(StringTransport())  # no getHandle: nothing to do, no error

    def test_tls_transport_reaches_the_inner_socket(self):
        handle = FakeSocket()
        inner = SocketTransport(handle)
        tls = SocketTransport(object())  # the OpenSSL connection has no setsockopt
        tls.transport = inner
        set_low_latency(tls, quickack=False)
        self.assertEqual(handle.options, [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])


@implementer(ISSLTransport)
class TLSTransport(StringTransport):
    """Stands for Twisted's TLS transport (it hands on each TLS record's plaintext by itself)."""


class TLSReadTests(ProtocolTestCase):
    def make_tls(self):
        self.make(transport=TLSTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)))
        self.received: list[int] = []
        real = self.ul.receive_data

        def counting(data, now):
            self.received.append(len(data))
            return real(data, now)

        self.ul.receive_data = counting  # type: ignore[method-assign]
        return self.protocol

    def test_the_records_of_one_read_reach_the_upper_layer_once(self):
        self.make_tls()
        data = associate_rq().encode()
        pieces = [data[:6], data[6:40], data[40:]]  # a PDU header as a record of its own, as DCMTK sends them
        for piece in pieces:
            self.protocol.dataReceived(piece)
        self.assertEqual(self.received, [])  # not yet: the rest of the read may follow
        self.clock.advance(0)
        self.assertEqual(self.received, [len(data)])
        self.assertEqual(len(self.user.of("association_indication")), 1)

    def test_records_of_the_next_read_are_handed_on_in_their_own_turn(self):
        self.make_tls()
        self.protocol.dataReceived(associate_rq().encode())
        self.clock.advance(0)
        self.protocol.call("accept", associate_ac())
        self.transport.clear()
        message = pdata()
        self.protocol.dataReceived(message[:6])
        self.protocol.dataReceived(message[6:])
        self.clock.advance(0)
        self.assertEqual(self.received[1:], [len(message)])
        self.assertEqual(len(self.user.of("pdata_indication")), 1)

    def test_what_was_read_comes_before_the_end_of_the_connection(self):
        self.make_tls()
        self.protocol.dataReceived(associate_rq().encode())
        self.protocol.connectionLost(Failure(ConnectionDone()))
        names = self.user.names()
        self.assertIn("association_indication", names)
        self.assertLess(names.index("association_indication"), names.index("connection_lost"))
        self.clock.advance(0)  # the turn that was asked for finds nothing left
        self.assertEqual(self.received, [len(associate_rq().encode())])

    def test_a_plain_tcp_read_is_handed_on_at_once(self):
        self.make()
        self.protocol.dataReceived(associate_rq().encode())
        self.assertEqual(len(self.user.of("association_indication")), 1)
