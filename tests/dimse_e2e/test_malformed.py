"""Malformed command sets sent raw to a dimsekit SCP on 127.0.0.1: the failure
status the standard names comes back and the association goes on (the next
C-ECHO works), or -- when no request can be answered -- an A-ABORT."""

from __future__ import annotations

import struct

from twisted.internet import defer, endpoints, protocol, reactor

from dimsekit.ul.negotiation import build_associate_rq
from tests.dimse_e2e.support import CT, LoopbackTestCase, Services, wait_until, within
from tests.interop.conftest import (
    A_ABORT,
    A_ASSOCIATE_AC,
    IMPLICIT_VR_LE,
    RELEASE_RP,
    RELEASE_RQ,
    VERIFICATION,
    echo_rq_pdata,
    echo_rsp_status,
    parse_command,
    pdata_pdu,
    pdvs_of,
)

CT_CONTEXT = 3


def element(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def ui(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def command_set(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return element(0x0000, 0x0000, struct.pack("<I", len(body))) + body


class RawClient(protocol.Protocol):
    """Speaks DICOM only as the test scripts it: sends bytes, collects whole PDUs."""

    def __init__(self) -> None:
        self.buffer = b""
        self.pdus: list[bytes] = []
        self.waiter: defer.Deferred | None = None
        self.closed = False
        self._closed_waiters: list[defer.Deferred] = []

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 6:
            (length,) = struct.unpack(">I", self.buffer[2:6])
            if len(self.buffer) < 6 + length:
                break
            self.pdus.append(self.buffer[: 6 + length])
            self.buffer = self.buffer[6 + length :]
        if self.pdus and self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter.callback(None)

    def connectionLost(self, reason: object = None) -> None:
        if self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter.errback(AssertionError("connection closed while a PDU was awaited"))
        self.closed = True
        for d in self._closed_waiters:
            d.callback(None)

    def when_closed(self) -> defer.Deferred:
        if self.closed:
            return defer.succeed(None)
        d = defer.Deferred()
        self._closed_waiters.append(d)
        return d

    async def next_pdu(self, seconds: float = 3.0) -> bytes:
        if not self.pdus:
            self.waiter = defer.Deferred()
            await within(self.waiter, seconds)
        return self.pdus.pop(0)


class MalformedCommandTests(LoopbackTestCase):
    async def _client(self) -> RawClient:
        self.services = Services()
        _, port = await self.serve(self.services)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = await within(endpoints.connectProtocol(endpoint, RawClient()))
        self.addCleanup(self._close, client)
        rq = build_associate_rq(
            called_ae_title="SCP", calling_ae_title="RAW",
            contexts=[(VERIFICATION, [IMPLICIT_VR_LE]), (CT, [IMPLICIT_VR_LE])],
        )
        client.transport.write(rq.encode())
        ac = await client.next_pdu()
        self.assertEqual(ac[0], A_ASSOCIATE_AC)
        return client

    async def _close(self, client: RawClient) -> None:
        if not client.closed:
            client.transport.loseConnection()
        await within(client.when_closed())

    async def _response(self, client: RawClient) -> dict:
        pdu = await client.next_pdu()
        pdvs = pdvs_of(pdu)
        self.assertEqual([control for _, control, _ in pdvs], [0x03])
        raw = parse_command(pdvs[0][2])
        fields = {"field": struct.unpack("<H", raw[(0, 0x0100)])[0],
                  "responding_to": struct.unpack("<H", raw[(0, 0x0120)])[0],
                  "status": struct.unpack("<H", raw[(0, 0x0900)])[0],
                  "comment": raw.get((0, 0x0902), b"").decode().strip()}
        if (0, 0x0901) in raw:
            fields["offending"] = [struct.unpack("<HH", raw[(0, 0x0901)][i : i + 4]) for i in range(0, len(raw[(0, 0x0901)]), 4)]
        return fields

    async def _still_works(self, client: RawClient, message_id: int = 99) -> None:
        client.transport.write(echo_rq_pdata(message_id))
        self.assertEqual(echo_rsp_status(await client.next_pdu(), message_id), 0x0000)
        client.transport.write(RELEASE_RQ)
        self.assertEqual(await client.next_pdu(), RELEASE_RP)

    async def test_echo_without_affected_sop_class(self):
        client = await self._client()
        command = command_set(
            element(0, 0x0100, us(0x0030)), element(0, 0x0110, us(7)), element(0, 0x0800, us(0x0101)),
        )
        client.transport.write(pdata_pdu((1, 0x03, command)))
        response = await self._response(client)
        self.assertEqual((response["field"], response["responding_to"]), (0x8030, 7))
        self.assertEqual(response["status"], 0x0212)  # a required field is missing: mistyped argument
        self.assertIn("AffectedSOPClassUID", response["comment"])
        self.assertEqual(response.get("offending"), [(0x0000, 0x0002)])
        await self._still_works(client)
        self.assertEqual(self.services.seen, [("C-ECHO", self.services.seen[0][1])])  # only the good echo

    async def test_store_without_affected_sop_instance_its_data_set_discarded(self):
        client = await self._client()
        command = command_set(
            element(0, 0x0002, ui(CT)), element(0, 0x0100, us(0x0001)), element(0, 0x0110, us(8)),
            element(0, 0x0700, us(0)), element(0, 0x0800, us(0x0000)),
        )
        dataset = element(0x0010, 0x0010, b"DOE^JOHN")
        client.transport.write(pdata_pdu((CT_CONTEXT, 0x03, command)))
        client.transport.write(pdata_pdu((CT_CONTEXT, 0x00, dataset[:6])))
        client.transport.write(pdata_pdu((CT_CONTEXT, 0x02, dataset[6:])))
        response = await self._response(client)
        self.assertEqual((response["field"], response["responding_to"]), (0x8001, 8))
        self.assertEqual(response["status"], 0x0212)
        self.assertIn("AffectedSOPInstanceUID", response["comment"])
        self.assertEqual(response.get("offending"), [(0x0000, 0x1000)])
        self.assertEqual(self.services.stored, [])
        await self._still_works(client)

    async def test_wrong_value_length(self):
        client = await self._client()
        command = command_set(
            element(0, 0x0002, ui(VERIFICATION)), element(0, 0x0100, us(0x0030)), element(0, 0x0110, us(9)),
            element(0, 0x0800, b"\x01\x01\x00\x00"),  # US with a 4-byte value
        )
        client.transport.write(pdata_pdu((1, 0x03, command)))
        response = await self._response(client)
        self.assertEqual((response["field"], response["responding_to"]), (0x8030, 9))
        self.assertEqual(response["status"], 0x0212)  # mistyped argument
        self.assertEqual(response.get("offending"), [(0x0000, 0x0800)])
        await self._still_works(client)

    async def test_unrecognized_command_field(self):
        client = await self._client()
        command = command_set(
            element(0, 0x0002, ui(VERIFICATION)), element(0, 0x0100, us(0x0FF0)), element(0, 0x0110, us(10)),
            element(0, 0x0800, us(0x0101)),
        )
        client.transport.write(pdata_pdu((1, 0x03, command)))
        # PS3.7 C.5.x names 0211H, but an unknown operation has no response type to carry
        # it: the association is aborted (a protocol-correct answer, never a hang)
        pdu = await client.next_pdu()
        self.assertEqual(pdu[0], A_ABORT)
        await self._scp_ended("aborted")

    async def test_request_without_message_id_is_aborted(self):
        client = await self._client()
        command = command_set(
            element(0, 0x0002, ui(VERIFICATION)), element(0, 0x0100, us(0x0030)), element(0, 0x0800, us(0x0101)),
        )
        client.transport.write(pdata_pdu((1, 0x03, command)))
        pdu = await client.next_pdu()
        self.assertEqual(pdu[0], A_ABORT)  # nothing can be answered: PS3.8 A-ABORT
        await self._scp_ended("aborted")

    async def test_garbage_command_bytes(self):
        client = await self._client()
        client.transport.write(pdata_pdu((1, 0x03, b"\x00\x00\x00\x00\xff\xff\xff\xff" + b"\x01" * 10)))
        pdu = await client.next_pdu()
        self.assertEqual(pdu[0], A_ABORT)
        await self._scp_ended("aborted")

    async def _scp_ended(self, how: str) -> None:
        tracker = self._trackers[0]
        await wait_until(lambda: tracker.ended, 3, "the SCP's association ended")
        self.assertTrue(tracker.ended[0][0].startswith(how), tracker.ended)
