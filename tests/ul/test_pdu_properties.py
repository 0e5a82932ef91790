"""Property tests of the UL PDU codec: round trips and hostile input."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dimsekit.errors import RemoteProtocolError
from dimsekit.ul.items import (
    AsynchronousOperationsWindow,
    ImplementationClassUID,
    ImplementationVersionName,
    MaximumLength,
    PresentationContextAC,
    PresentationContextRQ,
    RoleSelection,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UnknownItem,
    UserIdentityAC,
    UserIdentityRQ,
    UserInformation,
    decode_presentation_context_ac,
    decode_presentation_context_rq,
    decode_user_item,
    encode_presentation_context_ac,
    encode_presentation_context_rq,
    encode_user_item,
    iter_items,
)
from dimsekit.ul.pdu import (
    Abort,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    PDataTF,
    PresentationDataValue,
    ReleaseRP,
    ReleaseRQ,
    decode,
    encode_pdata,
)

from . import golden

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- canonical values ----------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
small_bytes = st.binary(max_size=40)

#: UIDs: digits and dots, at most 64 characters (PS3.5 9.1)
uids = st.from_regex(r"[0-9][0-9.]{0,63}", fullmatch=True)
#: AE titles: 1-16 printable ASCII, no leading/trailing space (PS3.8 Table 9-11)
ae_titles = st.from_regex(r"[!-~]([ -~]{0,14}[!-~])?", fullmatch=True)
version_names = ae_titles

KNOWN_USER_TYPES = set(range(0x51, 0x5A))
KNOWN_TOP_TYPES = {0x10, 0x20, 0x21, 0x30, 0x40, 0x50}

unknown_user_items = st.builds(
    UnknownItem,
    item_type=u8.filter(lambda t: t not in KNOWN_USER_TYPES),
    data=small_bytes,
)
unknown_top_items = st.builds(
    UnknownItem,
    item_type=u8.filter(lambda t: t not in KNOWN_TOP_TYPES),
    data=small_bytes,
)

user_items = st.one_of(
    st.builds(MaximumLength, maximum_length=st.integers(0, 0xFFFFFFFF)),
    st.builds(ImplementationClassUID, uid=uids),
    st.builds(ImplementationVersionName, name=version_names),
    st.builds(
        AsynchronousOperationsWindow, max_operations_invoked=u16, max_operations_performed=u16
    ),
    st.builds(RoleSelection, sop_class_uid=uids, scu_role=u8, scp_role=u8),
    st.builds(
        SOPClassExtendedNegotiation,
        sop_class_uid=uids,
        service_class_application_information=small_bytes,
    ),
    st.builds(
        SOPClassCommonExtendedNegotiation,
        sop_class_uid=uids,
        service_class_uid=uids,
        related_general_sop_classes=st.lists(uids, max_size=4).map(tuple),
    ),
    st.builds(
        UserIdentityRQ,
        identity_type=u8,
        positive_response_requested=st.booleans(),
        primary_field=small_bytes,
        secondary_field=small_bytes,
    ),
    st.builds(UserIdentityAC, server_response=small_bytes),
    unknown_user_items,
)
user_informations = st.builds(UserInformation, items=st.lists(user_items, max_size=8).map(tuple))
contexts_rq = st.builds(
    PresentationContextRQ,
    context_id=u8,
    abstract_syntax=uids,
    transfer_syntaxes=st.lists(uids, min_size=1, max_size=4).map(tuple),
)
contexts_ac = st.builds(
    PresentationContextAC,
    context_id=u8,
    result=u8,
    transfer_syntax=st.none() | uids,
)


def _associate(cls: type, contexts: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(
        cls,
        called_ae_title=ae_titles,
        calling_ae_title=ae_titles,
        presentation_contexts=st.lists(contexts, max_size=5).map(tuple),
        user_information=user_informations,
        application_context_name=uids,
        protocol_version=u16,
        unknown_items=st.lists(unknown_top_items, max_size=2).map(tuple),
    )


pdvs = st.builds(PresentationDataValue, context_id=u8, control=u8, data=st.binary(max_size=300))
pdus = st.one_of(
    _associate(AssociateRQ, contexts_rq),
    _associate(AssociateAC, contexts_ac),
    st.builds(AssociateRJ, result=u8, source=u8, reason=u8),
    st.builds(PDataTF, pdvs=st.lists(pdvs, min_size=1, max_size=5).map(tuple)),
    st.just(ReleaseRQ()),
    st.just(ReleaseRP()),
    st.builds(Abort, source=u8, reason=u8),
)


# -- round trips ----------------------------------------------------------------------


@FAST
@given(pdu=pdus)
def test_pdu_round_trip(pdu: object) -> None:
    wire = pdu.encode()  # type: ignore[attr-defined]
    assert decode(wire) == (pdu, len(wire))
    # and the header's length says what follows
    assert struct.unpack(">I", wire[2:6])[0] == len(wire) - 6


@FAST
@given(pdu=pdus, cut=st.integers(0, 10_000))
def test_pdu_prefix_is_incomplete(pdu: object, cut: int) -> None:
    wire = pdu.encode()  # type: ignore[attr-defined]
    assert decode(wire[: cut % len(wire)]) is None


@FAST
@given(sequence=st.lists(pdus, min_size=1, max_size=5))
def test_pdu_stream_round_trip(sequence: list[object]) -> None:
    buf = bytearray(b"".join(p.encode() for p in sequence))  # type: ignore[attr-defined]
    out = []
    while buf:
        result = decode(buf)
        assert result is not None
        out.append(result[0])
        del buf[: result[1]]
    assert out == sequence


@FAST
@given(item=user_items)
def test_user_item_round_trip(item: object) -> None:
    wire = encode_user_item(item)  # type: ignore[arg-type]
    ((item_type, value),) = list(iter_items(wire))
    assert decode_user_item(item_type, value) == item


@FAST
@given(pc=contexts_rq)
def test_presentation_context_rq_round_trip(pc: PresentationContextRQ) -> None:
    ((item_type, value),) = list(iter_items(encode_presentation_context_rq(pc)))
    assert item_type == 0x20
    assert decode_presentation_context_rq(value) == pc


@FAST
@given(pc=contexts_ac)
def test_presentation_context_ac_round_trip(pc: PresentationContextAC) -> None:
    ((item_type, value),) = list(iter_items(encode_presentation_context_ac(pc)))
    assert item_type == 0x21
    assert decode_presentation_context_ac(value) == pc


@FAST
@given(chunks=st.lists(st.tuples(u8, u8, st.binary(max_size=200)), min_size=1, max_size=6))
def test_encode_pdata_equals_dataclass_encoding(chunks: list[tuple[int, int, bytes]]) -> None:
    value = PDataTF(
        pdvs=tuple(PresentationDataValue(context_id=c, control=m, data=d) for c, m, d in chunks)
    )
    wire = encode_pdata(chunks)
    assert wire == value.encode()
    assert decode(wire) == (value, len(wire))


# -- hostile input --------------------------------------------------------------------


def _decode_or_protocol_error(buf: bytes | bytearray, **limits: int) -> None:
    """decode() may return None or a PDU, or raise RemoteProtocolError -- nothing else."""
    try:
        result = decode(buf, **limits)
    except RemoteProtocolError as exc:
        assert exc.abort_source == 2
        assert exc.abort_reason in (1, 4, 5, 6)
        return
    if result is not None:
        pdu, used = result
        assert 6 <= used <= len(buf)
        # whatever decodes re-encodes and decodes to the same value
        assert decode(pdu.encode()) == (pdu, len(pdu.encode()))


@FAST
@given(buf=st.binary(max_size=400))
def test_arbitrary_bytes(buf: bytes) -> None:
    _decode_or_protocol_error(buf)


@FAST
@given(pdu_type=st.integers(1, 7), body=st.binary(max_size=400))
def test_arbitrary_body_behind_valid_header(pdu_type: int, body: bytes) -> None:
    # A header that frames ``body`` exactly, so the body decoders get the hostile bytes.
    wire = bytes([pdu_type, 0]) + struct.pack(">I", len(body)) + body
    _decode_or_protocol_error(wire)


@FAST
@given(
    pdu_type=st.sampled_from([1, 2]),
    items=st.lists(st.tuples(u8, st.binary(max_size=60)), max_size=6),
    junk=st.binary(max_size=3),
)
def test_arbitrary_items_in_associate(
    pdu_type: int, items: list[tuple[int, bytes]], junk: bytes
) -> None:
    # Well-framed items of random types and contents, plus a few stray bytes.
    body = golden.ASSOCIATE_RQ_ECHO[6:74] + b"".join(
        bytes([t, 0]) + struct.pack(">H", len(v)) + v for t, v in items
    )
    body += junk
    _decode_or_protocol_error(bytes([pdu_type, 0]) + struct.pack(">I", len(body)) + body)


@FAST
@given(
    index=st.sampled_from(range(len(golden.GOLDEN))),
    flips=st.lists(st.tuples(st.integers(0, 10_000), u8), min_size=1, max_size=6),
)
def test_mutated_golden(index: int, flips: list[tuple[int, int]]) -> None:
    wire = bytearray(golden.GOLDEN[index][1])
    for position, value in flips:
        wire[position % len(wire)] = value
    _decode_or_protocol_error(wire)
    _decode_or_protocol_error(wire, max_pdata_length=64, max_control_length=256)


@FAST
@given(
    index=st.sampled_from(range(len(golden.GOLDEN))),
    data=st.data(),
)
def test_golden_with_item_length_changed(index: int, data: st.DataObject) -> None:
    # Rewrite one 2-byte or 4-byte big-endian field anywhere past the header
    # (item lengths among them) to a smaller or larger value, PDU-length kept.
    wire = bytearray(golden.GOLDEN[index][1])
    assume(len(wire) > 8)
    width = data.draw(st.sampled_from([2, 4]), label="width")
    position = data.draw(st.integers(6, len(wire) - width), label="position")
    old = int.from_bytes(wire[position : position + width], "big")
    new = data.draw(st.integers(0, old + 8) | st.integers(0, 256**width - 1), label="new")
    wire[position : position + width] = new.to_bytes(width, "big")
    _decode_or_protocol_error(wire)


@FAST
@given(index=st.sampled_from(range(len(golden.GOLDEN))), cut=st.integers(1, 10_000))
def test_golden_truncated_with_header_fixed(index: int, cut: int) -> None:
    # Cut the body short and make the PDU-length agree: the items inside now
    # lie about their lengths, or something required is missing.
    wire = golden.GOLDEN[index][1]
    assume(len(wire) > 10)
    body = wire[6 : 6 + (cut % (len(wire) - 6))]
    _decode_or_protocol_error(wire[:2] + struct.pack(">I", len(body)) + body)


@FAST
@given(length=st.integers(0, 0xFFFFFFFF), pdu_type=u8, max_pdata=st.integers(0, 1 << 20))
def test_header_alone_never_waits_past_a_limit(length: int, pdu_type: int, max_pdata: int) -> None:
    # With only the header, decode either waits (None) for a body within the
    # limit, or refuses -- it never waits for a body above the limit.
    header = bytes([pdu_type, 0]) + struct.pack(">I", length)
    try:
        result = decode(header, max_pdata)
    except RemoteProtocolError:
        return
    if result is None:
        limit = max_pdata if pdu_type == 4 else 1 << 20
        assert pdu_type in range(1, 8)
        assert length > 0 and (limit == 0 or length <= limit)
