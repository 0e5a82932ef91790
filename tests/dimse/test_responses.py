"""Status-only responses from templates (dimsekit.dimse.responses): byte for byte what
make_response + encode_command give, for any Message ID and any SOP Instance
UID a request names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimsekit.dimse import responses
from dimsekit.dimse.codec import decode_command, encode_command
from dimsekit.dimse.commands import CommandField, make_response

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def usual(request, status):
    return encode_command(make_response(request, status))


@pytest.fixture(autouse=True)
def no_templates():
    responses._RESPONSE_TEMPLATES.clear()
    yield
    responses._RESPONSE_TEMPLATES.clear()


def echo(message_id):
    return {"CommandField": CommandField.C_ECHO_RQ, "MessageID": message_id,
            "AffectedSOPClassUID": VERIFICATION, "CommandDataSetType": 0x0101}


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=5), st.sampled_from([0x0000, 0x0110, 0xC000, 0x0122]))
def test_template_gives_the_usual_bytes(message_ids, status):
    responses._RESPONSE_TEMPLATES.clear()
    for message_id in message_ids:
        assert responses.encode_status_response(echo(message_id), status) == usual(echo(message_id), status)
    assert len(responses._RESPONSE_TEMPLATES) == 1


def test_one_template_per_command_sop_class_and_status():
    find = {"CommandField": CommandField.C_FIND_RQ, "MessageID": 3, "AffectedSOPClassUID": STUDY_FIND,
            "Priority": 0, "CommandDataSetType": 0x0001}
    for request, status in ((echo(1), 0), (echo(2), 0x0110), (find, 0xA900), (echo(9), 0)):
        encoded = responses.encode_status_response(request, status)
        assert encoded == usual(request, status)
        decoded = decode_command(encoded)
        assert decoded["MessageIDBeingRespondedTo"] == request["MessageID"]
        assert decoded["Status"] == status
    assert len(responses._RESPONSE_TEMPLATES) == 3


_UIDS = st.from_regex(r"[1-9][0-9]{0,5}(\.[0-9]{1,6}){0,12}", fullmatch=True).filter(lambda u: len(u) <= 64)


@given(
    st.lists(st.tuples(st.integers(0, 0xFFFF), _UIDS), min_size=1, max_size=6),
    st.sampled_from([0x0000, 0xA700, 0xB000, 0x0110]),
    st.sampled_from(["store", "n_get", "n_set", "n_create", "both"]),
)
def test_requests_naming_an_instance_get_the_usual_bytes(requests, status, kind):
    """C-STORE and N-operations echo the instance UID: the template is per
    length of its value, the UID spliced in, byte for byte the usual response."""
    responses._RESPONSE_TEMPLATES.clear()
    for message_id, uid in requests:
        if kind == "store":
            request = {"CommandField": CommandField.C_STORE_RQ, "MessageID": message_id, "AffectedSOPClassUID": CT,
                       "AffectedSOPInstanceUID": uid, "Priority": 0, "CommandDataSetType": 0x0001}
        elif kind == "both":  # make_response echoes the Affected one
            request = {"CommandField": CommandField.C_STORE_RQ, "MessageID": message_id, "AffectedSOPClassUID": CT,
                       "AffectedSOPInstanceUID": uid, "RequestedSOPInstanceUID": "1.2.3",
                       "Priority": 0, "CommandDataSetType": 0x0001}
        elif kind == "n_create":
            request = {"CommandField": CommandField.N_CREATE_RQ, "MessageID": message_id, "AffectedSOPClassUID": CT,
                       "AffectedSOPInstanceUID": uid, "CommandDataSetType": 0x0101}
        else:
            field = CommandField.N_GET_RQ if kind == "n_get" else CommandField.N_SET_RQ
            request = {"CommandField": field, "MessageID": message_id, "RequestedSOPClassUID": CT,
                       "RequestedSOPInstanceUID": uid, "CommandDataSetType": 0x0101 if kind == "n_get" else 0x0001}
        encoded = responses.encode_status_response(request, status)
        assert encoded == usual(request, status)
    assert len(responses._RESPONSE_TEMPLATES) == len({len(uid) + (len(uid) & 1) for _, uid in requests})


def test_an_instance_uid_that_is_no_uid_is_not_spliced():
    store = {"CommandField": CommandField.C_STORE_RQ, "MessageID": 1, "AffectedSOPClassUID": CT,
             "AffectedSOPInstanceUID": "1.2.3", "Priority": 0, "CommandDataSetType": 0x0001}
    assert responses.encode_status_response(store, 0) == usual(store, 0)
    assert responses.encode_status_response({**store, "AffectedSOPInstanceUID": "1.2.x"}, 0) is None
    assert responses.encode_status_response({**store, "AffectedSOPInstanceUID": b"1.2.4"}, 0) is None
    assert responses.encode_status_response({**store, "AffectedSOPInstanceUID": "1." + "2" * 63}, 0) is None
    assert len(responses._RESPONSE_TEMPLATES) == 1


def test_unusable_requests_or_statuses_fall_back():
    assert responses.encode_status_response(echo(1), 0x10000) is None  # not a US: the usual path reports it
    assert responses.encode_status_response(echo(1), "0") is None
    assert responses.encode_status_response({**echo(1), "MessageID": 70000}, 0) is None
    cancel = {"CommandField": CommandField.C_CANCEL_RQ, "MessageIDBeingRespondedTo": 1, "CommandDataSetType": 0x0101}
    assert responses.encode_status_response({**cancel, "MessageID": 1}, 0) is None  # no response to a C-CANCEL
    assert not responses._RESPONSE_TEMPLATES


def test_templates_are_bounded(monkeypatch):
    monkeypatch.setattr(responses, "_RESPONSE_TEMPLATES_MAX", 2)
    for status in (0x0000, 0x0110, 0x0122):
        responses.encode_status_response(echo(1), status)
    assert list(responses._RESPONSE_TEMPLATES) == [
        (CommandField.C_ECHO_RQ, VERIFICATION, 0x0110, None), (CommandField.C_ECHO_RQ, VERIFICATION, 0x0122, None)
    ]


def test_value_offset():
    encoded = usual(echo(0x1234), 0)
    offset = responses._value_offset(encoded, 0x00000120)
    assert encoded[offset : offset + 2] == b"\x34\x12"
    assert responses._value_offset(encoded, 0x00001000) is None
