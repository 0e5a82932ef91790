"""Status-only responses from templates (dimsekit.scp): byte for byte what
make_response + encode_command give, for any Message ID; never for a request
that names an instance."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dimsekit import scp
from dimsekit.dimse.codec import decode_command, encode_command
from dimsekit.dimse.commands import CommandField, make_response

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def usual(request, status):
    return encode_command(make_response(request, status))


@pytest.fixture(autouse=True)
def no_templates():
    scp._RESPONSE_TEMPLATES.clear()
    yield
    scp._RESPONSE_TEMPLATES.clear()


def echo(message_id):
    return {"CommandField": CommandField.C_ECHO_RQ, "MessageID": message_id,
            "AffectedSOPClassUID": VERIFICATION, "CommandDataSetType": 0x0101}


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=5), st.sampled_from([0x0000, 0x0110, 0xC000, 0x0122]))
def test_template_gives_the_usual_bytes(message_ids, status):
    scp._RESPONSE_TEMPLATES.clear()
    for message_id in message_ids:
        assert scp._status_only_response(echo(message_id), status) == usual(echo(message_id), status)
    assert len(scp._RESPONSE_TEMPLATES) == 1


def test_one_template_per_command_sop_class_and_status():
    find = {"CommandField": CommandField.C_FIND_RQ, "MessageID": 3, "AffectedSOPClassUID": STUDY_FIND,
            "Priority": 0, "CommandDataSetType": 0x0001}
    for request, status in ((echo(1), 0), (echo(2), 0x0110), (find, 0xA900), (echo(9), 0)):
        encoded = scp._status_only_response(request, status)
        assert encoded == usual(request, status)
        decoded = decode_command(encoded)
        assert decoded["MessageIDBeingRespondedTo"] == request["MessageID"]
        assert decoded["Status"] == status
    assert len(scp._RESPONSE_TEMPLATES) == 3


def test_requests_naming_an_instance_are_not_templated():
    store = {"CommandField": CommandField.C_STORE_RQ, "MessageID": 1, "AffectedSOPClassUID": CT,
             "AffectedSOPInstanceUID": "1.2.3", "Priority": 0, "CommandDataSetType": 0x0001}
    n_get = {"CommandField": CommandField.N_GET_RQ, "MessageID": 1, "RequestedSOPClassUID": CT,
             "RequestedSOPInstanceUID": "1.2.3", "CommandDataSetType": 0x0101}
    assert scp._status_only_response(store, 0) is None
    assert scp._status_only_response(n_get, 0) is None
    assert not scp._RESPONSE_TEMPLATES


def test_unusable_requests_or_statuses_fall_back():
    assert scp._status_only_response(echo(1), 0x10000) is None  # not a US: the usual path reports it
    assert scp._status_only_response(echo(1), "0") is None
    assert scp._status_only_response({**echo(1), "MessageID": 70000}, 0) is None
    cancel = {"CommandField": CommandField.C_CANCEL_RQ, "MessageIDBeingRespondedTo": 1, "CommandDataSetType": 0x0101}
    assert scp._status_only_response({**cancel, "MessageID": 1}, 0) is None  # no response to a C-CANCEL
    assert not scp._RESPONSE_TEMPLATES


def test_templates_are_bounded(monkeypatch):
    monkeypatch.setattr(scp, "_RESPONSE_TEMPLATES_MAX", 2)
    for status in (0x0000, 0x0110, 0x0122):
        scp._status_only_response(echo(1), status)
    assert list(scp._RESPONSE_TEMPLATES) == [
        (CommandField.C_ECHO_RQ, VERIFICATION, 0x0110), (CommandField.C_ECHO_RQ, VERIFICATION, 0x0122)
    ]


def test_value_offset():
    encoded = usual(echo(0x1234), 0)
    offset = scp._value_offset(encoded, 0x00000120)
    assert encoded[offset : offset + 2] == b"\x34\x12"
    assert scp._value_offset(encoded, 0x00001000) is None
