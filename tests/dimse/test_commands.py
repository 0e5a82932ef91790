"""The command table and its validation (PS3.7 9.1, 9.3, 10.1, 10.3, Annex E)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimsekit.dimse.codec import CommandError
from dimsekit.dimse.commands import (
    COMMANDS,
    NO_DATASET,
    CommandField,
    Priority,
    Usage,
    has_dataset,
    make_command,
    make_request,
    make_response,
    validate,
)
from dimsekit.errors import LocalProtocolError

from .pdata import SAMPLE_VALUES, SOP_CLASS, SOP_INSTANCE, sample_command

# PS3.7 Annex E, Command Field (0000,0100) values, restated here by hand.
ANNEX_E_COMMAND_FIELDS = {
    "C-STORE-RQ": 0x0001,
    "C-STORE-RSP": 0x8001,
    "C-GET-RQ": 0x0010,
    "C-GET-RSP": 0x8010,
    "C-FIND-RQ": 0x0020,
    "C-FIND-RSP": 0x8020,
    "C-MOVE-RQ": 0x0021,
    "C-MOVE-RSP": 0x8021,
    "C-ECHO-RQ": 0x0030,
    "C-ECHO-RSP": 0x8030,
    "N-EVENT-REPORT-RQ": 0x0100,
    "N-EVENT-REPORT-RSP": 0x8100,
    "N-GET-RQ": 0x0110,
    "N-GET-RSP": 0x8110,
    "N-SET-RQ": 0x0120,
    "N-SET-RSP": 0x8120,
    "N-ACTION-RQ": 0x0130,
    "N-ACTION-RSP": 0x8130,
    "N-CREATE-RQ": 0x0140,
    "N-CREATE-RSP": 0x8140,
    "N-DELETE-RQ": 0x0150,
    "N-DELETE-RSP": 0x8150,
    "C-CANCEL-RQ": 0x0FFF,
}

# Required (M) fields per command beyond the message-level ones, from the
# PS3.7 service-parameter tables; data set usage (None = never).
EXPECTED = {
    "C-STORE-RQ": ({"AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority"}, "M"),
    "C-STORE-RSP": (set(), None),
    "C-FIND-RQ": ({"AffectedSOPClassUID", "Priority"}, "M"),
    "C-FIND-RSP": (set(), "C"),
    "C-GET-RQ": ({"AffectedSOPClassUID", "Priority"}, "M"),
    "C-GET-RSP": (set(), "U"),
    "C-MOVE-RQ": ({"AffectedSOPClassUID", "Priority", "MoveDestination"}, "M"),
    "C-MOVE-RSP": (set(), "U"),
    "C-ECHO-RQ": ({"AffectedSOPClassUID"}, None),
    "C-ECHO-RSP": (set(), None),
    "C-CANCEL-RQ": (set(), None),
    "N-EVENT-REPORT-RQ": ({"AffectedSOPClassUID", "AffectedSOPInstanceUID", "EventTypeID"}, "U"),
    "N-EVENT-REPORT-RSP": (set(), "C"),
    "N-GET-RQ": ({"RequestedSOPClassUID", "RequestedSOPInstanceUID"}, None),
    "N-GET-RSP": (set(), "C"),
    "N-SET-RQ": ({"RequestedSOPClassUID", "RequestedSOPInstanceUID"}, "M"),
    "N-SET-RSP": (set(), "U"),
    "N-ACTION-RQ": ({"RequestedSOPClassUID", "RequestedSOPInstanceUID", "ActionTypeID"}, "U"),
    "N-ACTION-RSP": (set(), "C"),
    "N-CREATE-RQ": ({"AffectedSOPClassUID"}, "U"),
    "N-CREATE-RSP": (set(), "C"),
    "N-DELETE-RQ": ({"RequestedSOPClassUID", "RequestedSOPInstanceUID"}, None),
    "N-DELETE-RSP": (set(), None),
}

ALL_FIELDS = list(CommandField)
REQUIRED_CASES = [(f, k) for f in CommandField for k in COMMANDS[f].required]


def test_command_fields_match_annex_e() -> None:
    assert {f.standard_name: int(f) for f in CommandField} == ANNEX_E_COMMAND_FIELDS


@pytest.mark.parametrize("field", ALL_FIELDS, ids=lambda f: f.standard_name)
def test_spec_matches_the_standard(field: CommandField) -> None:
    spec = COMMANDS[field]
    assert spec.field is field and spec.name == field.standard_name
    required, dataset = EXPECTED[spec.name]
    if field is CommandField.C_CANCEL_RQ:
        message_level = {"CommandField", "MessageIDBeingRespondedTo", "CommandDataSetType"}
    elif field.is_request:
        message_level = {"CommandField", "MessageID", "CommandDataSetType"}
    else:
        message_level = {
            "CommandField",
            "MessageIDBeingRespondedTo",
            "CommandDataSetType",
            "Status",
        }
    assert set(spec.required) == required | message_level
    assert (spec.dataset.value if spec.dataset else None) == dataset
    assert spec.section.startswith("PS3.7 9.3" if field.name.startswith("C_") else "PS3.7 10.3")


@pytest.mark.parametrize("field", ALL_FIELDS, ids=lambda f: f.standard_name)
def test_response_pairs(field: CommandField) -> None:
    spec = COMMANDS[field]
    if field is CommandField.C_CANCEL_RQ or not field.is_request:
        assert spec.response is None
    else:
        assert spec.response == field | 0x8000
        assert not COMMANDS[spec.response].is_request


@pytest.mark.parametrize("field", ALL_FIELDS, ids=lambda f: f.standard_name)
def test_sample_commands_validate(field: CommandField) -> None:
    assert validate(sample_command(field)) is COMMANDS[field]
    assert validate(sample_command(field, optional=True)) is COMMANDS[field]


@pytest.mark.parametrize(
    ("field", "key"), REQUIRED_CASES, ids=[f"{f.standard_name}-{k}" for f, k in REQUIRED_CASES]
)
def test_missing_required_field_is_mistyped_argument(field: CommandField, key: str) -> None:
    command = sample_command(field)
    del command[key]
    with pytest.raises(CommandError) as info:
        validate(command)
    error = info.value
    if key == "CommandField":
        assert error.status == 0x0211
    else:
        assert error.status == 0x0212
        assert key in error.comment
    tag = {
        "CommandField": 0x00000100,
        "MessageID": 0x00000110,
        "MessageIDBeingRespondedTo": 0x00000120,
        "CommandDataSetType": 0x00000800,
        "Status": 0x00000900,
        "AffectedSOPClassUID": 0x00000002,
        "RequestedSOPClassUID": 0x00000003,
        "AffectedSOPInstanceUID": 0x00001000,
        "RequestedSOPInstanceUID": 0x00001001,
        "Priority": 0x00000700,
        "MoveDestination": 0x00000600,
        "EventTypeID": 0x00001002,
        "ActionTypeID": 0x00001008,
    }[key]
    assert error.offending_element == (tag,)
    assert error.response_fields()["OffendingElement"] == (tag,)


def test_empty_required_uid_counts_as_missing() -> None:
    command = sample_command(CommandField.C_STORE_RQ)
    command["AffectedSOPInstanceUID"] = ""
    with pytest.raises(CommandError, match="without AffectedSOPInstanceUID"):
        validate(command)
    rsp = sample_command(CommandField.C_STORE_RSP)
    rsp["AffectedSOPInstanceUID"] = ""  # U field, empty: tolerated
    validate(rsp)


@pytest.mark.parametrize(
    ("command", "status"),
    [
        ({}, 0x0211),
        ({"CommandField": 0x0031, "MessageID": 1, "CommandDataSetType": NO_DATASET}, 0x0211),
        ({"CommandField": "C-ECHO-RQ"}, 0x0211),
        ({"CommandField": True}, 0x0211),
    ],
)
def test_unrecognized_operation(command: dict, status: int) -> None:
    with pytest.raises(CommandError) as info:
        validate(command)
    assert info.value.status == status
    assert info.value.offending_element == (0x00000100,)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MessageID", -1),
        ("MessageID", 0x10000),
        ("MessageID", "7"),
        ("MessageID", 1.0),
        ("AffectedSOPClassUID", "1.2.x"),
        ("AffectedSOPClassUID", "1." * 40),
        ("AffectedSOPClassUID", b"1.2.3"),
        ("Priority", 3),
        ("MoveOriginatorApplicationEntityTitle", "A" * 17),
        ("MoveOriginatorApplicationEntityTitle", "BACK\\SLASH"),
        ("MoveOriginatorMessageID", None),
    ],
)
def test_mistyped_values(key: str, value: object) -> None:
    command = sample_command(CommandField.C_STORE_RQ)
    command[key] = value
    with pytest.raises(CommandError) as info:
        validate(command)
    assert info.value.status == 0x0212
    assert info.value.message_id == (None if key == "MessageID" else 7)


def test_mistyped_at_and_text() -> None:
    rsp = sample_command(CommandField.N_SET_RSP)
    for bad in [("x",), (1 << 32,), "0x00100010"]:
        with pytest.raises(CommandError):
            validate({**rsp, "AttributeIdentifierList": bad})
    validate({**rsp, "AttributeIdentifierList": 0x00100010})
    validate({**rsp, "ErrorComment": "Überlänge " * 10})  # informational: tolerated
    with pytest.raises(CommandError):
        validate({**rsp, "ErrorComment": "日本"})  # cannot be written
    with pytest.raises(CommandError):
        validate({**rsp, "ErrorComment": 5})


def test_dataset_presence_must_agree_with_spec() -> None:
    echo = sample_command(CommandField.C_ECHO_RQ)
    with pytest.raises(CommandError, match="data set it may not have") as info:
        validate({**echo, "CommandDataSetType": 0x0000})
    assert info.value.offending_element == (0x00000800,)
    store = sample_command(CommandField.C_STORE_RQ)
    with pytest.raises(CommandError, match="requires one"):
        validate({**store, "CommandDataSetType": NO_DATASET})
    # U / C: either way
    rsp = sample_command(CommandField.C_FIND_RSP)
    validate({**rsp, "CommandDataSetType": NO_DATASET})
    validate({**rsp, "CommandDataSetType": 0xFFFE})


def test_unknown_elements_and_extra_fields_are_tolerated() -> None:
    command = sample_command(CommandField.C_ECHO_RQ)
    command["00000850"] = b"\x01\x00"  # retired Number of Matches, raw
    command["Priority"] = 0  # not a C-ECHO field, but well typed
    validate(command)


def test_has_dataset() -> None:
    assert not has_dataset({"CommandDataSetType": 0x0101})
    assert has_dataset({"CommandDataSetType": 0x0000})
    assert has_dataset({"CommandDataSetType": 0x0102})
    assert not has_dataset({})


def test_make_request_echo() -> None:
    command = make_request(
        CommandField.C_ECHO_RQ, MessageID=1, AffectedSOPClassUID="1.2.840.10008.1.1"
    )
    assert command == {
        "CommandField": 0x0030,
        "MessageID": 1,
        "AffectedSOPClassUID": "1.2.840.10008.1.1",
        "CommandDataSetType": 0x0101,
    }


def test_make_request_defaults() -> None:
    store = make_request(
        CommandField.C_STORE_RQ,
        MessageID=2,
        AffectedSOPClassUID=SOP_CLASS,
        AffectedSOPInstanceUID=SOP_INSTANCE,
    )
    assert store["Priority"] == Priority.MEDIUM == 0
    assert has_dataset(store)
    create = make_request(CommandField.N_CREATE_RQ, MessageID=3, AffectedSOPClassUID=SOP_CLASS)
    assert not has_dataset(create)
    create = make_request(
        CommandField.N_CREATE_RQ, MessageID=3, AffectedSOPClassUID=SOP_CLASS, dataset=True
    )
    assert has_dataset(create)


def test_make_request_refuses_bad_commands() -> None:
    with pytest.raises(LocalProtocolError) as info:
        make_request(CommandField.C_STORE_RQ, MessageID=1)
    assert isinstance(info.value.__cause__, CommandError)
    with pytest.raises(LocalProtocolError):
        make_request(CommandField.C_ECHO_RSP, MessageIDBeingRespondedTo=1, Status=0)
    with pytest.raises(LocalProtocolError):
        make_request(CommandField.C_ECHO_RQ, MessageID=1, AffectedSOPClassUID="1.2", dataset=True)
    with pytest.raises(ValueError):
        make_command(0x1234)


def test_make_response_copies_the_request() -> None:
    store = sample_command(CommandField.C_STORE_RQ)
    rsp = make_response(store, 0x0000)
    assert rsp == {
        "CommandField": 0x8001,
        "MessageIDBeingRespondedTo": 7,
        "Status": 0,
        "AffectedSOPClassUID": SOP_CLASS,
        "AffectedSOPInstanceUID": SOP_INSTANCE,
        "CommandDataSetType": NO_DATASET,
    }
    find = sample_command(CommandField.C_FIND_RQ)
    rsp = make_response(find, 0xFF00, dataset=True)
    assert rsp["CommandField"] == 0x8020 and has_dataset(rsp)
    assert "AffectedSOPInstanceUID" not in rsp


def test_make_response_dimse_n() -> None:
    action = sample_command(CommandField.N_ACTION_RQ)
    rsp = make_response(action, 0)
    assert rsp["AffectedSOPClassUID"] == SOP_CLASS
    assert rsp["AffectedSOPInstanceUID"] == SOP_INSTANCE
    assert "ActionTypeID" not in rsp
    rsp = make_response(action, 0, dataset=True)
    assert rsp["ActionTypeID"] == SAMPLE_VALUES["ActionTypeID"]
    event = sample_command(CommandField.N_EVENT_REPORT_RQ)
    assert make_response(event, 0, dataset=True)["EventTypeID"] == 1
    move = sample_command(CommandField.C_MOVE_RQ)
    rsp = make_response(
        move,
        0xFF00,
        NumberOfRemainingSuboperations=3,
        NumberOfCompletedSuboperations=1,
        NumberOfFailedSuboperations=0,
        NumberOfWarningSuboperations=0,
    )
    assert rsp["NumberOfRemainingSuboperations"] == 3


def test_make_response_refusals() -> None:
    cancel = sample_command(CommandField.C_CANCEL_RQ)
    with pytest.raises(LocalProtocolError):
        make_response(cancel, 0)
    with pytest.raises(LocalProtocolError):
        make_response(sample_command(CommandField.C_ECHO_RSP), 0)
    with pytest.raises(LocalProtocolError):
        make_response({"CommandField": 0x30}, 0)  # no MessageID to respond to
    with pytest.raises(LocalProtocolError):
        make_response(sample_command(CommandField.C_ECHO_RQ), 0x10000)


def test_usage_values() -> None:
    assert [u.value for u in Usage] == ["M", "C", "U"]
    assert CommandField.C_ECHO_RQ.is_request and not CommandField.C_ECHO_RSP.is_request
    assert CommandField.C_CANCEL_RQ.is_request


def test_command_error_response_fields() -> None:
    error = CommandError(0x0212, "x" * 100 + "é", offending_element=[1, 2])
    fields = error.response_fields()
    assert fields["Status"] == 0x0212
    assert len(fields["ErrorComment"]) == 64 and fields["ErrorComment"].isascii()
    assert fields["OffendingElement"] == (1, 2)
    assert error.message_id is None and error.command_field is None
    assert "OffendingElement" not in CommandError(0x0211, "y").response_fields()
    assert repr(CommandError(0x0211, "y")) == "CommandError(0x0211, 'y')"


# -- validate(decoded=True): the received commands' cheaper checks -----------------


def _outcome(command: dict, **kwargs: object) -> object:
    try:
        return validate(command, **kwargs).field
    except CommandError as exc:
        return (exc.status, exc.offending_element, str(exc))


@given(
    field=st.sampled_from(list(CommandField)),
    optional=st.booleans(),
    mutation=st.tuples(st.integers(0, 4096), st.integers(0, 255)),
)
@settings(max_examples=300)
def test_validate_decoded_agrees_with_full_validation(field: CommandField, optional: bool, mutation: tuple[int, int]) -> None:
    """Whatever decode_command returns (a valid command, or one whose bytes
    were changed), validate(decoded=True) decides exactly as validate()."""
    from dimsekit.dimse.codec import decode_command, encode_command

    raw = bytearray(encode_command(sample_command(field, optional=optional)))
    position, value = mutation
    raw[position % len(raw)] = value
    try:
        command = decode_command(bytes(raw))
    except CommandError:
        return
    assert _outcome(command, decoded=True) == _outcome(command)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AffectedSOPClassUID", "1.2.3a"),
        ("AffectedSOPInstanceUID", "1" * 65),
        ("MoveDestination", "BACK\\SLASH"),
        ("MoveDestination", "A" * 17),
    ],
)
def test_validate_decoded_still_checks_uids_and_ae_titles(key: str, value: str) -> None:
    """The checks decoding cannot make for us are still made."""
    from dimsekit.dimse.codec import decode_command, encode_command

    field = CommandField.C_MOVE_RQ if key == "MoveDestination" else CommandField.C_STORE_RQ
    command = decode_command(encode_command(sample_command(field)))
    validate(command, decoded=True)
    command[key] = value  # as if the peer had sent it (encode_command refuses it)
    with pytest.raises(CommandError) as caught:
        validate(command, decoded=True)
    assert caught.value.status == 0x0212
