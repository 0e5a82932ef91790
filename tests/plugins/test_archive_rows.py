"""The index rows of answered instances, written in batches: by count, by time, before any read, at close."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dimsekit_plugins.archive import index
from dimsekit_plugins.archive import store as store_module
from dimsekit_plugins.archive.layout import INDEX_NAME
from tests.plugins.test_archive_support import (
    CT_IMAGE_STORAGE,
    encode,
    make_dataset,
    open_archive,
    receive,
    store,
    wait_for,
)


def commit(archive, clock, ds):
    """Store ``ds`` and return once answered, without any read of the index (unlike ``store``)."""
    return clock.wait(receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID).commit())


def rows_on_disk(root: Path) -> set[str]:
    """The SOP Instance UIDs a connection of its own finds in the index (what other processes see)."""
    reader = sqlite3.connect(str(root / INDEX_NAME))
    try:
        return {uid for (uid,) in reader.execute("SELECT sop_instance_uid FROM instance")}
    finally:
        reader.close()


def test_rows_wait_until_a_batch_is_full(root, clock, monkeypatch):
    monkeypatch.setattr(store_module, "_ROWS_BATCH", 4)
    archive = open_archive(root, clock)
    try:
        first = make_dataset()
        store(archive, clock, first)  # the index exists, this row written by the read
        uids = [str(commit(archive, clock, make_dataset()).sop_instance_uid) for _ in range(3)]
        assert rows_on_disk(root) == {str(first.SOPInstanceUID)}  # three answered, waiting
        assert len(archive._unindexed) == 3
        uids.append(str(commit(archive, clock, make_dataset()).sop_instance_uid))  # the fourth fills the batch
        assert wait_for(lambda: rows_on_disk(root) == {str(first.SOPInstanceUID), *uids})
        assert archive._unindexed == []
    finally:
        clock.wait(archive.close())


def test_waiting_rows_are_written_a_moment_after_the_first_answer(root, clock):
    archive = open_archive(root, clock)
    try:
        store(archive, clock, make_dataset())
        uid = str(commit(archive, clock, make_dataset()).sop_instance_uid)
        clock.run_pending()  # the answer asked the reactor for the timer
        assert uid not in rows_on_disk(root)
        clock.advance(store_module._ROWS_DELAY)
        assert wait_for(lambda: uid in rows_on_disk(root))
    finally:
        clock.wait(archive.close())


def test_a_row_answered_while_a_batch_is_written_gets_a_timer_of_its_own(root, clock, monkeypatch):
    archive = open_archive(root, clock)
    try:
        store(archive, clock, make_dataset())
        first = str(commit(archive, clock, make_dataset()).sop_instance_uid)
        clock.run_pending()
        real_put, release, writing = index.put, threading.Event(), threading.Event()

        def held_put(conn, record, **kwargs):
            writing.set()
            assert release.wait(10)
            return real_put(conn, record, **kwargs)

        monkeypatch.setattr(index, "put", held_put)
        clock.advance(store_module._ROWS_DELAY)  # the first row's timer: its batch is being written ...
        assert writing.wait(10)
        second = str(commit(archive, clock, make_dataset()).sop_instance_uid)  # ... when this one is answered
        monkeypatch.undo()
        release.set()
        assert wait_for(lambda: first in rows_on_disk(root) and len(archive._unindexed) == 1)
        assert wait_for(lambda: clock.run_pending() or archive._rows_timer is not None)
        clock.advance(store_module._ROWS_DELAY)
        assert wait_for(lambda: second in rows_on_disk(root))
    finally:
        clock.wait(archive.close())


def test_close_writes_the_waiting_rows(root, clock):
    archive = open_archive(root, clock)
    store(archive, clock, make_dataset())
    uid = str(commit(archive, clock, make_dataset()).sop_instance_uid)
    clock.wait(archive.close())
    assert uid in rows_on_disk(root)


def test_a_row_that_cannot_be_written_holds_back_only_those_after_it(root, clock, monkeypatch):
    archive = open_archive(root, clock)
    try:
        store(archive, clock, make_dataset())
        uids = [str(commit(archive, clock, make_dataset()).sop_instance_uid) for _ in range(3)]
        real_put = index.put

        def put(conn, record, **kwargs):
            if record.sop_instance_uid == uids[1]:
                raise sqlite3.OperationalError("disk I/O error")
            return real_put(conn, record, **kwargs)

        monkeypatch.setattr(index, "put", put)
        clock.wait(archive.query("SELECT 1"))  # the batch fails, then one at a time up to the bad one
        assert uids[0] in rows_on_disk(root) and not {uids[1], uids[2]} & rows_on_disk(root)
        assert [r.sop_instance_uid for r in archive._unindexed] == uids[1:]
        monkeypatch.undo()
        clock.wait(archive.query("SELECT 1"))
        assert set(uids) <= rows_on_disk(root) and archive._unindexed == []
    finally:
        clock.wait(archive.close())


def test_an_instance_moved_away_and_back_before_its_rows_are_written_keeps_its_file(root, clock):
    """Series A, then B, then A again, the last two rows in one batch: the copy in B goes,
    the one in A -- the instance as last sent -- stays."""
    archive = open_archive(root, clock)
    try:
        study, series_a, series_b = generate_uid(), generate_uid(), generate_uid()
        first = make_dataset(study=study, series=series_a, pixels=b"\x01\x00" * 16)
        uid = str(first.SOPInstanceUID)
        in_a = Path(store(archive, clock, first).path)
        in_b = Path(commit(archive, clock, make_dataset(sop_instance=uid, study=study, series=series_b)).path)
        last = make_dataset(sop_instance=uid, study=study, series=series_a, pixels=b"\x03\x00" * 16)
        again = commit(archive, clock, last)
        assert Path(again.path) == in_a and again.replaced
        data = in_a.read_bytes()
        found = clock.wait(archive.lookup(uid))  # writes both rows, then removes what they moved away from
        assert Path(found.path) == in_a
        assert in_a.read_bytes() == data and not in_b.exists()
    finally:
        clock.wait(archive.close())


# -- index.put_many ---------------------------------------------------------------------------------


def _record(**changes) -> index.InstanceRecord:
    ds = make_dataset()
    values = index.header_values(ds)
    record = index.InstanceRecord(**values, transfer_syntax_uid="1.2.840.10008.1.2.1",
                                  path=f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm",
                                  size=100, received_at="2026-11-28T00:00:00.000+00:00", source_ae="SENDER")
    return dataclasses.replace(record, **changes)


def test_put_many_writes_all_or_nothing_and_forgets_what_it_rolled_back(tmp_path):
    conn = index.connect(str(tmp_path / INDEX_NAME))
    try:
        good = _record()
        bad = dataclasses.replace(_record(), path=None)  # NOT NULL: the batch fails on it
        with pytest.raises(sqlite3.IntegrityError):
            index.put_many(conn, [good, bad])
        assert conn.execute("SELECT COUNT(*) FROM instance").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM series").fetchone()[0] == 0
        # The same series again: nothing of the rolled-back puts may be taken as written.
        sibling = dataclasses.replace(_record(), study_instance_uid=good.study_instance_uid,
                                      series_instance_uid=good.series_instance_uid, patient_id=good.patient_id)
        assert index.put_many(conn, [sibling]) == [None]
        assert conn.execute("SELECT COUNT(*) FROM series").fetchone()[0] == 1
        assert conn.execute("SELECT COUNT(*) FROM study").fetchone()[0] == 1
    finally:
        conn.close()


def test_a_commit_that_fails_leaves_put_nothing_to_remember(tmp_path, monkeypatch):
    conn = index.connect(str(tmp_path / INDEX_NAME))
    real_execute = index._Connection.execute

    def execute(self, sql, *args):
        if sql == "COMMIT":
            monkeypatch.undo()
            raise sqlite3.OperationalError("disk I/O error")
        return real_execute(self, sql, *args)

    try:
        good = _record()
        monkeypatch.setattr(index._Connection, "execute", execute)
        with pytest.raises(sqlite3.OperationalError):
            index.put_many(conn, [good])
        assert not conn.in_transaction and conn.execute("SELECT COUNT(*) FROM series").fetchone()[0] == 0
        sibling = dataclasses.replace(_record(), study_instance_uid=good.study_instance_uid,
                                      series_instance_uid=good.series_instance_uid, patient_id=good.patient_id)
        assert index.put_many(conn, [sibling]) == [None]  # its series and study written, not taken as known
        assert conn.execute("SELECT COUNT(*) FROM series").fetchone()[0] == 1
    finally:
        conn.close()


def test_no_timer_outlives_close(root, clock):
    archive = open_archive(root, clock)
    store(archive, clock, make_dataset())
    uid = str(commit(archive, clock, make_dataset()).sop_instance_uid)
    closed = archive.close()
    archive._rows_due()  # an answer's request for the timer that reaches the reactor after close() began
    clock.wait(closed)
    clock.run_pending()
    assert clock.getDelayedCalls() == [] and uid in rows_on_disk(root)
