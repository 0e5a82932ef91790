"""The archive index's put memo (``index._PutMemo``): skipped writes change nothing.

Every test runs the same operations on two indexes, one whose puts use the
memo and one whose puts do not (``put(..., memo=False)``), and compares every
table and view, row by row.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimsekit_plugins.archive import index

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def record(sop: str = "1.4.1", **values) -> index.InstanceRecord:
    base = dict(
        sop_instance_uid=sop, sop_class_uid=CT, series_instance_uid="1.3.1", study_instance_uid="1.2.1",
        transfer_syntax_uid=EXPLICIT, path=f"files/{sop}", size=100, received_at="2024-01-01T00:00:00",
        source_ae="MOD", specific_character_set="ISO_IR 100", instance_number=1, patient_id="P1",
        patient_name="Doe^J", patient_birth_date="19700101", patient_sex="M", study_date="20240101",
        study_time="1200", accession_number="A1", study_id="S1", referring_physician_name="Ref",
        study_description="Head", modality="CT", series_number=1, series_description="Axial",
        other_patient_ids=[{"patient_id": "O1", "issuer_of_patient_id": "X", "type_of_patient_id": None}],
        procedure_codes=[{"code_value": "C1", "coding_scheme_designator": "L", "coding_scheme_version": None,
                          "code_meaning": "CT head"}],
        request_attributes=[{"requested_procedure_id": "RP1", "scheduled_procedure_step_id": "SPS1",
                             "accession_number": "A1", "study_instance_uid": "1.2.1",
                             "requested_procedure_description": None,
                             "scheduled_procedure_step_description": None}],
    )
    base.update(values)
    return index.InstanceRecord(**base)


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Every table and view, rows sorted."""
    names = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') ORDER BY name")]
    return {name: sorted((tuple(row) for row in conn.execute(f"SELECT * FROM {name}")), key=repr) for name in names}


class Pair:
    """The same operations on an index whose puts use the memo and on one whose puts do not."""

    def __init__(self, folder: Path) -> None:
        self.paths = (str(folder / "memo.sqlite"), str(folder / "plain.sqlite"))
        self.conns = [index.connect(path) for path in self.paths]
        self.others: list[sqlite3.Connection] = []

    def put(self, r: index.InstanceRecord, *, memo: bool = True) -> list[str]:
        """Put ``r`` in both; the statements the first one ran."""
        outcomes: list[object] = []
        statements: list[str] = []
        for conn, use in zip(self.conns, (memo, False), strict=True):

            def action(conn=conn, use=use):
                try:
                    outcomes.append(index.put(conn, r, memo=use))
                except sqlite3.Error as exc:
                    outcomes.append(type(exc))

            if conn is self.conns[0]:
                statements = count_statements(conn, action)
            else:
                action()
        assert outcomes[0] == outcomes[1]
        return statements

    def each(self, function: Callable[[sqlite3.Connection], object]) -> None:
        """``function`` on both indexes' connections."""
        results = [function(conn) for conn in self.conns]
        assert results[0] == results[1]

    def other(self, sql: str) -> None:
        """``sql`` through another connection to each index."""
        if not self.others:
            self.others = [sqlite3.connect(path, isolation_level=None, timeout=5) for path in self.paths]
        for conn in self.others:
            conn.executescript(sql)

    def reopen(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns = [index.connect(path) for path in self.paths]

    def check(self) -> None:
        assert dump(self.conns[0]) == dump(self.conns[1])

    def close(self) -> None:
        for conn in self.conns + self.others:
            conn.close()


@pytest.fixture
def pair(tmp_path):
    p = Pair(tmp_path)
    yield p
    p.close()


def count_statements(conn: sqlite3.Connection, action: Callable[[], object]) -> list[str]:
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        action()
    finally:
        conn.set_trace_callback(None)
    return [" ".join(s.split()) for s in statements]


def parent_statements(statements: list[str]) -> list[str]:
    """The statements of the patient, study and series upserts and of the SELECTs that go with them."""
    return [s for s in statements if s.startswith((
        "INSERT INTO patient ", "INSERT INTO study ", "INSERT INTO series ",
        "SELECT patient_pk FROM study", "SELECT st.patient_pk", "SELECT study_instance_uid FROM series"))]


def item_statements(statements: list[str]) -> list[str]:
    tables = tuple(spec.table for spec in index.ITEM_TABLES)
    return [s for s in statements if any(f" {table} " in s or s.endswith(f" {table}") for table in tables)]


# -- it skips work ---------------------------------------------------------------------------------


def test_the_second_instance_of_a_series_writes_only_its_instance_row(tmp_path):
    conn = index.connect(str(tmp_path / "index.sqlite"))
    index.put(conn, record("1.4.1"))
    statements = count_statements(conn, lambda: index.put(conn, record("1.4.2", instance_number=2)))
    assert parent_statements(statements) == []
    assert item_statements(statements) == []
    assert [s.split(" (")[0] for s in statements if s.startswith("INSERT")] == ["INSERT INTO instance"]
    assert any(s.startswith("SELECT path, series_instance_uid FROM instance") for s in statements)
    # without the memo, all of it
    plain = count_statements(conn, lambda: index.put(conn, record("1.4.3", instance_number=3), memo=False))
    assert len(parent_statements(plain)) == 5
    assert len(item_statements(plain)) == 6  # DELETE + INSERT for each of the three sequences
    conn.close()


def test_a_new_series_of_the_same_study_writes_its_series_only(tmp_path):
    conn = index.connect(str(tmp_path / "index.sqlite"))
    index.put(conn, record("1.4.1"))
    statements = count_statements(conn, lambda: index.put(conn, record("1.4.2", series_instance_uid="1.3.2")))
    assert [s.split(" (")[0] for s in parent_statements(statements)] == [
        "SELECT study_instance_uid FROM series WHERE series_instance_uid = '1.3.2'", "INSERT INTO series"]
    # the series' items are its own: written; the patient's and the study's: the same, skipped
    assert [s.split(" WHERE")[0].split(" (")[0] for s in item_statements(statements)] == [
        "DELETE FROM series_request_attributes", "INSERT INTO series_request_attributes"]
    conn.close()


def test_changed_values_and_items_are_written(pair):
    pair.put(record("1.4.1"))
    pair.put(record("1.4.2", patient_name=None, study_description="Neck"))  # None: kept; changed: written
    pair.put(record("1.4.3", study_description=None, procedure_codes=[{"code_value": "C2"}], request_attributes=[]))
    pair.put(record("1.4.4", study_description=None, procedure_codes=None))
    pair.check()
    study = index.rows(pair.conns[0], "SELECT * FROM study")
    assert [s["study_description"] for s in study] == ["Neck"]
    assert index.rows(pair.conns[0], "SELECT code_value FROM study_procedure_code") == [{"code_value": "C2"}]


def test_values_equal_in_python_but_of_another_type_are_written(pair):
    pair.put(record("1.4.1", patient_name=1))
    pair.put(record("1.4.2", patient_name=1.0))  # 1 == 1.0, but the TEXT column gets '1.0'
    pair.check()
    assert index.rows(pair.conns[0], "SELECT patient_name FROM patient") == [{"patient_name": "1.0"}]


def test_a_connection_not_opened_by_connect_gets_no_memo(tmp_path):
    path = str(tmp_path / "index.sqlite")
    index.connect(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys=ON")
    index.put(conn, record("1.4.1"))
    statements = count_statements(conn, lambda: index.put(conn, record("1.4.2")))
    assert len(parent_statements(statements)) == 5
    conn.close()


# -- whatever else writes makes it forget ------------------------------------------------------------
#
# Each: the memo's put, something else writing, then a put with the same
# patient, study and series values, which would skip what it must not.


def test_delete_invalidates(pair):
    pair.put(record("1.4.1"))
    pair.each(lambda conn: index.delete(conn, ["1.4.1"]))  # prunes the series, study and patient
    pair.put(record("1.4.2"))
    pair.check()
    assert len(index.rows(pair.conns[0], "SELECT * FROM patient")) == 1


def test_delete_leaving_the_parents_invalidates_too(pair):
    pair.put(record("1.4.1"))
    pair.put(record("1.4.2"))
    pair.each(lambda conn: index.delete(conn, ["1.4.1"]))
    # the parents are as they were, but the memo cannot know that
    statements = pair.put(record("1.4.3"))
    assert len(parent_statements(statements)) == 5
    pair.put(record("1.4.4"))
    pair.check()


def test_a_put_without_the_memo_invalidates(pair):
    pair.put(record("1.4.1"))
    pair.put(record("1.4.2", patient_name="Other", procedure_codes=[{"code_value": "C9"}]), memo=False)
    pair.put(record("1.4.3"))  # Doe^J and C1 again: written again
    pair.check()
    assert index.rows(pair.conns[0], "SELECT patient_name FROM patient") == [{"patient_name": "Doe^J"}]
    assert index.rows(pair.conns[0], "SELECT code_value FROM study_procedure_code") == [{"code_value": "C1"}]


def test_pruning_by_a_put_moving_an_instance_keeps_the_memo_right(pair):
    pair.put(record("1.4.1"))
    # the instance moves to another patient's study: its series, study and patient are pruned
    pair.put(record("1.4.1", patient_id="P2", study_instance_uid="1.2.2", series_instance_uid="1.3.2",
                    path="files/1.4.1b"))
    pair.put(record("1.4.2"))  # the first patient, study and series again: all gone, written anew
    pair.check()
    assert len(index.rows(pair.conns[0], "SELECT * FROM patient")) == 2


def test_items_known_of_a_pruned_owner_are_forgotten_even_when_its_key_comes_back(pair):
    others = [{"patient_id": "O1", "issuer_of_patient_id": None, "type_of_patient_id": None}]
    pair.put(record("1.4.1", patient_id="B", other_patient_ids=None))  # pk 1
    pair.put(record("1.4.2", patient_id="A", study_instance_uid="1.2.2", series_instance_uid="1.3.2",
                    other_patient_ids=others))  # pk 2, with an item
    # the instance moves to B: A is pruned, and its items with it
    pair.put(record("1.4.2", patient_id="B", other_patient_ids=None, path="files/1.4.2b"))
    # a new patient gets pk 2 again, with the same item: it is not there any more, it is written
    pair.put(record("1.4.3", patient_id="C", study_instance_uid="1.2.3", series_instance_uid="1.3.3",
                    other_patient_ids=others))
    pair.check()
    assert index.rows(pair.conns[0], "SELECT patient_pk, patient_id FROM patient_other_id") == [
        {"patient_pk": 2, "patient_id": "O1"}]


def test_a_failed_put_rolled_back_invalidates(pair):
    pair.put(record("1.4.1"))
    pair.put(record("1.4.2", patient_name="Other", study_description="Other", sop_class_uid=None))  # NOT NULL
    assert pair.conns[0].put_memo is None
    pair.put(record("1.4.3"))
    pair.check()


def test_sql_on_the_same_connection_invalidates(pair):
    pair.put(record("1.4.1"))
    pair.each(lambda conn: conn.execute("UPDATE patient SET patient_name = 'Changed'").rowcount)
    pair.each(lambda conn: conn.execute("DELETE FROM study_procedure_code").rowcount)
    pair.put(record("1.4.2"))
    pair.check()
    assert index.rows(pair.conns[0], "SELECT patient_name FROM patient") == [{"patient_name": "Doe^J"}]
    assert len(index.rows(pair.conns[0], "SELECT * FROM study_procedure_code")) == 1


def test_a_write_through_another_connection_invalidates(pair):
    pair.put(record("1.4.1"))
    pair.other("DELETE FROM study_procedure_code; UPDATE series SET modality = 'MR';")
    pair.put(record("1.4.2"))
    pair.check()
    assert index.rows(pair.conns[0], "SELECT modality FROM series") == [{"modality": "CT"}]


def test_another_connect_writing_invalidates(pair):
    pair.put(record("1.4.1"))
    # as reconciliation from another archive object would: deletes, puts
    seconds = [index.connect(path) for path in pair.paths]
    for conn in seconds:
        index.delete(conn, ["1.4.1"])
        index.put(conn, record("1.4.9", patient_name="Second"), memo=False)
        conn.close()
    pair.put(record("1.4.2"))
    pair.check()
    assert index.rows(pair.conns[0], "SELECT patient_name FROM patient") == [{"patient_name": "Doe^J"}]


def test_reconnecting_starts_without_a_memo(pair):
    pair.put(record("1.4.1"))
    pair.reopen()
    assert pair.conns[0].put_memo is None
    statements = pair.put(record("1.4.2"))
    assert len(parent_statements(statements)) == 5


# -- a property: any sequence of puts and other writes --------------------------------------------

_PATIENTS = [("P1", ""), ("P1", "ISS"), ("P2", ""), ("", "")]
_STUDIES = ["1.2.1", "1.2.2", "1.2.3"]
_SERIES = ["1.3.1", "1.3.2", "1.3.3", "1.3.4"]
_SOPS = [f"1.4.{n}" for n in range(8)]
_TEXT = st.sampled_from([None, "a", "b"])


def _items(columns: list[str]):
    item = st.fixed_dictionaries({column: st.sampled_from([None, "x", "y"]) for column in columns})
    return st.one_of(st.none(), st.just([]), st.lists(item, min_size=1, max_size=2))


_FIELDS = {
    "sop_instance_uid": st.sampled_from(_SOPS),
    "series_instance_uid": st.sampled_from(_SERIES),
    "study_instance_uid": st.sampled_from(_STUDIES),
    "patient": st.sampled_from(_PATIENTS),
    "specific_character_set": st.sampled_from([None, "ISO_IR 100", "ISO_IR 192"]),
    "instance_number": st.sampled_from([None, 1, 2]),
    "series_number": st.sampled_from([None, 1, 2]),
    **{name: _TEXT for name in (
        "patient_name", "patient_birth_date", "patient_sex", "study_date", "study_time", "accession_number",
        "study_id", "referring_physician_name", "study_description", "modality", "series_description")},
    **{spec.field: _items([column for _, column in spec.attributes]) for spec in index.ITEM_TABLES},
}

_SQL = [
    "UPDATE patient SET patient_name = 'z'",
    "UPDATE study SET study_date = NULL",
    "UPDATE series SET modality = 'zz', series_number = 7",
    "DELETE FROM patient_other_id",
    "DELETE FROM study_procedure_code",
    "DELETE FROM series_request_attributes",
    "UPDATE study_procedure_code SET code_meaning = 'z'",
    # everything, children first (another connection has no ON DELETE CASCADE)
    "DELETE FROM patient_other_id; DELETE FROM study_procedure_code; DELETE FROM series_request_attributes; "
    "DELETE FROM instance; DELETE FROM series; DELETE FROM study; DELETE FROM patient;",
]


def _change(r: index.InstanceRecord, name: str, value) -> index.InstanceRecord:
    if name == "patient":
        return dataclasses.replace(r, patient_id=value[0], issuer_of_patient_id=value[1])
    return dataclasses.replace(r, **{name: value})


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_puts_and_writes_leave_the_same_tables_as_without_the_memo(tmp_path_factory, data):
    pair = Pair(tmp_path_factory.mktemp("memo"))
    last = record("1.4.0")
    try:
        for n in range(data.draw(st.integers(1, 30), label="steps")):
            kind = data.draw(st.sampled_from(
                ["same", "same", "same", "tweak", "tweak", "fresh", "plain put", "failed put",
                 "delete", "sql", "other sql", "reopen"]), label="kind")
            if kind in ("same", "tweak", "fresh", "plain put", "failed put"):
                r = dataclasses.replace(last, sop_instance_uid=data.draw(_FIELDS["sop_instance_uid"]))
                names = {"same": [], "tweak": data.draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=3)),
                         "fresh": sorted(_FIELDS)}.get(kind, [])
                for name in names:
                    r = _change(r, name, data.draw(_FIELDS[name], label=name))
                r = dataclasses.replace(r, path=f"files/{r.sop_instance_uid}/{n}", size=n)
                if kind == "failed put":
                    r = dataclasses.replace(r, sop_class_uid=None)
                pair.put(r, memo=kind != "plain put")
                if kind != "failed put":
                    last = r
            elif kind == "delete":
                uids = data.draw(st.lists(st.sampled_from(_SOPS), max_size=3), label="delete")
                pair.each(lambda conn, uids=uids: index.delete(conn, uids))
            elif kind == "sql":
                sql = data.draw(st.sampled_from(_SQL), label="sql")
                pair.each(lambda conn, sql=sql: conn.executescript(sql) and None)
            elif kind == "other sql":
                pair.other(data.draw(st.sampled_from(_SQL), label="other sql"))
            else:
                pair.reopen()
            pair.check()
    finally:
        pair.close()


# -- patients without a Patient ID -----------------------------------------------------------------


def study_patient(conn: sqlite3.Connection, study: str) -> tuple:
    return tuple(conn.execute(
        """SELECT p.patient_id, p.patient_name FROM study st JOIN patient p ON p.pk = st.patient_pk
            WHERE st.study_instance_uid = ?""", (study,)).fetchone())


def test_studies_without_a_patient_id_keep_their_own_patient(tmp_path):
    # Kept together under the empty Patient ID, both studies answered with the
    # name of the last one stored: a C-FIND gave a study another patient's name.
    conn = index.connect(str(tmp_path / "index.sqlite"))
    index.put(conn, record("1.4.1", study_instance_uid="1.2.1", series_instance_uid="1.3.1",
                           patient_id="", patient_name="Smith^A"))
    index.put(conn, record("1.4.2", study_instance_uid="1.2.2", series_instance_uid="1.3.2",
                           patient_id="", patient_name="Doe^B"))
    index.put(conn, record("1.4.3", study_instance_uid="1.2.1", series_instance_uid="1.3.1",
                           patient_id="", patient_name="Smith^A"))  # the first study again
    assert study_patient(conn, "1.2.1") == ("", "Smith^A")
    assert study_patient(conn, "1.2.2") == ("", "Doe^B")
    assert conn.execute("SELECT COUNT(*) FROM patient").fetchone()[0] == 2
    # one instance of the first study with an ID: the study goes to that patient
    index.put(conn, record("1.4.4", study_instance_uid="1.2.1", series_instance_uid="1.3.1",
                           patient_id="P9", patient_name="Smith^A"))
    assert study_patient(conn, "1.2.1") == ("P9", "Smith^A")
    assert conn.execute("SELECT COUNT(*) FROM patient").fetchone()[0] == 2  # the empty one pruned
    conn.close()


_V2_PATIENT = """CREATE TABLE patient (
    pk INTEGER PRIMARY KEY, patient_id TEXT NOT NULL, issuer_of_patient_id TEXT NOT NULL DEFAULT '',
    patient_name TEXT, patient_birth_date TEXT, patient_sex TEXT, specific_character_set TEXT,
    UNIQUE (patient_id, issuer_of_patient_id))"""


def test_a_version_2_index_is_upgraded_keeping_every_row_and_item(tmp_path):
    path = str(tmp_path / "index.sqlite")
    conn = index.connect(path)
    index.put(conn, record("1.4.1", patient_id="P1"))
    index.put(conn, record("1.4.2", study_instance_uid="1.2.2", series_instance_uid="1.3.2", patient_id=""))
    before = dump(conn)
    # what a version 2 index looks like: the patient table without study_of_unidentified
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.executescript(
        "BEGIN; CREATE TABLE old_patient AS SELECT pk, patient_id, issuer_of_patient_id, patient_name, "
        "patient_birth_date, patient_sex, specific_character_set FROM patient;"
        + "".join(f"DROP VIEW {name};" for name in ("patient_summary", "study_summary", "series_summary"))
        + "DROP TABLE patient;" + _V2_PATIENT + "; INSERT INTO patient SELECT * FROM old_patient;"
        "DROP TABLE old_patient; UPDATE meta SET value = '2' WHERE key = 'schema_version'; COMMIT;"
    )
    conn.close()
    conn = index.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "3"
    assert dump(conn) == before  # same rows, same pks, items kept, views back
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    index.put(conn, record("1.4.3", study_instance_uid="1.2.3", series_instance_uid="1.3.3",
                           patient_id="", patient_name="Other^C"))
    assert study_patient(conn, "1.2.3") == ("", "Other^C")
    assert study_patient(conn, "1.2.2") == ("", "Doe^J")
    conn.close()
    index.connect(path).close()  # opened again: nothing left to upgrade


def test_studies_merged_under_no_patient_id_by_version_2_come_apart_when_stored_again(tmp_path):
    path = str(tmp_path / "index.sqlite")
    conn = index.connect(path)
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.executescript(
        "BEGIN;" + "".join(f"DROP VIEW {name};" for name in ("patient_summary", "study_summary", "series_summary"))
        + "DROP TABLE patient;" + _V2_PATIENT + ";"
        "INSERT INTO patient VALUES (1, '', '', 'Doe^B', NULL, NULL, NULL);"
        "INSERT INTO study (study_instance_uid, patient_pk) VALUES ('1.2.1', 1), ('1.2.2', 1);"
        "UPDATE meta SET value = '2' WHERE key = 'schema_version'; COMMIT;"
    )
    conn.close()
    conn = index.connect(path)
    assert [tuple(r) for r in conn.execute("SELECT pk, study_of_unidentified FROM patient")] == [(1, "")]  # no split
    index.put(conn, record("1.4.1", study_instance_uid="1.2.1", series_instance_uid="1.3.1",
                           patient_id="", patient_name="Smith^A"))
    assert study_patient(conn, "1.2.1") == ("", "Smith^A")
    assert study_patient(conn, "1.2.2") == ("", "Doe^B")
    conn.close()
