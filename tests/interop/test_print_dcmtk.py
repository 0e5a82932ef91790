"""``dimsekit print`` against DCMTK's Basic Grayscale Print Management SCP,
``dcmprscp``, configured with a dcmpstat configuration file written here
(a LOCALPRINTER entry; DCMTK keeps what it receives in its database
directory).  Checked: what DCMTK stored -- a Stored Print object with our
layout, orientation, film size and originator, and one Hardcopy Grayscale
Image per image box holding exactly the pixels we sent (8 and 12 bits)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dimsekit.cli.print import grayscale_image
from tests.interop.conftest import DIMSEKIT_CLI, dcmtk, free_port, run, stop, wait_for_port

pytestmark = pytest.mark.interop

HARDCOPY_GRAYSCALE = "1.2.840.10008.5.1.1.29"
STORED_PRINT = "1.2.840.10008.5.1.1.27"

DCMPSTAT_CFG = """\
[[GENERAL]]
[DATABASE]
Directory = {db}
[PRINT]
Directory = {spool}
DetailedLog = false
BinaryLog = false
[[COMMUNICATION]]
[PRINTSCP]
Aetitle = PRINTSCP
Description = dcmprscp for dimsekit tests
Hostname = localhost
Port = {port}
Type = LOCALPRINTER
DisplayFormat = 1,1\\1,2\\2,1\\2,2\\3,2
FilmSizeID = 8INX10IN\\14INX17IN
MediumType = PAPER\\BLUE FILM
MagnificationType = REPLICATE\\BILINEAR\\CUBIC\\NONE
MaxDensity = 320
MinDensity = 20
Supports12Bit = true
SupportsPresentationLUT = false
ImplicitOnly = false
DisableNewVRs = false
MaxPDU = 32768
"""


def synthetic(path: Path, rows: int, columns: int, seed: int) -> Path:
    """A CT image with a gradient and noise, stored as a Part 10 file."""
    rng = numpy.random.default_rng(seed)
    pixels = (numpy.add.outer(numpy.arange(rows), numpy.arange(columns)) * 7 + rng.integers(0, 50, (rows, columns)))
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = str(generate_uid())
    ds.Modality = "CT"
    ds.PatientID = "PRINT-1"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("bits", [8, 12])
def test_dimsekit_print_against_dcmprscp(tmp_path: Path, bits: int):
    port = free_port()
    db, spool = tmp_path / "db", tmp_path / "spool"
    db.mkdir()
    spool.mkdir()
    config = tmp_path / "dcmpstat.cfg"
    config.write_text(DCMPSTAT_CFG.format(db=db, spool=spool, port=port))
    log = (tmp_path / "dcmprscp.log").open("wb")
    scp = subprocess.Popen([dcmtk("dcmprscp"), "-c", str(config), "-p", "PRINTSCP"], cwd=tmp_path,
                           stdout=log, stderr=subprocess.STDOUT)
    log.close()
    files = [synthetic(tmp_path / "a.dcm", 24, 32, 1), synthetic(tmp_path / "b.dcm", 40, 20, 2),
             synthetic(tmp_path / "c.dcm", 16, 16, 3)]
    try:
        wait_for_port(port, 10.0, scp)
        result = run([*DIMSEKIT_CLI, "print", "127.0.0.1", str(port), "-aec", "PRINTSCP", "-aet", "DIMSEKITPRN",
                      "--format", "STANDARD\\2,2", "--orientation", "LANDSCAPE", "--film-size", "14INX17IN",
                      "--bits", str(bits), *map(str, files)], timeout=60)
    finally:
        stop(scp)
    output = result.stdout + result.stderr + (tmp_path / "dcmprscp.log").read_text(errors="replace")
    assert result.returncode == 0, output
    assert "Printer PRINTSCP: NORMAL" in result.stdout
    assert "N-ACTION Print Film Box 1: 0x0000 Success" in result.stdout
    assert "N-DELETE Film Session: 0x0000 Success" in result.stdout
    stored = [dcmread(p) for p in sorted(db.glob("*.dcm"))]
    prints = [ds for ds in stored if ds.SOPClassUID == STORED_PRINT]
    images = {ds.SOPInstanceUID: ds for ds in stored if ds.SOPClassUID == HARDCOPY_GRAYSCALE}
    assert len(prints) == 1 and len(images) == 3, output
    (stored_print,) = prints
    film = stored_print.FilmBoxContentSequence[0]
    assert (film.ImageDisplayFormat, film.FilmOrientation, film.FilmSizeID) == ("STANDARD\\2,2", "LANDSCAPE", "14INX17IN")
    assert stored_print.PrinterCharacteristicsSequence[0].Originator == "DIMSEKITPRN"
    boxes = {int(b.ImageBoxPosition): b for b in stored_print.ImageBoxContentSequence}
    assert sorted(boxes) == [1, 2, 3]
    for position, path in enumerate(files, 1):
        sent = grayscale_image(path, bits)
        received = images[boxes[position].ReferencedImageSequence[0].ReferencedSOPInstanceUID]
        assert (received.Rows, received.Columns) == (sent.Rows, sent.Columns)
        assert received.BitsStored == bits
        dtype = "u1" if bits == 8 else "<u2"
        expected = numpy.frombuffer(sent.PixelData, dtype=dtype).reshape(sent.Rows, sent.Columns)
        assert numpy.array_equal(received.pixel_array, expected), position


# -- DCMTK's print SCU against the dimsekit print SCP ----------------------------------------------------


PRINTER_CFG = """\
[[GENERAL]]
[DATABASE]
Directory = {db}
[PRINT]
Spooler = /usr/bin/dcmprscu
Directory = {spool}
DetailedLog = false
BinaryLog = false
DeletePrintJobs = false
[[COMMUNICATION]]
[DIMSEKIT]
Aetitle = DIMSEKIT
Description = the dimsekit node under test
Hostname = 127.0.0.1
Port = {port}
Type = PRINTER
DisplayFormat = 1,1\\2,1\\2,2
FilmSizeID = 8INX10IN\\14INX17IN
MediumType = PAPER
MagnificationType = REPLICATE\\BILINEAR\\CUBIC\\NONE
Supports12Bit = true
SupportsPresentationLUT = false
ImplicitOnly = false
DisableNewVRs = false
MaxPDU = 32768
"""


def two_tone(path: Path, low: int, high: int) -> Path:
    """A 64x64 CT image: left half ``low``, right half ``high`` (window over both)."""
    pixels = numpy.full((64, 64), low, dtype="<u2")
    pixels[:, 32:] = high
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = str(generate_uid())
    ds.StudyInstanceUID = str(generate_uid())
    ds.SeriesInstanceUID = str(generate_uid())
    ds.Modality = "CT"
    ds.PatientID = "PRINT-2"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dcmtk_print_scu_against_the_node(tmp_path: Path):
    from PIL import Image

    from tests.interop.conftest import _finish_node, start_node

    data = tmp_path / "data"
    node = start_node(tmp_path, "--data-dir", str(data), config="[plugins.printing]\ndpi = 25\n")
    try:
        db, spool = tmp_path / "db", tmp_path / "spool"
        db.mkdir()
        spool.mkdir()
        config = tmp_path / "dcmpstat.cfg"
        config.write_text(PRINTER_CFG.format(db=db, spool=spool, port=node.port))
        images = [two_tone(tmp_path / "a.dcm", 0, 4095), two_tone(tmp_path / "b.dcm", 4095, 1024)]
        # dcmpsprt renders the job (a Stored Print and Hardcopy Grayscale Images), dcmprscu prints it
        made = run([dcmtk("dcmpsprt"), "-c", str(config), "-p", "DIMSEKIT", "--landscape", "--layout", "2", "1",
                    *map(str, images)], timeout=60)
        assert made.returncode == 0, made.stdout + made.stderr
        (stored_print,) = db.glob("SP_*.dcm")
        sent = run([dcmtk("dcmprscu"), "-c", str(config), "-p", "DIMSEKIT", str(stored_print)], timeout=60)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        line = node.wait_log(r"print: Film Box .* printed to .* for DCMPSTAT")
        (png,) = (data / "prints").glob("*.png")
        assert png.name.split(".png")[0] in line
        with Image.open(png) as film:
            assert film.size == (250, 200)  # 10 x 8 inches (the default 8INX10IN, landscape) at 25 dpi
            assert film.text["ImageDisplayFormat"] == "STANDARD\\2,1" and film.text["FilmOrientation"] == "LANDSCAPE"
            # box 1 is the left half of the film, box 2 the right; each image is dark|bright or bright|grey
            middle = film.height // 2
            samples = [film.getpixel((int(film.width * x), middle)) for x in (0.15, 0.35, 0.65, 0.85)]
        hardcopies = {}
        for path in db.glob("HG_*.dcm"):
            ds = dcmread(path)
            hardcopies[ds.SOPInstanceUID] = ds.pixel_array
        boxes = sorted(dcmread(stored_print).ImageBoxContentSequence, key=lambda b: int(b.ImageBoxPosition))
        expected = []
        for box in boxes:
            pixels = hardcopies[box.ReferencedImageSequence[0].ReferencedSOPInstanceUID]
            rows, columns = pixels.shape
            scale = 16 if pixels.max() > 255 else 1  # 12-bit hardcopies are printed at 8 bits
            expected += [int(pixels[rows // 2, columns // 4]) // scale, int(pixels[rows // 2, 3 * columns // 4]) // scale]
        assert samples == expected, (samples, expected)
        assert samples[0] < 64 < 192 < samples[1] and samples[2] > samples[3] > samples[0]
        node.assert_healthy()
    finally:
        _finish_node(node)
