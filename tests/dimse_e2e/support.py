"""Shared kit of the end-to-end DIMSE tests: dimsekit AEs on 127.0.0.1 sockets,
driven by the real reactor from ``twisted.trial.unittest.TestCase`` methods
(pytest runs them; each may be ``async def``).

:class:`Services` is a test plugin that serves one SOP class per DIMSE
primitive and records what each handler saw.  :class:`LoopbackTestCase`
makes listening and requesting AEs and cleans up after itself: every
association ends, every connection closes and every listening port stops
before the next test, so trial finds a clean reactor.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from dimsekit.ae import ApplicationEntity
from dimsekit.config import Config, Limits, NodeConfig, RemoteAE
from dimsekit.datasets import part10_info
from dimsekit.hookspecs import hookimpl
from dimsekit.plugin import make_plugin_manager
from dimsekit.registry import UNCOMPRESSED_TRANSFER_SYNTAXES, ServiceClass
from dimsekit.scu import STUDY_ROOT_FIND, STUDY_ROOT_GET, STUDY_ROOT_MOVE
from dimsekit.uids import VERIFICATION, by_keyword

CT = by_keyword("CTImageStorage")
MR = by_keyword("MRImageStorage")
SC = by_keyword("SecondaryCaptureImageStorage")
RT_PLAN = by_keyword("RTPlanStorage")
STORAGE = (CT, MR, SC, RT_PLAN)
#: A private SOP class (our UID root) served with every DIMSE-N handler.
N_CLASS = "1.2.826.0.1.3680043.9.7433.2.1"
#: Storage Commitment Push Model SOP Class.
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
#: A private SOP class a plugin declares with no handler at all.
NO_HANDLER_CLASS = "1.2.826.0.1.3680043.9.7433.2.2"

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG2000 = "1.2.840.10008.1.2.4.91"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

#: pydicom test files: uncompressed and compressed.
CT_FILE = get_testdata_file("CT_small.dcm")
MR_FILE = get_testdata_file("MR_small.dcm")
MR_IMPLICIT_FILE = get_testdata_file("MR_small_implicit.dcm")
MR_BIG_ENDIAN_FILE = get_testdata_file("MR_small_bigendian.dcm")
RT_PLAN_FILE = get_testdata_file("rtplan.dcm")
JPEG2000_FILE = get_testdata_file("JPEG2000.dcm")
JPEG_FILE = get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")


def file_dataset_bytes(path: str) -> bytes:
    """The data set bytes of a Part 10 file, as stored (no preamble, no meta)."""
    info = part10_info(path)
    with open(path, "rb") as f:
        f.seek(info.dataset_offset)
        return f.read()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def match(i: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = f"PATIENT^{i}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.9.7433.3.{i}"
    return ds


def counts(remaining: int | None, completed: int, failed: int, warning: int = 0) -> dict[str, int]:
    fields = {
        "NumberOfCompletedSuboperations": completed,
        "NumberOfFailedSuboperations": failed,
        "NumberOfWarningSuboperations": warning,
    }
    if remaining is not None:
        fields["NumberOfRemainingSuboperations"] = remaining
    return fields


class Stored:
    """What a storage handler received."""

    def __init__(self, request: Any) -> None:
        self.command = dict(request.command)
        self.transfer_syntax = request.transfer_syntax
        self.data = request.sink.open().read() if request.sink is not None else b""
        self.association = request.association


class Services:
    """A test plugin: a handler for every DIMSE primitive, recording what it saw.

    Attributes a test may replace before serving (or between requests):
    ``find_results`` (an iterable factory), ``store_status``, ``n_status``
    (status or (status, fields) of the N- handlers), ``retrieve_files``
    (the Part 10 files a C-GET/C-MOVE sends), ``destinations`` (C-MOVE
    destination AE title -> (host, port)).
    """

    def __init__(
        self, *, storage_ts: Iterable[str] = UNCOMPRESSED_TRANSFER_SYNTAXES, extra: Iterable[ServiceClass] = (),
        n_classes: Iterable[str] = (N_CLASS,),
    ) -> None:
        self.storage_ts = tuple(storage_ts)
        self.n_classes = tuple(n_classes)
        self.extra = tuple(extra)
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.stored: list[Stored] = []
        self.store_status: int = 0x0000
        self.find_count = 3
        self.find_states: list[str] = []
        self.retrieve_files: list[str] = [CT_FILE, MR_FILE]
        self.destinations: dict[str, tuple[str, int]] = {}
        self.n_status: int | tuple[int, dict[str, Any]] = 0x0000
        self.instances: dict[str, Dataset] = {}
        self.requests: list[Any] = []

    def record(self, request: Any) -> None:
        self.seen.append((request.name, dict(request.command)))
        self.requests.append(request)

    # -- C- handlers ----------------------------------------------------------------

    def echo(self, request: Any) -> int:
        self.record(request)
        return 0x0000

    def store(self, request: Any) -> int:
        self.record(request)
        self.stored.append(Stored(request))
        return self.store_status

    def find(self, request: Any) -> Any:
        self.record(request)
        query = request.dataset()
        assert query is not None and query.QueryRetrieveLevel == "STUDY"
        return self._find(request)

    def _find(self, request: Any) -> Any:
        try:
            for i in range(self.find_count):
                self.find_states.append(f"yield {i}")
                yield 0xFF00, match(i)
            self.find_states.append("done")
        except GeneratorExit:
            self.find_states.append("closed")
            raise

    def get(self, request: Any) -> Any:
        self.record(request)
        return self._retrieve(request, request.association, None)

    def move(self, request: Any) -> Any:
        self.record(request)
        destination = str(request.command.get("MoveDestination", "")).strip()
        if destination not in self.destinations:
            return 0xA801, None, {"ErrorComment": f"unknown destination {destination}"}
        return self._move(request, destination)

    async def _move(self, request: Any, destination: str) -> Any:
        host, port = self.destinations[destination]
        ae = request.association.ae
        sub = await ae.associate(host, port, called=destination, contexts=list(STORAGE))
        try:
            originator = (request.association.remote_ae_title, request.message_id)
            async for item in self._retrieve(request, sub, originator):
                yield item
        finally:
            if sub.established and not sub.ended:
                await sub.release()

    async def _retrieve(self, request: Any, association: Any, originator: Any) -> Any:
        files = list(self.retrieve_files)
        completed = failed = 0
        for i, path in enumerate(files):
            try:
                response = await association.store(path, priority=request.command.get("Priority", 0), move_originator=originator)
                ok = response.status == 0x0000
            except Exception:
                ok = False
            completed += ok
            failed += not ok
            yield 0xFF00, None, counts(len(files) - i - 1, completed, failed)
        yield (0x0000 if not failed else 0xB000), None, counts(None, completed, failed)

    # -- N- handlers ----------------------------------------------------------------

    def _n_answer(self) -> tuple[int, dict[str, Any]]:
        if isinstance(self.n_status, tuple):
            return self.n_status
        return self.n_status, {}

    def n_create(self, request: Any) -> Any:
        self.record(request)
        status, fields = self._n_answer()
        uid = request.sop_instance_uid or f"1.2.826.0.1.3680043.9.7433.4.{len(self.instances) + 1}"
        ds = request.dataset() or Dataset()
        self.instances[uid] = ds
        if status & 0xF000 in (0xA000, 0xC000) or status in (0x0106, 0x0110, 0x0122):
            return status, None, fields
        fields = {**fields}
        if not request.sop_instance_uid:
            fields["AffectedSOPInstanceUID"] = uid
        return status, ds, fields

    def n_get(self, request: Any) -> Any:
        self.record(request)
        status, fields = self._n_answer()
        if status != 0x0000:
            return status, None, fields
        ds = self.instances.get(request.sop_instance_uid)
        if ds is None:
            return 0x0112, None, {"ErrorComment": "no such SOP instance"}
        wanted = request.command.get("AttributeIdentifierList")
        reply = Dataset()
        for elem in ds:
            if not wanted or int(elem.tag) in [int(t) for t in (wanted if isinstance(wanted, list | tuple) else [wanted])]:
                reply.add(elem)
        return status, reply, fields

    def n_set(self, request: Any) -> Any:
        self.record(request)
        status, fields = self._n_answer()
        ds = self.instances.get(request.sop_instance_uid)
        if ds is None:
            return 0x0112, None, {"ErrorComment": "no such SOP instance"}
        if status != 0x0000:
            return status, None, fields
        for elem in request.dataset():
            ds.add(elem)
        return status, ds, fields

    def n_action(self, request: Any) -> Any:
        self.record(request)
        status, fields = self._n_answer()
        reply = Dataset()
        reply.PatientID = f"ACTION{request.command['ActionTypeID']}"
        return status, reply, fields

    def n_delete(self, request: Any) -> Any:
        self.record(request)
        status, fields = self._n_answer()
        if status == 0x0000 and self.instances.pop(request.sop_instance_uid, None) is None:
            return 0x0112, None, {"ErrorComment": "no such SOP instance"}
        return status, None, fields

    def n_event_report(self, request: Any) -> Any:
        self.record(request)
        status, fields = self._n_answer()
        reply = Dataset()
        reply.PatientID = f"EVENT{request.command['EventTypeID']}"
        return status, reply, fields

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "N-CREATE": self.n_create, "N-GET": self.n_get, "N-SET": self.n_set,
            "N-ACTION": self.n_action, "N-DELETE": self.n_delete, "N-EVENT-REPORT": self.n_event_report,
        }

    @hookimpl
    def dimsekit_service_classes(self) -> list[ServiceClass]:
        return [
            ServiceClass(name="t-echo", sop_classes=(VERIFICATION,), handlers={"C-ECHO": self.echo}),
            ServiceClass(
                name="t-storage", sop_classes=STORAGE, handlers={"C-STORE": self.store},
                transfer_syntaxes=self.storage_ts, scu_role=True,
            ),
            ServiceClass(name="t-find", sop_classes=(STUDY_ROOT_FIND,), handlers={"C-FIND": self.find}),
            ServiceClass(name="t-get", sop_classes=(STUDY_ROOT_GET,), handlers={"C-GET": self.get}),
            ServiceClass(name="t-move", sop_classes=(STUDY_ROOT_MOVE,), handlers={"C-MOVE": self.move}),
            ServiceClass(name="t-n", sop_classes=self.n_classes, handlers=self.handlers(), scu_role=True),
            ServiceClass(name="t-none", sop_classes=(NO_HANDLER_CLASS,)),
            *self.extra,
        ]


class Commitment:
    """A storage-commitment-like SCP: N-ACTION answered at once, the result
    reported with N-EVENT-REPORT on the same association afterwards."""

    def __init__(self):
        self.report_responses = []

    def n_action(self, request):
        association = request.association
        uid = request.sop_instance_uid
        report = Dataset()
        report.TransactionUID = request.dataset().TransactionUID

        def send_report():
            d = association.n_event_report(STORAGE_COMMITMENT, uid, 1, report)
            d.addBoth(self.report_responses.append)

        association.reactor.callLater(0, send_report)
        return 0x0000

    @hookimpl
    def dimsekit_service_classes(self):
        return [ServiceClass(name="commitment", sop_classes=(STORAGE_COMMITMENT,), handlers={"N-ACTION": self.n_action})]


class Tracker:
    """A plugin that remembers every association of an AE (to wait for their ends)."""

    def __init__(self) -> None:
        self.associations: list[Any] = []
        self.ended: list[tuple[str, Any]] = []

    @hookimpl
    def dimsekit_on_association_established(self, association: Any) -> None:
        self.associations.append(association)

    @hookimpl
    def dimsekit_on_association_released(self, association: Any) -> None:
        self.ended.append(("released", association))

    @hookimpl
    def dimsekit_on_association_aborted(self, association: Any, reason: str) -> None:
        self.ended.append((reason, association))


def within(d: defer.Deferred, seconds: float = 5.0) -> defer.Deferred:
    """``d``, failing with TimeoutError if it has not fired within ``seconds``."""
    return d.addTimeout(seconds, reactor)


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0, what: str = "condition") -> None:
    """Let the reactor run until ``predicate()`` holds; bounded in time."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {seconds} s")
        await task.deferLater(reactor, 0.005, lambda: None)


class LoopbackTestCase(unittest.TestCase):
    """Makes dimsekit AEs on 127.0.0.1 and leaves the reactor clean."""

    timeout = 15

    def setUp(self) -> None:
        self._trackers: list[Tracker] = []
        self.addCleanup(self._wait_closed)

    def config(self, ae_title: str = "SCP", *, remotes: dict[str, tuple[str, int]] | None = None, **limits: Any) -> Config:
        return Config(
            node=NodeConfig(ae_title=ae_title),
            limits=Limits(**{"dimse_timeout": 5.0, "acse_timeout": 5.0, **limits}),
            remotes=tuple(RemoteAE(ae_title=t, host=h, port=p) for t, (h, p) in (remotes or {}).items()),
        )

    def make_ae(self, ae_title: str, *plugins: Any, config: Config | None = None, **limits: Any) -> ApplicationEntity:
        tracker = Tracker()
        self._trackers.append(tracker)
        pm = make_plugin_manager(load_entrypoints=False, plugins=[*plugins, tracker])
        ae = ApplicationEntity(ae_title, config=config or self.config(ae_title, **limits), plugin_manager=pm, reactor=reactor)
        ae.tracker = tracker  # type: ignore[attr-defined]
        return ae

    async def serve(self, *plugins: Any, ae_title: str = "SCP", config: Config | None = None, **limits: Any) -> tuple[ApplicationEntity, int]:
        """An AE with ``plugins`` listening on a free port of 127.0.0.1: (ae, port)."""
        ae = self.make_ae(ae_title, *plugins, config=config, **limits)
        port = await ae.listen(0)
        self.addCleanup(port.stopListening)
        return ae, port.getHost().port

    async def connect(self, port: int, contexts: Iterable[Any], *, ae: ApplicationEntity | None = None, called: str = "SCP", **kwargs: Any) -> Any:
        """An association from ``ae`` (a fresh plugin-less "SCU" by default)."""
        if ae is None:
            ae = self.make_ae("SCU")
        association = await within(ae.associate("127.0.0.1", port, called=called, contexts=list(contexts), **kwargs))
        return association

    async def _close_all(self) -> None:
        for tracker in self._trackers:
            for association in tracker.associations:
                if association.protocol is not None and association.established and not association.ended:
                    association.abort("test cleanup")
        await wait_until(
            lambda: all(a.protocol is None for t in self._trackers for a in t.associations),
            5.0, "every connection closed",
        )

    def _wait_closed(self) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._close_all())
