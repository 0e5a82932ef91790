"""The archive's SQLite index: patient / study / series / instance.

Plain functions over a :class:`sqlite3.Connection`; the caller runs them in a
worker thread and serialises access (see :mod:`dimsekit_plugins.archive.store`).

What is kept is what Query/Retrieve matches on and returns (PS3.4 C.6.1.1 and
C.6.2.1, the required and unique keys of the patient root and study root
models, plus a few common optional ones), what retrieval needs (file path,
transfer syntax, SOP class), and where an instance came from.  Text values are
stored decoded (pydicom applies the instance's Specific Character Set), and
the Specific Character Set is stored beside them, so Q/R can match in Unicode
and answer in the character set the instance used.  Counts of related
series/instances and Modalities in Study are derived (the ``study_summary``
and ``series_summary`` views), never stored, so they cannot go stale.

Upserts keep an attribute already known when a later instance lacks it
(``COALESCE``) -- the patient's key too: an instance without Issuer of Patient
ID (or without Patient ID) of a study indexed already stays with the study's
patient, while a Patient ID that differs moves the study; rows left without
children are deleted, so the tables never hold an empty series, study or patient.

A few sequence attributes are kept too, one row per item in a table of their
own (:data:`ITEM_TABLES`), so that Q/R can match and return them in SQL
(PS3.4 C.2.2.2.6): Other Patient IDs Sequence (patient), Procedure Code
Sequence (study), Request Attributes Sequence (series).  Only the listed
attributes of each item are kept (nested sequences are not).  A later
instance carrying the sequence replaces the stored items; one without it (or
with it empty) keeps them, as ``COALESCE`` does for plain attributes.

Storing a series instance by instance repeats the same patient, study and
series values each time: :func:`put` remembers, per connection, what it last
wrote to those rows and skips the writes that would change nothing (see
:class:`_PutMemo`).

Schema versions: 1 had no item tables; :func:`connect` upgrades a version 1
index in place (the item tables are created empty: instances indexed before
get their items when they are stored again, or when the index is rebuilt from
the files by moving ``index.sqlite`` away and restarting).
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from dimsekit.datasets import is_several
from dimsekit.framing import Unframed, sequence_items
from dimsekit.sqlitedb import wal_mode

__all__ = [
    "SCHEMA_VERSION",
    "HEADER_KEYWORDS",
    "InstanceRecord",
    "connect",
    "header_values",
    "put",
    "put_many",
    "get",
    "delete",
    "all_paths",
    "rows",
    "ItemTable",
    "ITEM_TABLES",
]

SCHEMA_VERSION = 3

#: The data elements the index needs, read from each instance (before its pixel data).
HEADER_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "ReferringPhysicianName",
    "StudyDescription",
    "SeriesInstanceUID",
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "OtherPatientIDsSequence",
    "ProcedureCodeSequence",
    "RequestAttributesSequence",
)


@dataclass(frozen=True, slots=True)
class ItemTable:
    """Where the items of one sequence attribute are kept: one row per item.

    :param sequence: keyword of the sequence attribute.
    :param table: the SQL table.
    :param level: the table of the entity the sequence belongs to (``patient``,
        ``study`` or ``series``).
    :param owner: the column holding the owner's key (``patient_pk``,
        ``study_instance_uid``, ``series_instance_uid``: the owner table's
        primary key column has the same name, ``pk`` for the patient).
    :param field: the :class:`InstanceRecord` field carrying the items.
    :param attributes: (item attribute keyword, column) of what is kept of
        each item; every column is TEXT, as decoded by pydicom.
    """

    sequence: str
    table: str
    level: str
    owner: str
    field: str
    attributes: tuple[tuple[str, str], ...]

    @property
    def owner_key(self) -> str:
        """The owner table's primary key column."""
        return "pk" if self.level == "patient" else self.owner


#: The sequence attributes kept item by item (see the module docstring).
ITEM_TABLES: tuple[ItemTable, ...] = (
    ItemTable(
        "OtherPatientIDsSequence", "patient_other_id", "patient", "patient_pk", "other_patient_ids",
        (("PatientID", "patient_id"), ("IssuerOfPatientID", "issuer_of_patient_id"),
         ("TypeOfPatientID", "type_of_patient_id")),
    ),
    ItemTable(
        "ProcedureCodeSequence", "study_procedure_code", "study", "study_instance_uid", "procedure_codes",
        (("CodeValue", "code_value"), ("CodingSchemeDesignator", "coding_scheme_designator"),
         ("CodingSchemeVersion", "coding_scheme_version"), ("CodeMeaning", "code_meaning")),
    ),
    ItemTable(
        "RequestAttributesSequence", "series_request_attributes", "series", "series_instance_uid",
        "request_attributes",
        (("RequestedProcedureID", "requested_procedure_id"),
         ("ScheduledProcedureStepID", "scheduled_procedure_step_id"),
         ("AccessionNumber", "accession_number"),
         ("StudyInstanceUID", "study_instance_uid"),
         ("RequestedProcedureDescription", "requested_procedure_description"),
         ("ScheduledProcedureStepDescription", "scheduled_procedure_step_description")),
    ),
)


def _item_schema(spec: ItemTable) -> str:
    owner_type = "INTEGER" if spec.level == "patient" else "TEXT"
    columns = "".join(f"    {column} TEXT,\n" for _, column in spec.attributes)
    return (
        f"CREATE TABLE IF NOT EXISTS {spec.table} (\n"
        f"    {spec.owner} {owner_type} NOT NULL REFERENCES {spec.level} ({spec.owner_key}) ON DELETE CASCADE,\n"
        f"    item INTEGER NOT NULL,\n{columns}"
        f"    PRIMARY KEY ({spec.owner}, item)\n);\n"
    )

#: the patient table's columns; a patient without Patient ID (nor Issuer) is
#: one per study, ``study_of_unidentified`` holding that study's UID ("" otherwise)
_PATIENT_COLUMNS = """(
    pk INTEGER PRIMARY KEY,
    patient_id TEXT NOT NULL,
    issuer_of_patient_id TEXT NOT NULL DEFAULT '',
    patient_name TEXT,
    patient_birth_date TEXT,
    patient_sex TEXT,
    specific_character_set TEXT,
    study_of_unidentified TEXT NOT NULL DEFAULT '',
    UNIQUE (patient_id, issuer_of_patient_id, study_of_unidentified)
)"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS patient """ + _PATIENT_COLUMNS + """;
CREATE TABLE IF NOT EXISTS study (
    study_instance_uid TEXT PRIMARY KEY,
    patient_pk INTEGER NOT NULL REFERENCES patient (pk),
    study_date TEXT,
    study_time TEXT,
    accession_number TEXT,
    study_id TEXT,
    referring_physician_name TEXT,
    study_description TEXT,
    specific_character_set TEXT
);
CREATE INDEX IF NOT EXISTS study_patient ON study (patient_pk);
CREATE INDEX IF NOT EXISTS study_date ON study (study_date);
CREATE INDEX IF NOT EXISTS study_accession ON study (accession_number);
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL REFERENCES study (study_instance_uid),
    modality TEXT,
    series_number INTEGER,
    series_description TEXT,
    specific_character_set TEXT
);
CREATE INDEX IF NOT EXISTS series_study ON series (study_instance_uid);
CREATE TABLE IF NOT EXISTS instance (
    sop_instance_uid TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL REFERENCES series (series_instance_uid),
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    received_at TEXT NOT NULL,
    source_ae TEXT,
    specific_character_set TEXT
);
CREATE INDEX IF NOT EXISTS instance_series ON instance (series_instance_uid);
CREATE VIEW IF NOT EXISTS series_summary AS
    SELECT se.*,
           (SELECT COUNT(*) FROM instance i
             WHERE i.series_instance_uid = se.series_instance_uid)
               AS number_of_series_related_instances
      FROM series se;
CREATE VIEW IF NOT EXISTS study_summary AS
    SELECT st.*,
           (SELECT COUNT(*) FROM series se
             WHERE se.study_instance_uid = st.study_instance_uid)
               AS number_of_study_related_series,
           (SELECT COUNT(*) FROM instance i JOIN series se USING (series_instance_uid)
             WHERE se.study_instance_uid = st.study_instance_uid)
               AS number_of_study_related_instances,
           (SELECT group_concat(modality, '\\') FROM
               (SELECT DISTINCT modality FROM series se
                 WHERE se.study_instance_uid = st.study_instance_uid
                   AND modality IS NOT NULL AND modality != ''
                 ORDER BY modality))
               AS modalities_in_study
      FROM study st;
CREATE VIEW IF NOT EXISTS patient_summary AS
    SELECT p.*,
           (SELECT COUNT(*) FROM study st WHERE st.patient_pk = p.pk)
               AS number_of_patient_related_studies,
           (SELECT COUNT(*) FROM series se JOIN study st USING (study_instance_uid)
             WHERE st.patient_pk = p.pk)
               AS number_of_patient_related_series,
           (SELECT COUNT(*) FROM instance i JOIN series se USING (series_instance_uid)
                                            JOIN study st USING (study_instance_uid)
             WHERE st.patient_pk = p.pk)
               AS number_of_patient_related_instances
      FROM patient p;
""" + "".join(_item_schema(spec) for spec in ITEM_TABLES)

#: Item rows: None (sequence absent: keep what is stored) or one {column: value} per item.
Items = list[dict[str, str | None]] | None


@dataclass(slots=True, kw_only=True)
class InstanceRecord:
    """One instance as the index holds it (patient, study and series attributes included)."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    transfer_syntax_uid: str
    path: str  #: relative to the data directory, POSIX separators
    size: int
    received_at: str
    source_ae: str | None = None
    specific_character_set: str | None = None
    instance_number: int | None = None
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    referring_physician_name: str | None = None
    study_description: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    #: items of the sequences of :data:`ITEM_TABLES` (``get`` leaves them None: not loaded)
    other_patient_ids: Items = None
    procedure_codes: Items = None
    request_attributes: Items = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_RECORD_FIELDS = {f.name for f in fields(InstanceRecord)}


class _Connection(sqlite3.Connection):
    """The connections :func:`connect` opens: they carry :func:`put`'s memo."""

    put_memo: _PutMemo | None = None


@dataclass(slots=True)
class _PutMemo:
    """What the last :func:`put` on a connection left in the patient, study,
    series and item tables, so that the next one can skip what would change nothing.

    A series arrives instance by instance, each carrying the same patient,
    study and series attributes: the upserts of those rows would write again
    the values already there.  Such an upsert is a no-op when its parameters
    are exactly those of the previous put on the same connection *and nothing
    else has written the database since*: the previous put left the row
    holding them (``COALESCE(excluded.x, x)`` applied twice gives what it gave
    once; the owner keys -- the study's patient, the series' study -- are
    among the parameters), and the row was not removed (a put never prunes
    its own patient, study or series).  The SELECTs that only serve the
    pruning of the study's old patient and the series' old study go with
    them: they would find the same owner.  The same holds for the items of a
    sequence: stored again as the same rows for the same owner, they are
    skipped.  The instance row, the SELECT of the instance as it was, the
    pruning of its old series, and anything that differs are always written.

    "Nothing else has written" is not left to the other writers to declare
    (every present and future function of this module, any SQL run on the
    connection, another connection, another process): it is read from SQLite
    itself, inside the put's write transaction (``BEGIN IMMEDIATE``: nobody
    can write between the check and the put's own statements):

    * ``changes`` -- ``Connection.total_changes`` after the previous put's
      last statement.  It counts every row any INSERT, UPDATE or DELETE on
      the connection changed (including those rolled back), so any other
      write through the connection since -- :func:`delete`, the prunes,
      reconciliation, a test's own SQL -- makes it differ;
    * ``data_version`` -- ``PRAGMA data_version`` in the previous put's
      transaction.  It changes when another connection, in this process or
      another, commits to the database (the archive's exclusive lock on its
      data directory, ``Archive._lock_root``, means no other process should,
      but tests and tools do open the index beside the archive).  ~1 us.

    So a memo is never used stale: the skipped statements are no-ops, not a
    bet on it.  Not detected: schema changes made through the same connection
    (only :func:`connect` makes any, before it returns the connection).
    What is known of the items is kept for the put's own owners only (a put
    never prunes them; an owner pruned later may see its key, a patient's
    pk, given to another).

    The memo is taken off the connection when a put starts and set again only
    once its transaction has committed, so a put that fails (rolled back)
    leaves none.  It lives on the connection object (:class:`_Connection`),
    so it goes with it; connections not opened by :func:`connect` get none.
    """

    changes: int
    data_version: int
    patient: tuple[Any, ...]  #: the parameters of the patient upsert
    patient_pk: int
    study: tuple[Any, ...]  #: the parameters of the study upsert (with the patient's pk)
    series: tuple[Any, ...]  #: the parameters of the series upsert
    #: item table -> the rows stored for the current owner, as :func:`_put_items` inserted them
    items: dict[str, tuple[tuple[Any, ...], ...]]


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Equal parameters, value by value of the same type (``1 == 1.0 == True``, but SQLite may store them apart)."""
    return a == b and all(type(x) is type(y) for x, y in zip(a, b, strict=True))


#: seconds a statement waits for another connection's lock (SQLite's busy timeout)
CONNECT_TIMEOUT = 30.0


def connect(path: str) -> sqlite3.Connection:
    """Open (creating if needed) the index at ``path``: WAL mode, schema in place.

    The connection may be used from any one thread at a time (the caller locks).
    ``synchronous=NORMAL`` is enough: the files are the truth and are fsynced
    before anything is indexed; an index transaction lost in a crash leaves a
    file without a row, which :meth:`Archive.reconcile` indexes again.
    """
    conn = sqlite3.connect(
        path, check_same_thread=False, isolation_level=None, timeout=CONNECT_TIMEOUT, factory=_Connection
    )
    conn.row_factory = sqlite3.Row
    wal_mode(conn, CONNECT_TIMEOUT)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS); executescript commits on its own
    upgrade = False
    with _transaction(conn):
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) in (1, 2):
            # 1 -> 2: only the item tables were added (created above by the script);
            # 2 -> 3: patients without a Patient ID are kept apart, one per study
            upgrade = True
        elif int(row[0]) != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"index schema version {row[0]} is not {SCHEMA_VERSION}; "
                "move index.sqlite away and restart to rebuild it from the files (worklist items "
                "kept in it are not in the files: save them first with dimsekit worklist list --json)"
            )
    if upgrade:
        _patients_apart(conn)
    return conn


def _patients_apart(conn: sqlite3.Connection) -> None:
    """Schema 3: the patient table gets ``study_of_unidentified`` and its key
    becomes (Patient ID, Issuer, that).  SQLite changes a table's UNIQUE only by
    copying the table; the rows keep their pk, so studies and items still point
    at them.  A patient without ID with one study becomes that study's; one
    with several (merged under the empty Patient ID before: their studies' own
    names are not in the index) stays so until its studies are stored again
    or the index is rebuilt from the files."""
    # Foreign keys off (outside a transaction, or the pragma does nothing): with
    # them on, dropping the old table would delete its rows first, and with them
    # the patient-level items (ON DELETE CASCADE).
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
        with _transaction(conn):
            _copy_patients(conn)
        problems = conn.execute("PRAGMA foreign_key_check").fetchall()
        if problems:  # pragma: no cover - the copy keeps every pk
            raise sqlite3.DatabaseError(f"index upgrade left {len(problems)} dangling reference(s)")
    finally:
        conn.execute("PRAGMA foreign_keys=ON")


def _copy_patients(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if int(version) == SCHEMA_VERSION:
        return  # another process upgraded it meanwhile
    columns = [row[1] for row in conn.execute("PRAGMA table_info(patient)")]
    if "study_of_unidentified" not in columns:
        _rebuild_patient_table(conn)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


def _rebuild_patient_table(conn: sqlite3.Connection) -> None:
    views = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'view'").fetchall()
    for name, _sql in views:  # a view on the table would stop its rename
        conn.execute(f'DROP VIEW "{name}"')
    conn.execute(f"CREATE TABLE patient_v3 {_PATIENT_COLUMNS}")
    conn.execute(
        """INSERT INTO patient_v3 (pk, patient_id, issuer_of_patient_id, patient_name, patient_birth_date,
                                   patient_sex, specific_character_set)
           SELECT pk, patient_id, issuer_of_patient_id, patient_name, patient_birth_date,
                  patient_sex, specific_character_set FROM patient"""
    )
    conn.execute("DROP TABLE patient")
    conn.execute("ALTER TABLE patient_v3 RENAME TO patient")
    # a patient without ID that has one study is that study's
    conn.execute(
        """UPDATE patient SET study_of_unidentified =
               (SELECT study_instance_uid FROM study WHERE patient_pk = patient.pk)
            WHERE patient_id = '' AND issuer_of_patient_id = ''
              AND (SELECT COUNT(*) FROM study WHERE patient_pk = patient.pk) = 1"""
    )
    for _name, sql in views:
        conn.execute(sql)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        # Inside another (put_many's): part of it, committed or rolled back with it.
        self.nested = self.conn.in_transaction
        if not self.nested:
            self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: object, value: object, tb: object) -> None:
        if self.nested:
            return
        if kind is None:
            try:
                self.conn.execute("COMMIT")
                return
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                _forget_memo(self.conn)
                raise
        self.conn.execute("ROLLBACK")
        _forget_memo(self.conn)


def _forget_memo(conn: sqlite3.Connection) -> None:
    """After a rollback: what a put of the transaction remembered was never committed."""
    if isinstance(conn, _Connection):
        conn.put_memo = None


# -- reading attributes from a data set ------------------------------------------------------


def _text(dataset: Dataset, keyword: str) -> str | None:
    try:
        value = dataset.get(keyword)
    except Exception:  # a value pydicom cannot convert
        return None
    if value is None or value == "":
        return None
    if is_several(value):
        return "\\".join(str(v) for v in value) or None
    if isinstance(value, bytes):
        return value.decode("latin-1").strip() or None
    return str(value).strip() or None


#: what an SQLite INTEGER holds (a signed 64-bit integer)
_SQLITE_INTEGER = range(-(1 << 63), 1 << 63)


def _to_integer(text: str) -> int | None:
    """The first value of an IS as an integer; None when it is not one or does not fit
    an SQLite INTEGER (PS3.5 allows IS values of 32 bits: a larger one is not indexed)."""
    try:
        value = int(float(text.split("\\")[0]))
    except (ValueError, OverflowError):  # not a number; inf
        return None
    return value if value in _SQLITE_INTEGER else None


_CHARSET_TAG = 0x00080005
#: (spec, its sequence's tag) of each of ITEM_TABLES
_ITEM_TAGS = tuple((spec, int(tag_for_keyword(spec.sequence))) for spec in ITEM_TABLES)  # type: ignore[arg-type]


def _items(dataset: Dataset, spec: ItemTable) -> Items:
    """The kept attributes of each item of a sequence; None when it is absent, empty or unreadable.

    Items holding none of the kept attributes are left out.
    """
    try:
        sequence = dataset.get(spec.sequence)
        if not sequence or not isinstance(sequence, Sequence):
            return None
        items = []
        for item in sequence:
            if not isinstance(item, Dataset):
                continue
            values = {column: _text(item, keyword) for keyword, column in spec.attributes}
            if any(value is not None for value in values.values()):
                items.append(values)
    except Exception:  # a sequence pydicom cannot parse: as if absent
        return None
    return items or None


# The plain attributes as (field, keyword); sequences are in ITEM_TABLES.
_PLAIN_FIELDS = (
    ("sop_class_uid", "SOPClassUID"),
    ("sop_instance_uid", "SOPInstanceUID"),
    ("instance_number", "InstanceNumber"),
    ("patient_id", "PatientID"),
    ("issuer_of_patient_id", "IssuerOfPatientID"),
    ("patient_name", "PatientName"),
    ("patient_birth_date", "PatientBirthDate"),
    ("patient_sex", "PatientSex"),
    ("study_instance_uid", "StudyInstanceUID"),
    ("study_date", "StudyDate"),
    ("study_time", "StudyTime"),
    ("accession_number", "AccessionNumber"),
    ("study_id", "StudyID"),
    ("referring_physician_name", "ReferringPhysicianName"),
    ("study_description", "StudyDescription"),
    ("series_instance_uid", "SeriesInstanceUID"),
    ("modality", "Modality"),
    ("series_number", "SeriesNumber"),
    ("series_description", "SeriesDescription"),
)
_INTEGER_FIELDS = frozenset(("instance_number", "series_number"))
_KEYED_FIELDS = frozenset(("patient_id", "issuer_of_patient_id"))  # "" rather than None
_DATE_FIELDS = frozenset(("study_date", "patient_birth_date"))
_TIME_FIELDS = frozenset(("study_time",))
# The forms of ACR-NEMA 300, which PS3.5 (Table 6.2-1, DA and TM) long recommended
# supporting and devices still send: YYYY.MM.DD and HH:MM:SS.frac (or HH:MM).
_OLD_DATE = re.compile(r"[0-9]{4}\.[0-9]{2}\.[0-9]{2}\Z")
_OLD_TIME = re.compile(r"[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?\Z")


def _current_form(value: str, old_form: re.Pattern[str], separator: str) -> str:
    """A DA or TM value in the old ACR-NEMA form made ``YYYYMMDD`` / ``HHMMSS.frac``
    (Q/R compares dates as ``YYYYMMDD`` strings); any other value as it is."""
    return value.replace(separator, "") if old_form.match(value) else value


#: per item table, (column, tag, VR) of each kept attribute
_ITEM_ATTRIBUTES = {
    spec.table: tuple((column, int(tag_for_keyword(keyword)), dictionary_VR(keyword))  # type: ignore[arg-type]
                      for keyword, column in spec.attributes)
    for spec in ITEM_TABLES
}


def _raw_items(raw: RawDataElement, spec: ItemTable, codec: str | None) -> Items:
    """What :func:`_items` makes of a sequence still raw (the archive's header scan leaves the
    sequences the index reads so), from its items' bytes without pydicom's reader; :class:`_Slow`
    for anything it does not read exactly as pydicom would (an item with its own character set,
    a VR other than the dictionary's, a value the fast path does not decode)."""
    if codec is None or raw.VR not in (None, "SQ"):
        raise _Slow
    implicit = raw.is_implicit_VR
    value = raw.value
    try:
        items = sequence_items(value, implicit)
    except Unframed:
        raise _Slow from None
    if not items:
        return None
    out = []
    for elements in items:
        by_tag = {tag: (vr, length, start) for tag, vr, length, start in elements}
        if _CHARSET_TAG in by_tag:
            raise _Slow
        values = {}
        for column, tag, vr in _ITEM_ATTRIBUTES[spec.table]:
            found = by_tag.get(tag)
            if found is None:
                values[column] = None
                continue
            element_vr, length, start = found
            values[column] = _raw_text(
                RawDataElement(BaseTag(tag), None if element_vr is None else element_vr.decode("ascii"), length,
                               bytes(value[start:start + length]), start, implicit, True),
                vr, codec,
            )
        if any(v is not None for v in values.values()):
            out.append(values)
    return out or None


# Specific Character Sets whose text the fast path decodes with a Python codec,
# as pydicom does for them; any other (code extensions, multi-byte, ...) goes
# through pydicom.
_FAST_CHARSETS = {None: "latin_1", "ISO_IR 6": "latin_1", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8"}
# VRs the fast path reads, by the conversion pydicom applies to them.
_ASCII_VRS = frozenset(("CS", "DA", "TM", "AS"))  # decoded as ISO 8859-1 whatever the charset
_TEXT_VRS = frozenset(("LO", "SH"))  # in the data set's character set, each value right-stripped
_DIGITS = frozenset(b"0123456789")


#: (field, keyword, tag, VR) of each plain attribute
_PLAIN_TAGS = tuple(
    (field_name, keyword, int(tag_for_keyword(keyword)), dictionary_VR(keyword))  # type: ignore[arg-type]
    for field_name, keyword in _PLAIN_FIELDS
)


class _Slow(Exception):
    """The fast path cannot vouch for a value: pydicom converts it."""


def _raw_text(raw: Any, vr: str, codec: str | None) -> str | None:
    """What :func:`_text` makes of a raw element, decoded without pydicom's conversion.

    Raises :class:`_Slow` for whatever it does not decode exactly as pydicom
    would (another VR, a character set needing pydicom, undecodable bytes, a
    person name with several component groups, an IS that is not plainly an integer).
    """
    if raw.VR is not None and raw.VR != vr or raw.length == 0xFFFFFFFF:
        raise _Slow
    value = raw.value
    if not value:
        return None
    try:
        if vr == "UI":  # pydicom's UID strips each value
            items = [item.strip() for item in value.decode("latin_1").rstrip("\0 ").split("\\")]
        elif vr in _ASCII_VRS:
            items = value.decode("latin_1").rstrip("\0 ").split("\\")
        elif vr in _TEXT_VRS:
            if codec is None or 0x1B in value:
                raise _Slow
            items = [item.rstrip("\0 ") for item in value.decode(codec).split("\\")]
        elif vr == "PN":
            if codec is None or 0x1B in value or 0x3D in value:  # "=": component groups
                raise _Slow
            items = value.rstrip(b"\0 ").decode(codec).split("\\")
        elif vr == "IS":
            text = value.rstrip(b"\0 ").lstrip(b" ")
            if not text or not _DIGITS.issuperset(text.lstrip(b"+-")) or len(text) - len(text.lstrip(b"+-")) > 1:
                raise _Slow
            return text.decode("ascii")
        else:
            raise _Slow
    except UnicodeDecodeError:
        raise _Slow from None
    if len(items) == 1:
        return items[0].strip() or None
    return "\\".join(items) or None


def header_values(
    dataset: Dataset | None, *, fast: bool = True, elements: Mapping[int, Any] | None = None
) -> dict[str, Any]:
    """The index attributes of a data set, by :class:`InstanceRecord` field name.

    Missing or unreadable values are None (``patient_id`` and
    ``issuer_of_patient_id``: the empty string, as patients are keyed on them);
    the items of the sequences of :data:`ITEM_TABLES` are lists of dicts.

    Elements still raw (as pydicom's readers leave them until asked for) are
    decoded here when their VR and character set allow it -- to the same
    values pydicom's conversion gives (a property test compares them with
    ``fast=False``, where pydicom converts every value) in a fraction of its
    time, which was most of the cost of reading a small instance's header;
    anything else is converted by pydicom.

    ``elements``: the data set's elements by tag (an int), when the caller
    has them rather than a data set (the archive's header scan): looked up
    there, not through pydicom's ``Dataset.get_item`` (which makes a pydicom
    tag of every key first), and made a pydicom ``Dataset`` only for a value
    pydicom has to convert.
    """
    if dataset is None and elements is None:
        raise TypeError("header_values() needs a data set or its elements")
    get_item = dataset.get_item if dataset is not None else elements.get  # type: ignore[union-attr]
    # the data set pydicom converts a value in, made from the elements only if one needs it
    full = functools.cache(lambda: dataset if dataset is not None else Dataset(
        {BaseTag(tag): element for tag, element in elements.items()}  # type: ignore[union-attr]
    ))
    charset_raw = get_item(_CHARSET_TAG)  # pydicom's readers convert it as they read
    if fast and isinstance(charset_raw, RawDataElement):
        try:
            charset_text = _raw_text(charset_raw, "CS", None)
        except _Slow:
            charset_text = _text(full(), "SpecificCharacterSet")
    else:
        charset_text = None if charset_raw is None else _text(full(), "SpecificCharacterSet")
    codec = _FAST_CHARSETS.get(charset_text)
    values: dict[str, Any] = {}
    for field_name, keyword, tag, vr in _PLAIN_TAGS:
        raw = get_item(tag)
        if raw is None:
            value = None
        elif fast and isinstance(raw, RawDataElement):
            try:
                value = _raw_text(raw, vr, codec)
            except _Slow:
                value = _text(full(), keyword)
        else:
            value = _text(full(), keyword)
        if value is not None and field_name in _INTEGER_FIELDS:
            value = _to_integer(value)
        elif value is not None and field_name in _DATE_FIELDS:
            value = _current_form(value, _OLD_DATE, ".")
        elif value is not None and field_name in _TIME_FIELDS:
            value = _current_form(value, _OLD_TIME, ":")
        elif value is None and field_name in _KEYED_FIELDS:
            value = ""
        values[field_name] = value
    for spec, sequence_tag in _ITEM_TAGS:
        raw = get_item(sequence_tag)
        if raw is None:
            values[spec.field] = None
        elif fast and isinstance(raw, RawDataElement):
            try:
                values[spec.field] = _raw_items(raw, spec, codec)
            except _Slow:
                values[spec.field] = _items(full(), spec)
        else:
            values[spec.field] = _items(full(), spec)
    values["specific_character_set"] = charset_text or None
    return values


# -- writing ------------------------------------------------------------------------------------


def put(conn: sqlite3.Connection, record: InstanceRecord, *, memo: bool = True) -> str | None:
    """Insert or replace an instance (and upsert its patient, study, series).

    Writes that would change nothing, as the previous put on the same
    connection wrote them, are skipped (see :class:`_PutMemo`); ``memo=False``
    writes everything (the tests' reference).

    :returns: the path the instance had before, if it was indexed already
        (the caller deletes that file when it differs from the new one).
    """
    r = record
    last: _PutMemo | None = None
    now: _PutMemo | None = None
    remember = False
    if isinstance(conn, _Connection):
        last, conn.put_memo = conn.put_memo, None
        remember = memo
    series_values = (r.series_instance_uid, r.study_instance_uid, r.modality, r.series_number, r.series_description,
                     r.specific_character_set)
    with _transaction(conn):
        if remember:
            (data_version,) = conn.execute("PRAGMA data_version").fetchone()
            if last is not None and (last.changes != conn.total_changes or last.data_version != data_version):
                last = None  # something else wrote: nothing is known
        else:
            last = None
        previous = conn.execute(
            "SELECT path, series_instance_uid FROM instance WHERE sop_instance_uid = ?", (r.sop_instance_uid,)
        ).fetchone()
        # The study's patient as indexed, (pk, Patient ID, Issuer) or None, once looked up.
        owner: tuple[Any, ...] | None = None
        looked_up = False
        patient_id, issuer, unidentified = r.patient_id, r.issuer_of_patient_id, ""
        if not issuer:
            # An instance lacking Issuer of Patient ID (or Patient ID and Issuer) in a study
            # indexed already stays with the study's patient when that has the same Patient
            # ID (or the instance has none): an attribute it lacks is unknown, not different
            # -- as for the other attributes (COALESCE).  It would otherwise move the whole
            # study to another patient, the one of all instances without a Patient ID.
            if last is not None and last.study[0] == r.study_instance_uid:
                known = (last.patient_pk, *last.patient[:3])
            else:
                owner = known = conn.execute(
                    """SELECT st.patient_pk, p.patient_id, p.issuer_of_patient_id, p.study_of_unidentified
                         FROM study st JOIN patient p ON p.pk = st.patient_pk
                        WHERE st.study_instance_uid = ?""",
                    (r.study_instance_uid,),
                ).fetchone()
                looked_up = True
            if known is not None and (not patient_id or patient_id == known[1]):
                patient_id, issuer, unidentified = known[1], known[2], known[3]
        if not patient_id and not issuer:
            # No Patient ID: nothing says two studies are one patient's.  Kept
            # together under the empty ID, every such study would answer with
            # the name of the last one stored (a C-FIND giving a study another
            # patient's name): such a patient is one per study.
            unidentified = r.study_instance_uid
        patient_values = (patient_id, issuer, unidentified, r.patient_name, r.patient_birth_date, r.patient_sex,
                          r.specific_character_set)
        if last is not None and _same(last.patient, patient_values):
            patient_pk = last.patient_pk
        else:
            (patient_pk,) = conn.execute(
                """INSERT INTO patient (patient_id, issuer_of_patient_id, study_of_unidentified, patient_name,
                                        patient_birth_date, patient_sex, specific_character_set)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (patient_id, issuer_of_patient_id, study_of_unidentified) DO UPDATE SET
                       patient_name = COALESCE(excluded.patient_name, patient_name),
                       patient_birth_date = COALESCE(excluded.patient_birth_date, patient_birth_date),
                       patient_sex = COALESCE(excluded.patient_sex, patient_sex),
                       specific_character_set = COALESCE(excluded.specific_character_set, specific_character_set)
                   RETURNING pk""",
                patient_values,
            ).fetchone()
        study_values = (r.study_instance_uid, patient_pk, r.study_date, r.study_time, r.accession_number, r.study_id,
                        r.referring_physician_name, r.study_description, r.specific_character_set)
        old_patient = None
        if last is None or not _same(last.study, study_values):
            old_patient = owner if looked_up else conn.execute(
                "SELECT patient_pk FROM study WHERE study_instance_uid = ?", (r.study_instance_uid,)
            ).fetchone()
            conn.execute(
                """INSERT INTO study (study_instance_uid, patient_pk, study_date, study_time, accession_number,
                                      study_id, referring_physician_name, study_description, specific_character_set)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (study_instance_uid) DO UPDATE SET
                       patient_pk = excluded.patient_pk,
                       study_date = COALESCE(excluded.study_date, study_date),
                       study_time = COALESCE(excluded.study_time, study_time),
                       accession_number = COALESCE(excluded.accession_number, accession_number),
                       study_id = COALESCE(excluded.study_id, study_id),
                       referring_physician_name = COALESCE(excluded.referring_physician_name,
                                                           referring_physician_name),
                       study_description = COALESCE(excluded.study_description, study_description),
                       specific_character_set = COALESCE(excluded.specific_character_set, specific_character_set)""",
                study_values,
            )
        old_study = None
        if last is None or not _same(last.series, series_values):
            old_study = conn.execute(
                "SELECT study_instance_uid FROM series WHERE series_instance_uid = ?", (r.series_instance_uid,)
            ).fetchone()
            conn.execute(
                """INSERT INTO series (series_instance_uid, study_instance_uid, modality, series_number,
                                       series_description, specific_character_set)
                   VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (series_instance_uid) DO UPDATE SET
                       study_instance_uid = excluded.study_instance_uid,
                       modality = COALESCE(excluded.modality, modality),
                       series_number = COALESCE(excluded.series_number, series_number),
                       series_description = COALESCE(excluded.series_description, series_description),
                       specific_character_set = COALESCE(excluded.specific_character_set, specific_character_set)""",
                series_values,
            )
        conn.execute(
            """INSERT INTO instance (sop_instance_uid, series_instance_uid, sop_class_uid, instance_number,
                                     transfer_syntax_uid, path, size, received_at, source_ae, specific_character_set)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (sop_instance_uid) DO UPDATE SET
                   series_instance_uid = excluded.series_instance_uid,
                   sop_class_uid = excluded.sop_class_uid,
                   instance_number = excluded.instance_number,
                   transfer_syntax_uid = excluded.transfer_syntax_uid,
                   path = excluded.path,
                   size = excluded.size,
                   received_at = excluded.received_at,
                   source_ae = excluded.source_ae,
                   specific_character_set = excluded.specific_character_set""",
            (r.sop_instance_uid, r.series_instance_uid, r.sop_class_uid, r.instance_number,
             r.transfer_syntax_uid, r.path, r.size, r.received_at, r.source_ae, r.specific_character_set),
        )
        owners = {"patient": patient_pk, "study": r.study_instance_uid, "series": r.series_instance_uid}
        known = last.items if last is not None else {}
        stored: dict[str, tuple[tuple[Any, ...], ...]] = {}
        for spec in ITEM_TABLES:
            owner = owners[spec.level]
            items = getattr(r, spec.field)
            if items:
                item_rows = _item_rows(spec, owner, items)
                was = known.get(spec.table)
                if was is None or len(was) != len(item_rows) or not all(map(_same, was, item_rows)):
                    _put_items(conn, spec, owner, item_rows)
                stored[spec.table] = item_rows
            else:  # kept as they are: still known if they are the current owner's (the
                # rows of an owner pruned since are gone, and its key may come back: forget them)
                was = known.get(spec.table)
                if was is not None and was[0][0] == owner:
                    stored[spec.table] = was
        if previous is not None and previous["series_instance_uid"] != r.series_instance_uid:
            _prune_series(conn, previous["series_instance_uid"])
        if old_study is not None and old_study[0] != r.study_instance_uid:
            _prune_study(conn, old_study[0])
        if old_patient is not None and old_patient[0] != patient_pk:
            _prune_patient(conn, old_patient[0])
        if remember:
            now = _PutMemo(conn.total_changes, data_version, patient_values, patient_pk, study_values, series_values,
                           stored)
    if now is not None:
        conn.put_memo = now  # type: ignore[attr-defined]  # committed: now it holds
    return previous["path"] if previous is not None else None


def put_many(conn: sqlite3.Connection, records: Iterable[InstanceRecord]) -> list[str | None]:
    """:func:`put` each record, in order, in one transaction: what each replaced.

    One commit for many instances: the archive writes the rows of the instances
    it answered in batches (``Archive._index_new``).
    """
    with _transaction(conn):
        return [put(conn, record) for record in records]


def _item_rows(spec: ItemTable, owner: object, items: list[dict[str, Any]]) -> tuple[tuple[Any, ...], ...]:
    """The rows of ``spec``'s table holding ``items`` of ``owner``."""
    return tuple((owner, n, *(item.get(column) for _, column in spec.attributes)) for n, item in enumerate(items))


def _put_items(conn: sqlite3.Connection, spec: ItemTable, owner: object, item_rows: Iterable[tuple[Any, ...]]) -> None:
    """Replace the items of ``spec`` stored for ``owner`` by ``item_rows`` (from :func:`_item_rows`)."""
    conn.execute(f"DELETE FROM {spec.table} WHERE {spec.owner} = ?", (owner,))
    columns = ", ".join(column for _, column in spec.attributes)
    placeholders = ", ".join("?" for _ in range(len(spec.attributes) + 2))
    conn.executemany(f"INSERT INTO {spec.table} ({spec.owner}, item, {columns}) VALUES ({placeholders})", item_rows)


def delete(conn: sqlite3.Connection, sop_instance_uids: Iterable[str]) -> int:
    """Drop instances (and whatever series, study, patient they leave empty); how many went."""
    count = 0
    with _transaction(conn):
        for uid in sop_instance_uids:
            row = conn.execute(
                "SELECT series_instance_uid FROM instance WHERE sop_instance_uid = ?", (uid,)
            ).fetchone()
            if row is None:
                continue
            conn.execute("DELETE FROM instance WHERE sop_instance_uid = ?", (uid,))
            count += 1
            _prune_series(conn, row[0])
    return count


def _prune_series(conn: sqlite3.Connection, series_uid: str) -> None:
    row = conn.execute("SELECT study_instance_uid FROM series WHERE series_instance_uid = ?", (series_uid,)).fetchone()
    if row is None:
        return
    gone = conn.execute(
        """DELETE FROM series WHERE series_instance_uid = ?
             AND NOT EXISTS (SELECT 1 FROM instance WHERE series_instance_uid = ?)""",
        (series_uid, series_uid),
    ).rowcount
    if gone:
        _prune_study(conn, row[0])


def _prune_study(conn: sqlite3.Connection, study_uid: str) -> None:
    row = conn.execute("SELECT patient_pk FROM study WHERE study_instance_uid = ?", (study_uid,)).fetchone()
    if row is None:
        return
    gone = conn.execute(
        """DELETE FROM study WHERE study_instance_uid = ?
             AND NOT EXISTS (SELECT 1 FROM series WHERE study_instance_uid = ?)""",
        (study_uid, study_uid),
    ).rowcount
    if gone:
        _prune_patient(conn, row[0])


def _prune_patient(conn: sqlite3.Connection, patient_pk: int) -> None:
    conn.execute(
        "DELETE FROM patient WHERE pk = ? AND NOT EXISTS (SELECT 1 FROM study WHERE patient_pk = ?)",
        (patient_pk, patient_pk),
    )


# -- reading ------------------------------------------------------------------------------------


def get(conn: sqlite3.Connection, sop_instance_uid: str) -> InstanceRecord | None:
    """The whole record of one instance, or None."""
    row = conn.execute(
        """SELECT i.sop_instance_uid, i.sop_class_uid, i.series_instance_uid, se.study_instance_uid,
                  i.transfer_syntax_uid, i.path, i.size, i.received_at, i.source_ae,
                  i.specific_character_set, i.instance_number,
                  p.patient_id, p.issuer_of_patient_id, p.patient_name, p.patient_birth_date, p.patient_sex,
                  st.study_date, st.study_time, st.accession_number, st.study_id,
                  st.referring_physician_name, st.study_description,
                  se.modality, se.series_number, se.series_description
             FROM instance i JOIN series se USING (series_instance_uid)
                             JOIN study st USING (study_instance_uid)
                             JOIN patient p ON p.pk = st.patient_pk
            WHERE i.sop_instance_uid = ?""",
        (sop_instance_uid,),
    ).fetchone()
    if row is None:
        return None
    return InstanceRecord(**{k: row[k] for k in row.keys() if k in _RECORD_FIELDS})


def all_paths(conn: sqlite3.Connection) -> dict[str, tuple[str, int]]:
    """SOP Instance UID -> (relative path, size) of every indexed instance."""
    return {row[0]: (row[1], row[2]) for row in conn.execute("SELECT sop_instance_uid, path, size FROM instance")}


def rows(conn: sqlite3.Connection, sql: str, parameters: Iterable[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
    """Run a read-only query; the rows as dicts."""
    return [dict(row) for row in conn.execute(sql, parameters)]
