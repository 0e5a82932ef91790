"""Sequence matching in Q/R C-FIND (PS3.4 C.2.2.2.6) and the archive's item tables it reads.

A small corpus whose patients, studies and series carry Other Patient IDs
Sequence, Procedure Code Sequence and Request Attributes Sequence (ASCII,
Latin-1 and UTF-8 values) is indexed by the archive's own code; the matching
tests run the SQL the C-FIND SCP runs, the last test runs a node.
"""

from __future__ import annotations

import copy
import re
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from dimsekit.scu import PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from dimsekit_plugins.archive import index as archive_index
from dimsekit_plugins.qr.find import find_sql, response_identifier
from dimsekit_plugins.qr.matching import register_functions
from dimsekit_plugins.qr.model import PATIENT_ROOT, STUDY_ROOT, IdentifierError, parse_identifier
from tests.dimse_e2e.support import within
from tests.plugins.test_qr_support import CT, EXPLICIT, MR, QrTestCase

ROOT = "1.2.826.0.1.3680043.9.7433.77"


def item(**values) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def uid(kind: int, n: str) -> str:
    return f"{ROOT}.{kind}.{n}"


#: patient -> (charset, other patient IDs, studies: (n, date, time, procedure codes, request attributes))
PATIENTS = [
    ("PID1", "DOE^JOHN", None,
     [item(PatientID="MRN-77", IssuerOfPatientID="HOSP_A", TypeOfPatientID="TEXT"),
      item(PatientID="NHS-123", IssuerOfPatientID="NHS")],
     [("1", "20060705", "0930",
       [item(CodeValue="CTCHEST", CodingSchemeDesignator="LOCAL", CodeMeaning="CT Chest"),
        item(CodeValue="24627-2", CodingSchemeDesignator="LN", CodeMeaning="Chest CT")],
       [item(RequestedProcedureID="RP1", ScheduledProcedureStepID="SPS1", AccessionNumber="ACC1",
             StudyInstanceUID=uid(1, "1")),
        item(RequestedProcedureID="RP2", ScheduledProcedureStepID="SPS2")]),
      ("4", "20060707", "1700", [], [])]),
    ("PID2", "Müller^Jürgen", "ISO_IR 100",
     [item(PatientID="KH-9", IssuerOfPatientID="Klinikum Süd")],
     [("2", "20060706", "1200",
       [item(CodeValue="XR-FOOT", CodingSchemeDesignator="LOCAL", CodeMeaning="Röntgen Fuß")],
       [item(RequestedProcedureID="RP3", ScheduledProcedureStepID="SPS3",
             RequestedProcedureDescription="Fußgelenk", StudyInstanceUID=uid(1, "2"))])]),
    ("PID3", "Yamada^Tarou=山田^太郎", "ISO_IR 192", [],
     [("3", "20060707", "1900",
       [item(CodeValue="MRHEAD", CodingSchemeDesignator="LOCAL", CodeMeaning="頭部 MRI")], [])]),
]


def corpus() -> list[Dataset]:
    """One instance per study (one series each), carrying the sequences of :data:`PATIENTS`."""
    out = []
    for patient_id, name, charset, other_ids, studies in PATIENTS:
        for n, date, time, codes, requests in studies:
            ds = Dataset()
            if charset:
                ds.SpecificCharacterSet = charset
            ds.PatientName, ds.PatientID = name, patient_id
            if other_ids:
                ds.OtherPatientIDsSequence = Sequence(other_ids)
            ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = uid(1, n), f"S{n}", date, time
            if codes:
                ds.ProcedureCodeSequence = Sequence(codes)
            ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber = uid(2, n), "CT", 1
            ds.SeriesDescription = f"SE{n}"
            if requests:
                ds.RequestAttributesSequence = Sequence(requests)
            ds.SOPClassUID, ds.SOPInstanceUID, ds.InstanceNumber = CT, uid(3, n), 1
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = EXPLICIT
            ds.file_meta.MediaStorageSOPClassUID = CT
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            out.append(ds)
    return out


def record(ds: Dataset, n: int = 0) -> archive_index.InstanceRecord:
    return archive_index.InstanceRecord(
        **archive_index.header_values(ds), transfer_syntax_uid=EXPLICIT, path=f"x/{ds.SOPInstanceUID}.dcm",
        size=1, received_at="2024-01-01T00:00:00",
    )


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> sqlite3.Connection:
    """The corpus written as Part 10 files, read back as the archive reads them, and indexed."""
    folder = tmp_path_factory.mktemp("seq")
    conn = archive_index.connect(str(folder / "index.sqlite"))
    for ds in corpus():
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.add_new(0x7FE00010, "OB", b"\0" * 16)  # the archive reads up to the pixel data
        ds.save_as(path, enforce_file_format=True)
        header = dcmread(path, stop_before_pixels=True, specific_tags=list(archive_index.HEADER_KEYWORDS))
        archive_index.put(conn, record(header))
    register_functions(conn)
    conn.row_factory = None
    return conn


def ident(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def one(**values) -> Sequence:
    """A sequence key: one item with these item keys."""
    return Sequence([item(**values)])


def run(conn, model, identifier):
    q = parse_identifier(identifier, model)
    sql, params, columns = find_sql(q)
    rows = conn.execute(sql, params).fetchall()
    return q, [(row, {c: n for n, c in enumerate(columns)}) for row in rows]


def found(conn, model, identifier, key) -> set[str]:
    _, rows = run(conn, model, identifier)
    return {row[columns[key]] for row, columns in rows}


# -- the index keeps the items ------------------------------------------------------------------------


def test_the_archive_keeps_the_items_read_before_the_pixel_data(indexed):
    rows = indexed.execute(
        "SELECT p.patient_id, o.item, o.patient_id, o.issuer_of_patient_id, o.type_of_patient_id"
        " FROM patient_other_id o JOIN patient p ON p.pk = o.patient_pk ORDER BY 1, 2").fetchall()
    assert rows == [("PID1", 0, "MRN-77", "HOSP_A", "TEXT"), ("PID1", 1, "NHS-123", "NHS", None),
                    ("PID2", 0, "KH-9", "Klinikum Süd", None)]  # decoded from ISO_IR 100
    assert indexed.execute("SELECT code_meaning FROM study_procedure_code WHERE code_value = 'MRHEAD'"
                           ).fetchone() == ("頭部 MRI",)
    assert indexed.execute("SELECT COUNT(*) FROM series_request_attributes").fetchone() == (3,)


def test_a_later_instance_replaces_the_items_and_one_without_the_sequence_keeps_them(tmp_path):
    conn = archive_index.connect(str(tmp_path / "index.sqlite"))
    first, *_ = corpus()
    archive_index.put(conn, record(first))
    second = copy.deepcopy(first)
    second.SOPInstanceUID = uid(3, "1.2")
    second.ProcedureCodeSequence = Sequence([item(CodeValue="NEW", CodingSchemeDesignator="L")])
    del second.OtherPatientIDsSequence
    second.RequestAttributesSequence = Sequence()  # present, empty: keeps the items too
    archive_index.put(conn, record(second))
    assert [tuple(r) for r in conn.execute("SELECT code_value FROM study_procedure_code")] == [("NEW",)]
    assert conn.execute("SELECT COUNT(*) FROM patient_other_id").fetchone()[0] == 2
    assert conn.execute("SELECT COUNT(*) FROM series_request_attributes").fetchone()[0] == 2
    assert archive_index.delete(conn, [first.SOPInstanceUID, second.SOPInstanceUID]) == 2
    for table in ("patient_other_id", "study_procedure_code", "series_request_attributes"):
        assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table  # gone with their owner


def test_items_without_any_kept_attribute_are_not_stored():
    ds = corpus()[0]
    ds.ProcedureCodeSequence = Sequence([item(ContextIdentifier="99"), item(CodeValue="A")])
    values = archive_index.header_values(ds)
    assert values["procedure_codes"] == [
        {"code_value": "A", "coding_scheme_designator": None, "coding_scheme_version": None, "code_meaning": None}]
    ds.ProcedureCodeSequence = Sequence([item(ContextIdentifier="99")])
    assert archive_index.header_values(ds)["procedure_codes"] is None


def test_a_version_1_index_is_upgraded_in_place(tmp_path):
    path = str(tmp_path / "index.sqlite")
    conn = archive_index.connect(path)
    archive_index.put(conn, record(corpus()[2]))
    for spec in archive_index.ITEM_TABLES:  # what a version 1 index looks like
        conn.execute(f"DROP TABLE {spec.table}")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    conn = archive_index.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    assert conn.execute("SELECT COUNT(*) FROM instance").fetchone()[0] == 1
    assert conn.execute("SELECT COUNT(*) FROM study_procedure_code").fetchone()[0] == 0
    archive_index.put(conn, record(corpus()[2]))  # stored again: its items are indexed
    assert [tuple(r) for r in conn.execute("SELECT code_value FROM study_procedure_code")] == [("XR-FOOT",)]
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version 99"):
        archive_index.connect(path)


# -- matching -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "identifier", "key", "expected"),
    [
        # Other Patient IDs Sequence, PATIENT level (Patient Root) / STUDY level (Study Root)
        (PATIENT_ROOT, ident("PATIENT", PatientID="", OtherPatientIDsSequence=one(PatientID="MRN-77")),
         "PatientID", {"PID1"}),
        (PATIENT_ROOT, ident("PATIENT", PatientID="", OtherPatientIDsSequence=one(PatientID="*-1?3")),
         "PatientID", {"PID1"}),
        (PATIENT_ROOT, ident("PATIENT", PatientID="", OtherPatientIDsSequence=one(IssuerOfPatientID="Klinikum S?d")),
         "PatientID", {"PID2"}),
        # every item key must match in one and the same item
        (PATIENT_ROOT, ident("PATIENT", PatientID="",
                             OtherPatientIDsSequence=one(PatientID="MRN-77", IssuerOfPatientID="NHS")),
         "PatientID", set()),
        (PATIENT_ROOT, ident("PATIENT", PatientID="",
                             OtherPatientIDsSequence=one(PatientID="NHS-123", IssuerOfPatientID="NHS")),
         "PatientID", {"PID1"}),
        (PATIENT_ROOT, ident("PATIENT", PatientID="", OtherPatientIDsSequence=one(TypeOfPatientID="TEXT")),
         "PatientID", {"PID1"}),
        # universal: zero-length sequence, an empty item, an item of universal keys only
        (PATIENT_ROOT, ident("PATIENT", PatientID="", OtherPatientIDsSequence=Sequence()),
         "PatientID", {"PID1", "PID2", "PID3"}),
        (PATIENT_ROOT, ident("PATIENT", PatientID="", OtherPatientIDsSequence=Sequence([Dataset()])),
         "PatientID", {"PID1", "PID2", "PID3"}),
        (PATIENT_ROOT, ident("PATIENT", PatientID="", OtherPatientIDsSequence=one(PatientID="", IssuerOfPatientID="*")),
         "PatientID", {"PID1", "PID2", "PID3"}),
        (STUDY_ROOT, ident("STUDY", StudyID="", OtherPatientIDsSequence=one(PatientID="KH-9")),
         "StudyID", {"S2"}),
        # Procedure Code Sequence, STUDY level
        (STUDY_ROOT, ident("STUDY", StudyID="",
                           ProcedureCodeSequence=one(CodeValue="24627-2", CodingSchemeDesignator="LN")),
         "StudyID", {"S1"}),
        (STUDY_ROOT, ident("STUDY", StudyID="",
                           ProcedureCodeSequence=one(CodeValue="24627-2", CodingSchemeDesignator="LOCAL")),
         "StudyID", set()),
        (STUDY_ROOT, ident("STUDY", StudyID="", ProcedureCodeSequence=one(CodingSchemeDesignator="LOCAL")),
         "StudyID", {"S1", "S2", "S3"}),
        (STUDY_ROOT, ident("STUDY", SpecificCharacterSet="ISO_IR 192", StudyID="",
                           ProcedureCodeSequence=one(CodeMeaning="頭部*")), "StudyID", {"S3"}),
        (STUDY_ROOT, ident("STUDY", SpecificCharacterSet="ISO_IR 192", StudyID="",
                           ProcedureCodeSequence=one(CodeMeaning="Röntgen Fu?")), "StudyID", {"S2"}),
        (STUDY_ROOT, ident("STUDY", StudyID="", ProcedureCodeSequence=one(CodeMeaning="ct chest")),
         "StudyID", set()),  # LO: case-sensitive
        (PATIENT_ROOT, ident("STUDY", PatientID="PID1", StudyID="", ProcedureCodeSequence=one(CodeValue="*")),
         "StudyID", {"S1", "S4"}),
        # Request Attributes Sequence, SERIES level
        (STUDY_ROOT, ident("SERIES", SeriesDescription="",
                           RequestAttributesSequence=one(ScheduledProcedureStepID="SPS2")),
         "SeriesDescription", {"SE1"}),
        (STUDY_ROOT, ident("SERIES", SeriesDescription="", RequestAttributesSequence=one(AccessionNumber="ACC?")),
         "SeriesDescription", {"SE1"}),
        (STUDY_ROOT, ident("SERIES", SeriesDescription="",
                           RequestAttributesSequence=one(StudyInstanceUID=[uid(1, "2"), uid(1, "9")])),
         "SeriesDescription", {"SE2"}),
        (STUDY_ROOT, ident("SERIES", SpecificCharacterSet="ISO_IR 192", SeriesDescription="",
                           RequestAttributesSequence=one(RequestedProcedureDescription="*gelenk")),
         "SeriesDescription", {"SE2"}),
        (STUDY_ROOT, ident("SERIES", SeriesDescription="", Modality="CT",
                           RequestAttributesSequence=one(RequestedProcedureID="RP1", ScheduledProcedureStepID="SPS2")),
         "SeriesDescription", set()),
    ],
)
def test_sequence_matching(indexed, model, identifier, key, expected):
    assert found(indexed, model, identifier, key) == expected


def test_the_matching_items_come_back_with_the_requested_attributes_only(indexed):
    identifier = ident("PATIENT", PatientID="PID1",
                       OtherPatientIDsSequence=one(IssuerOfPatientID="NHS", PatientID=""))
    q, [(row, columns)] = run(indexed, PATIENT_ROOT, identifier)
    assert q.unsupported == []
    ds = response_identifier(q, row, columns, "QRSCP")
    (only,) = ds.OtherPatientIDsSequence
    assert [e.keyword for e in only] == ["PatientID", "IssuerOfPatientID"]
    assert (only.PatientID, only.IssuerOfPatientID) == ("NHS-123", "NHS")


def test_an_empty_item_returns_every_item_whole_and_an_entity_without_items_an_empty_sequence(indexed):
    q, rows = run(indexed, PATIENT_ROOT, ident("PATIENT", PatientID="", OtherPatientIDsSequence=Sequence([Dataset()])))
    answers = {ds.PatientID: ds for ds in (response_identifier(q, row, c, "QRSCP") for row, c in rows)}
    first, second = answers["PID1"].OtherPatientIDsSequence
    assert (first.PatientID, first.IssuerOfPatientID, first.TypeOfPatientID) == ("MRN-77", "HOSP_A", "TEXT")
    assert (second.PatientID, second.IssuerOfPatientID, second.TypeOfPatientID) == ("NHS-123", "NHS", None)
    assert answers["PID3"].OtherPatientIDsSequence == Sequence()
    (kh,) = answers["PID2"].OtherPatientIDsSequence
    assert kh.IssuerOfPatientID == "Klinikum Süd"
    assert answers["PID2"].SpecificCharacterSet == "ISO_IR 192"  # a non-ASCII item value: said so


def test_an_item_key_the_index_does_not_keep_is_returned_empty_and_reported(indexed):
    identifier = ident("STUDY", StudyID="S1",
                       ProcedureCodeSequence=one(CodeValue="CTCHEST", ContextIdentifier="99"))
    q, [(row, columns)] = run(indexed, STUDY_ROOT, identifier)
    assert q.unsupported == ["ProcedureCodeSequence>ContextIdentifier"]  # FF01, not matched on
    (answer,) = response_identifier(q, row, columns, "QRSCP").ProcedureCodeSequence
    assert answer.CodeValue == "CTCHEST"
    assert answer.ContextIdentifier in (None, "")


@pytest.mark.parametrize(
    ("level", "keyword"),
    [("PATIENT", "OtherPatientIDsSequence"), ("STUDY", "ProcedureCodeSequence"),
     ("SERIES", "RequestAttributesSequence")],
)
def test_a_sequence_key_of_more_than_one_item_is_refused_a900(level, keyword):
    identifier = ident(level, **{keyword: Sequence([item(AccessionNumber="A"), item(AccessionNumber="B")])})
    with pytest.raises(IdentifierError) as raised:
        parse_identifier(identifier, PATIENT_ROOT)
    assert raised.value.status == 0xA900
    assert f"{keyword}: a sequence key holds one item (PS3.4 C.2.2.2.6), not 2" == str(raised.value)
    assert raised.value.offending == (int(identifier[keyword].tag),)


def test_a_sequence_key_below_the_level_is_refused_as_any_other():
    with pytest.raises(IdentifierError, match="below the STUDY level: RequestAttributesSequence"):
        parse_identifier(ident("STUDY", RequestAttributesSequence=one(AccessionNumber="A")), STUDY_ROOT)


def test_the_sequence_condition_uses_the_item_table_primary_key(indexed):
    q = parse_identifier(ident("STUDY", StudyID="", ProcedureCodeSequence=one(CodeValue="MRHEAD")), STUDY_ROOT)
    sql, params, _ = find_sql(q)
    plan = " ".join(str(row[-1]) for row in indexed.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "study_procedure_code" in plan and "SCAN sq" not in plan, plan


# -- against a reference: "some item matches every item key" ------------------------------------------

_TEXT = "aBü頭?*-"
_values = st.one_of(st.none(), st.text(alphabet="aBü頭-", min_size=1, max_size=3))
_patterns = st.one_of(st.just(""), st.text(alphabet=_TEXT, min_size=1, max_size=4))


def _reference(stored: str | None, pattern: str) -> bool:
    """PS3.4 C.2.2.2: universal (empty, only ``*``) or a whole-value wild card match of a non-empty value."""
    if pattern == "" or set(pattern) == {"*"}:
        return True
    if not stored:
        return False
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, stored, re.DOTALL) is not None


@settings(max_examples=150, deadline=None)
@given(
    studies=st.lists(st.lists(st.tuples(_values, _values), max_size=3), min_size=1, max_size=4),
    value_pattern=_patterns,
    meaning_pattern=_patterns,
)
def test_sequence_matching_agrees_with_a_reference(tmp_path_factory, studies, value_pattern, meaning_pattern):
    conn = archive_index.connect(str(tmp_path_factory.mktemp("prop") / "index.sqlite"))
    for n, codes in enumerate(studies):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientID, ds.StudyID = "P", f"S{n}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = uid(5, str(n)), uid(6, str(n)), uid(7, str(n))
        ds.SOPClassUID = CT
        items = []
        for value, meaning in codes:
            code = Dataset()
            if value is not None:
                code.CodeValue = value
            if meaning is not None:
                code.CodeMeaning = meaning
            items.append(code)
        ds.ProcedureCodeSequence = Sequence(items)
        archive_index.put(conn, record(ds))
    register_functions(conn)
    conn.row_factory = None
    keys = one(CodeValue=value_pattern, CodeMeaning=meaning_pattern)
    universal = all(p == "" or set(p) == {"*"} for p in (value_pattern, meaning_pattern))
    expected = {
        f"S{n}" for n, codes in enumerate(studies)
        if universal or any(_reference(v, value_pattern) and _reference(m, meaning_pattern) for v, m in codes)
    }
    q, rows = run(conn, STUDY_ROOT, ident("STUDY", StudyID="", ProcedureCodeSequence=keys))
    answers = {row[c["StudyID"]]: response_identifier(q, row, c, "QRSCP") for row, c in rows}
    assert set(answers) == expected
    for n, codes in enumerate(studies):
        if f"S{n}" not in answers:
            continue
        kept = [(v, m) for v, m in codes if v is not None or m is not None]  # items with nothing kept: not stored
        wanted = kept if universal else [
            (v, m) for v, m in kept if _reference(v, value_pattern) and _reference(m, meaning_pattern)]
        got = [(i.CodeValue or None, i.CodeMeaning or None) for i in answers[f"S{n}"].ProcedureCodeSequence]
        assert got == wanted
    conn.close()


# -- through a node ------------------------------------------------------------------------------------


class SequenceFindTests(QrTestCase):
    async def test_sequence_keys_over_c_store_and_c_find(self):
        data_dir = Path(tempfile.mkdtemp(prefix="dimsekit-qrseq-"))
        self.addCleanup(shutil.rmtree, data_dir, True)
        await self.start_node(store=False, data_dir=data_dir)
        assoc = await self.connect(self.node_port, [CT, MR, PATIENT_ROOT_FIND, STUDY_ROOT_FIND], called="QRSCP")
        for ds in corpus():
            response = await within(assoc.store(ds))
            self.assertEqual(response.status, 0x0000)
        identifier = ident("STUDY", SpecificCharacterSet="ISO_IR 192", StudyID="",
                           ProcedureCodeSequence=one(CodeValue="", CodeMeaning="Röntgen*"))
        pending = [r async for r in assoc.find(identifier, STUDY_ROOT_FIND)]
        self.assertEqual([r.status for r in pending], [0xFF00])
        (answer,) = pending[0].dataset.ProcedureCodeSequence
        self.assertEqual((answer.CodeValue, answer.CodeMeaning), ("XR-FOOT", "Röntgen Fuß"))
        self.assertEqual(pending[0].dataset.StudyID, "S2")
        # an item key not kept: the match is FF01 and the key comes back empty
        identifier = ident("PATIENT", PatientID="", OtherPatientIDsSequence=one(PatientID="MRN-77",
                                                                                 IssuerOfPatientIDQualifiersSequence=Sequence()))
        pending = [r async for r in assoc.find(identifier, PATIENT_ROOT_FIND)]
        self.assertEqual([(r.status, r.dataset.PatientID) for r in pending], [(0xFF01, "PID1")])
        (answer,) = pending[0].dataset.OtherPatientIDsSequence
        self.assertEqual(answer.PatientID, "MRN-77")
        self.assertEqual(answer.IssuerOfPatientIDQualifiersSequence, Sequence())
        # two items: A900 with an Error Comment
        identifier = ident("STUDY", ProcedureCodeSequence=Sequence([item(CodeValue="A"), item(CodeValue="B")]))
        operation = assoc.find(identifier, STUDY_ROOT_FIND)
        self.assertEqual([r async for r in operation], [])
        final = await within(operation.result)
        self.assertEqual(final.status, 0xA900)
        self.assertIn("ProcedureCodeSequence: a sequence key holds one item", final.ErrorComment)
        await within(assoc.release())


def test_an_item_value_of_several_non_ascii_values_sets_the_answer_s_character_set(tmp_path):
    """A stored item value of several values comes back as pydicom's MultiValue, not a list:
    its text still chooses the answer's character set."""
    ds = corpus()[0]
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ProcedureCodeSequence = Sequence([item(CodeValue="XR", CodingSchemeDesignator="LOCAL",
                                              CodeMeaning=["Röntgen", "Fuß"])])
    conn = archive_index.connect(str(tmp_path / "index.sqlite"))
    archive_index.put(conn, record(ds))
    register_functions(conn)
    conn.row_factory = None
    q, [(row, columns)] = run(conn, STUDY_ROOT, ident("STUDY", StudyInstanceUID=ds.StudyInstanceUID,
                                                      ProcedureCodeSequence=Sequence([Dataset()])))
    answer = response_identifier(q, row, columns, "QRSCP")
    (code,) = answer.ProcedureCodeSequence
    assert list(code.CodeMeaning) == ["Röntgen", "Fuß"]
    assert answer.SpecificCharacterSet == "ISO_IR 192"
