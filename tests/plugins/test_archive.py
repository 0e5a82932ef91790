"""The built-in archive on a temporary directory: files, index, duplicates, refusals, reconcile."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

import dimsekit
from dimsekit.config import ConfigError, from_mapping
from dimsekit.datasets import part10_info
from dimsekit.interfaces import IArchive, IIncomingInstance
from dimsekit_plugins.archive import (
    Archive,
    ArchiveSettings,
    CannotUnderstand,
    DatasetMismatch,
    DuplicateRejected,
    InvalidUID,
    OutOfResources,
    index,
)
from dimsekit_plugins.archive import (
    store as store_module,
)
from dimsekit_plugins.archive.layout import check_uid, is_uid
from tests.plugins.test_archive_support import (
    CT_IMAGE_STORAGE,
    DEFLATED,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MR_IMAGE_STORAGE,
    drain_threads,
    encode,
    make_dataset,
    open_archive,
    receive,
    store,
)

_open = open_archive


@pytest.fixture
def archive(root, clock):
    archive = _open(root, clock)
    yield archive
    clock.wait(archive.close())
    assert not any(t.is_alive() for t in archive._pool.threads), "worker threads alive after close()"


def rows(archive, clock, sql, *params):
    return clock.wait(archive.query(sql, params))


def dcm_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix == ".dcm")


def incoming_files(root: Path) -> list[str]:
    return sorted(os.listdir(root / ".incoming")) if (root / ".incoming").exists() else []


def all_files(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


# -- the contracts ------------------------------------------------------------------------------


def test_archive_and_incoming_instance_provide_their_interfaces(archive):
    assert IArchive.providedBy(archive)
    incoming = archive.receive(CT_IMAGE_STORAGE, generate_uid(), EXPLICIT_VR_LE, "X")
    assert IIncomingInstance.providedBy(incoming)
    incoming.abort()


# -- storing ---------------------------------------------------------------------------------------


def test_stored_file_is_part10_with_our_meta_and_the_data_set_bytes_as_received(archive, clock, root):
    ds = make_dataset()
    data = encode(ds, EXPLICIT_VR_LE)
    incoming = receive(archive, data, sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID, source_ae="MODALITY1")
    assert incoming.size == len(data)
    assert incoming.open().read() == data  # readable before commit (request.dataset())
    stored = clock.wait(incoming.commit())

    expected = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    assert Path(stored.path) == expected
    assert dcm_files(root) == [expected]
    assert incoming_files(root) == []
    info = part10_info(expected)
    assert expected.read_bytes()[info.dataset_offset :] == data
    assert expected.read_bytes()[128:132] == b"DICM"
    meta = dcmread(expected, stop_before_pixels=True).file_meta
    assert meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.TransferSyntaxUID == EXPLICIT_VR_LE
    assert meta.ImplementationClassUID == dimsekit.IMPLEMENTATION_CLASS_UID
    assert meta.ImplementationVersionName == dimsekit.IMPLEMENTATION_VERSION_NAME
    assert meta.SourceApplicationEntityTitle == "MODALITY1"
    assert meta.FileMetaInformationVersion == b"\x00\x01"
    assert incoming.open().read() == data  # and after, from the final file

    assert stored.sop_instance_uid == ds.SOPInstanceUID
    assert stored.study_instance_uid == ds.StudyInstanceUID
    assert stored.size == expected.stat().st_size
    assert stored.replaced is False and stored.duplicate_discarded is False
    assert clock.wait(archive.lookup(ds.SOPInstanceUID)).path == expected
    assert clock.wait(archive.lookup(generate_uid())) is None


def test_index_rows_hold_the_query_retrieve_keys(archive, clock):
    ds = make_dataset(modality="MR", sop_class=MR_IMAGE_STORAGE)
    stored = store(archive, clock, ds, transfer_syntax=IMPLICIT_VR_LE, source_ae="MRI")
    (patient,) = rows(archive, clock, "SELECT * FROM patient_summary")
    assert (patient["patient_id"], patient["patient_name"], patient["patient_birth_date"], patient["patient_sex"]) == (
        "PID1", "Doe^Jane", "19700101", "F")
    assert patient["number_of_patient_related_instances"] == 1
    (study,) = rows(archive, clock, "SELECT * FROM study_summary")
    assert study["study_instance_uid"] == ds.StudyInstanceUID
    assert (study["study_date"], study["study_time"], study["accession_number"], study["study_id"]) == (
        "20240131", "101500", "ACC1", "S1")
    assert study["referring_physician_name"] == "Ref^Doctor"
    assert study["study_description"] == "Head"
    assert study["modalities_in_study"] == "MR"
    assert (study["number_of_study_related_series"], study["number_of_study_related_instances"]) == (1, 1)
    (series,) = rows(archive, clock, "SELECT * FROM series_summary")
    assert (series["series_instance_uid"], series["modality"], series["series_number"], series["series_description"]) == (
        ds.SeriesInstanceUID, "MR", 3, "Axial")
    assert series["number_of_series_related_instances"] == 1
    (instance,) = rows(archive, clock, "SELECT * FROM instance")
    assert instance["sop_instance_uid"] == ds.SOPInstanceUID
    assert instance["sop_class_uid"] == MR_IMAGE_STORAGE
    assert instance["instance_number"] == 7
    assert instance["transfer_syntax_uid"] == IMPLICIT_VR_LE
    assert instance["source_ae"] == "MRI"
    assert instance["size"] == Path(stored.path).stat().st_size
    assert instance["path"] == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    assert instance["received_at"].endswith("+00:00")


def test_modalities_in_study_and_counts_are_derived(archive, clock):
    study = generate_uid()
    ct_series, mr_series = generate_uid(), generate_uid()
    for _ in range(3):
        store(archive, clock, make_dataset(study=study, series=ct_series, modality="CT"))
    store(archive, clock, make_dataset(study=study, series=mr_series, modality="MR", sop_class=MR_IMAGE_STORAGE))
    (row,) = rows(archive, clock, "SELECT * FROM study_summary")
    assert row["modalities_in_study"] == "CT\\MR"
    assert (row["number_of_study_related_series"], row["number_of_study_related_instances"]) == (2, 4)


def test_names_are_decoded_with_the_specific_character_set_which_is_kept(archive, clock):
    latin = make_dataset(charset="ISO_IR 100", patient_name="Müller^Jürgen", patient_id="L1")
    utf8 = make_dataset(charset="ISO_IR 192", patient_name="Иванов^Иван", patient_id="U1")
    for ds in (latin, utf8):
        store(archive, clock, ds)
    found = {r["patient_id"]: r for r in rows(archive, clock, "SELECT * FROM patient")}
    assert found["L1"]["patient_name"] == "Müller^Jürgen"
    assert found["L1"]["specific_character_set"] == "ISO_IR 100"
    assert found["U1"]["patient_name"] == "Иванов^Иван"
    assert found["U1"]["specific_character_set"] == "ISO_IR 192"
    # the bytes on disk are the sender's: Latin-1, not UTF-8
    path = Path(clock.wait(archive.lookup(latin.SOPInstanceUID)).path)
    assert "Müller".encode("latin-1") in path.read_bytes()


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_dates_and_times_in_the_acr_nema_form_are_indexed_in_the_current_one(archive, clock):
    # PS3.5 Table 6.2-1 (DA, TM): YYYY.MM.DD and HH:MM:SS.frac, still sent by old devices.
    # Q/R compares dates as YYYYMMDD strings: "2006.07.05" matched neither 20060705 nor a range.
    from dimsekit_plugins.qr.matching import condition_for

    store(archive, clock, make_dataset(StudyDate="2006.07.05", StudyTime="10:15:30.25",
                                       PatientBirthDate="1970.01.31"))
    (row,) = rows(archive, clock, "SELECT st.study_date, st.study_time, p.patient_birth_date"
                                  " FROM study st JOIN patient p ON p.pk = st.patient_pk")
    assert (row["study_date"], row["study_time"], row["patient_birth_date"]) == ("20060705", "101530.25", "19700131")
    for value in ("20060705", "20060101-20061231", "2006.07.05"):
        condition = condition_for("study_date", "DA", value)
        assert len(rows(archive, clock, f"SELECT 1 FROM study WHERE {condition.sql}", *condition.params)) == 1, value
    # values in neither form are kept as they are
    store(archive, clock, make_dataset(StudyDate="2006-07-05", StudyTime="10:15:3"))
    assert {r["study_date"] for r in rows(archive, clock, "SELECT study_date FROM study")} == {"20060705", "2006-07-05"}


def test_a_later_instance_lacking_an_attribute_keeps_the_known_value(archive, clock):
    study, series = generate_uid(), generate_uid()
    store(archive, clock, make_dataset(study=study, series=series))
    bare = make_dataset(study=study, series=series)
    del bare.StudyDescription
    store(archive, clock, bare)
    (row,) = rows(archive, clock, "SELECT study_description FROM study")
    assert row["study_description"] == "Head"


def test_a_later_instance_lacking_the_patient_id_or_its_issuer_leaves_the_study_with_its_patient(archive, clock):
    # One instance of a study without Issuer of Patient ID (a presentation state, a key object
    # made elsewhere), or without Patient ID at all, moved the whole study to another patient:
    # (P1, "") -- the issuer and the Other Patient IDs known were lost -- or ("", ""), the one
    # patient of every instance without a Patient ID.  Unknown is not different.
    study = generate_uid()
    other = Dataset()
    other.PatientID = "X-77"
    other.IssuerOfPatientID = "OTHER"
    store(archive, clock, make_dataset(study=study, patient_id="P1", IssuerOfPatientID="HOSP",
                                       OtherPatientIDsSequence=Sequence([other])))
    store(archive, clock, make_dataset(study=study, series=generate_uid(), patient_id="P1", modality="PR"))
    lacking_id = make_dataset(study=study, series=generate_uid(), patient_id="", modality="KO")
    store(archive, clock, lacking_id)
    store(archive, clock, make_dataset(patient_id="", patient_name="Nobody^Known"))  # another study, no ID
    (row,) = rows(archive, clock, "SELECT p.patient_id, p.issuer_of_patient_id, p.patient_name,"
                                  " (SELECT COUNT(*) FROM patient_other_id o WHERE o.patient_pk = p.pk) AS others"
                                  " FROM study st JOIN patient p ON p.pk = st.patient_pk"
                                  " WHERE st.study_instance_uid = ?", study)
    assert (row["patient_id"], row["issuer_of_patient_id"], row["patient_name"], row["others"]) == (
        "P1", "HOSP", "Doe^Jane", 1)
    record = clock.wait(archive.lookup(lacking_id.SOPInstanceUID)).record
    assert (record.patient_id, record.issuer_of_patient_id) == ("P1", "HOSP")
    # a Patient ID that differs is a correction: the study goes to that patient
    store(archive, clock, make_dataset(study=study, patient_id="P2"))
    assert [r["patient_id"] for r in rows(archive, clock, "SELECT p.patient_id FROM study st JOIN patient p"
                                          " ON p.pk = st.patient_pk WHERE st.study_instance_uid = ?", study)] == ["P2"]


def test_blocking_work_runs_in_worker_threads_never_the_reactor_thread(archive, clock, monkeypatch):
    threads: list[int] = []
    real_put, real_fsync = index.put, os.fsync

    def put(conn, record):
        threads.append(threading.get_ident())
        return real_put(conn, record)

    def fsync(fd):
        threads.append(threading.get_ident())
        return real_fsync(fd)

    monkeypatch.setattr(index, "put", put)
    monkeypatch.setattr(store_module.os, "fsync", fsync)
    store(archive, clock, make_dataset())
    assert len(threads) >= 3  # file, directories, index
    assert clock.main_thread not in threads


def test_many_concurrent_commits_all_land(archive, clock, root):
    datasets = [make_dataset() for _ in range(25)]
    incomings = [receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID)
                 for ds in datasets]
    from twisted.internet.defer import gatherResults

    clock.wait(gatherResults([i.commit() for i in incomings]))
    assert len(dcm_files(root)) == 25
    assert rows(archive, clock, "SELECT COUNT(*) AS n FROM instance")[0]["n"] == 25
    assert incoming_files(root) == []


# -- duplicates ---------------------------------------------------------------------------------


def _twice(root, clock, policy, *, move=False):
    archive = _open(root, clock, duplicates=policy)
    try:
        first = make_dataset(pixels=b"\x01\x00" * 16)
        uid = first.SOPInstanceUID
        store(archive, clock, first)
        second = make_dataset(sop_instance=uid, pixels=b"\x02\x00" * 16,
                              study=None if move else first.StudyInstanceUID,
                              series=None if move else first.SeriesInstanceUID)
        incoming = receive(archive, encode(second), sop_class=CT_IMAGE_STORAGE, sop_instance=uid)
        try:
            outcome = clock.wait(incoming.commit())
        except Exception as exc:  # noqa: BLE001
            outcome = exc
        listed = rows(archive, clock, "SELECT * FROM instance")
        studies = rows(archive, clock, "SELECT study_instance_uid FROM study")
        return outcome, listed, studies, first, second
    finally:
        clock.wait(archive.close())


def test_duplicates_newest_replaces_the_stored_copy(root, clock):
    outcome, listed, _, _first, second = _twice(root, clock, "newest")
    assert outcome.replaced is True
    assert len(listed) == 1
    assert dcmread(outcome.path).PixelData == second.PixelData
    assert len(dcm_files(root)) == 1 and incoming_files(root) == []


def _descriptors_of(inode: tuple[int, int]) -> list[int]:
    """This process's open descriptors of the file ``(st_dev, st_ino)``."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(int(name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == inode:
            found.append(int(name))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_duplicates_newest_frees_the_replaced_copy_after_the_answer_not_in_the_rename(root, clock, monkeypatch):
    """The rename over the stored copy would free its blocks before the answer: it is held open
    through the rename and closed once the commit is done (no descriptor left behind)."""
    archive = _open(root, clock, duplicates="newest")
    held_during_rename = []
    real_rename = store_module.Archive._rename_into_place

    def rename(self, temp, final):
        if final.exists():
            st = final.stat()
            held_during_rename.append(_descriptors_of((st.st_dev, st.st_ino)))
        real_rename(self, temp, final)

    monkeypatch.setattr(store_module.Archive, "_rename_into_place", rename)
    try:
        ds = make_dataset(pixels=b"\x01\x00" * 16)
        first = store(archive, clock, ds)
        st = os.stat(first.path)
        old = (st.st_dev, st.st_ino)
        again = store(archive, clock, make_dataset(sop_instance=ds.SOPInstanceUID, pixels=b"\x02\x00" * 16,
                                                   study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID))
        assert again.replaced is True
        assert len(held_during_rename[-1]) == 1
        deadline = time.monotonic() + 10  # the commit's worker closes it after the answer
        while _descriptors_of(old) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _descriptors_of(old) == []
        assert dcmread(again.path).PixelData == b"\x02\x00" * 16
    finally:
        clock.wait(archive.close())


def test_hold_opens_a_stored_copy_and_tells_a_missing_one_from_one_it_cannot_open(tmp_path):
    missing = tmp_path / "missing.dcm"
    assert store_module._hold(missing) == (None, False)
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(b"old")
    held, existed = store_module._hold(stored)
    try:
        assert existed and os.read(held.fd, 3) == b"old"
    finally:
        held.release()
    assert held.fd is None
    held.release()  # once only
    link = tmp_path / "link.dcm"  # not followed (O_NOFOLLOW), but there
    link.symlink_to(stored)
    assert store_module._hold(link) == (None, True)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_a_file_system_refusing_to_replace_a_file_held_open_gets_the_rename_again_without_it(root, clock,
                                                                                          monkeypatch):
    """Some file systems (SMB servers) will not rename over a file someone holds open: the old
    copy is let go and the rename tried again, so replacing still works there."""
    archive = _open(root, clock, duplicates="newest")
    real_replace = os.replace
    refused = []

    def replace(src, dst):
        if os.path.exists(dst):
            st = os.stat(dst)
            if _descriptors_of((st.st_dev, st.st_ino)):
                refused.append(dst)
                raise OSError(errno.EBUSY, "Device or resource busy", str(dst))
        return real_replace(src, dst)

    try:
        ds = make_dataset(pixels=b"\x01\x00" * 16)
        store(archive, clock, ds)
        monkeypatch.setattr(store_module.os, "replace", replace)
        again = store(archive, clock, make_dataset(sop_instance=ds.SOPInstanceUID, pixels=b"\x02\x00" * 16,
                                                   study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID))
        assert len(refused) == 1  # refused once while held, then done without the hold
        assert again.replaced is True
        assert dcmread(again.path).PixelData == b"\x02\x00" * 16
        assert len(dcm_files(root)) == 1 and incoming_files(root) == []
    finally:
        clock.wait(archive.close())


@pytest.mark.skipif(not hasattr(os, "POSIX_FADV_DONTNEED"), reason="needs posix_fadvise")
def test_commit_starts_the_tails_write_out_itself_before_the_worker_syncs(archive, clock, monkeypatch):
    """A large data set's last bytes (here all but its first 64 KiB: under the 256 KiB at which
    the receiving thread asks for write-out) are written, and their write-out started, by the
    thread that commits -- not left for the worker's fsync to start."""
    advised = []
    real = os.posix_fadvise

    def fadvise(fd, offset, length, advice):
        advised.append((threading.current_thread() is threading.main_thread(), advice, os.fstat(fd).st_size))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(store_module.os, "posix_fadvise", fadvise)
    ds = make_dataset(pixels=b"\x01\x00" * 60_000)
    size = len(encode(ds))
    assert 64 * 1024 < size < 256 * 1024
    incoming = receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID)
    assert advised == []  # nothing asked while receiving
    stored = clock.wait(incoming.commit())
    assert dcmread(stored.path).PixelData == ds.PixelData
    ((_, advice, file_size),) = [call for call in advised if call[0]]
    assert advice == os.POSIX_FADV_DONTNEED
    assert file_size == os.path.getsize(stored.path)  # all of it written when asked


def test_duplicates_newest_moving_to_another_study_removes_the_old_file_and_empty_rows(root, clock):
    outcome, listed, studies, first, second = _twice(root, clock, "newest", move=True)
    assert dcm_files(root) == [Path(outcome.path)]
    assert (listed[0]["series_instance_uid"],) == (second.SeriesInstanceUID,)
    assert studies == [{"study_instance_uid": second.StudyInstanceUID}]


def test_duplicates_first_keeps_the_stored_copy_and_discards_the_new_one(root, clock):
    outcome, listed, _, first, _second = _twice(root, clock, "first")
    assert outcome.duplicate_discarded is True and outcome.replaced is False
    assert len(listed) == 1
    assert dcmread(outcome.path).PixelData == first.PixelData
    assert len(dcm_files(root)) == 1 and incoming_files(root) == []


def test_duplicates_reject_refuses_with_duplicate_sop_instance(root, clock):
    outcome, listed, _, first, _second = _twice(root, clock, "reject")
    assert isinstance(outcome, DuplicateRejected)
    assert outcome.status == 0x0111
    (path,) = dcm_files(root)
    assert dcmread(path).PixelData == first.PixelData
    assert len(listed) == 1 and incoming_files(root) == []


def test_a_row_whose_file_vanished_is_no_duplicate(root, clock):
    archive = _open(root, clock, duplicates="reject")
    try:
        ds = make_dataset()
        stored = store(archive, clock, ds)
        Path(stored.path).unlink()
        again = store(archive, clock, ds)
        assert Path(again.path).exists()
    finally:
        clock.wait(archive.close())


@pytest.mark.parametrize("move", [False, True], ids=["same place", "moved"])
def test_duplicates_newest_whose_stored_file_vanished_is_no_replacement(root, clock, move):
    archive = _open(root, clock, duplicates="newest")
    try:
        ds = make_dataset()
        stored = store(archive, clock, ds)
        Path(stored.path).unlink()
        again = make_dataset(sop_instance=ds.SOPInstanceUID, pixels=b"\x03\x00" * 16,
                             study=None if move else ds.StudyInstanceUID,
                             series=None if move else ds.SeriesInstanceUID)
        outcome = store(archive, clock, again)
        assert outcome.replaced is False
        assert dcm_files(root) == [Path(outcome.path)]
        assert len(rows(archive, clock, "SELECT * FROM instance")) == 1
    finally:
        clock.wait(archive.close())


def test_duplicates_newest_stores_without_looking_the_instance_up_first(root, clock, monkeypatch):
    """index.put says what it replaced: no index.get per instance (its SQL and lock) for the default policy."""
    archive = _open(root, clock, duplicates="newest")
    looked_up = []
    real_get = store_module.index.get
    monkeypatch.setattr(store_module.index, "get", lambda conn, uid: (looked_up.append(uid), real_get(conn, uid))[1])
    try:
        ds = make_dataset()
        store(archive, clock, ds)
        outcome = store(archive, clock, make_dataset(sop_instance=ds.SOPInstanceUID, study=ds.StudyInstanceUID,
                                                     series=ds.SeriesInstanceUID))
        assert outcome.replaced is True
        assert looked_up == []
    finally:
        clock.wait(archive.close())


def test_a_series_directory_removed_by_hand_is_made_again(root, clock):
    """Directories known to exist are not stat'ed again; one that vanished is recreated, not a failure."""
    archive = _open(root, clock)
    try:
        first = make_dataset()
        stored = store(archive, clock, first)
        series_dir = Path(stored.path).parent
        Path(stored.path).unlink()
        series_dir.rmdir()
        series_dir.parent.rmdir()
        second = make_dataset(study=first.StudyInstanceUID, series=first.SeriesInstanceUID)
        again = store(archive, clock, second)
        assert Path(again.path).parent == series_dir and Path(again.path).is_file()
    finally:
        clock.wait(archive.close())


# -- refusals -------------------------------------------------------------------------------------


BAD_UIDS = ["../../etc/x", "1.2.3/4", "..", ".", "1..2", ".1.2", "1.2.", "", "1" * 65, "1.2.3a", "1.2 3", "/1.2"]


@pytest.mark.parametrize("uid", BAD_UIDS)
def test_receive_refuses_an_unusable_sop_instance_uid_before_writing(archive, root, tmp_path, uid):
    before = all_files(tmp_path)
    with pytest.raises(InvalidUID) as caught:
        archive.receive(CT_IMAGE_STORAGE, uid, EXPLICIT_VR_LE, "X")
    assert caught.value.status == 0x0117
    assert all_files(tmp_path) == before
    assert incoming_files(root) == []


def test_what_pydicom_says_of_a_data_set_being_stored_names_the_instance_and_its_sender(archive, clock, pydicom_said):
    ds = make_dataset()
    ds.SpecificCharacterSet = "ISO_IR 999"  # no such character set: pydicom says so as the index reads the names
    before = len(pydicom_said())  # (what it said as the test made the data set)
    stored = store(archive, clock, ds, source_ae="MODALITY7")
    assert stored.sop_instance_uid == ds.SOPInstanceUID  # said, and stored all the same
    said = pydicom_said()[before:]  # (the test's encoding of the data set says it too, of nothing read)
    assert f"pydicom, storing {ds.SOPInstanceUID} from MODALITY7: " \
           "Unknown encoding 'ISO_IR 999' - using default encoding instead" in said


def test_uid_checks():
    assert is_uid("1.2.840.10008.5.1.4.1.1.2") and is_uid("0") and is_uid("1.02.3")
    assert is_uid("1" * 64) and not is_uid("1" * 65)
    for bad in BAD_UIDS + [None, 12]:
        assert not is_uid(bad)
    with pytest.raises(InvalidUID, match="Study Instance UID"):
        check_uid("x", "Study Instance UID")


@pytest.mark.parametrize("value, said", [
    (None, "Study Instance UID is missing"),
    ("", "Study Instance UID is empty"),
    ("1.2.x", "Study Instance UID '1.2.x' is not a UID (digits and dots, at most 64 characters)"),
])
def test_an_unusable_uid_is_named_for_what_is_wrong_with_it(value, said):
    with pytest.raises(InvalidUID) as caught:
        check_uid(value, "Study Instance UID")
    assert str(caught.value) == said


@pytest.mark.parametrize("keyword, said", [("StudyInstanceUID", "Study Instance UID is missing"),
                                           ("SeriesInstanceUID", "Series Instance UID is missing")])
def test_a_data_set_without_its_study_or_series_uid_is_refused_saying_so(archive, clock, root, keyword, said):
    ds = make_dataset()
    delattr(ds, keyword)
    error = clock.failure_of(receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE,
                                     sop_instance=ds.SOPInstanceUID).commit())
    assert error.status == 0xA900 and str(error) == said
    assert dcm_files(root) == [] and incoming_files(root) == []


@pytest.mark.parametrize("keyword, value", [("StudyInstanceUID", "../../x"), ("SeriesInstanceUID", "1..2")])
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_data_set_with_an_unusable_study_or_series_uid_does_not_match(archive, clock, root, tmp_path, keyword, value):
    ds = make_dataset()
    setattr(ds, keyword, value)
    incoming = receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID)
    error = clock.failure_of(incoming.commit())
    assert error.status == 0xA900
    assert dcm_files(tmp_path) == [] and incoming_files(root) == []
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("field, tag", [("SOPInstanceUID", 0x00080018), ("SOPClassUID", 0x00080016)])
def test_a_data_set_contradicting_its_command_does_not_match(archive, clock, root, field, tag):
    ds = make_dataset()
    command_instance = str(ds.SOPInstanceUID) if field == "SOPClassUID" else generate_uid()
    command_class = MR_IMAGE_STORAGE if field == "SOPClassUID" else CT_IMAGE_STORAGE
    incoming = receive(archive, encode(ds), sop_class=command_class, sop_instance=command_instance)
    error = clock.failure_of(incoming.commit())
    assert isinstance(error, DatasetMismatch)
    assert (error.status, error.offending) == (0xA900, (tag,))
    assert dcm_files(root) == [] and incoming_files(root) == []


def test_a_data_set_without_its_sop_instance_uid_does_not_match(archive, clock, root):
    ds = make_dataset()
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    error = clock.failure_of(receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=uid).commit())
    assert (error.status, error.offending) == (0xA900, (0x00080018,))


def test_an_unparseable_data_set_cannot_be_understood(archive, clock, root):
    incoming = receive(archive, b"this is not deflated data", sop_class=CT_IMAGE_STORAGE,
                       sop_instance=generate_uid(), transfer_syntax=DEFLATED)
    error = clock.failure_of(incoming.commit())
    assert isinstance(error, CannotUnderstand) and error.status == 0xC000
    assert dcm_files(root) == [] and incoming_files(root) == []


def _encapsulated(fragments: int, size: int) -> Dataset:
    """An instance whose JPEG-like encapsulated pixel data of ``fragments`` x ``size`` bytes ends the data set
    (the archive does not decode it), and a Data Set Trailing Padding after it."""
    from pydicom.encaps import encapsulate

    ds = make_dataset(pixels=b"")
    ds.add_new(0x7FE00010, "OB", encapsulate([bytes([n % 251]) * size for n in range(fragments)]))
    ds["PixelData"].is_undefined_length = True
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 4)
    return ds


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


@pytest.mark.parametrize("size", [3000, 200_000], ids=["in memory", "read back from its file"])
@pytest.mark.parametrize("cut", [1, 4, 9, 2000])
def test_a_data_set_cut_short_cannot_be_understood_and_leaves_nothing(archive, clock, root, size, cut):
    """A sender that stops short -- a file truncated on its disk, sent as it is: every
    element up to the pixel data is there, so the header reads well. Success would
    be an image lost."""
    ds = _encapsulated(3, size // 3)
    data = encode(ds, JPEG_BASELINE)
    incoming = receive(archive, data[:-cut], sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID,
                       transfer_syntax=JPEG_BASELINE, chunk=16_384)
    error = clock.failure_of(incoming.commit())
    assert isinstance(error, CannotUnderstand) and error.status == 0xC000
    assert "the data set is cut short: " in str(error)
    assert dcm_files(root) == [] and incoming_files(root) == []
    stored = store(archive, clock, ds, transfer_syntax=JPEG_BASELINE)  # the whole one is stored
    assert Path(stored.path).read_bytes().endswith(data)


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE], ids=["explicit", "implicit"])
@pytest.mark.parametrize("size", [3000, 200_000], ids=["in memory", "read back from its file"])
def test_encapsulated_pixel_data_in_a_native_syntax_cannot_be_understood(archive, clock, root, syntax, size):
    """A sender that puts compressed fragments on an uncompressed presentation context (one
    did: odil's store, JPEG 2000 on Explicit VR Little Endian): stored, the file would say
    native pixels and hold fragments -- no reader gets an image from it."""
    ds = _encapsulated(3, size // 3)
    data = encode(ds, JPEG_BASELINE)  # the bytes as the sender wrote them: explicit VR
    if syntax == IMPLICIT_VR_LE:  # the elements before in implicit VR, then the same fragments
        first = data.index(b"\xfe\xff\x00\xe0")
        after = data.index(b"\xfe\xff\xdd\xe0", first) + 8
        head = Dataset({tag: ds[tag] for tag in ds.keys() if tag < 0x7FE00010})
        data = encode(head, IMPLICIT_VR_LE) + b"\xe0\x7f\x10\x00\xff\xff\xff\xff" + data[first:after]
    incoming = receive(archive, data, sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID,
                       transfer_syntax=syntax, chunk=16_384)
    error = clock.failure_of(incoming.commit())
    assert isinstance(error, CannotUnderstand) and error.status == 0xC000
    name = "Explicit" if syntax == EXPLICIT_VR_LE else "Implicit"
    assert str(error).startswith(f"encapsulated Pixel Data in {name} VR Little Endian (PS3.5 A.4): "
                                 "Pixel Data (7FE0,0010) at offset "), str(error)
    assert dcm_files(root) == [] and incoming_files(root) == []
    stored = store(archive, clock, ds, transfer_syntax=JPEG_BASELINE)  # in its own syntax it is stored
    assert Path(stored.path).read_bytes().endswith(encode(ds, JPEG_BASELINE))


def test_rle_labelled_jpeg_2000_cannot_be_understood(archive, clock, root):
    """CTN's send_image sends every instance of a SOP class in the first one's transfer syntax:
    RLE fragments on a JPEG 2000 context. Stored, no JPEG 2000 decoder reads them."""
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    j2k = "1.2.840.10008.1.2.4.91"
    data = encode(ds, j2k)
    incoming = receive(archive, data, sop_class=ds.SOPClassUID, sop_instance=ds.SOPInstanceUID,
                       transfer_syntax=j2k, chunk=16_384)
    error = clock.failure_of(incoming.commit())
    assert isinstance(error, CannotUnderstand) and error.status == 0xC000
    assert str(error).startswith("RLE data in JPEG 2000 Image Compression: the first fragment of its Pixel Data")
    assert dcm_files(root) == [] and incoming_files(root) == []
    stored = store(archive, clock, ds, transfer_syntax="1.2.840.10008.1.2.5")  # labelled RLE, it is stored
    assert Path(stored.path).read_bytes().endswith(encode(ds, "1.2.840.10008.1.2.5"))


def test_a_native_pixel_data_value_cut_short_cannot_be_understood(archive, clock, root):
    ds = make_dataset(pixels=b"\1\2" * 100_000)
    data = encode(ds)
    incoming = receive(archive, data[:-1000], sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID,
                       chunk=16_384)
    error = clock.failure_of(incoming.commit())
    offset = len(data) - 200_012
    assert str(error).endswith(f"(7FE0,0010) at offset {offset} has a value of 200000 bytes, 199000 are left")
    assert dcm_files(root) == [] and incoming_files(root) == []


def test_a_deflated_data_set_is_stored_as_received(archive, clock):
    ds = make_dataset()
    data = encode(ds, DEFLATED)
    stored = clock.wait(receive(archive, data, sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID,
                                transfer_syntax=DEFLATED).commit())
    assert Path(stored.path).read_bytes().endswith(data)
    assert dcmread(stored.path).PixelData == ds.PixelData


def test_below_the_disk_floor_receive_refuses_before_writing(root, clock, tmp_path):
    free_mb = shutil.disk_usage(tmp_path).free // (1 << 20)
    archive = _open(root, clock, min_free_mb=free_mb + 10_000)
    try:
        before = all_files(tmp_path)
        with pytest.raises(OutOfResources, match="min_free_mb") as caught:
            archive.receive(CT_IMAGE_STORAGE, generate_uid(), EXPLICIT_VR_LE, "X")
        assert caught.value.status == 0xA700
        assert all_files(tmp_path) == before
    finally:
        clock.wait(archive.close())


def test_a_write_error_drops_the_data_and_fails_the_commit_out_of_resources(archive, clock, root, monkeypatch):
    ds = make_dataset()
    incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "X")
    big = store_module._WRITEBACK + 10
    incoming.write(b"\x00" * big)
    incoming._drain()  # as the pool does: now in its file
    assert len(incoming_files(root)) == 1

    def full(fd, chunks):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "_write_chunks", full)
    incoming.write(b"\x00" * 100)
    incoming._drain()
    incoming.write(b"\x00" * 100)  # later fragments are counted, not written
    incoming.close()
    assert incoming.size == big + 200
    assert incoming_files(root) == []
    error = clock.failure_of(incoming.commit())
    assert isinstance(error, OutOfResources) and "disk full" in str(error)
    assert dcm_files(root) == []


def test_a_small_instances_file_is_made_by_a_pool_thread_and_a_failed_creation_fails_the_commit(archive, clock, root,
                                                                                               monkeypatch):
    ds = make_dataset()
    threads = drain_threads(monkeypatch)
    stored = clock.wait(receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE,
                                sop_instance=ds.SOPInstanceUID).commit())
    assert Path(stored.path).is_file()
    assert threads and threading.main_thread() not in threads  # created and written by pool threads

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    ds2 = make_dataset()
    monkeypatch.setattr(store_module, "_create", full)
    incoming = receive(archive, encode(ds2), sop_class=CT_IMAGE_STORAGE, sop_instance=ds2.SOPInstanceUID)
    assert incoming.open().read() == encode(ds2)  # the data set is still readable from memory
    error = clock.failure_of(incoming.commit())
    assert isinstance(error, OutOfResources) and "disk full" in str(error)
    monkeypatch.undo()
    assert [p.name for p in dcm_files(root)] == [Path(stored.path).name] and incoming_files(root) == []


@pytest.mark.parametrize("pixels", [32, 2 * store_module._WRITEBACK], ids=["small", "large"])
def test_abort_leaves_no_file_and_no_row(archive, clock, root, pixels):
    ds = make_dataset(pixels=b"\x01" * pixels)
    data = encode(ds)
    incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "X")
    incoming.write(data[: len(data) // 2])
    incoming._drain()  # as the pool does
    assert len(incoming_files(root)) == 1
    incoming.abort()
    incoming.abort()  # idempotent
    assert incoming_files(root) == [] and dcm_files(root) == []
    assert clock.wait(archive.lookup(ds.SOPInstanceUID)) is None
    incoming.write(data[len(data) // 2 :])  # what still arrives is dropped
    incoming.close()
    assert incoming_files(root) == []
    assert isinstance(clock.failure_of(incoming.commit()), OutOfResources)


def test_commit_before_the_last_fragment_or_twice_is_refused(archive, clock):
    ds = make_dataset()
    incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "X")
    incoming.write(encode(ds))
    assert isinstance(clock.failure_of(incoming.commit()), dimsekit.LocalProtocolError)
    incoming.close()
    d = incoming.commit()
    assert isinstance(clock.failure_of(incoming.commit()), dimsekit.LocalProtocolError)
    clock.wait(d)


def test_close_aborts_instances_in_progress_and_refuses_new_ones(root, clock):
    archive = _open(root, clock)
    incoming = archive.receive(CT_IMAGE_STORAGE, generate_uid(), EXPLICIT_VR_LE, "X")
    incoming.write(b"\x08\x00")
    clock.wait(archive.close())
    assert incoming.state == "aborted" and incoming_files(root) == []
    with pytest.raises(OutOfResources):
        archive.receive(CT_IMAGE_STORAGE, generate_uid(), EXPLICIT_VR_LE, "X")
    clock.wait(archive.close())  # idempotent


def test_close_waits_for_commits_in_progress(root, clock):
    archive = _open(root, clock)
    ds = make_dataset()
    commit = receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID).commit()
    closed = archive.close()
    stored = clock.wait(commit)
    clock.wait(closed)
    assert Path(stored.path).exists()


def test_the_shutdown_trigger_stops_the_threads_and_lets_a_commit_in_progress_finish(root, clock):
    archive = _open(root, clock)
    (trigger,) = [f for f, _a, _k in clock.triggers["during"]["shutdown"] if getattr(f, "__self__", None) is archive]
    ds = make_dataset()
    receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID).commit()
    half = archive.receive(CT_IMAGE_STORAGE, generate_uid(), EXPLICIT_VR_LE, "X")
    half.write(b"\x08\x00")
    trigger()  # as the reactor calls it: synchronously, and it runs no callbacks afterwards
    assert not any(t.is_alive() for t in archive._pool.threads)
    assert half.state == "aborted" and incoming_files(root) == []
    assert len(dcm_files(root)) == 1
    with sqlite3.connect(root / "index.sqlite") as conn:
        assert conn.execute("SELECT sop_instance_uid FROM instance").fetchall() == [(ds.SOPInstanceUID,)]
    with pytest.raises(OutOfResources):
        archive.receive(CT_IMAGE_STORAGE, generate_uid(), EXPLICIT_VR_LE, "X")
    clock.wait(archive.close())  # still fine afterwards


def test_close_waits_for_all_work_in_progress_and_refuses_work_afterwards(root, clock):
    archive = _open(root, clock)
    for ds in (make_dataset(), make_dataset()):
        _plant_file(root, ds)
    reconciled = archive.reconcile()
    looked_up = archive.lookup(generate_uid())
    closed = archive.close()
    clock.wait(closed)
    assert reconciled.called and looked_up.called
    assert clock.wait(reconciled)["instances"] == 2
    assert archive._conn is None  # nothing reopened the index behind close()
    assert isinstance(clock.failure_of(archive.lookup(generate_uid())), OutOfResources)
    assert isinstance(clock.failure_of(archive.reconcile()), OutOfResources)


def test_one_archive_at_a_time_uses_a_data_directory(root, clock):
    first = _open(root, clock)
    second = Archive(root, reactor=clock, min_free_mb=0)
    with pytest.raises(OutOfResources, match=f"in use by process {os.getpid()}"):
        second.start()
    with pytest.raises(OutOfResources):
        second.receive(CT_IMAGE_STORAGE, generate_uid(), EXPLICIT_VR_LE, "X")
    clock.wait(first.close())
    second.start()  # free again once the first is closed
    clock.wait(second.close())


# -- the page cache ------------------------------------------------------------------------------


def _file_system(path: Path) -> str:
    """The type of the file system ``path`` is on (the longest mount point above it)."""
    path = path.resolve()
    best, kind = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            if (path == Path(point) or Path(point) in path.parents) and len(point) > len(best):
                best, kind = point, fields[2]
    return kind


@pytest.fixture
def disk_root(tmp_path):
    """A data directory on a file system with a page cache of its own (not tmpfs, where
    the pages are the file): the checkout's when the temporary directory is in memory."""
    if _file_system(tmp_path) not in ("tmpfs", "ramfs"):
        yield tmp_path / "data"
        return
    here = Path(tempfile.mkdtemp(prefix=".page-cache-test-", dir=Path(__file__).resolve().parents[2]))
    try:
        yield here / "data"
    finally:
        shutil.rmtree(here, ignore_errors=True)


def resident_pages(path: Path) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages in all), by mincore(2)."""
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    vector = ctypes.create_string_buffer(pages)
    with path.open("rb") as f:
        mapped = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)  # maps the cached pages, reads none
        try:
            view = ctypes.c_char.from_buffer(mapped)
            try:
                if libc.mincore(ctypes.addressof(view), size, vector) != 0:
                    raise OSError(ctypes.get_errno(), "mincore")
            finally:
                del view
        finally:
            mapped.close()
    return sum(byte & 1 for byte in vector.raw), pages


@pytest.mark.parametrize("keep_cached", [False, True])
def test_a_large_instance_leaves_the_page_cache_once_synced(disk_root, clock, keep_cached, monkeypatch):
    """A stored instance of 256 KiB or more is dropped from the page cache after its fsync
    (the next instance's writes reuse its pages), unless keep_cached; a smaller one stays.

    What the archive asks of the kernel is recorded: pages asked to stay may still go (a CI
    machine under memory pressure kept none of them), so only the drop is read in the cache."""
    dropped: list[str] = []  # the files asked to leave the page cache once in their place
    real_fadvise = os.posix_fadvise

    def recording(fd, offset, length, advice):
        if advice == os.POSIX_FADV_DONTNEED:  # (also the write-out kick while in .incoming)
            dropped.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording)
    archive = _open(disk_root, clock, keep_cached=keep_cached)
    try:
        fresh = store(archive, clock, make_dataset(pixels=os.urandom(1 << 20)))  # renamed into place, then synced
        first = make_dataset(pixels=os.urandom(1 << 20))
        store(archive, clock, first)
        # the same instance again replaces the stored copy in place (synced before its rename)
        again = make_dataset(pixels=os.urandom(1 << 20), sop_instance=str(first.SOPInstanceUID),
                             study=str(first.StudyInstanceUID), series=str(first.SeriesInstanceUID))
        replaced = store(archive, clock, again)
        small = store(archive, clock, make_dataset(pixels=os.urandom(64 << 10)))
    finally:
        clock.wait(archive.close())
    assert replaced.replaced
    for stored in (fresh, replaced):
        cached, pages = resident_pages(Path(stored.path))
        assert pages > 256
        if keep_cached:
            assert os.path.realpath(stored.path) not in dropped
        else:
            assert os.path.realpath(stored.path) in dropped
            assert cached == 0, (cached, pages)
    assert os.path.realpath(small.path) not in dropped  # not worth a system call


# -- reconcile -------------------------------------------------------------------------------------


def _plant_file(root: Path, ds) -> Path:
    """A Part 10 file in the layout, as if renamed into place before a crash (no row)."""
    from dimsekit_plugins.archive.store import part10_header

    path = root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(part10_header(str(ds.SOPClassUID), ds.SOPInstanceUID, EXPLICIT_VR_LE, "PLANTER") + encode(ds))
    return path


def test_reconcile_fixes_every_kind_of_disagreement(root, clock):
    archive = _open(root, clock)
    kept = store(archive, clock, make_dataset())
    gone = make_dataset()
    gone_path = Path(store(archive, clock, gone).path)
    changed = make_dataset()
    changed_path = Path(store(archive, clock, changed).path)
    moved = make_dataset()
    store(archive, clock, moved)
    clock.wait(archive.close())

    # What a crash (or a hand) leaves behind:
    (root / ".incoming" / "1.2.3.4.deadbeef.part").write_bytes(b"half an instance")
    orphan = make_dataset(patient_id="ORPHAN", modality="MR", sop_class=MR_IMAGE_STORAGE)
    orphan_path = _plant_file(root, orphan)
    gone_path.unlink()
    changed.PatientName = "Changed^Name"
    changed.ImageComments = "x" * 300
    changed_path.write_bytes(part10_header_for(changed) + encode(changed))
    stale = make_dataset(sop_instance=moved.SOPInstanceUID)  # an older copy elsewhere
    stale_path = _plant_file(root, stale)
    os.utime(stale_path, ns=(0, 0))  # older than the indexed copy (see the lost-transaction test below)
    junk = root / "1.2.3" / "4.5.6" / "7.8.9.dcm"
    junk.parent.mkdir(parents=True)
    junk.write_bytes(b"not dicom at all")
    (root / "README.txt").write_text("not the archive's")

    archive = _open(root, clock)
    try:
        report = clock.wait(archive.reconcile())
        rel = lambda p: str(p.relative_to(root))  # noqa: E731
        assert report["temp_removed"] == ["1.2.3.4.deadbeef.part"]
        assert report["rows_dropped"] == [gone.SOPInstanceUID]
        assert report["files_indexed"] == [rel(orphan_path)]
        assert report["rows_refreshed"] == [rel(changed_path)]
        assert report["stale_removed"] == [rel(stale_path)]
        assert report["quarantined"] == [rel(junk)]
        assert set(report["dirs_removed"]) >= {"1.2.3/4.5.6", "1.2.3", f"{stale.StudyInstanceUID}/{stale.SeriesInstanceUID}"}
        assert report["instances"] == 4
        assert archive.last_reconcile == report

        assert incoming_files(root) == []
        assert not gone_path.exists() and not stale_path.exists() and not junk.exists()
        assert len(os.listdir(root / ".quarantine")) == 1
        assert (root / "README.txt").exists()
        uids = {r["sop_instance_uid"] for r in rows(archive, clock, "SELECT sop_instance_uid FROM instance")}
        assert uids == {kept.sop_instance_uid, orphan.SOPInstanceUID, changed.SOPInstanceUID, moved.SOPInstanceUID}
        found = clock.wait(archive.lookup(orphan.SOPInstanceUID))
        assert (found.patient_id, found.source_ae, found.transfer_syntax) == ("ORPHAN", "PLANTER", EXPLICIT_VR_LE)
        assert found.record.modality == "MR"
        names = {r["patient_name"] for r in rows(archive, clock, "SELECT patient_name FROM patient")}
        assert "Changed^Name" in names
        assert rows(archive, clock, "SELECT COUNT(*) AS n FROM study WHERE study_instance_uid = ?",
                    gone.StudyInstanceUID)[0]["n"] == 0

        again = clock.wait(archive.reconcile())
        assert [k for k, v in again.items() if isinstance(v, list) and v] == []
    finally:
        clock.wait(archive.close())


def part10_header_for(ds) -> bytes:
    from dimsekit_plugins.archive.store import part10_header

    return part10_header(str(ds.SOPClassUID), ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER")


def test_reconcile_reindexes_a_file_whose_index_transaction_was_lost(archive, clock, root):
    ds = make_dataset()
    store(archive, clock, ds)
    with sqlite3.connect(root / "index.sqlite") as conn:  # as if the commit never reached the disk
        conn.execute("DELETE FROM instance")
    report = clock.wait(archive.reconcile())
    assert len(report["files_indexed"]) == 1
    assert clock.wait(archive.lookup(ds.SOPInstanceUID)) is not None


def test_reconcile_keeps_the_copy_received_last_when_the_index_lost_its_move(root, clock):
    # A re-send moved an instance to another series: the new copy synced, indexed, the old file
    # removed, success sent.  A power cut then lost the index transaction (synchronous=NORMAL)
    # and the unlink (its directory not synced): the row names the old copy again.  The copy
    # received last is the instance: reconcile took the acknowledged one for a stale copy.
    archive = _open(root, clock)
    ds = make_dataset(patient_name="Before^Move")
    old = store(archive, clock, ds)
    old_bytes, old_record = Path(old.path).read_bytes(), old.record
    moved = make_dataset(sop_instance=ds.SOPInstanceUID, study=ds.StudyInstanceUID, patient_name="After^Move")
    new_path = Path(store(archive, clock, moved).path)
    clock.wait(archive.close())
    Path(old.path).write_bytes(old_bytes)  # as the power cut left it
    os.utime(old.path, ns=(new_path.stat().st_mtime_ns - 10**9,) * 2)
    with sqlite3.connect(root / "index.sqlite") as conn:
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("DELETE FROM instance")
    conn.close()
    conn = index.connect(str(root / "index.sqlite"))
    index.put(conn, old_record)
    conn.close()

    archive = _open(root, clock)
    try:
        report = clock.wait(archive.reconcile())
        assert report["stale_removed"] == [str(Path(old.path).relative_to(root))]
        assert new_path.exists() and not Path(old.path).exists()
        found = clock.wait(archive.lookup(ds.SOPInstanceUID))
        assert (Path(found.path), found.record.series_instance_uid) == (new_path, moved.SeriesInstanceUID)
        assert [r["patient_name"] for r in rows(archive, clock, "SELECT patient_name FROM patient")] == ["After^Move"]
    finally:
        clock.wait(archive.close())


def test_reconcile_leaves_instances_being_received_alone(archive, clock, root):
    incoming = archive.receive(CT_IMAGE_STORAGE, generate_uid(), EXPLICIT_VR_LE, "X")
    incoming.write(b"\x08\x00" * store_module._WRITEBACK)
    incoming._drain()  # in its temporary file already
    report = clock.wait(archive.reconcile())
    assert report["temp_removed"] == []
    assert incoming_files(root) == [incoming.temp_path.name]
    incoming.abort()


def test_reconcile_of_a_missing_index_rebuilds_it_from_the_files(root, clock):
    archive = _open(root, clock)
    datasets = [make_dataset() for _ in range(3)]
    for ds in datasets:
        store(archive, clock, ds)
    clock.wait(archive.close())
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    archive = _open(root, clock)
    try:
        report = clock.wait(archive.reconcile())
        assert len(report["files_indexed"]) == 3 and report["instances"] == 3
    finally:
        clock.wait(archive.close())


# -- settings ------------------------------------------------------------------------------------------


def test_settings_defaults_and_values(tmp_path):
    settings = ArchiveSettings.from_config(from_mapping({"node": {"data_dir": str(tmp_path / "d")}}))
    assert (settings.duplicates, settings.min_free_mb, settings.threads, settings.fsync, settings.keep_cached) == (
        "newest", 100.0, 4, True, False)
    assert settings.root == (tmp_path / "d").resolve()
    settings = ArchiveSettings.from_config(from_mapping({
        "plugins": {"storage": {"duplicates": "reject", "min_free_mb": 5},
                    "archive": {"threads": 2, "fsync": False, "keep_cached": True}},
    }))
    assert (settings.duplicates, settings.min_free_mb, settings.threads, settings.fsync, settings.keep_cached) == (
        "reject", 5.0, 2, False, True)
    assert Archive.from_settings(settings).keep_cached is True
    assert settings.root == (Path.cwd() / "dimsekit-data").resolve()


@pytest.mark.parametrize("plugins, key", [
    ({"storage": {"duplicates": "oldest"}}, "plugins.storage.duplicates"),
    ({"storage": {"min_free_mb": -1}}, "plugins.storage.min_free_mb"),
    ({"storage": {"min_free_mb": "lots"}}, "plugins.storage.min_free_mb"),
    ({"archive": {"threads": 0}}, "plugins.archive.threads"),
    ({"archive": {"fsync": "yes"}}, "plugins.archive.fsync"),
    ({"archive": {"keep_cached": 1}}, "plugins.archive.keep_cached"),
    ({"archive": {"thread": 2}}, "plugins.archive.thread"),
])
def test_bad_settings_name_the_key(plugins, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        ArchiveSettings.from_config(from_mapping({"plugins": plugins}))


def test_the_archive_plugin_checks_its_settings_at_configure():
    from dimsekit_plugins import archive as plugin

    with pytest.raises(ConfigError, match="plugins.archive.threads"):
        plugin.dimsekit_configure(config=from_mapping({"plugins": {"archive": {"threads": 100}}}))


def test_temporary_names_are_distinct_within_and_across_archives(root, clock):
    """The temporary file of each instance received has a name of its own, also for the same
    SOP Instance UID, and not one an archive opened before on the data directory gave."""
    names: list[str] = []
    for _ in range(2):
        archive = _open(root, clock)
        try:
            incoming = [archive.receive(CT_IMAGE_STORAGE, "1.2.3.4", EXPLICIT_VR_LE, "S") for _ in range(500)]
            names += [i.temp_path.name for i in incoming]
            for i in incoming:
                i.abort()
        finally:
            clock.wait(archive.close())
    assert len(set(names)) == 1000
    assert all(n.startswith("1.2.3.4.") and n.endswith(".part") for n in names)
