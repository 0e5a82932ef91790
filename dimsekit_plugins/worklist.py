"""Modality Worklist SCP (PS3.4 Annex K, Modality Worklist Information Model - FIND) as a plugin.

Two sources of worklist items, queried together:

* **the database**: a table ``worklist_item`` in the archive's SQLite file
  (``<data_dir>/index.sqlite``, found from the configuration the way the
  archive finds it; ``[plugins.worklist] database = "..."`` to put it
  elsewhere).  Items are added and removed with ``dimsekit worklist
  add|list|remove`` (the same ``--config`` / ``--data-dir`` as the node);
  a running node sees them on its next query.
* **a folder** of ``*.wl`` DICOM files laid out as DCMTK's wlmscpfs reads
  them (``[plugins.worklist] folder = "..."``): the files in
  ``<folder>/<called AE title>/`` and, for simple set-ups, in ``<folder>/``
  itself.  On every query the folder is scanned (one ``scandir`` per
  directory) and only files whose size or modification time changed are
  read again; they are kept in an in-memory SQLite table and matched with
  the same SQL as the database.

One row per Scheduled Procedure Step: an item whose Scheduled Procedure Step
Sequence holds several steps is stored (and answered) once per step, each
with that one step (PS3.4 K.6.1.2.2: the sequence holds a single item in a
worklist item).  The matching keys are columns; the whole item is kept as
DICOM JSON.

Every item must have what PS3.4 Table K.6-1 makes a Type 1 return key (an
item without it is refused, naming the attribute; a bad ``.wl`` file is
logged and skipped): Patient's Name, Patient ID, Requested Procedure ID,
Study Instance UID, Requested Procedure Description or Requested Procedure
Code Sequence, and a Scheduled Procedure Step Sequence whose items have
Modality, Scheduled Station AE Title, Scheduled Procedure Step Start Date
(YYYYMMDD) and Start Time, Scheduled Procedure Step ID, and Scheduled
Procedure Step Description or Scheduled Protocol Code Sequence.

Matching (PS3.4 C.2.2.2 through :mod:`dimsekit_plugins.qr.matching`: single
value, universal, wild card, ranges on dates and times, UID lists; person
names case-insensitive).  Matched in SQL on columns: Patient's Name, Patient
ID, Patient's Birth Date, Patient's Sex, Accession Number, Requested
Procedure ID, Study Instance UID, Admission ID, Referring Physician's Name;
and, in the Scheduled Procedure Step Sequence item (sequence matching),
Modality, Scheduled Station AE Title, Start Date, Start Time (date and time
matched independently: combined date-time matching is not offered),
Scheduled Performing Physician's Name, Scheduled Procedure Step ID, Status,
Scheduled Station Name and Location.  Any other key with a value, at the top
level or in the step item, is matched on the stored DICOM JSON; keys inside
other sequences are return keys only.  An attribute PS3.6 allows several
values (Scheduled Station AE Title and Name, Other Patient IDs, ...) matches
when any one of its values does (PS3.4 C.2.2.3), each value read from the
DICOM JSON.  Specific Character Set and Timezone Offset From UTC qualify the
identifier's values and are never matched (PS3.4 C.2.2.2, C.2.2.2.5; no
timezone query adjustment is offered: times are compared as given).

Responses hold exactly the requested keys (zero-length when the item lacks
one; a sequence key with an empty item gets the item's whole sequence, one
with keys gets those keys of every stored item) and a Specific Character Set
when a value is not ASCII or the request named one.  Statuses: FF00 per
item, 0000 at the end, A900 (Error Comment says why) for an identifier that
cannot be matched, FE00 after a C-CANCEL, C000 when the items cannot be read.

Settings::

    [plugins.worklist]
    folder = "/var/lib/worklists"   # wlmscpfs-style folder of *.wl files (optional)
    database = "..."                # default: the archive's index.sqlite under data_dir
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VM, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from dimsekit.config import Config, ConfigError
from dimsekit.datasets import UnwritableElement, is_several, json_dict, values_of
from dimsekit.errors import for_log
from dimsekit.hookspecs import hookimpl
from dimsekit.registry import ServiceClass
from dimsekit.scu import MODALITY_WORKLIST_FIND
from dimsekit.sqlitedb import wal_mode
from dimsekit_plugins.qr.common import Shield
from dimsekit_plugins.qr.find import reply_charset
from dimsekit_plugins.qr.matching import (
    Condition,
    MatchingError,
    condition_for,
    normalise_date,
    normalise_time,
    register_functions,
    where,
)

__all__ = [
    "SECTION",
    "WorklistItemError",
    "WorklistSettings",
    "WorklistStore",
    "check_item",
    "split_steps",
    "query_conditions",
    "response_for",
    "database_path",
    "store_for",
    "handle_find",
]

_log = Logger(namespace="dimsekit.worklist")

SECTION = "worklist"
_KEYS = ("folder", "database")
SPS = "ScheduledProcedureStepSequence"
_SPS_TAG = 0x00400100

#: top-level matching keys kept as columns: keyword -> (column, VR)
TOP_COLUMNS: dict[str, tuple[str, str]] = {
    "PatientName": ("patient_name", "PN"),
    "PatientID": ("patient_id", "LO"),
    "PatientBirthDate": ("patient_birth_date", "DA"),
    "PatientSex": ("patient_sex", "CS"),
    "AccessionNumber": ("accession_number", "SH"),
    "RequestedProcedureID": ("requested_procedure_id", "SH"),
    "StudyInstanceUID": ("study_instance_uid", "UI"),
    "AdmissionID": ("admission_id", "LO"),
    "ReferringPhysicianName": ("referring_physician_name", "PN"),
}
#: matching keys of the Scheduled Procedure Step Sequence item kept as columns
STEP_COLUMNS: dict[str, tuple[str, str]] = {
    "Modality": ("modality", "CS"),
    "ScheduledStationAETitle": ("station_ae_title", "AE"),
    "ScheduledProcedureStepStartDate": ("start_date", "DA"),
    "ScheduledProcedureStepStartTime": ("start_time", "TM"),
    "ScheduledPerformingPhysicianName": ("performing_physician_name", "PN"),
    "ScheduledProcedureStepID": ("step_id", "SH"),
    "ScheduledProcedureStepStatus": ("step_status", "CS"),
    "ScheduledStationName": ("station_name", "SH"),
    "ScheduledProcedureStepLocation": ("location", "SH"),
}
_COLUMNS = [c for c, _ in TOP_COLUMNS.values()] + [c for c, _ in STEP_COLUMNS.values()]

#: PS3.4 Table K.6-1: Type 1 return keys, and the 1C pairs of which one must have a value
REQUIRED = ("PatientName", "PatientID", "RequestedProcedureID", "StudyInstanceUID")
REQUIRED_ONE_OF = (("RequestedProcedureDescription", "RequestedProcedureCodeSequence"),)
STEP_REQUIRED = ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                 "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID")
STEP_REQUIRED_ONE_OF = (("ScheduledProcedureStepDescription", "ScheduledProtocolCodeSequence"),)

_ITEM_COLUMNS = ", ".join(f"{c} TEXT" for c in _COLUMNS)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS worklist_item (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {_ITEM_COLUMNS},
    dataset TEXT NOT NULL,
    added_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS worklist_item_start ON worklist_item (start_date);
CREATE INDEX IF NOT EXISTS worklist_item_station ON worklist_item (station_ae_title);
"""
_FOLDER_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS folder_item (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {_ITEM_COLUMNS},
    dataset TEXT NOT NULL,
    source TEXT NOT NULL,
    ae_dir TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS folder_item_source ON folder_item (source);
"""

#: rows read per thread-pool call while answering
BATCH = 64


class WorklistItemError(ValueError):
    """A worklist item that MWL cannot serve; the message names the attribute."""


# -- items --------------------------------------------------------------------------------


def _name(keyword: str) -> str:
    tag = Tag(tag_for_keyword(keyword))
    return f"{keyword} ({tag.group:04X},{tag.element:04X})"


def _has_value(dataset: Dataset, keyword: str) -> bool:
    value = dataset.get(keyword) if keyword in dataset else None
    if value is None:
        return False
    if isinstance(value, DicomSequence | list):
        return len(value) > 0
    return str(value).strip(" \x00") != ""


def _require(dataset: Dataset, keywords: Iterable[str], one_of: Iterable[tuple[str, ...]], where_: str) -> None:
    for keyword in keywords:
        if keyword not in dataset:
            raise WorklistItemError(f"missing {_name(keyword)}{where_}, a Type 1 worklist return key (PS3.4 Table K.6-1)")
        if not _has_value(dataset, keyword):
            raise WorklistItemError(f"{_name(keyword)}{where_} has no value; it is a Type 1 worklist return key "
                                    "(PS3.4 Table K.6-1)")
    for choices in one_of:
        if not any(_has_value(dataset, k) for k in choices):
            names = " or ".join(_name(k) for k in choices)
            raise WorklistItemError(f"missing {names}{where_}: one of them is required (Type 1C, PS3.4 Table K.6-1)")


def check_item(dataset: Dataset) -> None:
    """Refuse an item without what PS3.4 Table K.6-1 requires (see the module docstring).

    :raises WorklistItemError: naming the first attribute missing, empty or malformed.
    """
    try:
        _require(dataset, REQUIRED, REQUIRED_ONE_OF, "")
        steps = dataset.get(SPS) if SPS in dataset else None
        if steps is None:
            raise WorklistItemError(f"missing {_name(SPS)}, a Type 1 worklist return key (PS3.4 Table K.6-1)")
        if not len(steps):
            raise WorklistItemError(f"{_name(SPS)} has no item; it needs one per Scheduled Procedure Step")
        for n, step in enumerate(steps, 1):
            where_ = f" in {SPS} item {n}"
            _require(step, STEP_REQUIRED, STEP_REQUIRED_ONE_OF, where_)
            date = str(step.ScheduledProcedureStepStartDate)
            try:
                normalise_date(date)
            except MatchingError:
                raise WorklistItemError(f"{_name('ScheduledProcedureStepStartDate')}{where_} is {date!r}, "
                                        "not a date (YYYYMMDD)") from None
            time = str(step.ScheduledProcedureStepStartTime)
            try:
                normalise_time(time)
            except MatchingError:
                raise WorklistItemError(f"{_name('ScheduledProcedureStepStartTime')}{where_} is {time!r}, "
                                        "not a time (HHMMSS)") from None
    except WorklistItemError:
        raise
    except Exception as exc:  # a value pydicom cannot read
        raise WorklistItemError(f"cannot read the item: {exc}") from None


def split_steps(dataset: Dataset) -> list[Dataset]:
    """One data set per Scheduled Procedure Step (each with a one-item sequence)."""
    out = []
    for step in dataset.get(SPS, []):
        copy = Dataset()
        for element in dataset:
            if element.tag != _SPS_TAG:
                copy.add(element)
        copy.add(DataElement(_SPS_TAG, "SQ", DicomSequence([step])))
        out.append(copy)
    return out


def _text(dataset: Dataset, keyword: str) -> str | None:
    if keyword not in dataset:
        return None
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    if is_several(value):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip(" \x00")
    return text or None


def _row(dataset: Dataset) -> tuple[list[str | None], str]:
    """(column values in :data:`_COLUMNS` order, DICOM JSON) of a one-step item."""
    step = dataset[SPS].value[0] if SPS in dataset and len(dataset[SPS].value) else Dataset()
    values = [_column_text(dataset, k, vr) for k, (_, vr) in TOP_COLUMNS.items()]
    values += [_column_text(step, k, vr) for k, (_, vr) in STEP_COLUMNS.items()]
    return values, json.dumps(json_dict(dataset), ensure_ascii=False)  # not pydicom's: see json_dict


def _column_text(dataset: Dataset, keyword: str, vr: str) -> str | None:
    """A column's value; a date in the old ``YYYY.MM.DD`` form (accepted by
    :func:`check_item`) as ``YYYYMMDD``, the form queries match against."""
    text = _text(dataset, keyword)
    if vr == "DA" and text is not None:
        try:
            return normalise_date(text)
        except MatchingError:
            return text
    return text


# -- queries ------------------------------------------------------------------------------


class IdentifierError(Exception):
    """The identifier cannot be matched (status A900 with this comment)."""

    def __init__(self, comment: str, offending: Iterable[int] = ()) -> None:
        super().__init__(comment)
        self.offending = tuple(offending)


def _plain(element: DataElement) -> Any:
    value = element.value
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    if is_several(value):
        return [str(v) for v in value]
    return str(value)


def _values_path(tag: int, inside_step: bool) -> str:
    """The JSON path of an attribute's values in an item's DICOM JSON."""
    t = Tag(tag)
    path = f'$."{t.group:04X}{t.element:04X}".Value'
    return f'$."00400100".Value[0].{path[2:]}' if inside_step else path


def _json_path(tag: int, vr: str, inside_step: bool) -> str:
    path = _values_path(tag, inside_step) + "[0]"
    if vr == "PN":
        path += ".Alphabetic"
    return f"json_extract(dataset, '{path}')"


def _wrap(column: str, vr: str) -> str:
    if vr == "TM":
        return f"dk_tm({column})"
    if vr == "DT":
        return f"dk_dt({column})"
    return column


def _multi_valued(tag: int) -> bool:
    """True for an attribute PS3.6 allows several values (VM other than 1)."""
    try:
        return dictionary_VM(tag) != "1"
    except KeyError:
        return False


def _any_value(tag: int, vr: str, inside_step: bool, value: Any) -> Condition:
    """The condition for a multi-valued attribute: any one of its stored values
    matches (PS3.4 C.2.2.3), each value taken from the stored DICOM JSON."""
    path = _values_path(tag, inside_step)
    each = "json_extract(v.value, '$.Alphabetic')" if vr == "PN" else "v.value"
    condition = condition_for(_wrap(each, vr), vr, value)
    if not condition.sql:
        return condition
    return Condition(f"EXISTS (SELECT 1 FROM json_each(dataset, '{path}') AS v WHERE {condition.sql})",
                     condition.params)


def _condition(element: DataElement, columns: Mapping[str, tuple[str, str]], inside_step: bool) -> Condition:
    keyword = element.keyword
    try:
        if _multi_valued(int(element.tag)):
            vr = columns[keyword][1] if keyword in columns else element.VR
            return _any_value(int(element.tag), vr, inside_step, _plain(element))
        if keyword in columns:
            column, vr = columns[keyword]
        else:
            vr = element.VR
            column = _json_path(int(element.tag), vr, inside_step)
        return condition_for(_wrap(column, vr), vr, _plain(element))
    except MatchingError as exc:
        raise IdentifierError(f"{keyword or element.tag}: {exc}", (int(element.tag),)) from None


#: keys of an identifier that are never matched: Specific Character Set and Timezone Offset
#: From UTC say how the other values are to be read (PS3.4 C.2.2.2, C.2.2.2.5); Query/Retrieve Level
_NOT_MATCHED = frozenset({0x00080005, 0x00080201, 0x00080052})


def query_conditions(identifier: Dataset) -> list[Condition]:
    """The SQL conditions of a Modality Worklist identifier.

    :raises IdentifierError: a value that cannot be matched, or a Scheduled
        Procedure Step Sequence with more than one item.
    """
    conditions: list[Condition] = []
    for element in identifier:
        tag = int(element.tag)
        if element.tag.element == 0 or tag in _NOT_MATCHED or element.tag.is_private:
            continue
        if element.VR == "SQ":
            if tag != _SPS_TAG or not element.value:
                continue  # other sequences: return keys only
            if len(element.value) > 1:
                raise IdentifierError(f"{SPS} in a worklist query holds one item, not {len(element.value)}",
                                      (_SPS_TAG,))
            for inner in element.value[0]:
                if inner.VR == "SQ" or inner.tag.element == 0 or inner.tag.is_private:
                    continue
                conditions.append(_condition(inner, STEP_COLUMNS, True))
            continue
        conditions.append(_condition(element, TOP_COLUMNS, False))
    return [c for c in conditions if c.sql]


_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})


def _empty(element: DataElement) -> DataElement:
    vr = element.VR
    if vr == "SQ":
        return DataElement(element.tag, vr, DicomSequence())
    return DataElement(element.tag, vr, None)


def _select(item: Dataset, query: Dataset, texts: list[str]) -> Dataset:
    out = Dataset()
    for wanted in query:
        tag = wanted.tag
        if tag.element == 0 or int(tag) in (0x00080005, 0x00080052):
            continue
        stored = item.get(tag) if tag in item else None
        if stored is None or (wanted.VR == "SQ" and stored.VR != "SQ"):
            out.add(_empty(wanted))
            continue
        if stored.VR == "SQ":
            shape = wanted.value[0] if wanted.VR == "SQ" and wanted.value and len(wanted.value[0]) else None
            items = [_select(i, shape, texts) if shape is not None else Dataset(i) for i in stored.value]
            if shape is None:
                for i in items:
                    _collect(i, texts)
            out.add(DataElement(tag, "SQ", DicomSequence(items)))
            continue
        out.add(DataElement(tag, stored.VR, stored.value))
        if stored.VR in _TEXT_VRS and stored.value not in (None, ""):
            value = stored.value
            texts.extend(str(v) for v in values_of(value))
    return out


def _collect(dataset: Dataset, texts: list[str]) -> None:
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                _collect(item, texts)
        elif element.VR in _TEXT_VRS and element.value not in (None, ""):
            value = element.value
            texts.extend(str(v) for v in values_of(value))


def _charset_of(dataset: Dataset) -> list[str]:
    value = dataset.get("SpecificCharacterSet") if "SpecificCharacterSet" in dataset else None
    if not value:
        return []
    return [str(v) for v in values_of(value)]


def response_for(item: Dataset, identifier: Dataset) -> Dataset:
    """The response identifier for a matching item: exactly the requested keys (see the module docstring)."""
    texts: list[str] = []
    out = _select(item, identifier, texts)
    charset = reply_charset(_charset_of(identifier), texts)
    if charset:
        out.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    return out


# -- settings and storage -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorklistSettings:
    database: Path
    folder: Path | None = None

    @classmethod
    def from_config(cls, config: Config) -> WorklistSettings:
        section = config.plugins.get(SECTION, {})
        if not isinstance(section, Mapping):
            raise ConfigError(f"plugins.{SECTION}: write it as a [plugins.{SECTION}] table")
        for key in section:
            if key not in _KEYS:
                raise ConfigError(f"plugins.{SECTION}.{key}: unknown key; the keys of [plugins.{SECTION}] are: "
                                  + ", ".join(_KEYS))
        for key in _KEYS:
            if key in section and (not isinstance(section[key], str) or not section[key].strip()):
                raise ConfigError(f"plugins.{SECTION}.{key}: give a path (a non-empty string), not {section[key]!r}")
        folder = Path(section["folder"]).expanduser().resolve() if "folder" in section else None
        return cls(database=database_path(config), folder=folder)


def database_path(config: Config) -> Path:
    """Where the worklist table is: ``[plugins.worklist] database``, else the
    archive's index file (as the archive finds it), else ``<data_dir>/worklist.sqlite``."""
    section = config.plugins.get(SECTION, {})
    if isinstance(section, Mapping) and isinstance(section.get("database"), str) and section["database"].strip():
        return Path(section["database"]).expanduser().resolve()
    try:
        from dimsekit_plugins.archive.layout import INDEX_NAME
        from dimsekit_plugins.archive.settings import ArchiveSettings
    except ImportError:  # pragma: no cover - the archive plugin is not installed
        return Path(config.node.data_dir).expanduser().resolve() / "worklist.sqlite"
    return ArchiveSettings.from_config(config).root / INDEX_NAME


@dataclass
class _FileState:
    stamp: tuple[int, int]
    ok: bool


@dataclass
class _Folder:
    files: dict[str, _FileState] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class WorklistStore:
    """The worklist items of one database (and folder), all SQL in the reactor's thread pool.

    One connection to the database file, one in-memory connection for the
    folder's items, both used under a lock.  A node never creates the
    database file: until ``dimsekit worklist add`` (or the archive) made it,
    the database has no items.

    :param create: create the database file and table if missing (the CLI).
    """

    def __init__(self, database: str | Path, folder: str | Path | None = None, reactor: Any = None,
                 *, create: bool = False) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.database = Path(database)
        self.folder = Path(folder) if folder is not None else None
        self.reactor = reactor
        self.create = create
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._mem: sqlite3.Connection | None = None
        self._folder = _Folder()

    def __repr__(self) -> str:
        return f"<WorklistStore {self.database}{' + ' + str(self.folder) if self.folder else ''}>"

    def _run(self, function: Any, *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self._locked, function, *args)

    def _locked(self, function: Any, *args: Any) -> Any:
        with self._lock:
            return function(*args)

    # -- connections (worker thread, lock held) -------------------------------------------------

    def _connection(self) -> sqlite3.Connection | None:
        if self._db is not None:
            return self._db
        if not self.create and not self.database.exists():
            return None
        if self.create:
            self.database.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.database), check_same_thread=False, isolation_level=None, timeout=30.0)
        try:
            wal_mode(conn, 30.0)
            conn.executescript(_SCHEMA)
            register_functions(conn)
        except BaseException:
            conn.close()
            raise
        self._db = conn
        return conn

    def _memory(self) -> sqlite3.Connection:
        if self._mem is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            conn.executescript(_FOLDER_SCHEMA)
            register_functions(conn)
            self._mem = conn
        return self._mem

    def _close(self) -> None:
        for conn in (self._db, self._mem):
            if conn is not None:
                conn.close()
        self._db = self._mem = None
        self._folder = _Folder()

    # -- the database (worker thread) ----------------------------------------------------------------

    def _add(self, datasets: list[Dataset]) -> list[int]:
        conn = self._connection()
        assert conn is not None
        rows = [_row(step) for dataset in datasets for step in split_steps(dataset)]
        placeholders = ", ".join("?" for _ in range(len(_COLUMNS) + 2))
        sql = f"INSERT INTO worklist_item ({', '.join(_COLUMNS)}, dataset, added_at) VALUES ({placeholders})"
        ids = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            added = _now()
            for values, text in rows:
                ids.append(conn.execute(sql, (*values, text, added)).lastrowid)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return ids

    def _remove(self, ids: list[int]) -> list[int]:
        conn = self._connection()
        if conn is None:
            return []
        removed = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for item_id in ids:
                if conn.execute("DELETE FROM worklist_item WHERE id = ?", (item_id,)).rowcount:
                    removed.append(item_id)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return removed

    def _items(self) -> list[tuple[int, str, str]]:
        conn = self._connection()
        if conn is None:
            return []
        return conn.execute("SELECT id, dataset, added_at FROM worklist_item ORDER BY id").fetchall()

    # -- the folder (worker thread) ---------------------------------------------------------------------

    def _scan(self, called_ae: str) -> None:
        """Bring the folder's rows up to date: re-read new and changed files, drop removed ones."""
        if self.folder is None:
            return
        seen: dict[str, tuple[Path, str, tuple[int, int]]] = {}
        directories = [(self.folder, "")]
        title = called_ae.strip()
        if title and title not in (".", "..") and "/" not in title and "\\" not in title:
            directories.append((self.folder / title, title))
        for directory, ae_dir in directories:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                if not entry.name.lower().endswith(".wl"):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    info = entry.stat()
                except OSError:
                    continue
                key = f"{ae_dir}/{entry.name}" if ae_dir else entry.name
                seen[key] = (Path(entry.path), ae_dir, (info.st_mtime_ns, info.st_size))
        # files of another AE's directory stay cached but are filtered out by ae_dir
        known = self._folder.files
        mem = self._memory()
        changed = [k for k, (_, _, stamp) in seen.items() if k not in known or known[k].stamp != stamp]
        gone = [k for k in known if k not in seen and (k.count("/") == 0 or k.split("/", 1)[0] == title)]
        if not changed and not gone:
            return
        placeholders = ", ".join("?" for _ in range(len(_COLUMNS) + 3))
        sql = f"INSERT INTO folder_item ({', '.join(_COLUMNS)}, dataset, source, ae_dir) VALUES ({placeholders})"
        mem.execute("BEGIN")
        try:
            for key in gone:
                mem.execute("DELETE FROM folder_item WHERE source = ?", (key,))
                del known[key]
            for key in changed:
                path, ae_dir, stamp = seen[key]
                mem.execute("DELETE FROM folder_item WHERE source = ?", (key,))
                rows = self._read_file(path)
                for values, text in rows:
                    mem.execute(sql, (*values, text, key, ae_dir))
                known[key] = _FileState(stamp, bool(rows))
            mem.execute("COMMIT")
        except BaseException:
            mem.execute("ROLLBACK")
            self._folder = _Folder()
            mem.execute("DELETE FROM folder_item")
            raise

    def _read_file(self, path: Path) -> list[tuple[list[str | None], str]]:
        try:
            dataset = dcmread(path, force=True)
            dataset.decode()
            dataset = Dataset(dataset)  # the File Meta Information is not part of the item
            check_item(dataset)
            return [_row(step) for step in split_steps(dataset)]
        except (WorklistItemError, UnwritableElement) as exc:
            _log.warn("worklist file {path} skipped: {why}", path=str(path), why=exc)
        except Exception as exc:
            _log.warn("worklist file {path} skipped: not a readable DICOM file ({why})", path=str(path), why=exc)
        return []

    # -- finding (worker thread) ----------------------------------------------------------------------

    def _fetch(self, source: str, clause: str, params: tuple[Any, ...], after: int, size: int,
               called_ae: str) -> list[tuple[int, str]]:
        if source == "database":
            conn = self._connection()
            if conn is None:
                return []
            table, extra, extra_params = "worklist_item", "", ()
        else:
            if self.folder is None:
                return []
            conn = self._memory()
            table, extra, extra_params = "folder_item", " AND ae_dir IN ('', ?)", (called_ae.strip(),)
        sql = (f"SELECT id, dataset FROM {table} {clause or 'WHERE 1'} AND id > ?{extra} "
               f"ORDER BY id LIMIT ?")
        return conn.execute(sql, (*params, after, *extra_params, size)).fetchall()

    # -- reactor side -----------------------------------------------------------------------------------

    def add(self, datasets: list[Dataset]) -> Deferred:
        """Check and add items; fires with the new row IDs (one per step).

        The Deferred fails with :class:`WorklistItemError` (nothing added) if one is refused."""
        for dataset in datasets:
            try:
                check_item(dataset)
            except WorklistItemError as exc:
                from twisted.internet import defer

                return defer.fail(exc)
        return self._run(self._add, list(datasets))

    def remove(self, ids: Iterable[int]) -> Deferred:
        """Remove items by ID; fires with the IDs that were there."""
        return self._run(self._remove, [int(i) for i in ids])

    def items(self) -> Deferred:
        """Every item of the database: [(id, Dataset, added_at)]."""
        d = self._run(self._items)
        return d.addCallback(lambda rows: [(r[0], Dataset.from_json(json.loads(r[1])), r[2]) for r in rows])

    def scan(self, called_ae: str = "") -> Deferred:
        """Re-read the folder's new and changed files (a no-op without a folder)."""
        return self._run(self._scan, called_ae)

    def fetch(self, source: str, clause: str, params: tuple[Any, ...], after: int, size: int,
              called_ae: str = "") -> Deferred:
        """Up to ``size`` matching rows (id, DICOM JSON) of ``source`` ("database" or "folder") after ``after``."""
        return self._run(self._fetch, source, clause, params, after, size, called_ae)

    def close(self) -> Deferred:
        return self._run(self._close)


#: (database, folder) -> the store serving them in this process
_stores: dict[tuple[Path, Path | None], WorklistStore] = {}


def store_for(ae: Any) -> WorklistStore:
    """The store for an application entity's configuration (one per database and folder)."""
    settings = WorklistSettings.from_config(ae.config)
    key = (settings.database, settings.folder)
    store = _stores.get(key)
    if store is None or store.reactor is not ae.reactor:
        store = _stores[key] = WorklistStore(settings.database, settings.folder, ae.reactor)
    return store


# -- the C-FIND handler ---------------------------------------------------------------------------


def handle_find(request: Any) -> AsyncIterator[tuple[Any, ...]]:
    """C-FIND on the Modality Worklist Information Model (an async generator of responses)."""
    return _find(request)


async def _find(request: Any) -> AsyncIterator[tuple[Any, ...]]:
    association = request.association
    try:
        try:
            identifier = request.dataset()
        except Exception as exc:
            raise IdentifierError(f"cannot decode the identifier: {exc}") from None
        if identifier is None:
            raise IdentifierError("the request has no identifier")
        clause, params = where(query_conditions(identifier))
    except IdentifierError as exc:
        _log.info("worklist C-FIND from {peer} refused (A900): {why}", peer=association.remote_ae_title, why=for_log(exc))
        fields: dict[str, Any] = {"ErrorComment": str(exc)}
        if exc.offending:
            fields["OffendingElement"] = list(exc.offending)
        yield 0xA900, None, fields
        return
    store = store_for(association.ae)
    called = association.called_ae_title
    shield = Shield()
    matches = 0
    try:
        try:
            if store.folder is not None:
                await shield.wait(store.scan(called))
            for source in ("database", "folder") if store.folder is not None else ("database",):
                after = 0
                while True:
                    rows = await shield.wait(store.fetch(source, clause, params, after, BATCH, called))
                    for item_id, text in rows:
                        after = item_id
                        item = Dataset.from_json(json.loads(text))
                        matches += 1
                        yield 0xFF00, response_for(item, identifier)
                    if len(rows) < BATCH:
                        break
        except CancelledError:
            if not request.cancelled:
                raise
            yield 0xFE00, None, {}
            return
    finally:
        await shield.settle()
        _log.debug("worklist C-FIND from {peer}: {n} item(s)", peer=association.remote_ae_title, n=matches)


# -- hooks ------------------------------------------------------------------------------------------


@hookimpl
def dimsekit_configure(config: Config) -> None:
    """Check ``[plugins.worklist]`` (nothing is opened here)."""
    WorklistSettings.from_config(config)


@hookimpl
def dimsekit_service_classes() -> list[ServiceClass]:
    """Modality Worklist Information Model - FIND, SCP role."""
    return [ServiceClass(name="modality worklist", sop_classes=(str(MODALITY_WORKLIST_FIND),),
                         handlers={"C-FIND": handle_find})]

