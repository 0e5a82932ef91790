"""datasets.codec_of and dataset_defect: compressed pixel data whose first fragment is,
beyond doubt, of another codec than its transfer syntax says (CTN's send_image sends RLE
labelled JPEG 2000); bytes it cannot tell are left to the decoders."""

from __future__ import annotations

import glob
import os
import struct

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_fragments

from dimsekit.datasets import _CODEC_FAMILIES, codec_of, dataset_defect, encode_dataset
from dimsekit.framing import truncation

J2K = "1.2.840.10008.1.2.4.91"
RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
TEST_FILES = os.path.dirname(get_testdata_file("CT_small.dcm"))


def _first_fragments() -> list[tuple[str, str, bytes]]:
    """(file name, codec family of its transfer syntax, its first fragment) of pydicom's
    compressed test files."""
    out = []
    for path in sorted(glob.glob(os.path.join(TEST_FILES, "*.dcm"))):
        try:
            ds = dcmread(path)
            family = _CODEC_FAMILIES.get(str(ds.file_meta.TransferSyntaxUID))
            if family is None or "PixelData" not in ds:
                continue
            fragments = generate_fragments(ds.PixelData)
            next(fragments)  # the Basic Offset Table
            out.append((os.path.basename(path), family, next(fragments)))
        except Exception:  # a file pydicom keeps to show a broken one
            continue
    return out


FIRST_FRAGMENTS = _first_fragments()


def test_every_compressed_test_file_is_told_its_own_codec():
    assert len(FIRST_FRAGMENTS) >= 30
    assert {family for _name, family, _first in FIRST_FRAGMENTS} == {"JPEG", "JPEG 2000", "RLE"}
    wrong = [(name, family, codec_of(first[:64])) for name, family, first in FIRST_FRAGMENTS
             if codec_of(first[:64]) != family]
    assert wrong == []


def _rle_header(count: int, offsets: list[int]) -> bytes:
    return struct.pack("<16L", count, *offsets, *[0] * (15 - len(offsets)))


@pytest.mark.parametrize("head", [
    b"", b"\x00" * 64, bytes(range(64)), b"\xff\xd9" + b"\x00" * 62, b"\xff\x4f\xff\x52",
    _rle_header(0, []),  # no segment
    _rle_header(16, list(range(64, 64 + 15 * 10, 10))),  # more than 15
    _rle_header(2, [64, 64]),  # not in order
    _rle_header(2, [60, 100]),  # the first not after the header
    _rle_header(1, [64]) [:-4] + b"\x01\x00\x00\x00",  # an unused offset set
    _rle_header(3, [64, 100, 200])[:63],  # cut short
], ids=["empty", "zeros", "counting", "EOI", "not SIZ", "0 segments", "16 segments", "same offset",
        "offset 60", "unused offset", "63 bytes"])
def test_what_is_none_of_them(head):
    assert codec_of(head) is None


def test_rle_headers():
    assert codec_of(_rle_header(1, [64])) == "RLE"
    assert codec_of(_rle_header(3, [64, 1000, 2000]) + b"data") == "RLE"


def _data_set(name: str, transfer_syntax: str) -> bytes:
    """A pydicom test file's data set, its pixel data as it is, written for ``transfer_syntax``."""
    return encode_dataset(dcmread(get_testdata_file(name)), transfer_syntax)


def test_rle_labelled_jpeg_2000_is_a_defect():
    data = _data_set("SC_rgb_rle.dcm", J2K)
    said = dataset_defect(data, len(data), J2K)
    assert said is not None and said.startswith("RLE data in JPEG 2000 Image Compression: the first fragment of "
                                                 "its Pixel Data (at offset ")
    assert said.endswith(") is RLE, not JPEG 2000 (PS3.5 A.4)")
    assert dataset_defect(data, len(data), RLE) is None  # in its own syntax: whole and right


def test_jpeg_2000_labelled_jpeg_and_rle_are_defects():
    data = _data_set("JPEG2000.dcm", J2K)
    assert dataset_defect(data, len(data), J2K) is None
    assert "is JPEG 2000, not JPEG (PS3.5 A.4)" in dataset_defect(data, len(data), JPEG_BASELINE)
    assert "is JPEG 2000, not RLE (PS3.5 A.4)" in dataset_defect(data, len(data), RLE)


def test_the_first_fragment_read_past_the_prefix():
    data = _data_set("SC_rgb_rle.dcm", J2K)
    fragment: list = []
    assert truncation(data, len(data), implicit=False, fragment=fragment) is None
    ((offset, length),) = fragment
    assert data[offset:offset + 4] == struct.pack("<L", 3)  # three segments: R, G, B
    prefix = data[:offset + 10]  # the header's start in memory, the rest from "the file"
    said = dataset_defect(prefix, len(data), J2K, lambda at, size: data[at:at + size])
    assert said is not None and said.startswith("RLE data in JPEG 2000")


def test_unknown_bytes_are_left_to_the_decoders():
    ds = dcmread(get_testdata_file("JPEG2000.dcm"))
    ds.PixelData = encapsulate([b"\x00\x01" * 40])
    data = encode_dataset(ds, J2K)
    assert dataset_defect(data, len(data), J2K) is None
