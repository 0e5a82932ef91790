"""Normalized (DIMSE-N) services in a few handlers: instances, attribute lists, statuses.

A normalized SOP class (PS3.4: MPPS, Storage Commitment, Print Management,
...) manages *instances* named by a SOP Instance UID and changed through
N-CREATE, N-SET, N-GET, N-ACTION, N-DELETE and N-EVENT-REPORT.  This module
does what every such class does the same way, so that a plugin writes only
what is particular to its SOP class:

* :class:`InstanceRegistry` -- the instances, keyed by SOP Instance UID
  inside a *kind* (one namespace per service: the three MPPS SOP classes
  share their instances), on a pluggable backend: :class:`MemoryBackend`, or
  :class:`SQLiteBackend`, which keeps each instance's data set as DICOM JSON
  in ``<data_dir>/dimsekit.sqlite`` (WAL mode, every statement in a Twisted
  thread pool, never in the reactor thread).
* Attribute helpers: :func:`select_attributes` (N-GET Attribute Identifier
  List), :func:`apply_modifications` (N-SET Modification List),
  :func:`check_required` (Type 1 / Type 2 checks of an N-CREATE or a final
  state), :func:`creation_uid` (N-CREATE with or without the SCU's UID),
  :func:`received_dataset` (a request's data set read in full: a malformed
  one is a failure status).
* :class:`NServiceError` and its subclasses -- the PS3.7 Annex C failures
  (0x0105 ... 0x0123) as exceptions that carry what the response needs
  (Error Comment, Error ID, Attribute Identifier List, Attribute List).
* :class:`NormalizedService` -- a base class turning a few overridable
  methods into :class:`~dimsekit.registry.ServiceClass` handlers for each
  SOP class it serves: look the instance up, answer 0x0112 when it is not
  there, 0x0111 on a duplicate N-CREATE, 0x0123 for an unknown Action Type
  ID, 0x0211 for an operation the SOP class does not have.

Statuses (PS3.7 Annex C names the general ones; PS3.4 a service's own):

======  =================================================  =========
0x0001  Requested optional Attributes are not supported    warning (PS3.4 N-GET, e.g. MPPS)
0x0105  No Such Attribute                                  failure
0x0106  Invalid Attribute Value                            failure
0x0107  Attribute List Error                               warning
0x0110  Processing Failure (with an Error ID, PS3.4)       failure
0x0111  Duplicate SOP Instance                             failure
0x0112  No Such SOP Instance                               failure
0x0113  No Such Event Type                                 failure
0x0117  Invalid Object Instance                            failure
0x0120  Missing Attribute                                  failure
0x0121  Missing Attribute Value                            failure
0x0123  No Such Action                                     failure
0x0211  Unrecognized Operation                             failure
======  =================================================  =========
"""

from __future__ import annotations

import copy
import inspect
import re
import sqlite3
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import generate_uid
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from dimsekit.config import ConfigError
from dimsekit.datasets import (
    DatasetError,
    DatasetValueError,
    UnwritableElement,
    json_text,
    read_in_full,
)
from dimsekit.errors import for_log
from dimsekit.libraries_log import about
from dimsekit.registry import UNCOMPRESSED_TRANSFER_SYNTAXES, ServiceClass
from dimsekit.sqlitedb import wal_mode

if TYPE_CHECKING:  # pragma: no cover
    from dimsekit.scp import Request

__all__ = [
    "SUCCESS",
    "OPTIONAL_ATTRIBUTES_NOT_SUPPORTED",
    "NO_SUCH_ATTRIBUTE",
    "INVALID_ATTRIBUTE_VALUE",
    "ATTRIBUTE_LIST_ERROR",
    "PROCESSING_FAILURE",
    "DUPLICATE_SOP_INSTANCE",
    "NO_SUCH_SOP_INSTANCE",
    "NO_SUCH_EVENT_TYPE",
    "INVALID_OBJECT_INSTANCE",
    "MISSING_ATTRIBUTE",
    "MISSING_ATTRIBUTE_VALUE",
    "NO_SUCH_ACTION",
    "UNRECOGNIZED_OPERATION",
    "N_COMMANDS",
    "NServiceError",
    "NoSuchAttribute",
    "InvalidAttributeValue",
    "ProcessingFailure",
    "DuplicateInstance",
    "NoSuchInstance",
    "NoSuchEventType",
    "InvalidObjectInstance",
    "MissingAttribute",
    "MissingAttributeValue",
    "NoSuchAction",
    "Instance",
    "InstanceBackend",
    "MemoryBackend",
    "SQLiteBackend",
    "InstanceRegistry",
    "NormalizedService",
    "to_tag",
    "tag_name",
    "is_empty",
    "attribute_identifiers",
    "select_attributes",
    "apply_modifications",
    "merge_character_sets",
    "check_required",
    "creation_uid",
    "received_dataset",
    "is_valid_uid",
    "backend_from_config",
    "check_backend_config",
    "DATABASE_NAME",
]

_log = Logger(namespace="dimsekit.nservice")

SUCCESS = 0x0000
OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001
NO_SUCH_ATTRIBUTE = 0x0105
INVALID_ATTRIBUTE_VALUE = 0x0106
ATTRIBUTE_LIST_ERROR = 0x0107
PROCESSING_FAILURE = 0x0110
DUPLICATE_SOP_INSTANCE = 0x0111
NO_SUCH_SOP_INSTANCE = 0x0112
NO_SUCH_EVENT_TYPE = 0x0113
INVALID_OBJECT_INSTANCE = 0x0117
MISSING_ATTRIBUTE = 0x0120
MISSING_ATTRIBUTE_VALUE = 0x0121
NO_SUCH_ACTION = 0x0123
UNRECOGNIZED_OPERATION = 0x0211

#: The DIMSE-N operations, as handlers are registered under them.
N_COMMANDS = ("N-CREATE", "N-SET", "N-GET", "N-ACTION", "N-DELETE", "N-EVENT-REPORT")

#: The SQLite file under ``[node] data_dir`` that :class:`SQLiteBackend` uses by default.
DATABASE_NAME = "dimsekit.sqlite"


# -- tags -----------------------------------------------------------------------------

_TAG_TEXT = re.compile(r"\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?\Z")


def to_tag(value: int | str | BaseTag) -> BaseTag:
    """A tag from an int, a keyword (``"PatientName"``), ``"(0010,0010)"``,
    ``"0010,0010"`` or ``"00100010"``.

    :raises ValueError: none of those.
    """
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"{value!r} is not a 32-bit tag")
        return Tag(value)
    text = str(value).strip()
    found = tag_for_keyword(text) if text else None
    if found is not None:
        return Tag(found)
    match = _TAG_TEXT.match(text)
    if match:
        return Tag(int(match.group(1), 16), int(match.group(2), 16))
    raise ValueError(f"{value!r} is neither a DICOM keyword nor a tag like (0010,0010)")


def tag_name(tag: int) -> str:
    """``"PatientName (0010,0010)"``, or just ``"(0011,0010)"`` for a tag without a keyword."""
    tag = Tag(tag)
    text = f"({tag.group:04X},{tag.element:04X})"
    keyword = keyword_for_tag(tag)
    return f"{keyword} {text}" if keyword else text


def is_empty(element: DataElement | None) -> bool:
    """True for a missing element, a zero-length value, or a sequence with no items."""
    if element is None:
        return True
    if element.VR == "SQ":
        return not element.value
    return element.is_empty


def attribute_identifiers(command: Mapping[str, Any]) -> tuple[int, ...]:
    """The Attribute Identifier List (0000,1005) of an N-GET-RQ as tags (empty when absent)."""
    value = command.get("AttributeIdentifierList")
    if value is None or value == "":
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(t) for t in value)


# -- errors: the Annex C failures as exceptions ------------------------------------------


class NServiceError(Exception):
    """A DIMSE-N failure (or warning) to answer with; handlers raise it,
    :class:`NormalizedService` turns it into the response.

    :param comment: Error Comment (0000,0902), at most 64 characters on the wire.
    :param error_id: Error ID (0000,0903), a service-specific code (e.g. MPPS 0xA710).
    :param attributes: tags for the Attribute Identifier List (0000,1005).
    :param dataset: the response's Attribute/Modification List (e.g. the invalid values, C.5.6).
    """

    status: int = PROCESSING_FAILURE

    def __init__(
        self,
        comment: str | None = None,
        *,
        status: int | None = None,
        error_id: int | None = None,
        attributes: Iterable[int] = (),
        dataset: Dataset | None = None,
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(comment or type(self).__name__)
        if status is not None:
            self.status = status
        self.comment = comment
        self.error_id = error_id
        self.attributes = tuple(int(t) for t in attributes)
        self.dataset = dataset
        self.fields = dict(fields or {})

    def response(self) -> tuple[int, Dataset | None, dict[str, Any]]:
        """The ``(status, dataset, fields)`` a handler returns for this failure."""
        fields: dict[str, Any] = {}
        if self.comment:
            fields["ErrorComment"] = self.comment
        if self.error_id is not None:
            fields["ErrorID"] = int(self.error_id)
        if self.attributes:
            fields["AttributeIdentifierList"] = self.attributes
        fields.update(self.fields)
        return self.status, self.dataset, fields


class NoSuchAttribute(NServiceError):
    """0x0105: the tag of an attribute is not recognized (PS3.7 Annex C)."""

    status = NO_SUCH_ATTRIBUTE


class InvalidAttributeValue(NServiceError):
    """0x0106: an attribute value is out of range or otherwise inappropriate (PS3.7 Annex C)."""

    status = INVALID_ATTRIBUTE_VALUE


class ProcessingFailure(NServiceError):
    """0x0110: a general failure in processing, usually with an Error ID (PS3.7 Annex C)."""

    status = PROCESSING_FAILURE


class DuplicateInstance(NServiceError):
    """0x0111: the SOP Instance UID given to N-CREATE is already in use (PS3.7 Annex C)."""

    status = DUPLICATE_SOP_INSTANCE

    def __init__(self, uid: str) -> None:
        super().__init__(f"SOP Instance {uid} already exists", fields={"AffectedSOPInstanceUID": uid})
        self.uid = uid


class NoSuchInstance(NServiceError):
    """0x0112: no instance has this SOP Instance UID (PS3.7 Annex C)."""

    status = NO_SUCH_SOP_INSTANCE

    def __init__(self, uid: str) -> None:
        super().__init__(f"no SOP Instance {uid}"[:64], fields={"AffectedSOPInstanceUID": uid} if is_valid_uid(uid) else {})
        self.uid = uid


class NoSuchEventType(NServiceError):
    """0x0113: the Event Type ID is not one the SOP class defines (PS3.7 Annex C)."""

    status = NO_SUCH_EVENT_TYPE

    def __init__(self, event_type_id: int) -> None:
        super().__init__(f"no event type {event_type_id}", fields={"EventTypeID": int(event_type_id)})


class InvalidObjectInstance(NServiceError):
    """0x0117: the SOP Instance UID breaks the UID rules (PS3.7 Annex C)."""

    status = INVALID_OBJECT_INSTANCE


class MissingAttribute(NServiceError):
    """0x0120: a required attribute was not supplied (PS3.7 Annex C)."""

    status = MISSING_ATTRIBUTE


class MissingAttributeValue(NServiceError):
    """0x0121: a required attribute was supplied without a value (PS3.7 Annex C)."""

    status = MISSING_ATTRIBUTE_VALUE


class NoSuchAction(NServiceError):
    """0x0123: the Action Type ID is not one the SOP class defines (PS3.7 Annex C)."""

    status = NO_SUCH_ACTION

    def __init__(self, action_type_id: int) -> None:
        super().__init__(f"no action type {action_type_id}", fields={"ActionTypeID": int(action_type_id)})


# -- attribute helpers --------------------------------------------------------------------

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\Z")


def is_valid_uid(uid: str) -> bool:
    """PS3.5 9.1: digits and dots, components without leading zeros, at most 64 characters."""
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(_UID.match(uid))


def creation_uid(request: Request) -> tuple[str, bool]:
    """The SOP Instance UID of an N-CREATE: the SCU's (``assigned`` False) or a
    new one from :func:`pydicom.uid.generate_uid` (``assigned`` True: return it
    in the response as Affected SOP Instance UID, PS3.7 10.1.5.1.4).

    :raises InvalidObjectInstance: the SCU's UID breaks the UID rules.
    """
    uid = str(request.command.get("AffectedSOPInstanceUID") or "").strip()
    if not uid:
        return str(generate_uid()), True
    if not is_valid_uid(uid):
        raise InvalidObjectInstance(f"not a valid UID: {uid[:40]}")
    return uid, False


def received_dataset(request: Request) -> Dataset:
    """The request's data set with every value read (an empty one when it had
    none), so that a malformed one is answered with a status, not a traceback.

    :raises ProcessingFailure: it cannot be decoded (0x0110).
    :raises InvalidAttributeValue: a value in it cannot be read (0x0106).
    """
    try:
        dataset = request.dataset()
        if dataset is None:
            return Dataset()
        read_in_full(dataset)  # every value, in sequence items too (a Request's dataset() did it already)
    except DatasetValueError as exc:
        raise InvalidAttributeValue(f"unusable attribute value: {exc.__cause__ or exc}"[:64]) from None
    except DatasetError as exc:
        _log.warn("{command}: undecodable data set: {error}", command=request.name, error=for_log(exc))
        raise ProcessingFailure("cannot decode the data set") from None
    return dataset


def select_attributes(
    dataset: Dataset,
    tags: Iterable[int] = (),
    *,
    maintained: Iterable[int] | None = None,
) -> tuple[Dataset, tuple[int, ...]]:
    """What an N-GET returns (PS3.7 10.1.2.1.6): the requested attributes, or
    every attribute when ``tags`` is empty.

    :param maintained: the attributes the SOP class keeps, if it says; a
        requested tag that is neither in ``dataset`` nor in ``maintained`` is
        *unsupported*.  Without ``maintained``, nothing is unsupported.
    :returns: (the selection, the unsupported tags).  Requested attributes
        the instance does not have are simply absent from the selection; the
        caller decides the status for unsupported ones (a warning: 0x0107
        Attribute List Error, or 0x0001 where PS3.4 names it, as for MPPS).
    """
    wanted = [Tag(t) for t in tags]
    if not wanted:
        return copy.deepcopy(dataset), ()
    keep = set(maintained) if maintained is not None else None
    selected = Dataset()
    unsupported: list[int] = []
    for tag in wanted:
        if tag in dataset:
            selected[tag] = copy.deepcopy(dataset[tag])
        elif keep is not None and tag not in keep:
            unsupported.append(int(tag))
    if "SpecificCharacterSet" in dataset and "SpecificCharacterSet" not in selected and any(
        dataset[t].VR in _TEXT_VRS for t in selected.keys()
    ):
        # the values must be decoded with their character set (PS3.4 F.8.2 note)
        selected.SpecificCharacterSet = dataset.SpecificCharacterSet
    return selected, tuple(unsupported)


_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC", "SQ"})


def merge_character_sets(old: Dataset, modifications: Dataset) -> str | list[str] | None:
    """The Specific Character Set after an N-SET (PS3.4 F.7.2.2.3: the new
    value "does not replace the previous value").

    pydicom decodes every text value to Unicode on receipt, so what matters
    is that the merged data set can encode both: the same value is kept;
    different ones become ``ISO_IR 192`` (UTF-8), which encodes any text.
    Returns None when neither names one (the default repertoire).
    """
    before = old.get("SpecificCharacterSet")
    after = modifications.get("SpecificCharacterSet")
    if after is None or is_empty(modifications["SpecificCharacterSet"]):
        return before
    if before is None or before == after:
        return after
    return "ISO_IR 192"


def apply_modifications(dataset: Dataset, modifications: Dataset, *, empty: str = "keep") -> Dataset:
    """A copy of ``dataset`` with an N-SET Modification List applied (PS3.7 10.1.3.1.6).

    Each attribute of ``modifications`` replaces the one in ``dataset``
    (sequences replaced whole).  An attribute given with an empty value
    (zero length, or a sequence with no items) is kept zero-length when
    ``empty="keep"`` (the default: a Type 2 attribute is then present
    without a value, as PS3.5 7.4 defines), or removed with ``empty="remove"``.
    Specific Character Set is merged (:func:`merge_character_sets`).
    """
    if empty not in ("keep", "remove"):
        raise ValueError(f"empty must be 'keep' or 'remove', not {empty!r}")
    result = copy.deepcopy(dataset)
    charset = merge_character_sets(dataset, modifications)
    for element in modifications:
        if element.tag == 0x00080005:
            continue
        if empty == "remove" and is_empty(element):
            if element.tag in result:
                del result[element.tag]
            continue
        result[element.tag] = copy.deepcopy(element)
    if charset is not None:
        result.SpecificCharacterSet = charset
    return result


#: A requirement table for :func:`check_required`: keyword -> ``"1"`` (present
#: with a value), ``"2"`` (present, may be empty), or ``(type, table)`` for a
#: sequence whose every item must meet ``table``.
Requirements = Mapping[str, "str | tuple[str, Requirements]"]


def check_required(dataset: Dataset, requirements: Requirements, *, types: str = "12") -> None:
    """Check Type 1 and Type 2 attributes (PS3.5 7.4), recursing into sequence items.

    :param types: which types to enforce: ``"12"`` both, ``"1"`` Type 1 only.
    :raises MissingAttribute: 0x0120, listing every missing top-level
        attribute (a problem inside a sequence lists the sequence and names
        the path in the Error Comment).
    :raises MissingAttributeValue: 0x0121, when nothing is missing but a Type
        1 attribute is empty.
    """
    missing: list[tuple[int, str]] = []
    no_value: list[tuple[int, str]] = []
    _check(dataset, requirements, types, None, "", missing, no_value)
    for problems, error, what in ((missing, MissingAttribute, "missing"), (no_value, MissingAttributeValue, "no value")):
        if problems:
            tags = tuple(dict.fromkeys(top for top, _ in problems))
            paths = ", ".join(path for _, path in problems)
            raise error(f"{what}: {paths}", attributes=tags)


def _check(
    dataset: Dataset,
    requirements: Requirements,
    types: str,
    top: int | None,
    prefix: str,
    missing: list[tuple[int, str]],
    no_value: list[tuple[int, str]],
) -> None:
    for keyword, requirement in requirements.items():
        kind, nested = (requirement, None) if isinstance(requirement, str) else requirement
        tag = tag_for_keyword(keyword)
        if tag is None:  # pragma: no cover - a typo in a plugin's table
            raise ValueError(f"unknown keyword in a requirement table: {keyword}")
        path = prefix + keyword
        anchor = tag if top is None else top
        if kind not in types:
            continue
        element = dataset.get(tag)
        if element is None:
            missing.append((anchor, path))
            continue
        if kind == "1" and is_empty(element):
            no_value.append((anchor, path))
            continue
        if nested and element.VR == "SQ":
            for index, item in enumerate(element.value):
                _check(item, nested, types, anchor, f"{path}[{index}].", missing, no_value)


# -- instances and their storage -------------------------------------------------------------


@dataclass(slots=True)
class Instance:
    """A managed SOP instance: its identity and its attributes.

    :ivar kind: the registry namespace (``"mpps"``): SOP classes of one kind
        share their instances (PS3.4 F.7: "the same SOP Instance UID is
        shared by all three Modality Performed Procedure Step SOP Classes").
    :ivar sop_class_uid: the SOP class it was created under.
    :ivar sop_instance_uid: its SOP Instance UID.
    :ivar dataset: its attributes (a pydicom Dataset).
    """

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    dataset: Dataset = field(default_factory=Dataset)

    def to_json(self) -> str:
        """The data set as DICOM JSON (PS3.18 F), as stored (:func:`dataset_json`)."""
        return dataset_json(self.dataset)


def dataset_json(dataset: Dataset) -> str:
    """``dataset`` as DICOM JSON (PS3.18 F), as a registry stores it
    (:func:`~dimsekit.datasets.json_text`: also a PN of several values with an empty one,
    which pydicom's own writer fails on).

    :raises InvalidAttributeValue: pydicom cannot write an element (0x0106, naming it).
    """
    try:
        return json_text(dataset)
    except UnwritableElement as exc:
        raise InvalidAttributeValue(
            f"{tag_name(exc.tag)} cannot be stored: {exc.reason}"[:64], attributes=(exc.tag,)
        ) from None


def _dataset_from_json(text: str, kind: str, uid: str) -> Dataset:
    # what a peer once sent, read again (a thread of the pool: no context of the request's)
    with about("", lambda: f"reading the stored {kind} instance {uid}"):
        return Dataset.from_json(text)


class InstanceBackend(Protocol):
    """Where an :class:`InstanceRegistry` keeps its instances.  Every method
    returns a Deferred; a backend that blocks (SQL, files) does the work in a
    thread pool, never in the reactor thread."""

    def get(self, kind: str, uid: str) -> Deferred:  # Deferred[Instance | None]
        ...

    def create(self, instance: Instance) -> Deferred:  # fails with DuplicateInstance
        ...

    def update(self, instance: Instance) -> Deferred:  # fails with NoSuchInstance
        ...

    def delete(self, kind: str, uid: str) -> Deferred:  # Deferred[bool]: it was there
        ...

    def uids(self, kind: str) -> Deferred:  # Deferred[list[str]]
        ...

    def close(self) -> Deferred:
        ...


class MemoryBackend:
    """Instances in a dict, as DICOM JSON (so that what comes back is a copy,
    exactly as from SQLite).  Lost when the process ends."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], tuple[str, str]] = {}

    def get(self, kind: str, uid: str) -> Deferred:
        row = self._rows.get((kind, uid))
        if row is None:
            return defer.succeed(None)
        return defer.succeed(Instance(kind, row[0], uid, _dataset_from_json(row[1], kind, uid)))

    def create(self, instance: Instance) -> Deferred:
        key = (instance.kind, instance.sop_instance_uid)
        if key in self._rows:
            return defer.fail(DuplicateInstance(instance.sop_instance_uid))
        self._rows[key] = (instance.sop_class_uid, instance.to_json())
        return defer.succeed(None)

    def update(self, instance: Instance) -> Deferred:
        key = (instance.kind, instance.sop_instance_uid)
        if key not in self._rows:
            return defer.fail(NoSuchInstance(instance.sop_instance_uid))
        self._rows[key] = (self._rows[key][0], instance.to_json())
        return defer.succeed(None)

    def delete(self, kind: str, uid: str) -> Deferred:
        return defer.succeed(self._rows.pop((kind, uid), None) is not None)

    def uids(self, kind: str) -> Deferred:
        return defer.succeed(sorted(uid for k, uid in self._rows if k == kind))

    def close(self) -> Deferred:
        return defer.succeed(None)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS nservice_instance (
    kind TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    dataset_json TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (kind, sop_instance_uid)
)
"""


class SQLiteBackend:
    """Instances in SQLite: table ``nservice_instance`` (kind, SOP Instance
    UID, SOP Class UID, data set as DICOM JSON, created/updated times), WAL
    journal, ``synchronous=FULL`` (a success status is sent only after the
    change is on disk).

    Every statement runs in a one-thread :class:`~twisted.python.threadpool.ThreadPool`
    (so statements on this file never race each other) through
    :func:`~twisted.internet.threads.deferToThreadPool`; the pool starts with
    the reactor (or at once if it runs already) and stops at reactor
    shutdown, through system event triggers -- or earlier with :meth:`close`.

    :param path: the database file (its directory is created when missing).
    :param reactor: the reactor that gets the results.
    :param runner: ``runner(function, *args) -> Deferred`` to run the blocking
        calls some other way (tests); when given, no pool is made.
    """

    def __init__(self, path: str | Path, reactor: Any, *, runner: Callable[..., Deferred] | None = None) -> None:
        self.path = Path(path)
        self.reactor = reactor
        self._schema_ready = False
        self._pool: ThreadPool | None = None
        self._triggers: list[Any] = []
        if runner is not None:
            self._run = runner
        else:
            pool = ThreadPool(minthreads=0, maxthreads=1, name=f"dimsekit-sqlite:{self.path.name}")
            self._pool = pool
            if getattr(reactor, "running", False):
                self._start_pool()
            else:
                self._triggers.append(reactor.addSystemEventTrigger("after", "startup", self._start_pool))
            self._triggers.append(reactor.addSystemEventTrigger("during", "shutdown", self._stop_pool))
            self._run = lambda f, *a: deferToThreadPool(reactor, pool, f, *a)

    # -- life ------------------------------------------------------------------------

    def _start_pool(self) -> None:
        if self._pool is not None and not self._pool.started:
            self._pool.start()

    def _stop_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and pool.started:
            pool.stop()

    def close(self) -> Deferred:
        """Stop the thread pool now (waits for the statement in progress) and
        drop the reactor triggers.  Calls after this fail."""
        for trigger in self._triggers:
            try:
                self.reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError, NotImplementedError):
                pass  # already fired and gone, or a test reactor that cannot remove triggers
        self._triggers.clear()
        self._stop_pool()
        self._run = _closed
        return defer.succeed(None)

    # -- blocking work (in the pool's thread) ------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if not self._schema_ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            if not self._schema_ready:
                wal_mode(connection, 30.0)
                connection.execute(_SCHEMA)
                self._schema_ready = True
            connection.execute("PRAGMA synchronous=FULL")
        except BaseException:
            connection.close()
            raise
        return connection

    def _get(self, kind: str, uid: str) -> Instance | None:
        connection = self._connect()
        try:
            row = connection.execute(
                "SELECT sop_class_uid, dataset_json FROM nservice_instance WHERE kind = ? AND sop_instance_uid = ?",
                (kind, uid),
            ).fetchone()
        finally:
            connection.close()
        if row is None:
            return None
        return Instance(kind, row[0], uid, _dataset_from_json(row[1], kind, uid))

    def _create(self, kind: str, sop_class: str, uid: str, text: str) -> bool:
        now = _now()
        connection = self._connect()
        try:
            connection.execute(
                "INSERT INTO nservice_instance VALUES (?, ?, ?, ?, ?, ?)", (kind, uid, sop_class, text, now, now)
            )
            return True
        except sqlite3.IntegrityError:
            return False
        finally:
            connection.close()

    def _update(self, kind: str, uid: str, text: str) -> bool:
        connection = self._connect()
        try:
            cursor = connection.execute(
                "UPDATE nservice_instance SET dataset_json = ?, updated = ? WHERE kind = ? AND sop_instance_uid = ?",
                (text, _now(), kind, uid),
            )
            return cursor.rowcount == 1
        finally:
            connection.close()

    def _delete(self, kind: str, uid: str) -> bool:
        connection = self._connect()
        try:
            cursor = connection.execute(
                "DELETE FROM nservice_instance WHERE kind = ? AND sop_instance_uid = ?", (kind, uid)
            )
            return cursor.rowcount == 1
        finally:
            connection.close()

    def _uids(self, kind: str) -> list[str]:
        connection = self._connect()
        try:
            rows = connection.execute(
                "SELECT sop_instance_uid FROM nservice_instance WHERE kind = ? ORDER BY sop_instance_uid", (kind,)
            ).fetchall()
        finally:
            connection.close()
        return [row[0] for row in rows]

    # -- the backend API (reactor thread) ------------------------------------------------

    def get(self, kind: str, uid: str) -> Deferred:
        return self._run(self._get, kind, uid)

    def create(self, instance: Instance) -> Deferred:
        text = instance.to_json()  # encode here: a bad value fails before any SQL

        def created(ok: bool) -> None:
            if not ok:
                raise DuplicateInstance(instance.sop_instance_uid)

        return self._run(self._create, instance.kind, instance.sop_class_uid, instance.sop_instance_uid, text).addCallback(created)

    def update(self, instance: Instance) -> Deferred:
        text = instance.to_json()

        def updated(ok: bool) -> None:
            if not ok:
                raise NoSuchInstance(instance.sop_instance_uid)

        return self._run(self._update, instance.kind, instance.sop_instance_uid, text).addCallback(updated)

    def delete(self, kind: str, uid: str) -> Deferred:
        return self._run(self._delete, kind, uid)

    def uids(self, kind: str) -> Deferred:
        return self._run(self._uids, kind)


def _closed(*args: Any) -> Deferred:
    return defer.fail(RuntimeError("the SQLite backend is closed"))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class InstanceRegistry:
    """The instances of one kind, keyed by SOP Instance UID, on a backend.

    :meth:`modify` serialises read-modify-write per instance (a
    :class:`~twisted.internet.defer.DeferredLock` per UID), so two N-SETs of
    one instance arriving on two associations apply one after the other.
    """

    def __init__(self, kind: str, backend: InstanceBackend) -> None:
        self.kind = kind
        self.backend = backend
        self._locks: dict[str, DeferredLock] = {}

    def get(self, uid: str) -> Deferred:
        """Fires with the :class:`Instance`, or None."""
        return self.backend.get(self.kind, uid)

    async def require(self, uid: str) -> Instance:
        """The instance; :class:`NoSuchInstance` (0x0112) when there is none."""
        instance = await self.backend.get(self.kind, uid)
        if instance is None:
            raise NoSuchInstance(uid)
        return instance

    def create(self, sop_class_uid: str, uid: str, dataset: Dataset) -> Deferred:
        """Store a new instance; fails with :class:`DuplicateInstance` (0x0111)."""
        instance = Instance(self.kind, sop_class_uid, uid, dataset)
        return self.backend.create(instance).addCallback(lambda _: instance)

    def delete(self, uid: str) -> Deferred:
        """Remove an instance; fails with :class:`NoSuchInstance` (0x0112)."""

        def deleted(found: bool) -> None:
            if not found:
                raise NoSuchInstance(uid)

        return self.backend.delete(self.kind, uid).addCallback(deleted)

    def uids(self) -> Deferred:
        """Fires with the SOP Instance UIDs of this kind, sorted."""
        return self.backend.uids(self.kind)

    async def modify(self, uid: str, change: Callable[[Instance], Any]) -> tuple[Instance, Instance]:
        """Read the instance, let ``change(instance)`` return its new data set
        (or a Deferred/coroutine of it; it may raise :class:`NServiceError`),
        store it; ``(before, after)``.  One modification per UID at a time.

        :raises NoSuchInstance: no instance with ``uid`` (0x0112).
        """
        lock = self._locks.setdefault(uid, DeferredLock())
        await lock.acquire()
        try:
            before = await self.require(uid)
            result = change(Instance(before.kind, before.sop_class_uid, uid, copy.deepcopy(before.dataset)))
            if inspect.isawaitable(result):
                result = await result
            after = Instance(before.kind, before.sop_class_uid, uid, result)
            await self.backend.update(after)
            return before, after
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(uid, None)

    def close(self) -> Deferred:
        return self.backend.close()


def check_backend_config(section: Mapping[str, Any], name: str, extra: Iterable[str] = ()) -> None:
    """Validate the backend keys of ``[plugins.NAME]``: ``backend`` (``"sqlite"``,
    the default, or ``"memory"``) and ``database`` (a file path; default
    ``<data_dir>/dimsekit.sqlite``).  ``extra`` are the plugin's own keys.

    :raises ConfigError: naming the key and the fix.
    """
    allowed = {"backend", "database", *extra}
    for key in section:
        if key not in allowed:
            raise ConfigError(f"plugins.{name}.{key}: unknown key; the keys of [plugins.{name}] are: {', '.join(sorted(allowed))}")
    backend = section.get("backend", "sqlite")
    if backend not in ("sqlite", "memory"):
        raise ConfigError(f'plugins.{name}.backend: {backend!r} is not a backend; use "sqlite" (kept on disk) or "memory"')
    database = section.get("database")
    if database is not None and (not isinstance(database, str) or not database.strip()):
        raise ConfigError(f"plugins.{name}.database: give the SQLite file as a non-empty string")


def backend_from_config(ae: Any, name: str) -> InstanceBackend:
    """The backend ``[plugins.NAME]`` of the AE's configuration asks for."""
    section = ae.config.plugins.get(name, {})
    if section.get("backend", "sqlite") == "memory":
        return MemoryBackend()
    database = section.get("database") or str(Path(ae.config.node.data_dir) / DATABASE_NAME)
    return SQLiteBackend(database, ae.reactor)


# -- the service base ---------------------------------------------------------------------


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class NormalizedService:
    """A normalized SOP class (or a few sharing one kind of instance) as handlers.

    Subclass it and override what your SOP class does; the defaults are the
    plain DIMSE-N semantics on an :class:`InstanceRegistry`:

    * :meth:`create` -- validate / complete an N-CREATE's Attribute List
      (default: take it as it is);
    * :meth:`modify` -- apply an N-SET (default: :func:`apply_modifications`);
    * :meth:`select` -- answer an N-GET (default: :func:`select_attributes`;
      unsupported attributes, when :attr:`maintained` is set, give the
      warning :attr:`unsupported_status`);
    * :attr:`actions` / :attr:`events` -- Action / Event Type ID -> handler
      ``(service, request) -> result``; any other ID gets 0x0123 / 0x0113;
    * :meth:`created`, :meth:`modified`, :meth:`deleted` -- called after the
      change is stored (notify, fire hooks);
    * :meth:`open_backend` -- where instances live (default: the AE's
      ``[plugins.NAME]`` section, see :func:`backend_from_config`).

    Each of these may return a value or a Deferred/coroutine of one, and
    raise :class:`NServiceError` to answer with its status.

    :param name: service name (logs, conformance statement, config section).
    :param operations: SOP Class UID -> the DIMSE-N operations served for it
        (``{"1.2...3.3": ("N-CREATE", "N-SET")}``); the other DIMSE-N
        operations on that SOP class are answered 0x0211 Unrecognized Operation.
    :param kind: the registry namespace (default ``name``).
    """

    #: top-level tags the SOP class keeps (for N-GET's unsupported-attribute warning); None: no check.
    maintained: frozenset[int] | None = None
    #: the warning for N-GET of attributes not maintained: 0x0107 Attribute List Error (PS3.7 Annex C).
    unsupported_status: int = ATTRIBUTE_LIST_ERROR
    #: what an empty value in an N-SET means (see :func:`apply_modifications`).
    empty_modification: str = "keep"

    def __init__(
        self,
        name: str,
        operations: Mapping[str, Iterable[str]],
        *,
        kind: str | None = None,
        transfer_syntaxes: tuple[str, ...] = UNCOMPRESSED_TRANSFER_SYNTAXES,
    ) -> None:
        self.name = name
        self.kind = kind or name
        self.operations = {str(k): tuple(v) for k, v in operations.items()}
        for sop_class, ops in self.operations.items():
            unknown = set(ops) - set(N_COMMANDS)
            if unknown:
                raise ValueError(f"{name}: {sorted(unknown)} are not DIMSE-N operations (SOP class {sop_class})")
        self.transfer_syntaxes = transfer_syntaxes
        self.actions: dict[int, Callable[..., Any]] = {}
        self.events: dict[int, Callable[..., Any]] = {}
        self._registries: weakref.WeakKeyDictionary[Any, InstanceRegistry] = weakref.WeakKeyDictionary()
        self._fixed: InstanceRegistry | None = None

    # -- declaration ------------------------------------------------------------------

    def service_classes(self) -> list[ServiceClass]:
        """One :class:`ServiceClass` per SOP class, for ``dimsekit_service_classes``."""
        table = {
            "N-CREATE": self._n_create,
            "N-SET": self._n_set,
            "N-GET": self._n_get,
            "N-ACTION": self._n_action,
            "N-DELETE": self._n_delete,
            "N-EVENT-REPORT": self._n_event_report,
        }
        declared = []
        for sop_class, ops in self.operations.items():
            handlers = {
                command: (table[command] if command in ops else self._unrecognized)
                for command in N_COMMANDS
                if command != "N-EVENT-REPORT" or command in ops
            }
            declared.append(
                ServiceClass(
                    name=self.name,
                    sop_classes=(sop_class,),
                    handlers=handlers,
                    transfer_syntaxes=self.transfer_syntaxes,
                    scu_role="N-EVENT-REPORT" in ops,
                )
            )
        return declared

    # -- where instances live -----------------------------------------------------------

    def use_registry(self, registry: InstanceRegistry | None) -> None:
        """Serve every AE from ``registry`` (tests, embedding) instead of :meth:`open_backend`."""
        self._fixed = registry

    def open_backend(self, ae: Any) -> InstanceBackend:
        """The backend for an AE (called once per AE)."""
        return backend_from_config(ae, self.name)

    def registry_for(self, ae: Any) -> InstanceRegistry:
        """The :class:`InstanceRegistry` of an AE (one per AE, made on first use)."""
        if self._fixed is not None:
            return self._fixed
        registry = self._registries.get(ae)
        if registry is None:
            registry = InstanceRegistry(self.kind, self.open_backend(ae))
            self._registries[ae] = registry
        return registry

    def registry(self, request: Request) -> InstanceRegistry:
        """The registry of the AE that received ``request``."""
        return self.registry_for(request.association.ae)

    # -- overridable behaviour ------------------------------------------------------------

    def create(self, request: Request, uid: str, dataset: Dataset) -> Any:
        """The data set to store for an N-CREATE (default: as received)."""
        return dataset

    def modify(self, request: Request, instance: Instance, modifications: Dataset) -> Any:
        """The instance's data set after an N-SET (default: the modifications applied)."""
        return apply_modifications(instance.dataset, modifications, empty=self.empty_modification)

    def select(self, request: Request, instance: Instance, tags: tuple[int, ...]) -> Any:
        """``(status, dataset)`` for an N-GET (default: :func:`select_attributes`)."""
        selected, unsupported = select_attributes(instance.dataset, tags, maintained=self.maintained)
        for tag in tags:  # the identity attributes live in the command set, not the data set
            if tag == 0x00080016 and tag not in selected:
                selected.SOPClassUID = instance.sop_class_uid
            elif tag == 0x00080018 and tag not in selected:
                selected.SOPInstanceUID = instance.sop_instance_uid
        if unsupported:
            return self.unsupported_status, selected, {"AttributeIdentifierList": unsupported}
        return SUCCESS, selected

    def create_response(self, request: Request, instance: Instance) -> Dataset | None:
        """The N-CREATE-RSP Attribute List (default: the created attributes)."""
        return instance.dataset

    def created(self, request: Request, instance: Instance) -> Any:
        """Called after an N-CREATE was stored."""

    def modified(self, request: Request, before: Instance, after: Instance) -> Any:
        """Called after an N-SET was stored."""

    def deleted(self, request: Request, uid: str) -> Any:
        """Called after an N-DELETE removed an instance."""

    # -- handlers -------------------------------------------------------------------------

    def _unrecognized(self, request: Request) -> tuple[int, None, dict[str, Any]]:
        return UNRECOGNIZED_OPERATION, None, {
            "ErrorComment": f"{request.name} is not an operation of this SOP class"
        }

    async def _answer(self, work: Any) -> Any:
        try:
            return await work
        except NServiceError as error:
            status, dataset, fields = error.response()
            _log.info("{service}: answered 0x{status:04X} ({comment})", service=self.name, status=status, comment=for_log(error.comment or ""))
            return status, dataset, fields

    def _n_create(self, request: Request) -> Any:
        return self._answer(self._create(request))

    async def _create(self, request: Request) -> Any:
        uid, assigned = creation_uid(request)
        dataset = received_dataset(request)
        stored = await _resolve(self.create(request, uid, dataset))
        registry = self.registry(request)
        instance = await registry.create(request.sop_class_uid, uid, stored)
        await _resolve(self.created(request, instance))
        fields = {"AffectedSOPInstanceUID": uid} if assigned else {}
        return SUCCESS, self.create_response(request, instance), fields

    def _n_set(self, request: Request) -> Any:
        return self._answer(self._set(request))

    async def _set(self, request: Request) -> Any:
        uid = request.sop_instance_uid
        modifications = received_dataset(request)
        registry = self.registry(request)
        before, after = await registry.modify(uid, lambda instance: self.modify(request, instance, modifications))
        await _resolve(self.modified(request, before, after))
        return SUCCESS, None, {"AffectedSOPInstanceUID": uid}

    def _n_get(self, request: Request) -> Any:
        return self._answer(self._get(request))

    async def _get(self, request: Request) -> Any:
        uid = request.sop_instance_uid
        instance = await self.registry(request).require(uid)
        return await _resolve(self.select(request, instance, attribute_identifiers(request.command)))

    def _n_delete(self, request: Request) -> Any:
        return self._answer(self._delete(request))

    async def _delete(self, request: Request) -> Any:
        uid = request.sop_instance_uid
        await self.registry(request).delete(uid)
        await _resolve(self.deleted(request, uid))
        return SUCCESS, None, {"AffectedSOPInstanceUID": uid}

    def _n_action(self, request: Request) -> Any:
        return self._answer(self._typed(request, "ActionTypeID", self.actions, NoSuchAction))

    def _n_event_report(self, request: Request) -> Any:
        return self._answer(self._typed(request, "EventTypeID", self.events, NoSuchEventType))

    async def _typed(self, request: Request, key: str, table: Mapping[int, Callable[..., Any]], error: type) -> Any:
        type_id = int(request.command.get(key, -1))
        handler = table.get(type_id)
        if handler is None:
            raise error(type_id)
        result = await _resolve(handler(self, request))
        if isinstance(result, int):
            return result, None, {key: type_id}
        status, dataset, *rest = result
        fields = {key: type_id, **(rest[0] if rest else {})}
        return status, dataset, fields
