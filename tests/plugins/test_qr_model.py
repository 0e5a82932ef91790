"""Q/R plugin pieces without a network: identifiers against the models, the SQL made of them,
response character sets, retrieve planning and statuses, settings and declarations."""

from __future__ import annotations

import sqlite3

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dimsekit.config import ConfigError, from_mapping
from dimsekit.datasets import decode_dataset, encode_dataset
from dimsekit.plugin import make_plugin_manager
from dimsekit.registry import Registry
from dimsekit.scu import PATIENT_ROOT_FIND, STUDY_ROOT_FIND, STUDY_ROOT_MOVE
from dimsekit.ul.negotiation import build_associate_rq, negotiate_as_acceptor
from dimsekit_plugins import storage as storage_plugin
from dimsekit_plugins.archive import index as archive_index
from dimsekit_plugins.qr import find
from dimsekit_plugins.qr import plugin as qr_plugin
from dimsekit_plugins.qr.find import find_sql, reply_charset, response_identifier
from dimsekit_plugins.qr.matching import register_functions
from dimsekit_plugins.qr.model import (
    IMAGE,
    PATIENT,
    PATIENT_ROOT,
    SERIES,
    STUDY,
    STUDY_ROOT,
    IdentifierError,
    parse_identifier,
)
from dimsekit_plugins.qr.retrieve import (
    Tally,
    contexts_for,
    final_status,
    parse_retrieve,
    retrieve_sql,
)
from tests.plugins.test_qr_support import CT, MR, corpus_datasets, query, study_uid


def ident(level: str | None, **keys) -> Dataset:
    ds = query(level if level is not None else "X", **keys)
    if level is None:
        del ds.QueryRetrieveLevel
    return ds


def bad_number() -> Dataset:
    """A SERIES identifier whose Series Number (IS) is "two", as received (implicit VR)."""
    ds = ident("SERIES")
    ds.add_new(0x00200011, "LO", "two")
    return decode_dataset(encode_dataset(ds, "1.2.840.10008.1.2"), "1.2.840.10008.1.2")


# -- hierarchy and keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "identifier", "comment"),
    [
        (STUDY_ROOT, ident(None, PatientName="*"), "no Query/Retrieve Level"),
        (STUDY_ROOT, ident("", PatientName="*"), "no Query/Retrieve Level"),
        (STUDY_ROOT, ident("FOO"), "FOO is not one of STUDY, SERIES, IMAGE"),
        (STUDY_ROOT, ident("PATIENT", PatientID="1"), "PATIENT is not one of"),
        (STUDY_ROOT, ident("STUDY", SeriesInstanceUID=None), "below the STUDY level: SeriesInstanceUID"),
        (STUDY_ROOT, ident("STUDY", Modality="CT"), "below the STUDY level: Modality"),
        (STUDY_ROOT, ident("SERIES", SOPInstanceUID="1.2"), "below the SERIES level: SOPInstanceUID"),
        (PATIENT_ROOT, ident("PATIENT", StudyDate="20240101"), "below the PATIENT level: StudyDate"),
        (PATIENT_ROOT, ident("PATIENT", PatientAge=None), "below the PATIENT level: PatientAge"),
        (STUDY_ROOT, ident("STUDY", StudyDate="2024-01-01"), "StudyDate:"),
        (STUDY_ROOT, bad_number(), "SeriesNumber:"),
        (STUDY_ROOT, None, "no identifier"),
    ],
)
def test_identifiers_that_do_not_fit_the_model(model, identifier, comment):
    with pytest.raises(IdentifierError) as caught:
        parse_identifier(identifier, model)
    assert caught.value.status == 0xA900
    assert comment in str(caught.value)


def test_the_offending_elements_are_named():
    with pytest.raises(IdentifierError) as caught:
        parse_identifier(ident("STUDY", SeriesInstanceUID=None, Modality=None), STUDY_ROOT)
    assert set(caught.value.offending) == {0x0020000E, 0x00080060}


def test_patient_attributes_are_study_level_keys_of_the_study_root():
    q = parse_identifier(ident("STUDY", PatientName="DOE*", PatientID=None, PatientBirthDate=None), STUDY_ROOT)
    assert q.level == STUDY and q.unsupported == []
    assert [k.keyword for k in q.keys] == ["PatientName", "PatientID", "PatientBirthDate"]
    assert len(q.conditions) == 1


def test_keys_of_levels_above_are_matched_too():
    q = parse_identifier(ident("IMAGE", StudyInstanceUID="1.2", SeriesInstanceUID="1.3", Modality="CT",
                               SOPInstanceUID=None), STUDY_ROOT)
    sql, params, columns = find_sql(q)
    assert params == ("CT", "1.2", "1.3")  # in the identifier's (tag) order
    assert columns == ["SOPInstanceUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID"]
    assert sql.startswith("SELECT i.sop_instance_uid, se.modality, st.study_instance_uid, se.series_instance_uid")
    assert "FROM instance i JOIN series se" in sql


def test_unsupported_keys_are_listed_and_not_matched():
    q = parse_identifier(ident("STUDY", PatientAge="040Y", StudyDate=None), STUDY_ROOT)
    assert q.unsupported == ["PatientAge"]
    assert q.conditions == []
    # InstitutionName is a series attribute: below the STUDY level
    with pytest.raises(IdentifierError):
        parse_identifier(ident("STUDY", InstitutionName=None), STUDY_ROOT)


def test_unknown_attributes_and_sequences_are_optional_keys_of_the_level():
    ds = ident("SERIES", SeriesInstanceUID=None)
    ds.add_new(0x00181030, "LO", "PROTO*")  # Protocol Name: listed, unsupported
    ds.add_new(0x00540016, "SQ", Sequence([Dataset()]))  # Radiopharmaceutical Information Sequence
    q = parse_identifier(ds, STUDY_ROOT)
    assert set(q.unsupported) == {"ProtocolName", "RadiopharmaceuticalInformationSequence"}
    identifier = response_identifier(q, ("1.2.3",), {"SeriesInstanceUID": 0}, "AE")
    assert identifier.ProtocolName in (None, "")
    assert identifier.RadiopharmaceuticalInformationSequence == Sequence()


def as_sequence(ds: Dataset, tag: int) -> Dataset:
    """``ds`` with the attribute ``tag`` sent as a sequence of one item (explicit VR lets a peer do that)."""
    item = Dataset()
    item.CodeValue = "X"
    ds.add_new(tag, "SQ", Sequence([item]))
    return ds


@pytest.mark.parametrize("tag", [0x00100020, 0x00100010, 0x0020000D, 0x00080061, 0x00201206])
def test_a_key_that_is_no_sequence_sent_as_one_does_not_fit_the_model(tag):
    # Patient ID, Patient's Name, Study Instance UID, Modalities in Study, Number of Study Related Series:
    # there is nothing to match such a value against, nor a way to return one (it was a traceback and C000)
    with pytest.raises(IdentifierError) as caught:
        parse_identifier(as_sequence(ident("STUDY"), tag), STUDY_ROOT)
    assert "a sequence, but its VR is" in str(caught.value)
    assert caught.value.offending == (tag,)


def test_a_retrieve_refuses_a_unique_key_sent_as_a_sequence_and_ignores_the_others():
    with pytest.raises(IdentifierError) as caught:
        parse_retrieve(as_sequence(ident("STUDY"), 0x0020000D), STUDY_ROOT)
    assert "StudyInstanceUID: a sequence" in str(caught.value)
    with pytest.raises(IdentifierError):
        parse_retrieve(as_sequence(ident("PATIENT"), 0x00100020), PATIENT_ROOT)
    level, conditions = parse_retrieve(as_sequence(ident("STUDY", StudyInstanceUID="1.2"), 0x00100010), STUDY_ROOT)
    assert level == STUDY and len(conditions) == 1


def test_specific_character_set_is_never_a_key():
    q = parse_identifier(ident("STUDY", SpecificCharacterSet="ISO_IR 100", PatientName="M*"), STUDY_ROOT)
    assert q.charset == ["ISO_IR 100"]
    assert [k.keyword for k in q.keys] == ["PatientName"]


def test_modalities_in_study_matches_any_listed_modality():
    q = parse_identifier(ident("STUDY", ModalitiesInStudy=["CT", "US"]), STUDY_ROOT)
    (condition,) = q.conditions
    assert condition.sql.startswith("EXISTS (SELECT 1 FROM series x")
    assert condition.params == ("CT", "US")
    q = parse_identifier(ident("STUDY", ModalitiesInStudy=["CT", "*"]), STUDY_ROOT)
    assert q.conditions == []


# -- the SQL against a real index ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> sqlite3.Connection:
    """The corpus put into an archive index by the archive's own code."""
    path = tmp_path_factory.mktemp("index") / "index.sqlite"
    conn = archive_index.connect(str(path))
    for n, ds in enumerate(corpus_datasets()):
        values = archive_index.header_values(ds)
        record = archive_index.InstanceRecord(
            **values, transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"x/{n}.dcm", size=1,
            received_at="2024-01-01T00:00:00",
        )
        archive_index.put(conn, record)
    register_functions(conn)
    conn.row_factory = None
    return conn


def run(conn, model, identifier):
    q = parse_identifier(identifier, model)
    sql, params, columns = find_sql(q)
    return [dict(zip(columns, row, strict=True)) for row in conn.execute(sql, params)]


@pytest.mark.parametrize(
    ("model", "identifier", "expected"),
    [
        (STUDY_ROOT, ident("STUDY", StudyID=None), {"S1", "S2", "S3", "S4", "S5"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, StudyDate="20240101-"), {"S1", "S2", "S4"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, StudyDate="-20231231"), {"S3", "S5"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, StudyTime="08-1030"), {"S1", "S2", "S5"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, PatientName="müller*"), {"S2"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, PatientName="山田^太郎"), {"S3"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, ModalitiesInStudy="MR"), {"S1", "S3", "S5"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, ModalitiesInStudy=["CR", "US"]), {"S2", "S4"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, AccessionNumber="ACC?"), {"S1", "S2", "S3", "S4", "S5"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, StudyDescription="*CT"), {"S1"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, SOPClassesInStudy=CT), {"S1", "S4"}),
        (STUDY_ROOT, ident("STUDY", StudyID=None, StudyInstanceUID=f"{study_uid('1')}\\{study_uid('5')}"),
         {"S1", "S5"}),
        (PATIENT_ROOT, ident("STUDY", StudyID=None, PatientID="PID4"), {"S4", "S5"}),
    ],
)
def test_study_level_queries(indexed, model, identifier, expected):
    assert {row["StudyID"] for row in run(indexed, model, identifier)} == expected


def test_derived_counts_and_modalities(indexed):
    rows = run(indexed, STUDY_ROOT, ident("STUDY", StudyID=None, ModalitiesInStudy=None,
                                          NumberOfStudyRelatedSeries=None, NumberOfStudyRelatedInstances=None,
                                          NumberOfPatientRelatedStudies=None))
    by_id = {row["StudyID"]: row for row in rows}
    assert by_id["S1"]["ModalitiesInStudy"] == "CT\\MR"
    assert (by_id["S1"]["NumberOfStudyRelatedSeries"], by_id["S1"]["NumberOfStudyRelatedInstances"]) == (2, 4)
    assert by_id["S4"]["NumberOfPatientRelatedStudies"] == 2
    rows = run(indexed, PATIENT_ROOT, ident("PATIENT", PatientID=None, NumberOfPatientRelatedSeries=None,
                                            NumberOfPatientRelatedInstances=None))
    assert {r["PatientID"]: (r["NumberOfPatientRelatedSeries"], r["NumberOfPatientRelatedInstances"])
            for r in rows} == {"PID1": (2, 4), "PID2": (1, 1), "PID3": (1, 2), "PID4": (3, 4)}
    rows = run(indexed, STUDY_ROOT, ident("SERIES", StudyInstanceUID=study_uid("1"), Modality=None,
                                          NumberOfSeriesRelatedInstances=None))
    assert sorted((r["Modality"], r["NumberOfSeriesRelatedInstances"]) for r in rows) == [("CT", 3), ("MR", 1)]


def test_image_level(indexed):
    rows = run(indexed, STUDY_ROOT, ident("IMAGE", SeriesInstanceUID=None, SOPInstanceUID=None,
                                          SOPClassUID=MR, InstanceNumber="1", AvailableTransferSyntaxUID=None))
    assert len(rows) == 3  # the first MR instance of each of the three MR series
    assert {r["AvailableTransferSyntaxUID"] for r in rows} == {"1.2.840.10008.1.2.1"}


def test_the_query_plan_uses_the_indexes(indexed):
    q = parse_identifier(ident("SERIES", StudyInstanceUID=study_uid("1"), SeriesInstanceUID=None), STUDY_ROOT)
    sql, params, _ = find_sql(q)
    plan = " ".join(str(row[-1]) for row in indexed.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "SCAN" not in plan.replace("SCAN CONSTANT ROW", ""), plan


# -- response identifiers and character sets ---------------------------------------------------------


@pytest.mark.parametrize(
    ("request_charset", "texts", "expected"),
    [
        ([], ["DOE^JOHN"], None),
        (["ISO_IR 100"], ["DOE^JOHN"], ["ISO_IR 100"]),
        ([], ["Müller"], ["ISO_IR 192"]),
        (["ISO_IR 100"], ["Müller"], ["ISO_IR 100"]),
        (["ISO_IR 100"], ["山田"], ["ISO_IR 192"]),
        (["ISO_IR 192"], ["山田", "Müller"], ["ISO_IR 192"]),
        (["", "ISO 2022 IR 87"], ["Yamada^Tarou=山田^太郎"], ["", "ISO 2022 IR 87"]),
        (["NOT A CHARSET"], ["Müller"], ["ISO_IR 192"]),
        # ISO 2022 IR 87 / IR 159 as the first value: pydicom cannot write an empty value in it
        (["ISO 2022 IR 87"], ["A", ""], None),
        (["ISO 2022 IR 159"], ["DOE^JOHN"], None),
        (["ISO 2022 IR 87"], ["山田", ""], ["ISO_IR 192"]),
        # the default repertoire is ASCII (pydicom would write 'ü' there as a Latin-1 byte)
        (["", "ISO 2022 IR 87"], ["Müller"], ["ISO_IR 192"]),
        # ISO 2022 IR 13 holds half-width katakana only, not kanji (Python's shift_jis would)
        (["ISO 2022 IR 13"], ["山田"], ["ISO_IR 192"]),
        (["ISO 2022 IR 13", "ISO 2022 IR 87"], ["ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎"], ["ISO 2022 IR 13", "ISO 2022 IR 87"]),
        (["", "ISO 2022 IR 149"], ["Hong^Gildong=洪^吉洞=홍^길동"], ["", "ISO 2022 IR 149"]),
        # a term that is none of DICOM's is not echoed, even over plain ASCII
        (["GARBAGE"], ["DOE^JOHN"], None),
        (["ISO_IR 100", "NOT A SET"], ["DOE^JOHN"], None),
    ],
)
def test_reply_charset(request_charset, texts, expected):
    assert reply_charset(request_charset, texts) == expected


def test_choosing_a_reply_charset_leaves_the_warning_filters_alone(monkeypatch):
    """They are the process's: catching pydicom's warning as an error (as it was done) raised
    the archive's threads' warnings as errors meanwhile."""
    import warnings

    touched: list[str] = []
    for name in ("catch_warnings", "simplefilter", "filterwarnings"):
        real = getattr(warnings, name)
        monkeypatch.setattr(warnings, name, lambda *a, _real=real, _name=name, **k: touched.append(_name) or _real(*a, **k))
    answers = reply_charset(["ISO_IR 100"], ["Müller", "山田"]), reply_charset(["ISO_IR 100"], ["Müller"])
    monkeypatch.undo()
    assert answers == (["ISO_IR 192"], ["ISO_IR 100"])
    assert touched == []


@pytest.mark.parametrize("charset", ["ISO 2022 IR 87", "ISO 2022 IR 159"])
@pytest.mark.parametrize(("patient_id", "name"), [("A\\", "DOE^JOHN^^"), ("ID1", "山田^太郎")])
def test_a_response_in_a_character_set_pydicom_cannot_write_in_is_answered_in_another(charset, patient_id, name):
    # Found by fuzzing the node: the request's character set was echoed, and pydicom's writer
    # failed on the empty value ("A\\" holds two): the match was answered 0110H.
    q = parse_identifier(ident("PATIENT", SpecificCharacterSet=charset, PatientID=None, PatientName=None),
                         PATIENT_ROOT)
    ds = response_identifier(q, (patient_id, name), {"PatientID": 0, "PatientName": 1}, "QRSCP")
    back = decode_dataset(encode_dataset(ds, "1.2.840.10008.1.2"), "1.2.840.10008.1.2")
    assert (back.PatientID, str(back.PatientName)) == (ds.PatientID, name)


def test_a_response_identifier_holds_the_requested_keys_only():
    q = parse_identifier(ident("STUDY", SpecificCharacterSet="ISO_IR 100", PatientName="M*", StudyDate=None,
                               ModalitiesInStudy=None, NumberOfStudyRelatedInstances=None,
                               InstanceAvailability=None, RetrieveAETitle=None), STUDY_ROOT)
    row = ("Müller^Jürgen", "20240210", "CR\\MR", 3)
    columns = {"PatientName": 0, "StudyDate": 1, "ModalitiesInStudy": 2, "NumberOfStudyRelatedInstances": 3}
    ds = response_identifier(q, row, columns, "QRSCP")
    assert {e.keyword for e in ds} == {
        "SpecificCharacterSet", "PatientName", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances",
        "InstanceAvailability", "RetrieveAETitle", "QueryRetrieveLevel"}
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert list(ds.ModalitiesInStudy) == ["CR", "MR"]
    assert ds.NumberOfStudyRelatedInstances == 3
    assert (ds.RetrieveAETitle, ds.InstanceAvailability, ds.QueryRetrieveLevel) == ("QRSCP", "ONLINE", "STUDY")


def test_empty_values_come_back_zero_length():
    q = parse_identifier(ident("STUDY", PatientName=None, StudyDate=None), STUDY_ROOT)
    ds = response_identifier(q, (None, ""), {"PatientName": 0, "StudyDate": 1}, "AE")
    assert ds["PatientName"].is_empty and ds["StudyDate"].is_empty
    assert "SpecificCharacterSet" not in ds


# -- retrieve -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "identifier", "comment"),
    [
        (STUDY_ROOT, ident("STUDY"), "no StudyInstanceUID to retrieve at the STUDY level"),
        (STUDY_ROOT, ident("SERIES", StudyInstanceUID="1.2"), "no SeriesInstanceUID"),
        (STUDY_ROOT, ident("STUDY", StudyInstanceUID="1.2*"), "wild cards are not allowed"),
        (PATIENT_ROOT, ident("PATIENT", PatientID="PID*"), "wild cards are not allowed"),
        (PATIENT_ROOT, ident("PATIENT", PatientID="A\\B"), "one value only"),
        (STUDY_ROOT, ident("SERIES", StudyInstanceUID="1.2\\1.3", SeriesInstanceUID="1.4"), "one value only"),
        (STUDY_ROOT, ident("STUDY", StudyInstanceUID="1.2", SeriesInstanceUID="1.3"), "below the STUDY level"),
        (STUDY_ROOT, ident(None, StudyInstanceUID="1.2"), "no Query/Retrieve Level"),
    ],
)
def test_retrieve_identifiers_refused(model, identifier, comment):
    with pytest.raises(IdentifierError) as caught:
        parse_retrieve(identifier, model)
    assert comment in str(caught.value)


def test_retrieve_selects_by_unique_keys_only(indexed):
    level, conditions = parse_retrieve(
        ident("STUDY", StudyInstanceUID=f"{study_uid('1')}\\{study_uid('4')}", PatientName="NOBODY"), STUDY_ROOT)
    assert level == STUDY
    sql, params = retrieve_sql(conditions)
    rows = list(indexed.execute(sql, params))
    assert len(rows) == 7
    level, conditions = parse_retrieve(ident("PATIENT", PatientID="PID4"), PATIENT_ROOT)
    assert level == PATIENT
    assert len(list(indexed.execute(*retrieve_sql(conditions)))) == 4
    level, conditions = parse_retrieve(ident("IMAGE", PatientID="PID1", StudyInstanceUID=study_uid("1"),
                                             SeriesInstanceUID="9.9", SOPInstanceUID="9.9.9"), PATIENT_ROOT)
    assert level == IMAGE and list(indexed.execute(*retrieve_sql(conditions))) == []
    level, _ = parse_retrieve(ident("SERIES", SeriesInstanceUID="1.2"), STUDY_ROOT)  # upper key omitted
    assert level == SERIES


def test_contexts_for_a_move():
    instances = [
        ("1", CT, "1.2.840.10008.1.2.1", "a"), ("2", CT, "1.2.840.10008.1.2", "b"),
        ("3", CT, "1.2.840.10008.1.2.4.50", "c"), ("4", MR, "1.2.840.10008.1.2.4.50", "d"),
        ("5", CT, "1.2.840.10008.1.2.4.50", "e"),
    ]
    contexts = contexts_for(instances)
    assert contexts[0] == (CT, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99",
                                "1.2.840.10008.1.2.2"])
    assert contexts[1:] == [(CT, ["1.2.840.10008.1.2.4.50"]), (MR, ["1.2.840.10008.1.2.4.50"])]
    many = [(str(n), f"1.2.3.{n}", "1.2.840.10008.1.2", "p") for n in range(200)]
    assert len(contexts_for(many)) == 128


class _R:
    def __init__(self, status):
        self.status = status


@pytest.mark.parametrize(
    ("outcomes", "status", "failed"),
    [
        ([0x0000, 0x0000], 0x0000, []),
        ([0x0000, 0xA700], 0xB000, ["b"]),
        ([0x0000, 0xB007], 0xB000, []),
        ([0xB000, 0x0001], 0xB000, []),
        ([0xA700, None], 0xA702, ["a", "b"]),
        ([0xB000, 0xC000], 0xB000, ["b"]),
    ],
)
def test_final_status(outcomes, status, failed):
    tally = Tally(total=len(outcomes))
    for uid, outcome in zip("ab", outcomes, strict=True):
        tally.count(uid, _R(outcome) if outcome is not None else RuntimeError("no context"))
    assert final_status(tally) == status
    assert tally.failed_uids == failed
    assert tally.fields(remaining=False) == {
        "NumberOfCompletedSuboperations": tally.completed, "NumberOfFailedSuboperations": tally.failed,
        "NumberOfWarningSuboperations": tally.warning}


# -- plugin declaration and settings ---------------------------------------------------------------------


def test_settings():
    from dimsekit_plugins.qr import retrieve

    qr_plugin.dimsekit_configure(config=from_mapping({"plugins": {"queryretrieve": {"batch_size": 7,
                                                                                      "pending_interval": 0}}}))
    assert (find.batch_size, retrieve.PENDING_INTERVAL) == (7, 0.0)
    qr_plugin.dimsekit_configure(config=from_mapping({}))
    assert find.batch_size == qr_plugin.DEFAULT_BATCH_SIZE
    assert retrieve.PENDING_INTERVAL == qr_plugin.DEFAULT_PENDING_INTERVAL == 0.1
    for bad, key in (({"batch_size": 0}, "batch_size"), ({"batch_size": True}, "batch_size"),
                     ({"pending_interval": -1}, "pending_interval"), ({"pending_interval": "1"}, "pending_interval"),
                     ({"pending_interval": 61}, "pending_interval"),
                     ({"size": 3}, "plugins.queryretrieve.size")):
        with pytest.raises(ConfigError, match=key):
            qr_plugin.dimsekit_configure(config=from_mapping({"plugins": {"queryretrieve": bad}}))


def test_registry_gives_the_storage_classes_both_roles_with_the_storage_plugin():
    pm = make_plugin_manager(load_entrypoints=False, plugins=[storage_plugin, qr_plugin])
    registry = Registry.from_plugins(pm)
    ct = registry.supported[CT]
    assert ct.scp_role and ct.scu_role
    assert registry.handler("C-STORE", CT) is storage_plugin.handle_store
    assert registry.handler("C-FIND", str(STUDY_ROOT_FIND)) is find.handle_find
    alone = Registry.from_plugins(make_plugin_manager(load_entrypoints=False, plugins=[qr_plugin]))
    assert alone.supported[CT].scu_role and not alone.supported[CT].scp_role


@pytest.mark.parametrize(
    ("proposed", "answered"),
    [
        (b"", None),
        (b"\x01", b"\x00"),                          # relational queries: refused
        (b"\x00\x01", b"\x00\x01"),                  # combined date-time matching: accepted
        (b"\x01\x01\x01\x01", b"\x00\x01\x00\x00"),  # + fuzzy PN, timezone adjustment: refused
        (b"\x00\x00\x01", b"\x00\x00\x00"),
        (b"\x00\x02", b"\x00\x00"),                  # not a defined value: not supported
    ],
)
def test_find_extended_negotiation_accepts_combined_date_time_matching_only(proposed, answered):
    assert find.answer_extended_negotiation(proposed) == answered


def test_extended_negotiation_is_answered_with_combined_date_time_the_only_option_accepted():
    assert qr_plugin.refuse_extended_negotiation(b"\x01\x01\x01") == b"\x00\x00\x00"
    assert qr_plugin.refuse_extended_negotiation(b"") is None
    pm = make_plugin_manager(load_entrypoints=False, plugins=[qr_plugin])
    from dimsekit.ae import ApplicationEntity

    ae = ApplicationEntity("QRSCP", plugin_manager=pm)
    rq = build_associate_rq(
        called_ae_title="QRSCP", calling_ae_title="SCU",
        contexts=[(str(STUDY_ROOT_FIND), ["1.2.840.10008.1.2"]), (str(STUDY_ROOT_MOVE), ["1.2.840.10008.1.2"])],
        extended={str(STUDY_ROOT_FIND): b"\x01\x01\x01", str(STUDY_ROOT_MOVE): b"\x01"},
    )
    ac, negotiated = negotiate_as_acceptor(rq, ae.policy)
    assert negotiated.extended == {str(STUDY_ROOT_FIND): b"\x00\x01\x00", str(STUDY_ROOT_MOVE): b"\x00"}
    assert len(negotiated.contexts) == 2
    assert find.combined_datetime_agreed(type("A", (), {"negotiated": negotiated})(), STUDY_ROOT_FIND)
    assert not find.combined_datetime_agreed(type("A", (), {"negotiated": None})(), STUDY_ROOT_FIND)


def test_models_know_their_levels():
    assert PATIENT_ROOT.level_of(PATIENT) == PATIENT
    assert STUDY_ROOT.level_of(PATIENT) == STUDY
    assert parse_identifier(ident("PATIENT", PatientID=None), PATIENT_ROOT).level == PATIENT
    assert str(PATIENT_ROOT_FIND) != str(STUDY_ROOT_FIND)


def test_a_retrieve_ignores_its_non_unique_keys_even_malformed_ones(indexed):
    level, conditions = parse_retrieve(ident("STUDY", StudyInstanceUID=study_uid("5"), StudyDate="2024-01-01",
                                             PatientName="NOBODY"), STUDY_ROOT)
    assert level == STUDY and len(conditions) == 1
    assert len(list(indexed.execute(*retrieve_sql(conditions)))) == 1


def test_keys_with_an_ambiguous_vr_come_back_encodable():
    ds = ident("IMAGE", SOPInstanceUID=None)
    ds.add_new(0x00280106, "US", None)  # Smallest Image Pixel Value: "US or SS", unresolvable here
    ds.add_new(0x00280107, "US", 7)  # Largest Image Pixel Value, with a value
    received = decode_dataset(encode_dataset(ds, "1.2.840.10008.1.2"), "1.2.840.10008.1.2")
    q = parse_identifier(received, STUDY_ROOT)
    identifier = response_identifier(q, ("1.2.3",), {"SOPInstanceUID": 0}, "AE")
    assert identifier["SmallestImagePixelValue"].is_empty and identifier["LargestImagePixelValue"].is_empty
    assert q.unsupported == ["SmallestImagePixelValue", "LargestImagePixelValue"]
    encode_dataset(identifier, "1.2.840.10008.1.2.1")  # explicit VR needs a VR it can write


def test_a_patient_level_retrieve_naming_the_issuer_selects_that_issuers_patient_only(tmp_path):
    """Two hospitals' patients with one Patient ID: naming the issuer must not send the other's images."""
    conn = archive_index.connect(str(tmp_path / "index.sqlite"))
    base = corpus_datasets()[0]
    for n, issuer in enumerate(("HOSP-A", "HOSP-B", None)):
        ds = Dataset()
        ds.update(base)
        ds.PatientID = "SAME"
        if issuer is not None:
            ds.IssuerOfPatientID = issuer
        ds.StudyInstanceUID = f"1.2.3.{n}"
        ds.SeriesInstanceUID = f"1.2.3.{n}.1"
        ds.SOPInstanceUID = f"1.2.3.{n}.1.1"
        archive_index.put(conn, archive_index.InstanceRecord(
            **archive_index.header_values(ds), transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"x/{n}.dcm", size=1,
            received_at="2024-01-01T00:00:00"))

    def selected(identifier):
        _, conditions = parse_retrieve(identifier, PATIENT_ROOT)
        return sorted(row[0] for row in conn.execute(*retrieve_sql(conditions)))

    assert selected(ident("PATIENT", PatientID="SAME", IssuerOfPatientID="HOSP-A")) == ["1.2.3.0.1.1"]
    assert selected(ident("PATIENT", PatientID="SAME", IssuerOfPatientID="HOSP-B")) == ["1.2.3.1.1.1"]
    assert selected(ident("PATIENT", PatientID="SAME", IssuerOfPatientID="HOSP-C")) == []
    # no issuer (or an empty one): the Patient ID alone, as before
    assert selected(ident("PATIENT", PatientID="SAME")) == ["1.2.3.0.1.1", "1.2.3.1.1.1", "1.2.3.2.1.1"]
    assert selected(ident("PATIENT", PatientID="SAME", IssuerOfPatientID="")) == [
        "1.2.3.0.1.1", "1.2.3.1.1.1", "1.2.3.2.1.1"]
    # above the retrieve level too
    assert selected(ident("STUDY", PatientID="SAME", IssuerOfPatientID="HOSP-B",
                          StudyInstanceUID="1.2.3.0\\1.2.3.1")) == ["1.2.3.1.1.1"]
    with pytest.raises(IdentifierError) as caught:
        parse_retrieve(ident("PATIENT", PatientID="SAME", IssuerOfPatientID="HOSP-*"), PATIENT_ROOT)
    assert "IssuerOfPatientID" in str(caught.value)
