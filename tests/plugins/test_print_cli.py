"""``dimsekit print`` without a peer: images turned into Preformatted Grayscale
Images (bits, windows, MONOCHROME1, color, frames), film formats, argument errors."""

from __future__ import annotations

from pathlib import Path

import numpy
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dimsekit.cli import _parser
from dimsekit.cli.print import grayscale_image


def write(path: Path, pixels: numpy.ndarray, **values) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = str(generate_uid())
    ds.Rows, ds.Columns = pixels.shape[:2]
    color = pixels.ndim == 3 and pixels.shape[-1] == 3
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = "RGB" if color else "MONOCHROME2"
    if color:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def pixels_of(item: Dataset) -> numpy.ndarray:
    dtype = "u1" if item.BitsAllocated == 8 else "<u2"
    return numpy.frombuffer(item.PixelData, dtype=dtype).reshape(item.Rows, item.Columns)


def test_16_bit_image_scaled_to_8_and_12_bits(tmp_path):
    path = write(tmp_path / "a.dcm", numpy.array([[100, 200], [300, 1100]], dtype="<u2"))
    eight = grayscale_image(path, 8)
    assert (eight.BitsAllocated, eight.BitsStored, eight.HighBit, eight.PixelRepresentation) == (8, 8, 7, 0)
    assert eight[0x7FE00010].VR == "OB"
    assert pixels_of(eight).tolist() == [[0, 26], [51, 255]]
    twelve = grayscale_image(path, 12)
    assert (twelve.BitsAllocated, twelve.BitsStored, twelve.HighBit) == (16, 12, 11)
    assert twelve[0x7FE00010].VR == "OW"
    assert pixels_of(twelve).tolist() == [[0, 410], [819, 4095]]
    assert eight.PhotometricInterpretation == "MONOCHROME2" and list(eight.PixelAspectRatio) == [1, 1]


def test_window_applies_before_scaling(tmp_path):
    pixels = numpy.array([[0, 45], [55, 1000]], dtype="<u2")
    item = grayscale_image(write(tmp_path / "w.dcm", pixels, WindowCenter=50, WindowWidth=20), 8)
    values = pixels_of(item)
    assert values[0, 0] == 0 and values[1, 1] == 255  # clipped by the window
    assert 0 < values[0, 1] < values[1, 0] <= 255


def test_monochrome1_kept_color_to_luminance_first_frame(tmp_path):
    mono1 = grayscale_image(write(tmp_path / "m.dcm", numpy.array([[0, 255]], dtype="u1"),
                                  PhotometricInterpretation="MONOCHROME1"))
    assert mono1.PhotometricInterpretation == "MONOCHROME1"
    rgb = numpy.zeros((1, 3, 3), dtype="u1")
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[0, 2] = (255, 255, 255)
    color = grayscale_image(write(tmp_path / "c.dcm", rgb))
    assert color.PhotometricInterpretation == "MONOCHROME2"
    red, green, white = pixels_of(color)[0]
    assert red < green < white == 255
    frames = numpy.stack([numpy.full((2, 2), 9, dtype="u1"), numpy.full((2, 2), 200, dtype="u1")])
    first = grayscale_image(write(tmp_path / "f.dcm", frames, NumberOfFrames=2))
    assert (first.Rows, first.Columns) == (2, 2)


def test_not_an_image(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(b"not dicom")
    with pytest.raises(ValueError, match="no image pydicom can decode"):
        grayscale_image(path)


def exit_status(*argv: str) -> int:
    """The tool's exit status for arguments refused before it connects (no reactor needed)."""
    args = _parser().parse_args(list(argv))
    outcome: list = []
    args.module.run(None, args).addBoth(outcome.append)
    assert outcome, "the tool went on to connect"
    return outcome[0]


def test_bad_arguments(tmp_path, capsys):
    path = write(tmp_path / "a.dcm", numpy.zeros((2, 2), dtype="u1"))
    assert exit_status("print", "127.0.0.1", "1", str(path), "--format", "SLIDE") == 2
    assert "--format 'SLIDE'" in capsys.readouterr().err
    assert exit_status("print", "127.0.0.1", "1", str(path), "--copies", "0") == 2
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"junk")
    assert exit_status("print", "127.0.0.1", "1", str(junk)) == 1
    assert "no image pydicom can decode" in capsys.readouterr().err
