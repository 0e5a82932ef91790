"""The archive's journal: small new instances made durable by one append, written back after a crash."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dimsekit_plugins.archive import Archive, ArchiveSettings
from dimsekit_plugins.archive.journal import JOURNAL_NAME, Journal, replay
from tests.plugins.test_archive_support import make_dataset, open_archive, store

# -- the journal itself ------------------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path, size=64 * 1024, checkpoint_every=100)
    j.open()
    yield j
    j.close()


def test_records_come_back_in_order_until_a_checkpoint(journal):
    journal.append("a/b/c.dcm", [b"first ", memoryview(b"file")])
    journal.append("a/b/d.dcm", [b"second"])
    assert list(replay(journal.path)) == [("a/b/c.dcm", b"first file"), ("a/b/d.dcm", b"second")]
    assert journal.pending == 2
    journal.checkpoint()
    assert list(replay(journal.path)) == [] and journal.pending == 0
    journal.append("a/b/e.dcm", [b"third"])
    assert list(replay(journal.path)) == [("a/b/e.dcm", b"third")]  # not the older generation's records


def test_a_torn_record_ends_the_replay(journal):
    journal.append("1/2/3.dcm", [b"x" * 100])
    journal.append("1/2/4.dcm", [b"y" * 100])
    with open(journal.path, "r+b") as f:  # the second record's last byte never reached the disk
        f.seek(2 * 4096 + 24 + 9 + 99)
        f.write(b"z")
    assert list(replay(journal.path)) == [("1/2/3.dcm", b"x" * 100)]


def test_a_full_journal_checkpoints_and_starts_over(journal):
    for n in range(20):  # 20 records of 2 blocks each in a journal of 15 blocks for records
        journal.append(f"1/2/{n}.dcm", [b"v" * 5000])
    assert [rel for rel, _ in replay(journal.path)] == [f"1/2/{n}.dcm" for n in range(14, 20)]


def test_a_clean_close_leaves_nothing_to_replay(tmp_path):
    j = Journal(tmp_path, size=64 * 1024)
    j.open()
    j.append("1/2/3.dcm", [b"data"])
    j.close()
    assert list(replay(tmp_path / JOURNAL_NAME)) == []


def test_sync_says_whether_a_checkpoint_dropped_the_record(journal):
    generation = journal.write("1/2/3.dcm", [b"data"])
    assert journal.sync(generation) is True  # still a record of the current generation
    generation = journal.write("1/2/4.dcm", [b"more"])
    journal.checkpoint()  # another thread's, before the file of 4 was in place
    assert journal.sync(generation) is False
    assert list(replay(journal.path)) == []


# -- the archive --------------------------------------------------------------------------------------


def crash_copy(root: Path, tmp_path: Path) -> Path:
    """The data directory as a power cut would leave it with everything answered still there
    (copied while the archive runs: nothing closed, no checkpoint)."""
    copy = tmp_path / "after-crash"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def restarted(copy: Path, clock) -> dict:
    """The report of an archive started on ``copy`` (its reconcile), closed again."""
    archive = open_archive(copy, clock, journal=True)
    try:
        return clock.wait(archive.reconcile())
    finally:
        clock.wait(archive.close())


def test_a_small_instance_is_journaled_and_written_back_after_a_crash(root, clock, tmp_path):
    archive = open_archive(root, clock, journal=True)
    try:
        lost = store(archive, clock, make_dataset())
        emptied = store(archive, clock, make_dataset())
        kept = store(archive, clock, make_dataset())
        contents = {Path(s.path).relative_to(root).as_posix(): Path(s.path).read_bytes() for s in (lost, emptied, kept)}
        assert dict(replay(root / JOURNAL_NAME)) == contents  # every answered one, as written in place
        copy = crash_copy(root, tmp_path)
    finally:
        clock.wait(archive.close())
    rel = {id(s): Path(s.path).relative_to(root).as_posix() for s in (lost, emptied, kept)}
    (copy / rel[id(lost)]).unlink()  # its directory entry never reached the disk
    (copy / rel[id(emptied)]).write_bytes(b"")  # its data never did
    second = open_archive(copy, clock, journal=True)
    try:
        report = clock.wait(second.reconcile())
        assert sorted(report["journal_restored"]) == sorted([rel[id(lost)], rel[id(emptied)]])
        for relative, data in contents.items():
            assert (copy / relative).read_bytes() == data
        assert report["instances"] == 3 and report["quarantined"] == [] and report["rows_dropped"] == []
        assert list(replay(copy / JOURNAL_NAME)) == []  # written back, then a checkpoint
    finally:
        clock.wait(second.close())


def test_a_checkpoint_while_the_file_goes_into_place_has_it_synced_by_its_commit(root, clock, tmp_path, monkeypatch):
    """The record is written before the file is in place: a checkpoint in between makes durable
    everything but that file and drops the record, so the commit syncs the file itself."""
    archive = open_archive(root, clock, journal=True)
    synced: list[str] = []
    rename = archive._rename_into_place
    fsync = os.fsync

    def checkpoint_first(temp, final):
        archive._journal.checkpoint()  # as another commit's would, between record and rename
        rename(temp, final)

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    try:
        store(archive, clock, make_dataset())  # the journal opened, the directories made
        monkeypatch.setattr(archive, "_rename_into_place", checkpoint_first)
        monkeypatch.setattr(os, "fsync", recording_fsync)
        stored = store(archive, clock, make_dataset(study=generate_uid()))
    finally:
        monkeypatch.undo()
        clock.wait(archive.close())
    assert str(stored.path) in synced  # its data and name: no record holds them any more
    assert str(Path(stored.path).parent) in synced


def test_a_failed_placement_leaves_no_record_to_bring_the_instance_back(root, clock, tmp_path, monkeypatch):
    archive = open_archive(root, clock, journal=True)

    def refused(temp, final):
        raise OSError(5, "Input/output error")

    try:
        store(archive, clock, make_dataset())
        monkeypatch.setattr(archive, "_rename_into_place", refused)
        ds = make_dataset()
        with pytest.raises(Exception, match="Input/output error"):
            store(archive, clock, ds)
        monkeypatch.undo()
        records = [rel for rel, _ in replay(root / JOURNAL_NAME)]
        assert not any(str(ds.SOPInstanceUID) in rel for rel in records)
        assert not list(root.rglob(f"{ds.SOPInstanceUID}*"))
    finally:
        clock.wait(archive.close())


def test_replacing_a_journaled_file_checkpoints_first(root, clock, tmp_path):
    """The stored copy replaced in place: no record may bring the older content back."""
    archive = open_archive(root, clock, journal=True)
    try:
        first = make_dataset(pixels=b"\x01\x00" * 16)
        store(archive, clock, first)
        again = make_dataset(sop_instance=str(first.SOPInstanceUID), study=str(first.StudyInstanceUID),
                             series=str(first.SeriesInstanceUID), pixels=b"\x02\x00" * 16)
        newer = store(archive, clock, again)
        assert newer.replaced
        data = Path(newer.path).read_bytes()
        copy = crash_copy(root, tmp_path)
    finally:
        clock.wait(archive.close())
    assert "journal_restored" not in restarted(copy, clock)
    assert (copy / Path(newer.path).relative_to(root)).read_bytes() == data


def test_moving_a_journaled_instance_to_another_series_checkpoints_before_the_old_copy_goes(root, clock, tmp_path):
    archive = open_archive(root, clock, journal=True)
    try:
        first = make_dataset()
        old = Path(store(archive, clock, first).path)
        moved = store(archive, clock, make_dataset(sop_instance=str(first.SOPInstanceUID)))
        assert not old.exists() and Path(moved.path).exists()
        copy = crash_copy(root, tmp_path)
    finally:
        clock.wait(archive.close())
    report = restarted(copy, clock)
    assert not (copy / old.relative_to(root)).exists()  # not brought back by an older record
    assert report.get("journal_restored") is None and report["instances"] == 1


def test_a_record_outside_the_layout_is_never_written(root, clock, tmp_path):
    root.mkdir(parents=True)
    journal = Journal(root)
    journal.open()
    outside = tmp_path / "escaped.dcm"
    journal.append("../escaped.dcm", [b"evil"])
    uid = generate_uid()
    journal.append(f"{uid}/{uid}/../../../escaped.dcm", [b"evil"])
    journal._fd, fd = None, journal._fd  # a crash: no checkpoint
    os.close(fd)
    archive = open_archive(root, clock, journal=True)
    try:
        report = clock.wait(archive.reconcile())
        assert "journal_restored" not in report and not outside.exists()
    finally:
        clock.wait(archive.close())


def test_large_instances_and_no_fsync_take_no_journal(root, clock, tmp_path):
    archive = open_archive(root, clock, journal=True)
    try:
        store(archive, clock, make_dataset(pixels=b"\x05" * (300 * 1024)))
        assert list(replay(root / JOURNAL_NAME)) == []  # synced in place (the file is created while it arrives)
    finally:
        clock.wait(archive.close())
    other = tmp_path / "nofsync"
    archive = open_archive(other, clock, journal=True, fsync=False)
    try:
        store(archive, clock, make_dataset())
        assert not (other / JOURNAL_NAME).exists()
    finally:
        clock.wait(archive.close())


def test_the_journal_setting(tmp_path):
    from dimsekit.config import from_mapping

    assert ArchiveSettings.from_config(from_mapping({})).journal is True
    settings = ArchiveSettings.from_config(from_mapping({"plugins": {"archive": {"journal": False}}}))
    assert settings.journal is False and Archive.from_settings(settings)._journal is None
