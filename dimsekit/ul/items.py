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

from dataclasses import dataclass
from enum import IntEnum

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
        item = self._first(MaximumLength)
        return None if item is None else item.maximum_length  # type: ignore[attr-defined]

    @property
    def implementation_class_uid(self) -> str | None:
        item = self._first(ImplementationClassUID)
        return None if item is None else item.uid  # type: ignore[attr-defined]

    @property
    def implementation_version_name(self) -> str | None:
        item = self._first(ImplementationVersionName)
        return None if item is None else item.name  # type: ignore[attr-defined]

    @property
    def asynchronous_operations_window(self) -> AsynchronousOperationsWindow | None:
        return self._first(AsynchronousOperationsWindow)  # type: ignore[return-value]

    @property
    def role_selections(self) -> tuple[RoleSelection, ...]:
        return tuple(i for i in self.items if type(i) is RoleSelection)

    @property
    def sop_class_extended(self) -> tuple[SOPClassExtendedNegotiation, ...]:
        return tuple(i for i in self.items if type(i) is SOPClassExtendedNegotiation)

    @property
    def sop_class_common_extended(self) -> tuple[SOPClassCommonExtendedNegotiation, ...]:
        return tuple(i for i in self.items if type(i) is SOPClassCommonExtendedNegotiation)

    @property
    def user_identity_rq(self) -> UserIdentityRQ | None:
        return self._first(UserIdentityRQ)  # type: ignore[return-value]

    @property
    def user_identity_ac(self) -> UserIdentityAC | None:
        return self._first(UserIdentityAC)  # type: ignore[return-value]
