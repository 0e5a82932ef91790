"""The UL PDU codec against golden bytes, framing, limits and malformed input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimsekit.errors import LocalProtocolError, RemoteProtocolError
from dimsekit.ul.items import (
    ItemType,
    PresentationContextAC,
    PresentationContextRQ,
    UnknownItem,
    UserIdentityRQ,
    UserInformation,
    decode_user_information,
    encode_user_information,
    encode_user_item,
)
from dimsekit.ul.pdu import (
    MAX_CONTROL_PDU_LENGTH,
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    PresentationDataValue,
    ReleaseRQ,
    decode,
    decode_from,
    encode,
    encode_pdata,
)

from . import golden

GOLDEN_IDS = [name for name, _, _ in golden.GOLDEN]


def decode_all(buf: bytes, **limits: int) -> list[object]:
    """Every PDU in ``buf``; fails if bytes are left over."""
    out = []
    pos = 0
    while pos < len(buf):
        result = decode(buf[pos:], **limits)
        assert result is not None, f"incomplete PDU at offset {pos}"
        pdu, used = result
        out.append(pdu)
        pos += used
    return out


def raises_remote(buf: bytes | bytearray | memoryview, reason: int, **limits: int) -> str:
    """Decode ``buf`` expecting RemoteProtocolError with A-ABORT ``reason``."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(buf, **limits)
    assert info.value.abort_source == 2
    assert info.value.abort_reason == reason, str(info.value)
    return str(info.value)


# -- golden bytes -------------------------------------------------------------------


@pytest.mark.parametrize(("name", "wire", "value"), golden.GOLDEN, ids=GOLDEN_IDS)
def test_golden_decodes_to_value(name: str, wire: bytes, value: object) -> None:
    assert decode(wire) == (value, len(wire))


@pytest.mark.parametrize(("name", "wire", "value"), golden.GOLDEN, ids=GOLDEN_IDS)
def test_golden_value_encodes_to_bytes(name: str, wire: bytes, value: object) -> None:
    assert value.encode() == wire  # type: ignore[attr-defined]
    assert encode(value) == wire  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "wire", "value"), golden.GOLDEN, ids=GOLDEN_IDS)
def test_golden_one_byte_at_a_time(name: str, wire: bytes, value: object) -> None:
    buf = bytearray()
    for byte in wire[:-1]:
        buf.append(byte)
        assert decode(buf) is None
    buf.append(wire[-1])
    assert decode(buf) == (value, len(wire))


@pytest.mark.parametrize(("name", "wire", "value"), golden.GOLDEN, ids=GOLDEN_IDS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_golden_at_split_points(name: str, wire: bytes, value: object, data: st.DataObject) -> None:
    # Feed the golden in chunks cut at hypothesis-chosen points, as a
    # transport would deliver it, with a trailing PDU's first bytes behind it.
    cuts = sorted(
        data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=6, unique=True), label="cuts")
    )
    buf = bytearray()
    previous = 0
    for cut in [*cuts, len(wire)]:
        buf += wire[previous:cut]
        previous = cut
        if cut < len(wire):
            assert decode(buf) is None
    buf += golden.RELEASE_RQ[:3]
    assert decode(buf) == (value, len(wire))
    assert decode(memoryview(bytes(buf))) == (value, len(wire))


def test_concatenated_pdus_in_one_buffer() -> None:
    wires = [wire for _, wire, _ in golden.GOLDEN]
    values = [value for _, _, value in golden.GOLDEN]
    buf = b"".join(wires) + b"".join(reversed(wires))
    assert decode_all(buf) == values + list(reversed(values))


def test_consumed_count_stops_at_pdu_end() -> None:
    buf = golden.P_DATA_TF + golden.ABORT + b"\x05\x00"
    pdu, used = decode(buf)  # type: ignore[misc]
    assert (pdu, used) == (golden.P_DATA_TF_VALUE, len(golden.P_DATA_TF))
    assert decode(buf[used:]) == (golden.ABORT_VALUE, 10)
    assert decode(buf[used + 10 :]) is None


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_buffer_types(kind: type) -> None:
    buf = kind(golden.ASSOCIATE_RQ_EXTENDED + golden.P_DATA_TF)
    pdu, used = decode(buf)  # type: ignore[misc]
    assert pdu == golden.ASSOCIATE_RQ_EXTENDED_VALUE
    pdata, _ = decode(buf[used:])  # type: ignore[misc]
    assert pdata == golden.P_DATA_TF_VALUE
    assert all(type(pdv.data) is bytes for pdv in pdata.pdvs)


def test_memoryview_of_other_format_and_offset() -> None:
    # A view into the middle of a larger buffer, and a signed-char view.
    big = bytearray(b"xx" + golden.P_DATA_TF + b"yy")
    assert decode(memoryview(big)[2:]) == (golden.P_DATA_TF_VALUE, len(golden.P_DATA_TF))
    signed = memoryview(bytearray(golden.ABORT)).cast("b")
    assert decode(signed) == (golden.ABORT_VALUE, 10)
    strided = memoryview(bytes(b for byte in golden.ABORT for b in (byte, 0xEE)))[::2]
    assert decode(strided) == (golden.ABORT_VALUE, 10)


def test_bytearray_resizable_after_decode_error() -> None:
    # The decoder must not keep an export of the caller's bytearray alive,
    # not even through the traceback of the error it raised.
    buf = bytearray(golden.P_DATA_TF)
    buf[6:10] = b"\x00\x00\x00\x01"  # PDV item-length 1 < 2
    with pytest.raises(RemoteProtocolError) as info:
        decode(buf)
    assert info.value.__traceback__ is not None
    del buf[:4]  # would raise BufferError if a view were still exported
    buf += b"more"
    assert len(buf) == len(golden.P_DATA_TF)


def test_bytearray_resizable_after_decode() -> None:
    buf = bytearray(golden.P_DATA_TF + golden.RELEASE_RQ)
    pdu, used = decode(buf)  # type: ignore[misc]
    del buf[:used]
    assert decode(buf) == (ReleaseRQ(), 10)
    assert pdu == golden.P_DATA_TF_VALUE


# -- header checks, before the body arrives ------------------------------------------


def test_huge_length_raises_from_six_bytes() -> None:
    for pdu_type in (0x01, 0x02, 0x04):
        header = bytes([pdu_type, 0]) + struct.pack(">I", 0xFFFFFFF0)
        raises_remote(header, 6, max_pdata_length=16384)


def test_huge_control_length_raises_even_without_pdata_limit() -> None:
    header = b"\x01\x00" + struct.pack(">I", 0xFFFFFFF0)
    raises_remote(header, 6)  # max_pdata_length=0 does not lift the control limit


def test_control_limit_is_inclusive() -> None:
    header = b"\x01\x00" + struct.pack(">I", MAX_CONTROL_PDU_LENGTH)
    assert decode(header) is None  # allowed: wait for the body
    header = b"\x01\x00" + struct.pack(">I", MAX_CONTROL_PDU_LENGTH + 1)
    raises_remote(header, 6)
    assert decode(header, max_control_length=0) is None  # 0 = no limit
    raises_remote(golden.ASSOCIATE_RQ_ECHO, 6, max_control_length=204)
    assert decode(golden.ASSOCIATE_RQ_ECHO, max_control_length=205) is not None


def test_pdata_above_max_length_raises() -> None:
    assert len(golden.P_DATA_TF) - 6 == 80
    raises_remote(golden.P_DATA_TF, 6, max_pdata_length=79)
    raises_remote(golden.P_DATA_TF[:6], 6, max_pdata_length=79)
    assert decode(golden.P_DATA_TF, max_pdata_length=80) == (golden.P_DATA_TF_VALUE, 86)


def test_pdata_max_length_zero_means_unlimited() -> None:
    data = bytes(range(256)) * 600  # 153600 bytes, above the control limit too
    wire = encode_pdata([(5, 0x02, data)])
    assert decode(wire, max_control_length=16) == (
        PDataTF(pdvs=(PresentationDataValue(context_id=5, control=2, data=data),)),
        len(wire),
    )


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x10, 0x41, 0xFF])
def test_unknown_pdu_type_raises_unrecognized_from_header(pdu_type: int) -> None:
    message = raises_remote(bytes([pdu_type, 0, 0, 0, 0, 4]), 1)
    assert f"{pdu_type:02X}H" in message


@pytest.mark.parametrize("pdu_type", [0x03, 0x05, 0x06, 0x07])
@pytest.mark.parametrize("length", [0, 3, 5, 0x10000])
def test_fixed_length_pdus_checked_from_header(pdu_type: int, length: int) -> None:
    raises_remote(bytes([pdu_type, 0]) + struct.pack(">I", length), 6)


@pytest.mark.parametrize("pdu_type", [0x01, 0x02])
def test_associate_shorter_than_fixed_fields_raises(pdu_type: int) -> None:
    raises_remote(bytes([pdu_type, 0]) + struct.pack(">I", 67), 6)
    assert decode(bytes([pdu_type, 0]) + struct.pack(">I", 68)) is None


@pytest.mark.parametrize("length", [0, 1, 5])
def test_pdata_too_short_for_a_pdv_raises(length: int) -> None:
    # zero PDVs (length 0) and lengths that cannot hold a PDV header
    raises_remote(b"\x04\x00" + struct.pack(">I", length), 6)


def test_short_header_is_incomplete() -> None:
    for n in range(6):
        assert decode(b"\xff\x00\xff\xff\xff\xff"[:n]) is None


def test_reserved_fields_not_tested() -> None:
    wire = bytearray(golden.ASSOCIATE_RJ)
    wire[1] = 0xAA  # PDU header reserved byte
    wire[6] = 0xBB  # RJ byte 7 reserved
    assert decode(wire) == (golden.ASSOCIATE_RJ_VALUE, 10)
    wire = bytearray(golden.ASSOCIATE_RQ_ECHO)
    wire[8:10] = b"\xff\xff"  # bytes 9-10
    wire[42:74] = b"\x5a" * 32  # bytes 43-74
    wire[75] = 0x77  # reserved byte of the application context item
    assert decode(wire) == (golden.ASSOCIATE_RQ_ECHO_VALUE, len(wire))
    release = bytearray(golden.RELEASE_RP)
    release[6:10] = b"\x01\x02\x03\x04"
    assert decode(release) is not None


# -- truncated and lying bodies ------------------------------------------------------


def test_truncated_associate_rq_is_incomplete() -> None:
    wire = golden.ASSOCIATE_RQ_EXTENDED
    for n in (6, 7, 74, 100, len(wire) - 1):
        assert decode(wire[:n]) is None


def test_associate_rq_with_lying_item_length_raises() -> None:
    # The presentation context item (offset 99) claims more than the PDU holds.
    wire = bytearray(golden.ASSOCIATE_RQ_ECHO)
    assert wire[99] == 0x20
    wire[101:103] = b"\x01\x00"
    message = raises_remote(bytes(wire), 6)
    assert "20H" in message


def test_lying_sub_item_length_inside_item_raises() -> None:
    # Abstract syntax sub-item (offset 107) running past its presentation context.
    wire = bytearray(golden.ASSOCIATE_RQ_ECHO)
    assert wire[107] == 0x30
    wire[109:111] = b"\x00\x30"
    raises_remote(bytes(wire), 6)


def test_lying_user_item_length_raises() -> None:
    wire = bytearray(golden.ASSOCIATE_RQ_ECHO)
    offset = wire.index(b"\x51\x00\x00\x04")
    wire[offset + 3] = 0x40
    raises_remote(bytes(wire), 6)


def test_pdu_length_shorter_than_items_raises() -> None:
    # PDU-length cut by 3: the last item then runs past the PDU.
    wire = bytearray(golden.ASSOCIATE_AC_ECHO[:-3])
    wire[2:6] = struct.pack(">I", len(wire) - 6)
    raises_remote(bytes(wire), 6)


def test_trailing_bytes_too_short_for_item_head_raise() -> None:
    wire = bytearray(golden.ASSOCIATE_AC_ECHO + b"\x99\x00")
    wire[2:6] = struct.pack(">I", len(wire) - 6)
    message = raises_remote(bytes(wire), 6)
    assert "trailing" in message


@pytest.mark.parametrize("bad_item", [b"\x00\x00\x00\x00", b"\x00\x00\x00\x01\x05"])
def test_pdv_length_below_two_raises(bad_item: bytes) -> None:
    # A PDV item-length of 0 or 1 cannot hold the context ID and control
    # header; a valid PDV follows so that nothing else in the PDU is wrong.
    body = bad_item + b"\x00\x00\x00\x03\x01\x02\xaa"
    message = raises_remote(b"\x04\x00" + struct.pack(">I", len(body)) + body, 6)
    assert "PDV item length" in message


def test_pdv_length_past_pdu_end_raises() -> None:
    wire = bytearray(golden.P_DATA_TF)
    wire[6:10] = struct.pack(">I", 41)  # first PDV one byte longer
    raises_remote(bytes(wire), 6)
    wire[6:10] = struct.pack(">I", 0xFFFFFFFF)
    raises_remote(bytes(wire), 6)


def test_pdata_trailing_bytes_raise() -> None:
    wire = golden.P_DATA_TF[:2] + struct.pack(">I", 83) + golden.P_DATA_TF[6:] + b"\x00\x00\x00"
    raises_remote(wire, 6)


def test_pdv_with_empty_fragment() -> None:
    wire = b"\x04\x00\x00\x00\x00\x06\x00\x00\x00\x02\x03\x02"
    assert decode(wire) == (
        PDataTF(pdvs=(PresentationDataValue(context_id=3, control=2, data=b""),)),
        12,
    )


# -- A-ASSOCIATE item rules -------------------------------------------------------


def _associate(items: bytes, pdu_type: int = 0x01) -> bytes:
    """An A-ASSOCIATE-RQ/AC with the golden's fixed fields and the given items."""
    fixed = golden.ASSOCIATE_RQ_ECHO[6:74]
    body = fixed + items
    return bytes([pdu_type, 0]) + struct.pack(">I", len(body)) + body


def _item(item_type: int, value: bytes) -> bytes:
    return bytes([item_type, 0]) + struct.pack(">H", len(value)) + value


APP_CONTEXT = _item(0x10, b"1.2.840.10008.3.1.1.1")
PC_RQ = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1.2") + _item(0x40, b"1.2.3"))
PC_AC = _item(0x21, b"\x01\x00\x00\x00" + _item(0x40, b"1.2.3"))
USER_INFO = _item(0x50, _item(0x51, b"\x00\x00\x10\x00"))


def test_items_in_any_order() -> None:
    pdu, _ = decode(_associate(USER_INFO + PC_RQ + APP_CONTEXT))  # type: ignore[misc]
    assert pdu.application_context_name == "1.2.840.10008.3.1.1.1"
    assert pdu.presentation_contexts == (
        PresentationContextRQ(context_id=1, abstract_syntax="1.2", transfer_syntaxes=("1.2.3",)),
    )
    assert pdu.user_information.maximum_length == 4096


def test_missing_application_context_raises() -> None:
    raises_remote(_associate(PC_RQ + USER_INFO), 6)
    raises_remote(_associate(PC_AC + USER_INFO, 0x02), 6)


def test_duplicate_application_context_or_user_info_raises() -> None:
    raises_remote(_associate(APP_CONTEXT + PC_RQ + APP_CONTEXT + USER_INFO), 5)
    raises_remote(_associate(APP_CONTEXT + PC_RQ + USER_INFO + USER_INFO), 5)


def test_missing_user_information_decodes_empty() -> None:
    pdu, _ = decode(_associate(APP_CONTEXT + PC_RQ))  # type: ignore[misc]
    assert pdu.user_information == UserInformation()


def test_wrong_kind_of_presentation_context_raises() -> None:
    raises_remote(_associate(APP_CONTEXT + PC_AC + USER_INFO, 0x01), 5)
    raises_remote(_associate(APP_CONTEXT + PC_RQ + USER_INFO, 0x02), 5)
    raises_remote(_associate(APP_CONTEXT + _item(0x30, b"1.2") + USER_INFO), 5)


def test_unknown_items_kept_byte_for_byte() -> None:
    odd = _item(0xC3, b"\x00\xff\x10") + _item(0x11, b"")
    wire = _associate(APP_CONTEXT + PC_RQ + USER_INFO + odd)
    pdu, _ = decode(wire)  # type: ignore[misc]
    assert pdu.unknown_items == (
        UnknownItem(item_type=0xC3, data=b"\x00\xff\x10"),
        UnknownItem(item_type=0x11, data=b""),
    )
    assert pdu.encode() == wire


def test_unknown_user_sub_item_kept() -> None:
    value = _item(0x51, b"\x00\x00\x10\x00") + _item(0xA0, b"anything") + _item(0x5A, b"")
    info = decode_user_information(value)
    assert info.items[1:] == (
        UnknownItem(item_type=0xA0, data=b"anything"),
        UnknownItem(item_type=0x5A, data=b""),
    )
    assert encode_user_information(info) == _item(0x50, value)


def test_presentation_context_rq_sub_item_rules() -> None:
    no_abstract = _item(0x20, b"\x01\x00\x00\x00" + _item(0x40, b"1.2"))
    raises_remote(_associate(APP_CONTEXT + no_abstract), 6)
    two_abstract = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1") + _item(0x30, b"2"))
    raises_remote(_associate(APP_CONTEXT + two_abstract), 5)
    stray = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1") + _item(0x51, b"\x00" * 4))
    raises_remote(_associate(APP_CONTEXT + stray), 4)
    short = _item(0x20, b"\x01\x00\x00")
    raises_remote(_associate(APP_CONTEXT + short), 6)
    # transfer syntax before abstract syntax; no transfer syntax at all: both accepted
    reordered = _item(0x20, b"\x05\x00\x00\x00" + _item(0x40, b"9.9") + _item(0x30, b"1.1"))
    empty_ts = _item(0x20, b"\x07\x00\x00\x00" + _item(0x30, b"1.1"))
    pdu, _ = decode(_associate(APP_CONTEXT + reordered + empty_ts))  # type: ignore[misc]
    assert pdu.presentation_contexts == (
        PresentationContextRQ(context_id=5, abstract_syntax="1.1", transfer_syntaxes=("9.9",)),
        PresentationContextRQ(context_id=7, abstract_syntax="1.1", transfer_syntaxes=()),
    )


def test_presentation_context_ac_sub_item_rules() -> None:
    two_ts = _item(0x21, b"\x01\x00\x00\x00" + _item(0x40, b"1") + _item(0x40, b"2"))
    raises_remote(_associate(APP_CONTEXT + two_ts, 0x02), 5)
    stray = _item(0x21, b"\x01\x00\x00\x00" + _item(0x30, b"1"))
    raises_remote(_associate(APP_CONTEXT + stray, 0x02), 4)
    short = _item(0x21, b"\x01")
    raises_remote(_associate(APP_CONTEXT + short, 0x02), 6)
    empty_ts = _item(0x21, b"\x01\x00\x04\x00" + _item(0x40, b""))
    pdu, _ = decode(_associate(APP_CONTEXT + empty_ts, 0x02))  # type: ignore[misc]
    assert pdu.presentation_contexts == (
        PresentationContextAC(context_id=1, result=4, transfer_syntax=""),
    )


def test_presentation_context_sub_items_of_unknown_type_are_skipped() -> None:
    # PS3.8 9.3: "Items of unrecognized types shall be ignored and skipped" --
    # inside a presentation context too; a known type out of place still raises.
    rq_item = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1.2") + _item(0xC3, b"x") + _item(0x40, b"1.2.3"))
    pdu, _ = decode(_associate(APP_CONTEXT + rq_item + USER_INFO))  # type: ignore[misc]
    assert pdu.presentation_contexts == (
        PresentationContextRQ(context_id=1, abstract_syntax="1.2", transfer_syntaxes=("1.2.3",)),
    )
    ac_item = _item(0x21, b"\x01\x00\x00\x00" + _item(0x99, b"") + _item(0x40, b"1.2.3"))
    pdu, _ = decode(_associate(APP_CONTEXT + ac_item + USER_INFO, 0x02))  # type: ignore[misc]
    assert pdu.presentation_contexts == (
        PresentationContextAC(context_id=1, result=0, transfer_syntax="1.2.3"),
    )


@pytest.mark.parametrize(
    "sub_item",
    [
        _item(0x51, b"\x00\x00\x10"),  # max length: 3 bytes, not 4
        _item(0x51, b"\x00\x00\x10\x00\x00"),
        _item(0x53, b"\x00\x01\x00"),  # async window: 3 bytes
        _item(0x54, b"\x00\x03" + b"1.2" + b"\x01"),  # role: one role byte missing
        _item(0x54, b"\x00\x03" + b"1.2" + b"\x01\x01\x01"),  # role: one too many
        _item(0x54, b"\x00\x09" + b"1.2" + b"\x01\x01"),  # role: UID-length lies
        _item(0x54, b"\x00"),  # role: UID-length cut
        _item(0x56, b"\x00\x10" + b"1.2"),  # SOP class extended: UID-length lies
        _item(0x57, b"\x00\x01" + b"1" + b"\x00\x01" + b"2"),  # common ext.: no related field
        _item(0x57, b"\x00\x01" + b"1" + b"\x00\x01" + b"2" + b"\x00\x04" + b"\x00\x05" + b"12"),
        _item(0x57, b"\x00\x01" + b"1" + b"\x00\x01" + b"2" + b"\x00\x00" + b"\xee"),
        _item(0x58, b"\x01"),  # identity RQ: too short
        _item(0x58, b"\x01\x00\x00\x09" + b"bob"),  # primary length lies
        _item(0x58, b"\x02\x00\x00\x03" + b"bob" + b"\x00\x04" + b"pw"),  # secondary lies
        _item(0x58, b"\x02\x00\x00\x03" + b"bob" + b"\x00\x02" + b"pw" + b"!"),  # trailing
        _item(0x59, b""),  # identity AC: no length field
        _item(0x59, b"\x00\x02" + b"ok" + b"!"),  # identity AC: trailing
    ],
)
def test_malformed_user_sub_items_raise(sub_item: bytes) -> None:
    raises_remote(_associate(APP_CONTEXT + PC_RQ + _item(0x50, sub_item)), 6)


def test_user_identity_without_secondary_length_accepted() -> None:
    info = decode_user_information(_item(0x58, b"\x01\x01\x00\x03bob"))
    assert info.user_identity_rq == UserIdentityRQ(
        identity_type=1, positive_response_requested=True, primary_field=b"bob"
    )


def test_common_extended_sub_item_version_byte() -> None:
    wire = golden.ASSOCIATE_RQ_EXTENDED
    offset = wire.index(b"\x57\x00\x00\x53")
    assert wire[offset + 1] == 0  # we send sub-item-version 0
    mutated = bytearray(wire)
    mutated[offset + 1] = 1  # and do not test it on receipt
    assert decode(mutated) == (golden.ASSOCIATE_RQ_EXTENDED_VALUE, len(wire))


# -- text fields ---------------------------------------------------------------------


def test_ae_titles_padding_stripped_on_decode() -> None:
    wire = bytearray(golden.ASSOCIATE_RQ_ECHO)
    wire[10:26] = b"  ANY SCP       "  # leading spaces, inner space kept
    wire[26:42] = b"ECHOSCU         "
    pdu, _ = decode(wire)  # type: ignore[misc]
    assert pdu.called_ae_title == "ANY SCP"
    assert pdu.calling_ae_title == "ECHOSCU"


def test_ae_title_odd_bytes_never_raise() -> None:
    wire = bytearray(golden.ASSOCIATE_RQ_ECHO)
    wire[10:26] = b"\xff\xfe\x80AE\x00\x01" + b" " * 9
    pdu, _ = decode(wire)  # type: ignore[misc]
    assert pdu.called_ae_title == "\xff\xfe\x80AE\x00\x01"
    assert pdu.encode() == bytes(wire)  # round-trips byte for byte


def test_ae_title_encoded_padded_to_16() -> None:
    pdu = AssociateRQ(called_ae_title="A", calling_ae_title="B" * 16, presentation_contexts=())
    wire = pdu.encode()
    assert wire[10:26] == b"A" + b" " * 15
    assert wire[26:42] == b"B" * 16


def test_uids_lose_trailing_nul_and_spaces() -> None:
    pc = _item(0x20, b"\x01\x00\x00\x00" + _item(0x30, b"1.2.3\x00") + _item(0x40, b"1.2 "))
    app = _item(0x10, b"1.2.840.10008.3.1.1.1\x00")
    ui = _item(0x50, _item(0x52, b"1.2.3.4\x00") + _item(0x55, b"NAME  "))
    pdu, _ = decode(_associate(app + pc + ui))  # type: ignore[misc]
    assert pdu.application_context_name == "1.2.840.10008.3.1.1.1"
    assert pdu.presentation_contexts[0].abstract_syntax == "1.2.3"
    assert pdu.presentation_contexts[0].transfer_syntaxes == ("1.2",)
    assert pdu.user_information.implementation_class_uid == "1.2.3.4"
    assert pdu.user_information.implementation_version_name == "NAME"


def test_uids_encoded_without_padding() -> None:
    # odd-length UIDs stay odd: no NUL added in the UL (PS3.8 9.3.2.2.1)
    wire = golden.ASSOCIATE_RQ_ECHO_VALUE.encode()
    assert b"1.2.840.10008.1.1\x00" not in wire
    assert b"\x00\x111.2.840.10008.1.1\x40" in wire


# -- encoding errors are ours: LocalProtocolError --------------------------------------


@pytest.mark.parametrize(
    "pdu",
    [
        AssociateRQ(called_ae_title="X" * 17, calling_ae_title="B", presentation_contexts=()),
        AssociateRQ(called_ae_title="\u20ac", calling_ae_title="B", presentation_contexts=()),
        AssociateRQ(
            called_ae_title="A",
            calling_ae_title="B",
            presentation_contexts=(
                PresentationContextRQ(context_id=257, abstract_syntax="1", transfer_syntaxes=()),
            ),
        ),
        AssociateAC(
            called_ae_title="A",
            calling_ae_title="B",
            presentation_contexts=(),
            application_context_name="9" * 70000,
        ),
        AssociateAC(
            called_ae_title="A",
            calling_ae_title="B",
            presentation_contexts=(),
            user_information=UserInformation(items=("not an item",)),  # type: ignore[arg-type]
        ),
        AssociateRJ(result=1, source=1, reason=256),
        Abort(source=-1),
        PDataTF(pdvs=()),
        PDataTF(pdvs=(PresentationDataValue(context_id=300, control=0, data=b""),)),
    ],
)
def test_unencodable_values_raise_local_error(pdu: object) -> None:
    with pytest.raises(LocalProtocolError):
        pdu.encode()  # type: ignore[attr-defined]


# -- encode_pdata -------------------------------------------------------------------


def test_encode_pdata_matches_golden() -> None:
    part1 = golden.P_DATA_TF_VALUE.pdvs[0].data
    part2 = golden.P_DATA_TF_VALUE.pdvs[1].data
    assert encode_pdata([(1, 0x01, part1), (1, 0x03, part2)]) == golden.P_DATA_TF
    # any contiguous byte buffer will do, and a generator is accepted
    pieces = (x for x in [(1, 0x01, bytearray(part1)), (1, 0x03, memoryview(part2))])
    assert encode_pdata(pieces) == golden.P_DATA_TF


def test_encode_pdata_wide_memoryview_counts_bytes() -> None:
    data = memoryview(struct.pack("<4I", 1, 2, 3, 4)).cast("I")
    wire = encode_pdata([(1, 0, data)])
    assert wire[2:6] == struct.pack(">I", 6 + 16)
    assert decode(wire)[0].pdvs[0].data == data.tobytes()  # type: ignore[index]


def test_encode_pdata_empty_raises() -> None:
    with pytest.raises(LocalProtocolError):
        encode_pdata([])


def test_pdv_control_bits() -> None:
    pdvs = golden.P_DATA_TF_VALUE.pdvs
    assert (pdvs[0].is_command, pdvs[0].is_last) == (True, False)
    assert (pdvs[1].is_command, pdvs[1].is_last) == (True, True)
    dataset = PresentationDataValue(context_id=1, control=0x02, data=b"")
    assert (dataset.is_command, dataset.is_last) == (False, True)


def test_item_type_values_are_the_standards() -> None:
    assert [int(t) for t in ItemType] == [
        0x10, 0x20, 0x21, 0x30, 0x40, 0x50,
        0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59,
    ]  # fmt: skip


# -- PDV data without copies (the receiving hot path) ------------------------------


def test_decode_from_a_memoryview_hands_out_views_of_it() -> None:
    raw = encode_pdata([(1, 0x00, b"A" * 100), (1, 0x02, b"B" * 50)])
    pdu, end = decode_from(memoryview(raw), 0)
    assert end == len(raw)
    first, second = pdu.pdvs
    assert type(first.data) is memoryview and first.data.obj is raw  # no copy
    assert (first.data, second.data) == (b"A" * 100, b"B" * 50)
    context_id, control, data = second  # a PDV is a 3-tuple
    assert (context_id, control, bytes(data)) == (1, 0x02, b"B" * 50)


def test_decode_from_bytes_and_decode_of_a_bytearray_copy() -> None:
    """A buffer its owner reuses (the upper layer's bytearray) must not be
    shared with the PDVs decoded from it."""
    raw = encode_pdata([(3, 0x02, b"xyz" * 10)])
    pdu, _ = decode_from(raw, 0)
    assert type(pdu.pdvs[0].data) is bytes
    buffer = bytearray(raw)
    pdu, _ = decode(buffer)
    assert type(pdu.pdvs[0].data) is bytes
    buffer.clear()  # no export left on it
    buffer += b"\0" * len(raw)
    assert pdu.pdvs[0].data == b"xyz" * 10


def test_a_user_identity_shows_no_credential() -> None:
    """A passcode (or a ticket, an assertion, a JWT) never reaches a log line or an error
    message through a repr: the lengths only."""
    identity = UserIdentityRQ(identity_type=2, positive_response_requested=True, primary_field=b"alice",
                              secondary_field=b"s3cret-passcode")
    assert repr(identity) == ("UserIdentityRQ(identity_type=2, positive_response_requested=True, "
                              "primary_field=<5 bytes>, secondary_field=<15 bytes>)")
    assert "s3cret" not in repr(UserInformation(items=(identity,)))
    for bad in (UserIdentityRQ(identity_type=300, positive_response_requested=False, primary_field=b"alice",
                               secondary_field=b"s3cret-passcode"),
                UserIdentityRQ(identity_type=2, positive_response_requested=False, primary_field="alice",  # type: ignore[arg-type]
                               secondary_field=b"s3cret-passcode")):
        with pytest.raises(LocalProtocolError) as caught:
            encode_user_item(bad)
        assert "cannot encode UserIdentityRQ(" in str(caught.value)
        assert "s3cret" not in str(caught.value)
