"""Query/Retrieve interop with pynetdicom as the requestor: extended negotiation is refused cleanly.

A pynetdicom AE proposes relational queries, combined date-time matching and
fuzzy person-name matching (SOP Class Extended Negotiation) for the Study
Root FIND and relational retrieval for MOVE; the node accepts the contexts,
answers every option with 0, and then serves a baseline C-FIND.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation

pytestmark = pytest.mark.interop

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


def _extended(uid: str, info: bytes) -> SOPClassExtendedNegotiation:
    item = SOPClassExtendedNegotiation()
    item.sop_class_uid = uid
    item.service_class_application_information = info
    return item


def test_extended_negotiation_is_answered_with_every_option_off(node):
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.add_requested_context(STUDY_ROOT_MOVE)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT", ext_neg=[
        _extended(STUDY_ROOT_FIND, b"\x01\x01\x01"),  # relational, combined date-time, fuzzy PN
        _extended(STUDY_ROOT_MOVE, b"\x01"),          # relational retrieval
    ])
    try:
        assert assoc.is_established
        assert {c.abstract_syntax for c in assoc.accepted_contexts} == {STUDY_ROOT_FIND, STUDY_ROOT_MOVE}
        answered = assoc.acceptor.sop_class_extended
        assert answered == {STUDY_ROOT_FIND: b"\x00\x00\x00", STUDY_ROOT_MOVE: b"\x00"}
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.PatientName = "*"
        statuses = [status.Status for status, _ in assoc.send_c_find(identifier, STUDY_ROOT_FIND) if status]
        assert statuses == [0x0000]  # an empty archive: no match, baseline success
        # a relational query (a key below the level) is refused, as negotiated
        identifier.SeriesInstanceUID = ""
        (status, _), = list(assoc.send_c_find(identifier, STUDY_ROOT_FIND))
        assert status.Status == 0xA900
        assert "below the STUDY level" in status.ErrorComment
    finally:
        assoc.release()
    node.assert_healthy()
