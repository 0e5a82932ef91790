"""dimsekit mpps: reading -k keys and -f files, the N-CREATE defaults, the plan."""

from __future__ import annotations

import argparse
import json
from datetime import datetime

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from dimsekit.cli import _parser
from dimsekit.cli.mpps import BadInput, _plan, apply_keys, create_defaults, load_dataset, parse_key

SSAS = 0x00400270


def test_parse_key_forms():
    assert parse_key("PatientName=Doe^John") == ([(0x00100010, None)], "Doe^John")
    assert parse_key("(0010,0020)=X") == ([(0x00100020, None)], "X")
    assert parse_key("00100020=") == ([(0x00100020, None)], "")
    assert parse_key("PatientID") == ([(0x00100020, None)], None)
    assert parse_key("ScheduledStepAttributesSequence[2].AccessionNumber=A=B") == (
        [(SSAS, 2), (0x00080050, None)], "A=B")
    assert parse_key("(0040,0270)[0].(0020,000D)=1.2") == ([(SSAS, 0), (0x0020000D, None)], "1.2")


@pytest.mark.parametrize("text", ["NoSuchThing=1", "PatientName.PatientID=1", "ScheduledStepAttributesSequence.PatientID=1",
                                  "=x", "PatientName[x]=1"])
def test_parse_key_refuses(text):
    with pytest.raises(BadInput):
        parse_key(text)


def test_apply_keys_builds_items_and_converts_values():
    ds = apply_keys(Dataset(), [
        "ScheduledStepAttributesSequence[1].AccessionNumber=A2",
        "ScheduledStepAttributesSequence[0].StudyInstanceUID=1.2.3",
        "PerformedSeriesSequence=",
        "PatientName=",
        "TotalNumberOfExposures=3",
        "ReferencedFrameNumber=1\\2\\3",
        "OtherPatientIDsSequence[0]",
    ])
    items = ds.ScheduledStepAttributesSequence
    assert len(items) == 2 and items[0].StudyInstanceUID == "1.2.3" and items[1].AccessionNumber == "A2"
    assert len(ds.PerformedSeriesSequence) == 0
    assert ds["PatientName"].is_empty
    assert ds.TotalNumberOfExposures == 3
    assert list(ds.ReferencedFrameNumber) == [1, 2, 3]
    assert len(ds.OtherPatientIDsSequence) == 1


@pytest.mark.parametrize("key", ["PerformedSeriesSequence=abc", "TotalNumberOfExposures=many", "PatientName[0]=x"])
def test_apply_keys_refuses(key):
    with pytest.raises(BadInput):
        apply_keys(Dataset(), [key])


def test_load_dicom_json_and_a_dicom_file(tmp_path):
    ds = Dataset()
    ds.PatientID = "J1"
    ds.Modality = "US"
    (tmp_path / "a.json").write_text(ds.to_json())
    assert load_dataset(str(tmp_path / "a.json")) == ds
    (tmp_path / "b.json").write_text(json.dumps([ds.to_json_dict()]))
    assert load_dataset(str(tmp_path / "b.json")) == ds
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    ds.save_as(tmp_path / "c.dcm", enforce_file_format=True)
    loaded = load_dataset(str(tmp_path / "c.dcm"))
    assert loaded.PatientID == "J1" and not getattr(loaded, "file_meta", None)


@pytest.mark.parametrize("content", ["{not json", "[{}, {}]"])
def test_load_refuses_broken_files(tmp_path, content):
    (tmp_path / "x.json").write_text(content)
    with pytest.raises(BadInput):
        load_dataset(str(tmp_path / "x.json"))
    with pytest.raises(BadInput):
        load_dataset(str(tmp_path / "missing.json"))


def test_create_defaults_fill_only_what_is_missing():
    ds = Dataset()
    ds.Modality = "CT"
    ds.PerformedProcedureStepID = "MINE"
    ds.PatientName = "Doe"
    create_defaults(ds, "AET1", now=datetime(2026, 1, 2, 3, 4, 5))
    assert (ds.PerformedProcedureStepID, str(ds.PatientName)) == ("MINE", "Doe")
    assert ds.PerformedProcedureStepStatus == "IN PROGRESS"
    assert (ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime) == ("20260102", "030405")
    assert ds.PerformedStationAETitle == "AET1"
    [item] = ds.ScheduledStepAttributesSequence
    assert item.StudyInstanceUID and "AccessionNumber" in item and item["AccessionNumber"].is_empty
    assert "PerformedSeriesSequence" in ds and "PerformedProcedureStepEndDate" in ds


def _args(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(["mpps", *argv])


def test_plans():
    plan = _plan(_args("create", "h", "1", "-k", "Modality=CT", "--uid", "1.2.3"))
    assert plan["uid"] == "1.2.3" and plan["dataset"].PerformedProcedureStepStatus == "IN PROGRESS"
    assert _plan(_args("create", "h", "1", "--scp-uid"))["uid"] is None
    bare = _plan(_args("create", "h", "1", "-k", "Modality=CT", "--no-defaults"))
    assert list(bare["dataset"].keys()) == [0x00080060]
    done = _plan(_args("set", "h", "1", "1.2.3", "--status", "discontinued"))
    assert done["dataset"].PerformedProcedureStepStatus == "DISCONTINUED" and done["dataset"].PerformedProcedureStepEndDate
    assert _plan(_args("get", "h", "1", "1.2.3", "PatientID", "(0040,0252)"))["tags"] == [0x00100020, 0x00400252]


@pytest.mark.parametrize("argv", [("set", "h", "1", "1.2.3"), ("set", "h", "1", "1.02"), ("get", "h", "1", "x.y"),
                                  ("get", "h", "1", "1.2", "Nope"), ("create", "h", "1", "--uid", "abc")])
def test_plans_refuse(argv):
    with pytest.raises(BadInput):
        _plan(_args(*argv))


def test_json_output_keeps_an_empty_name_among_several(capsys):
    # what an N-GET gave back, read from the wire: pydicom's writer fails on "Doe^Jane\" (IndexError)
    import io
    import struct

    from pydicom.filereader import read_dataset

    from dimsekit.cli.mpps import _print

    raw = b"Doe^Jane\\ "
    dataset = read_dataset(io.BytesIO(struct.pack("<HH2sH", 0x0010, 0x0010, b"PN", len(raw)) + raw), False, True)
    _print(dataset, as_json=True)
    printed = capsys.readouterr()
    assert printed.err == ""
    assert [str(name) for name in Dataset.from_json(json.loads(printed.out)).PatientName] == ["Doe^Jane", ""]


def test_get_shows_what_can_be_read_of_a_damaged_answer_and_exits_1(capsys):
    # an N-GET answered Success whose Performed Series Sequence (0040,0340) is 4 bytes that are
    # no item: the rest is shown, what is left out is said, and the exit status is 1
    import io

    from pydicom.filereader import read_dataset
    from twisted.internet import defer

    from dimsekit.cli.mpps import _run
    from dimsekit.operations import Response

    answer = read_dataset(io.BytesIO(b"\x10\x00\x10\x00PN\x04\x00DOE \x40\x00\x40\x03SQ\x00\x00\x04\x00\x00\x00"
                                     b"\x01\x02\x03\x04"), False, True)

    class Association:
        def n_get(self, sop_class, uid, tags):
            return defer.succeed(Response({"Status": 0x0000}, answer))

        def release(self):
            return defer.succeed(None)

    class AE:
        def associate(self, *args, **kwargs):
            return defer.succeed(Association())

    args = _args("get", "h", "1", "1.2.3")
    codes = []
    _run(None, args, AE(), _plan(args), {}, "mpps get").addCallback(codes.append)
    printed = capsys.readouterr()
    assert codes == [1]
    assert "DOE" in printed.out and "Performed Series Sequence" not in printed.out
    assert "left out (PerformedSeriesSequence (0040,0340): OSError: " in printed.err
