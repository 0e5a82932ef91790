"""The archive where commits meet reconcile(), failures after the rename, crashes and close().

Each case here was a way to lose an instance, answer a failure while keeping a file
reconcile would later index, or index one that never got all its data.  The races
are forced at the exact point by hooking what the commit calls there.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom.uid import generate_uid

from dimsekit_plugins.archive import OutOfResources
from dimsekit_plugins.archive import store as store_module
from dimsekit_plugins.archive.store import part10_header
from tests.plugins.test_archive_support import (
    CT_IMAGE_STORAGE,
    EXPLICIT_VR_LE,
    encode,
    make_dataset,
    open_archive,
    receive,
    store,
    wait_for,
)


def _reconcile_now(archive):
    """reconcile() as open_archive runs it beside commits: in another thread, to the end."""
    reports: list[dict] = []
    thread = threading.Thread(target=lambda: reports.append(archive._reconcile()))
    thread.start()
    thread.join(10)
    assert reports, "reconcile did not finish"
    return reports[0]


def _final(root, ds) -> Path:
    return root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def test_an_instance_number_the_index_cannot_hold_is_stored_without_it(root, clock, monkeypatch):
    monkeypatch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.IGNORE)
    archive = open_archive(root, clock)
    ds = make_dataset()
    ds.InstanceNumber = "99999999999999999999"  # IS holds 32 bits; SQLite 64
    stored = store(archive, clock, ds)
    assert Path(stored.path).exists()
    assert stored.record.instance_number is None
    planted = make_dataset()
    planted.InstanceNumber = "99999999999999999999"
    path = _final(root, planted)
    path.parent.mkdir(parents=True)
    path.write_bytes(part10_header(CT_IMAGE_STORAGE, planted.SOPInstanceUID, EXPLICIT_VR_LE, "X") + encode(planted))
    report = clock.wait(archive.reconcile())  # once, a file like that stopped reconcile at itself
    assert report["files_indexed"] == [str(path.relative_to(root))]
    clock.wait(archive.close())


def test_reconcile_beside_a_commit_moving_an_instance_keeps_the_new_copy(root, clock, monkeypatch):
    archive = open_archive(root, clock, duplicates="newest")
    first = make_dataset(pixels=b"\x01\x00" * 16)
    uid = first.SOPInstanceUID
    old = Path(store(archive, clock, first).path)
    neighbour = make_dataset()
    store(archive, clock, neighbour)
    second = make_dataset(sop_instance=uid, study=neighbour.StudyInstanceUID, series=neighbour.SeriesInstanceUID,
                          pixels=b"\x02\x00" * 16)
    new_dir = root / neighbour.StudyInstanceUID / neighbour.SeriesInstanceUID
    reports: list[dict] = []
    real = store_module._fsync_dir

    def fsync_dir(path):
        # after the rename and the file's fsync, before the index write: reconcile runs now
        if Path(path) == new_dir and not reports:
            reports.append(_reconcile_now(archive))
        return real(path)

    monkeypatch.setattr(store_module, "_fsync_dir", fsync_dir)
    incoming = receive(archive, encode(second), sop_class=CT_IMAGE_STORAGE, sop_instance=uid)
    stored = clock.wait(incoming.commit())
    assert reports and reports[0]["stale_removed"] == []  # the new copy was not taken for a stale one
    assert clock.wait(archive.lookup(uid)).path == stored.path  # (a read waits for the index write)
    assert Path(stored.path).exists() and not old.exists()  # the old copy went with it
    clock.wait(archive.close())


def test_reconcile_does_not_index_a_file_before_its_commit_made_it_durable(root, clock, monkeypatch):
    archive = open_archive(root, clock)
    assert archive._rename_first
    ds = make_dataset()
    reports: list[dict] = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode) and not reports:
            # rename-first: the file is in place, not yet synced; reconcile runs, then the fsync fails
            reports.append(_reconcile_now(archive))
            raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", fsync)
    error = clock.failure_of(receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE,
                                     sop_instance=ds.SOPInstanceUID).commit())
    monkeypatch.undo()
    assert isinstance(error, OutOfResources)
    assert reports[0]["files_indexed"] == []
    assert clock.wait(archive.lookup(ds.SOPInstanceUID)) is None
    assert not _final(root, ds).exists()
    clock.wait(archive.close())


def test_a_failed_directory_fsync_after_the_rename_leaves_no_file(root, clock, monkeypatch):
    archive = open_archive(root, clock)
    ds = make_dataset()
    series_dir = _final(root, ds).parent
    real = store_module._fsync_dir

    def fsync_dir(path):
        if Path(path) == series_dir:
            raise OSError(errno.EIO, "Input/output error")
        return real(path)

    monkeypatch.setattr(store_module, "_fsync_dir", fsync_dir)
    error = clock.failure_of(receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE,
                                     sop_instance=ds.SOPInstanceUID).commit())
    monkeypatch.undo()
    assert isinstance(error, OutOfResources)
    assert not _final(root, ds).exists()  # the sender was told it failed: nothing for reconcile to index
    report = clock.wait(archive.reconcile())
    assert report["files_indexed"] == [] and report["instances"] == 0
    clock.wait(archive.close())


def _held_put(monkeypatch):
    """index.put made to wait for the test: (released Event, list of what happened, in order)."""
    release = threading.Event()
    events: list[str] = []
    real_put = store_module.index.put

    def put(conn, record, **kwargs):
        events.append("put waits")
        assert release.wait(10), "the test never released the index write"
        result = real_put(conn, record, **kwargs)
        events.append("put done")
        return result

    monkeypatch.setattr(store_module.index, "put", put)
    return release, events


def test_the_answer_comes_before_the_index_write_and_a_read_writes_the_row_first(root, clock, monkeypatch):
    archive = open_archive(root, clock)
    ds = make_dataset()
    release, events = _held_put(monkeypatch)
    stored = clock.wait(receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE,
                                sop_instance=ds.SOPInstanceUID).commit())
    # Answered, the file durable and in place; its row waits for the batch (or the timer).
    assert Path(stored.path).exists() and events == []
    assert [record.sop_instance_uid for record in archive._unindexed] == [ds.SOPInstanceUID]
    looked_up = archive.lookup(ds.SOPInstanceUID)
    assert wait_for(lambda: events == ["put waits"])  # the read writes the waiting row first ...
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        clock.run_pending()
        time.sleep(0.01)
    assert not looked_up.called  # ... and waits for it
    release.set()
    found = clock.wait(looked_up)
    assert found is not None and found.path == stored.path  # ... and finds it
    assert events == ["put waits", "put done"] and archive._unindexed == []
    clock.wait(archive.close())


def test_close_right_after_an_answer_waits_for_its_index_write(root, clock, monkeypatch):
    archive = open_archive(root, clock)
    ds = make_dataset()
    release, events = _held_put(monkeypatch)
    clock.wait(receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID).commit())
    closed = archive.close()
    threading.Timer(0.2, release.set).start()
    clock.wait(closed)
    assert events == ["put waits", "put done"]
    monkeypatch.undo()
    again = open_archive(root, clock)
    assert clock.wait(again.lookup(ds.SOPInstanceUID)) is not None
    clock.wait(again.close())


def _first_put_fails(monkeypatch) -> list[str]:
    """index.put made to fail the first time ("disk I/O error"): the list of the UIDs it was called for."""
    real_put = store_module.index.put
    calls: list[str] = []

    def put(conn, record, **kwargs):
        calls.append(record.sop_instance_uid)
        if len(calls) == 1:
            raise store_module.sqlite3.OperationalError("disk I/O error")
        return real_put(conn, record, **kwargs)

    monkeypatch.setattr(store_module.index, "put", put)
    return calls


def test_a_failed_index_write_after_the_answer_keeps_the_file_and_is_retried(root, clock, monkeypatch):
    # Answered: the file is durable and the sender told so; the row is written with the next use of the index.
    archive = open_archive(root, clock)
    ds = make_dataset()
    calls = _first_put_fails(monkeypatch)
    stored = clock.wait(receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE,
                                sop_instance=ds.SOPInstanceUID).commit())
    assert Path(stored.path).exists()
    assert wait_for(lambda: len(archive._unindexed) == 1)
    assert rel_path(root, stored) not in archive._placing  # reconcile would index it too
    assert clock.wait(archive.lookup(ds.SOPInstanceUID)) is None  # the write the read began with failed ...
    assert calls == [ds.SOPInstanceUID] and len(archive._unindexed) == 1  # ... and the row still waits
    found = clock.wait(archive.lookup(ds.SOPInstanceUID))  # the next use of the index writes it first
    assert found is not None and found.path == stored.path
    assert calls == [ds.SOPInstanceUID, ds.SOPInstanceUID] and archive._unindexed == []
    clock.wait(archive.close())


def test_the_wait_for_the_index_writes_a_row_whose_write_failed(root, clock, monkeypatch):
    # A reader with its own connection (the Q/R plugin) waits with wait_for_index(): it must find the row too.
    archive = open_archive(root, clock)
    ds = make_dataset()
    calls = _first_put_fails(monkeypatch)
    clock.wait(receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID).commit())
    assert wait_for(lambda: len(archive._unindexed) == 1)
    for _ in range(2):  # the first write fails (logged), the second one holds
        waited = threading.Thread(target=archive.wait_for_index)
        waited.start()
        waited.join(10)
    assert calls == [ds.SOPInstanceUID, ds.SOPInstanceUID] and archive._unindexed == []
    reader = store_module.sqlite3.connect(str(root / store_module.INDEX_NAME))
    try:
        assert reader.execute("SELECT COUNT(*) FROM instance WHERE sop_instance_uid = ?",
                              (ds.SOPInstanceUID,)).fetchone() == (1,)
    finally:
        reader.close()
    clock.wait(archive.close())


def rel_path(root, stored) -> str:
    return str(Path(stored.path).relative_to(root))


def test_a_copy_sent_again_and_cut_by_a_crash_is_quarantined_though_its_row_exists(root, clock):
    archive = open_archive(root, clock)
    ds = make_dataset(pixels=b"\x05\x00" * 4096)
    path = Path(store(archive, clock, ds).path)
    path.unlink()  # its file vanished; the row stays
    full = part10_header(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER") + encode(ds)
    # sent again: renamed into place first (its length recorded), then a crash before its fsync
    path.write_bytes(full[: len(full) - 4000])
    os.setxattr(path, store_module._LENGTH_XATTR, str(len(full)).encode())
    report = clock.wait(archive.reconcile())
    assert report["quarantined"] == [str(path.relative_to(root))]
    assert report["rows_refreshed"] == [] and report["rows_dropped"] == [ds.SOPInstanceUID]
    assert clock.wait(archive.lookup(ds.SOPInstanceUID)) is None
    clock.wait(archive.close())


def test_a_file_creation_job_that_comes_after_the_commit_creates_nothing(root, clock):
    archive = open_archive(root, clock)
    archive._pool_creates_until = float("inf")  # large files created in the pool
    ds = make_dataset(pixels=b"\x01\x00" * 100_000)
    jobs: list = []
    archive._submit = jobs.append  # the job waits, as on a pool thread descheduled
    incoming = receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID, chunk=16384)
    clock.wait(incoming.commit())
    assert jobs
    jobs[0]()  # it gets the lock now
    assert os.listdir(root / ".incoming") == []
    # the commit's worker closes the file once it dropped its pages, after the answer
    assert wait_for(lambda: incoming._fd is None)
    assert os.listdir(root / ".incoming") == []
    clock.wait(archive.close())


def test_work_that_gets_in_while_closing_does_not_reopen_the_index(root, clock):
    # one thread: the lookup runs after close() closed the index, never beside it
    archive = open_archive(root, clock, threads=1)
    closed = archive.close()
    looked_up = archive.lookup(generate_uid())
    clock.wait(closed)
    assert archive._conn is None
    assert isinstance(clock.failure_of(looked_up), OutOfResources)


def test_reconcile_keeps_an_acknowledged_copy_whose_row_is_not_yet_written(root, clock, monkeypatch):
    # Sent again under another series, answered, its index write failing: the index still names the
    # first copy.  Whatever the files' times say, reconcile must not take the new copy for a stale one.
    archive = open_archive(root, clock)
    first = make_dataset()
    old = Path(store(archive, clock, first).path)
    again = make_dataset()
    again.SOPInstanceUID = first.SOPInstanceUID
    again.StudyInstanceUID = first.StudyInstanceUID
    real_put = store_module.index.put

    def put(conn, record, **kwargs):
        if record.series_instance_uid == again.SeriesInstanceUID:
            raise store_module.sqlite3.OperationalError("disk I/O error")
        return real_put(conn, record, **kwargs)

    monkeypatch.setattr(store_module.index, "put", put)
    new = Path(clock.wait(receive(archive, encode(again), sop_class=CT_IMAGE_STORAGE,
                                  sop_instance=again.SOPInstanceUID).commit()).path)
    assert wait_for(lambda: len(archive._unindexed) == 1)
    later = time.time() + 3600  # the indexed copy looks newer (a clock set back since)
    os.utime(old, (later, later))
    report = _reconcile_now(archive)
    assert new.exists(), report
    assert report["stale_removed"] == [] and report["quarantined"] == []
    monkeypatch.setattr(store_module.index, "put", real_put)
    found = clock.wait(archive.lookup(first.SOPInstanceUID))
    assert found is not None and Path(found.path) == new
    assert not old.exists()  # the copy it replaced goes once its row is written
    clock.wait(archive.close())
