"""The seven DICOM Upper Layer PDUs (PS3.8 section 9.3) as immutable values.

``decode(buf, max_pdata_length)`` frames and decodes one PDU from the front of
a buffer; ``pdu.encode()`` gives its bytes.  ``decode(encode(x)) == x`` for
every value the dataclasses can hold with canonical text (no padding).

Decoding never trusts a length: the PDU length in the 6-byte header is checked
against the limit before the body is waited for, and every item length inside
is checked against the bytes that remain before anything is copied.  Anything
malformed raises :class:`~dimsekit.errors.RemoteProtocolError` carrying the
A-ABORT reason (PS3.8 Table 9-26) to send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from dimsekit.ul.items import (
    PresentationContextAC,
    PresentationContextRQ,
    UnknownItem,
    UserInformation,
)

__all__ = [
    "PDUType",
    "AssociateRQ",
    "AssociateAC",
    "AssociateRJ",
    "PDataTF",
    "PresentationDataValue",
    "ReleaseRQ",
    "ReleaseRP",
    "Abort",
    "PDU",
    "decode",
    "encode",
    "DICOM_APPLICATION_CONTEXT",
    "MAX_CONTROL_PDU_LENGTH",
]

#: The one application context name DICOM defines (PS3.7 Annex A.2.1).
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

#: Limit on the length of any PDU other than P-DATA-TF.  An A-ASSOCIATE-RQ with
#: 128 presentation contexts of 20 transfer syntaxes each is about 200 KiB.
MAX_CONTROL_PDU_LENGTH = 1 << 20


class PDUType(IntEnum):
    """PDU-type codes (PS3.8 Table 9-11 .. 9-26, first byte of every PDU)."""

    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateRQ:
    """A-ASSOCIATE-RQ PDU (PS3.8 Table 9-11)."""

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextRQ, ...]
    user_information: UserInformation = field(default_factory=UserInformation)
    application_context_name: str = DICOM_APPLICATION_CONTEXT
    protocol_version: int = 1
    #: variable items of unknown type, kept and re-encoded after the known ones
    unknown_items: tuple[UnknownItem, ...] = ()

    def encode(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateAC:
    """A-ASSOCIATE-AC PDU (PS3.8 Table 9-17).

    The called/calling AE title fields are "reserved, sent with the values
    received in the RQ, not tested"; we keep them as fields.
    """

    called_ae_title: str
    calling_ae_title: str
    presentation_contexts: tuple[PresentationContextAC, ...]
    user_information: UserInformation = field(default_factory=UserInformation)
    application_context_name: str = DICOM_APPLICATION_CONTEXT
    protocol_version: int = 1
    unknown_items: tuple[UnknownItem, ...] = ()

    def encode(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateRJ:
    """A-ASSOCIATE-RJ PDU (PS3.8 Table 9-21): result, source, reason/diag."""

    result: int
    source: int
    reason: int

    def encode(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class PresentationDataValue:
    """One PDV item of a P-DATA-TF PDU (PS3.8 Table 9-23 and Annex E.2).

    ``control`` is the message control header byte: bit 0 set = command
    (else data set), bit 1 set = last fragment.
    """

    context_id: int
    control: int
    data: bytes

    @property
    def is_command(self) -> bool:
        return bool(self.control & 0x01)

    @property
    def is_last(self) -> bool:
        return bool(self.control & 0x02)


@dataclass(frozen=True, slots=True, kw_only=True)
class PDataTF:
    """P-DATA-TF PDU (PS3.8 Table 9-22): one or more PDV items."""

    pdvs: tuple[PresentationDataValue, ...]

    def encode(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRQ:
    """A-RELEASE-RQ PDU (PS3.8 Table 9-24)."""

    def encode(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRP:
    """A-RELEASE-RP PDU (PS3.8 Table 9-25)."""

    def encode(self) -> bytes:
        raise NotImplementedError


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """A-ABORT PDU (PS3.8 Table 9-26): source 0 service-user, 2 service-provider."""

    source: int = 0
    reason: int = 0

    def encode(self) -> bytes:
        raise NotImplementedError


PDU = AssociateRQ | AssociateAC | AssociateRJ | PDataTF | ReleaseRQ | ReleaseRP | Abort


def encode(pdu: PDU) -> bytes:
    """The bytes of ``pdu`` on the wire."""
    return pdu.encode()


def decode(
    buf: bytes | bytearray | memoryview,
    max_pdata_length: int = 0,
    *,
    max_control_length: int = MAX_CONTROL_PDU_LENGTH,
) -> tuple[PDU, int] | None:
    """Decode the PDU at the start of ``buf``.

    :param max_pdata_length: our Maximum Length Received: the largest P-DATA-TF
        PDU length field accepted (0 = no limit).
    :param max_control_length: the largest length field accepted for any other PDU.
    :returns: ``(pdu, number of bytes it took)``, or ``None`` if ``buf`` does not
        yet hold the whole PDU.
    :raises RemoteProtocolError: malformed, unknown PDU type (reason 1), or a
        length above the limit -- raised as soon as the header is complete.
    """
    raise NotImplementedError
