"""Storage Commitment Push Model SCP (PS3.4 Annex J) as a plugin.

One SOP class, one well-known instance:

* Storage Commitment Push Model SOP Class (1.2.840.10008.1.20.1), well-known
  SOP Instance 1.2.840.10008.1.20.1.1 (J.3.1).

The exchange (J.3.2, J.3.3):

1. The SCU sends N-ACTION, Action Type ID 1 "Request Storage Commitment",
   with a Transaction UID and a Referenced SOP Sequence (SOP Class and
   Instance UID of each instance it wants committed).  The request is kept
   (SQLite, see below) and answered at once with Success.
2. Then each instance is checked against the archive (``dimsekit_archive``,
   :meth:`~dimsekit.interfaces.IArchive.lookup` by SOP Instance UID; the SOP
   Class must match what the archive stored).
3. The result goes back in an N-EVENT-REPORT of the Storage Commitment
   SOP Class: Event Type ID 1 when every instance is committed (Referenced
   SOP Sequence), 2 when some failed (Failed SOP Sequence with a Failure
   Reason each, and the committed ones in Referenced SOP Sequence).  The SCP
   sends it (PS3.7 10.1.1: the SCP of the SOP class invokes N-EVENT-REPORT):

   * on the association of the N-ACTION, if that association is still there;
   * otherwise on a new association to the requestor, found by the calling
     AE title of the N-ACTION in the known AEs (``[[remote]]``; over TLS,
     with the node's ``[tls]`` settings, when that entry has ``tls = true``), on which
     dimsekit proposes SCP/SCU Role Selection with itself as SCP only of the
     Storage Commitment Push Model SOP Class (PS3.7 D.3.3.4; J.3.3: the
     association-requestor is then the SCP);
   * when the requestor is not a known AE, or cannot be reached after
     ``max_attempts`` tries ``retry_interval`` seconds apart, on the next
     association it opens to us that has the Storage Commitment context.

   A report counts as delivered when the SCU answers it with a Success or
   Warning status; its request is then forgotten.  One the SCU has answered
   with a failure status ``max_attempts`` times (an SCU that cannot take
   reports: 0211H on every association it opens) is given up, with a log
   line: it is not kept and sent again for ever.  (Those answers are counted
   since the node started.)  The SCU may ask again.

Statuses of the N-ACTION (PS3.4 J.3.2.1.2 leaves the failures to PS3.7 Annex C):

======  ==========================================================================
0x0000  the request is kept; the N-EVENT-REPORT follows
0x0112  No Such SOP Instance: not the well-known instance 1.2.840.10008.1.20.1.1
0x0120  Missing Attribute: no Transaction UID / Referenced SOP Sequence / item UID
0x0121  Missing Attribute Value: one of those is empty (the list names them)
0x0106  Invalid Attribute Value: the Transaction UID is not a UID, or a value
        cannot be read at all
0x0110  Processing Failure: the Action Information cannot be decoded
0x0123  No Such Action: an Action Type ID other than 1
0x0211  Unrecognized Operation: N-CREATE, N-SET, N-GET, N-DELETE
======  ==========================================================================

Failure Reasons in the report (the Failure Reason (0008,1197) values PS3.4 Annex J names):

======  ==========================================================================
0x0112  No such object instance: the archive has no instance with that UID (or
        the UID is not a valid UID)
0x0119  Class / Instance conflict: the archive has it under another SOP Class
0x0110  Processing failure: no archive, or the archive failed to answer
0x0131  Duplicate transaction UID: a request with this Transaction UID is
        still pending (every instance of the new request fails with it)
======  ==========================================================================

Pending requests live in ``<data_dir>/dimsekit.sqlite``, table
``nservice_instance``, kind ``commitment`` (keyed by Transaction UID; the
requestor's AE title kept as Requesting AE (0074,1236)), and survive a
restart: an application entity made before the reactor runs (the ``twistd
dimsekit`` node, an application setting up its services) resends them when
the reactor starts; one made later (the CLI tools) does so only when
:meth:`CommitmentService.recover` is called.

Settings::

    [plugins.commitment]
    backend = "sqlite"       # or "memory" (pending requests lost at exit)
    database = "..."         # default <data_dir>/dimsekit.sqlite
    retry_interval = 60      # seconds between attempts to reach the requestor
    max_attempts = 10        # then wait for the requestor to associate (0 = no limit);
                             # a report the requestor refused this many times is given up
    report_delay = 0         # seconds between the N-ACTION response and the checks
    connect_timeout = 10     # seconds to connect to the requestor
"""

from __future__ import annotations

import math
import os
import sqlite3
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from dimsekit.config import Config, ConfigError
from dimsekit.datasets import first_int
from dimsekit.dimse import status as dimse_status
from dimsekit.hookspecs import hookimpl
from dimsekit.libraries_log import about
from dimsekit.nservice import (
    DATABASE_NAME,
    SUCCESS,
    DuplicateInstance,
    InstanceRegistry,
    InvalidAttributeValue,
    MemoryBackend,
    MissingAttribute,
    NormalizedService,
    NoSuchInstance,
    SQLiteBackend,
    check_backend_config,
    check_required,
    is_valid_uid,
    received_dataset,
)
from dimsekit.registry import ServiceClass
from dimsekit.uids import by_keyword

__all__ = [
    "STORAGE_COMMITMENT_PUSH",
    "STORAGE_COMMITMENT_INSTANCE",
    "REQUEST_STORAGE_COMMITMENT",
    "EVENT_ALL_COMMITTED",
    "EVENT_SOME_FAILED",
    "FAILURE_REASONS",
    "Settings",
    "Pending",
    "CommitmentService",
    "service",
    "request_dataset",
    "report_dataset",
    "read_report",
]

_log = Logger(namespace="dimsekit.commitment")

STORAGE_COMMITMENT_PUSH = by_keyword("StorageCommitmentPushModel")  # 1.2.840.10008.1.20.1
STORAGE_COMMITMENT_INSTANCE = by_keyword("StorageCommitmentPushModelInstance")  # ...1.20.1.1

#: Action Type ID of N-ACTION "Request Storage Commitment" (PS3.4 Table J.3-1).
REQUEST_STORAGE_COMMITMENT = 1
#: Event Type IDs of the N-EVENT-REPORT (PS3.4 Table J.3-2).
EVENT_ALL_COMMITTED = 1
EVENT_SOME_FAILED = 2

#: Failure Reason (0008,1197) values (PS3.4 Annex J, Event Information of Event Type 2).
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
RESOURCE_LIMITATION = 0x0213
REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
CLASS_INSTANCE_CONFLICT = 0x0119
DUPLICATE_TRANSACTION_UID = 0x0131
FAILURE_REASONS: dict[int, str] = {
    PROCESSING_FAILURE: "Processing failure",
    NO_SUCH_OBJECT_INSTANCE: "No such object instance",
    RESOURCE_LIMITATION: "Resource limitation",
    REFERENCED_SOP_CLASS_NOT_SUPPORTED: "Referenced SOP Class not supported",
    CLASS_INSTANCE_CONFLICT: "Class / Instance conflict",
    DUPLICATE_TRANSACTION_UID: "Duplicate transaction UID",
}

_SERVICE = "commitment"
dimse_status.register(_SERVICE, 0x0131, "Duplicate transaction UID")

#: What an N-ACTION Action Information must hold (PS3.4 Table J.3-1: all Type 1).
REQUEST_REQUIREMENTS: dict[str, Any] = {
    "TransactionUID": "1",
    "ReferencedSOPSequence": ("1", {"ReferencedSOPClassUID": "1", "ReferencedSOPInstanceUID": "1"}),
}

_TRANSACTION_UID_TAG = 0x00081195
_KIND = "commitment"


# -- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """``[plugins.commitment]``, checked."""

    backend: str = "sqlite"
    database: str | None = None
    retry_interval: float = 60.0
    max_attempts: int = 10
    report_delay: float = 0.0
    connect_timeout: float = 10.0

    @classmethod
    def from_config(cls, config: Config) -> Settings:
        """Read and check the section (:class:`ConfigError` names the key)."""
        section = config.plugins.get(_SERVICE, {})
        check_backend_config(
            section, _SERVICE, extra=("retry_interval", "max_attempts", "report_delay", "connect_timeout")
        )
        values: dict[str, Any] = {}
        for key in ("retry_interval", "report_delay", "connect_timeout"):
            if key in section:
                value = section[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                    raise ConfigError(f"plugins.commitment.{key}: give a number of seconds, 0 or more (got {value!r})")
                values[key] = float(value)
        if values.get("retry_interval", 1.0) == 0:
            raise ConfigError("plugins.commitment.retry_interval: must be more than 0 seconds")
        if "max_attempts" in section:
            value = section["max_attempts"]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"plugins.commitment.max_attempts: give a whole number, 0 for no limit (got {value!r})")
            values["max_attempts"] = value
        return cls(backend=section.get("backend", "sqlite"), database=section.get("database"), **values)

    def database_path(self, config: Config) -> Path:
        """The SQLite file of the pending requests."""
        return Path(self.database or Path(config.node.data_dir) / DATABASE_NAME).expanduser().resolve()


# -- data sets ---------------------------------------------------------------------------------


def request_dataset(transaction_uid: str, references: list[tuple[str, str]]) -> Dataset:
    """The N-ACTION Action Information (PS3.4 Table J.3-1) for ``(SOP Class, SOP Instance)`` pairs."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = [_reference(sop_class, sop_instance) for sop_class, sop_instance in references]
    return ds


def _reference(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


def report_dataset(
    transaction_uid: str,
    committed: list[tuple[str, str]],
    failed: list[tuple[str, str, int]],
    retrieve_ae_title: str | None = None,
) -> tuple[int, Dataset]:
    """``(Event Type ID, Event Information)`` of the N-EVENT-REPORT (PS3.4 Table J.3-2)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    if retrieve_ae_title and committed:
        ds.RetrieveAETitle = retrieve_ae_title
    if committed:
        ds.ReferencedSOPSequence = [_reference(c, i) for c, i in committed]
    if not failed:
        return EVENT_ALL_COMMITTED, ds
    ds.FailedSOPSequence = [_reference(c, i, reason) for c, i, reason in failed]
    return EVENT_SOME_FAILED, ds


def read_report(dataset: Dataset | None) -> tuple[str, list[tuple[str, str]], list[tuple[str, str, int]]]:
    """``(Transaction UID, committed, failed)`` from an N-EVENT-REPORT's Event Information
    (what an SCU does with it); missing parts read as empty."""
    if dataset is None:
        return "", [], []
    committed = [
        (str(item.get("ReferencedSOPClassUID", "")), str(item.get("ReferencedSOPInstanceUID", "")))
        for item in dataset.get("ReferencedSOPSequence", []) or []
    ]
    failed = [
        (
            str(item.get("ReferencedSOPClassUID", "")),
            str(item.get("ReferencedSOPInstanceUID", "")),
            first_int(item.get("FailureReason"), PROCESSING_FAILURE),
        )
        for item in dataset.get("FailedSOPSequence", []) or []
    ]
    return str(dataset.get("TransactionUID", "")), committed, failed


# -- the service --------------------------------------------------------------------------------


@dataclass(eq=False)
class Pending:
    """A commitment request whose report has not been delivered yet."""

    transaction_uid: str
    #: the calling AE title of the N-ACTION: where the report goes
    requestor: str
    #: (SOP Class UID, SOP Instance UID) of each referenced instance
    references: list[tuple[str, str]]
    #: kept in the registry (False: a duplicate's report, sent once, never stored)
    persisted: bool = True
    #: every instance fails with this reason (0x0131 for a duplicate Transaction UID)
    failure_reason: int | None = None
    attempts: int = 0
    #: how many times the requestor answered the report with a failure status (since the start)
    refused: int = 0
    #: the last report computed (Event Type ID, data set)
    report: tuple[int, Dataset] | None = field(default=None, repr=False)

    @property
    def slot(self) -> Any:
        """Its key among the requests being worked on or waiting: the Transaction
        UID, or for a duplicate's report (which has the Transaction UID of the
        request it duplicates) the object itself, so that neither replaces the other."""
        return self.transaction_uid if self.persisted else id(self)

    def stored(self) -> Dataset:
        ds = request_dataset(self.transaction_uid, self.references)
        ds.RequestingAE = self.requestor
        return ds

    @classmethod
    def from_stored(cls, dataset: Dataset) -> Pending:
        references = [
            (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
            for item in dataset.get("ReferencedSOPSequence", []) or []
        ]
        return cls(str(dataset.TransactionUID), str(dataset.get("RequestingAE", "") or ""), references)


class CommitmentService(NormalizedService):
    """The Storage Commitment Push Model SCP.  See the module docstring."""

    def __init__(self) -> None:
        super().__init__(_SERVICE, {STORAGE_COMMITMENT_PUSH: ("N-ACTION",)}, kind=_KIND)
        self.actions[REQUEST_STORAGE_COMMITMENT] = CommitmentService._request_commitment
        #: store key -> registry (SQLite ones by file, so a restarted AE finds them)
        self._stores: dict[Any, InstanceRegistry] = {}
        self._memory: weakref.WeakKeyDictionary[Any, InstanceRegistry] = weakref.WeakKeyDictionary()
        #: (store key, transaction UID) being worked on
        self._busy: set[Any] = set()
        #: store key -> {Pending.slot: Pending} waiting for their requestor to associate
        self._waiting: dict[Any, dict[Any, Pending]] = {}
        self._recovery_scheduled: set[Any] = set()
        #: ``connect(ae, remote, **associate_kwargs) -> Deferred[Association]`` (tests replace it)
        self.connect = _connect
        self._archives: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    # -- where pending requests live -----------------------------------------------------------

    @staticmethod
    def settings(ae: Any) -> Settings:
        return Settings.from_config(ae.config)

    def _store_key(self, ae: Any) -> Any:
        settings = self.settings(ae)
        if settings.backend == "memory":
            return ("memory", id(ae))
        return ("sqlite", str(settings.database_path(ae.config)))

    def registry_for(self, ae: Any) -> InstanceRegistry:
        """Pending requests of an AE: one registry per SQLite file (shared by every
        AE on it, so the AE that resends after a restart finds them), or per AE in memory."""
        if self._fixed is not None:
            return self._fixed
        settings = self.settings(ae)
        if settings.backend == "memory":
            registry = self._memory.get(ae)
            if registry is None:
                registry = self._memory[ae] = InstanceRegistry(_KIND, MemoryBackend())
            return registry
        key = self._store_key(ae)
        registry = self._stores.get(key)
        if registry is None:
            registry = self._stores[key] = InstanceRegistry(_KIND, SQLiteBackend(key[1], ae.reactor))
        return registry

    def archive_for(self, ae: Any) -> Any:
        """The archive of an AE (``dimsekit_archive``), or None."""
        archive = self._archives.get(ae)
        if archive is None or getattr(archive, "closed", False):
            archive = ae.pm.hook.dimsekit_archive(config=ae.config)
            if archive is not None:
                self._archives[ae] = archive
        return archive

    # -- N-ACTION ---------------------------------------------------------------------------------

    @staticmethod
    def _read_request(request: Any) -> tuple[str, list[tuple[str, str]]]:
        """Transaction UID and (SOP Class, SOP Instance) pairs of an N-ACTION's Action Information."""
        dataset = received_dataset(request)  # 0x0110 / 0x0106 when it cannot be read
        if not dataset:
            raise MissingAttribute("no Action Information", attributes=(_TRANSACTION_UID_TAG, 0x00081199))
        check_required(dataset, REQUEST_REQUIREMENTS)
        transaction_uid = str(dataset.TransactionUID).strip()
        if not is_valid_uid(transaction_uid):
            bad = Dataset()
            bad.TransactionUID = dataset.TransactionUID
            raise InvalidAttributeValue("Transaction UID is not a UID", attributes=(_TRANSACTION_UID_TAG,), dataset=bad)
        references = []
        for item in dataset.ReferencedSOPSequence:
            for keyword in ("ReferencedSOPClassUID", "ReferencedSOPInstanceUID"):
                if item[keyword].VM > 1:  # echoed back as "['1.2', '1.3']", the SCU could not match it
                    raise InvalidAttributeValue(f"{keyword} has several values", attributes=(0x00081199,))
            references.append((str(item.ReferencedSOPClassUID).strip(), str(item.ReferencedSOPInstanceUID).strip()))
        return transaction_uid, references

    async def _request_commitment(self, request: Any) -> int:
        association = request.association
        ae = association.ae
        if request.sop_instance_uid != STORAGE_COMMITMENT_INSTANCE:
            raise NoSuchInstance(request.sop_instance_uid)
        transaction_uid, references = self._read_request(request)
        pending = Pending(transaction_uid, association.remote_ae_title, references)
        key = self._store_key(ae)
        try:
            await self.registry_for(ae).create(STORAGE_COMMITMENT_PUSH, transaction_uid, pending.stored())
        except DuplicateInstance:
            # PS3.4 J.3.3: every instance of this request fails with 0x0131
            pending.persisted = False
            pending.failure_reason = DUPLICATE_TRANSACTION_UID
        _log.info(
            "storage commitment {txn} requested by {caller}: {n} instance(s)",
            txn=transaction_uid, caller=pending.requestor or "?", n=len(references),
        )
        delay = self.settings(ae).report_delay
        # after this handler returns, so that the N-ACTION-RSP goes out first
        ae.reactor.callLater(delay, self._start, ae, key, pending, association)
        return SUCCESS

    # -- checking and reporting -----------------------------------------------------------------

    def _start(self, ae: Any, key: Any, pending: Pending, association: Any = None) -> Deferred:
        d = Deferred.fromCoroutine(self._process(ae, key, pending, association))
        d.addErrback(lambda f: _log.failure("storage commitment {txn}: processing failed", f, txn=pending.transaction_uid))
        return d

    async def check(self, ae: Any, pending: Pending) -> tuple[int, Dataset]:
        """Look each referenced instance up in the archive; the report to send."""
        committed: list[tuple[str, str]] = []
        failed: list[tuple[str, str, int]] = []
        archive = None if pending.failure_reason is not None else self.archive_for(ae)
        if archive is None and pending.failure_reason is None:
            _log.warn("storage commitment {txn}: no archive; every instance fails", txn=pending.transaction_uid)
        for sop_class, sop_instance in pending.references:
            if pending.failure_reason is not None:
                failed.append((sop_class, sop_instance, pending.failure_reason))
                continue
            if archive is None:
                failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
                continue
            if not is_valid_uid(sop_instance):
                failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
                continue
            try:
                stored = await archive.lookup(sop_instance)
            except Exception as exc:
                _log.warn("storage commitment: lookup of {uid} failed: {error}", uid=sop_instance, error=exc)
                failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
                continue
            if stored is None:
                failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
            elif str(stored.sop_class_uid) != sop_class:
                failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
            else:
                committed.append((sop_class, sop_instance))
        peer = pending.requestor or ""
        with about(peer, lambda: f"writing the storage commitment report {pending.transaction_uid} for {peer or '-'}"):
            return report_dataset(pending.transaction_uid, committed, failed, ae.ae_title)

    async def _process(self, ae: Any, key: Any, pending: Pending, association: Any = None) -> bool:
        """Check and deliver one request; True when the report was delivered."""
        # one delivery per request at a time (a retry and a returning requestor may race)
        busy = (key, pending.slot)
        if busy in self._busy:
            return False
        self._busy.add(busy)
        try:
            pending.report = await self.check(ae, pending)
            delivered = await self._deliver(ae, pending, association)
            if delivered or self._given_up(ae, pending):
                await self._forget(ae, key, pending)
                if not delivered:
                    _log.warn(
                        "storage commitment {txn}: {caller} refused the report {n} times; it is given up "
                        "(max_attempts; the requestor may ask again)",
                        txn=pending.transaction_uid, caller=pending.requestor or "?", n=pending.refused,
                    )
                return delivered
        finally:
            self._busy.discard(busy)
        self._retry_later(ae, key, pending)
        return False

    async def _forget(self, ae: Any, key: Any, pending: Pending) -> None:
        """The request is done with (its report delivered, or given up)."""
        self._waiting.get(key, {}).pop(pending.slot, None)
        if pending.persisted:
            try:
                await self.registry_for(ae).delete(pending.transaction_uid)
            except NoSuchInstance:
                pass

    def _given_up(self, ae: Any, pending: Pending) -> bool:
        """The requestor refused the report ``max_attempts`` times: no more tries."""
        limit = self.settings(ae).max_attempts
        return bool(limit) and pending.refused >= limit

    async def _deliver(self, ae: Any, pending: Pending, association: Any = None) -> bool:
        assert pending.report is not None
        event_type, dataset = pending.report
        summary = _summary(pending.report)
        if association is not None and _can_report_on(association):
            try:
                response = await association.n_event_report(
                    STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, event_type, dataset
                )
            except Exception as exc:
                _log.info(
                    "storage commitment {txn}: the report could not go on the N-ACTION's association ({error})",
                    txn=pending.transaction_uid, error=exc,
                )
            else:
                if _delivered(response.status):
                    _log.info(
                        "storage commitment {txn}: report ({summary}) delivered to {caller} on the same association",
                        txn=pending.transaction_uid, summary=summary, caller=pending.requestor,
                    )
                    return True
                pending.refused += 1
                _log.warn(
                    "storage commitment {txn}: {caller} answered the report {status}",
                    txn=pending.transaction_uid, caller=pending.requestor, status=dimse_status.describe(response.status),
                )
                if self._given_up(ae, pending):
                    return False
        remote = ae.config.remote(pending.requestor) if pending.requestor else None
        if remote is None:
            _log.warn(
                "storage commitment {txn}: {caller} is not a known AE ([[remote]]); the report waits "
                "for it to associate again",
                txn=pending.transaction_uid, caller=pending.requestor or "?",
            )
            return False
        pending.attempts += 1
        settings = self.settings(ae)
        try:
            other = await self.connect(
                ae, remote,
                contexts=[STORAGE_COMMITMENT_PUSH],
                roles={STORAGE_COMMITMENT_PUSH: (False, True)},
                connect_timeout=settings.connect_timeout,
            )
        except Exception as exc:
            _log.warn(
                "storage commitment {txn}: cannot associate with {caller} at {host}:{port} ({error})",
                txn=pending.transaction_uid, caller=remote.ae_title, host=remote.host, port=remote.port, error=exc,
            )
            return False
        delivered = False
        try:
            response = await other.n_event_report(STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE, event_type, dataset)
            delivered = _delivered(response.status)
            if delivered:
                _log.info(
                    "storage commitment {txn}: report ({summary}) delivered to {caller} on a new association",
                    txn=pending.transaction_uid, summary=summary, caller=remote.ae_title,
                )
            else:
                pending.refused += 1
                _log.warn(
                    "storage commitment {txn}: {caller} answered the report {status}",
                    txn=pending.transaction_uid, caller=remote.ae_title, status=dimse_status.describe(response.status),
                )
        except Exception as exc:
            _log.warn(
                "storage commitment {txn}: sending the report to {caller} failed ({error})",
                txn=pending.transaction_uid, caller=remote.ae_title, error=exc,
            )
        finally:
            if other.established and not other.ended:
                try:
                    await other.release()
                except Exception:
                    other.abort("storage commitment report sent")
        return delivered

    def _retry_later(self, ae: Any, key: Any, pending: Pending) -> None:
        settings = self.settings(ae)
        remote = ae.config.remote(pending.requestor) if pending.requestor else None
        if remote is None or (settings.max_attempts and pending.attempts >= settings.max_attempts):
            if remote is not None:
                _log.warn(
                    "storage commitment {txn}: {caller} not reached after {n} attempt(s); the report waits "
                    "for it to associate again (or for a restart)",
                    txn=pending.transaction_uid, caller=pending.requestor, n=pending.attempts,
                )
            self._waiting.setdefault(key, {})[pending.slot] = pending
            return
        ae.reactor.callLater(settings.retry_interval, self._start, ae, key, pending)

    # -- the requestor came back; restarts ----------------------------------------------------------

    def association_established(self, association: Any) -> None:
        """A requestor with waiting reports associated (with the Storage Commitment
        context, us as SCP): send them on this association."""
        if association.is_requestor or not self._waiting or not _can_report_on(association):
            return
        ae = association.ae
        try:
            key = self._store_key(ae)
        except ConfigError:
            return
        waiting = self._waiting.get(key, {})
        caller = association.remote_ae_title
        delay = self.settings(ae).report_delay
        for pending in [p for p in waiting.values() if p.requestor == caller]:
            pending.attempts = 0
            # not from inside the establishment: let the requestor get ready first
            ae.reactor.callLater(delay, self._start, ae, key, pending, association)

    def schedule_recovery(self, config: Config, reactor: Any = None) -> None:
        """Resend the pending reports of ``config``'s database once the reactor
        runs -- if it is not running yet (an AE made while it runs, like a CLI
        tool's, does nothing here; call :meth:`recover`)."""
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if getattr(reactor, "running", False):
            return
        try:
            settings = Settings.from_config(config)
        except ConfigError:
            return
        if settings.backend != "sqlite":
            return
        path = settings.database_path(config)
        if str(path) in self._recovery_scheduled or not path.exists():
            return
        self._recovery_scheduled.add(str(path))
        reactor.callWhenRunning(self._recover_at_start, config, reactor, path)

    def _recover_at_start(self, config: Config, reactor: Any, path: Path) -> Deferred:
        def found(count: int) -> Any:
            self._recovery_scheduled.discard(str(path))
            if not count:
                return None
            from dimsekit.ae import ApplicationEntity

            return Deferred.fromCoroutine(self.recover(ApplicationEntity(config=config, reactor=reactor)))

        d = deferToThread(_count_pending, path)
        d.addCallback(found)
        d.addErrback(lambda f: _log.failure("storage commitment: resending pending reports failed", f))
        return d

    async def recover(self, ae: Any) -> int:
        """Start delivering every pending request of ``ae``'s database (after a
        restart); returns how many there were."""
        registry = self.registry_for(ae)
        key = self._store_key(ae)
        uids = await registry.uids()
        for uid in uids:
            instance = await registry.get(uid)
            if instance is None:
                continue
            pending = Pending.from_stored(instance.dataset)
            _log.info(
                "storage commitment {txn}: resending the report for {caller} after a restart",
                txn=pending.transaction_uid, caller=pending.requestor or "?",
            )
            self._start(ae, key, pending)
        return len(uids)


def _count_pending(path: Path) -> int:
    """Pending commitment requests in the database (read only; 0 when there is no table)."""
    if not os.path.exists(path):
        return 0
    try:
        # as a URI: a '?', '#' or '%' in the directory's name is percent-encoded
        connection = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True, timeout=10.0)
    except sqlite3.Error:
        return 0
    try:
        row = connection.execute("SELECT count(*) FROM nservice_instance WHERE kind = ?", (_KIND,)).fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0
    finally:
        connection.close()


def _connect(ae: Any, remote: Any, **kwargs: Any) -> Deferred:
    """Associate with a known AE (TLS when its ``[[remote]]`` says ``tls = true``)."""
    return ae.associate(remote.host, remote.port, called=remote.ae_title, tls=remote.tls, **kwargs)


def _can_report_on(association: Any) -> bool:
    """The association is up and we may invoke N-EVENT-REPORT on it (we are SCP)."""
    negotiated = association.negotiated
    return bool(
        association.established
        and not association.ended
        and association.protocol is not None
        and negotiated is not None
        and negotiated.context_for(STORAGE_COMMITMENT_PUSH, as_scu=False) is not None
    )


def _delivered(status: int) -> bool:
    return dimse_status.category(status) in (dimse_status.Category.SUCCESS, dimse_status.Category.WARNING)


def _summary(report: tuple[int, Dataset]) -> str:
    event_type, dataset = report
    _, committed, failed = read_report(dataset)
    return f"event type {event_type}: {len(committed)} committed, {len(failed)} failed"


#: The plugin's service (one per process).
service = CommitmentService()


@hookimpl
def dimsekit_configure(config: Config) -> None:
    """Check ``[plugins.commitment]``; resend pending reports when the reactor starts."""
    Settings.from_config(config)
    service.schedule_recovery(config)


@hookimpl
def dimsekit_service_classes() -> list[ServiceClass]:
    """Declare the Storage Commitment Push Model SOP Class, SCP role (N-ACTION)."""
    return service.service_classes()


@hookimpl
def dimsekit_on_association_established(association: Any) -> None:
    """Deliver waiting reports to a requestor that associated again."""
    try:
        service.association_established(association)
    except Exception:
        _log.failure("storage commitment: delivering waiting reports failed")
