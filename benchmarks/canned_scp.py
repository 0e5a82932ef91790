"""The cheapest possible "server": canned answers on a blocking socket.

    python benchmarks/canned_scp.py PORT

It answers any A-ASSOCIATE-RQ with the same A-ASSOCIATE-AC (context 1,
Verification, Implicit VR LE accepted), any P-DATA-TF with the same C-ECHO-RSP
(Message ID Being Responded To 1, Success) and A-RELEASE-RQ with A-RELEASE-RP,
one connection at a time, no parsing beyond PDU framing.  It is no DICOM
implementation: it is the reference that says how fast the benchmark's own
client and the loopback can go, so that a server's figure can be read as
"this far from the ceiling".
"""

from __future__ import annotations

import socket
import sys

from dimsekit.dimse.codec import encode_command
from dimsekit.ul.items import (
    ImplementationClassUID,
    MaximumLength,
    PresentationContextAC,
    UserInformation,
)
from dimsekit.ul.pdu import AssociateAC, encode_pdata

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
RELEASE_RP = bytes.fromhex("06 00 00000004 00000000")


def canned() -> tuple[bytes, bytes]:
    ac = AssociateAC(
        called_ae_title="ANY-SCP",
        calling_ae_title="BENCH",
        presentation_contexts=(PresentationContextAC(context_id=1, result=0, transfer_syntax=IMPLICIT_VR_LE),),
        user_information=UserInformation(
            items=(MaximumLength(maximum_length=16384), ImplementationClassUID(uid="1.2.826.0.1.3680043.9.7433.1"))
        ),
    ).encode()
    rsp = encode_command(
        {
            "CommandField": 0x8030,
            "MessageIDBeingRespondedTo": 1,
            "AffectedSOPClassUID": VERIFICATION,
            "CommandDataSetType": 0x0101,
            "Status": 0,
        }
    )
    return ac, encode_pdata([(1, 0x03, rsp)])


def serve(conn: socket.socket, ac: bytes, rsp: bytes) -> None:
    buf = bytearray()
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        buf += chunk
        while len(buf) >= 6:
            end = 6 + int.from_bytes(buf[2:6], "big")
            if len(buf) < end:
                break
            kind = buf[0]
            del buf[:end]
            if kind == 0x01:
                conn.sendall(ac)
            elif kind == 0x04:
                conn.sendall(rsp)
            elif kind == 0x05:
                conn.sendall(RELEASE_RP)
            else:
                return


def main() -> None:
    port = int(sys.argv[1])
    ac, rsp = canned()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        while True:
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    serve(conn, ac, rsp)
                except OSError:
                    pass


if __name__ == "__main__":
    main()
