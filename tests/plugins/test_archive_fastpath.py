"""The archive's fast path: a cached File Meta header, the header read from the
first bytes received (for a large one while the rest arrives), the rename before the fsync
with the length recorded for reconcile, early writeback of large data sets."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_data_element
from pydicom.uid import ExplicitVRBigEndian, generate_uid
from twisted.logger import formatEvent

from dimsekit.datasets import dataset_truncation
from dimsekit_plugins.archive import Archive, OutOfResources, index
from dimsekit_plugins.archive import header as header_module
from dimsekit_plugins.archive import store as store_module
from dimsekit_plugins.archive.header import HeaderJob as _HeaderJob
from dimsekit_plugins.archive.header import header_from_prefix
from dimsekit_plugins.archive.store import (
    _LENGTH_XATTR,
    _PREFIX,
    _encode_part10_header,
    part10_header,
)
from tests.plugins.test_archive_support import (
    CT_IMAGE_STORAGE,
    DEFLATED,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    ThreadedClock,
    drain_threads,
    encode,
    make_dataset,
    receive,
    store,
    wait_for,
)

# -- the File Meta header --------------------------------------------------------------------

_uid = st.lists(st.integers(min_value=1, max_value=10**12), min_size=2, max_size=8).map(
    lambda parts: ".".join(map(str, parts))
).filter(lambda uid: len(uid) <= 64)


@settings(max_examples=200, deadline=None)
@given(sop_class=_uid, sop_instance=_uid, syntax=st.sampled_from([EXPLICIT_VR_LE, IMPLICIT_VR_LE, DEFLATED]),
       source_ae=st.sampled_from([None, "", "A", "STORESCU", "SIXTEEN_CHARS_AE"]))
def test_the_cached_header_is_byte_for_byte_what_pydicom_encodes(sop_class, sop_instance, syntax, source_ae):
    assert part10_header(sop_class, sop_instance, syntax, source_ae) == _encode_part10_header(
        sop_class, sop_instance, syntax, source_ae or ""
    )


def test_a_cached_header_carries_its_own_instance_uid(tmp_path):
    first, second = "1.2.3.4", "1.2.3.5"  # same length: same template
    for uid in (first, second):
        path = tmp_path / f"{uid}.dcm"
        path.write_bytes(part10_header(CT_IMAGE_STORAGE, uid, EXPLICIT_VR_LE, "AE") + encode(make_dataset(sop_instance=uid)))
        meta = dcmread(path).file_meta
        assert meta.MediaStorageSOPInstanceUID == uid
        assert meta.SourceApplicationEntityTitle == "AE"


# -- the header from the first bytes ---------------------------------------------------------


def _file_values(tmp_path: Path, data: bytes, syntax: str) -> dict:
    from dimsekit_plugins.archive import index

    path = tmp_path / "x.dcm"
    path.write_bytes(part10_header(CT_IMAGE_STORAGE, "1.2.3", syntax, None) + data)
    return index.header_values(dcmread(path, stop_before_pixels=True, specific_tags=list(index.HEADER_KEYWORDS)))


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE, ExplicitVRBigEndian])
@pytest.mark.parametrize("charset, name", [(None, "Doe^Jane"), ("ISO_IR 192", "Müller^Jürgen=山田^太郎")])
def test_values_from_the_whole_data_set_equal_those_read_from_the_file(tmp_path, syntax, charset, name):
    data = encode(make_dataset(charset=charset, patient_name=name), syntax)
    values = header_from_prefix(data, True, syntax)
    assert values == _file_values(tmp_path, data, syntax)
    assert values["patient_name"] == name


def test_a_large_data_set_is_read_from_its_first_bytes(tmp_path):
    data = encode(make_dataset(pixels=b"\x07" * (3 * _PREFIX)))
    values = header_from_prefix(data[:_PREFIX], False, EXPLICIT_VR_LE)
    assert values is not None
    assert values == _file_values(tmp_path, data, EXPLICIT_VR_LE)


def test_a_header_longer_than_the_first_bytes_is_left_to_the_file():
    # A large private element before them puts the Study/Series UIDs past the prefix.
    ds = make_dataset(pixels=b"")
    ds.add_new(0x00090010, "LO", "DIMSEKIT TEST")
    ds.add_new(0x00091010, "OB", b"\x05" * (_PREFIX + 10))
    data = encode(ds)
    assert header_from_prefix(data[:_PREFIX], False, EXPLICIT_VR_LE) is None
    assert header_from_prefix(data, True, EXPLICIT_VR_LE)["series_instance_uid"] == ds.SeriesInstanceUID


def test_a_prefix_ending_just_after_the_last_needed_element_is_left_to_the_file():
    ds = make_dataset(pixels=b"")
    data = encode(ds)
    # Cut right after the last element: nothing tells whether more elements follow.
    assert header_from_prefix(data, False, EXPLICIT_VR_LE) is None


@pytest.mark.parametrize("syntax", [DEFLATED, "1.2.3.4.5.6"])
def test_deflated_or_unknown_syntaxes_are_left_to_the_file(syntax):
    data = encode(make_dataset())
    assert header_from_prefix(data, True, syntax) is None


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"\xff" * 64, b"\x08\x00\x16\x00UI\xff\xff"])
def test_garbage_is_left_to_the_file(garbage):
    values = header_from_prefix(garbage, True, EXPLICIT_VR_LE)
    assert values is None or values["sop_class_uid"] is None


# -- the scan that finds the index's elements without pydicom's reader -------------------------

_text_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"),
                      max_size=16)


@st.composite
def _header_datasets(draw):
    """Data sets for the scan: the index's elements or not, private elements of
    either length form, sequences (pydicom writes them with undefined lengths)
    before and among them, values that pydicom's fast and slow conversions see."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = make_dataset(
        pixels=draw(st.sampled_from([b"", b"\x01\x02" * 16])),
        patient_name=draw(st.sampled_from(["Doe^Jane", "", "Müller^Jürgen", "A^B=C^D"])),
        charset=draw(st.sampled_from([None, "ISO_IR 100", "ISO_IR 192"])),
    )
    for keyword in draw(st.lists(st.sampled_from(["StudyDescription", "SeriesDescription", "AccessionNumber",
                                                  "ReferringPhysicianName", "PatientSex", "StudyTime"]),
                                 unique=True)):
        delattr(ds, keyword)
    if draw(st.booleans()):
        ds.InstanceNumber = draw(st.sampled_from(["7", "12", "+3"]))
    for group in draw(st.lists(st.sampled_from([0x0009, 0x0011, 0x0019, 0x0029, 0x0033]), unique=True, max_size=3)):
        ds.add_new(group << 16 | 0x0010, "LO", "DIMSEKIT TEST")
        ds.add_new(group << 16 | 0x1010, draw(st.sampled_from(["OB", "UN", "LO", "UT"])),
                   draw(_text_value).encode("ascii") if False else None)
        element = ds[group << 16 | 0x1010]
        element.value = draw(_text_value) if element.VR in ("LO", "UT") else draw(st.binary(max_size=40))
    charset = ds.get("SpecificCharacterSet")
    kept_text = _text_value if charset is None else st.text(
        alphabet=st.sampled_from("abcXYZ 09^-äöüßÉ" + ("山田語" if charset == "ISO_IR 192" else "")), max_size=16)
    for keyword in draw(st.lists(st.sampled_from(["ReferencedImageSequence", "DerivationCodeSequence",
                                                  "ReferencedStudySequence", "RequestAttributesSequence",
                                                  "ProcedureCodeSequence", "OtherPatientIDsSequence"]),
                                 unique=True, max_size=3)):
        items = []
        for _ in range(draw(st.integers(0, 2))):
            item = Dataset()
            item.CodeValue = draw(_text_value)
            item.CodingSchemeDesignator = "DCM"
            for kept in draw(st.lists(st.sampled_from(["CodeMeaning", "PatientID", "IssuerOfPatientID",
                                                       "RequestedProcedureID", "AccessionNumber",
                                                       "RequestedProcedureDescription"]), unique=True, max_size=3)):
                setattr(item, kept, draw(kept_text))
            if draw(st.booleans()):  # a sequence inside an item
                inner = Dataset()
                inner.CodeMeaning = draw(_text_value)
                item.ConceptNameCodeSequence = Sequence([inner])
            item.is_undefined_length_sequence_item = draw(st.booleans())
            items.append(item)
        setattr(ds, keyword, Sequence(items))
        ds[keyword].is_undefined_length = draw(st.booleans())
    return ds


@settings(max_examples=300, deadline=None)
@given(ds=_header_datasets(), syntax=st.sampled_from([EXPLICIT_VR_LE, IMPLICIT_VR_LE]), cut=st.floats(0, 1))
def test_the_scan_gives_what_pydicom_reads_from_the_whole_data_set_or_nothing(tmp_path_factory, ds, syntax, cut):
    data = encode(ds, syntax)
    expected = _file_values(tmp_path_factory.mktemp("scan"), data, syntax)
    assert header_from_prefix(data, True, syntax) == expected
    prefix = data[: int(len(data) * cut)]
    assert header_from_prefix(prefix, False, syntax) in (None, expected)
    wanted, sequences = header_module._scan_sets(index.HEADER_KEYWORDS)
    _tags, last = header_module._header_tags(index.HEADER_KEYWORDS)
    found = header_module.scan_header(data, True, syntax == IMPLICIT_VR_LE, wanted, last, sequences)
    if found is not None:  # what the scan found is what pydicom's reader makes of those elements
        reference = read_dataset(BytesIO(data), syntax == IMPLICIT_VR_LE, True, specific_tags=list(found))
        assert set(found) <= set(reference.keys())
        for tag, raw in found.items():
            theirs = reference.get_item(tag)
            if isinstance(theirs, RawDataElement):  # (the reader converts some elements as it reads)
                assert (raw.tag, raw.VR, raw.length, bytes(raw.value)) == (
                    theirs.tag, theirs.VR, theirs.length, bytes(theirs.value)
                )


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
@pytest.mark.parametrize("private_vr", ["OB", "UN", "UT", "LO"])
@pytest.mark.parametrize("undefined_sequence, undefined_item", [(True, True), (True, False), (False, False)])
def test_a_plain_image_header_is_found_by_the_scan_and_pydicom_does_not_read_it(monkeypatch, syntax, private_vr,
                                                                                 undefined_sequence, undefined_item):
    from pydicom.sequence import Sequence

    ds = make_dataset()
    ds.add_new(0x00090010, "LO", "DIMSEKIT TEST")
    ds.add_new(0x00091010, private_vr, "text" if private_vr in ("UT", "LO") else b"\x00\x01\xfe\xff" * 3)
    item = make_dataset(pixels=b"")
    item.is_undefined_length_sequence_item = undefined_item
    ds.ReferencedImageSequence = Sequence([item, item])  # a sequence to step over, lengths of either form
    ds["ReferencedImageSequence"].is_undefined_length = undefined_sequence
    data = encode(ds, syntax)
    expected = header_from_prefix(data, True, syntax)
    monkeypatch.setattr(header_module, "read_dataset", None)  # the fallback would now fail
    assert header_from_prefix(data, True, syntax) == expected
    assert expected["series_instance_uid"] == ds.SeriesInstanceUID


@pytest.mark.parametrize("case", ["unknown VR", "length past the end"])
def test_what_the_scan_cannot_frame_is_left_to_pydicom(case):
    wanted, sequences = header_module._scan_sets(index.HEADER_KEYWORDS)
    _tags, last = header_module._header_tags(index.HEADER_KEYWORDS)
    ds = make_dataset(pixels=b"")
    if case == "unknown VR":
        data = b"\x08\x00\x05\x00QQ\x00\x00" + encode(ds)
    else:
        data = encode(ds)[:-3]
    assert header_module.scan_header(data, True, False, wanted, last, sequences) is None
    header_from_prefix(data, True, EXPLICIT_VR_LE)  # pydicom's answer, whatever it is: no exception


@pytest.mark.parametrize("syntax", [EXPLICIT_VR_LE, IMPLICIT_VR_LE])
@pytest.mark.parametrize("undefined_sequence, undefined_item", [(True, True), (True, False), (False, False)])
def test_the_sequences_the_index_reads_are_found_by_the_scan_and_pydicom_does_not_read_the_header(
        tmp_path, monkeypatch, syntax, undefined_sequence, undefined_item):
    """Request Attributes Sequence is in most images a worklist scheduled; leaving the header to
    pydicom's reader for it cost 222 us against 30 for a CT header (session 24)."""
    from pydicom.sequence import Sequence

    ds = make_dataset(charset="ISO_IR 192", patient_name="Müller^Jürgen", pixels=b"\x01\x02" * 5000)
    for keyword, item in (("RequestAttributesSequence", {"RequestedProcedureID": "RP1", "AccessionNumber": "A1",
                                                          "RequestedProcedureDescription": "Röntgen Thorax"}),
                          ("ProcedureCodeSequence", {"CodeValue": "XR", "CodingSchemeDesignator": "LOCAL",
                                                      "CodeMeaning": "Fuß"})):
        first, second = make_dataset(pixels=b""), make_dataset(pixels=b"")
        for one in (first, second):
            for name, value in item.items():
                setattr(one, name, value)
            one.is_undefined_length_sequence_item = undefined_item
        second.RequestedProcedureID = "RP2"
        setattr(ds, keyword, Sequence([first, second]))
        ds[keyword].is_undefined_length = undefined_sequence
    data = encode(ds, syntax)
    expected = _file_values(tmp_path, data, syntax)
    assert [i["requested_procedure_id"] for i in expected["request_attributes"]] == ["RP1", "RP2"]
    monkeypatch.setattr(header_module, "read_dataset", None)  # the fallback would now fail
    assert header_from_prefix(data, True, syntax) == expected
    assert header_from_prefix(data[:-5000], False, syntax) == expected  # from a prefix, pixel data to come


# -- the header job ----------------------------------------------------------------------------


def test_a_job_no_thread_picked_up_is_run_by_whoever_wants_its_result():
    calls = []
    job = _HeaderJob(lambda: calls.append(threading.get_ident()) or 42)
    assert job.result() == 42
    job.run()  # the pool's turn comes later: nothing left to do
    assert calls == [threading.get_ident()]


def test_result_waits_for_a_run_in_progress_and_raises_its_error():
    started, release = threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(5)
        raise ValueError("bad header")

    job = _HeaderJob(slow)
    worker = threading.Thread(target=job.run)
    worker.start()
    assert started.wait(5)
    threading.Timer(0.05, release.set).start()
    with pytest.raises(ValueError, match="bad header"):
        job.result()
    worker.join(5)


# -- rename before fsync ------------------------------------------------------------------------


@pytest.fixture
def archive(tmp_path, clock):
    archive = Archive(tmp_path / "data", reactor=clock, min_free_mb=0, journal=False)  # the fsyncs' path
    archive.start()
    yield archive
    clock.wait(archive.close())


def _supports_xattr(path: Path) -> bool:
    probe = path / "probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def _kind(fd: int) -> str:
    return "fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync"


def test_a_new_file_is_renamed_before_its_fsync_and_records_its_length(archive, clock, monkeypatch):
    if not _supports_xattr(archive.root):
        pytest.fail(f"{archive.root} has no user extended attributes: the fast path cannot be tested here")
    events = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(store_module.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: (events.append(_kind(fd)), real_fsync(fd))[1])
    ds = make_dataset()
    store(archive, clock, make_dataset(study=ds.StudyInstanceUID, series=ds.SeriesInstanceUID))
    events.clear()  # the next one goes into an existing series directory
    stored = store(archive, clock, ds)
    assert events == ["rename", "fsync", "fsync dir"]
    path = Path(stored.path)
    assert int(os.getxattr(path, _LENGTH_XATTR)) == path.stat().st_size == stored.size


def test_a_replaced_copy_is_synced_before_its_rename(archive, clock, monkeypatch):
    ds = make_dataset()
    store(archive, clock, ds)
    events = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(store_module.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: (events.append(_kind(fd)), real_fsync(fd))[1])
    store(archive, clock, ds)
    assert events == ["fsync", "rename", "fsync dir"]


def test_without_extended_attributes_files_are_synced_before_their_rename(archive, clock, monkeypatch):
    def no_xattr(*args):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(store_module.os, "setxattr", no_xattr)
    events = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(store_module.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: (events.append(_kind(fd)), real_fsync(fd))[1])
    stored = store(archive, clock, make_dataset())
    assert [e for e in events if e != "fsync dir"] == ["fsync", "rename"]
    assert archive._rename_first is False
    assert dcmread(stored.path).SOPInstanceUID == stored.sop_instance_uid


def test_an_fsync_failing_after_the_rename_leaves_no_file_and_no_row(archive, clock, monkeypatch):
    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store_module.os, "fsync", failing)
    ds = make_dataset()
    incoming = receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID)
    error = clock.failure_of(incoming.commit())
    assert isinstance(error, OutOfResources)
    assert not [p for p in archive.root.rglob("*.dcm")]
    assert not list((archive.root / ".incoming").iterdir())
    monkeypatch.undo()
    assert clock.wait(archive.lookup(ds.SOPInstanceUID)) is None


def test_reconcile_quarantines_a_file_whose_data_never_all_reached_the_disk(archive, clock):
    if not _supports_xattr(archive.root):
        pytest.fail(f"{archive.root} has no user extended attributes: the fast path cannot be tested here")
    whole, cut = make_dataset(pixels=b"\x01" * 4096), make_dataset(pixels=b"\x01" * 4096)
    for ds in (whole, cut):
        store(archive, clock, ds)
    clock.wait(archive.query("DELETE FROM instance"))  # as if the crash came before the index write
    cut_path = next(archive.root.rglob(f"{cut.SOPInstanceUID}.dcm"))
    with cut_path.open("r+b") as f:  # as if only part of its data was written out
        f.truncate(cut_path.stat().st_size - 1000)
    report = clock.wait(archive.reconcile())
    assert [Path(p).name for p in report["quarantined"]] == [cut_path.name]
    assert [Path(p).name for p in report["files_indexed"]] == [f"{whole.SOPInstanceUID}.dcm"]
    assert clock.wait(archive.lookup(cut.SOPInstanceUID)) is None


# -- large data sets -----------------------------------------------------------------------------


def test_a_large_data_set_has_its_header_read_before_its_last_fragment(archive, clock, monkeypatch):
    advised = []
    monkeypatch.setattr(store_module.os, "posix_fadvise", lambda fd, offset, length, advice: advised.append(advice))
    ds = make_dataset(pixels=b"\x02" * (2 * store_module._WRITEBACK * 4))
    data = encode(ds)
    incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER")
    incoming.write(data[: _PREFIX + 100])
    job = incoming._header
    assert job is not None  # queued in the pool while the rest arrives
    deadline = time.monotonic() + 5
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert job.done()
    for offset in range(_PREFIX + 100, len(data), 16384):
        incoming.write(data[offset: offset + 16384])
    incoming.close()
    deadline = time.monotonic() + 5
    while not advised and time.monotonic() < deadline:  # the pool writes it as it arrives
        time.sleep(0.005)
    assert advised, "the kernel was never asked to start writing the data out"
    assert incoming.temp_path.stat().st_size >= len(data) // 2  # most of it written before the commit
    stored = clock.wait(incoming.commit())
    assert stored.record.study_instance_uid == ds.StudyInstanceUID
    assert Path(stored.path).read_bytes().endswith(b"\x02" * 1000)
    assert dcmread(stored.path).PixelData == ds.PixelData


def test_a_large_data_sets_file_is_created_by_the_pool_while_it_arrives(archive, clock):
    ds = make_dataset(pixels=b"\x06" * (4 * _PREFIX))
    data = encode(ds)
    incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER")
    header = part10_header(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER")
    incoming.write(data[: _PREFIX - 1])
    time.sleep(0.05)
    assert not incoming.temp_path.exists()  # not for what may be a small one
    incoming.write(data[_PREFIX - 1: _PREFIX])
    assert wait_for(lambda: incoming._fd is not None)  # a large one: a pool thread made it
    with incoming._file_lock:  # its first write done
        pass
    assert incoming.temp_path.read_bytes() == header + data[:_PREFIX]
    for offset in range(_PREFIX, len(data), 16384):
        incoming.write(data[offset: offset + 16384])
    incoming.close()
    stored = clock.wait(incoming.commit())
    assert Path(stored.path).read_bytes() == header + data


def test_a_small_data_set_is_written_by_the_commits_worker_alone(archive, clock, monkeypatch):
    submitted = []
    submit = archive._submit
    monkeypatch.setattr(archive, "_submit", lambda work: (submitted.append(work), submit(work))[1])
    ds = make_dataset()
    incoming = receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID)
    assert not incoming.temp_path.exists()
    stored = clock.wait(incoming.commit())
    assert submitted == []  # one hand-off to the pool: the commit
    assert Path(stored.path).read_bytes().endswith(encode(ds))


def test_a_disk_slower_than_the_network_holds_the_reactor_back(archive, clock, monkeypatch):
    monkeypatch.setattr(store_module, "_MAX_PENDING", 3 * store_module._WRITEBACK)
    gate = threading.Event()
    archive._submit(gate.wait)  # the pool's threads are all busy ...
    for _ in range(archive._pool.max - 1):
        archive._submit(gate.wait)
    try:
        ds = make_dataset(pixels=b"\x04" * (8 * store_module._WRITEBACK))
        data = encode(ds)
        incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER")
        writers = drain_threads(monkeypatch)
        for offset in range(0, len(data), 65536):
            incoming.write(data[offset: offset + 65536])
            assert incoming._pending_size < store_module._MAX_PENDING  # never more than that held
        assert threading.current_thread() in writers  # ... so the caller wrote them itself
    finally:
        gate.set()
    incoming.close()
    stored = clock.wait(incoming.commit())
    assert dcmread(stored.path).PixelData == ds.PixelData


def test_an_abort_before_a_queued_write_runs_leaves_no_file(archive, clock):
    gate = threading.Event()
    for _ in range(archive._pool.max):
        archive._submit(gate.wait)  # every thread busy: the file creation stays queued
    try:
        ds = make_dataset(pixels=b"\x05" * (2 * store_module._WRITEBACK))
        incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER")
        incoming.write(encode(ds)[: 2 * store_module._WRITEBACK])
        incoming.abort()
    finally:
        gate.set()
    clock.wait(archive.close())  # every queued job has run
    assert not incoming.temp_path.exists()
    assert list(archive.incoming_dir.iterdir()) == []


def test_many_instances_with_a_busy_pool_all_land(tmp_path):
    clock = ThreadedClock()
    archive = Archive(tmp_path / "data", reactor=clock, min_free_mb=0, threads=1, journal=False)
    archive.start()
    try:
        sets = [make_dataset(pixels=b"\x03" * (2 * _PREFIX)) for _ in range(12)]
        incomings = [receive(archive, encode(ds), sop_class=CT_IMAGE_STORAGE, sop_instance=ds.SOPInstanceUID,
                             chunk=16384) for ds in sets]
        results = [clock.wait(i.commit()) for i in incomings]
        assert sorted(r.sop_instance_uid for r in results) == sorted(ds.SOPInstanceUID for ds in sets)
        assert len(list((tmp_path / "data").rglob("*.dcm"))) == 12
    finally:
        clock.wait(archive.close())


def test_uids_made_here_are_valid_for_the_property_test():
    assert len(generate_uid()) <= 64


def test_a_data_set_reaches_its_file_without_being_copied_first(archive, clock, monkeypatch):
    """What the sink is handed (views of what was read) is what writev gets: no bytes() copy on the way."""
    ds = make_dataset(pixels=b"\x07" * (3 * _PREFIX))
    data = encode(ds)
    seen = []
    real = store_module._write_chunks

    def recording(fd, chunks):
        seen.extend(type(c) for c in chunks)
        return real(fd, chunks)

    monkeypatch.setattr(store_module, "_write_chunks", recording)
    incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER")
    view = memoryview(data)
    for offset in range(0, len(data), 16384):
        incoming.write(view[offset: offset + 16384])
    incoming.close()
    stored = clock.wait(incoming.commit())
    assert Path(stored.path).read_bytes()[incoming.header_length:] == data
    assert memoryview in seen and bytes in seen  # the views as handed in; the Part 10 header
    assert all(t in (bytes, memoryview) for t in seen)


@pytest.mark.parametrize("group", [2, 7, 64])
def test_fragments_handed_in_runs_make_the_same_file_written_as_they_come(archive, clock, group):
    """``write_many`` (the assembler's runs of fragments): the same file as ``write`` of each, the
    header read, the file created from the first 64 KiB on and written every 256 KiB."""
    from dimsekit_plugins.archive.store import _WRITEBACK

    ds = make_dataset(pixels=bytes(range(256)) * (3 * 1024 * 1024 // 256))
    data = encode(ds)
    incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER")
    view = memoryview(data)
    fragments = [view[offset: offset + 16384] for offset in range(0, len(data), 16384)]
    for at in range(0, len(fragments), group):
        incoming.write_many(fragments[at: at + group])
        assert incoming._pending_size < _WRITEBACK + group * 16384  # into the file as it comes
    assert incoming.size == len(data)
    assert incoming.temp_path.exists() and incoming._header is not None
    incoming.close()
    stored = clock.wait(incoming.commit())
    assert Path(stored.path).read_bytes()[incoming.header_length:] == data
    assert stored.record.series_instance_uid == ds.SeriesInstanceUID


def test_runs_after_an_abort_are_counted_and_dropped(archive, clock):
    ds = make_dataset(pixels=b"\x05" * (4 * _PREFIX))
    data = encode(ds)
    incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER")
    view = memoryview(data)
    incoming.write_many([view[:40000], view[40000:80000]])
    incoming.abort()
    incoming.write_many([view[80000:120000], view[120000:]])
    assert incoming.size == len(data) and not incoming._pending
    assert not incoming.temp_path.exists()


def _send_large(archive, ds):
    data = encode(ds)
    incoming = archive.receive(CT_IMAGE_STORAGE, ds.SOPInstanceUID, EXPLICIT_VR_LE, "SENDER")
    for offset in range(0, len(data), 16384):
        incoming.write(data[offset: offset + 16384])
    return incoming, data


def test_a_large_data_sets_file_is_created_and_its_header_read_as_it_arrives(archive, clock, monkeypatch):
    """By the thread receiving it, with no pool job before the commit: a pool thread did not get the GIL."""
    jobs, creators = [], []
    monkeypatch.setattr(archive, "_submit", jobs.append)
    real_create = store_module._create
    monkeypatch.setattr(store_module, "_create", lambda path: creators.append(threading.get_ident()) or real_create(path))
    ds = make_dataset(pixels=b"\x09" * (3 * _PREFIX))
    incoming, data = _send_large(archive, ds)
    assert jobs == [] and creators == [threading.get_ident()]
    assert incoming.temp_path.exists() and incoming._header.done()
    monkeypatch.undo()
    incoming.close()
    stored = clock.wait(incoming.commit())
    assert stored.record.series_instance_uid == ds.SeriesInstanceUID
    assert Path(stored.path).read_bytes()[incoming.header_length:] == data


@pytest.mark.parametrize("others", [False, True], ids=["alone", "others streaming in"])
def test_the_rest_of_a_large_data_set_goes_to_its_file_as_its_commit_is_queued_when_alone(archive, clock, monkeypatch,
                                                                                          others):
    """While the commit's worker wakes up, not after; unless other instances are arriving."""
    from twisted.internet.defer import Deferred

    queued = []
    real_run = archive._run_answering

    def run(function, *args):
        queued.append((function, args, Deferred()))
        return queued[-1][2]

    monkeypatch.setattr(archive, "_run_answering", run)
    other = archive.receive(CT_IMAGE_STORAGE, generate_uid(), EXPLICIT_VR_LE, "SENDER") if others else None
    ds = make_dataset(pixels=b"\x09" * (3 * _PREFIX))  # under 256 KiB: the rest waits for the commit
    incoming, data = _send_large(archive, ds)
    incoming.close()
    assert incoming._pending and incoming.temp_path.exists()
    committed = incoming.commit()
    left, on_disk = list(incoming._pending), incoming.temp_path.stat().st_size
    monkeypatch.undo()
    assert len(queued) == 1  # the commit was queued first
    function, args, pending = queued[0]
    real_run(function, *args).chainDeferred(pending)  # now the worker's turn
    stored = clock.wait(committed)
    if others:
        assert left  # left to the worker
    else:
        assert not left and on_disk == incoming.header_length + len(data)
    assert Path(stored.path).read_bytes()[incoming.header_length:] == data
    if other is not None:
        other.abort()


def test_a_large_data_set_whose_file_cannot_be_created_fails_its_commit_and_leaves_nothing(archive, clock, monkeypatch):
    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "_create", full)
    monkeypatch.setattr(archive, "_submit", lambda job: pytest.fail("no pool job expected"))
    ds = make_dataset(pixels=b"\x09" * (3 * _PREFIX))
    incoming, data = _send_large(archive, ds)  # the failure is not the sender's: no exception here
    incoming.close()
    assert incoming.size == len(data) and not incoming.temp_path.exists()
    monkeypatch.undo()
    error = clock.failure_of(incoming.commit())
    assert isinstance(error, OutOfResources) and "disk full" in str(error)
    assert list(archive.root.rglob("*.dcm")) == [] and list(archive.incoming_dir.iterdir()) == []


def test_after_a_slow_creation_files_are_created_in_the_pool_for_a_while(archive, clock, monkeypatch):
    """One pool job then creates the file and reads the header: one thread hand-off, not two."""
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    monkeypatch.setattr(store_module, "_SLOW_CREATE", -1.0)  # every creation is "slow"
    jobs = []
    monkeypatch.setattr(archive, "_submit", jobs.append)
    said = "large instances' files are created in the thread pool"
    try:
        first, _ = _send_large(archive, make_dataset(pixels=b"\x09" * (3 * _PREFIX)))
        assert jobs == [] and first.temp_path.exists()  # created here, and found slow
        assert any(said in formatEvent(e) for e in events)
        ds = make_dataset(pixels=b"\x09" * (3 * _PREFIX))
        incoming, data = _send_large(archive, ds)
        assert len(jobs) == 1
        assert not incoming.temp_path.exists() and not incoming._header.done()
        jobs[0]()  # as a pool thread would (slow too: the while goes on, said once)
        assert incoming.temp_path.exists() and incoming._header.done()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert sum(said in formatEvent(e) for e in events) == 1
    archive._pool_creates_until = time.monotonic() - 1  # the while is over
    third, _ = _send_large(archive, make_dataset(pixels=b"\x09" * (3 * _PREFIX)))
    assert len(jobs) == 1 and third.temp_path.exists()
    monkeypatch.undo()
    incoming.close()
    stored = clock.wait(incoming.commit())
    assert stored.record.series_instance_uid == ds.SeriesInstanceUID
    assert Path(stored.path).read_bytes()[incoming.header_length:] == data
    for other in (first, third):
        other.abort()


@settings(max_examples=200, deadline=None)
@given(ds=_header_datasets(), syntax=st.sampled_from([EXPLICIT_VR_LE, IMPLICIT_VR_LE]), cut=st.floats(0, 1),
       held=st.floats(0, 1))
def test_the_cut_short_check_from_where_the_scan_framed_agrees_with_one_from_the_start(ds, syntax, cut, held):
    """The commit's check starts where the header scan's framing ended; the verdict is the one
    the whole walk gives, for the whole data set and cut anywhere, the scan run on a prefix."""
    data = encode(ds, syntax)
    size = int(len(data) * cut)
    prefix = data[: int(size * held)]
    framed: list[int] = []
    header_from_prefix(prefix, len(prefix) == size, syntax, framed)
    assert len(framed) <= 1 and all(0 <= f <= len(prefix) for f in framed)
    if framed:  # where an element starts, or the end: as pydicom writes them one by one
        boundaries, pos = {0}, 0
        for element in ds:
            fp = DicomBytesIO()
            fp.is_implicit_VR, fp.is_little_endian = syntax == IMPLICIT_VR_LE, True
            write_data_element(fp, element, encodings=convert_encodings(ds.get("SpecificCharacterSet")))
            pos += len(fp.getvalue())
            boundaries.add(pos)
        assert framed[0] in boundaries

    def read(offset: int, length: int) -> bytes:
        return data[offset:min(offset + length, size)]

    from_scan = dataset_truncation(prefix, size, syntax, read, framed[-1] if framed else 0)
    assert from_scan == dataset_truncation(data[:size], size, syntax, None)
