"""The conftest's mend of pynetdicom's reactor pause race: a response the
reactor takes while a ``send_*`` call holds the checkpoint goes back to the
front of the DIMSE queue for the call, and nothing else changes."""

from __future__ import annotations

import logging

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, N_CREATE

import tests.interop.conftest  # noqa: F401  (applies the mend)

pytestmark = pytest.mark.interop


def _association() -> Association:
    return Association(AE(ae_title="MEND"), "requestor")


def _response(message_id: int) -> N_CREATE:
    rsp = N_CREATE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.Status = 0x0000
    return rsp


def test_a_response_taken_during_a_send_goes_back_to_the_front_of_the_queue(caplog):
    assoc = _association()
    assoc.dimse.msg_queue.put((3, _response(2)))
    assoc._reactor_checkpoint.clear()  # what send_n_create does before it sends
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        assoc._serve_request(_response(1), 1)
    assert "unexpected" not in caplog.text
    first, second = assoc.dimse.msg_queue.get_nowait(), assoc.dimse.msg_queue.get_nowait()
    assert (first[0], first[1].MessageIDBeingRespondedTo) == (1, 1)
    assert (second[0], second[1].MessageIDBeingRespondedTo) == (3, 2)


def test_outside_a_send_pynetdicom_refuses_an_unexpected_response_as_it_ships(caplog):
    assoc = _association()
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        assoc._serve_request(_response(1), 1)
    assert "Received unexpected N-CREATE service message" in caplog.text
    assert assoc.dimse.msg_queue.empty()


def test_a_request_during_a_send_is_still_served_by_pynetdicom(caplog):
    assoc = _association()
    assoc._reactor_checkpoint.clear()
    request = C_ECHO()
    request.MessageID = 7
    request.AffectedSOPClassUID = "1.2.840.10008.1.1"
    with caplog.at_level(logging.INFO, logger="pynetdicom"):
        assoc._serve_request(request, 1)
    # pynetdicom's own handling: no context 1 was accepted on this association
    assert "invalid or rejected context ID: 1" in caplog.text
    assert assoc.dimse.msg_queue.empty()
