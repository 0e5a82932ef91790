"""dimsekit.framing: a data set cut short is told from a whole one.

The property: for a data set pydicom wrote (sequences of defined and undefined
length, nested; encapsulated pixel data; explicit and implicit VR), the whole
bytes get no verdict, and every cut gets one -- except a cut at a top-level
element's boundary (a shorter data set, whole as far as any reader can tell) or
in the first 8 bytes after it (a few bytes that are no header: no verdict).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence

from dimsekit.datasets import encode_dataset
from dimsekit.framing import EncapsulatedInNative, truncation

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"

_TEXT = st.text(alphabet="ABCDEFGHIJ0123456789^ ", max_size=20)


@st.composite
def datasets(draw, depth: int = 0) -> Dataset:
    ds = Dataset()
    if draw(st.booleans()):
        ds.PatientName = draw(_TEXT)
    if draw(st.booleans()):
        ds.PatientID = draw(_TEXT)
    if draw(st.booleans()):
        ds.Rows = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        ds.add_new(0x00091010, "LO", "PRIVATE")
        ds.add_new(0x00091011, "OB", draw(st.binary(max_size=40)))
    if depth < 3 and draw(st.booleans()):
        items = draw(st.lists(datasets(depth + 1), max_size=3))
        ds.ReferencedImageSequence = Sequence(items)
        ds["ReferencedImageSequence"].is_undefined_length = draw(st.booleans())
        for item in items:
            item.is_undefined_length_sequence_item = draw(st.booleans())
    if depth == 0:
        pixels = draw(st.sampled_from(["none", "native", "encapsulated"]))
        if pixels == "native":
            ds.add_new(0x7FE00010, "OW", draw(st.binary(min_size=2, max_size=300).filter(lambda b: len(b) % 2 == 0)))
        elif pixels == "encapsulated":
            frames = draw(st.lists(st.binary(min_size=2, max_size=60).filter(lambda b: len(b) % 2 == 0),
                                   min_size=1, max_size=3))
            ds.add_new(0x7FE00010, "OB", encapsulate(frames))
            ds["PixelData"].is_undefined_length = True
        if draw(st.booleans()):
            ds.add_new(0xFFFCFFFC, "OB", b"\0\0")  # Data Set Trailing Padding, after the pixel data
    return ds


def _boundaries(ds: Dataset, implicit: bool) -> list[int]:
    """Offsets of the top-level elements' starts, and the end, as pydicom writes them."""
    out, pos = [0], 0
    for element in ds:
        fp = DicomBytesIO()
        fp.is_implicit_VR, fp.is_little_endian = implicit, True
        write_data_element(fp, element)
        pos += len(fp.getvalue())
        out.append(pos)
    return out


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
@settings(max_examples=60)
@given(ds=datasets(), data=st.data())
def test_a_cut_is_told_from_a_whole_data_set(syntax, ds, data):
    implicit = syntax == IMPLICIT
    if implicit and "PixelData" in ds and ds["PixelData"].is_undefined_length:
        del ds.PixelData  # encapsulated pixel data is explicit VR only
    encoded = encode_dataset(ds, syntax)
    assert _boundaries(ds, implicit)[-1] == len(encoded)
    assert truncation(encoded, len(encoded), implicit=implicit) is None
    if not encoded:
        return
    cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
    said = truncation(encoded[:cut], cut, implicit=implicit)
    last = max(b for b in _boundaries(ds, implicit) if b <= cut)
    if cut == last or cut - last < 8 and not any(encoded[last:cut]):
        assert said is None  # a shorter data set, whole; or a few zero bytes after it
    else:
        assert said is not None


def test_a_header_cut_off_after_the_last_element_is_a_cut():
    data = b"\x10\x00\x10\x00PN\x04\x00DOE \x28\x00\x02\x01US"  # (0028,0102) US, its length gone
    assert truncation(data, len(data), implicit=False) == "an element's header at offset 12 is cut off (6 of 8 bytes)"


def test_pixel_data_cut_short_says_where():
    ds = Dataset()
    ds.PatientName = "DOE"
    ds.add_new(0x7FE00010, "OW", b"\1\2" * 500)
    encoded = encode_dataset(ds, EXPLICIT)
    said = truncation(encoded[:-100], len(encoded) - 100, implicit=False)
    assert said == "(7FE0,0010) at offset 12 has a value of 1000 bytes, 900 are left"


def test_an_undefined_length_sequence_without_its_delimiter():
    ds = Dataset()
    ds.ReferencedImageSequence = Sequence([Dataset()])
    ds["ReferencedImageSequence"].is_undefined_length = True
    encoded = encode_dataset(ds, EXPLICIT)
    said = truncation(encoded[:-8], len(encoded) - 8, implicit=False)
    assert said is not None and said.startswith("the sequence (0008,1140) has no end")


@pytest.mark.parametrize("data, implicit", [
    (b"\x10\x00\x10\x00ZZ\x04\x00DOE ", False),  # a VR the standard does not have
    (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", True),  # a stray delimiter
    (b"\x10\x00\x10\x00PN\x04\x00DOE \x00\x00", False),  # two zero bytes after the last element
    (b"\x10\x00\x10\x00PN\xff\xff", True),  # implicit VR read: a length of 0xFFFF4E50, past the end
])
def test_what_cannot_be_framed_gets_no_verdict_or_a_cut(data, implicit):
    said = truncation(data, len(data), implicit=implicit)
    if data.endswith(b"\xff\xff"):
        assert said is not None  # the value runs past the end
    else:
        assert said is None


@settings(max_examples=60)
@given(ds=datasets(), data=st.data())
def test_a_prefix_and_a_reader_for_the_rest_give_the_same_verdict(ds, data):
    encoded = encode_dataset(ds, EXPLICIT)
    cut = data.draw(st.integers(0, len(encoded)), label="cut")
    held = data.draw(st.integers(0, cut), label="held in memory")
    whole = truncation(encoded[:cut], cut, implicit=False)
    asked: list[tuple[int, int]] = []

    def read(offset: int, size: int) -> bytes:
        assert offset + size > held  # what is in memory is not read again
        asked.append((offset, size))
        return encoded[offset:min(offset + size, cut)]

    assert truncation(encoded[:held], cut, implicit=False, read=read) == whole


def test_the_check_reads_only_headers_through_its_reader():
    ds = Dataset()
    ds.PatientName = "DOE"
    ds.add_new(0x7FE00010, "OB", encapsulate([b"\0" * 50_000, b"\1" * 50_000]))
    ds["PixelData"].is_undefined_length = True
    encoded = encode_dataset(ds, EXPLICIT)
    asked: list[tuple[int, int]] = []

    def read(offset: int, size: int) -> bytes:
        asked.append((offset, size))
        return encoded[offset:offset + size]

    assert truncation(encoded[:200], len(encoded), implicit=False, read=read) is None
    assert sum(size for _, size in asked) <= 4 * 8  # item headers only, never the 100 KB of fragments
    assert truncation(encoded[:200], len(encoded) - 1, implicit=False, read=read) is not None


@pytest.mark.parametrize("declared, written", [(EXPLICIT, IMPLICIT), (IMPLICIT, EXPLICIT)])
def test_a_data_set_in_the_other_vr_encoding_is_walked_as_pydicom_reads_it(declared, written):
    # a sender whose data set is not in its context's transfer syntax: pydicom reads it in the
    # encoding its first element shows, and so does the check (a cut was missed, no verdict)
    ds = Dataset()
    ds.Modality = "CT"
    ds.ReferencedImageSequence = Sequence([Dataset()])  # the last element: cut, it has no end
    ds["ReferencedImageSequence"].is_undefined_length = True
    encoded = encode_dataset(ds, written)
    declared_implicit = declared == IMPLICIT
    assert truncation(encoded, len(encoded), implicit=declared_implicit) is None
    said = truncation(encoded[:-8], len(encoded) - 8, implicit=declared_implicit)
    assert said is not None and said.startswith("the sequence (0008,1140) has no end")


def test_an_undefined_length_sequence_whose_delimiter_is_missing_before_the_next_element():
    # (0008,1032) with one item, its Sequence Delimitation Item gone, then Patient's Name:
    # pydicom takes Patient's Name and what follows for items, and fails further on
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + b"\x08\x00\x00\x01SH\x02\x00XR" + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    data = b"\x08\x00\x32\x10SQ\x00\x00\xff\xff\xff\xff" + item + b"\x10\x00\x10\x00PN\x04\x00DOE "
    assert truncation(data, len(data), implicit=False) == (
        "the sequence (0008,1032) has no end: (0010,0010) at offset 38 stands where its next item or its "
        "Sequence Delimitation Item belongs")
    whole = data[:38] + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" + data[38:]
    assert truncation(whole, len(whole), implicit=False) is None



# -- encapsulated Pixel Data under a native transfer syntax ---------------------------------


@settings(max_examples=80)
@given(ds=datasets(), cut=st.booleans())
def test_encapsulated_pixel_data_is_told_in_a_native_syntax_only(ds, cut):
    """With ``native``, a top-level Pixel Data of undefined length is refused wherever it stands,
    whole data set or cut short after it; anything else gets the verdict it gets without."""
    encoded = encode_dataset(ds, EXPLICIT)
    end = len(encoded) - 4 if cut and len(encoded) > 16 else len(encoded)
    data = encoded[:end]
    without = truncation(data, end, implicit=False)
    encapsulated = "PixelData" in ds and ds["PixelData"].is_undefined_length
    if encapsulated:
        with pytest.raises(EncapsulatedInNative) as caught:
            truncation(data, end, implicit=False, native=True)
        assert encoded[caught.value.offset:caught.value.offset + 4] == b"\xe0\x7f\x10\x00"
    else:
        assert truncation(data, end, implicit=False, native=True) == without


def _implicit_element(tag: int, value: bytes, length: int | None = None) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value) if length is None else length) + value


def test_encapsulated_pixel_data_in_implicit_vr():
    fragments = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0\x04\x00\x00\x00\xff\x4f\xff\x51" + \
        b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    data = _implicit_element(0x00100010, b"DOE ") + _implicit_element(0x7FE00010, fragments, 0xFFFFFFFF)
    assert truncation(data, len(data), implicit=True) is None  # framed: whole
    with pytest.raises(EncapsulatedInNative) as caught:
        truncation(data, len(data), implicit=True, native=True)
    assert caught.value.offset == 12
    assert "(7FE0,0010) at offset 12 is encapsulated" in str(caught.value)


def test_encapsulated_pixel_data_of_an_icon_in_a_sequence_is_not_told():
    """Only the top-level Pixel Data is checked: an item's (an Icon Image Sequence) is left alone."""
    fragments = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    item = b"\xfe\xff\x00\xe0" + struct.pack("<I", 8 + len(fragments)) + _implicit_element(
        0x7FE00010, fragments, 0xFFFFFFFF)
    data = _implicit_element(0x00880200, item)
    assert truncation(data, len(data), implicit=True, native=True) is None
