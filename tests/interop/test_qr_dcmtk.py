"""Query/Retrieve interop: DCMTK's findscu, movescu and getscu against a dimsekit node.

One node (twistd) serves the module; its archive is filled by DCMTK storescu
with the synthetic corpus of :mod:`tests.plugins.test_qr_support` (ASCII,
Latin-1 and UTF-8 names) plus one bulk series of 150 instances (for
cancelling a long stream).  Its ``[[remote]]`` table names a DCMTK storescp
as the C-MOVE destination ``STORESCP``.  Responses are read back with
findscu ``-X`` (one DICOM file per response) and pydicom.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset

from tests.interop.conftest import (
    Node,
    dcmtk,
    free_port,
    run,
    start_node,
    stop,
    wait_for_port,
)
from tests.plugins.test_qr_support import (
    EXPLICIT,
    SC,
    corpus_datasets,
    instance_uid,
    series_uid,
    study_uid,
)

pytestmark = pytest.mark.interop

BULK = 150
BULK_STUDY = study_uid("9")
BULK_SERIES = series_uid("9.1")


def bulk_datasets() -> Iterator[Dataset]:
    for n in range(1, BULK + 1):
        ds = Dataset()
        ds.PatientName, ds.PatientID = "BULK^PATIENT", "PID9"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = BULK_STUDY, BULK_SERIES
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20200101", "120000", "S9", "ACC9"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 1, n
        ds.SOPClassUID, ds.SOPInstanceUID = SC, instance_uid("9.1", n)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = EXPLICIT
        ds.file_meta.MediaStorageSOPClassUID = SC
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        yield ds


class QrNode:
    def __init__(self, node: Node, storescp_port: int, root: Path) -> None:
        self.node = node
        self.port = node.port
        self.storescp_port = storescp_port
        self.root = root


@pytest.fixture(scope="module")
def qr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QrNode]:
    root = tmp_path_factory.mktemp("qr")
    storescp_port = free_port()
    config = f"""
[node]
ae_title = "DIMSEKIT"
data_dir = "data"

[plugins.archive]
fsync = false

[[remote]]
ae_title = "STORESCP"
host = "127.0.0.1"
port = {storescp_port}
"""
    node = start_node(root, config=config)
    try:
        corpus = root / "corpus"
        corpus.mkdir()
        for n, ds in enumerate([*corpus_datasets(), *bulk_datasets()]):
            ds.save_as(corpus / f"{n:04d}.dcm", enforce_file_format=True)
        result = run([dcmtk("storescu"), "-aec", "DIMSEKIT", "+sd", "127.0.0.1", str(node.port), str(corpus)],
                     timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        yield QrNode(node, storescp_port, root)
    finally:
        code = stop(node.proc)
        text = node.log_text()
        assert "Traceback" not in text, text
        assert code == 0, text


def findscu(qr: QrNode, out: Path, *args: str | bytes, model: str = "-S") -> tuple[subprocess.CompletedProcess, list[Dataset]]:
    """findscu with ``-X`` into ``out``: (the run, the response identifiers in order)."""
    out.mkdir(exist_ok=True)
    # errors="replace": findscu echoes keys in the request's character set (Latin-1, ...)
    result = subprocess.run([dcmtk("findscu"), "-v", model, "-aec", "DIMSEKIT", "-X", "-od", str(out), *args,
                             "127.0.0.1", str(qr.port)], capture_output=True, text=True, errors="replace", timeout=60)
    responses = [dcmread(path) for path in sorted(out.glob("rsp*.dcm"))]
    return result, responses


def keys(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("-k", pair)]


def test_findscu_patient_level(qr, tmp_path):
    result, responses = findscu(qr, tmp_path, *keys("QueryRetrieveLevel=PATIENT", "PatientName", "PatientID",
                                                    "NumberOfPatientRelatedStudies"), model="-P")
    assert result.returncode == 0, result.stderr
    names = {r.PatientID: str(r.PatientName) for r in responses}
    assert names == {"PID1": "DOE^JOHN", "PID2": "Müller^Jürgen", "PID3": "Yamada^Tarou=山田^太郎=やまだ^たろう",
                     "PID4": "SMITH^JANE", "PID9": "BULK^PATIENT"}
    assert {r.PatientID: r.NumberOfPatientRelatedStudies for r in responses}["PID4"] == 2
    charsets = {r.PatientID: r.get("SpecificCharacterSet") for r in responses}
    assert charsets["PID3"] == "ISO_IR 192" and charsets["PID2"] == "ISO_IR 192" and charsets["PID1"] is None
    for r in responses:
        assert {e.keyword for e in r} - {"SpecificCharacterSet"} == {
            "QueryRetrieveLevel", "RetrieveAETitle", "PatientName", "PatientID", "NumberOfPatientRelatedStudies"}
        assert r.RetrieveAETitle == "DIMSEKIT"
    assert "Received Final Find Response (Success)" in result.stdout + result.stderr


def test_findscu_study_level_wildcards_date_ranges_and_empty_return_keys(qr, tmp_path):
    cases = [
        (("PatientName=SMITH*",), {"S4", "S5"}),
        (("PatientName=*", "StudyDate=20240101-"), {"S1", "S2", "S4"}),
        (("StudyDate=-20221231",), {"S5", "S9"}),
        (("StudyDate=20231231-20240105", "StudyTime=1000-2359"), {"S1", "S3"}),
        (("PatientName=d?e^*",), {"S1"}),
        (("ModalitiesInStudy=MR",), {"S1", "S3", "S5"}),
        (("AccessionNumber=ACC[1]",), set()),
    ]
    for n, (matching, expected) in enumerate(cases):
        out = tmp_path / str(n)
        result, responses = findscu(qr, out, *keys("QueryRetrieveLevel=STUDY", "StudyID", "StudyDescription",
                                                   "ModalitiesInStudy", "NumberOfStudyRelatedInstances", *matching))
        assert result.returncode == 0, result.stderr
        assert {r.StudyID for r in responses} == expected, matching
        for r in responses:
            assert "StudyDescription" in r and "ModalitiesInStudy" in r  # empty return keys come back filled
    # an empty return key of a study that has a value for it
    _, (s3,) = findscu(qr, tmp_path / "s3", *keys("QueryRetrieveLevel=STUDY", "StudyID=S3", "StudyDescription",
                                                  "PatientName"))
    assert s3.StudyDescription == "頭部 MRI" and s3.SpecificCharacterSet == "ISO_IR 192"


def test_findscu_with_a_latin1_query(qr, tmp_path):
    # the key's bytes on findscu's command line are Latin-1, as the character set says
    result, responses = findscu(qr, tmp_path, *keys("QueryRetrieveLevel=STUDY", "SpecificCharacterSet=ISO_IR 100",
                                                    "StudyID", "StudyDescription"),
                                "-k", "PatientName=m\u00fcller*".encode("latin-1"))  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    (match,) = responses
    assert (match.StudyID, match.SpecificCharacterSet, str(match.PatientName)) == ("S2", "ISO_IR 100", "Müller^Jürgen")
    assert match.StudyDescription == "Knöchel"


def test_findscu_series_and_image_levels(qr, tmp_path):
    result, responses = findscu(qr, tmp_path / "series", *keys(
        "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study_uid('1')}", "SeriesInstanceUID", "Modality",
        "SeriesNumber", "NumberOfSeriesRelatedInstances"))
    assert result.returncode == 0, result.stderr
    assert sorted((r.Modality, r.NumberOfSeriesRelatedInstances) for r in responses) == [("CT", 3), ("MR", 1)]
    result, responses = findscu(qr, tmp_path / "image", *keys(
        "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid('1')}", f"SeriesInstanceUID={series_uid('1.1')}",
        "SOPInstanceUID", "InstanceNumber=2", "SOPClassUID"))
    assert result.returncode == 0, result.stderr
    assert [r.SOPInstanceUID for r in responses] == [instance_uid("1.1", 2)]
    result, responses = findscu(qr, tmp_path / "patient-root-image", *keys(
        "QueryRetrieveLevel=IMAGE", "PatientID=PID9", f"StudyInstanceUID={BULK_STUDY}",
        f"SeriesInstanceUID={BULK_SERIES}", "SOPInstanceUID"), model="-P")
    assert len(responses) == BULK


def test_findscu_identifier_errors_are_a900(qr, tmp_path):
    result, responses = findscu(qr, tmp_path, *keys("QueryRetrieveLevel=STUDY", "SeriesInstanceUID",
                                                    "PatientName=*"))
    output = result.stdout + result.stderr
    assert responses == []
    assert "Received Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in output, output
    qr.node.assert_healthy()


def test_findscu_cancel_ends_a_long_stream(qr, tmp_path):
    result, responses = findscu(qr, tmp_path, "--cancel", "2", *keys(
        "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={BULK_STUDY}", f"SeriesInstanceUID={BULK_SERIES}",
        "SOPInstanceUID"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Sending Cancel Request" in output
    assert "Received Final Find Response (Cancel" in output, output
    pending = len(re.findall(r"Find Response:? \d+ \(Pending\)", output))
    assert 2 <= pending < BULK // 2, output
    qr.node.assert_healthy()


def test_movescu_to_a_dcmtk_storescp_destination(qr, tmp_path):
    received = tmp_path / "received"
    received.mkdir()
    storescp = subprocess.Popen(
        [dcmtk("storescp"), "-aet", "STORESCP", "-od", str(received), str(qr.storescp_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(qr.storescp_port, 10, storescp)
        result = run([dcmtk("movescu"), "-v", "-S", "-aec", "DIMSEKIT", "-aem", "STORESCP",
                      *keys("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid('1')}\\{study_uid('3')}"),
                      "127.0.0.1", str(qr.port)])
    finally:
        stop(storescp)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received Final Move Response (Success)" in output, output
    files = [dcmread(path) for path in received.iterdir()]
    assert sorted(ds.SOPInstanceUID for ds in files) == sorted(
        [instance_uid("1.1", n) for n in (1, 2, 3)] + [instance_uid("1.2", 1)]
        + [instance_uid("3.1", n) for n in (1, 2)])
    yamada = [ds for ds in files if ds.PatientID == "PID3"]
    assert str(yamada[0].PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"


def test_movescu_to_an_unknown_destination_is_refused_a801(qr, tmp_path):
    result = run([dcmtk("movescu"), "-v", "-S", "-aec", "DIMSEKIT", "-aem", "NOWHERE",
                  *keys("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid('1')}"),
                  "127.0.0.1", str(qr.port)])
    output = result.stdout + result.stderr
    assert "Received Final Move Response (Refused: MoveDestinationUnknown)" in output, output
    qr.node.assert_healthy()


def test_getscu_retrieves_into_a_folder(qr, tmp_path):
    result = run([dcmtk("getscu"), "-v", "-S", "-aec", "DIMSEKIT", "-od", str(tmp_path),
                  *keys("QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study_uid('4')}",
                        f"SeriesInstanceUID={series_uid('4.1')}\\{series_uid('4.2')}"),
                  "127.0.0.1", str(qr.port)])
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Received C-GET Response (Success)" in output, output
    assert "Number of Completed Suboperations : 3" in output, output
    files = [dcmread(path) for path in tmp_path.iterdir()]
    assert sorted(ds.SOPInstanceUID for ds in files) == sorted(
        [instance_uid("4.1", 1), instance_uid("4.1", 2), instance_uid("4.2", 1)])
    assert {str(ds.PatientName) for ds in files} == {"SMITH^JANE"}


def test_findscu_sequence_keys_against_a_node_storing_them(node, tmp_path):
    # the sequence corpus of tests/plugins/test_qr_sequences.py, stored with DCMTK storescu
    from tests.plugins.test_qr_sequences import corpus as sequence_corpus

    folder = tmp_path / "seq"
    folder.mkdir()
    for n, ds in enumerate(sequence_corpus()):
        ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
    result = run([dcmtk("storescu"), "-aec", "DIMSEKIT", "+sd", "127.0.0.1", str(node.port), str(folder)])
    assert result.returncode == 0, result.stdout + result.stderr
    qr = QrNode(node, 0, tmp_path)
    # one item key matched (in the same item as the return key), the matching item returned
    result, responses = findscu(qr, tmp_path / "code", *keys(
        "QueryRetrieveLevel=STUDY", "StudyID", "ProcedureCodeSequence[0].CodeValue=24627-2",
        "ProcedureCodeSequence[0].CodeMeaning"))
    assert result.returncode == 0, result.stderr
    (match,) = responses
    assert match.StudyID == "S1"
    (code,) = match.ProcedureCodeSequence
    assert (code.CodeValue, code.CodeMeaning) == ("24627-2", "Chest CT")
    # a wild card in an item key, Patient Root, PATIENT level
    result, responses = findscu(qr, tmp_path / "ids", *keys(
        "QueryRetrieveLevel=PATIENT", "PatientID", "OtherPatientIDsSequence[0].PatientID=*-1?3",
        "OtherPatientIDsSequence[0].IssuerOfPatientID"), model="-P")
    assert result.returncode == 0, result.stderr
    (match,) = responses
    assert match.PatientID == "PID1"
    assert [(i.PatientID, i.IssuerOfPatientID) for i in match.OtherPatientIDsSequence] == [("NHS-123", "NHS")]
    # two items in a sequence key: A900
    result, responses = findscu(qr, tmp_path / "two", *keys(
        "QueryRetrieveLevel=SERIES", "RequestAttributesSequence[0].AccessionNumber=A",
        "RequestAttributesSequence[1].AccessionNumber=B"))
    assert responses == []
    assert "DataSetDoesNotMatchSOPClass" in result.stdout + result.stderr
    node.wait_log(r"refused \(A900\): RequestAttributesSequence: a sequence key holds one item")
    node.assert_healthy()


def test_getscu_of_an_instance_stored_big_endian_gets_its_pixels_byte_swapped(node, tmp_path):
    # storescu -R -xb sends a file in Explicit VR Big Endian as it is: the node
    # stores it so.  getscu's storage contexts get Explicit VR Little Endian
    # (the node's first choice), so the node re-encodes the data set: each OW
    # word of Pixel Data must change byte order with it (PS3.5 7.3), not only
    # the numbers pydicom decoded.
    ds = next(iter(corpus_datasets()))
    ds.Rows, ds.Columns = 4, 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    pixels = bytes(range(32))  # words 0x0100, 0x0302, ...: a missed swap shows
    ds.PixelData = pixels
    ds["PixelData"].VR = "OW"
    little = tmp_path / "le.dcm"
    ds.save_as(little, enforce_file_format=True)
    big = tmp_path / "be.dcm"
    result = run([dcmtk("dcmconv"), "+tb", str(little), str(big)])
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([dcmtk("storescu"), "-R", "-xb", "-aec", "DIMSEKIT", "127.0.0.1", str(node.port), str(big)])
    assert result.returncode == 0, result.stdout + result.stderr
    (stored,) = (node.workdir / "dimsekit-data").rglob(f"{ds.SOPInstanceUID}.dcm")
    assert dcmread(stored).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"

    out = tmp_path / "got"
    out.mkdir()
    result = run([dcmtk("getscu"), "-v", "-S", "-aec", "DIMSEKIT", "-od", str(out),
                  *keys("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={ds.StudyInstanceUID}"),
                  "127.0.0.1", str(node.port)])
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Received C-GET Response (Success)" in output, output
    (received,) = (dcmread(path) for path in out.iterdir())
    assert received.file_meta.TransferSyntaxUID == EXPLICIT
    assert received.SOPInstanceUID == ds.SOPInstanceUID and received.Rows == 4
    assert received.PixelData == pixels
    node.assert_healthy()
