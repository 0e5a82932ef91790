"""A corpus of A-ASSOCIATE-RQs shaped like real devices' (LESSONS.md #18), sent to a twistd node.

Each request is rebuilt here byte by byte -- not with dimsekit's encoder --
from what a public report decoded of a device's request: its Implementation
Class UID and Version Name, calling AE title, Maximum Length, the contexts it
proposed and their role selection.  Those reports are where other toolkits
failed those devices (a timeout on the request, a retrieve that could not
work), so each one checks what the node answers, context by context, and
that the association then works.  A device whose request fails here gets its
entry added, with the report it came from.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest

from tests.interop.conftest import (
    _HEADER,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RQ,
    APPLICATION_CONTEXT,
    RELEASE_RP,
    RELEASE_RQ,
    RawPeer,
    _item,
    _items,
    echo_rq_pdata,
    echo_rsp_status,
)

pytestmark = pytest.mark.interop

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG2000 = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
MPEG2_MPML = "1.2.840.10008.1.2.4.100"

#: PS3.8 Table 9-18: results of a presentation context in the A-ASSOCIATE-AC
ACCEPTED, USER_REJECTION, ABSTRACT_SYNTAX_NOT_SUPPORTED = 0, 1, 3


@dataclass(frozen=True)
class Device:
    name: str
    #: the public report the request's parameters come from
    source: str
    calling: str
    implementation_uid: str
    implementation_version: str
    max_length: int
    #: (context ID, abstract syntax, proposed transfer syntaxes)
    contexts: list[tuple[int, str, list[str]]]
    #: SCP/SCU Role Selection items: (SOP class, SCU role, SCP role)
    roles: list[tuple[str, int, int]] = field(default_factory=list)
    #: context ID -> (result, transfer syntax when accepted)
    expected: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    #: SOP class -> (SCU role, SCP role) in the A-ASSOCIATE-AC
    expected_roles: dict[str, tuple[int, int]] = field(default_factory=dict)


DEVICES = [
    Device(
        # A perimeter whose request timed out on another toolkit's SCP: every
        # context proposed with both roles, Implicit VR only, a lower-case AE title.
        name="ophthalmic perimeter (ZEISS HFA3)",
        source="Enet4/dicom-rs issue 732",
        calling="hfa3840",
        implementation_uid="1.2.276.0.75.2.5.20",
        implementation_version="NIM-2.11.0",
        max_length=16384,
        contexts=[
            (1, VERIFICATION, [IMPLICIT]),
            (3, "1.2.840.10008.5.1.4.1.1.66", [IMPLICIT]),  # Raw Data Storage
            (5, "1.2.840.10008.5.1.4.1.1.104.1", [IMPLICIT]),  # Encapsulated PDF Storage
            (7, "1.2.840.10008.5.1.4.1.1.77.1.5.1", [IMPLICIT]),  # Ophthalmic Photography 8 Bit
        ],
        roles=[(uid, 1, 1) for uid in (VERIFICATION, "1.2.840.10008.5.1.4.1.1.66",
                                       "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.77.1.5.1")],
        expected={1: (ACCEPTED, IMPLICIT), 3: (ACCEPTED, IMPLICIT), 5: (ACCEPTED, IMPLICIT), 7: (ACCEPTED, IMPLICIT)},
        # It may be SCU of all; SCP (receive C-STOREs: a C-GET's) of the storage classes,
        # which the node can send -- not of Verification, which it never requests.
        expected_roles={VERIFICATION: (1, 0), "1.2.840.10008.5.1.4.1.1.66": (1, 1),
                        "1.2.840.10008.5.1.4.1.1.104.1": (1, 1), "1.2.840.10008.5.1.4.1.1.77.1.5.1": (1, 1)},
    ),
    Device(
        # An ultrasound scanner querying the worklist, with an odd Maximum Length.
        name="ultrasound scanner (Medison), worklist",
        source="pydicom/pynetdicom issue 791",
        calling="MEDISON",
        implementation_uid="1.2.410.200001.101.11.801",
        implementation_version="V8",
        max_length=16000,
        contexts=[(1, "1.2.840.10008.5.1.4.31", [IMPLICIT])],  # Modality Worklist Information Model - FIND
        expected={1: (ACCEPTED, IMPLICIT)},
    ),
    Device(
        # A CT scanner storing, Explicit VR Little Endian only, Maximum Length 28672.
        name="CT scanner (Siemens)",
        source="ClearCanvas/ClearCanvas issue 175",
        calling="AN_CT38256",
        implementation_uid="1.3.12.2.1107.5.1.4",
        implementation_version="SIEMENS_S5VA47A",
        max_length=28672,
        contexts=[(1 + 2 * i, uid, [EXPLICIT]) for i, uid in enumerate((
            "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
            "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
            "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
            "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image Storage
            "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
            "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
            "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
            "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image Storage
        ))],
        expected={1 + 2 * i: (ACCEPTED, EXPLICIT) for i in range(8)},
    ),
    Device(
        # A viewer retrieving with C-GET that sends no role selection at all: the
        # node must accept its storage context as for any sender (it cannot send
        # it C-STOREs on it: its C-GETs' sub-operations fail, tests/plugins/test_qr_plugin.py).
        name="viewer (Horos/OsiriX), C-GET without role selection",
        source="pydicom/pynetdicom issue 543, horosproject/horos issue 592",
        calling="HOROS",
        implementation_uid="1.2.276.0.7238010.5.0.3.5.4",
        implementation_version="OSIRIX",
        max_length=16384,
        contexts=[
            (1, "1.2.840.10008.5.1.4.1.2.2.3", [EXPLICIT, IMPLICIT]),  # Study Root Q/R - GET
            (3, "1.2.840.10008.5.1.4.1.1.2", [EXPLICIT, IMPLICIT, EXPLICIT_BE, JPEG2000_LOSSLESS, JPEG2000,
                                              JPEG_LOSSLESS_SV1, JPEG_BASELINE, JPEG_EXTENDED, RLE, MPEG2_MPML]),
        ],
        expected={1: (ACCEPTED, EXPLICIT), 3: (ACCEPTED, EXPLICIT)},
    ),
    Device(
        # A print SCU proposing only the SCP role for itself (SCU 0, SCP 1) for
        # Verification and the print meta SOP classes: no role left for the node
        # (it would have to be the SCU); those contexts cannot be used.
        name="print SCU proposing the SCP role only (fo-dicom)",
        source="fo-dicom/fo-dicom issue 1831",
        calling="MYAE",
        implementation_uid="1.3.6.1.4.1.30071.8",
        implementation_version="fo-dicom 5.0.3",
        max_length=262144,
        contexts=[
            (1, VERIFICATION, [IMPLICIT]),
            (3, "1.2.840.10008.5.1.1.9", [IMPLICIT]),  # Basic Grayscale Print Management Meta
            (5, "1.2.840.10008.5.1.1.18", [IMPLICIT]),  # Basic Color Print Management Meta
        ],
        roles=[(VERIFICATION, 0, 1), ("1.2.840.10008.5.1.1.9", 0, 1), ("1.2.840.10008.5.1.1.18", 0, 1)],
        # (color print is not served at all: "abstract syntax not supported" comes first)
        expected={1: (USER_REJECTION, None), 3: (USER_REJECTION, None), 5: (ABSTRACT_SYNTAX_NOT_SUPPORTED, None)},
        expected_roles={VERIFICATION: (0, 0), "1.2.840.10008.5.1.1.9": (0, 0), "1.2.840.10008.5.1.1.18": (0, 0)},
    ),
]


def request_bytes(device: Device, called: str = "DIMSEKIT") -> bytes:
    """The device's A-ASSOCIATE-RQ (PS3.8 Tables 9-11 to 9-16, D.1-1, D.3-1, D.3-2, D.3-9), by hand."""
    contexts = b"".join(
        _item(0x20, bytes([cid, 0, 0, 0]) + _item(0x30, abstract.encode())
              + b"".join(_item(0x40, ts.encode()) for ts in syntaxes))
        for cid, abstract, syntaxes in device.contexts
    )
    roles = b"".join(
        _item(0x54, struct.pack(">H", len(uid)) + uid.encode() + bytes([scu, scp])) for uid, scu, scp in device.roles
    )
    user = _item(0x50, _item(0x51, struct.pack(">I", device.max_length))
                 + _item(0x52, device.implementation_uid.encode()) + roles
                 + _item(0x55, device.implementation_version.encode()))
    body = (struct.pack(">HH", 1, 0) + called.ljust(16).encode() + device.calling.ljust(16).encode() + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT.encode()) + contexts + user)
    return _HEADER.pack(A_ASSOCIATE_RQ, 0, len(body)) + body


def read_ac(ac: bytes) -> tuple[dict[int, tuple[int, str | None]], dict[str, tuple[int, int]], int]:
    """(context ID -> (result, transfer syntax or None), SOP class -> roles, Maximum Length) of an A-ASSOCIATE-AC."""
    assert ac[0] == A_ASSOCIATE_AC, f"expected an A-ASSOCIATE-AC, got {ac.hex()}"
    contexts: dict[int, tuple[int, str | None]] = {}
    roles: dict[str, tuple[int, int]] = {}
    max_length = -1
    for kind, value in _items(ac, 74):
        if kind == 0x21:
            syntaxes = [v.decode().rstrip("\0") for k, v in _items(value, 4) if k == 0x40]
            contexts[value[0]] = (value[2], syntaxes[0] if syntaxes and value[2] == ACCEPTED else None)
        elif kind == 0x50:
            for sub, sub_value in _items(value, 0):
                if sub == 0x51:
                    (max_length,) = struct.unpack(">I", sub_value)
                elif sub == 0x54:
                    (length,) = struct.unpack_from(">H", sub_value)
                    uid = sub_value[2 : 2 + length].decode().rstrip("\0")
                    roles[uid] = (sub_value[2 + length], sub_value[3 + length])
    return contexts, roles, max_length


@pytest.mark.parametrize("device", DEVICES, ids=[d.name for d in DEVICES])
def test_the_node_answers_a_device_shaped_request(shared_node, device):
    with RawPeer.connect(shared_node.port) as peer:
        peer.send(request_bytes(device))
        contexts, roles, max_length = read_ac(peer.recv_pdu())
        assert contexts == device.expected
        assert roles == device.expected_roles
        assert max_length == 16384  # ours, whatever the device's
        if contexts.get(1, (None,))[0] == ACCEPTED and device.contexts[0][1] == VERIFICATION:
            peer.send(echo_rq_pdata(7, context_id=1))
            assert echo_rsp_status(peer.recv_pdu(), 7) == 0x0000
        peer.send(RELEASE_RQ)
        assert peer.recv_pdu() == RELEASE_RP
    line = shared_node.wait_log(rf"calling={device.calling} .*ended: released by the peer")
    assert "Traceback" not in shared_node.log_text()
    assert "called=DIMSEKIT" in line
