"""Query/Retrieve interop with pynetdicom as the requestor: SOP Class Extended Negotiation.

A pynetdicom AE proposes relational queries, combined date-time matching and
fuzzy person-name matching for the Study Root FIND and relational retrieval
for MOVE; the node accepts the contexts, accepts combined date-time matching
only (every other option answered 0), and then matches Study Date with Study
Time as one range on that association -- and separately on one that did not
negotiate it.
"""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
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


def test_extended_negotiation_accepts_combined_date_time_matching_only(node):
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
        assert answered == {STUDY_ROOT_FIND: b"\x00\x01\x00", STUDY_ROOT_MOVE: b"\x00"}
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


CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

#: study id -> (study date, study time)
_STUDIES = {"B": ("20060705", "0930"), "C": ("20060705", "1000"), "D": ("20060706", "0300"),
            "E": ("20060707", "1800"), "F": ("20060707", "1830"), "I": ("20060708", "0000")}


def _instance(study_id: str, date: str, time: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID = "Müller^Jürgen", "PID-DT"
    ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = generate_uid(), study_id, date, time
    ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = generate_uid(), "CT", 1
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _study_ids(assoc, identifier: Dataset) -> tuple[set[str], list[int]]:
    found, statuses = set(), []
    for status, answer in assoc.send_c_find(identifier, STUDY_ROOT_FIND):
        statuses.append(status.Status)
        if answer is not None and status.Status in (0xFF00, 0xFF01):
            found.add(answer.StudyID)
    return found, statuses


def test_combined_date_time_matching_applies_only_where_negotiated(node):
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT")
    try:
        assert assoc.is_established
        for study_id, (date, time) in _STUDIES.items():
            status = assoc.send_c_store(_instance(study_id, date, time))
            assert status.Status == 0x0000
    finally:
        assoc.release()
    identifier = Dataset()
    identifier.SpecificCharacterSet = "ISO_IR 192"
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.PatientName = "müller*"
    identifier.StudyDate = "20060705-20060707"
    identifier.StudyTime = "1000-1800"
    identifier.StudyID = ""
    results = {}
    for proposed in (b"\x00\x01", b"\x01\x00", None):
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT",
                             ext_neg=[_extended(STUDY_ROOT_FIND, proposed)] if proposed else None)
        try:
            assert assoc.is_established
            results[proposed] = _study_ids(assoc, identifier)
        finally:
            assoc.release()
    # from 07-05 10:00 to 07-07 18:00 ...
    assert results[b"\x00\x01"] == ({"C", "D", "E"}, [0xFF00] * 3 + [0x0000])
    # ... and, not negotiated, 10:00-18:00 on each of the three days
    assert results[b"\x01\x00"] == results[None] == ({"C", "E"}, [0xFF00] * 2 + [0x0000])
    node.assert_healthy()


def test_a_query_over_the_identifier_limit_is_refused_and_the_association_goes_on(node):
    """A 17 MiB C-FIND / C-MOVE Identifier (a broken or hostile peer: a real query is a few
    hundred bytes) past the default ``[limits] max_identifier_size`` of 16 MiB: refused with
    Out of Resources once it has arrived, nothing spooled, and the same association's next
    query answered."""
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.add_requested_context(STUDY_ROOT_MOVE)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT")
    try:
        assert assoc.is_established
        huge = Dataset()
        huge.QueryRetrieveLevel = "STUDY"
        huge.StudyInstanceUID = ""
        huge.add_new(0x00091010, "OB", b"\0" * (17 << 20))
        (status, _), = list(assoc.send_c_find(huge, STUDY_ROOT_FIND))
        assert status.Status == 0xA700  # Refused: Out of Resources (PS3.4 C.4.1.1.4)
        assert status.ErrorComment == "Identifier longer than 16777216 bytes"
        (status, _), = list(assoc.send_c_move(huge, "ANYWHERE", STUDY_ROOT_MOVE))
        assert status.Status == 0xA701  # Refused: Out of Resources - unable to calculate matches
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        statuses = [status.Status for status, _ in assoc.send_c_find(query, STUDY_ROOT_FIND) if status]
        assert statuses == [0x0000]  # an empty archive: no match, and the association is fine
    finally:
        assoc.release()
    assert assoc.is_released
    node.wait_log("with status 0xA701: Identifier longer than 16777216 bytes")
    assert "with status 0xA700: Identifier longer than 16777216 bytes" in node.log_text()
    node.assert_healthy()


def test_names_in_every_character_set_are_found_and_come_back_as_stored(node):
    """pydicom's character set files (Latin, Greek, Cyrillic, Arabic, Hebrew, ISO 2022 Japanese
    and Korean with code extensions, UTF-8, GB18030) stored by pynetdicom, then found by
    pynetdicom by their exact name and by a wild card, each asked in the file's character set:
    the match comes back with the name as stored, in a character set that holds it."""
    import warnings

    from pydicom import dcmread
    from pydicom.data import get_charset_files

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two of them: File Meta's SOP Instance UID not the data set's
        files = [dcmread(f) for f in sorted(get_charset_files("chr*.dcm")) if "SQEncoding" not in f]
    assert len(files) >= 15
    ae = AE(ae_title="PYNETDICOM")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for ds in files:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT")
    try:
        assert assoc.is_established
        for ds in files:
            assert assoc.send_c_store(ds).Status == 0x0000
        missed = []
        for ds in files:
            name = str(ds.PatientName)
            for asked in (name, name.split("=")[0].split("^")[0] + "*"):
                identifier = Dataset()
                identifier.SpecificCharacterSet = ds.SpecificCharacterSet
                identifier.QueryRetrieveLevel = "STUDY"
                identifier.PatientName = asked
                identifier.StudyInstanceUID = ""
                found = [(str(ident.PatientName), ident.StudyInstanceUID)
                         for status, ident in assoc.send_c_find(identifier, STUDY_ROOT_FIND)
                         if status and status.Status == 0xFF00]
                if (name, ds.StudyInstanceUID) not in found:
                    missed.append((asked, ds.SpecificCharacterSet, found))
        assert missed == []
    finally:
        assoc.release()
    node.assert_healthy()
