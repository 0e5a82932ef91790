"""Test kit shared by the archive and storage tests (no tests of its own).

* :class:`ThreadedClock` -- a fake reactor whose ``callFromThread`` queues the
  call, so the archive's real worker threads report back to the test thread,
  which runs the calls in :meth:`ThreadedClock.wait` (bounded in time);
* :func:`make_dataset` / :func:`encode` -- small composite instances;
* :func:`store` -- receive, write in fragments, close, commit, wait;
* :func:`open_archive` -- an archive on the ``root`` and ``clock`` fixtures
  (``tests/plugins/conftest.py``), started.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from dimsekit.datasets import encode_dataset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"


class ThreadedClock(MemoryReactorClock):
    """A MemoryReactorClock whose ``callFromThread`` works (the calls run in :meth:`wait`)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread_calls: queue.Queue = queue.Queue()
        self.main_thread = threading.get_ident()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:  # noqa: N802
        self.thread_calls.put((f, args, kwargs))

    def run_pending(self) -> int:
        """Run the calls the threads queued so far; how many ran."""
        count = 0
        while True:
            try:
                f, args, kwargs = self.thread_calls.get_nowait()
            except queue.Empty:
                return count
            f(*args, **kwargs)
            count += 1

    def wait(self, d: Deferred, *, pump: Callable[[], Any] | None = None, timeout: float = 15.0) -> Any:
        """Run queued calls (and ``pump``) until ``d`` fires; its result, or raise its failure."""
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        deadline = time.monotonic() + timeout
        while not outcome:
            if pump is not None:
                pump()
            if outcome:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{d!r} did not fire within {timeout} s")
            try:
                f, args, kwargs = self.thread_calls.get(timeout=min(left, 0.05))
            except queue.Empty:
                continue
            f(*args, **kwargs)
            self.run_pending()
        if pump is not None:
            pump()
        value = outcome[0]
        if isinstance(value, Failure):
            value.raiseException()
        return value

    def failure_of(self, d: Deferred, **kwargs: Any) -> BaseException:
        """The exception ``d`` fails with (AssertionError if it succeeds)."""
        try:
            value = self.wait(d, **kwargs)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            return exc
        raise AssertionError(f"expected a failure, got {value!r}")


def make_dataset(
    *,
    sop_class: str = CT_IMAGE_STORAGE,
    sop_instance: str | None = None,
    study: str | None = None,
    series: str | None = None,
    patient_id: str = "PID1",
    patient_name: str = "Doe^Jane",
    modality: str = "CT",
    charset: str | None = None,
    pixels: bytes = b"\x01\x02" * 16,
    **extra: Any,
) -> Dataset:
    """A small composite instance (4x4 16-bit pixels by default)."""
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance or generate_uid()
    ds.StudyDate = "20240131"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC1"
    ds.Modality = modality
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = "Head"
    ds.SeriesDescription = "Axial"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.StudyID = "S1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = 7
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    if pixels:
        ds.Rows = 4 if len(pixels) <= 8 * 0xFFFF else len(pixels) // (2 * 4096)
        ds.Columns = len(pixels) // (2 * ds.Rows)
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = pixels
    return ds


def encode(ds: Dataset, transfer_syntax: str = EXPLICIT_VR_LE) -> bytes:
    return encode_dataset(ds, transfer_syntax)


def receive(archive: Any, data: bytes, *, sop_class: str, sop_instance: str,
            transfer_syntax: str = EXPLICIT_VR_LE, source_ae: str | None = "SENDER", chunk: int = 1000) -> Any:
    """An incoming instance with all of ``data`` written (in ``chunk``-byte fragments) and closed."""
    incoming = archive.receive(sop_class, sop_instance, transfer_syntax, source_ae)
    for offset in range(0, len(data), chunk):
        incoming.write(data[offset : offset + chunk])
    incoming.close()
    return incoming


def store(archive: Any, clock: ThreadedClock, ds: Dataset, *, transfer_syntax: str = EXPLICIT_VR_LE,
          source_ae: str | None = "SENDER", sop_instance: str | None = None, sop_class: str | None = None) -> Any:
    """Store ``ds`` through receive/write/close/commit; the StoredInstance.

    Returns once its index row is written too: the commit answers first and the
    row waits for its batch (see ``Archive._index_new``); a read through the
    archive writes the waiting rows first -- the query here does.
    """
    incoming = receive(
        archive, encode(ds, transfer_syntax),
        sop_class=sop_class or str(ds.SOPClassUID),
        sop_instance=sop_instance or str(ds.SOPInstanceUID),
        transfer_syntax=transfer_syntax, source_ae=source_ae,
    )
    stored = clock.wait(incoming.commit())
    clock.wait(archive.query("SELECT 1"))
    return stored


def drain_threads(monkeypatch: Any) -> list[threading.Thread]:
    """The threads that write incoming instances' files (IncomingInstance._drain), as they do."""
    from dimsekit_plugins.archive.store import IncomingInstance

    threads: list[threading.Thread] = []
    drain = IncomingInstance._drain

    def recording(self: IncomingInstance, **options: Any) -> None:
        threads.append(threading.current_thread())
        drain(self, **options)

    monkeypatch.setattr(IncomingInstance, "_drain", recording)
    return threads


def wait_for(predicate: Any, seconds: float = 5.0) -> bool:
    """Poll ``predicate`` (work a pool thread does) until true or ``seconds`` pass; its last value."""
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.002)
    return bool(predicate())


def open_archive(root: Any, clock: ThreadedClock, **kwargs: Any) -> Any:
    """An Archive on ``root`` and ``clock`` (no free-space floor unless given), started.

    Without the journal unless ``journal=True``: these tests follow an instance through
    the files' own fsyncs (test_archive_journal.py tests the journal's path).
    """
    from dimsekit_plugins.archive import Archive

    kwargs.setdefault("journal", False)
    archive = Archive(root, reactor=clock, min_free_mb=kwargs.pop("min_free_mb", 0), **kwargs)
    archive.start()
    return archive
