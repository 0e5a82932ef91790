"""``dimsekit store / find / get / move`` against pynetdicom's own Query/Retrieve app, ``qrscp``.

One ``python -m pynetdicom qrscp`` (it needs sqlalchemy, in the test extra)
serves the module on 127.0.0.1 and a free port, configured by an INI file
written here: its AE title, port, instance folder and SQLite database (both
absolute paths: qrscp joins relative ones to its own package directory) and
one known move destination, ``CLIQR`` = the ``--store-port`` of ``dimsekit
move``.  It is filled with ``dimsekit store``; then the SCU tools run
against it and their output, files and counts are checked.

What this peer does that shapes the assertions (its behaviour, not ours):
qrscp keeps one row per *instance* and answers a C-FIND with one response
per matching instance, even at STUDY or PATIENT level, so a study of two
instances comes back twice; a C-MOVE or C-GET identifier may only hold the
unique key of its level (one value); a series-level query needs the Study
Instance UID (its hierarchy check): A900 otherwise.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from tests.interop.conftest import DIMSEKIT_CLI, free_port, run, start_pynetdicom_qrscp, stop
from tests.interop.test_cli_qr import make_corpus, received, study_uid

pytestmark = pytest.mark.interop

#: a fifth instance: study 4, a non-ASCII (UTF-8) patient name
UTF8_STUDY = study_uid(4)


@dataclass
class QrScpApp:
    port: int
    store_port: int
    corpus: dict[str, Dataset]
    proc: subprocess.Popen
    log: Path


def _utf8_instance(directory: Path) -> Dataset:
    ds = dcmread(get_testdata_file("MR_small.dcm", download=False))
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID, ds.StudyDate = "Müller^Jürgen", "P4", "20250101"
    ds.StudyInstanceUID = UTF8_STUDY
    ds.SeriesInstanceUID = f"{UTF8_STUDY}.1"
    ds.SOPInstanceUID = f"{UTF8_STUDY}.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(directory / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return ds


@pytest.fixture(scope="module")
def qrscp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QrScpApp]:
    base = tmp_path_factory.mktemp("qrscp")
    corpus_dir = base / "corpus"
    corpus = make_corpus(corpus_dir)
    extra = _utf8_instance(corpus_dir)
    corpus[extra.SOPInstanceUID] = extra
    port, store_port = free_port(), free_port()
    proc, log = start_pynetdicom_qrscp(base, port, extra=(
        "log_identifier: True\n"
        "\n"
        "[CLIQR]\n"
        "address: 127.0.0.1\n"
        f"port: {store_port}\n"
    ))
    try:
        done = run([*DIMSEKIT_CLI, "store", "127.0.0.1", str(port), "-aec", "QRSCP", "-aet", "CLIQR",
                    "-to", "10", str(corpus_dir)], timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr + log.read_text(errors="replace")
        assert "Stored 5 of 5 instances" in done.stdout, done.stdout
        yield QrScpApp(port, store_port, corpus, proc, log)
    finally:
        stop(proc)


def cli(command: str, app: QrScpApp, *args: str) -> subprocess.CompletedProcess:
    return run([*DIMSEKIT_CLI, command, "127.0.0.1", str(app.port), "-aec", "QRSCP", "-aet", "CLIQR", "-to", "10",
                *args], timeout=60)


def found(done: subprocess.CompletedProcess) -> list[Dataset]:
    assert done.returncode == 0, done.stdout + done.stderr
    return [Dataset.from_json(d) for d in json.loads(done.stdout)]


def test_find_study_level_matches_and_counts(qrscp):
    cases = [
        # (keys, study UIDs, responses: one per matching instance)
        (("-k", "PatientName=DOE*"), {study_uid(1), study_uid(2)}, 3),
        (("-k", "PatientName=DOE^JOHN"), {study_uid(1)}, 2),
        (("-k", "StudyDate=20240101-20241231"), {study_uid(1), study_uid(2)}, 3),
        (("-k", "StudyDate=-20231231"), {study_uid(3)}, 1),
        (("-k", "AccessionNumber=ACC3"), {study_uid(3)}, 1),
        (("-k", "PatientID=NOBODY"), set(), 0),
        (("-k", "PatientName=Mü*"), {UTF8_STUDY}, 1),  # non-ASCII: the CLI says ISO_IR 192
    ]
    for keys, studies, responses in cases:
        matches = found(cli("find", qrscp, *keys, "-k", "StudyInstanceUID", "--json"))
        assert {m.StudyInstanceUID for m in matches} == studies, keys
        assert len(matches) == responses, keys
        assert all(m.QueryRetrieveLevel == "STUDY" and m.RetrieveAETitle == "QRSCP" for m in matches), keys
    (match,) = found(cli("find", qrscp, "-k", "PatientName=Müller^J?rgen", "-k", "StudyInstanceUID", "--json"))
    assert (str(match.PatientName), match.StudyInstanceUID) == ("Müller^Jürgen", UTF8_STUDY)


def test_find_table_patient_series_and_image_levels_and_dicom_files(qrscp, tmp_path):
    done = cli("find", qrscp, "-k", "PatientName=ROE*")
    assert done.returncode == 0, done.stderr
    header, rule, row = done.stdout.splitlines()
    assert header.split()[:2] == ["PatientName", "PatientID"] and "ROE^RICHARD" in row
    assert "1 match (0x0000" in done.stderr

    patients = found(cli("find", qrscp, "-P", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID",
                         "-k", "PatientName", "--json"))
    assert sorted({m.PatientID for m in patients}) == ["P1", "P2", "P3", "P4"]
    assert len(patients) == 5

    out = tmp_path / "rsp"
    done = cli("find", qrscp, "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid(1)}",
               "-k", "SeriesInstanceUID", "-k", "Modality", "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    files = sorted(out.glob("rsp*.dcm"))
    assert [f.name for f in files] == ["rsp0001.dcm", "rsp0002.dcm"]
    for path in files:
        ds = dcmread(path)
        assert (ds.SeriesInstanceUID, ds.Modality) == (f"{study_uid(1)}.1", "CT")

    images = found(cli("find", qrscp, "-P", "-k", "QueryRetrieveLevel=IMAGE", "-k", "PatientID=P1",
                       "-k", f"StudyInstanceUID={study_uid(1)}", "-k", f"SeriesInstanceUID={study_uid(1)}.1",
                       "-k", "SOPInstanceUID", "-k", "InstanceNumber", "--json"))
    assert sorted(m.SOPInstanceUID for m in images) == [f"{study_uid(1)}.1.1", f"{study_uid(1)}.1.2"]


def test_find_refused_identifier_is_a_failure_exit(qrscp):
    # a series-level query without the study's unique key: qrscp's hierarchy check says A900
    done = cli("find", qrscp, "-k", "QueryRetrieveLevel=SERIES", "-k", "SeriesInstanceUID")
    assert done.returncode == 1
    assert "0xA900" in done.stderr and "after 0 matches" in done.stderr, done.stderr
    assert done.stdout.strip() == ""


def test_get_writes_the_instances_and_counts(qrscp, tmp_path):
    out = tmp_path / "got"
    done = cli("get", qrscp, "-k", f"StudyInstanceUID={study_uid(1)}", "--out-dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 completed, 0 failed, 0 warning" in done.stdout and "2 files" in done.stdout
    got = received(out)
    assert sorted(got) == [f"{study_uid(1)}.1.1", f"{study_uid(1)}.1.2"]
    for uid, ds in got.items():
        assert ds.PixelData == qrscp.corpus[uid].PixelData
        assert ds.file_meta.MediaStorageSOPInstanceUID == uid

    done = cli("get", qrscp, "-k", f"StudyInstanceUID={UTF8_STUDY}", "--out-dir", str(tmp_path / "utf8"))
    assert done.returncode == 0, done.stdout + done.stderr
    (ds,) = received(tmp_path / "utf8").values()
    assert str(ds.PatientName) == "Müller^Jürgen"

    done = cli("get", qrscp, "-k", f"StudyInstanceUID={study_uid(999)}", "--out-dir", str(tmp_path / "none"))
    assert done.returncode == 0, done.stderr
    assert "0 completed, 0 failed" in done.stdout
    assert received(tmp_path / "none") == {}


def test_move_to_ourselves_and_to_an_unknown_destination(qrscp, tmp_path):
    out = tmp_path / "moved"
    done = cli("move", qrscp, "-k", f"StudyInstanceUID={study_uid(2)}", "--store-port", str(qrscp.store_port),
               "--out-dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 completed, 0 failed, 0 warning" in done.stdout
    moved = received(out)
    assert list(moved) == [f"{study_uid(2)}.1.1"]
    assert moved[f"{study_uid(2)}.1.1"].PixelData == qrscp.corpus[f"{study_uid(2)}.1.1"].PixelData

    out = tmp_path / "series"
    done = cli("move", qrscp, "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study_uid(1)}",
               "-k", f"SeriesInstanceUID={study_uid(1)}.1", "--store-port", str(qrscp.store_port),
               "--out-dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 completed, 0 failed" in done.stdout
    assert sorted(received(out)) == [f"{study_uid(1)}.1.1", f"{study_uid(1)}.1.2"]

    done = cli("move", qrscp, "--dest", "NOWHERE", "-k", f"StudyInstanceUID={study_uid(2)}")
    assert done.returncode == 1
    assert "0xA801" in done.stderr and "Move Destination unknown" in done.stderr
    assert qrscp.proc.poll() is None, qrscp.log.read_text(errors="replace")
