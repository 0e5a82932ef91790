"""Compressed instances to DCMTK peers that accept only uncompressed data.

A twistd node holds a CT in JPEG Lossless (made by DCMTK's dcmcjpeg) and an MR in RLE
Lossless, and a JPEG Baseline (lossy) Secondary Capture, all stored by DCMTK's storescu as
they were; DCMTK's storescp (as shipped: uncompressed syntaxes only) is its C-MOVE
destination and ``dimsekit store``'s peer.  What arrives is checked with pydicom: the
uncompressed syntax, the SOP Instance UID kept, every pixel value of the original.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from tests.interop.conftest import (
    DIMSEKIT_CLI,
    _finish_node,
    dcmtk,
    free_port,
    run,
    start_node,
    stop,
    tiny_ct,
    wait_for_port,
)

pytestmark = pytest.mark.interop

UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def study_files(folder: Path) -> tuple[str, list[Path]]:
    """A study of three compressed instances (one lossy); its UID and files."""
    folder.mkdir()
    study = str(generate_uid())
    plain = folder / "ct-plain.dcm"
    ct = tiny_ct(study=study)
    ct.save_as(plain, enforce_file_format=True)
    jpeg_ll = folder / "ct-jpegll.dcm"
    made = run([dcmtk("dcmcjpeg"), str(plain), str(jpeg_ll)])  # +e1: JPEG Lossless SV1
    assert made.returncode == 0, made.stderr
    plain.unlink()
    files = [jpeg_ll]
    for name in ("MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
        ds = dcmread(get_testdata_file(name))
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        files.append(folder / name)
        ds.save_as(files[-1])
    assert [str(dcmread(f).file_meta.TransferSyntaxUID) for f in files] == [JPEG_LOSSLESS_SV1, RLE, JPEG_BASELINE]
    return study, files


def store_as_they_are(port: int, files: list[Path]) -> None:
    """DCMTK storescu sends each of study_files() to the node in its own syntax."""
    for path, propose in zip(files, ("-xs", "-xr", "-xy"), strict=True):
        stored = run([dcmtk("storescu"), propose, "-aec", "DIMSEKIT", "127.0.0.1", str(port), str(path)])
        assert stored.returncode == 0, stored.stdout + stored.stderr


def start_storescp(folder: Path) -> tuple[subprocess.Popen, int]:
    folder.mkdir()
    port = free_port()
    proc = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(folder), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_port(port, 10, proc)
    return proc, port


def check_decoded(received: Path, originals: list[Path]) -> None:
    """Each original arrived uncompressed, same SOP Instance UID, same pixel values."""
    got = {ds.SOPInstanceUID: ds for ds in map(dcmread, received.iterdir())}
    assert len(got) == len(originals), sorted(got)
    for path in originals:
        original = dcmread(path)
        ds = got[original.SOPInstanceUID]
        assert str(ds.file_meta.TransferSyntaxUID) in UNCOMPRESSED
        np.testing.assert_array_equal(ds.pixel_array, original.pixel_array)
        lossy = str(original.file_meta.TransferSyntaxUID) == JPEG_BASELINE
        assert ds.get("LossyImageCompression") == ("01" if lossy else original.get("LossyImageCompression"))


def movescu(port: int, study: str) -> str:
    result = run([dcmtk("movescu"), "-v", "-S", "-aec", "DIMSEKIT", "-aem", "STORESCP",
                  "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(port)])
    return result.stdout + result.stderr


def move_to_storescp(tmp_path: Path, study: str, files: list[Path], node_config: str = "") -> str:
    """A node (``node_config`` and DCMTK storescp as its destination) given ``files`` by storescu,
    asked by movescu to move ``study`` there; movescu's output.  The node is stopped after:
    exit status 0 and no traceback in its log, or the test fails."""
    storescp, scp_port = start_storescp(tmp_path / "received")
    config = f'{node_config}[[remote]]\nae_title = "STORESCP"\nhost = "127.0.0.1"\nport = {scp_port}\n'
    node = start_node(tmp_path, config=config)
    try:
        store_as_they_are(node.port, files)
        return movescu(node.port, study)
    finally:
        _finish_node(node)
        stop(storescp)


@pytest.mark.parametrize("policy", ["lossless", "lossy", "never"])
def test_movescu_to_a_storescp_that_takes_only_uncompressed(tmp_path, policy):
    study, files = study_files(tmp_path / "study")
    output = move_to_storescp(tmp_path, study, files, f'[node]\ndecompress = "{policy}"\n')
    held = [dcmread(p) for p in (tmp_path / "dimsekit-data").rglob("*.dcm")]
    assert sorted(str(ds.file_meta.TransferSyntaxUID) for ds in held) == sorted([JPEG_LOSSLESS_SV1, RLE, JPEG_BASELINE])
    expected = {"lossless": files[:2], "lossy": files, "never": []}[policy]
    check_decoded(tmp_path / "received", expected)
    final = {"lossless": "(Warning: SubOperationsCompleteOneOrMoreFailures)", "lossy": "(Success)",
             "never": "(Refused: OutOfResourcesSubOperations)"}[policy]
    assert f"Received Final Move Response {final}" in output, output
    log = (tmp_path / "twistd.log").read_text()
    assert "Traceback" not in log


@pytest.mark.parametrize("policy", ["lossless", "never"])
def test_dimsekit_store_to_a_storescp_that_takes_only_uncompressed(tmp_path, policy):
    _study, files = study_files(tmp_path / "study")
    storescp, port = start_storescp(tmp_path / "received")
    try:
        result = run([*DIMSEKIT_CLI, "store", "--decompress", policy, "-aec", "STORESCP", "127.0.0.1", str(port),
                      *map(str, files)])
    finally:
        stop(storescp)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # the lossy one fails either way
    assert "Stored 2 of 3" in output if policy == "lossless" else "Stored 0 of 3" in output, output
    if policy == "lossless":
        assert ", 2 decompressed for the peer\n" in output, output
        assert "SC_rgb_jpeg_dcmtk.dcm: " in output and "JPEG Baseline (Process 1) is lossy" in output, output
        check_decoded(tmp_path / "received", files[:2])
    else:
        assert not list((tmp_path / "received").iterdir())
        assert output.count("not decompressed: decompressing is off") == 3, output
        assert "decompressed for the peer" not in output


def test_getscu_proposing_only_uncompressed_gets_the_lossless_ones_decoded(tmp_path):
    study, files = study_files(tmp_path / "study")
    node = start_node(tmp_path)  # decompress = "lossless", the default
    received = tmp_path / "got"
    received.mkdir()
    try:
        store_as_they_are(node.port, files)
        result = run([dcmtk("getscu"), "-v", "-S", "-aec", "DIMSEKIT", "-od", str(received),
                      "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(node.port)])
    finally:
        _finish_node(node)
    output = result.stdout + result.stderr
    assert "Received Final C-GET Response (Warning" in output or "C-GET Response (Warning" in output, output
    check_decoded(received, files[:2])  # the lossy one is not decoded by default: that sub-operation failed


def test_a_damaged_compressed_instance_fails_its_sub_operation_with_a_line_and_the_rest_go(tmp_path):
    study, files = study_files(tmp_path / "study")
    damaged = dcmread(files[0])  # JPEG Lossless: its one fragment now holds no image
    damaged.PixelData = encapsulate([b"\xff\xd8" + b"\x00" * 200 + b"\xff\xd9"])
    damaged.save_as(files[0])
    output = move_to_storescp(tmp_path, study, files)
    assert "Received Final Move Response (Warning: SubOperationsCompleteOneOrMoreFailures)" in output, output
    check_decoded(tmp_path / "received", files[1:2])  # the RLE one; the lossy one is not decoded by default
    (line,) = [x for x in (tmp_path / "twistd.log").read_text().splitlines() if "cannot decompress the pixel data" in x]
    assert damaged.SOPInstanceUID in line and "libjpeg" in line, line
