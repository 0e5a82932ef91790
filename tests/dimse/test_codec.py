"""Command set codec: group 0000, Implicit VR Little Endian (PS3.7 6.3.1)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dimsekit.dimse.codec import (
    ELEMENTS,
    KEYWORD_BY_TAG,
    CommandError,
    decode_command,
    encode_command,
    split_trailing,
    tag_of,
)
from dimsekit.dimse.commands import COMMANDS, CommandField, Usage, validate

from .pdata import sample_command

ALL_FIELDS = list(CommandField)

# C-ECHO-RQ, Message ID 1, Verification SOP Class -- written out byte by byte
# from PS3.5 7.1.3 (Implicit VR LE: tag, 4-byte length, value) and PS3.7 9.3.5.1.
GOLDEN_ECHO_RQ = bytes.fromhex(
    "00000000"
    "04000000"
    "38000000"  # (0000,0000) UL 4: group length 56
    "00000200"
    "12000000"
    "312e322e3834302e31303030382e312e3100"  # (0000,0002) UI 18, NUL pad
    "00000001"
    "02000000"
    "3000"  # (0000,0100) US: 0030H C-ECHO-RQ
    "00001001"
    "02000000"
    "0100"  # (0000,0110) US: Message ID 1
    "00000008"
    "02000000"
    "0101"  # (0000,0800) US: 0101H no data set
)
ECHO_RQ = {
    "CommandField": 0x0030,
    "MessageID": 1,
    "AffectedSOPClassUID": "1.2.840.10008.1.1",
    "CommandDataSetType": 0x0101,
}


def pydicom_encode(command: dict[str, Any]) -> bytes:
    """The same command set written by pydicom's general data-set writer."""

    def write(ds: Dataset) -> bytes:
        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = True
        write_dataset(fp, ds)
        return fp.getvalue()

    ds = Dataset()
    for key, value in command.items():
        setattr(ds, key, list(value) if isinstance(value, tuple) else value)
    ds.CommandGroupLength = len(write(ds))
    return write(ds)


def test_element_table_comes_from_the_dictionary() -> None:
    # Spot checks against PS3.7 Annex E, typed by hand.
    assert ELEMENTS["CommandGroupLength"][:2] == (0x00000000, "UL")
    assert ELEMENTS["CommandField"][:2] == (0x00000100, "US")
    assert ELEMENTS["MoveDestination"][:2] == (0x00000600, "AE")
    assert ELEMENTS["OffendingElement"] == (0x00000901, "AT", "1-n")
    assert ELEMENTS["ErrorComment"][:2] == (0x00000902, "LO")
    assert ELEMENTS["AttributeIdentifierList"] == (0x00001005, "AT", "1-n")
    assert ELEMENTS["MoveOriginatorApplicationEntityTitle"][:2] == (0x00001030, "AE")
    assert all(tag >> 16 == 0 for tag, _vr, _vm in ELEMENTS.values())
    assert {vr for _tag, vr, _vm in ELEMENTS.values()} == {"UL", "US", "UI", "AE", "AT", "LO"}
    assert all(KEYWORD_BY_TAG[tag] == kw for kw, (tag, _vr, _vm) in ELEMENTS.items())


def test_golden_echo_rq() -> None:
    assert encode_command(ECHO_RQ) == GOLDEN_ECHO_RQ
    assert decode_command(GOLDEN_ECHO_RQ) == ECHO_RQ
    assert decode_command(bytearray(GOLDEN_ECHO_RQ)) == ECHO_RQ
    assert decode_command(memoryview(GOLDEN_ECHO_RQ)) == ECHO_RQ


@pytest.mark.parametrize("optional", [False, True], ids=["required", "all-fields"])
@pytest.mark.parametrize("field", ALL_FIELDS, ids=lambda f: f.standard_name)
def test_every_command_round_trips(field: CommandField, optional: bool) -> None:
    command = sample_command(field, optional=optional)
    encoded = encode_command(command)
    decoded = decode_command(encoded)
    assert decoded == command
    validate(decoded)
    # Group length = every byte after the 12-byte group length element.
    assert encoded[:8] == b"\x00\x00\x00\x00\x04\x00\x00\x00"
    (group_length,) = struct.unpack_from("<I", encoded, 8)
    assert group_length == len(encoded) - 12
    # Byte for byte what pydicom's general writer produces.
    assert encoded == pydicom_encode(command)


@pytest.mark.parametrize("field", ALL_FIELDS, ids=lambda f: f.standard_name)
def test_elements_in_ascending_order_and_even(field: CommandField) -> None:
    encoded = encode_command(dict(reversed(sample_command(field, optional=True).items())))
    offset, tags = 0, []
    while offset < len(encoded):
        group, element, length = struct.unpack_from("<HHI", encoded, offset)
        assert group == 0 and length % 2 == 0
        tags.append(element)
        offset += 8 + length
    assert offset == len(encoded)
    assert tags == sorted(tags) and tags[0] == 0


def test_padding_and_stripping() -> None:
    command = {
        "CommandField": 0x0021,
        "MessageID": 5,
        "AffectedSOPClassUID": "1.2.3",  # odd: NUL pad
        "MoveDestination": "ODD",  # odd: space pad
        "Priority": 0,
        "CommandDataSetType": 1,
    }
    encoded = encode_command(command)
    assert b"1.2.3\x00" in encoded and b"ODD " in encoded
    assert decode_command(encoded) == command
    # Peers that pad the other way, or with both, still decode cleanly.
    raw = encoded.replace(b"1.2.3\x00", b"1.2.3 ").replace(b"ODD ", b"ODD\x00")
    assert decode_command(raw) == command


def test_group_length_in_input_is_ignored() -> None:
    assert encode_command({**ECHO_RQ, "CommandGroupLength": 12345}) == GOLDEN_ECHO_RQ


def test_unknown_group_0000_elements_are_kept_raw() -> None:
    # (0000,0850) Number of Matches is retired (PS3.7 Annex E.2); (0000,7777)
    # is unknown to every dictionary.
    extra = struct.pack("<HHI", 0, 0x0850, 2) + b"\x05\x00"
    extra += struct.pack("<HHI", 0, 0x7777, 3) + b"abc"
    body = GOLDEN_ECHO_RQ[12:] + extra
    raw = struct.pack("<HHII", 0, 0, 4, len(body)) + body
    decoded = decode_command(raw)
    assert decoded == {**ECHO_RQ, "00000850": b"\x05\x00", "00007777": b"abc"}
    validate(decoded)
    again = encode_command(decoded)
    assert decode_command(again) == {**ECHO_RQ, "00000850": b"\x05\x00", "00007777": b"abc\x00"}
    assert tag_of("00000850") == 0x0850 and tag_of("00100010") is None and tag_of("nope") is None


def test_group_length_absent_or_wrong_is_tolerated() -> None:
    assert decode_command(GOLDEN_ECHO_RQ[12:]) == ECHO_RQ
    wrong = GOLDEN_ECHO_RQ[:8] + b"\xff\x00\x00\x00" + GOLDEN_ECHO_RQ[12:]
    assert decode_command(wrong) == ECHO_RQ
    assert decode_command(b"") == {}


def test_at_values() -> None:
    rsp = sample_command(CommandField.N_SET_RSP, optional=True)
    rsp["AttributeIdentifierList"] = (0x00100010, 0xFFFFFFFF, 0)
    assert (
        decode_command(encode_command(rsp))["AttributeIdentifierList"]
        == rsp["AttributeIdentifierList"]
    )
    rsp["AttributeIdentifierList"] = 0x00100010  # a single int is accepted ...
    assert decode_command(encode_command(rsp))["AttributeIdentifierList"] == (0x00100010,)
    rsp["AttributeIdentifierList"] = ()  # ... and an empty list, as zero length
    assert decode_command(encode_command(rsp))["AttributeIdentifierList"] == ()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MessageID", 0x10000),
        ("MessageID", -1),
        ("MessageID", "1"),
        ("MessageID", True),
        ("AffectedSOPClassUID", 1.2),
        ("AffectedSOPClassUID", "€"),
        ("OffendingElement", ("x",)),
        ("OffendingElement", (1 << 32,)),
        ("NotAKeyword", 1),
        ("00100010", b"xx"),  # not group 0000
        ("00000000", b"xxxx"),
        ("00000850", 5),  # raw elements need bytes
    ],
)
def test_encode_rejects_bad_values(key: str, value: object) -> None:
    with pytest.raises(CommandError) as info:
        encode_command({**ECHO_RQ, key: value})
    assert info.value.status == 0x0212


def _element(element: int, value: bytes, group: int = 0, length: int | None = None) -> bytes:
    return struct.pack("<HHI", group, element, len(value) if length is None else length) + value


@pytest.mark.parametrize(
    ("raw", "offending", "message_id"),
    [
        (GOLDEN_ECHO_RQ[:-1], 0x0800, 1),  # US of 1 byte
        (GOLDEN_ECHO_RQ[:-3], None, 1),  # truncated header
        (GOLDEN_ECHO_RQ + _element(0x1000, b"1.2", length=100), 0x1000, 1),  # overrun
        (GOLDEN_ECHO_RQ + _element(0x0010, b"PN", group=0x0010), 0x00100010, 1),
        (GOLDEN_ECHO_RQ + _element(0x0110, b"\x02\x00"), 0x0110, 1),  # duplicate
        (GOLDEN_ECHO_RQ + _element(0x0901, b"\x10\x00"), 0x0901, 1),  # AT not 4n
        (GOLDEN_ECHO_RQ + _element(0x0900, b"", length=0xFFFFFFFF), 0x0900, 1),  # undefined
        (_element(0x0110, b"\x01\x00\x00\x00") + GOLDEN_ECHO_RQ[12:], 0x0110, 1),  # dup later
        (_element(0x0000, b"\x00\x00"), 0x0000, None),  # UL of 2 bytes
    ],
)
def test_decode_errors_keep_what_was_decoded(
    raw: bytes, offending: int | None, message_id: int | None
) -> None:
    with pytest.raises(CommandError) as info:
        decode_command(raw)
    error = info.value
    assert error.status == 0x0212
    assert error.offending_element == (() if offending is None else (offending,))
    assert error.message_id == message_id
    assert isinstance(error.command, dict)


def _known_elements() -> st.SearchStrategy[bytes]:
    elements = sorted(tag & 0xFFFF for tag, _vr, _vm in ELEMENTS.values())
    element = st.one_of(st.sampled_from(elements), st.integers(0, 0xFFFF))
    group = st.one_of(st.just(0), st.integers(0, 0xFFFF))
    value = st.binary(max_size=70)
    length_delta = st.one_of(st.just(0), st.integers(-8, 8), st.integers(0, 0xFFFFFFFF))
    return st.builds(
        lambda g, e, v, d: struct.pack("<HHI", g, e, max(0, len(v) + d) if d < 9 else d) + v,
        group,
        element,
        value,
        length_delta,
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), st.lists(_known_elements(), max_size=12).map(b"".join)))
def test_decode_arbitrary_bytes_raises_only_command_error(raw: bytes) -> None:
    try:
        command = decode_command(raw)
    except CommandError as error:
        assert error.status in (0x0211, 0x0212)
        return
    try:
        validate(command)
    except CommandError as error:
        assert error.status in (0x0211, 0x0212)
        return
    # Valid: re-encoding gives something that decodes to the same command.
    assert decode_command(encode_command(command)) == {
        k: (v + b"\x00" if isinstance(v, bytes) and len(v) % 2 else v) for k, v in command.items()
    }


# Random valid values per VR, for a round-trip property over every command.
_UID = st.from_regex(r"[1-9][0-9]{0,8}(\.(0|[1-9][0-9]{0,8})){0,7}", fullmatch=True).filter(
    lambda uid: len(uid) <= 64  # PS3.5 9.1: at most 64 characters
)
_AE = st.from_regex(r"[A-Z0-9_]([A-Z0-9_ ]{0,14}[A-Z0-9_])?", fullmatch=True)
_LO = st.from_regex(r"[!-\[\]-~]([ -\[\]-~]{0,62}[!-\[\]-~])?", fullmatch=True)
_US = st.integers(0, 0xFFFF)
_AT = st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=6).map(tuple)
_BY_VR = {"UI": _UID, "AE": _AE, "LO": _LO, "SH": _LO, "US": _US, "AT": _AT}


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    field = draw(st.sampled_from(ALL_FIELDS))
    spec = COMMANDS[field]
    command: dict[str, Any] = {"CommandField": int(field)}
    for key, usage in spec.fields.items():
        if key in ("CommandField", "CommandDataSetType"):
            continue
        if usage is Usage.M or draw(st.booleans()):
            command[key] = draw(
                st.integers(0, 2) if key == "Priority" else _BY_VR[ELEMENTS[key][1]]
            )
    if spec.dataset is None:
        command["CommandDataSetType"] = 0x0101
    elif spec.dataset is Usage.M:
        command["CommandDataSetType"] = draw(st.integers(0, 0xFFFF).filter(lambda v: v != 0x0101))
    else:
        command["CommandDataSetType"] = draw(_US)
    return command


@settings(max_examples=300)
@given(commands())
def test_random_commands_round_trip(command: dict[str, Any]) -> None:
    validate(command)
    encoded = encode_command(command)
    assert decode_command(encoded) == command
    assert encoded == pydicom_encode(command)


# -- elements after the command group (split_trailing) ----------------------------------------------


def test_elements_after_the_command_group_are_split_off() -> None:
    # Orthanc 1.10's failed C-GET-RSP, as it came: the Failed SOP Instance UID List (and its group's
    # length) after the command elements, Command Data Set Type "none"
    trailing = _element(0x0000, struct.pack("<I", 54), group=0x0008) + _element(0x0058, b"1.2.3.4" * 6 + b"\x00" * 4,
                                                                                 group=0x0008)
    command, tags = split_trailing(GOLDEN_ECHO_RQ + trailing)
    assert command == GOLDEN_ECHO_RQ and tags == (0x00080000, 0x00080058)
    assert decode_command(command) == decode_command(GOLDEN_ECHO_RQ)


@pytest.mark.parametrize("raw", [
    GOLDEN_ECHO_RQ,  # nothing after the group
    _element(0x0010, b"PN", group=0x0010) + GOLDEN_ECHO_RQ,  # nothing of group 0000 before
    GOLDEN_ECHO_RQ + _element(0x0010, b"PN", group=0x0010) + _element(0x0110, b"\x02\x00"),  # group 0000 again
    GOLDEN_ECHO_RQ + _element(0x0010, b"PN", group=0x0010, length=9),  # overruns the end
    GOLDEN_ECHO_RQ + _element(0x0010, b"PN", group=0x0010) + b"\x08\x00",  # ends inside a header
    GOLDEN_ECHO_RQ[:-1] + _element(0x0010, b"PN", group=0x0010),  # the group itself broken
])
def test_what_is_not_a_command_group_with_elements_after_it_is_not_split(raw: bytes) -> None:
    assert split_trailing(raw) is None


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    field=st.sampled_from(sorted(COMMANDS)),
    trailing=st.lists(st.tuples(st.integers(1, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=40)),
                      min_size=1, max_size=5),
)
def test_any_command_with_any_elements_after_it_splits_back_into_both(field: int, trailing: list) -> None:
    raw = encode_command(sample_command(field))
    extra = b"".join(_element(element, value, group=group) for group, element, value in trailing)
    with pytest.raises(CommandError):
        decode_command(raw + extra)  # the strict decoder still refuses it
    assert split_trailing(raw + extra) == (raw, tuple(group << 16 | element for group, element, _v in trailing))
