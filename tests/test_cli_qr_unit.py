"""``dimsekit find / get / move`` without sockets: -k parsing, identifiers,
the table / DICOM JSON / DICOM file outputs, retrieve summaries and exit
statuses, driven through a scripted association."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from twisted.internet import defer

from dimsekit.cli import _keys, _parser
from dimsekit.cli import find as cli_find
from dimsekit.cli import get as cli_get
from dimsekit.cli._keys import (
    BadKey,
    apply_keys,
    flatten,
    has_return_keys,
    key_paths,
    load_dataset,
    parse_key,
    render_table,
)
from dimsekit.operations import DimseOperation, Response
from dimsekit.scu import MODALITY_WORKLIST_FIND, PATIENT_ROOT_FIND, STUDY_ROOT_FIND

SPS = 0x00400100
MODALITY = 0x00080060


def args_for(*argv: str) -> argparse.Namespace:
    return _parser().parse_args(list(argv))


# -- -k keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("PatientName=DOE*", [(0x00100010, None)], "DOE*"),
        ("0010,0020", [(0x00100020, None)], None),
        ("(0010,0020)=X", [(0x00100020, None)], "X"),
        ("00100020=", [(0x00100020, None)], ""),
        ("QueryRetrieveLevel=STUDY", [(0x00080052, None)], "STUDY"),
        ("ScheduledProcedureStepSequence[0].Modality=CT", [(SPS, 0), (MODALITY, None)], "CT"),
        ("(0040,0100)[1].(0008,0060)=MR", [(SPS, 1), (MODALITY, None)], "MR"),
        ("ScheduledProcedureStepSequence", [(SPS, None)], None),
        ("StudyDescription=a=b", [(0x00081030, None)], "a=b"),
    ],
)
def test_parse_key_forms(text, path, value):
    assert parse_key(text) == (path, value)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("NoSuchKeyword=1", "neither a DICOM keyword"),
        ("PatientName[0]=X", "not a sequence"),
        ("PatientName.PatientID=X", "not a sequence"),
        ("ScheduledProcedureStepSequence.Modality=CT", "say which item"),
        ("=X", "no attribute named"),
        ("0010,00ZZ=1", "neither a DICOM keyword"),
        ("ScheduledProcedureStepSequence[99999999].Modality=CT", "at most 1000 items"),  # built them all
    ],
)
def test_parse_key_refusals_say_why(text, words):
    with pytest.raises(BadKey, match=words):
        parse_key(text)


def test_apply_keys_values_and_nesting():
    ds = apply_keys(Dataset(), [
        "PatientName=DOE*", "PatientID", "ModalitiesInStudy=CT\\MR", "Rows=512",
        "ScheduledProcedureStepSequence[1].Modality=CT", "ReferencedStudySequence",
        "PatientName=ROE*",  # a later key replaces an earlier one
    ])
    assert str(ds.PatientName) == "ROE*"
    assert ds["PatientID"].is_empty
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"]
    assert ds.Rows == 512
    items = ds.ScheduledProcedureStepSequence
    assert len(items) == 2 and len(items[0]) == 0 and items[1].Modality == "CT"
    assert ds.ReferencedStudySequence == []
    with pytest.raises(BadKey, match="needs numbers"):
        apply_keys(Dataset(), ["Rows=many"])
    with pytest.raises(BadKey, match="is a sequence"):
        apply_keys(Dataset(), ["ReferencedStudySequence=1"])


@pytest.mark.parametrize(("key", "words"), [
    ("NumberOfFrames=abc", "NumberOfFrames (0028,0008) (IS): 'abc' is not a valid value"),
    ("ImagePositionPatient=1\\2\\x", "ImagePositionPatient (0020,0032) (DS): '1\\\\2\\\\x' is not a valid value"),
    ("Rows=70000", "Rows (0028,0010) (US) takes whole numbers from 0 to 65535, not '70000'"),
    ("Rows=-1", "Rows (0028,0010) (US) takes whole numbers from 0 to 65535, not '-1'"),
    ("(0018,9219)=40000", "(SS) takes whole numbers from -32768 to 32767"),
])
def test_values_that_cannot_be_sent_are_bad_keys(key, words):
    """A value its VR cannot hold is refused as the -k key (exit 2, one line),
    not a traceback from pydicom as the identifier is made or encoded."""
    with pytest.raises(BadKey) as refused:
        apply_keys(Dataset(), [key])
    assert words in str(refused.value)
    code, out, err = run_find(FakeAssociation([], Response({"Status": 0})), "-k", key)
    assert code == 2 and words in err and "Traceback" not in err


def test_values_within_their_vr_are_kept():
    ds = apply_keys(Dataset(), ["Rows=65535", "(0018,9219)=-32768", "NumberOfFrames=12", "SliceThickness=2.5",
                                "ImagePositionPatient=1\\-2.5\\3e1"])
    assert (ds.Rows, ds[0x00189219].value, ds.NumberOfFrames, ds.SliceThickness) == (65535, -32768, 12, 2.5)
    assert list(ds.ImagePositionPatient) == [1, -2.5, 30]


def test_has_return_keys():
    assert not has_return_keys(apply_keys(Dataset(), ["PatientName=DOE*", "QueryRetrieveLevel=STUDY"]))
    assert has_return_keys(apply_keys(Dataset(), ["PatientName=DOE*", "StudyDate"]))
    assert has_return_keys(apply_keys(Dataset(), ["ScheduledProcedureStepSequence[0].Modality"]))
    assert not has_return_keys(apply_keys(Dataset(), ["ScheduledProcedureStepSequence[0].Modality=CT"]))


def test_load_dataset_json_and_dicom(tmp_path):
    ds = Dataset()
    ds.PatientID = "J1"
    (tmp_path / "one.json").write_text(ds.to_json())
    (tmp_path / "array.json").write_text(json.dumps([ds.to_json_dict()]))
    (tmp_path / "two.json").write_text(json.dumps([ds.to_json_dict(), ds.to_json_dict()]))
    (tmp_path / "junk.txt").write_bytes(b"\x01\x02 not dicom")
    assert load_dataset(tmp_path / "one.json").PatientID == "J1"
    assert load_dataset(tmp_path / "array.json").PatientID == "J1"
    with pytest.raises(BadKey, match="holds 2 data sets"):
        load_dataset(tmp_path / "two.json")
    with pytest.raises(BadKey, match="neither DICOM JSON nor a DICOM file"):
        load_dataset(tmp_path / "junk.txt")
    with pytest.raises(BadKey, match="No such file"):
        load_dataset(tmp_path / "missing.json")


# -- identifiers ---------------------------------------------------------------------------------


def test_find_identifier_defaults_only_without_return_keys():
    ident = cli_find.find_identifier(args_for("find", "h", "1", "-k", "PatientName=DOE*"), "study")
    assert ident.QueryRetrieveLevel == "STUDY"
    assert str(ident.PatientName) == "DOE*"  # the user's value is kept
    assert "StudyInstanceUID" in ident and "StudyDate" in ident and "ModalitiesInStudy" in ident

    exact = cli_find.find_identifier(args_for("find", "h", "1", "-k", "PatientName=DOE*", "-k", "StudyDate"), "study")
    assert sorted(e.keyword for e in exact) == ["PatientName", "QueryRetrieveLevel", "StudyDate"]

    patient = cli_find.find_identifier(args_for("find", "h", "1", "-P"), "patient")
    assert patient.QueryRetrieveLevel == "PATIENT" and "PatientBirthDate" in patient

    series = cli_find.find_identifier(args_for("find", "h", "1", "-k", "QueryRetrieveLevel=SERIES",
                                               "-k", "StudyInstanceUID=1.2.3"), "study")
    assert series.QueryRetrieveLevel == "SERIES" and "SeriesInstanceUID" in series

    with pytest.raises(BadKey, match="no PATIENT level"):
        cli_find.find_identifier(args_for("find", "h", "1", "-k", "QueryRetrieveLevel=PATIENT"), "study")
    with pytest.raises(BadKey, match="not one of"):
        cli_find.find_identifier(args_for("find", "h", "1", "-k", "QueryRetrieveLevel=FRAME"), "study")


def test_worklist_identifier_merges_defaults_into_the_step_item():
    ident = cli_find.find_identifier(
        args_for("find", "h", "1", "-W", "-k", "ScheduledProcedureStepSequence[0].Modality=CT",
                 "-k", "PatientName=Müller*"), "worklist")
    assert "QueryRetrieveLevel" not in ident
    step = ident.ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT"  # kept, not replaced by the default's empty value
    assert "ScheduledStationAETitle" in step and "ScheduledProcedureStepStartDate" in step
    assert ident.SpecificCharacterSet == "ISO_IR 192"  # a non-ASCII value: UTF-8 said


def test_retrieve_identifier_level_from_the_deepest_unique_key():
    def level(model: str, *keys: str) -> str:
        argv = ["get", "h", "1"] + [x for k in keys for x in ("-k", k)]
        return cli_find.retrieve_identifier(args_for(*argv), model).QueryRetrieveLevel

    assert level("study", "StudyInstanceUID=1.2") == "STUDY"
    assert level("study", "StudyInstanceUID=1.2", "SeriesInstanceUID=1.2.3") == "SERIES"
    assert level("study", "SOPInstanceUID=1.2.3.4") == "IMAGE"
    assert level("patient", "PatientID=P1") == "PATIENT"
    assert level("study", "QueryRetrieveLevel=SERIES", "SeriesInstanceUID=1") == "SERIES"
    with pytest.raises(BadKey, match="say what to retrieve"):
        level("study", "PatientID=P1")  # no PATIENT level in Study Root


def test_model_options():
    assert cli_find.model_of(args_for("find", "h", "1")) == "study"
    assert cli_find.model_of(args_for("find", "h", "1", "-P")) == "patient"
    assert cli_find.model_of(args_for("find", "h", "1", "--model", "worklist")) == "worklist"
    with pytest.raises(BadKey, match="contradicts"):
        cli_find.model_of(args_for("find", "h", "1", "-P", "--model", "study"))
    with pytest.raises(SystemExit):
        args_for("get", "h", "1", "-W")  # no worklist retrieve


# -- output ------------------------------------------------------------------------------------


def decoded(explicit_le: bytes) -> Dataset:
    """A data set read from Explicit VR Little Endian bytes, as a response's identifier is."""
    return read_dataset(io.BytesIO(explicit_le), False, True)


def match(name: str, uid: str, modality: str | None = None) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientName = name
    ds.StudyInstanceUID = uid
    if modality:
        step = Dataset()
        step.Modality = modality
        ds.ScheduledProcedureStepSequence = [step]
    return ds


def test_flatten_and_table():
    rows = [dict(flatten(match("DOE^JOHN", "1.2", "CT"))), dict(flatten(match("山田^太郎", "1.3")))]
    assert rows[0] == {"PatientName": "DOE^JOHN", "StudyInstanceUID": "1.2",
                       "ScheduledProcedureStepSequence[0].Modality": "CT"}
    text = render_table(rows, max_width=6)
    lines = text.splitlines()
    assert lines[0].startswith("Patie") and "Modality" in lines[0]  # the short header of a nested path
    assert "DOE^J…" in lines[2]
    # wide characters take two columns: the cells still line up
    from dimsekit.cli._keys import _width

    assert _width(lines[3][: lines[3].index("1.3")]) == _width(lines[2][: lines[2].index("1.2")])


def test_table_writer_keeps_the_order_of_the_keys():
    out = io.StringIO()
    args = args_for("find", "h", "1", "-k", "StudyInstanceUID", "-k", "PatientName")
    ident = cli_find.find_identifier(args, "study")
    writer = cli_find.TableWriter(out, cli_find.display_order(args, "study", ident))
    writer.add(match("DOE^JOHN", "1.2"))
    writer.finish()
    assert out.getvalue().splitlines()[0].split() == ["StudyInstanceUID", "PatientName"]
    assert key_paths(["(0040,0100)[0].(0008,0060)=CT"]) == ["ScheduledProcedureStepSequence[0].Modality"]


def test_json_writer_is_a_dicom_json_array():
    for n in (0, 1, 3):
        out = io.StringIO()
        writer = cli_find.JsonWriter(out, io.StringIO())
        for i in range(n):
            writer.add(match(f"DOE^{i}", f"1.{i}"))
        writer.finish()
        data = json.loads(out.getvalue())
        assert isinstance(data, list) and len(data) == n
        assert [str(Dataset.from_json(d).PatientName) for d in data] == [f"DOE^{i}" for i in range(n)]


@pytest.mark.filterwarnings("ignore:A value of type 'str' cannot be assigned")
def test_json_writer_keeps_an_empty_name_among_several_and_leaves_out_only_what_it_cannot_write():
    # pydicom's writer fails on "DOE^JOHN\\" (an IndexError): the whole PatientName was left out
    out, err = io.StringIO(), io.StringIO()
    writer = cli_find.JsonWriter(out, err)
    found = decoded(b"\x10\x00\x10\x00PN\x0a\x00DOE^JOHN\\ ")  # as read from the wire
    writer.add(found)
    assert err.getvalue() == ""
    broken = match("ROE^JANE", "1.3")
    broken.add(DataElement(0x00420011, "OB", "text"))  # not bytes: pydicom cannot write it
    writer.add(broken)
    writer.finish()
    first, second = json.loads(out.getvalue())
    assert [str(name) for name in Dataset.from_json(first).PatientName] == ["DOE^JOHN", ""]
    assert str(Dataset.from_json(second).PatientName) == "ROE^JANE" and "00420011" not in second
    assert "left out" in err.getvalue() and "(0042,0011)" in err.getvalue()


def test_json_writer_leaves_out_a_sequence_that_cannot_be_read_and_stays_json():
    # (0040,0100) of 4 bytes that are no item: reading it fails when it is first used, after the
    # writer had put out its separator -- the output was no JSON array any more
    out, err = io.StringIO(), io.StringIO()
    writer = cli_find.JsonWriter(out, err)
    writer.add(match("ROE^JANE", "1.3"))
    writer.add(decoded(b"\x10\x00\x10\x00PN\x04\x00DOE \x40\x00\x00\x01SQ\x00\x00\x04\x00\x00\x00\x01\x02\x03\x04"))
    writer.finish()
    first, second = json.loads(out.getvalue())
    assert str(Dataset.from_json(second).PatientName) == "DOE" and "00400100" not in second
    assert "left out" in err.getvalue() and "(0040,0100)" in err.getvalue()


def test_table_writer_shows_a_value_that_cannot_be_read_as_such_and_the_rest_of_the_match():
    # (0040,0100) of 4 bytes that are no item: pydicom raises when it is first read; the whole
    # find used to stop there, with no table at all
    out, err = io.StringIO(), io.StringIO()
    args = args_for("find", "h", "1", "-k", "PatientName", "-k", "StudyInstanceUID")
    ident = cli_find.find_identifier(args, "study")
    writer = cli_find.TableWriter(out, cli_find.display_order(args, "study", ident), err)
    writer.add(match("ROE^JANE", "1.3"))
    writer.add(decoded(b"\x10\x00\x10\x00PN\x04\x00DOE \x40\x00\x00\x01SQ\x00\x00\x04\x00\x00\x00\x01\x02\x03\x04"
                       b"\x20\x00\x0d\x00UI\x04\x001.4\x00"))
    writer.finish()
    header, _, first, second = out.getvalue().splitlines()
    assert header.split() == ["PatientName", "StudyInstanceUID", "ScheduledProcedureStepSequence"]
    assert first.split() == ["ROE^JANE", "1.3"]
    assert second.split() == ["DOE", "1.4", "<cannot", "be", "read>"]
    assert err.getvalue().startswith("dimsekit find: match 2: ScheduledProcedureStepSequence cannot be read (")


def test_flatten_marks_a_value_that_cannot_be_read_and_keeps_the_others():
    flat = _keys.flatten(decoded(b"\x10\x00\x10\x00PN\x04\x00DOE \x40\x00\x00\x01SQ\x00\x00\x04\x00\x00\x00"
                                 b"\x01\x02\x03\x04"))
    assert flat == [("PatientName", "DOE"), ("ScheduledProcedureStepSequence", _keys.UNREADABLE)]


def test_directory_writer_writes_dicom_files(tmp_path):
    writer = cli_find.DirectoryWriter(tmp_path / "out", STUDY_ROOT_FIND)
    writer.add(match("DOE^JOHN", "1.2"))
    writer.add(match("ROE^JANE", "1.3"))
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == ["rsp0001.dcm", "rsp0002.dcm"]
    back = dcmread(files[1])
    assert str(back.PatientName) == "ROE^JANE"
    assert back.file_meta.MediaStorageSOPClassUID == STUDY_ROOT_FIND


def test_directory_writer_writes_a_match_without_a_value_that_cannot_be_read_and_says_so(tmp_path):
    # pydicom reads every value as it writes a file: a damaged sequence stopped the whole find
    damaged = b"\x40\x00\x00\x01SQ\x00\x00\x04\x00\x00\x00\x01\x02\x03\x04"
    err = io.StringIO()
    writer = cli_find.DirectoryWriter(tmp_path / "out", STUDY_ROOT_FIND, err)
    # Request Attributes Sequence: one item of Modality CT and the same damaged sequence
    item = b"\xfe\xff\x00\xe0\x1a\x00\x00\x00\x08\x00\x60\x00CS\x02\x00CT" + damaged
    nested = b"\x40\x00\x75\x02SQ\x00\x00\x22\x00\x00\x00" + item
    writer.add(decoded(b"\x10\x00\x10\x00PN\x04\x00DOE " + nested + damaged))
    broken = match("ROE^JANE", "1.3")
    broken.add(DataElement(0x00420011, "OB", "text"))  # not bytes: pydicom cannot write it
    writer.add(broken)
    writer.add(match("POE^JIM", "1.4"))
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["rsp0001.dcm", "rsp0003.dcm"]
    first = dcmread(tmp_path / "out" / "rsp0001.dcm")
    assert first.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"  # as it came
    assert str(first.PatientName) == "DOE" and "ScheduledProcedureStepSequence" not in first
    (kept,) = first.RequestAttributesSequence
    assert kept.Modality == "CT" and "ScheduledProcedureStepSequence" not in kept
    said = err.getvalue().splitlines()
    assert said[0].startswith("dimsekit find: match 1: rsp0001.dcm written without what cannot be read (")
    assert said[0].count("ScheduledProcedureStepSequence (0040,0100): OSError") == 2  # in the item too
    assert said[1].startswith("dimsekit find: match 2 cannot be written to rsp0002.dcm (")
    assert len(said) == 2


# -- find, driven through a scripted association ---------------------------------------------------


class FakeAssociation:
    def __init__(self, responses: list[Response], final: Response, accepted: bool = True) -> None:
        self.responses = responses
        self.final = final
        self.accepted = accepted
        self.protocol = None
        self.ended: str | None = None
        self.sent: list[tuple[Dataset, str]] = []
        self.cancelled = False
        outer = self

        class Negotiated:
            def context_for(self, sop_class: str, ts: str | None = None, *, as_scu: bool = True) -> Any:
                return object() if outer.accepted else None

        self.negotiated = Negotiated()

    def _operation(self, identifier: Dataset, sop_class: str) -> DimseOperation:
        self.sent.append((identifier, sop_class))
        op = self.operation = DimseOperation(self, 1, 1)  # type: ignore[arg-type]
        for response in self.responses:
            op.pending(response)
        if self.final.status != 0xFE00:  # a Cancel comes when the C-CANCEL is sent
            op.finish(self.final)
        return op

    def find(self, identifier: Dataset, sop_class: str, total_timeout: float | None = None) -> DimseOperation:
        self.total_timeout = total_timeout
        return self._operation(identifier, sop_class)

    def get(self, identifier: Dataset, sop_class: str, on_store: Any = None,
            total_timeout: float | None = None) -> DimseOperation:
        self.total_timeout = total_timeout
        return self._operation(identifier, sop_class)

    def send_cancel(self, operation: DimseOperation) -> None:
        self.cancelled = True
        operation.finish(self.final)

    def release(self) -> defer.Deferred:
        self.ended = "released"
        return defer.succeed(None)


class FakeAE:
    def __init__(self, association: FakeAssociation) -> None:
        self.association = association
        self.contexts: list[Any] = []
        self.roles: dict[str, Any] = {}

    def associate(self, host: str, port: int, *, called: str, contexts: list[Any], roles: Any = None,
                  extended: Any = None, connect_timeout: float = 30) -> defer.Deferred:
        self.contexts = contexts
        self.roles = roles or {}
        self.extended = extended
        return defer.succeed(self.association)


def pending(ds: Dataset | None, **counts: int) -> Response:
    return Response({"Status": 0xFF00, **counts}, ds)


def run_find(association: FakeAssociation, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = args_for("find", "127.0.0.1", "104", *argv)
    d = defer.Deferred.fromCoroutine(cli_find._run(object(), args, out, err, make=lambda r, a: FakeAE(association)))
    codes: list[int] = []
    d.addCallback(codes.append)
    assert codes, "the command did not finish"
    return codes[0], out.getvalue(), err.getvalue()


def test_find_table_and_status():
    assoc = FakeAssociation([pending(match("DOE^JOHN", "1.2")), pending(match("DOE^JANE", "1.3"))],
                            Response({"Status": 0x0000}))
    code, out, err = run_find(assoc, "-k", "PatientName=DOE*")
    assert code == 0
    assert "DOE^JOHN" in out and "DOE^JANE" in out and out.splitlines()[1].startswith("---")
    assert "2 matches" in err
    assert assoc.sent[0][1] == STUDY_ROOT_FIND and assoc.ended == "released"


def test_a_damaged_match_does_not_end_the_find(tmp_path):
    damaged = decoded(b"\x10\x00\x10\x00PN\x04\x00DOE \x40\x00\x00\x01SQ\x00\x00\x04\x00\x00\x00\x01\x02\x03\x04")
    assoc = FakeAssociation([pending(damaged), pending(match("ROE^JANE", "1.3"))], Response({"Status": 0x0000}))
    code, out, err = run_find(assoc, "-k", "PatientName=*", "--out-dir", str(tmp_path / "out"))
    assert code == 0
    assert "DOE" in out and "ROE^JANE" in out and "<cannot be read>" in out
    assert "match 1: ScheduledProcedureStepSequence cannot be read" in err and "2 matches" in err
    assert "(after" not in err
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["rsp0001.dcm", "rsp0002.dcm"]


def test_find_json_only_json_on_stdout():
    assoc = FakeAssociation([pending(match("DOE^JOHN", "1.2"))], Response({"Status": 0x0000}))
    code, out, err = run_find(assoc, "-P", "--json")
    assert code == 0
    assert [Dataset.from_json(d).StudyInstanceUID for d in json.loads(out)] == ["1.2"]
    assert assoc.sent[0][1] == PATIENT_ROOT_FIND


def test_find_failure_status_is_named_and_exits_1():
    assoc = FakeAssociation([], Response({"Status": 0xA900, "ErrorComment": "no level"}))
    code, out, err = run_find(assoc, "-W", "--json")
    assert code == 1
    assert json.loads(out) == []  # still a valid (empty) array
    assert "0xA900" in err and "no level" in err
    assert assoc.sent[0][1] == MODALITY_WORKLIST_FIND


def test_find_cancel_after_n():
    assoc = FakeAssociation([pending(match("A", "1")), pending(match("B", "2"))], Response({"Status": 0xFE00}))
    code, out, err = run_find(assoc, "--cancel", "1", "-q")
    assert assoc.cancelled and code == 0 and err == ""


def test_find_context_refused_and_bad_arguments():
    assoc = FakeAssociation([], Response({"Status": 0}), accepted=False)
    code, out, err = run_find(assoc)
    assert code == 1 and "did not accept Study Root" in err
    code, out, err = run_find(assoc, "-k", "Nope=1")
    assert code == 2 and "Nope" in err


@pytest.mark.parametrize("command", ["echo", "find", "get", "move", "store", "mpps create", "commit", "print"])
@pytest.mark.parametrize(("option", "words"), [
    (["-aet", "A" * 17], "argument -aet/--aet: AE title 'AAAAAAAAAAAAAAAAA' must be 1 to 16 characters"),
    (["-aec", "BAD\\TITLE"], "argument -aec/--called: AE title 'BAD\\\\TITLE' may hold only printable ASCII"),
    (["-to", "-1"], "argument -to/--timeout: '-1' is not a number of seconds more than 0"),
    (["-to", "nan"], "argument -to/--timeout: 'nan' is not a number of seconds more than 0"),
    (["--max-pdu", "5"], "argument --max-pdu: '5': use 0 (no limit) or 4096 to 4294967295 bytes"),
    (["PORT=99999"], "argument port: '99999' is not a TCP port (1-65535)"),
    (["PORT=-5"], "argument port: '-5' is not a TCP port (1-65535)"),
])
def test_common_options_are_checked_before_anything_runs(capsys, command, option, words):
    """A bad -aet, -aec, -to, --max-pdu or port is a usage error (exit 2, one
    line naming the option): no traceback from deep in the tool (-aet, -to), no
    'connection refused' or 'cannot resolve host' for a port that cannot be."""
    port = option[0].removeprefix("PORT=") if option[0].startswith("PORT=") else "104"
    extra = [] if option[0].startswith("PORT=") else option
    argv = [*command.split(), "127.0.0.1", port, *extra]
    if command in ("store", "commit"):
        argv.append("file.dcm")
    if command == "print":
        argv.append("image.png")
    with pytest.raises(SystemExit) as exited:
        _parser().parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert "Traceback" not in err


def test_common_options_accept_what_is_valid():
    args = args_for("echo", "127.0.0.1", "65535", "-aet", " ME ", "-aec", "PACS", "-to", "0.5", "--max-pdu", "0")
    assert (args.port, args.aet, args.called, args.timeout, args.max_pdu) == (65535, "ME", "PACS", 0.5, 0)


# -- get: contexts, files, summaries -------------------------------------------------------------------


def test_storage_contexts_fit_one_association():
    contexts = cli_get.storage_contexts()
    assert len(contexts) == 127 == len(set(contexts))
    assert contexts[0] == "1.2.840.10008.5.1.4.1.1.2"  # CT first
    assert "1.2.840.10008.5.1.4.1.1.1.1" in contexts  # DX For Presentation (keyword not ending in Storage)
    everything = cli_get.all_storage_sop_classes()
    assert "1.2.840.10008.1.3.10" not in everything and len(everything) > 127


class FakeSink:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)


def test_written_file_is_part10_with_the_bytes_received(tmp_path):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "DOE^JOHN"
    from dimsekit.datasets import encode_dataset

    raw = encode_dataset(ds, "1.2.840.10008.1.2")
    header = cli_get.part10_header(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2", "PEER")
    path = tmp_path / "x" / "1.2.3.4.dcm"
    size = cli_get._write(path, header, FakeSink(raw))
    assert path.read_bytes().endswith(raw) and size == path.stat().st_size
    back = dcmread(path)
    assert str(back.PatientName) == "DOE^JOHN"
    assert back.file_meta.SourceApplicationEntityTitle == "PEER"
    assert not list(path.parent.glob(".*.part"))


def test_a_retrieved_data_set_cut_short_is_refused_c000_and_no_file_is_kept(tmp_path):
    """A C-GET's instance whose pixel data ends early (a PACS reading a damaged file, a
    proxy that cut it): 0xC000, said among the failures, no file, no .part."""
    from types import SimpleNamespace

    from twisted.internet.task import Clock
    from twisted.python.failure import Failure

    from dimsekit.datasets import encode_dataset

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4"
    ds.add_new(0x7FE00010, "OW", b"\1\2" * 50_000)
    raw = encode_dataset(ds, "1.2.840.10008.1.2.1")

    class Pool:  # runs the job at once, as Twisted's pool would in a thread
        def callInThreadWithCallback(self, done, f, *args, **kwargs):  # noqa: N802 -- Twisted's name
            try:
                result = f(*args, **kwargs)
            except BaseException:
                done(False, Failure())
            else:
                done(True, result)

    reactor = Clock()
    reactor.getThreadPool = lambda: Pool()
    reactor.callFromThread = lambda f, *args, **kwargs: f(*args, **kwargs)
    receiver = cli_get.Receiver(reactor, tmp_path)
    statuses = []
    # and compressed fragments sent as Explicit VR Little Endian: no image either
    head = raw[:raw.index(b"\xe0\x7f\x10\x00")]
    fragments = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0\x04\x00\x00\x00\xff\xd8\xff\xd9" + \
        b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    encapsulated = head + b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" + fragments
    for uid, data in (("1.2.3.4", raw[:-7]), ("1.2.3.5", raw), ("1.2.3.6", encapsulated)):
        request = SimpleNamespace(sop_class_uid=ds.SOPClassUID, sop_instance_uid=uid,
                                  transfer_syntax="1.2.840.10008.1.2.1",
                                  association=SimpleNamespace(remote_ae_title="PACS"))
        request.sink = receiver.sink_for(request)
        request.sink.write(data)
        request.sink.close()
        receiver(request).addCallback(statuses.append)
    assert statuses == [0xC000, 0x0000, 0xC000]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.2.3.5.dcm"]
    assert receiver.failures == ["1.2.3.4: the data set is cut short: (7FE0,0010) at offset 50 has a value of "
                                 "100000 bytes, 99993 are left",
                                 "1.2.3.6: encapsulated Pixel Data in Explicit VR Little Endian (PS3.5 A.4): Pixel "
                                 "Data (7FE0,0010) at offset 50 is encapsulated (undefined length), which only a "
                                 "compressed transfer syntax allows (PS3.5 A.4)"]


def outcome(status: int, tmp_path: Path, dataset: Dataset | None = None, **counts: int) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    progress = cli_get.Progress(err, False, None)
    receiver = cli_get.Receiver(None, tmp_path)
    final = Response({"Status": status, **counts}, dataset)
    code = cli_get.retrieve_outcome("get", "get", final, progress, receiver, 0.5,
                                    argparse.Namespace(quiet=False), out, err)
    return code, out.getvalue(), err.getvalue()


def test_retrieve_outcomes(tmp_path):
    code, out, _ = outcome(0x0000, tmp_path, NumberOfCompletedSuboperations=3, NumberOfFailedSuboperations=0)
    assert code == 0 and "3 completed, 0 failed" in out
    failed = Dataset()
    failed.FailedSOPInstanceUIDList = ["1.2.3", "1.2.4"]
    code, out, err = outcome(0xB000, tmp_path, failed, NumberOfCompletedSuboperations=1,
                             NumberOfFailedSuboperations=2)
    assert code == 1 and "failed   1.2.4" in out and "2 sub-operation(s) failed" in err
    code, _, _ = outcome(0xB000, tmp_path, NumberOfWarningSuboperations=1, NumberOfFailedSuboperations=0)
    assert code == 0  # warnings only
    code, _, err = outcome(0xA801, tmp_path)
    assert code == 1 and "0xA801" in err
    code, _, err = outcome(0xFE00, tmp_path)
    assert code == 1 and "Cancel" in err


def test_get_proposes_storage_with_the_scp_role(tmp_path):
    assoc = FakeAssociation([pending(None, NumberOfRemainingSuboperations=1, NumberOfCompletedSuboperations=0)],
                            Response({"Status": 0, "NumberOfCompletedSuboperations": 1}))
    ae = FakeAE(assoc)
    out, err = io.StringIO(), io.StringIO()
    args = args_for("get", "127.0.0.1", "104", "-k", "StudyInstanceUID=1.2.3", "--out-dir", str(tmp_path))
    d = defer.Deferred.fromCoroutine(cli_get._run(object(), args, out, err, make=lambda r, a: ae))
    codes: list[int] = []
    d.addCallback(codes.append)
    assert codes == [0], err.getvalue()
    assert ae.contexts[0] == "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root GET
    assert len(ae.contexts) == 128
    assert all(role == (False, True) for role in ae.roles.values()) and len(ae.roles) == 127
    assert assoc.sent[0][0].QueryRetrieveLevel == "STUDY"
    assert "1 completed" in out.getvalue()
    assert ae.spool_dir == str(tmp_path)  # an instance past 1 MiB waits where it is written, not in /tmp


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(tmp_path):
    receiver = cli_get.Receiver(None, tmp_path)
    receiver.files, receiver.bytes = 3, 2_500_000
    tty = Tty()
    progress = cli_get.Progress(tty, cli_get._isatty(tty), receiver)
    progress.response(Response({"Status": 0xFF00, "NumberOfCompletedSuboperations": 3,
                                "NumberOfRemainingSuboperations": 7, "NumberOfFailedSuboperations": 0,
                                "NumberOfWarningSuboperations": 0}))
    line = tty.getvalue()
    assert line.startswith("\r") and "completed 3  remaining 7  failed 0" in line and "3 files  2.5 MB" in line
    progress.clear()
    assert tty.getvalue().endswith("\r")
    plain = io.StringIO()
    quiet = cli_get.Progress(plain, cli_get._isatty(plain), receiver)
    quiet.response(Response({"Status": 0xFF00, "NumberOfCompletedSuboperations": 1}))
    quiet.clear()
    assert plain.getvalue() == ""
    # a malformed count from the peer (two values) is not shown, and does not stop the retrieve
    progress.response(Response({"Status": 0xFF00, "NumberOfCompletedSuboperations": [4, 5],
                                "NumberOfRemainingSuboperations": 6}))
    assert (progress.counts["NumberOfCompletedSuboperations"], progress.counts["NumberOfRemainingSuboperations"]) == (3, 6)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ([], None),
        (["--relational"], b"\x01"),
        (["--datetime"], b"\x00\x01"),
        (["--timezone", "--relational"], b"\x01\x00\x00\x01"),
        (["--fuzzy"], b"\x00\x00\x01"),
    ],
)
def test_find_extended_negotiation_bytes(flags, expected):
    parser = argparse.ArgumentParser()
    cli_find.add_arguments(parser)
    args = parser.parse_args(["127.0.0.1", "104", *flags])
    assert cli_find.find_extended(args) == expected


def test_options_not_agreed_are_named():
    asked = b"\x01\x01\x00\x01"
    assert cli_find.not_agreed(asked, None) == ["relational queries", "combined date and time matching",
                                                "timezone query adjustment"]
    assert cli_find.not_agreed(asked, b"\x00\x01") == ["relational queries", "timezone query adjustment"]
    assert cli_find.not_agreed(asked, b"\x01\x01\x01\x01") == []


# -- get: the retry of failed (compressed) instances -----------------------------------------------

SC = "1.2.840.10008.5.1.4.1.1.7"
CT = "1.2.840.10008.5.1.4.1.1.2"
JPEG, J2K = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91"
UNCOMPRESSED = cli_get.UNCOMPRESSED_TRANSFER_SYNTAXES


def failed(uid: str, sop_class: str = SC, *syntaxes: str, series: str = "9.1") -> cli_get.FailedInstance:
    return cli_get.FailedInstance(uid, sop_class, tuple(syntaxes), "9", series, "P")


def test_contexts_needed_per_pair_or_per_compressed_syntax():
    assert cli_get.contexts_needed(failed("9.1.1", SC, JPEG)) == [(SC, UNCOMPRESSED), (SC, (JPEG,))]
    # available in several: one context each; an uncompressed one is the uncompressed context
    assert cli_get.contexts_needed(failed("9.1.1", SC, J2K, "1.2.840.10008.1.2.1", J2K)) == [
        (SC, UNCOMPRESSED), (SC, (J2K,))]
    # the peer did not say the syntax: each usual compressed one
    contexts = cli_get.contexts_needed(failed("9.1.1", CT))
    assert contexts == [(CT, UNCOMPRESSED)] + [(CT, (ts,)) for ts in cli_get.COMPRESSED_TRANSFER_SYNTAXES]
    assert len(contexts) == 10
    # nor the class: each class guessed in each compressed syntax
    guessed = cli_get.guess_classes([SC])
    contexts = cli_get.contexts_needed(cli_get.FailedInstance("9.1.1"), guessed)
    assert contexts[:9] == [(SC, (ts,)) for ts in cli_get.COMPRESSED_TRANSFER_SYNTAXES]
    assert len(contexts) == 9 * len(guessed) <= 127


def test_guess_classes_received_first_then_common_image_classes():
    guessed = cli_get.guess_classes(["1.2.840.10008.5.1.4.1.1.481.1", CT])
    assert guessed[:3] == ["1.2.840.10008.5.1.4.1.1.481.1", CT, "1.2.840.10008.5.1.4.1.1.4"]  # RT Image, CT, MR
    assert SC in guessed and len(guessed) == len(set(guessed)) == 127 // 9


def test_plan_retry_one_context_per_pair_within_127():
    instances = [failed("9.1.1", SC, JPEG), failed("9.1.2", SC, JPEG), failed("9.1.3", SC, J2K)]
    (batch,) = cli_get.plan_retry(instances)
    assert batch.contexts == [(SC, UNCOMPRESSED), (SC, (JPEG,)), (SC, (J2K,))]
    assert batch.instances == instances
    # 13 classes whose syntax the peer did not say, 10 contexts each: two associations
    classes = cli_get.storage_contexts()[:13]
    many = [failed(f"9.1.{n}", sop_class) for n, sop_class in enumerate(classes)] + [failed("9.2.1", classes[0])]
    batches = cli_get.plan_retry(many)
    assert [len(b.contexts) for b in batches] == [120, 10]
    assert [len(b.instances) for b in batches] == [13, 1]
    assert "9.2.1" in [i.sop_instance_uid for i in batches[0].instances]  # with the other one of its class
    for b in batches:
        for instance in b.instances:
            assert set(cli_get.contexts_needed(instance)) <= set(b.contexts)
    # a smaller limit packs as many as fit
    assert [len(b.contexts) for b in cli_get.plan_retry(many, limit=25)] == [20] * 6 + [10]
    # an unknown class: the classes guessed, packed like the rest (contexts shared once)
    (mixed,) = cli_get.plan_retry([cli_get.FailedInstance("9.3.1"), failed("9.1.1", SC, JPEG)], [SC, CT])
    assert len(mixed.contexts) == 18 + 1 and (SC, UNCOMPRESSED) in mixed.contexts


def test_identifiers_of_the_retry():
    original = Dataset()
    original.QueryRetrieveLevel = "STUDY"
    original.StudyInstanceUID = "9"
    uids = [f"9.1.{n}" for n in range(450)]
    requests = cli_get.describe_identifiers(original, uids)
    assert [len(listed) for _, listed in requests] == [200, 200, 50]
    first = requests[0][0]
    assert first.QueryRetrieveLevel == "IMAGE" and list(first.SOPInstanceUID) == uids[:200]
    assert first.StudyInstanceUID == "" and first.SeriesInstanceUID == ""  # universal: the UIDs are unique
    assert first.SOPClassUID == "" and first.AvailableTransferSyntaxUID == ""
    single = cli_get.describe_identifiers(original, uids[:2], per_request=1)
    assert [ds.SOPInstanceUID for ds, _ in single] == uids[:2]
    # none listed: every instance of the request
    ((everything, listed),) = cli_get.describe_identifiers(original, [])
    assert listed == [] and everything.StudyInstanceUID == "9" and everything.SOPInstanceUID == ""

    instances = [failed("9.1.1"), failed("9.2.1", series="9.2"), failed("9.1.2")]
    gets = cli_get.retry_identifiers(instances, "study")
    assert [(ds.SeriesInstanceUID, ds.SOPInstanceUID) for ds, _ in gets] == [("9.1", ["9.1.1", "9.1.2"]),
                                                                             ("9.2", "9.2.1")]
    assert all(ds.QueryRetrieveLevel == "IMAGE" and ds.StudyInstanceUID == "9" and "PatientID" not in ds
               for ds, _ in gets)
    gets = cli_get.retry_identifiers(instances, "patient", per_request=1)
    assert [ds.SOPInstanceUID for ds, _ in gets] == ["9.1.1", "9.1.2", "9.2.1"]
    assert all(ds.PatientID == "P" for ds, _ in gets)


def test_a_match_as_a_failed_instance():
    ds = Dataset()
    ds.SOPInstanceUID, ds.SOPClassUID = "9.1.1", SC
    ds.AvailableTransferSyntaxUID = [JPEG, "1.2.840.10008.1.2.1"]
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "9", "9.1"
    assert cli_get.failed_instance(ds) == cli_get.FailedInstance("9.1.1", SC, (JPEG, "1.2.840.10008.1.2.1"),
                                                                 "9", "9.1", "")
    bare = Dataset()
    bare.SOPInstanceUID = "9.1.2"
    assert cli_get.failed_instance(bare) == cli_get.FailedInstance("9.1.2")
    bare.SOPInstanceUID = ["9.1.2", "9.1.3"]
    assert cli_get.failed_instance(bare) is None and cli_get.failed_instance(None) is None


def test_merged_final_status_counts_and_list():
    first = Response({"Status": 0xB000, "NumberOfRemainingSuboperations": 0}, None)
    merged = cli_get.merged_final(first, (1, 2, 0), ["9.1.1", "9.1.2"], {"9.1.1", "9.1.2"})
    assert merged.status == 0x0000 and merged.dataset is None
    assert (merged.NumberOfCompletedSuboperations, merged.NumberOfFailedSuboperations,
            merged.NumberOfRemainingSuboperations) == (3, 0, 0)
    merged = cli_get.merged_final(first, (1, 2, 0), ["9.1.1", "9.1.2"], {"9.1.1"})
    assert merged.status == 0xB000 and merged.dataset.FailedSOPInstanceUIDList == "9.1.2"
    assert (merged.NumberOfCompletedSuboperations, merged.NumberOfFailedSuboperations) == (2, 1)
    merged = cli_get.merged_final(Response({"Status": 0xA702}), (0, 3, 0), [], {"9.1.1"})
    assert merged.status == 0xB000 and merged.NumberOfFailedSuboperations == 2
    assert cli_get.merged_final(Response({"Status": 0xA702}), (0, 2, 1), [], {"9.1.1", "9.1.2"}).status == 0xB000


def test_should_retry_only_when_sub_operations_failed():
    progress = cli_get.Progress(io.StringIO(), False, None)
    listing = Dataset()
    listing.FailedSOPInstanceUIDList = ["9.1.1"]
    assert cli_get.should_retry(Response({"Status": 0xB000}, listing), progress)
    assert cli_get.should_retry(Response({"Status": 0xA702, "NumberOfFailedSuboperations": 2}), progress)
    assert not cli_get.should_retry(Response({"Status": 0x0000}), progress)
    assert not cli_get.should_retry(Response({"Status": 0xB000, "NumberOfWarningSuboperations": 1,
                                              "NumberOfFailedSuboperations": 0}), progress)
    assert not cli_get.should_retry(Response({"Status": 0xFE00, "NumberOfFailedSuboperations": 1}, listing), progress)
    assert not cli_get.should_retry(Response({"Status": 0xA900}), progress)


class StoreRequest:
    """What the Receiver reads of a C-STORE sub-operation."""

    def __init__(self, uid: str, sop_class: str, syntax: str, association: Any) -> None:
        self.sop_instance_uid, self.sop_class_uid, self.transfer_syntax = uid, sop_class, syntax
        self.association = association
        self.sink = FakeSink(b"")


class ScriptedPeer:
    """One association of a scripted peer: ``answer(kind, identifier)`` gives the
    C-FIND matches or the (UID, SOP class, syntax) to deliver, and the final response."""

    def __init__(self, answer: Any, accepted: tuple[str, ...] = ()) -> None:
        self.answer = answer
        self.accepted = accepted
        self.protocol = None
        self.ended: str | None = None
        self.remote_ae_title = "PEER"
        self.requests: list[tuple[str, Dataset]] = []
        outer = self

        class Negotiated:
            def context_for(self, sop_class: str, ts: str | None = None, *, as_scu: bool = True) -> Any:
                return object() if not outer.accepted or sop_class in outer.accepted else None

        self.negotiated = Negotiated()

    def _operation(self, kind: str, identifier: Dataset, on_store: Any = None) -> DimseOperation:
        self.requests.append((kind, identifier))
        items, final = self.answer(kind, identifier)
        op = DimseOperation(self, 1, 1)  # type: ignore[arg-type]
        for item in items:
            if kind == "find":
                op.pending(Response({"Status": 0xFF00}, item))
            else:
                on_store(StoreRequest(*item, association=self))
        op.finish(final)
        return op

    def find(self, identifier: Dataset, sop_class: str, total_timeout: float | None = None) -> DimseOperation:
        return self._operation("find", identifier)

    def get(self, identifier: Dataset, sop_class: str, on_store: Any = None,
            total_timeout: float | None = None) -> DimseOperation:
        return self._operation("get", identifier, on_store)

    def release(self) -> defer.Deferred:
        self.ended = "released"
        return defer.succeed(None)


class ScriptedAE:
    def __init__(self, *peers: ScriptedPeer) -> None:
        self.peers = list(peers)
        self.proposed: list[tuple[list[Any], dict[str, Any]]] = []

    def associate(self, host: str, port: int, *, called: str, contexts: list[Any], roles: Any = None,
                  connect_timeout: float = 30) -> defer.Deferred:
        self.proposed.append((list(contexts), dict(roles or {})))
        return defer.succeed(self.peers.pop(0))


class Pool:
    def getThreadPool(self) -> None:
        return None


def run_get(ae: ScriptedAE, tmp_path: Path, *argv: str, monkeypatch: Any) -> tuple[int, str, str]:
    monkeypatch.setattr(cli_get.threads, "deferToThreadPool", lambda reactor, pool, f, *a: defer.maybeDeferred(f, *a))
    out, err = io.StringIO(), io.StringIO()
    args = args_for("get", "127.0.0.1", "104", "--out-dir", str(tmp_path), *argv)
    d = defer.Deferred.fromCoroutine(cli_get._run(Pool(), args, out, err, make=lambda r, a: ae))
    codes: list[int] = []
    d.addCallback(codes.append)
    assert codes, "the command did not finish"
    return codes[0], out.getvalue(), err.getvalue()


def image(uid: str, sop_class: str = SC, syntax: str | None = None, series: str = "9.2") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.SOPInstanceUID, ds.SOPClassUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, sop_class, "9", series
    if syntax:
        ds.AvailableTransferSyntaxUID = syntax
    return ds


def first_get(failed_uids: list[str], **counts: int) -> ScriptedPeer:
    listing = None
    if failed_uids:
        listing = Dataset()
        listing.FailedSOPInstanceUIDList = failed_uids
    final = Response({"Status": 0xB000, "NumberOfCompletedSuboperations": 1,
                      "NumberOfFailedSuboperations": 2, "NumberOfWarningSuboperations": 0, **counts}, listing)
    return ScriptedPeer(lambda kind, identifier: ([("9.1.1", CT, "1.2.840.10008.1.2.1")], final))


def test_get_retries_the_failed_instances_with_their_syntaxes(tmp_path, monkeypatch):
    find = ScriptedPeer(lambda kind, identifier: ([image("9.2.1", syntax=JPEG), image("9.2.2", syntax=J2K)],
                                                  Response({"Status": 0})),
                        accepted=(cli_get.STUDY_ROOT_FIND,))
    again = ScriptedPeer(lambda kind, identifier: ([("9.2.1", SC, JPEG), ("9.2.2", SC, J2K)],
                                                   Response({"Status": 0, "NumberOfCompletedSuboperations": 2})))
    ae = ScriptedAE(first_get(["9.2.1", "9.2.2"]), find, again)
    code, out, err = run_get(ae, tmp_path, "-k", "StudyInstanceUID=9", monkeypatch=monkeypatch)
    assert code == 0 and err == "", err
    assert out.startswith("C-GET: 0x0000 ")
    assert "3 completed (2 of them on a retry in their own transfer syntaxes), 0 failed, 0 warning" in out
    assert sorted(p.name for p in tmp_path.glob("*.dcm")) == ["9.1.1.dcm", "9.2.1.dcm", "9.2.2.dcm"]
    assert ae.proposed[1][0] == [cli_get.STUDY_ROOT_FIND, cli_get.PATIENT_ROOT_FIND]
    ((kind, asked),) = find.requests
    assert kind == "find" and list(asked.SOPInstanceUID) == ["9.2.1", "9.2.2"] and asked.QueryRetrieveLevel == "IMAGE"
    contexts, roles = ae.proposed[2]
    assert contexts == ["1.2.840.10008.5.1.4.1.2.2.3", (SC, UNCOMPRESSED), (SC, (JPEG,)), (SC, (J2K,))]
    assert roles == {SC: (False, True)}
    ((kind, request),) = again.requests
    assert (request.QueryRetrieveLevel, request.StudyInstanceUID, request.SeriesInstanceUID,
            list(request.SOPInstanceUID)) == ("IMAGE", "9", "9.2", ["9.2.1", "9.2.2"])
    assert find.ended == again.ended == "released"


def test_a_peer_refusing_lists_is_asked_one_uid_at_a_time_and_what_does_not_come_stays_failed(tmp_path, monkeypatch):
    def find_answer(kind: str, identifier: Dataset) -> Any:
        if not isinstance(identifier.SOPInstanceUID, str):
            return [], Response({"Status": 0xC320})
        return [image(identifier.SOPInstanceUID)], Response({"Status": 0})  # no syntax said

    def get_answer(kind: str, identifier: Dataset) -> Any:
        if not isinstance(identifier.SOPInstanceUID, str):
            return [], Response({"Status": 0xC420})
        if identifier.SOPInstanceUID == "9.2.1":
            return [("9.2.1", SC, JPEG)], Response({"Status": 0, "NumberOfCompletedSuboperations": 1})
        listing = Dataset()
        listing.FailedSOPInstanceUIDList = identifier.SOPInstanceUID
        return [], Response({"Status": 0xA702, "NumberOfFailedSuboperations": 1}, listing)

    find, again = ScriptedPeer(find_answer), ScriptedPeer(get_answer)
    ae = ScriptedAE(first_get(["9.2.1", "9.2.2"]), find, again)
    code, out, err = run_get(ae, tmp_path, "-k", "StudyInstanceUID=9", monkeypatch=monkeypatch)
    assert code == 1
    assert "0xB000" in out and "2 completed (1 of them on a retry in their own transfer syntaxes), 1 failed" in out
    assert "failed   9.2.2" in out and "failed   9.2.1" not in out
    assert "1 sub-operation(s) failed" in err and "cannot retry" not in err, err
    assert [ds.SOPInstanceUID for _, ds in find.requests][1:] == ["9.2.1", "9.2.2"]
    assert [ds.SOPInstanceUID for _, ds in again.requests][1:] == ["9.2.1", "9.2.2"]
    assert len(ae.proposed[2][0]) == 1 + 10  # SC uncompressed + each compressed syntax


def test_failures_counted_but_not_listed_are_found_by_the_request_keys(tmp_path, monkeypatch):
    find = ScriptedPeer(lambda kind, identifier: ([image("9.1.1", CT, series="9.1"), image("9.2.1", syntax=JPEG)],
                                                  Response({"Status": 0})))
    again = ScriptedPeer(lambda kind, identifier: ([("9.2.1", SC, JPEG)], Response({"Status": 0})))
    ae = ScriptedAE(first_get([], NumberOfFailedSuboperations=1), find, again)
    code, out, err = run_get(ae, tmp_path, "-k", "StudyInstanceUID=9", monkeypatch=monkeypatch)
    assert code == 0, out + err
    ((_, asked),) = find.requests
    assert (asked.StudyInstanceUID, asked.SOPInstanceUID) == ("9", "")
    ((_, request),) = again.requests
    assert request.SOPInstanceUID == "9.2.1"  # not the CT received already
    assert "2 completed (1 of them on a retry" in out


def test_no_retry_when_turned_off_or_when_the_peer_cannot_say(tmp_path, monkeypatch):
    ae = ScriptedAE(first_get(["9.2.1", "9.2.2"]))
    code, out, err = run_get(ae, tmp_path, "--no-retry-compressed", "-k", "StudyInstanceUID=9",
                             monkeypatch=monkeypatch)
    assert code == 1 and len(ae.proposed) == 1 and "failed   9.2.2" in out
    find = ScriptedPeer(lambda kind, identifier: ([], Response({"Status": 0})), accepted=("1.2.3",))
    ae = ScriptedAE(first_get(["9.2.1", "9.2.2"]), find)
    code, out, err = run_get(ae, tmp_path / "b", "-k", "StudyInstanceUID=9", monkeypatch=monkeypatch)
    assert code == 1 and "cannot retry the failed instances: the peer accepts no C-FIND" in err
    assert "failed   9.2.1" in out and "1 completed, 2 failed" in out


def test_what_the_tools_print_cannot_drive_a_terminal():
    """dimsekit's streams (cli.main wraps stdout and stderr): a peer's escape sequences, NULs,
    bells and C1 controls are escaped (as JSON would: find --json stays JSON); the tools' own
    new lines, tabs and carriage returns (the progress line) pass."""
    from dimsekit.cli import TerminalSafe

    out = io.StringIO()
    safe = TerminalSafe(out)
    assert safe.write("Doe^\x1b]0;owned\x07John\x00\x9b2J") == 22  # the characters given
    safe.write("\rprogress\t1\n")
    assert out.getvalue() == "Doe^\\x1b]0;owned\\x07John\\x00\\u009b2J\rprogress\t1\n"
    json_text = json.dumps({"name": "a\x1b\x85\x7f"}, ensure_ascii=False)  # find --json: C1, DEL raw
    out.seek(0)
    out.truncate()
    safe.write(json_text)
    assert json.loads(out.getvalue()) == {"name": "a\x1b\x85\x7f"}  # still JSON, the same value
    assert not safe.isatty()


def test_find_table_cells_escape_what_the_peer_sent():
    from dimsekit.cli._keys import flatten

    match = Dataset()
    match.PatientName = "Doe\x1b[2J^John"
    match.StudyDescription = "line\none\x07"
    assert dict(flatten(match)) == {"PatientName": "Doe\\x1b[2J^John", "StudyDescription": "line one\\x07"}


@pytest.mark.parametrize("threshold", [1 << 30, 1000], ids=["in-memory", "spooled-to-a-file"])
def test_get_writes_the_header_then_the_data_set_however_it_was_spooled(tmp_path, threshold):
    from dimsekit.dimse.fragments import SpooledSink

    data = bytes(range(256)) * 40_000  # 10 MB
    sink = SpooledSink(threshold, str(tmp_path))
    for offset in range(0, len(data), 16_384):
        sink.write(data[offset:offset + 16_384])
    sink.close()
    assert sink.on_disk is (threshold < len(data))
    path = tmp_path / "out" / "1.2.3.dcm"
    size = cli_get._write(path, b"HEADER", sink)
    assert size == len(data) + 6
    assert path.read_bytes() == b"HEADER" + data
    assert not list(path.parent.glob(".*.part"))


def test_a_part_file_sink_writes_header_and_data_set_and_leaves_nothing_when_aborted(tmp_path):
    sink = cli_get.PartFileSink(tmp_path / "a" / "1.2.3.dcm", b"HEADER")
    for _ in range(40):
        sink.write(memoryview(bytes(16_384)))  # 640 KiB: written 256 KiB at a time
    sink.close()
    assert sink.open().read() == bytes(16_384 * 40)  # the data set, after the header
    assert sink.finish() == 6 + 16_384 * 40
    assert (tmp_path / "a" / "1.2.3.dcm").read_bytes()[:6] == b"HEADER"
    lost = cli_get.PartFileSink(tmp_path / "a" / "1.2.4.dcm", b"HEADER")
    lost.write(b"partial")
    lost.abort()  # the association went before the data set was complete
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["1.2.3.dcm"]
