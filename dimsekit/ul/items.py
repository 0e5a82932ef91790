"""Variable items of the association PDUs and the user-information sub-items.

PS3.8 section 9.3.2 (A-ASSOCIATE-RQ items), 9.3.3 (A-ASSOCIATE-AC items) and
Annex D (user-information sub-items), plus PS3.7 Annex D.3.3 (the extended
negotiation sub-items: asynchronous operations window, role selection, SOP
class extended / common extended negotiation, user identity).

Every item is a frozen value.  Items of a type we do not know are kept as
:class:`UnknownItem`, byte for byte, so a PDU round-trips exactly.

Text fields hold the value without padding: UIDs lose a trailing NUL (some
implementations pad UIDs to even length with one), AE titles lose leading and
trailing spaces (PS3.8 says they are not significant).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from dimsekit.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ItemType",
    "PresentationContextRQ",
    "PresentationContextAC",
    "PresentationContextResult",
    "MaximumLength",
    "ImplementationClassUID",
    "ImplementationVersionName",
    "AsynchronousOperationsWindow",
    "RoleSelection",
    "SOPClassExtendedNegotiation",
    "SOPClassCommonExtendedNegotiation",
    "UserIdentityRQ",
    "UserIdentityAC",
    "UnknownItem",
    "UserInformation",
    "UserItem",
    "iter_items",
    "encode_item",
    "encode_uid",
    "decode_uid",
    "encode_application_context",
    "decode_application_context",
    "encode_presentation_context_rq",
    "decode_presentation_context_rq",
    "encode_presentation_context_ac",
    "decode_presentation_context_ac",
    "encode_user_item",
    "decode_user_item",
    "encode_user_information",
    "decode_user_information",
]


class ItemType(IntEnum):
    """Item-type codes (PS3.8 Tables 9-11..9-20 and Annex D, PS3.7 D.3.3)."""

    APPLICATION_CONTEXT = 0x10
    PRESENTATION_CONTEXT_RQ = 0x20
    PRESENTATION_CONTEXT_AC = 0x21
    ABSTRACT_SYNTAX = 0x30
    TRANSFER_SYNTAX = 0x40
    USER_INFORMATION = 0x50
    MAXIMUM_LENGTH = 0x51
    IMPLEMENTATION_CLASS_UID = 0x52
    ASYNCHRONOUS_OPERATIONS_WINDOW = 0x53
    ROLE_SELECTION = 0x54
    IMPLEMENTATION_VERSION_NAME = 0x55
    SOP_CLASS_EXTENDED_NEGOTIATION = 0x56
    SOP_CLASS_COMMON_EXTENDED_NEGOTIATION = 0x57
    USER_IDENTITY_RQ = 0x58
    USER_IDENTITY_AC = 0x59


class PresentationContextResult(IntEnum):
    """Result/Reason of a presentation context in an A-ASSOCIATE-AC (PS3.8 Table 9-18)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2  #: provider rejection, no reason
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3  #: provider rejection
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4  #: provider rejection


@dataclass(frozen=True, slots=True, kw_only=True)
class PresentationContextRQ:
    """Presentation context item of an A-ASSOCIATE-RQ (item 20H, PS3.8 Table 9-13).

    ``context_id`` is odd, 1..255.  One abstract syntax, one or more transfer syntaxes.
    """

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PresentationContextAC:
    """Presentation context item of an A-ASSOCIATE-AC (item 21H, PS3.8 Table 9-18).

    ``transfer_syntax`` is the one accepted; when ``result`` is not acceptance
    the standard says its value is not significant.  ``None`` means the
    sub-item was absent (some peers omit it on rejection).
    """

    context_id: int
    result: int
    transfer_syntax: str | None


# -- user-information sub-items (item 50H holds these) -------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class MaximumLength:
    """Maximum Length sub-item (51H, PS3.8 D.1): largest P-DATA-TF PDU *variable
    field* the sender will receive; 0 means no limit."""

    maximum_length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ImplementationClassUID:
    """Implementation Class UID sub-item (52H, PS3.7 D.3.3.2)."""

    uid: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ImplementationVersionName:
    """Implementation Version Name sub-item (55H, PS3.7 D.3.3.2): 1..16 chars."""

    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AsynchronousOperationsWindow:
    """Asynchronous Operations Window sub-item (53H, PS3.7 D.3.3.3).  0 = unlimited."""

    max_operations_invoked: int
    max_operations_performed: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleSelection:
    """SCP/SCU Role Selection sub-item (54H, PS3.7 D.3.3.4).

    ``scu_role`` / ``scp_role`` are the bytes on the wire (0 or 1; kept as int
    so an out-of-range value from a peer round-trips and can be refused by
    negotiation, not by the codec).
    """

    sop_class_uid: str
    scu_role: int
    scp_role: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SOPClassExtendedNegotiation:
    """SOP Class Extended Negotiation sub-item (56H, PS3.7 D.3.3.5)."""

    sop_class_uid: str
    service_class_application_information: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SOPClassCommonExtendedNegotiation:
    """SOP Class Common Extended Negotiation sub-item (57H, PS3.7 D.3.3.6). RQ only."""

    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class UserIdentityRQ:
    """User Identity Negotiation sub-item, RQ (58H, PS3.7 D.3.3.7.1).

    ``identity_type``: 1 username, 2 username+passcode, 3 Kerberos ticket,
    4 SAML assertion, 5 JSON Web Token.
    """

    identity_type: int
    positive_response_requested: bool
    primary_field: bytes
    secondary_field: bytes = b""

    def __repr__(self) -> str:
        # The fields are credentials (a passcode, a Kerberos ticket, a SAML assertion, a
        # JWT): a repr ends up in log lines and error messages ("cannot encode ..."), so
        # it gives their lengths only.
        def size(value: object) -> str:
            try:
                return f"<{len(value)} bytes>"  # type: ignore[arg-type]
            except TypeError:
                return f"<{type(value).__name__}>"

        return (f"UserIdentityRQ(identity_type={self.identity_type!r}, "
                f"positive_response_requested={self.positive_response_requested!r}, "
                f"primary_field={size(self.primary_field)}, secondary_field={size(self.secondary_field)})")


@dataclass(frozen=True, slots=True, kw_only=True)
class UserIdentityAC:
    """User Identity Negotiation sub-item, AC (59H, PS3.7 D.3.3.7.2)."""

    server_response: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownItem:
    """An item or sub-item of a type we do not know, kept byte for byte."""

    item_type: int
    data: bytes


UserItem = (
    MaximumLength
    | ImplementationClassUID
    | ImplementationVersionName
    | AsynchronousOperationsWindow
    | RoleSelection
    | SOPClassExtendedNegotiation
    | SOPClassCommonExtendedNegotiation
    | UserIdentityRQ
    | UserIdentityAC
    | UnknownItem
)


@dataclass(frozen=True, slots=True, kw_only=True)
class UserInformation:
    """User Information item (50H, PS3.8 Table 9-16): its sub-items, in wire order.

    The properties find a sub-item by kind; lists (role selection, extended
    negotiation) come back as tuples.
    """

    items: tuple[UserItem, ...] = ()

    def _first(self, kind: type) -> object | None:
        for item in self.items:
            if type(item) is kind:
                return item
        return None

    @property
    def maximum_length(self) -> int | None:
        """The Maximum Length Received (51H), or ``None`` if absent."""
        item = self._first(MaximumLength)
        return None if item is None else item.maximum_length  # type: ignore[attr-defined]

    @property
    def implementation_class_uid(self) -> str | None:
        """The Implementation Class UID (52H), or ``None`` if absent."""
        item = self._first(ImplementationClassUID)
        return None if item is None else item.uid  # type: ignore[attr-defined]

    @property
    def implementation_version_name(self) -> str | None:
        """The Implementation Version Name (55H), or ``None`` if absent."""
        item = self._first(ImplementationVersionName)
        return None if item is None else item.name  # type: ignore[attr-defined]

    @property
    def asynchronous_operations_window(self) -> AsynchronousOperationsWindow | None:
        """The Asynchronous Operations Window sub-item (53H), or ``None``."""
        return self._first(AsynchronousOperationsWindow)  # type: ignore[return-value]

    @property
    def role_selections(self) -> tuple[RoleSelection, ...]:
        """Every SCP/SCU Role Selection sub-item (54H), in wire order."""
        return tuple(i for i in self.items if type(i) is RoleSelection)

    @property
    def sop_class_extended(self) -> tuple[SOPClassExtendedNegotiation, ...]:
        """Every SOP Class Extended Negotiation sub-item (56H), in wire order."""
        return tuple(i for i in self.items if type(i) is SOPClassExtendedNegotiation)

    @property
    def sop_class_common_extended(self) -> tuple[SOPClassCommonExtendedNegotiation, ...]:
        """Every SOP Class Common Extended Negotiation sub-item (57H), in wire order."""
        return tuple(i for i in self.items if type(i) is SOPClassCommonExtendedNegotiation)

    @property
    def user_identity_rq(self) -> UserIdentityRQ | None:
        """The User Identity sub-item of an RQ (58H), or ``None``."""
        return self._first(UserIdentityRQ)  # type: ignore[return-value]

    @property
    def user_identity_ac(self) -> UserIdentityAC | None:
        """The User Identity sub-item of an AC (59H), or ``None``."""
        return self._first(UserIdentityAC)  # type: ignore[return-value]


# =============================================================================
# Codec
#
# Every item and sub-item of PS3.8 9.3.2 / 9.3.3 / Annex D and PS3.7 D.3.3 has
# the same 4-byte head (PS3.8 section 9.3.1: all fields big endian):
#
#   byte 1     item-type
#   byte 2     reserved (00H) -- sub-item-version for 57H (PS3.7 Table D.3-12)
#   bytes 3-4  item-length: bytes from byte 5 to the end of the item
#   bytes 5-   the item's value
#
# Encoders build the value first and take the length from it (``encode_item``).
# Decoders receive the value, already cut to the item length that
# ``iter_items`` checked against the bytes left, and check every inner length
# against what remains before slicing.
# =============================================================================

#: item-type, reserved (or sub-item-version), item-length (PS3.8 9.3.1).
_ITEM_HEAD = struct.Struct(">BBH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U16_U16 = struct.Struct(">HH")
_U8_U8 = struct.Struct(">BB")
#: Presentation context item, bytes 5-8 (PS3.8 Tables 9-13 and 9-18):
#: context-ID, reserved, reserved (RQ) or result/reason (AC), reserved.
_PC_FIXED = struct.Struct(">BBBB")

#: Every item and sub-item type the standard defines: any other is "ignored
#: and skipped" (PS3.8 9.3).
_KNOWN_ITEM_TYPES = frozenset(ItemType)

#: PS3.7 Table D.3-12, byte 2: the only Sub-Item-version defined so far.
COMMON_EXTENDED_SUB_ITEM_VERSION = 0

# A-ABORT reason/diag. values (PS3.8 Table 9-26) carried by RemoteProtocolError.
_UNRECOGNIZED_PARAMETER = 4
_UNEXPECTED_PARAMETER = 5
_INVALID_PARAMETER = 6


def _invalid(message: str) -> RemoteProtocolError:
    """A decoding error: invalid-PDU-parameter value (PS3.8 Table 9-26, reason 6)."""
    return RemoteProtocolError(message, abort_source=2, abort_reason=_INVALID_PARAMETER)


def _unexpected(message: str) -> RemoteProtocolError:
    """A decoding error: unexpected-PDU parameter (PS3.8 Table 9-26, reason 5)."""
    return RemoteProtocolError(message, abort_source=2, abort_reason=_UNEXPECTED_PARAMETER)


def _unrecognized(message: str) -> RemoteProtocolError:
    """A decoding error: unrecognized-PDU parameter (PS3.8 Table 9-26, reason 4)."""
    return RemoteProtocolError(message, abort_source=2, abort_reason=_UNRECOGNIZED_PARAMETER)


# -- framing --------------------------------------------------------------------


def encode_item(item_type: int, value: bytes, *, second_byte: int = 0) -> bytes:
    """One item or sub-item: the 4-byte head, then ``value``.

    The item-length is taken from ``value``, never computed separately.
    ``second_byte`` is the reserved byte (00H), or the sub-item-version of a
    57H sub-item.

    :raises LocalProtocolError: ``value`` longer than the 65535 bytes a 2-byte
        item-length can say.
    """
    if len(value) > 0xFFFF:
        raise LocalProtocolError(
            f"item {item_type:02X}H: value of {len(value)} bytes does not fit a 2-byte item-length"
        )
    return _ITEM_HEAD.pack(item_type, second_byte, len(value)) + value


def iter_items(data: bytes, start: int = 0, *, where: str = "item") -> Iterator[tuple[int, bytes]]:
    """Walk the items in ``data[start:]``, yielding ``(item_type, value)``.

    Each item-length is checked against the bytes that remain before the value
    is sliced.  The items must fill ``data`` exactly.

    :param where: names the enclosing PDU or item in error messages.
    :raises RemoteProtocolError: (reason 6) a short item head or a length
        running past the end.
    """
    pos = start
    end = len(data)
    while pos < end:
        if end - pos < _ITEM_HEAD.size:
            raise _invalid(f"{where}: {end - pos} trailing byte(s), too few for an item header")
        item_type, _reserved, length = _ITEM_HEAD.unpack_from(data, pos)
        pos += _ITEM_HEAD.size
        if length > end - pos:
            raise _invalid(
                f"{where}: item {item_type:02X}H says {length} bytes, only {end - pos} left"
            )
        yield item_type, data[pos : pos + length]
        pos += length


def _prefixed(value: bytes) -> bytes:
    """A field preceded by its 2-byte length (the UID-length fields of PS3.7 D.3.3)."""
    if len(value) > 0xFFFF:
        raise LocalProtocolError(f"field of {len(value)} bytes does not fit a 2-byte length")
    return _U16.pack(len(value)) + value


def _take_prefixed(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """Read a 2-byte length and the field it announces, at ``data[pos]``.

    :returns: the field and the position after it.
    :raises RemoteProtocolError: (reason 6) the length or the field is cut short.
    """
    if len(data) - pos < 2:
        raise _invalid(f"{what}: length field cut short")
    (length,) = _U16.unpack_from(data, pos)
    pos += 2
    if length > len(data) - pos:
        raise _invalid(f"{what}: length {length} runs past the {len(data) - pos} bytes left")
    return data[pos : pos + length], pos + length


# -- text -----------------------------------------------------------------------
#
# UIDs (PS3.5 section 9) are digits and dots; they travel without padding in
# the UL, but some peers add a trailing NUL (the PS3.5 even-length rule) or a
# space.  Decoding uses latin-1, which maps every byte to a character, so odd
# bytes from a peer never raise and re-encode to the same bytes.


def encode_uid(uid: str) -> bytes:
    """The bytes of a UID field: the UID as is, no padding.

    :raises LocalProtocolError: a character outside latin-1.
    """
    try:
        return uid.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"UID {uid!r} is not ASCII") from exc


def decode_uid(raw: bytes) -> str:
    """A UID from its field, without the trailing NULs and spaces some peers pad with."""
    return raw.decode("latin-1").rstrip("\x00 ")


# -- application context item (10H) ---------------------------------------------


def encode_application_context(name: str) -> bytes:
    """Application Context item (10H, PS3.8 Table 9-12): item head, then the name (a UID)."""
    return encode_item(ItemType.APPLICATION_CONTEXT, encode_uid(name))


def decode_application_context(value: bytes) -> str:
    """The application context name from the value of a 10H item (PS3.8 Table 9-12)."""
    return decode_uid(value)


# -- presentation context items (20H, 21H) ---------------------------------------


def encode_presentation_context_rq(pc: PresentationContextRQ) -> bytes:
    """Presentation Context item of an A-ASSOCIATE-RQ (20H).

    PS3.8 Table 9-13:
      5      presentation-context-ID
      6-8    reserved
      9-     one Abstract Syntax sub-item (30H, Table 9-14),
             then one or more Transfer Syntax sub-items (40H, Table 9-15)
    """
    parts = [
        _PC_FIXED.pack(pc.context_id, 0, 0, 0),
        encode_item(ItemType.ABSTRACT_SYNTAX, encode_uid(pc.abstract_syntax)),
    ]
    parts.extend(
        encode_item(ItemType.TRANSFER_SYNTAX, encode_uid(ts)) for ts in pc.transfer_syntaxes
    )
    return encode_item(ItemType.PRESENTATION_CONTEXT_RQ, b"".join(parts))


def decode_presentation_context_rq(value: bytes) -> PresentationContextRQ:
    """A :class:`PresentationContextRQ` from the value of a 20H item (PS3.8 Table 9-13).

    Sub-items may come in any order.  Exactly one abstract syntax is required;
    an empty transfer-syntax list is accepted (negotiation then refuses the
    context with reason 4).

    Sub-items of a type the standard does not define are skipped (PS3.8 9.3:
    "Items of unrecognized types shall be ignored and skipped").

    :raises RemoteProtocolError: reason 6 for a short item or a missing
        abstract syntax, 5 for a second abstract syntax, 4 for a known item
        type that does not belong in a presentation context.
    """
    if len(value) < _PC_FIXED.size:
        raise _invalid(f"presentation context item (20H): {len(value)} bytes, need at least 4")
    context_id = value[0]
    abstract: str | None = None
    transfer: list[str] = []
    where = f"presentation context {context_id} (20H)"
    for sub_type, sub in iter_items(value, _PC_FIXED.size, where=where):
        if sub_type == ItemType.TRANSFER_SYNTAX:
            transfer.append(decode_uid(sub))
        elif sub_type == ItemType.ABSTRACT_SYNTAX:
            if abstract is not None:
                raise _unexpected(f"{where}: more than one abstract syntax sub-item")
            abstract = decode_uid(sub)
        elif sub_type in _KNOWN_ITEM_TYPES:
            raise _unrecognized(f"{where}: unexpected sub-item {sub_type:02X}H")
        # else: a type the standard does not define, "ignored and skipped" (PS3.8 9.3)
    if abstract is None:
        raise _invalid(f"{where}: no abstract syntax sub-item")
    return PresentationContextRQ(
        context_id=context_id, abstract_syntax=abstract, transfer_syntaxes=tuple(transfer)
    )


def encode_presentation_context_ac(pc: PresentationContextAC) -> bytes:
    """Presentation Context item of an A-ASSOCIATE-AC (21H).

    PS3.8 Table 9-18:
      5      presentation-context-ID
      6      reserved
      7      result/reason (Table 9-18 values, :class:`PresentationContextResult`)
      8      reserved
      9-     one Transfer Syntax sub-item (40H, Table 9-19); left out when
             ``transfer_syntax`` is ``None``
    """
    value = _PC_FIXED.pack(pc.context_id, 0, pc.result, 0)
    if pc.transfer_syntax is not None:
        value += encode_item(ItemType.TRANSFER_SYNTAX, encode_uid(pc.transfer_syntax))
    return encode_item(ItemType.PRESENTATION_CONTEXT_AC, value)


def decode_presentation_context_ac(value: bytes) -> PresentationContextAC:
    """A :class:`PresentationContextAC` from the value of a 21H item (PS3.8 Table 9-18).

    A missing transfer syntax sub-item gives ``transfer_syntax=None``; sub-items
    of a type the standard does not define are skipped (PS3.8 9.3).

    :raises RemoteProtocolError: reason 6 for a short item, 5 for a second
        transfer syntax, 4 for any other known item type.
    """
    if len(value) < _PC_FIXED.size:
        raise _invalid(f"presentation context item (21H): {len(value)} bytes, need at least 4")
    context_id, _reserved, result, _reserved2 = _PC_FIXED.unpack_from(value, 0)
    transfer: str | None = None
    seen = False
    where = f"presentation context {context_id} (21H)"
    for sub_type, sub in iter_items(value, _PC_FIXED.size, where=where):
        if sub_type != ItemType.TRANSFER_SYNTAX:
            if sub_type in _KNOWN_ITEM_TYPES:
                raise _unrecognized(f"{where}: unexpected sub-item {sub_type:02X}H")
            continue  # a type the standard does not define: ignored and skipped (PS3.8 9.3)
        if seen:
            raise _unexpected(f"{where}: more than one transfer syntax sub-item")
        seen = True
        transfer = decode_uid(sub)
    return PresentationContextAC(context_id=context_id, result=result, transfer_syntax=transfer)


# -- user information sub-items (51H-59H) ----------------------------------------


def _encode_maximum_length(item: MaximumLength) -> bytes:
    # PS3.8 Table D.1-1:  5-8 maximum-length-received (0 = no limit)
    return encode_item(ItemType.MAXIMUM_LENGTH, _U32.pack(item.maximum_length))


def _decode_maximum_length(value: bytes) -> MaximumLength:
    if len(value) != _U32.size:
        raise _invalid(f"maximum length sub-item (51H): length {len(value)}, must be 4")
    (maximum,) = _U32.unpack(value)
    return MaximumLength(maximum_length=maximum)


def _encode_implementation_class_uid(item: ImplementationClassUID) -> bytes:
    # PS3.7 Tables D.3-1/D.3-2:  5-xxx implementation-class-uid
    return encode_item(ItemType.IMPLEMENTATION_CLASS_UID, encode_uid(item.uid))


def _decode_implementation_class_uid(value: bytes) -> ImplementationClassUID:
    return ImplementationClassUID(uid=decode_uid(value))


def _encode_asynchronous_operations_window(item: AsynchronousOperationsWindow) -> bytes:
    # PS3.7 Tables D.3-7/D.3-8:
    #   5-6 maximum-number-operations-invoked
    #   7-8 maximum-number-operations-performed
    value = _U16_U16.pack(item.max_operations_invoked, item.max_operations_performed)
    return encode_item(ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW, value)


def _decode_asynchronous_operations_window(value: bytes) -> AsynchronousOperationsWindow:
    if len(value) != _U16_U16.size:
        raise _invalid(f"asynchronous operations window (53H): length {len(value)}, must be 4")
    invoked, performed = _U16_U16.unpack(value)
    return AsynchronousOperationsWindow(
        max_operations_invoked=invoked, max_operations_performed=performed
    )


def _encode_role_selection(item: RoleSelection) -> bytes:
    # PS3.7 Tables D.3-9/D.3-10:
    #   5-6    UID-length
    #   7-xxx  SOP-class-uid
    #   xxx+1  SCU-role
    #   xxx+2  SCP-role
    value = _prefixed(encode_uid(item.sop_class_uid)) + _U8_U8.pack(item.scu_role, item.scp_role)
    return encode_item(ItemType.ROLE_SELECTION, value)


def _decode_role_selection(value: bytes) -> RoleSelection:
    where = "role selection sub-item (54H)"
    uid, pos = _take_prefixed(value, 0, where)
    if len(value) - pos != _U8_U8.size:
        raise _invalid(f"{where}: {len(value) - pos} bytes after the UID, must be 2")
    scu, scp = _U8_U8.unpack_from(value, pos)
    return RoleSelection(sop_class_uid=decode_uid(uid), scu_role=scu, scp_role=scp)


def _encode_implementation_version_name(item: ImplementationVersionName) -> bytes:
    # PS3.7 Tables D.3-3/D.3-4:  5-xxx implementation-version-name (1-16 chars)
    return encode_item(ItemType.IMPLEMENTATION_VERSION_NAME, encode_uid(item.name))


def _decode_implementation_version_name(value: bytes) -> ImplementationVersionName:
    return ImplementationVersionName(name=decode_uid(value))


def _encode_sop_class_extended(item: SOPClassExtendedNegotiation) -> bytes:
    # PS3.7 Table D.3-11:
    #   5-6    SOP-class-uid-length
    #   7-xxx  SOP-class-uid
    #   xxx-   service-class-application-information (rest of the item)
    value = _prefixed(encode_uid(item.sop_class_uid)) + bytes(
        item.service_class_application_information
    )
    return encode_item(ItemType.SOP_CLASS_EXTENDED_NEGOTIATION, value)


def _decode_sop_class_extended(value: bytes) -> SOPClassExtendedNegotiation:
    uid, pos = _take_prefixed(value, 0, "SOP class extended negotiation (56H)")
    return SOPClassExtendedNegotiation(
        sop_class_uid=decode_uid(uid), service_class_application_information=value[pos:]
    )


def _encode_sop_class_common_extended(item: SOPClassCommonExtendedNegotiation) -> bytes:
    # PS3.7 Table D.3-12 (byte 2 is the Sub-Item-version, 00H, not a reserved byte):
    #   5-6    SOP-class-uid-length
    #   7-xxx  SOP-class-uid
    #   xxx    Service-class-uid-length (2 bytes)
    #   xxx    Service-class-uid
    #   xxx    Related-general-sop-class-identification-length (2 bytes)
    #   xxx    Related-general-sop-class-identification: zero or more sub-fields,
    #          each (PS3.7 Table D.3-13) a 2-byte
    #          Related-general-sop-class-uid-length and the UID
    related = b"".join(_prefixed(encode_uid(uid)) for uid in item.related_general_sop_classes)
    value = (
        _prefixed(encode_uid(item.sop_class_uid))
        + _prefixed(encode_uid(item.service_class_uid))
        + _prefixed(related)
    )
    return encode_item(
        ItemType.SOP_CLASS_COMMON_EXTENDED_NEGOTIATION,
        value,
        second_byte=COMMON_EXTENDED_SUB_ITEM_VERSION,
    )


def _decode_sop_class_common_extended(value: bytes) -> SOPClassCommonExtendedNegotiation:
    # The sub-item-version byte is not tested: version 0 is the only one, and
    # its fields are all length-prefixed, so a later version's extra fields
    # would show up as trailing bytes below.
    where = "SOP class common extended negotiation (57H)"
    sop_class, pos = _take_prefixed(value, 0, where)
    service_class, pos = _take_prefixed(value, pos, where)
    related_field, pos = _take_prefixed(value, pos, where)
    if pos != len(value):
        raise _invalid(f"{where}: {len(value) - pos} bytes after the related SOP class field")
    related: list[str] = []
    rpos = 0
    while rpos < len(related_field):
        uid, rpos = _take_prefixed(related_field, rpos, f"{where}, related general SOP class")
        related.append(decode_uid(uid))
    return SOPClassCommonExtendedNegotiation(
        sop_class_uid=decode_uid(sop_class),
        service_class_uid=decode_uid(service_class),
        related_general_sop_classes=tuple(related),
    )


def _encode_user_identity_rq(item: UserIdentityRQ) -> bytes:
    # PS3.7 Table D.3-14:
    #   5      User-Identity-Type
    #   6      Positive-response-requested (1 = yes, 0 = no)
    #   7-8    Primary-field-length
    #   9-n    Primary-field
    #   n+1-   Secondary-field-length (2 bytes), Secondary-field
    value = (
        _U8_U8.pack(item.identity_type, 1 if item.positive_response_requested else 0)
        + _prefixed(bytes(item.primary_field))
        + _prefixed(bytes(item.secondary_field))
    )
    return encode_item(ItemType.USER_IDENTITY_RQ, value)


def _decode_user_identity_rq(value: bytes) -> UserIdentityRQ:
    where = "user identity sub-item (58H)"
    if len(value) < _U8_U8.size:
        raise _invalid(f"{where}: {len(value)} bytes, too short")
    identity_type, positive = _U8_U8.unpack_from(value, 0)
    primary, pos = _take_prefixed(value, _U8_U8.size, where)
    secondary = b""
    # Lenient: a peer that leaves the (empty) secondary field out entirely.
    if pos != len(value):
        secondary, pos = _take_prefixed(value, pos, where)
        if pos != len(value):
            raise _invalid(f"{where}: {len(value) - pos} bytes after the secondary field")
    return UserIdentityRQ(
        identity_type=identity_type,
        positive_response_requested=bool(positive),
        primary_field=primary,
        secondary_field=secondary,
    )


def _encode_user_identity_ac(item: UserIdentityAC) -> bytes:
    # PS3.7 Table D.3-15:
    #   5-6    Server-response-length (may be zero)
    #   7-n    Server-response
    return encode_item(ItemType.USER_IDENTITY_AC, _prefixed(bytes(item.server_response)))


def _decode_user_identity_ac(value: bytes) -> UserIdentityAC:
    where = "user identity sub-item (59H)"
    response, pos = _take_prefixed(value, 0, where)
    if pos != len(value):
        raise _invalid(f"{where}: {len(value) - pos} bytes after the server response")
    return UserIdentityAC(server_response=response)


def _encode_unknown(item: UnknownItem) -> bytes:
    return encode_item(item.item_type, bytes(item.data))


_USER_ITEM_ENCODERS: dict[type, Callable[..., bytes]] = {
    MaximumLength: _encode_maximum_length,
    ImplementationClassUID: _encode_implementation_class_uid,
    AsynchronousOperationsWindow: _encode_asynchronous_operations_window,
    RoleSelection: _encode_role_selection,
    ImplementationVersionName: _encode_implementation_version_name,
    SOPClassExtendedNegotiation: _encode_sop_class_extended,
    SOPClassCommonExtendedNegotiation: _encode_sop_class_common_extended,
    UserIdentityRQ: _encode_user_identity_rq,
    UserIdentityAC: _encode_user_identity_ac,
    UnknownItem: _encode_unknown,
}

_USER_ITEM_DECODERS: dict[int, Callable[[bytes], UserItem]] = {
    ItemType.MAXIMUM_LENGTH: _decode_maximum_length,
    ItemType.IMPLEMENTATION_CLASS_UID: _decode_implementation_class_uid,
    ItemType.ASYNCHRONOUS_OPERATIONS_WINDOW: _decode_asynchronous_operations_window,
    ItemType.ROLE_SELECTION: _decode_role_selection,
    ItemType.IMPLEMENTATION_VERSION_NAME: _decode_implementation_version_name,
    ItemType.SOP_CLASS_EXTENDED_NEGOTIATION: _decode_sop_class_extended,
    ItemType.SOP_CLASS_COMMON_EXTENDED_NEGOTIATION: _decode_sop_class_common_extended,
    ItemType.USER_IDENTITY_RQ: _decode_user_identity_rq,
    ItemType.USER_IDENTITY_AC: _decode_user_identity_ac,
}


def encode_user_item(item: UserItem) -> bytes:
    """The bytes of one user-information sub-item, head included.

    :raises LocalProtocolError: not a sub-item value, or a field out of range.
    """
    encoder = _USER_ITEM_ENCODERS.get(type(item))
    if encoder is None:
        raise LocalProtocolError(f"{item!r} is not a user-information sub-item")
    try:
        return encoder(item)
    except (struct.error, OverflowError, TypeError) as exc:
        raise LocalProtocolError(f"cannot encode {item!r}: {exc}") from exc


def decode_user_item(item_type: int, value: bytes) -> UserItem:
    """One user-information sub-item from its type and value.

    A type we do not know becomes :class:`UnknownItem` (PS3.8 D.2: acceptors
    ignore sub-items they do not recognise), kept byte for byte.

    :raises RemoteProtocolError: (reason 6) a known sub-item whose fields do
        not fit its length.
    """
    decoder = _USER_ITEM_DECODERS.get(item_type)
    if decoder is None:
        return UnknownItem(item_type=item_type, data=value)
    return decoder(value)


# -- user information item (50H) --------------------------------------------------


def encode_user_information(info: UserInformation) -> bytes:
    """User Information item (50H, PS3.8 Table 9-16): its sub-items in order."""
    return encode_item(
        ItemType.USER_INFORMATION, b"".join(encode_user_item(item) for item in info.items)
    )


def decode_user_information(value: bytes) -> UserInformation:
    """A :class:`UserInformation` from the value of a 50H item (PS3.8 Table 9-16).

    :raises RemoteProtocolError: (reason 6) a sub-item length that runs past
        the item or does not fit the sub-item's fields.
    """
    return UserInformation(
        items=tuple(
            decode_user_item(sub_type, sub)
            for sub_type, sub in iter_items(value, where="user information item (50H)")
        )
    )
