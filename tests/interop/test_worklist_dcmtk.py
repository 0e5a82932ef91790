"""DCMTK findscu -W (Modality Worklist) against a dimsekit node: items added
and removed with ``dimsekit worklist`` while the node runs, and a
wlmscpfs-style folder of *.wl files written with pydicom, changed and
removed between queries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from tests.interop.conftest import DIMSEKIT_CLI, dcmtk, run, start_node

pytestmark = pytest.mark.interop

WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
ROOT = "1.2.826.0.1.3680043.8.498.5531"


def wl_item(name: str, pid: str, modality: str, date: str, time: str, station: str = "SCANNER1") -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName, ds.PatientID = name, pid
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.AccessionNumber = f"ACC-{pid}"
    ds.RequestedProcedureID = f"RP-{pid}"
    ds.RequestedProcedureDescription = f"{modality} procedure"
    ds.StudyInstanceUID = f"{ROOT}.{sum(map(ord, pid))}"
    step = Dataset()
    step.Modality = modality
    step.ScheduledStationAETitle = station
    step.ScheduledProcedureStepStartDate = date
    step.ScheduledProcedureStepStartTime = time
    step.ScheduledProcedureStepID = f"SPS-{pid}"
    step.ScheduledProcedureStepDescription = f"{modality} step"
    step.ScheduledPerformingPhysicianName = "House^Gregory"
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def save(ds: Dataset, path: Path) -> Path:
    ds = Dataset(ds)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = WORKLIST_FIND
    ds.file_meta.MediaStorageSOPInstanceUID = f"{ROOT}.9.{abs(hash(path.name)) % 10**8}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def worklist_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return run([*DIMSEKIT_CLI, "worklist", *args, "--config", str(config)], timeout=60)


def findscu(port: int, query: Path, out: Path, *keys: str) -> list[Dataset]:
    """findscu -W with a query file (and -k overrides); the responses as data sets."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    args = [x for k in keys for x in ("-k", k)]
    done = run([dcmtk("findscu"), "-W", "-aet", "MODALITY", "-aec", "DIMSEKIT", "-X", "-od", str(out), *args,
                "127.0.0.1", str(port), str(query)], timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def query_file(path: Path, **step_keys: str) -> Path:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.AccessionNumber = ""
    ds.StudyInstanceUID = ""
    step = Dataset()
    for keyword in ("Modality", "ScheduledStationAETitle", "ScheduledProcedureStepStartDate",
                    "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID"):
        setattr(step, keyword, step_keys.get(keyword, ""))
    ds.ScheduledProcedureStepSequence = [step]
    return save(ds, path)


def ids(responses: list[Dataset]) -> list[str]:
    return sorted(r.PatientID for r in responses)


def test_findscu_worklist_from_the_cli_and_a_folder(tmp_path):
    data, folder = tmp_path / "data", tmp_path / "wl"
    config_text = f'[node]\ndata_dir = "{data}"\n\n[plugins.worklist]\nfolder = "{folder}"\n'
    config = tmp_path / "node.toml"
    config.write_text(config_text)
    node = start_node(tmp_path, config=config_text)
    try:
        files = {
            "muller": save(wl_item("Müller^Hans", "W1", "CT", "20240105", "090000"), tmp_path / "w1.dcm"),
            "doe": tmp_path / "w2.json",
            "late": tmp_path / "w3.json",
        }
        files["doe"].write_text(wl_item("DOE^JOHN", "W2", "MR", "20240106", "103000", "MRI1").to_json())
        files["late"].write_text(wl_item("DOE^JANE", "W3", "CT", "20240301", "140000").to_json())
        done = worklist_cli(config, "add", str(files["muller"]), str(files["doe"]), str(files["late"]))
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("added ") == 3

        incomplete = wl_item("NO^STATION", "W9", "CT", "20240105", "090000")
        del incomplete.ScheduledProcedureStepSequence[0].ScheduledStationAETitle
        (tmp_path / "bad.json").write_text(incomplete.to_json())
        done = worklist_cli(config, "add", str(tmp_path / "bad.json"))
        assert done.returncode == 1 and "ScheduledStationAETitle (0040,0001)" in done.stderr

        save(wl_item("FOLDER^ONE", "F1", "CT", "20240110", "080000"), folder / "DIMSEKIT" / "f1.wl")
        save(wl_item("FOLDER^TOP", "F2", "US", "20240111", "080000"), folder / "f2.wl")
        save(wl_item("OTHER^AE", "F3", "CT", "20240110", "080000"), folder / "OTHERAE" / "f3.wl")

        out = tmp_path / "rsp"
        every = findscu(node.port, query_file(tmp_path / "q-all.dcm"), out)
        assert ids(every) == ["F1", "F2", "W1", "W2", "W3"]  # not the other AE's folder
        january_ct = findscu(node.port, query_file(tmp_path / "q-ct.dcm", Modality="CT",
                                                    ScheduledProcedureStepStartDate="20240101-20240131"), out)
        assert ids(january_ct) == ["F1", "W1"]
        response = next(r for r in january_ct if r.PatientID == "W1")
        step = response.ScheduledProcedureStepSequence[0]
        assert (step.ScheduledStationAETitle, step.ScheduledProcedureStepStartTime) == ("SCANNER1", "090000")
        assert "RequestedProcedureDescription" not in response  # only the keys asked for
        assert response.SpecificCharacterSet == "ISO_IR 192"
        assert str(response.PatientName) == "Müller^Hans"

        # a non-ASCII name, matched case-insensitively, through findscu -k
        by_name = findscu(node.port, query_file(tmp_path / "q-name.dcm"), out,
                          "0008,0005=ISO_IR 192", "0010,0010=müller*")
        assert ids(by_name) == ["W1"]
        by_station = findscu(node.port, query_file(tmp_path / "q-ae.dcm"), out,
                             "(0040,0100)[0].(0040,0001)=MRI*", "(0040,0100)[0].(0040,0003)=1000-1100")
        assert ids(by_station) == ["W2"]

        # changes while the node runs: removal through the CLI, a .wl file rewritten and one deleted
        listing = worklist_cli(config, "list")
        assert listing.returncode == 0 and "DOE^JANE" in listing.stdout
        line = next(line for line in listing.stdout.splitlines() if "DOE^JANE" in line)
        assert worklist_cli(config, "remove", line.split()[0]).returncode == 0
        rewritten = save(wl_item("FOLDER^ONE", "F1", "MR", "20240110", "080000"), folder / "DIMSEKIT" / "f1.wl")
        stamp = rewritten.stat().st_mtime_ns + 2_000_000_000
        os.utime(rewritten, ns=(stamp, stamp))
        (folder / "f2.wl").unlink()
        now = findscu(node.port, query_file(tmp_path / "q-all.dcm"), out)
        assert ids(now) == ["F1", "W1", "W2"]
        assert next(r for r in now if r.PatientID == "F1").ScheduledProcedureStepSequence[0].Modality == "MR"
        node.assert_healthy()
    finally:
        from tests.interop.conftest import _finish_node

        _finish_node(node)
