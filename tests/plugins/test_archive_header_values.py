"""The index's header values: the raw fast path equals pydicom's conversion.

:func:`index.header_values` decodes raw elements itself where it can; the
reference is ``index.header_values(..., fast=False)``, which has pydicom
convert every value.  Data sets are encoded here element by element (raw
bytes, any padding, any character set), read back with pydicom's
``read_dataset`` in both VR encodings, and the two must agree on all of them.
"""

from __future__ import annotations

import io
import struct
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.filereader import read_dataset

from dimsekit_plugins.archive import index

PLAIN = [keyword for _, keyword in index._PLAIN_FIELDS]
CHARSETS = [None, b"ISO_IR 100", b"ISO_IR 192", b"ISO_IR 6", b"ISO_IR 101", b"ISO_IR 144",
            b"\\ISO 2022 IR 87", b"ISO 2022 IR 100", b"ISO_IR 100\\", b"", b"GB18030", b"ISO_IR 13"]
# bytes that matter to the decoders: padding, delimiters, ESC, high latin-1, UTF-8 sequences
ALPHABET = [b"A", b"z", b"0", b"7", b".", b"-", b"+", b" ", b"\\", b"\x00", b"^", b"=", b"\x1b",
            b"\xe9", b"\xc3\xa9", b"\xe4\xb8\xad", b"\xff", b"\x1b$B", b"1.2"]


def element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    if implicit:
        return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def encode(values: dict[str, bytes], implicit: bool) -> bytes:
    out = []
    for keyword, value in sorted(values.items(), key=lambda kv: tag_for_keyword(kv[0])):
        tag = int(tag_for_keyword(keyword))
        out.append(element(tag, dictionary_VR(tag), value, implicit))
    return b"".join(out)


def read(data: bytes, implicit: bool):
    return read_dataset(io.BytesIO(data), implicit, True)


def both(data: bytes, implicit: bool) -> tuple[dict, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return index.header_values(read(data, implicit)), index.header_values(read(data, implicit), fast=False)


value_bytes = st.lists(st.sampled_from(ALPHABET), max_size=12).map(b"".join)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.dictionaries(st.sampled_from(PLAIN), value_bytes, max_size=len(PLAIN)),
    charset=st.sampled_from(CHARSETS),
    implicit=st.booleans(),
)
def test_fast_path_equals_pydicom(values, charset, implicit):
    if charset is not None:
        values = {**values, "SpecificCharacterSet": charset}
    fast, reference = both(encode(values, implicit), implicit)
    assert fast == reference


@pytest.mark.parametrize("implicit", [False, True])
def test_typical_header_is_decoded_without_pydicom_conversion(implicit, monkeypatch):
    values = {
        "SpecificCharacterSet": b"ISO_IR 192",
        "SOPClassUID": b"1.2.840.10008.5.1.4.1.1.2",
        "SOPInstanceUID": b"1.2.3.4.5",
        "InstanceNumber": b" 12 ",
        "PatientName": "Müller^Jörg".encode(),
        "PatientID": b"PID-1",
        "StudyInstanceUID": b"1.2.3",
        "StudyDate": b"20261126",
        "StudyTime": b"101500.25",
        "AccessionNumber": b"ACC 1",
        "StudyDescription": b"Thorax \\ Abdomen ",
        "SeriesInstanceUID": b"1.2.3.4",
        "Modality": b"CT",
        "SeriesNumber": b"3",
    }
    data = encode(values, implicit)
    _, reference = both(data, implicit)

    converted = index._text

    def no_conversion(dataset, keyword):
        # pydicom's reader converts the Specific Character Set itself as it reads
        if keyword != "SpecificCharacterSet":
            raise AssertionError(f"{keyword} went through pydicom's conversion")
        return converted(dataset, keyword)

    monkeypatch.setattr(index, "_text", no_conversion)
    fast = index.header_values(read(data, implicit))
    assert fast == reference
    assert fast["patient_name"] == "Müller^Jörg"
    assert fast["instance_number"] == 12
    assert fast["study_description"] == "Thorax\\ Abdomen"  # trailing spaces go, leading stay
    assert fast["issuer_of_patient_id"] == ""


@pytest.mark.parametrize(
    ("keyword", "raw", "charset"),
    [
        ("PatientName", "Yamada^Tarou=山田^太郎".encode("iso2022_jp"), b"\\ISO 2022 IR 87"),
        ("PatientName", b"Doe^John=Doe^J", b"ISO_IR 100"),
        ("InstanceNumber", b"1.5", None),
        ("InstanceNumber", b"1\\2", None),
        ("StudyDescription", b"\xe9t\xe9", b"ISO_IR 192"),  # not UTF-8: pydicom's replacement rules
    ],
)
def test_values_the_fast_path_leaves_to_pydicom(keyword, raw, charset):
    values = {keyword: raw}
    if charset is not None:
        values["SpecificCharacterSet"] = charset
    for implicit in (False, True):
        fast, reference = both(encode(values, implicit), implicit)
        assert fast == reference


def test_converted_data_sets_use_pydicom_values():
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.SeriesNumber = 4
    ds.PatientID = ""
    values = index.header_values(ds)
    assert values["patient_name"] == "Doe^Jane"
    assert values["series_number"] == 4
    assert values["patient_id"] == ""
    assert values == index.header_values(ds, fast=False)
