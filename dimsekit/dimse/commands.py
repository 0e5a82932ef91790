"""The DIMSE commands of PS3.7 chapters 9 (DIMSE-C) and 10 (DIMSE-N), as data.

Each command -- C-STORE-RQ ... N-DELETE-RSP and C-CANCEL-RQ -- is one
:class:`CommandSpec` in :data:`COMMANDS`: its Command Field, the command
elements it carries with their usage, and whether a data set follows.  Code
reads the table (:func:`validate`, :func:`make_request`,
:func:`make_response`); nothing is discovered by magic.

A command set is a plain ``dict`` keyed by DICOM keyword, e.g.::

    {"CommandField": CommandField.C_ECHO_RQ, "MessageID": 7,
     "AffectedSOPClassUID": "1.2.840.10008.1.1", "CommandDataSetType": 0x0101}

Usage codes follow the service-parameter tables (PS3.7 9.1.x, 10.1.x), which
the message tables (9.3.x, 10.3.x) refer to: "Fields are required as specified
in the ... service definition unless otherwise noted":

* ``M`` mandatory -- :func:`validate` rejects a command without it;
* ``C`` conditional -- required in some cases the service defines (e.g. the
  sub-operation counts of a pending C-MOVE-RSP); not enforced here, the
  service layer knows the condition;
* ``U`` user option.

The message-level fields the tables add to every message (Command Field,
Message ID or Message ID Being Responded To, Command Data Set Type) are M.
Responses may also carry the optional status fields of Annex C (Error
Comment, Error ID, Offending Element, and for DIMSE-N Attribute Identifier
List, Event/Action Type ID).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from dimsekit.dimse.codec import ELEMENTS, CommandError, format_tag
from dimsekit.errors import LocalProtocolError

__all__ = [
    "CommandField",
    "Usage",
    "Priority",
    "CommandSpec",
    "COMMANDS",
    "NO_DATASET",
    "DATASET_PRESENT",
    "CommandError",
    "has_dataset",
    "validate",
    "make_request",
    "make_response",
    "make_command",
]


class CommandField(IntEnum):
    """Command Field (0000,0100) values: PS3.7 Annex E, Table E.1-1, and the
    "Command Field" row of each message table (9.3.x, 10.3.x).  A response's
    value is its request's with bit 15 set."""

    C_STORE_RQ = 0x0001
    C_STORE_RSP = 0x8001
    C_GET_RQ = 0x0010
    C_GET_RSP = 0x8010
    C_FIND_RQ = 0x0020
    C_FIND_RSP = 0x8020
    C_MOVE_RQ = 0x0021
    C_MOVE_RSP = 0x8021
    C_ECHO_RQ = 0x0030
    C_ECHO_RSP = 0x8030
    N_EVENT_REPORT_RQ = 0x0100
    N_EVENT_REPORT_RSP = 0x8100
    N_GET_RQ = 0x0110
    N_GET_RSP = 0x8110
    N_SET_RQ = 0x0120
    N_SET_RSP = 0x8120
    N_ACTION_RQ = 0x0130
    N_ACTION_RSP = 0x8130
    N_CREATE_RQ = 0x0140
    N_CREATE_RSP = 0x8140
    N_DELETE_RQ = 0x0150
    N_DELETE_RSP = 0x8150
    #: C-CANCEL-FIND-RQ, C-CANCEL-GET-RQ and C-CANCEL-MOVE-RQ share this value
    #: (PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3).
    C_CANCEL_RQ = 0x0FFF

    @property
    def is_request(self) -> bool:
        """True for the -RQ commands (C-CANCEL-RQ included)."""
        return not self & 0x8000

    @property
    def standard_name(self) -> str:
        """The name as PS3.7 writes it: ``"C-ECHO-RQ"``."""
        return self.name.replace("_", "-")


class Usage(StrEnum):
    """Usage of a field in a service-parameter table (PS3.7 5, "Conventions")."""

    #: Mandatory.
    M = "M"
    #: Conditional: required under a condition the service defines.
    C = "C"
    #: User option.
    U = "U"


class Priority(IntEnum):
    """Priority (0000,0700) of a C-STORE, C-FIND, C-GET or C-MOVE request
    (PS3.7 9.3.1.1 and Annex E): LOW = 0002H, MEDIUM = 0000H, HIGH = 0001H."""

    MEDIUM = 0x0000
    HIGH = 0x0001
    LOW = 0x0002


#: Command Data Set Type (0000,0800) value meaning "no data set" (PS3.7 9.3,
#: 10.3: "shall be set to the value of 0101H if no Data Set is present; any
#: other value indicates a Data Set is included").
NO_DATASET = 0x0101
#: The value this library writes when a data set follows (any but 0101H will do).
DATASET_PRESENT = 0x0001


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One DIMSE command as PS3.7 defines it.

    :ivar field: the Command Field value.
    :ivar fields: command keyword -> usage, in the order of the message table.
    :ivar dataset: usage of the data set (Data Set / Identifier / Attribute
        List ...), or None when the command never carries one (Command Data
        Set Type must then be 0101H).
    :ivar section: where PS3.7 specifies the message.
    """

    field: CommandField
    fields: Mapping[str, Usage]
    dataset: Usage | None
    section: str
    #: keywords with usage M (derived once, at import: validation is per message)
    required: tuple[str, ...] = ()
    #: the Command Field of the response to this request; None for a response
    #: or for C-CANCEL-RQ, which is never answered (PS3.7 9.3.2.3)
    response: CommandField | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "required", tuple(k for k, u in self.fields.items() if u is Usage.M))
        answered = self.field.is_request and self.field is not CommandField.C_CANCEL_RQ
        object.__setattr__(self, "response", CommandField(self.field | 0x8000) if answered else None)

    @property
    def name(self) -> str:
        """``"C-STORE-RQ"`` etc."""
        return self.field.standard_name

    @property
    def is_request(self) -> bool:
        """True for a request (including C-CANCEL-RQ)."""
        return self.field.is_request


M, C, U = Usage.M, Usage.C, Usage.U

# Fields every request / response carries at the message level (9.3, 10.3).
_RQ = {"CommandField": M, "MessageID": M, "CommandDataSetType": M}
_RSP = {"CommandField": M, "MessageIDBeingRespondedTo": M, "CommandDataSetType": M, "Status": M}
_CANCEL = {"CommandField": M, "MessageIDBeingRespondedTo": M, "CommandDataSetType": M}
# Optional status fields of Annex C that any response may carry.
_STATUS_DETAIL = {"OffendingElement": U, "ErrorComment": U, "ErrorID": U}
# ... and the DIMSE-N responses' Attribute List Error / Attribute Value Out of
# Range details (Annex C.4).
_N_STATUS_DETAIL = {**_STATUS_DETAIL, "AttributeIdentifierList": U}


def _spec(field: CommandField, section: str, dataset: Usage | None, **fields: Usage) -> CommandSpec:
    if field is CommandField.C_CANCEL_RQ:
        base = _CANCEL
    else:
        base = _RQ if field.is_request else _RSP
    return CommandSpec(field, {**base, **fields}, dataset, section)


_CF = CommandField

# ---------------------------------------------------------------------------
# DIMSE-C: PS3.7 9.1 (service parameters) and 9.3 (messages).
# ---------------------------------------------------------------------------
_DIMSE_C = (
    # 9.1.1 Table 9.1-1 / 9.3.1.1 Table 9.3-1: C-STORE-RQ.  Data Set: M.
    _spec(
        _CF.C_STORE_RQ,
        "PS3.7 9.3.1.1",
        M,
        AffectedSOPClassUID=M,
        Priority=M,
        AffectedSOPInstanceUID=M,
        MoveOriginatorApplicationEntityTitle=U,
        MoveOriginatorMessageID=U,
    ),
    # 9.3.1.2 Table 9.3-2: C-STORE-RSP.  No data set.
    _spec(
        _CF.C_STORE_RSP,
        "PS3.7 9.3.1.2",
        None,
        AffectedSOPClassUID=U,
        AffectedSOPInstanceUID=U,
        **_STATUS_DETAIL,
    ),
    # 9.1.2 Table 9.1-2 / 9.3.2.1 Table 9.3-3: C-FIND-RQ.  Identifier: M.
    _spec(_CF.C_FIND_RQ, "PS3.7 9.3.2.1", M, AffectedSOPClassUID=M, Priority=M),
    # 9.3.2.2 Table 9.3-4: C-FIND-RSP.  Identifier: C (with a Pending status).
    _spec(_CF.C_FIND_RSP, "PS3.7 9.3.2.2", C, AffectedSOPClassUID=U, **_STATUS_DETAIL),
    # 9.1.3 Table 9.1-3 / 9.3.3.1 Table 9.3-6: C-GET-RQ.  Identifier: M.
    _spec(_CF.C_GET_RQ, "PS3.7 9.3.3.1", M, AffectedSOPClassUID=M, Priority=M),
    # 9.3.3.2 Table 9.3-7: C-GET-RSP.  Identifier: U (Failed SOP Instance UID List).
    _spec(
        _CF.C_GET_RSP,
        "PS3.7 9.3.3.2",
        U,
        AffectedSOPClassUID=U,
        NumberOfRemainingSuboperations=C,
        NumberOfCompletedSuboperations=C,
        NumberOfFailedSuboperations=C,
        NumberOfWarningSuboperations=C,
        **_STATUS_DETAIL,
    ),
    # 9.1.4 Table 9.1-4 / 9.3.4.1 Table 9.3-9: C-MOVE-RQ.  Identifier: M.
    _spec(
        _CF.C_MOVE_RQ,
        "PS3.7 9.3.4.1",
        M,
        AffectedSOPClassUID=M,
        Priority=M,
        MoveDestination=M,
    ),
    # 9.3.4.2 Table 9.3-10: C-MOVE-RSP.  Identifier: U (Failed SOP Instance UID List).
    _spec(
        _CF.C_MOVE_RSP,
        "PS3.7 9.3.4.2",
        U,
        AffectedSOPClassUID=U,
        NumberOfRemainingSuboperations=C,
        NumberOfCompletedSuboperations=C,
        NumberOfFailedSuboperations=C,
        NumberOfWarningSuboperations=C,
        **_STATUS_DETAIL,
    ),
    # 9.1.5 Table 9.1-5 / 9.3.5.1 Table 9.3-12: C-ECHO-RQ.  No data set.
    _spec(_CF.C_ECHO_RQ, "PS3.7 9.3.5.1", None, AffectedSOPClassUID=M),
    # 9.3.5.2 Table 9.3-13: C-ECHO-RSP.  No data set.
    _spec(_CF.C_ECHO_RSP, "PS3.7 9.3.5.2", None, AffectedSOPClassUID=U, **_STATUS_DETAIL),
    # 9.3.2.3 / 9.3.3.3 / 9.3.4.3 (Tables 9.3-5, 9.3-8, 9.3-11): C-CANCEL-*-RQ.
    # Message ID Being Responded To names the operation to cancel.  No data set.
    _spec(_CF.C_CANCEL_RQ, "PS3.7 9.3.2.3", None),
)

# ---------------------------------------------------------------------------
# DIMSE-N: PS3.7 10.1 (service parameters) and 10.3 (messages).  Responses
# name the instance with Affected SOP Class/Instance UID even when the
# request used the Requested ones (10.1.x tables, "U(=)").
# ---------------------------------------------------------------------------
_DIMSE_N = (
    # 10.1.1 Table 10.1-1 / 10.3.1 Table 10.3-1: N-EVENT-REPORT-RQ.  Event Information: U.
    _spec(
        _CF.N_EVENT_REPORT_RQ,
        "PS3.7 10.3.1.1",
        U,
        AffectedSOPClassUID=M,
        AffectedSOPInstanceUID=M,
        EventTypeID=M,
    ),
    # Table 10.3-2: N-EVENT-REPORT-RSP.  Event Reply: C.
    _spec(
        _CF.N_EVENT_REPORT_RSP,
        "PS3.7 10.3.1.2",
        C,
        AffectedSOPClassUID=U,
        AffectedSOPInstanceUID=U,
        EventTypeID=C,
        **_N_STATUS_DETAIL,
    ),
    # 10.1.2 Table 10.1-2 / Table 10.3-3: N-GET-RQ.  No data set.
    _spec(
        _CF.N_GET_RQ,
        "PS3.7 10.3.2.1",
        None,
        RequestedSOPClassUID=M,
        RequestedSOPInstanceUID=M,
        AttributeIdentifierList=U,
    ),
    # Table 10.3-4: N-GET-RSP.  Attribute List: C.
    _spec(
        _CF.N_GET_RSP,
        "PS3.7 10.3.2.2",
        C,
        AffectedSOPClassUID=U,
        AffectedSOPInstanceUID=U,
        **_N_STATUS_DETAIL,
    ),
    # 10.1.3 Table 10.1-3 / Table 10.3-5: N-SET-RQ.  Modification List: M.
    _spec(
        _CF.N_SET_RQ,
        "PS3.7 10.3.3.1",
        M,
        RequestedSOPClassUID=M,
        RequestedSOPInstanceUID=M,
    ),
    # Table 10.3-6: N-SET-RSP.  Attribute List: U.
    _spec(
        _CF.N_SET_RSP,
        "PS3.7 10.3.3.2",
        U,
        AffectedSOPClassUID=U,
        AffectedSOPInstanceUID=U,
        **_N_STATUS_DETAIL,
    ),
    # 10.1.4 Table 10.1-4 / Table 10.3-7: N-ACTION-RQ.  Action Information: U.
    _spec(
        _CF.N_ACTION_RQ,
        "PS3.7 10.3.4.1",
        U,
        RequestedSOPClassUID=M,
        RequestedSOPInstanceUID=M,
        ActionTypeID=M,
    ),
    # Table 10.3-8: N-ACTION-RSP.  Action Reply: C.
    _spec(
        _CF.N_ACTION_RSP,
        "PS3.7 10.3.4.2",
        C,
        AffectedSOPClassUID=U,
        AffectedSOPInstanceUID=U,
        ActionTypeID=C,
        **_N_STATUS_DETAIL,
    ),
    # 10.1.5 Table 10.1-5 / Table 10.3-9: N-CREATE-RQ.  Attribute List: U.
    # The instance UID is U: the SCP assigns one when it is absent.
    _spec(
        _CF.N_CREATE_RQ,
        "PS3.7 10.3.5.1",
        U,
        AffectedSOPClassUID=M,
        AffectedSOPInstanceUID=U,
    ),
    # Table 10.3-10: N-CREATE-RSP.  Attribute List: C.  Instance UID: C (when
    # the SCP assigned it).
    _spec(
        _CF.N_CREATE_RSP,
        "PS3.7 10.3.5.2",
        C,
        AffectedSOPClassUID=U,
        AffectedSOPInstanceUID=C,
        **_N_STATUS_DETAIL,
    ),
    # 10.1.6 Table 10.1-6 / Table 10.3-11: N-DELETE-RQ.  No data set.
    _spec(
        _CF.N_DELETE_RQ,
        "PS3.7 10.3.6.1",
        None,
        RequestedSOPClassUID=M,
        RequestedSOPInstanceUID=M,
    ),
    # Table 10.3-12: N-DELETE-RSP.  No data set.
    _spec(
        _CF.N_DELETE_RSP,
        "PS3.7 10.3.6.2",
        None,
        AffectedSOPClassUID=U,
        AffectedSOPInstanceUID=U,
        **_STATUS_DETAIL,
    ),
)

#: Command Field -> its :class:`CommandSpec`, one entry per command of PS3.7.
COMMANDS: dict[CommandField, CommandSpec] = {s.field: s for s in _DIMSE_C + _DIMSE_N}
assert set(COMMANDS) == set(CommandField), "a CommandField without a spec"
assert all(k in ELEMENTS for s in COMMANDS.values() for k in s.fields)

del M, C, U


# ---------------------------------------------------------------------------
# Value checks per VR (PS3.5 6.2): what a value must look like to be encoded,
# and what a received value must look like to be trusted further up (the
# archive derives paths from UIDs; AE titles reach logs and configuration).
# ---------------------------------------------------------------------------
_UID = re.compile(r"[0-9.]{1,64}\Z")
_TEXT = re.compile(r"[\x20-\x5b\x5d-\x7e]*\Z")  # default repertoire, no backslash


def _is_int(value: Any, bits: int) -> bool:
    kind = type(value)
    if kind is not int and (kind is bool or not isinstance(value, int)):
        return False
    return 0 <= value < 1 << bits


def _check_us(value: Any) -> str | None:
    return None if _is_int(value, 16) else "not a 16-bit unsigned integer"


def _check_ul(value: Any) -> str | None:
    return None if _is_int(value, 32) else "not a 32-bit unsigned integer"


def _check_ui(value: Any) -> str | None:
    # Empty is let through here; an empty M field is caught as missing.
    if not isinstance(value, str) or (value and not _UID.match(value)):
        return "not a UID (digits and dots, at most 64 characters)"
    return None


def _check_ae(value: Any) -> str | None:
    if not isinstance(value, str) or not _TEXT.match(value) or len(value) > 16:
        return "not an AE title (at most 16 default-repertoire characters, no backslash)"
    return None


def _check_text(value: Any) -> str | None:
    # LO / SH (Error Comment) only inform: any text the codec can write will
    # do, so that a peer's over-long or accented comment does not turn its
    # failure response into a protocol error.
    if not isinstance(value, str):
        return "not text"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "not in the default character repertoire"
    return None


def _check_at(value: Any) -> str | None:
    tags = (value,) if isinstance(value, int) else value
    if not isinstance(tags, tuple | list) or not all(_is_int(t, 32) for t in tags):
        return "not a list of attribute tags"
    return None


_CHECK_BY_VR = {
    "US": _check_us,
    "UL": _check_ul,
    "UI": _check_ui,
    "AE": _check_ae,
    "LO": _check_text,
    "SH": _check_text,
    "AT": _check_at,
}
_CHECKS = {kw: (tag, _CHECK_BY_VR[vr]) for kw, (tag, vr, _vm) in ELEMENTS.items()}
#: the checks a value decoded by codec.decode_command may fail (validate(decoded=True))
_DECODED_CHECKS = {kw: check for kw, check in _CHECKS.items() if ELEMENTS[kw][1] in ("UI", "AE")}

_UNRECOGNIZED_OPERATION = 0x0211
_MISTYPED_ARGUMENT = 0x0212
_COMMAND_FIELD_TAG = ELEMENTS["CommandField"][0]


def has_dataset(command: Mapping[str, Any]) -> bool:
    """True if a data set follows this command set: Command Data Set Type
    (0000,0800) present and other than 0101H (PS3.7 9.3, 10.3)."""
    value = command.get("CommandDataSetType", NO_DATASET)
    return value != NO_DATASET


def validate(command: Mapping[str, Any], *, decoded: bool = False) -> CommandSpec:
    """Check a command set against its :class:`CommandSpec`; return the spec.

    Checked: the Command Field names a DIMSE command; every known element
    present has a value of its VR; every M field is present; the presence of
    a data set agrees with the spec (none allowed / required).  Not checked:
    C fields (their condition belongs to the service), the order or the
    presence of extra optional elements (tolerated, per robustness).

    :param decoded: ``command`` comes straight from
        :func:`.codec.decode_command`, whose decoders only ever produce values
        of their element's VR for US, UL, AT, LO and SH (an integer of the
        right width, a tuple of tags, Latin-1 text); only the UI and AE values
        (their characters and length) are left to check.  The outcome is the
        same as without it, for less work on every received command.
    :raises CommandError: Unrecognized operation (0211H) for a missing or
        unknown Command Field; Mistyped argument (0212H), with Offending
        Element, for anything else (see :mod:`.codec` for why these codes).
    """
    field = command.get("CommandField")
    if not _is_int(field, 16):
        raise CommandError(
            _UNRECOGNIZED_OPERATION,
            "no Command Field (0000,0100)" if field is None else f"bad Command Field {field!r}",
            offending_element=_COMMAND_FIELD_TAG,
            command=dict(command),
        )
    spec = COMMANDS.get(field)
    if spec is None:
        raise CommandError(
            _UNRECOGNIZED_OPERATION,
            f"unknown Command Field 0x{field:04X}",
            offending_element=_COMMAND_FIELD_TAG,
            command=dict(command),
        )
    checks = _DECODED_CHECKS if decoded else _CHECKS
    for key, value in command.items():
        check = checks.get(key)
        if check is None:
            continue  # unknown group-0000 element kept as bytes by the codec (or, decoded, of its VR)
        tag, checker = check
        problem = checker(value)
        if problem is not None:
            raise CommandError(
                _MISTYPED_ARGUMENT,
                f"{spec.name}: {key} {format_tag(tag)} {problem}",
                offending_element=tag,
                command=dict(command),
            )
    get = command.get
    for key in spec.required:
        if get(key, "") == "":
            raise CommandError(
                _MISTYPED_ARGUMENT,
                f"{spec.name} without {key} {format_tag(ELEMENTS[key][0])}",
                offending_element=ELEMENTS[key][0],
                command=dict(command),
            )
    dataset = command["CommandDataSetType"] != NO_DATASET
    if spec.dataset is None and dataset:
        problem = "carries a data set it may not have"
    elif spec.dataset is Usage.M and not dataset:
        problem = "has no data set but requires one"
    else:
        problem = None
    if problem is not None:
        raise CommandError(
            _MISTYPED_ARGUMENT,
            f"{spec.name} {problem}",
            offending_element=ELEMENTS["CommandDataSetType"][0],
            command=dict(command),
        )
    if "Priority" in command and command["Priority"] not in (0, 1, 2):
        raise CommandError(
            _MISTYPED_ARGUMENT,
            f"{spec.name}: Priority {command['Priority']} is not LOW, MEDIUM or HIGH",
            offending_element=ELEMENTS["Priority"][0],
            command=dict(command),
        )
    return spec


def make_command(
    field: CommandField | int, *, dataset: bool | None = None, **fields: Any
) -> dict[str, Any]:
    """Build and validate any command set (PS3.7 9.3, 10.3).

    :param field: the Command Field.
    :param dataset: whether a data set follows; defaults to True when the
        spec requires one, else False.  Sets Command Data Set Type.
    :param fields: the other elements by keyword.  Priority defaults to MEDIUM
        where the command has one.
    :raises LocalProtocolError: the result would not be a valid command (our
        own mistake, so nothing for the peer): the CommandError is its cause.
    """
    field = CommandField(field)
    spec = COMMANDS[field]
    if dataset is None:
        dataset = spec.dataset is Usage.M
    command: dict[str, Any] = {"CommandField": field, **fields}
    command.setdefault("CommandDataSetType", DATASET_PRESENT if dataset else NO_DATASET)
    if "Priority" in spec.fields:
        command.setdefault("Priority", Priority.MEDIUM)
    try:
        validate(command)
    except CommandError as exc:
        raise LocalProtocolError(f"invalid {spec.name}: {exc.comment}") from exc
    return command


def make_request(
    field: CommandField | int, *, dataset: bool | None = None, **fields: Any
) -> dict[str, Any]:
    """Build a validated request command set, e.g.
    ``make_request(CommandField.C_ECHO_RQ, MessageID=1, AffectedSOPClassUID="1.2.840.10008.1.1")``.

    See :func:`make_command`; raises LocalProtocolError for a response field.
    """
    if not CommandField(field).is_request:
        raise LocalProtocolError(f"{CommandField(field).standard_name} is not a request")
    return make_command(field, dataset=dataset, **fields)


# Fields a response repeats from its request: "U(=)" in the 9.1.x / 10.1.x
# tables -- "the same parameter value used in the request".  DIMSE-N requests
# that name the instance with Requested SOP Class/Instance UID are answered
# with Affected SOP Class/Instance UID (10.1.2 - 10.1.6).
_ECHOED = {
    "AffectedSOPClassUID": ("AffectedSOPClassUID", "RequestedSOPClassUID"),
    "AffectedSOPInstanceUID": ("AffectedSOPInstanceUID", "RequestedSOPInstanceUID"),
}


def make_response(
    request: Mapping[str, Any], status: int, *, dataset: bool = False, **fields: Any
) -> dict[str, Any]:
    """Build a validated response to ``request`` with ``status``.

    Sets the response Command Field, Message ID Being Responded To (= the
    request's Message ID) and copies the SOP Class/Instance UIDs the response
    table allows (PS3.7 9.1.x / 10.1.x "U(=)").  For N-EVENT-REPORT and
    N-ACTION the Event/Action Type ID is copied when a reply data set follows
    (10.1.1, 10.1.4: "shall be included if the ... Reply parameter is
    included").  ``fields`` are added last and win.

    :raises LocalProtocolError: ``request`` has no response (C-CANCEL-RQ, a
        response) or the result is not a valid response.
    """
    spec = COMMANDS.get(request.get("CommandField"))  # type: ignore[call-overload]
    if spec is None or spec.response is None:
        raise LocalProtocolError(f"no response to Command Field {request.get('CommandField')!r}")
    rsp_spec = COMMANDS[spec.response]
    command: dict[str, Any] = {
        "MessageIDBeingRespondedTo": request.get("MessageID"),
        "Status": status,
    }
    for key, sources in _ECHOED.items():
        if key in rsp_spec.fields:
            for source in sources:
                if source in request:
                    command[key] = request[source]
                    break
    if dataset:
        for key in ("EventTypeID", "ActionTypeID"):
            if key in rsp_spec.fields and key in request:
                command[key] = request[key]
    command.update(fields)
    return make_command(spec.response, dataset=dataset, **command)
