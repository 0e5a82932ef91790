"""SQLiteBackend on the real reactor with its real thread pool: SQL never runs
in the reactor thread, data outlives the backend, close() ends the pool."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from pydicom.dataset import Dataset
from twisted.internet import defer, reactor
from twisted.trial import unittest

from dimsekit.nservice import (
    DATABASE_NAME,
    DuplicateInstance,
    Instance,
    NoSuchInstance,
    SQLiteBackend,
)


class RecordingBackend(SQLiteBackend):
    """Remembers the thread each connection was opened in."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[int] = []

    def _connect(self):
        self.threads.append(threading.get_ident())
        return super()._connect()


def _ds(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


class SQLiteOnTheReactor(unittest.TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dimsekit-nservice-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = self.dir / "data" / DATABASE_NAME

    def backend(self) -> RecordingBackend:
        backend = RecordingBackend(self.path, reactor)
        self.addCleanup(backend.close)
        return backend

    @defer.inlineCallbacks
    def test_statements_run_off_the_reactor_thread(self):
        backend = self.backend()
        main = threading.get_ident()
        yield backend.create(Instance("mpps", "1.2.840.10008.3.1.2.3.3", "1.2.3", _ds(PatientID="1")))
        got = yield backend.get("mpps", "1.2.3")
        self.assertEqual(got.dataset.PatientID, "1")
        yield backend.update(Instance("mpps", "1.2.840.10008.3.1.2.3.3", "1.2.3", _ds(PatientID="2")))
        yield backend.delete("mpps", "nothing")
        self.assertEqual(len(backend.threads), 4)
        self.assertNotIn(main, backend.threads)
        self.assertEqual(len(set(backend.threads)), 1)  # one thread: statements on the file never race

    @defer.inlineCallbacks
    def test_failures_come_back_as_annex_c_errors(self):
        backend = self.backend()
        instance = Instance("mpps", "1.2.840.10008.3.1.2.3.3", "1.2.3", _ds(PatientID="1"))
        yield backend.create(instance)
        yield self.assertFailure(backend.create(instance), DuplicateInstance)
        yield self.assertFailure(backend.update(Instance("mpps", "1.2", "4.5", Dataset())), NoSuchInstance)

    @defer.inlineCallbacks
    def test_many_at_once(self):
        backend = self.backend()
        uids = [f"1.2.3.{n}" for n in range(50)]
        yield defer.gatherResults(
            [backend.create(Instance("mpps", "1.2", uid, _ds(PatientID=uid[-2:]))) for uid in uids]
        )
        got = yield backend.uids("mpps")
        self.assertEqual(sorted(got), sorted(uids))

    @defer.inlineCallbacks
    def test_data_outlives_the_backend(self):
        first = RecordingBackend(self.path, reactor)
        yield first.create(Instance("mpps", "1.2", "1.2.3", _ds(PatientName="Doe^Jane")))
        yield first.close()
        self.assertIsNone(first._pool)
        yield self.assertFailure(first.get("mpps", "1.2.3"), RuntimeError)
        second = self.backend()
        got = yield second.get("mpps", "1.2.3")
        self.assertEqual(str(got.dataset.PatientName), "Doe^Jane")
