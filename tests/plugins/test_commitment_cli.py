"""``dimsekit commit`` without a peer: which files are read, argument errors,
how a report is printed and what exit status it gives."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dimsekit.cli import _parser
from dimsekit.cli.commit import _print_report, read_references

# pydicom guesses at the non-DICOM files these tests feed it, and says so
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

CT = "1.2.840.10008.5.1.4.1.1.2"


def write(path: Path, *, meta: bool = True) -> str:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = str(generate_uid())
    ds.PatientID = "P"
    if meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=True, little_endian=True)
    return ds.SOPInstanceUID


def test_references_from_files_and_directories(tmp_path):
    a = write(tmp_path / "a.dcm")
    (tmp_path / "sub").mkdir()
    b = write(tmp_path / "sub" / "b.dcm")
    c = write(tmp_path / "c.raw", meta=False)  # a data set without File Meta Information
    (tmp_path / "notes.txt").write_text("not DICOM")
    found, problems = read_references([str(tmp_path)], recurse=True)
    assert sorted(uid for _, uid, _ in found) == sorted([a, b, c])
    assert {cls for cls, _, _ in found} == {CT}
    assert problems == []  # files found in a directory that are not DICOM are skipped quietly
    found, problems = read_references([str(tmp_path / "notes.txt"), str(tmp_path / "missing.dcm")])
    assert found == [] and len(problems) == 2


def exit_status(*argv: str) -> int:
    """The tool's exit status for arguments refused before it connects (no reactor needed)."""
    args = _parser().parse_args(list(argv))
    outcome: list = []
    args.module.run(None, args).addBoth(outcome.append)
    assert outcome, "the tool went on to connect"
    return outcome[0]


def test_bad_arguments(tmp_path, capsys):
    path = tmp_path / "a.dcm"
    write(path)
    assert exit_status("commit", "127.0.0.1", "1", str(path), "--transaction", "1.2.x") == 2
    assert "not a UID" in capsys.readouterr().err
    assert exit_status("commit", "127.0.0.1", "1", str(path), "--port", "70000") == 2
    (tmp_path / "junk").write_bytes(b"junk")
    assert exit_status("commit", "127.0.0.1", "1", str(tmp_path / "junk")) == 2
    assert "no DICOM file" in capsys.readouterr().err


def _item(uid: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CT
    item.ReferencedSOPInstanceUID = uid
    if reason is not None:
        item.FailureReason = reason
    return item


def test_report_printing_and_exit_status(capsys):
    refs = [(CT, "1.1", Path("a.dcm")), (CT, "1.2", Path("b.dcm")), (CT, "1.3", Path("c.dcm"))]
    report = Dataset()
    report.ReferencedSOPSequence = [_item("1.1"), _item("1.2"), _item("1.3")]
    assert _print_report(1, report, refs) == 0
    assert "Event Type 1: 3 committed, 0 failed" in capsys.readouterr().out
    report = Dataset()
    report.ReferencedSOPSequence = [_item("1.1")]
    report.FailedSOPSequence = [_item("1.2", 0x0119)]
    assert _print_report(2, report, refs) == 1
    out = capsys.readouterr().out
    assert "failed     1.2  0x0119 Class / Instance conflict  b.dcm" in out
    assert "unanswered 1.3  c.dcm" in out
    assert "1 committed, 1 failed, 1 not in the report" in out


def test_files_with_one_sop_instance_uid_are_one_reference_and_the_report_names_them_all(capsys):
    # found against Orthanc: three copies of one instance (MR_small in three transfer syntaxes) were
    # three references, and the report named the last file three times
    from dimsekit.cli.commit import _duplicates

    refs = [(CT, "1.1", Path("a.dcm")), (CT, "1.2", Path("b.dcm")), (CT, "1.1", Path("c.dcm"))]
    assert _duplicates(refs) == [(Path("c.dcm"), Path("a.dcm"))]
    report = Dataset()
    report.ReferencedSOPSequence = [_item("1.1"), _item("1.2")]
    assert _print_report(1, report, refs) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["committed  1.1  a.dcm, c.dcm", "committed  1.2  b.dcm", "Event Type 1: 2 committed, 0 failed"]


def test_the_data_sets_uids_are_referenced_when_the_file_meta_says_otherwise(tmp_path):
    # found against Orthanc: pydicom's rtplan.dcm has a Media Storage SOP Instance UID other than
    # its data set's; an SCP stores it under the data set's (dimsekit store sends that one), and a
    # reference to the File Meta's failed 0112
    path = tmp_path / "a.dcm"
    uid = write(path)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"
    ds.save_as(path)  # as read: preamble and File Meta kept, this one's UID too
    said: list[str] = []
    found, problems = read_references([str(path)], warn=said.append)
    assert found == [(CT, uid, path)] and problems == []
    assert said == [f"{path}: File Meta Information's Media Storage SOP Instance UID 1.2.3.999 is not the data "
                    f"set's SOP Instance UID {uid}: the data set's is sent"]
