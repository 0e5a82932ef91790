"""A twistd node fed damaged A-ASSOCIATE-RQs (seeded), byte by byte over raw sockets.

Each request is built from the items a real one carries -- application context,
presentation contexts (abstract syntax, transfer syntaxes), user information
(maximum length, implementation class UID and version, asynchronous operations
window, role selection, SOP class extended and common extended negotiation, user
identity) -- then damaged: lengths that lie, items doubled, dropped, unknown or out
of order, empty or junk UIDs and AE titles, context IDs even, zero or repeated,
hundreds of contexts, reserved fields set, the PDU cut short or followed by junk.
What must hold for each: the node answers within its timers (A-ASSOCIATE-AC, -RJ,
or A-ABORT, or it closes the connection) and, when it accepted, a C-ECHO on a
Verification context it accepted works and a release ends it; no traceback in its
log, no control byte in it; DCMTK echoscu after.  The codec's own property tests
(tests/ul/test_pdu_properties.py) check decoding; this is the node around it.
Seeds 1 and 2 on every run; others with ``DIMSEKIT_FUZZ_SEEDS=11,12`` in the environment.
"""

from __future__ import annotations

import os
import random
import re
import struct

import pytest

from tests.interop.conftest import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    APPLICATION_CONTEXT,
    RELEASE_RP,
    RELEASE_RQ,
    PeerClosed,
    RawPeer,
    _finish_node,
    echo_rq_pdata,
    echo_rsp_status,
    start_node,
)

pytestmark = pytest.mark.interop

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT, EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
REQUESTS = 150


class Requests:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.lies = 0.0  # how often an item's length lies, chosen per request

    def junk(self) -> bytes:
        r = self.r
        return r.choice([b"", b"\x00", b"1.2.", b"..", b"1" * 65, bytes(r.randrange(256) for _ in range(r.randrange(1, 40))),
                         b"\x1b[31m", "Müller".encode()])

    def uid(self, good: str) -> bytes:
        return good.encode() if self.r.random() > 0.1 else self.junk()

    def item(self, kind: int, value: bytes) -> bytes:
        length = len(value)
        if self.r.random() < self.lies:
            length = self.r.choice([length + 1, max(0, length - 1), 0xFFFF])  # a lie
        return struct.pack(">BBH", kind, 0 if self.r.random() > 0.02 else 0xFF, length) + value

    def context(self, context_id: int) -> bytes:
        r = self.r
        abstract = self.item(0x30, self.uid(r.choice([VERIFICATION, VERIFICATION, CT, FIND, "1.2.3.4"])))
        syntaxes = b"".join(self.item(0x40, self.uid(r.choice([IMPLICIT, EXPLICIT, "1.2.840.10008.1.2.4.50"])))
                            for _ in range(r.choice([0, 1, 1, 2, 3])))
        parts = [abstract, syntaxes]
        if r.random() < 0.05:
            parts.reverse()
        return self.item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0) + b"".join(parts))

    def user_information(self) -> bytes:
        r = self.r
        subs = [
            self.item(0x51, struct.pack(">I", r.choice([0, 1, 16384, 2**32 - 1]))),
            self.item(0x52, self.uid("1.2.826.0.1.3680043.8.498.1")),
        ]
        if r.random() < 0.3:
            subs.append(self.item(0x55, r.choice([b"FUZZ_1", b"", b"x" * 17, self.junk()])))
        if r.random() < 0.3:
            subs.append(self.item(0x53, struct.pack(">HH", r.randrange(3), r.randrange(3))))
        if r.random() < 0.3:
            uid = self.uid(CT)
            subs.append(self.item(0x54, struct.pack(">H", len(uid)) + uid + bytes([r.randrange(3), r.randrange(3)])))
        if r.random() < 0.2:
            uid = self.uid(FIND)
            subs.append(self.item(0x56, struct.pack(">H", len(uid)) + uid + self.junk()[:8]))
        if r.random() < 0.2:
            uid = self.uid(CT)
            related = struct.pack(">H", 4) + b"1.23"  # one related general SOP class
            subs.append(self.item(0x57, struct.pack(">H", len(uid)) + uid + struct.pack(">H", 3) + b"1.2"
                                  + struct.pack(">H", r.choice([len(related), len(related), 0, 99])) + related))
        if r.random() < 0.2:
            primary = self.junk()
            subs.append(self.item(0x58, bytes([r.choice([1, 2, 3, 4, 5, 9]), r.randrange(2)])
                                  + struct.pack(">H", len(primary)) + primary + struct.pack(">H", 0)))
        if r.random() < 0.1:
            subs.append(self.item(r.choice([0x50, 0x5F, 0xFF]), self.junk()))
        if r.random() < 0.1:
            r.shuffle(subs)
        if r.random() < 0.05:
            subs.append(subs[0])
        return self.item(0x50, b"".join(subs))

    def request(self) -> tuple[bytes, bool]:
        """The PDU's bytes, and whether anything follows the PDU (junk the node then reads as
        the next PDU: an A-ABORT for an unrecognized PDU is the right answer to it)."""
        r = self.r
        self.lies = r.choice([0.0, 0.0, 0.002, 0.03])
        ids = [1 + 2 * i for i in range(r.choice([1, 1, 2, 3, 5, 128, 200]))]
        if r.random() < 0.1:
            ids[r.randrange(len(ids))] = r.choice([0, 2, 255, ids[0]])
        items = [self.item(0x10, self.uid(APPLICATION_CONTEXT))] + [self.context(i % 256) for i in ids]
        items.append(self.user_information())
        if r.random() < 0.05:
            items.pop(r.randrange(len(items)))
        if r.random() < 0.05:
            items.insert(r.randrange(len(items)), self.item(r.choice([0x11, 0x21, 0x60, 0xFF]), self.junk()))
        titles = [r.choice([b"DIMSEKIT", b"ANY", b"", b"\x00" * 16, b" " * 16]) if r.random() < 0.1 else b"DIMSEKIT",
                  r.choice([b"FUZZ", b"", b"\x1b[2J", b"a\\b", b"\xff" * 16]) if r.random() < 0.1 else b"FUZZ"]
        header = struct.pack(">H", r.choice([1, 1, 1, 3, 0])) + (b"\x00\x00" if r.random() > 0.02 else b"\x12\x34")
        body = header + b"".join(t[:16].ljust(16, b" ") for t in titles) + bytes(32) + b"".join(items)
        pdu = struct.pack(">BBI", 0x01, 0, len(body)) + body
        trailing = b""
        if r.random() < 0.05:
            pdu = pdu[: r.randrange(6, len(pdu))]  # cut short: the node's ARTIM timer ends it
        elif r.random() < 0.05:
            trailing = self.junk()  # bytes after the PDU
        return pdu + trailing, bool(trailing)


def accepted_verification(ac: bytes) -> int | None:
    """The ID of a presentation context the A-ASSOCIATE-AC accepted, if any (its result 0)."""
    offset = 6 + 68
    while offset + 4 <= len(ac):
        kind, _, length = struct.unpack_from(">BBH", ac, offset)
        if kind == 0x21 and ac[offset + 6] == 0:
            return ac[offset + 4]
        offset += 4 + length
    return None


@pytest.mark.parametrize("seed", [int(seed) for seed in os.environ.get("DIMSEKIT_FUZZ_SEEDS", "1,2").split(",")])
def test_damaged_association_requests_are_answered(tmp_path, seed):
    node = start_node(tmp_path, config="[limits]\nartim_timeout = 0.5\nacse_timeout = 2\n")
    requests = Requests(seed)
    outcomes: dict[str, int] = {}
    try:
        for _ in range(REQUESTS):
            pdu, trailing = requests.request()
            with RawPeer.connect(node.port) as peer:
                peer.send(pdu)
                try:
                    answer = peer.recv_pdu(timeout=5)
                except PeerClosed:
                    outcome = "closed"
                else:
                    kind = answer[0]
                    assert kind in (A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT), answer.hex()
                    outcome = {A_ASSOCIATE_AC: "accepted", A_ASSOCIATE_RJ: "rejected", A_ABORT: "aborted"}[kind]
                    context = accepted_verification(answer) if kind == A_ASSOCIATE_AC else None
                    if context is not None and context % 2:
                        # the contexts' abstract syntaxes are not in the AC: try the echo there,
                        # a context of another SOP class answers it with a failure or an abort
                        peer.send(echo_rq_pdata(1, context))
                        reply = peer.recv_pdu(timeout=5)
                        if reply[0] == 0x04:
                            echo_rsp_status(reply, 1)
                            outcome = "echoed"
                    if kind == A_ASSOCIATE_AC:
                        peer.send(RELEASE_RQ)
                        try:
                            ended = peer.recv_pdu(timeout=5)
                        except PeerClosed:
                            ended = b"closed"
                        assert ended == RELEASE_RP or trailing, ended.hex()  # junk first: any end will do
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        assert outcomes.get("echoed", 0) + outcomes.get("accepted", 0) > 0, outcomes
        assert outcomes.get("rejected", 0) + outcomes.get("aborted", 0) + outcomes.get("closed", 0) > 0, outcomes
        node.assert_healthy()
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", node.log_text()), "control bytes in the log"
    finally:
        _finish_node(node)
