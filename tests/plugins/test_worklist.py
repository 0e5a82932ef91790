"""The Modality Worklist plugin: item checks (PS3.4 Table K.6-1), matching on
the SQL store and the folder of *.wl files, response identifiers, settings;
then a node on 127.0.0.1 answering dimsekit's SCU (C-FIND, C-CANCEL, an item
added while it runs)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from twisted.internet import reactor

from dimsekit.config import Config, ConfigError, NodeConfig, from_mapping
from dimsekit.scu import MODALITY_WORKLIST_FIND
from dimsekit_plugins import worklist
from dimsekit_plugins.qr.matching import where
from dimsekit_plugins.worklist import (
    IdentifierError,
    WorklistItemError,
    WorklistSettings,
    WorklistStore,
    check_item,
    query_conditions,
    response_for,
    split_steps,
)
from tests.dimse_e2e.support import LoopbackTestCase, within

SPS = "ScheduledProcedureStepSequence"


def step(modality: str = "CT", ae: str = "CT1", date: str = "20240105", time: str = "0900",
         step_id: str = "S1", physician: str = "WHO^DR") -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    ds.ScheduledStationAETitle = ae
    ds.ScheduledProcedureStepStartDate = date
    ds.ScheduledProcedureStepStartTime = time
    ds.ScheduledProcedureStepID = step_id
    ds.ScheduledProcedureStepDescription = f"{modality} step"
    ds.ScheduledPerformingPhysicianName = physician
    return ds


def item(name: str = "DOE^JOHN", pid: str = "P1", accession: str = "A1", *steps: Dataset,
         priority: str = "ROUTINE") -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    ds.PatientID = pid
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.AccessionNumber = accession
    ds.RequestedProcedureID = f"RP-{accession}"
    ds.RequestedProcedureDescription = "a procedure"
    ds.RequestedProcedurePriority = priority
    ds.StudyInstanceUID = generate_uid()
    ds.ScheduledProcedureStepSequence = list(steps) or [step()]
    return ds


def query(*keys: tuple[str, Any], steps: list[tuple[str, Any]] | None = None) -> Dataset:
    ds = Dataset()
    for keyword, value in keys:
        setattr(ds, keyword, value)
    if steps is not None:
        inner = Dataset()
        for keyword, value in steps:
            setattr(inner, keyword, value)
        ds.ScheduledProcedureStepSequence = [inner]
    return ds


# -- checks ------------------------------------------------------------------------------------


def test_a_complete_item_passes():
    check_item(item())


@pytest.mark.parametrize(
    ("keyword", "inside_step", "words"),
    [
        ("PatientName", False, "missing PatientName (0010,0010)"),
        ("PatientID", False, "missing PatientID (0010,0020)"),
        ("RequestedProcedureID", False, "missing RequestedProcedureID (0040,1001)"),
        ("StudyInstanceUID", False, "missing StudyInstanceUID (0020,000D)"),
        ("ScheduledProcedureStepSequence", False, "missing ScheduledProcedureStepSequence (0040,0100)"),
        ("Modality", True, "missing Modality (0008,0060) in ScheduledProcedureStepSequence item 1"),
        ("ScheduledStationAETitle", True, "missing ScheduledStationAETitle (0040,0001)"),
        ("ScheduledProcedureStepStartDate", True, "missing ScheduledProcedureStepStartDate (0040,0002)"),
        ("ScheduledProcedureStepStartTime", True, "missing ScheduledProcedureStepStartTime (0040,0003)"),
        ("ScheduledProcedureStepID", True, "missing ScheduledProcedureStepID (0040,0009)"),
        ("ScheduledProcedureStepDescription", True, "ScheduledProcedureStepDescription (0040,0007) or "
                                                    "ScheduledProtocolCodeSequence (0040,0008)"),
        ("RequestedProcedureDescription", False, "RequestedProcedureDescription (0032,1060) or "
                                                 "RequestedProcedureCodeSequence (0032,1064)"),
    ],
)
def test_a_missing_type1_key_is_named(keyword, inside_step, words):
    ds = item()
    target = ds.ScheduledProcedureStepSequence[0] if inside_step else ds
    delattr(target, keyword)
    with pytest.raises(WorklistItemError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_item(ds)


def test_empty_values_sequences_and_bad_dates_are_refused():
    ds = item()
    ds.PatientID = ""
    with pytest.raises(WorklistItemError, match=r"PatientID \(0010,0020\) has no value"):
        check_item(ds)
    ds = item()
    ds.ScheduledProcedureStepSequence = []
    with pytest.raises(WorklistItemError, match="has no item"):
        check_item(ds)
    with pytest.raises(WorklistItemError, match="not a date"):
        check_item(item("A^B", "P", "A", step(date="2024-01-05")))
    with pytest.raises(WorklistItemError, match="item 2"):
        check_item(item("A^B", "P", "A", step(), step(modality="")))
    coded = item()
    del coded.ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription
    code = Dataset()
    code.CodeValue = "X1"
    coded.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence = [code]
    check_item(coded)  # the code sequence stands in for the description (1C)


def test_split_steps():
    ds = item("A^B", "P", "A", step("CT", step_id="S1"), step("MR", step_id="S2"))
    parts = split_steps(ds)
    assert [len(p.ScheduledProcedureStepSequence) for p in parts] == [1, 1]
    assert [p.ScheduledProcedureStepSequence[0].Modality for p in parts] == ["CT", "MR"]
    assert all(p.PatientID == "P" for p in parts)


# -- matching on the store ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path) -> WorklistStore:
    s = WorklistStore(tmp_path / "db.sqlite", tmp_path / "wl", reactor, create=True)
    s._locked(s._add, [
        item("Müller^Hans", "P1", "A1", step("CT", "CT1", "20240105", "0900", "S1", "House^Gregory")),
        item("DOE^JOHN", "P2", "A2", step("MR", "MR1", "20240106", "1030", "S2"), priority="HIGH"),
        item("DOE^JANE", "P3", "A3", step("CT", "CT2", "20240201", "1400", "S3"), step("PT", "PT1", "20240202", "0800", "S4")),
    ])
    yield s
    s._locked(s._close)


def find(store: WorklistStore, identifier: Dataset, source: str = "database", called: str = "") -> list[Dataset]:
    clause, params = where(query_conditions(identifier))
    rows = store._locked(store._fetch, source, clause, params, 0, 1000, called)
    import json

    return [Dataset.from_json(json.loads(text)) for _, text in rows]


def ids(found: list[Dataset]) -> list[str]:
    return [f"{d.PatientID}/{d.ScheduledProcedureStepSequence[0].ScheduledProcedureStepID}" for d in found]


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        (query(), ["P1/S1", "P2/S2", "P3/S3", "P3/S4"]),
        (query(steps=[("Modality", "CT")]), ["P1/S1", "P3/S3"]),
        (query(steps=[("Modality", "")]), ["P1/S1", "P2/S2", "P3/S3", "P3/S4"]),
        (query(steps=[("ScheduledStationAETitle", "CT*")]), ["P1/S1", "P3/S3"]),
        (query(steps=[("ScheduledProcedureStepStartDate", "20240105-20240131")]), ["P1/S1", "P2/S2"]),
        (query(steps=[("ScheduledProcedureStepStartDate", "20240201-")]), ["P3/S3", "P3/S4"]),
        (query(steps=[("ScheduledProcedureStepStartTime", "0800-1000")]), ["P1/S1", "P3/S4"]),
        (query(steps=[("ScheduledPerformingPhysicianName", "house*")]), ["P1/S1"]),
        (query(steps=[("ScheduledProcedureStepDescription", "MR step")]), ["P2/S2"]),  # JSON fallback
        (query(steps=[("Modality", "CT"), ("ScheduledStationAETitle", "CT2")]), ["P3/S3"]),
        (query(("PatientName", "müller*")), ["P1/S1"]),  # non-ASCII, case-insensitive
        (query(("PatientName", "DOE^J?HN")), ["P2/S2"]),
        (query(("PatientID", "P3")), ["P3/S3", "P3/S4"]),
        (query(("AccessionNumber", "A2")), ["P2/S2"]),
        (query(("RequestedProcedurePriority", "HIGH")), ["P2/S2"]),  # JSON fallback, top level
        (query(("PatientName", "DOE*")), ["P2/S2", "P3/S3", "P3/S4"]),
    ],
)
def test_matching(store, identifier, expected):
    assert ids(find(store, identifier)) == expected


def test_timezone_offset_from_utc_qualifies_the_query_and_is_not_matched(store):
    """PS3.4 C.2.2.2.5: Timezone Offset From UTC in a query identifier says in which
    timezone its dates and times are (as Specific Character Set says how its text is
    encoded); it is no matching key.  It was matched against the items, which do not
    have it: a modality that sends it got an empty worklist."""
    identifier = query(("TimezoneOffsetFromUTC", "+0100"), steps=[("Modality", "CT")])
    assert ids(find(store, identifier)) == ["P1/S1", "P3/S3"]


def test_a_date_in_the_old_dotted_form_is_found_by_date(tmp_path):
    # check_item accepts YYYY.MM.DD (ACR-NEMA); stored as given, no date query found it
    s = WorklistStore(tmp_path / "db.sqlite", None, reactor, create=True)
    try:
        s._locked(s._add, [item("OLD^FORM", "P1", "A1", step("CT", "CT1", "2024.01.05", "0900", "S1"))])
        for dates in ("20240105", "20240101-20240131", "20240105-"):
            assert ids(find(s, query(steps=[("ScheduledProcedureStepStartDate", dates)]))) == ["P1/S1"], dates
        found = find(s, query())[0].ScheduledProcedureStepSequence[0]
        assert found.ScheduledProcedureStepStartDate == "2024.01.05"  # the item itself as it was given
    finally:
        s._locked(s._close)


def test_uid_list_matching(store):
    every = find(store, query())
    uids = [every[0].StudyInstanceUID, every[1].StudyInstanceUID]
    assert ids(find(store, query(("StudyInstanceUID", uids)))) == ["P1/S1", "P2/S2"]


def test_a_multi_valued_attribute_matches_on_any_of_its_values(tmp_path):
    """PS3.4 C.2.2.3: an attribute with several values matches when any one of them
    does.  Scheduled Station AE Title and Scheduled Station Name are VM 1-n (a step
    scheduled on two stations), Other Patient IDs too: a query for the second
    station found nothing, the values were compared as one string "CT1\\CT9"."""
    s = WorklistStore(tmp_path / "db.sqlite", None, reactor, create=True)
    try:
        two = step("CT", "CT1", step_id="S1")
        two.ScheduledStationAETitle = ["CT1", "CT9"]
        two.ScheduledStationName = ["ROOM1", "ROOM9"]
        shared = item("TWO^STATIONS", "P1", "A1", two)
        shared.OtherPatientIDs = ["OLD1", "OLD9"]
        s._locked(s._add, [shared, item("ONE^STATION", "P2", "A2", step("CT", "CT2", step_id="S2"))])
        for identifier, expected in [
            (query(steps=[("ScheduledStationAETitle", "CT9")]), ["P1/S1"]),
            (query(steps=[("ScheduledStationAETitle", "CT1")]), ["P1/S1"]),
            (query(steps=[("ScheduledStationAETitle", "CT?")]), ["P1/S1", "P2/S2"]),
            (query(steps=[("ScheduledStationAETitle", "*9")]), ["P1/S1"]),
            (query(steps=[("ScheduledStationAETitle", "CT1\\CT9")]), []),  # no value is "CT1\CT9"
            (query(steps=[("ScheduledStationName", "ROOM9")]), ["P1/S1"]),
            (query(("OtherPatientIDs", "OLD9")), ["P1/S1"]),  # a JSON key, beyond its first value
            (query(steps=[("ScheduledStationAETitle", "")]), ["P1/S1", "P2/S2"]),
        ]:
            assert ids(find(s, identifier)) == expected, identifier
    finally:
        s._locked(s._close)


def test_identifiers_that_cannot_be_matched():
    with pytest.raises(IdentifierError, match="one item"):
        ident = query()
        ident.ScheduledProcedureStepSequence = [Dataset(), Dataset()]
        query_conditions(ident)
    with pytest.raises(IdentifierError, match="ScheduledProcedureStepStartDate"):
        query_conditions(query(steps=[("ScheduledProcedureStepStartDate", "20240301-20240101")]))


def test_remove_and_list(store):
    listed = store._locked(store._items)
    assert len(listed) == 4
    assert store._locked(store._remove, [listed[0][0], 999]) == [listed[0][0]]
    assert len(store._locked(store._items)) == 3


# -- responses ---------------------------------------------------------------------------------------


def test_response_has_exactly_the_requested_keys():
    stored = item("Müller^Hans", "P1", "A1", step("CT", "CT1"))
    ident = query(("PatientName", "*"), ("PatientID", ""), ("PatientWeight", None),
                  steps=[("Modality", "CT"), ("ScheduledStationAETitle", ""), ("ScheduledProcedureStepLocation", "")])
    ident.ReferencedStudySequence = []
    rsp = response_for(stored, ident)
    assert sorted(e.keyword for e in rsp) == ["PatientID", "PatientName", "PatientWeight", "ReferencedStudySequence",
                                             "ScheduledProcedureStepSequence", "SpecificCharacterSet"]
    assert rsp.SpecificCharacterSet == "ISO_IR 192"  # Müller
    assert rsp["PatientWeight"].is_empty and rsp.ReferencedStudySequence == []
    inner = rsp.ScheduledProcedureStepSequence[0]
    assert sorted(e.keyword for e in inner) == ["Modality", "ScheduledProcedureStepLocation", "ScheduledStationAETitle"]
    assert inner.ScheduledStationAETitle == "CT1" and inner["ScheduledProcedureStepLocation"].is_empty

    whole = response_for(stored, query(("PatientID", ""), steps=[]))  # an empty item: the whole step
    assert "ScheduledProcedureStepDescription" in whole.ScheduledProcedureStepSequence[0]
    ascii_only = response_for(item("DOE^JOHN"), query(("PatientName", "")))
    assert "SpecificCharacterSet" not in ascii_only
    latin = query(("PatientName", ""))
    latin.SpecificCharacterSet = "ISO_IR 100"
    assert response_for(stored, latin).SpecificCharacterSet == "ISO_IR 100"  # it can hold ü


# -- the folder --------------------------------------------------------------------------------------


def write_wl(path: Path, ds: Dataset) -> Path:
    ds = Dataset(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MODALITY_WORKLIST_FIND
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_folder_items_follow_the_files(tmp_path):
    folder = tmp_path / "wl"
    store = WorklistStore(tmp_path / "none.sqlite", folder, reactor)
    try:
        write_wl(folder / "one.wl", item("ONE^A", "F1", "X1", step(step_id="W1")))
        write_wl(folder / "CTSCANNER" / "two.wl", item("TWO^B", "F2", "X2", step(step_id="W2")))
        write_wl(folder / "OTHER" / "three.wl", item("THREE^C", "F3", "X3", step(step_id="W3")))
        (folder / "notes.txt").write_text("not a worklist")
        bad = item("BAD^D", "F4", "X4")
        del bad.PatientID
        write_wl(folder / "bad.wl", bad)

        store._locked(store._scan, "CTSCANNER")
        assert ids(find(store, query(), "folder", "CTSCANNER")) == ["F1/W1", "F2/W2"]
        assert ids(find(store, query(), "folder", "OTHER")) == ["F1/W1"]  # not scanned for OTHER yet
        store._locked(store._scan, "OTHER")
        assert ids(find(store, query(), "folder", "OTHER")) == ["F1/W1", "F3/W3"]
        assert store._locked(store._items) == []  # no database file: nothing, and nothing created
        assert not (tmp_path / "none.sqlite").exists()

        # a changed file is read again, a removed one disappears, an unchanged one is not re-read
        rewritten = write_wl(folder / "one.wl", item("ONE^A", "F1", "X1", step("MR", step_id="W1b")))
        stamp = rewritten.stat().st_mtime_ns + 1_000_000
        os.utime(rewritten, ns=(stamp, stamp))
        (folder / "CTSCANNER" / "two.wl").unlink()
        reads: list[Path] = []
        original = store._read_file
        store._read_file = lambda path: (reads.append(path), original(path))[1]  # type: ignore[method-assign]
        store._locked(store._scan, "CTSCANNER")
        assert ids(find(store, query(), "folder", "CTSCANNER")) == ["F1/W1b"]
        assert reads == [folder / "one.wl"]
        reads.clear()
        store._locked(store._scan, "CTSCANNER")
        assert reads == []
    finally:
        store._locked(store._close)


def test_an_item_with_an_empty_name_among_several_is_stored(tmp_path):
    # A DICOM JSON item (dimsekit worklist add item.json) with an empty name among several
    # ({} or null, PS3.18 F.2.5): pydicom's JSON writer fails on it (IndexError), so the
    # item could not be added.
    import json

    listed = item("ONE^A", "F1", "X1", step(step_id="W1", physician="House^Gregory"))
    listed.NamesOfIntendedRecipientsOfResults = "Wilson^James"  # VM 1-n: any of its values matches
    text = json.loads(listed.to_json())
    text["00401010"]["Value"] = [{}, {"Alphabetic": "Wilson^James"}, None]
    s = WorklistStore(tmp_path / "db.sqlite", None, reactor, create=True)
    try:
        s._locked(s._add, [Dataset.from_json(text)])
        found = find(s, query(("NamesOfIntendedRecipientsOfResults", "wilson*")))
        assert ids(found) == ["F1/W1"]
        assert [str(name) for name in found[0].NamesOfIntendedRecipientsOfResults] == ["", "Wilson^James", ""]
        assert ids(find(s, query(("NamesOfIntendedRecipientsOfResults", "house*")))) == []
    finally:
        s._locked(s._close)


def test_an_item_with_a_float_that_is_not_finite_does_not_break_the_queries(tmp_path):
    # Stored as a bare NaN (pydicom's values through json.dumps), the item made SQLite's
    # json_extract fail ("malformed JSON") for every query with a key matched in the JSON:
    # one such item and no worklist for anybody.
    import math

    s = WorklistStore(tmp_path / "db.sqlite", None, reactor, create=True)
    try:
        odd = item("ONE^A", "F1", "X1", step(step_id="W1"), priority="HIGH")
        odd.add_new(0x00189087, "FD", float("nan"))  # Diffusion b-value
        odd.add_new(0x0018605A, "FL", [float("-inf"), 1.5, float("inf")])  # Table of Parameter Values
        s._locked(s._add, [odd, item("TWO^B", "F2", "X2", step(step_id="W2"))])
        found = find(s, query(("RequestedProcedurePriority", "HIGH")))
        assert ids(found) == ["F1/W1"]
        assert math.isnan(found[0][0x00189087].value)
        assert list(found[0][0x0018605A].value) == [float("-inf"), 1.5, float("inf")]
    finally:
        s._locked(s._close)


# -- settings -------------------------------------------------------------------------------------------


def test_settings(tmp_path):
    config = Config(node=NodeConfig(data_dir=str(tmp_path / "data")))
    settings = WorklistSettings.from_config(config)
    assert settings.database == (tmp_path / "data" / "index.sqlite").resolve()  # the archive's index
    assert settings.folder is None
    config = from_mapping({"node": {"data_dir": str(tmp_path)},
                           "plugins": {"worklist": {"folder": str(tmp_path / "wl"), "database": str(tmp_path / "w.db")}}})
    settings = WorklistSettings.from_config(config)
    assert settings.database == tmp_path / "w.db" and settings.folder == tmp_path / "wl"
    with pytest.raises(ConfigError, match="plugins.worklist.folders: unknown key"):
        worklist.dimsekit_configure(config=from_mapping({"plugins": {"worklist": {"folders": "x"}}}))
    with pytest.raises(ConfigError, match="plugins.worklist.folder: give a path"):
        worklist.dimsekit_configure(config=from_mapping({"plugins": {"worklist": {"folder": 3}}}))


# -- a node --------------------------------------------------------------------------------------------


class WorklistNodeTest(LoopbackTestCase):
    def node_config(self, tmp: Path) -> Config:
        return from_mapping({
            "node": {"ae_title": "SCP", "data_dir": str(tmp / "data")},
            "limits": {"dimse_timeout": 5.0, "acse_timeout": 5.0},
            "plugins": {"worklist": {"folder": str(tmp / "wl")}},
        })

    async def close_node_stores(self) -> None:
        stores = list(worklist._stores.values())
        worklist._stores.clear()
        for store in stores:
            await store.close()

    async def test_find_cancel_and_a_live_addition(self):
        tmp = Path(tempfile.mkdtemp(prefix="dimsekit-wl-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        config = self.node_config(tmp)
        cli_store = WorklistStore(WorklistSettings.from_config(config).database, None, reactor, create=True)
        self.addCleanup(cli_store.close)
        await within(cli_store.add([item(f"PAT^{n:02d}", f"P{n}", f"A{n}", step(step_id=f"S{n}")) for n in range(70)]))
        write_wl(tmp / "wl" / "SCP" / "file.wl", item("FROM^FILE", "PF", "AF", step("MR", step_id="SF")))
        self.addCleanup(self.close_node_stores)

        ae, port = await self.serve(worklist, config=config)
        assoc = await self.connect(port, [MODALITY_WORKLIST_FIND])
        ident = query(("PatientID", ""), steps=[("Modality", ""), ("ScheduledProcedureStepID", "")])
        op = assoc.find(ident, MODALITY_WORKLIST_FIND)
        found = [r async for r in op]
        final = await within(op.result)
        self.assertEqual(final.status, 0x0000)
        self.assertEqual(len(found), 71)  # 70 in the database (more than one batch) + 1 from the folder
        self.assertEqual({r.status for r in found}, {0xFF00})
        self.assertEqual(found[-1].dataset.PatientID, "PF")
        self.assertEqual(sorted(e.keyword for e in found[0].dataset), ["PatientID", "ScheduledProcedureStepSequence"])

        op = assoc.find(query(("PatientID", "")), MODALITY_WORKLIST_FIND)
        first = await op.__aiter__().__anext__()  # bounded by the test's timeout
        self.assertEqual(first.status, 0xFF00)
        op.cancel()
        final = await within(op.result)
        self.assertEqual(final.status, 0xFE00)
        self.assertLess(op.pending_count, 71)

        await within(cli_store.add([item("LATE^ONE", "PLATE", "AL", step("US", step_id="SL"))]))
        op = assoc.find(query(("PatientID", ""), steps=[("Modality", "US")]), MODALITY_WORKLIST_FIND)
        found = [r async for r in op]
        self.assertEqual([r.dataset.PatientID for r in found], ["PLATE"])

        bad = query(steps=[("ScheduledProcedureStepStartDate", "2024-")])
        final = await within(assoc.find(bad, MODALITY_WORKLIST_FIND).result)
        self.assertEqual(final.status, 0xA900)
        self.assertIn("ScheduledProcedureStepStartDate", final.command["ErrorComment"])
        await within(assoc.release())

    async def test_an_identifier_whose_sequence_cannot_be_read_is_refused_not_failed(self):
        # a Referenced Study Sequence of 4 bytes that are no item: pydicom reads it only
        # when it is used -- a C000 with a traceback from the matching, before the
        # identifier was read in full
        tmp = Path(tempfile.mkdtemp(prefix="dimsekit-wl-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        self.addCleanup(self.close_node_stores)
        ae, port = await self.serve(worklist, config=self.node_config(tmp))
        assoc = await self.connect(port, [MODALITY_WORKLIST_FIND])
        broken = b"\x08\x00\x10\x11\x04\x00\x00\x00\x01\x02\x03\x04"
        final = await within(assoc.find(broken, MODALITY_WORKLIST_FIND).result)
        self.assertEqual(final.status, 0xA900)  # Identifier does not match SOP Class
        self.assertIn("cannot decode the identifier", final.command["ErrorComment"])
        answered = await within(assoc.find(query(("PatientID", "")), MODALITY_WORKLIST_FIND).result)
        self.assertEqual(answered.status, 0x0000)  # the association goes on
        await within(assoc.release())

