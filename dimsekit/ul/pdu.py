"""The seven DICOM Upper Layer PDUs (PS3.8 section 9.3) as immutable values.

``decode(buf, max_pdata_length)`` frames and decodes one PDU from the front of
a buffer; ``pdu.encode()`` gives its bytes.  ``decode(encode(x)) == x`` for
every value the dataclasses can hold with canonical text (no padding).
:func:`encode_pdata` builds a P-DATA-TF straight from ``(context ID, control,
fragment)`` tuples, without dataclasses: the sending hot path.  Items and
sub-items are encoded and decoded in :mod:`dimsekit.ul.items`.

Decoding never trusts a length: the PDU length in the 6-byte header is checked
against the limit before the body is waited for, and every item length inside
is checked against the bytes that remain before anything is copied.  Anything
malformed raises :class:`~dimsekit.errors.RemoteProtocolError` carrying the
A-ABORT reason (PS3.8 Table 9-26) to send.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple, TypeVar

from dimsekit.errors import LocalProtocolError, RemoteProtocolError
from dimsekit.ul.items import (
    ItemType,
    PresentationContextAC,
    PresentationContextRQ,
    UnknownItem,
    UserInformation,
    decode_application_context,
    decode_presentation_context_ac,
    decode_presentation_context_rq,
    decode_user_information,
    encode_application_context,
    encode_item,
    encode_presentation_context_ac,
    encode_presentation_context_rq,
    encode_user_information,
    iter_items,
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
    "encode_pdata",
    "encode_single_pdata",
    "decode_from",
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


# -- wire layout shared by every PDU ----------------------------------------------
#
# PS3.8 section 9.3.1: every PDU starts with the same 6 bytes, big endian:
#   byte 1     PDU-type
#   byte 2     reserved (sent 00H, not tested)
#   bytes 3-6  PDU-length: bytes from byte 7 to the end of the PDU

_PDU_HEADER = struct.Struct(">BBI")
_PDU_HEADER_SIZE = _PDU_HEADER.size
_unpack_pdu_header = _PDU_HEADER.unpack_from
_P_DATA_TF = int(PDUType.P_DATA_TF)
_A_ASSOCIATE_RQ = int(PDUType.A_ASSOCIATE_RQ)
#: The four bytes after the header of A-ASSOCIATE-RJ (Table 9-21), A-ABORT
#: (Table 9-26) and the reserved field of A-RELEASE-RQ/RP (Tables 9-24, 9-25).
_FOUR_BYTES = struct.Struct(">BBBB")
#: A-ASSOCIATE-RQ/AC bytes 7-74 (PS3.8 Tables 9-11 and 9-17):
#:   7-8 protocol-version, 9-10 reserved, 11-26 called-AE-title,
#:   27-42 calling-AE-title, 43-74 reserved (32 bytes, ``32s`` packs zeros).
_ASSOCIATE_FIXED = struct.Struct(">HH16s16s32s")
#: PDV item head (PS3.8 Table 9-23 and Annex E.2): bytes 1-4 item-length,
#: 5 presentation-context-ID, 6 message control header (first byte of the
#: presentation-data-value field; the item-length counts it and the ID).
_PDV_HEAD = struct.Struct(">IBB")
_PDV_HEAD_SIZE = _PDV_HEAD.size
#: the part of the PDV head that the item-length counts: context ID + control
_PDV_COUNTED = 2
_unpack_pdv_head = _PDV_HEAD.unpack_from
_pack_pdv_head = _PDV_HEAD.pack

# A-ABORT reason/diag. values (PS3.8 Table 9-26) carried by RemoteProtocolError.
_UNRECOGNIZED_PDU = 1
_UNEXPECTED_PARAMETER = 5
_INVALID_PARAMETER = 6

_T = TypeVar("_T")


def _local_errors(method: Callable[..., _T]) -> Callable[..., _T]:
    """Turn the errors of encoding an out-of-range value into LocalProtocolError.

    A field that does not fit its wire width (a context ID of 300, a
    negative reason) makes ``struct`` raise; that is API misuse on our side.
    """

    @functools.wraps(method)
    def wrapper(*args: object, **kwargs: object) -> _T:
        try:
            return method(*args, **kwargs)
        except (struct.error, OverflowError, UnicodeEncodeError, TypeError) as exc:
            raise LocalProtocolError(f"cannot encode PDU: {exc}") from exc

    return wrapper


def _pdu(pdu_type: int, body: bytes) -> bytes:
    """A whole PDU: the 6-byte header, its length taken from ``body``, then ``body``."""
    return _PDU_HEADER.pack(pdu_type, 0, len(body)) + body


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

    @_local_errors
    def encode(self) -> bytes:
        """The bytes of this A-ASSOCIATE-RQ PDU."""
        return _encode_associate(
            PDUType.A_ASSOCIATE_RQ, self, self.presentation_contexts, encode_presentation_context_rq
        )


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

    @_local_errors
    def encode(self) -> bytes:
        """The bytes of this A-ASSOCIATE-AC PDU."""
        return _encode_associate(
            PDUType.A_ASSOCIATE_AC, self, self.presentation_contexts, encode_presentation_context_ac
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AssociateRJ:
    """A-ASSOCIATE-RJ PDU (PS3.8 Table 9-21): result, source, reason/diag."""

    result: int
    source: int
    reason: int

    @_local_errors
    def encode(self) -> bytes:
        """The bytes of this A-ASSOCIATE-RJ PDU."""
        # PS3.8 Table 9-21:  7 reserved, 8 result, 9 source, 10 reason/diag.
        return _pdu(
            PDUType.A_ASSOCIATE_RJ, _FOUR_BYTES.pack(0, self.result, self.source, self.reason)
        )


class PresentationDataValue(NamedTuple):
    """One PDV item of a P-DATA-TF PDU (PS3.8 Table 9-23 and Annex E.2).

    ``control`` is the message control header byte: bit 0 set = command
    (else data set), bit 1 set = last fragment.  A named tuple (every
    received PDU makes one per PDV): ``context_id, control, data = pdv``.

    ``data`` is ``bytes``, or, for a PDU decoded by :func:`decode_from` from a
    memoryview (the receiving hot path), a read-only view of that buffer:
    the fragment without a copy.
    """

    context_id: int
    control: int
    data: bytes | memoryview

    @property
    def is_command(self) -> bool:
        """Bit 0 of the message control header: a command fragment (else data set)."""
        return bool(self.control & 0x01)

    @property
    def is_last(self) -> bool:
        """Bit 1 of the message control header: the last fragment of its command/data set."""
        return bool(self.control & 0x02)


class PDataTF(NamedTuple):
    """P-DATA-TF PDU (PS3.8 Table 9-22): one or more PDV items.

    A named tuple of one field, like :class:`PresentationDataValue`: one is
    made per received PDU."""

    pdvs: tuple[PresentationDataValue, ...]

    def encode(self) -> bytes:
        """The bytes of this P-DATA-TF PDU (see :func:`encode_pdata`)."""
        return encode_pdata((pdv.context_id, pdv.control, pdv.data) for pdv in self.pdvs)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRQ:
    """A-RELEASE-RQ PDU (PS3.8 Table 9-24)."""

    def encode(self) -> bytes:
        """The bytes of an A-RELEASE-RQ PDU (always the same ten)."""
        return _RELEASE_RQ_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleaseRP:
    """A-RELEASE-RP PDU (PS3.8 Table 9-25)."""

    def encode(self) -> bytes:
        """The bytes of an A-RELEASE-RP PDU (always the same ten)."""
        return _RELEASE_RP_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class Abort:
    """A-ABORT PDU (PS3.8 Table 9-26): source 0 service-user, 2 service-provider."""

    source: int = 0
    reason: int = 0

    @_local_errors
    def encode(self) -> bytes:
        """The bytes of this A-ABORT PDU."""
        # PS3.8 Table 9-26:  7 reserved, 8 reserved, 9 source, 10 reason/diag.
        return _pdu(PDUType.A_ABORT, _FOUR_BYTES.pack(0, 0, self.source, self.reason))


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
    :param max_control_length: the largest length field accepted for any other PDU
        (0 = no limit).
    :returns: ``(pdu, number of bytes it took)``, or ``None`` if ``buf`` does not
        yet hold the whole PDU.  ``buf`` may hold more than one PDU.
    :raises RemoteProtocolError: unknown PDU type (reason 1); a length above the
        limit or not the fixed length of its PDU (reason 6) -- both raised as soon
        as the 6-byte header is there; inside the body, a malformed field or
        length (reason 6), a misplaced or repeated item (reason 5), a sub-item
        that does not belong in a presentation context (reason 4).
    """
    if type(buf) is bytes:
        decoded = _decode(buf, 0, max_pdata_length, max_control_length)
    else:
        # bytearray / memoryview: decode through a view, released on every exit
        # (an exception included) so that the caller can resize its bytearray.
        # Slices of the view are only ever taken inside ``bytes(...)``.
        with memoryview(buf) as view:
            if view.ndim == 1 and view.c_contiguous and view.format in _BYTE_FORMATS:
                with view.cast("B") as flat:
                    decoded = _decode(flat, 0, max_pdata_length, max_control_length, True)
            else:
                decoded = _decode(view.tobytes(), 0, max_pdata_length, max_control_length)
    return decoded


def decode_from(
    buf: bytes,
    offset: int,
    max_pdata_length: int = 0,
    *,
    max_control_length: int = MAX_CONTROL_PDU_LENGTH,
) -> tuple[PDU, int] | None:
    """:func:`decode` of the PDU that starts at ``buf[offset]``, without slicing ``buf``.

    The receiving hot path: a chunk read from the transport holds several
    PDUs, each decoded in place.  ``buf`` is ``bytes`` (PDV data are copied
    out as bytes) or a 1-D memoryview of unsigned bytes (PDV data are views
    of it: no copy; the caller must not change the buffer under them).

    :returns: ``(pdu, offset just past it)``, or ``None`` if ``buf`` does not
        yet hold the whole PDU.
    :raises RemoteProtocolError: as :func:`decode`.
    """
    return _decode(buf, offset, max_pdata_length, max_control_length)


_BYTE_FORMATS = frozenset({"B", "b", "c"})


def _decode(
    buf: bytes | memoryview,
    offset: int,
    max_pdata_length: int,
    max_control_length: int,
    copy: bool = False,
) -> tuple[PDU, int] | None:
    """The PDU at ``buf[offset:]`` and the offset just past it (or None: incomplete).

    ``buf`` is ``bytes`` or a 1-D memoryview of unsigned bytes.  PDV data
    are slices of ``buf`` (views of a memoryview), or copies with ``copy``.
    """
    available = len(buf) - offset
    if available < _PDU_HEADER_SIZE:
        return None
    pdu_type, _reserved, length = _unpack_pdu_header(buf, offset)
    size = _PDU_HEADER_SIZE + length

    # -- checks on the header alone, before waiting for the body -------------
    if pdu_type == _P_DATA_TF:
        # The hot path.  max_pdata_length is our Maximum Length Received
        # (PS3.8 D.1): it bounds the PDU-length field of a P-DATA-TF.
        if max_pdata_length and length > max_pdata_length:
            raise _invalid(
                f"P-DATA-TF of {length} bytes, above our maximum length {max_pdata_length}"
            )
        if length < _PDV_HEAD_SIZE:
            raise _invalid(f"P-DATA-TF of {length} bytes cannot hold a PDV item")
        if available < size:
            return None
        end = offset + size
        return _decode_pdata(buf, offset + _PDU_HEADER_SIZE, end, copy), end

    decoder = _BODY_DECODERS.get(pdu_type)
    if decoder is None:
        raise RemoteProtocolError(
            f"unrecognized PDU type {pdu_type:02X}H",
            abort_source=2,
            abort_reason=_UNRECOGNIZED_PDU,
        )
    if max_control_length and length > max_control_length:
        raise _invalid(
            f"{PDUType(pdu_type).name} of {length} bytes, above the limit {max_control_length}"
        )
    fixed = _FIXED_LENGTHS.get(pdu_type)
    if fixed is not None and length != fixed:
        raise _invalid(f"{PDUType(pdu_type).name} with length {length}, must be {fixed}")
    if length < _ASSOCIATE_FIXED.size and pdu_type in _ASSOCIATE_TYPES:
        raise _invalid(f"{PDUType(pdu_type).name} of {length} bytes, shorter than its fixed fields")
    if available < size:
        return None
    # Control PDUs are small (bounded above): one copy of the body, then plain
    # bytes slicing inside it.
    end = offset + size
    body = bytes(buf[offset + _PDU_HEADER_SIZE : end])
    if pdu_type == _A_ASSOCIATE_RQ:
        return _decode_associate_rq_memo(body), end
    return decoder(body), end


def _invalid(message: str) -> RemoteProtocolError:
    """A decoding error: invalid-PDU-parameter value (PS3.8 Table 9-26, reason 6)."""
    return RemoteProtocolError(message, abort_source=2, abort_reason=_INVALID_PARAMETER)


# -- P-DATA-TF (PS3.8 Tables 9-22, 9-23; Annex E.2) -------------------------------


def encode_pdata(pdvs: Iterable[tuple[int, int, bytes | bytearray | memoryview]]) -> bytes:
    """Build a P-DATA-TF PDU straight from ``(context_id, control, data)`` tuples.

    The fast path for the DIMSE fragmenter: no dataclass is created, and each
    fragment is copied exactly once, into the returned bytes.

    :param pdvs: one tuple per PDV item, in order.  ``context_id`` is the
        presentation context ID (odd, 1..255); ``control`` is the message
        control header byte (bit 0 command, bit 1 last fragment -- PS3.8
        Annex E.2); ``data`` is the fragment (a contiguous byte buffer).
        The caller keeps the PDU within the peer's maximum length: each
        PDV item adds 6 bytes to its fragment.
    :returns: the PDU's bytes, header included.
    :raises LocalProtocolError: no PDV at all (a P-DATA-TF carries at least
        one, PS3.8 9.3.5), or a field that does not fit its wire width.
    """
    # PS3.8 Table 9-22:  1 PDU-type 04H, 2 reserved, 3-6 PDU-length,
    #                    7-  presentation-data-value items
    # PS3.8 Table 9-23:  1-4 item-length, 5 presentation-context-ID,
    #                    6-  presentation-data-value = control header + fragment
    parts: list[bytes | bytearray | memoryview] = [b""]  # [0] becomes the PDU header
    length = 0
    pack_head = _pack_pdv_head
    try:
        for context_id, control, data in pdvs:
            size = data.nbytes if type(data) is memoryview else len(data)
            head = pack_head(size + _PDV_COUNTED, context_id, control)
            parts.append(head)
            parts.append(data)
            length += len(head) + size
        if len(parts) == 1:
            raise LocalProtocolError("a P-DATA-TF PDU needs at least one PDV item")
        parts[0] = _PDU_HEADER.pack(PDUType.P_DATA_TF, 0, length)
    except (struct.error, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode P-DATA-TF: {exc}") from exc
    return b"".join(parts)


#: A P-DATA-TF of one PDV item: PDU header (Table 9-22) then PDV head (Table 9-23).
_SINGLE_PDATA_HEAD = struct.Struct(">BBIIBB")


def encode_single_pdata(context_id: int, control: int, data: bytes | bytearray | memoryview) -> bytes:
    """A P-DATA-TF PDU carrying one PDV item: :func:`encode_pdata` of one
    ``(context_id, control, data)`` tuple, built with one ``struct`` call.

    The fast path of a DIMSE message's usual PDU (a command set, or one data
    set fragment); ``data`` is copied once, into the returned bytes.

    :raises LocalProtocolError: a field that does not fit its wire width.
    """
    size = data.nbytes if type(data) is memoryview else len(data)
    try:
        head = _SINGLE_PDATA_HEAD.pack(
            PDUType.P_DATA_TF, 0, size + _PDV_HEAD_SIZE, size + _PDV_COUNTED, context_id, control
        )
    except (struct.error, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode P-DATA-TF: {exc}") from exc
    return head + data


def _decode_pdata(buf: bytes | memoryview, pos: int, end: int, copy: bool = False) -> PDataTF:
    """The PDV items of the P-DATA-TF whose items are ``buf[pos:end]`` (length already checked).

    Each PDV's data is ``buf[start:stop]``: a bytes slice of bytes (one copy),
    a view of a memoryview (none) -- unless ``copy``: a memoryview over a
    buffer its owner will reuse (decode's bytearray), whose fragments must
    outlive it.
    """
    pdvs: list[PresentationDataValue] = []
    _append_pdvs(buf, pos, end, copy, pdvs.append)
    return tuple.__new__(PDataTF, (tuple(pdvs),))


def _append_pdvs(
    buf: bytes | memoryview, pos: int, end: int, copy: bool, append: Callable[[PresentationDataValue], object]
) -> None:
    """Pass each PDV item of ``buf[pos:end]`` (a P-DATA-TF's items) to ``append``."""
    unpack_head = _unpack_pdv_head
    make = tuple.__new__
    pdv = PresentationDataValue
    while pos < end:
        if end - pos < _PDV_HEAD_SIZE:
            raise _invalid(f"P-DATA-TF: {end - pos} trailing byte(s), too few for a PDV item")
        item_length, context_id, control = unpack_head(buf, pos)
        # The item-length counts the context ID and control header (2 bytes),
        # so less than 2 is malformed; more than what is left is a lie.
        if item_length < _PDV_COUNTED or item_length > end - pos - 4:
            raise _invalid(
                f"P-DATA-TF: PDV item length {item_length}, with {end - pos - 4} bytes left"
            )
        start = pos + _PDV_HEAD_SIZE
        pos += 4 + item_length
        data = buf[start:pos]
        if copy:
            data = bytes(data)
        append(make(pdv, (context_id, control, data)))


def extend_pdata(buf: memoryview, offset: int, max_pdata_length: int, pdvs: list[PresentationDataValue]) -> int:
    """The receiving hot path of an established association: if a whole
    P-DATA-TF PDU within its length limit starts at ``buf[offset]``, append
    its PDV items (views of ``buf``) to ``pdvs`` and return the offset just
    past it; an invalid one appends none of its items.  Otherwise -1, and nothing appended: another kind of PDU, one
    not all there yet, or one over ``max_pdata_length`` -- for
    :func:`decode_from`, which says what is wrong with it.

    :raises RemoteProtocolError: its PDV items do not add up (as :func:`decode`).
    """
    if len(buf) - offset < _PDU_HEADER_SIZE:
        return -1
    pdu_type, _reserved, length = _unpack_pdu_header(buf, offset)
    end = offset + _PDU_HEADER_SIZE + length
    if (
        pdu_type != _P_DATA_TF
        or end > len(buf)
        or length < _PDV_HEAD_SIZE
        or (max_pdata_length and length > max_pdata_length)
    ):
        return -1
    before = len(pdvs)
    try:
        _append_pdvs(buf, offset + _PDU_HEADER_SIZE, end, False, pdvs.append)
    except RemoteProtocolError:
        del pdvs[before:]  # none of an invalid PDU's items
        raise
    return end


# -- A-ASSOCIATE-RQ / -AC (PS3.8 Tables 9-11 and 9-17) ----------------------------
#
# Both have the same layout:
#   1       PDU-type (01H RQ, 02H AC)
#   2       reserved
#   3-6     PDU-length
#   7-8     protocol-version (bit 0 set = version 1)
#   9-10    reserved
#   11-26   called-AE-title (16 chars, space padded; AC: reserved, echoed from RQ)
#   27-42   calling-AE-title (idem)
#   43-74   reserved
#   75-     variable items: one application context (10H), presentation
#           contexts (20H in the RQ, 21H in the AC), one user information (50H)


def _encode_ae_title(title: str) -> bytes:
    """An AE title field: 16 bytes, padded with spaces (PS3.8 Table 9-11, bytes 11-42)."""
    raw = title.encode("latin-1")
    if len(raw) > 16:
        raise LocalProtocolError(f"AE title {title!r} is longer than 16 characters")
    return raw.ljust(16, b" ")


def _decode_ae_title(raw: bytes) -> str:
    """An AE title from its field: leading and trailing spaces are not significant."""
    return raw.decode("latin-1").strip(" ")


def _encode_associate(
    pdu_type: int,
    pdu: AssociateRQ | AssociateAC,
    contexts: Iterable[object],
    encode_context: Callable[..., bytes],
) -> bytes:
    """The bytes of an A-ASSOCIATE-RQ or -AC.

    Items go in the order of PS3.8 9.3.2: application context, presentation
    contexts, user information; then any unknown items kept from decoding.
    """
    parts = [
        _ASSOCIATE_FIXED.pack(
            pdu.protocol_version,
            0,
            _encode_ae_title(pdu.called_ae_title),
            _encode_ae_title(pdu.calling_ae_title),
            b"",
        ),
        encode_application_context(pdu.application_context_name),
    ]
    parts.extend(encode_context(pc) for pc in contexts)
    parts.append(encode_user_information(pdu.user_information))
    parts.extend(encode_item(item.item_type, bytes(item.data)) for item in pdu.unknown_items)
    return _pdu(pdu_type, b"".join(parts))


def _decode_associate(body: bytes, rq: bool) -> AssociateRQ | AssociateAC:
    """An A-ASSOCIATE-RQ (``rq``) or -AC from its body (bytes 7 to the end).

    Variable items are accepted in any order.  The application context item
    is required (reason 6 if missing) and may appear once, as may the user
    information item (reason 5 for a second one); a missing user information
    item decodes as an empty one.  Presentation context items of the other
    PDU's kind, or bare sub-items (30H, 40H), are unexpected (reason 5).
    Item types we do not know are kept as :class:`UnknownItem`.
    """
    name = "A-ASSOCIATE-RQ" if rq else "A-ASSOCIATE-AC"
    if rq:
        context_type = ItemType.PRESENTATION_CONTEXT_RQ
        decode_context: Callable[[bytes], object] = decode_presentation_context_rq
        misplaced = _MISPLACED_IN_RQ
    else:
        context_type = ItemType.PRESENTATION_CONTEXT_AC
        decode_context = decode_presentation_context_ac
        misplaced = _MISPLACED_IN_AC

    version, _reserved, called, calling, _reserved32 = _ASSOCIATE_FIXED.unpack_from(body, 0)
    application_context: str | None = None
    user_information: UserInformation | None = None
    contexts = []
    unknown = []
    for item_type, value in iter_items(body, _ASSOCIATE_FIXED.size, where=name):
        if item_type == context_type:
            contexts.append(decode_context(value))
        elif item_type == ItemType.APPLICATION_CONTEXT:
            if application_context is not None:
                raise _unexpected(f"{name}: more than one application context item")
            application_context = decode_application_context(value)
        elif item_type == ItemType.USER_INFORMATION:
            if user_information is not None:
                raise _unexpected(f"{name}: more than one user information item")
            user_information = decode_user_information(value)
        elif item_type in misplaced:
            raise _unexpected(f"{name}: item {item_type:02X}H does not belong here")
        else:
            unknown.append(UnknownItem(item_type=item_type, data=value))
    if application_context is None:
        raise _invalid(f"{name}: no application context item")

    cls = AssociateRQ if rq else AssociateAC
    return cls(
        called_ae_title=_decode_ae_title(called),
        calling_ae_title=_decode_ae_title(calling),
        presentation_contexts=tuple(contexts),  # type: ignore[arg-type]
        user_information=user_information if user_information is not None else UserInformation(),
        application_context_name=application_context,
        protocol_version=version,
        unknown_items=tuple(unknown),
    )


# -- A-ASSOCIATE-RQ memo ---------------------------------------------------------
#
# A node is called again and again by the same peers (a modality, a router, a
# monitoring probe), and each sends, byte for byte, the A-ASSOCIATE-RQ it sent
# last time.  Decoding is a pure function of the bytes and the decoded PDU is
# an immutable value, so the same bytes may share one decoded value: the memo
# below maps a request's body to it.  It stays small whatever the peers send:
# bodies above _RQ_MEMO_MAX_BODY bytes are never kept, and past
# _RQ_MEMO_ENTRIES entries the oldest goes first.  A malformed request raises
# as before and is never kept.  Sharing the value also lets the acceptor's
# negotiation cache (negotiation.NegotiationCache) recognise a request by
# identity, without hashing it field by field.

#: the largest A-ASSOCIATE-RQ body kept in the memo (one with 40 contexts of
#: 3 transfer syntaxes each is about 5 KiB)
_RQ_MEMO_MAX_BODY = 16384
#: how many different requests the memo keeps
_RQ_MEMO_ENTRIES = 64
_rq_memo: dict[bytes, AssociateRQ] = {}


def _decode_associate_rq_memo(body: bytes) -> AssociateRQ:
    """:func:`_decode_associate` of an A-ASSOCIATE-RQ body, through the memo."""
    rq = _rq_memo.get(body)
    if rq is not None:
        return rq
    rq = _decode_associate(body, rq=True)  # type: ignore[assignment]
    if len(body) <= _RQ_MEMO_MAX_BODY:
        if len(_rq_memo) >= _RQ_MEMO_ENTRIES:
            del _rq_memo[next(iter(_rq_memo))]  # the oldest entry (dicts keep insertion order)
        _rq_memo[body] = rq  # type: ignore[assignment]
    return rq  # type: ignore[return-value]


def _unexpected(message: str) -> RemoteProtocolError:
    """A decoding error: unexpected-PDU parameter (PS3.8 Table 9-26, reason 5)."""
    return RemoteProtocolError(message, abort_source=2, abort_reason=_UNEXPECTED_PARAMETER)


_MISPLACED_IN_RQ = frozenset(
    {ItemType.PRESENTATION_CONTEXT_AC, ItemType.ABSTRACT_SYNTAX, ItemType.TRANSFER_SYNTAX}
)
_MISPLACED_IN_AC = frozenset(
    {ItemType.PRESENTATION_CONTEXT_RQ, ItemType.ABSTRACT_SYNTAX, ItemType.TRANSFER_SYNTAX}
)


# -- fixed-length PDUs -------------------------------------------------------------


def _decode_associate_rj(body: bytes) -> AssociateRJ:
    # PS3.8 Table 9-21:  7 reserved, 8 result, 9 source, 10 reason/diag.
    _reserved, result, source, reason = _FOUR_BYTES.unpack(body)
    return AssociateRJ(result=result, source=source, reason=reason)


def _decode_abort(body: bytes) -> Abort:
    # PS3.8 Table 9-26:  7 reserved, 8 reserved, 9 source, 10 reason/diag.
    _reserved, _reserved2, source, reason = _FOUR_BYTES.unpack(body)
    return Abort(source=source, reason=reason)


_RELEASE_RQ = ReleaseRQ()
_RELEASE_RP = ReleaseRP()
# PS3.8 Tables 9-24 and 9-25:  7-10 reserved (00000000H).
_RELEASE_RQ_BYTES = _pdu(PDUType.A_RELEASE_RQ, bytes(_FOUR_BYTES.size))
_RELEASE_RP_BYTES = _pdu(PDUType.A_RELEASE_RP, bytes(_FOUR_BYTES.size))

#: PDUs whose PDU-length is fixed by the standard.
_FIXED_LENGTHS = {
    PDUType.A_ASSOCIATE_RJ: _FOUR_BYTES.size,
    PDUType.A_RELEASE_RQ: _FOUR_BYTES.size,
    PDUType.A_RELEASE_RP: _FOUR_BYTES.size,
    PDUType.A_ABORT: _FOUR_BYTES.size,
}
_ASSOCIATE_TYPES = frozenset({PDUType.A_ASSOCIATE_RQ, PDUType.A_ASSOCIATE_AC})

#: body decoders of every PDU but P-DATA-TF (decoded inline, the hot path)
_BODY_DECODERS: dict[int, Callable[[bytes], PDU]] = {
    PDUType.A_ASSOCIATE_RQ: functools.partial(_decode_associate, rq=True),
    PDUType.A_ASSOCIATE_AC: functools.partial(_decode_associate, rq=False),
    PDUType.A_ASSOCIATE_RJ: _decode_associate_rj,
    PDUType.A_RELEASE_RQ: lambda body: _RELEASE_RQ,
    PDUType.A_RELEASE_RP: lambda body: _RELEASE_RP,
    PDUType.A_ABORT: _decode_abort,
}
