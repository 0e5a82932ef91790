"""datasets._encode_flat: a flat data set of string VRs written without pydicom's writer,
byte for byte as pydicom writes it; anything else left to pydicom.

The property test builds data sets element by element -- dictionary tags of each
string VR, values of every shape (empty, multi-valued, person names with their
groups, numbers as IS/DS, non-ASCII text) under several Specific Character Sets --
and compares with pydicom's ``write_dataset`` whenever the fast path answers.
"""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from dimsekit.datasets import _encode_flat, encode_dataset

IMPLICIT, EXPLICIT, DEFLATED, BIG = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"
STRING_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT")
#: some dictionary tags of each string VR (group 0008 and up, no group length)
TAGS = {vr: sorted(tag for tag, entry in DicomDictionary.items()
                   if entry[0] == vr and tag >> 16 >= 8 and tag & 0xFFFF and tag != 0x00080005)[:40]
        for vr in STRING_VRS}
CHARSETS = (None, "ISO_IR 6", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "GB18030", "")


def pydicom_bytes(dataset: Dataset, implicit: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = True
    write_dataset(fp, dataset)
    return fp.getvalue()


ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="\\"), max_size=20)
any_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\\"), max_size=12)
texts = st.one_of(ascii_text, ascii_text, any_text)


def values_for(vr: str) -> st.SearchStrategy:
    if vr in ("IS", "DS"):
        number = st.integers(-(2**31), 2**31 - 1) if vr == "IS" else st.floats(-1e6, 1e6, allow_nan=False).map(
            lambda f: round(f, 3))
        as_text = number.map(str)
        one = st.one_of(number, as_text)
        return st.one_of(st.none(), st.just(""), one, st.lists(one, min_size=0, max_size=3))
    if vr == "PN":
        group = st.lists(ascii_text.filter(lambda t: "^" not in t and "=" not in t) | any_text.filter(
            lambda t: "^" not in t and "=" not in t), max_size=3).map("^".join)
        name = st.lists(group, min_size=1, max_size=3).map("=".join)
        return st.one_of(st.none(), st.just(""), name, st.lists(name, max_size=3))
    if vr in ("LT", "ST", "UT"):
        return st.one_of(st.none(), st.just(""), st.text(st.characters(exclude_categories=("Cs",)), max_size=30))
    return st.one_of(st.none(), st.just(""), texts, st.lists(texts, max_size=3))


@st.composite
def flat_datasets(draw: st.DrawFn) -> Dataset:
    ds = Dataset()
    charset = draw(st.sampled_from(CHARSETS))
    if charset is not None:
        ds.add(DataElement(0x00080005, "CS", charset, validation_mode=config.IGNORE))
    for vr in draw(st.lists(st.sampled_from(STRING_VRS), min_size=1, max_size=8)):
        tag = draw(st.sampled_from(TAGS[vr]))
        ds.add(DataElement(tag, vr, draw(values_for(vr)), validation_mode=config.IGNORE))
    return ds


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flat_datasets(), st.booleans())
def test_the_fast_path_writes_what_pydicom_writes(ds: Dataset, implicit: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = pydicom_bytes(ds, implicit)
        except Exception:
            expected = None  # pydicom cannot write it: the fast path must not either
        ours = _encode_flat(ds, implicit)
    event("fast path" if ours is not None else "pydicom")
    if ours is not None:
        assert ours == expected


def study_identifier() -> Dataset:
    """A C-FIND response as the Q/R plugin makes one."""
    ds = Dataset()
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "PID1"
    ds.StudyDate = "20260101"
    ds.StudyTime = "101500"
    ds.AccessionNumber = ""
    ds.StudyDescription = "CT CHEST"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.ModalitiesInStudy = ["CT", "SR"]
    ds.NumberOfStudyRelatedInstances = "4"
    ds.QueryRetrieveLevel = "STUDY"
    ds.RetrieveAETitle = "DIMSEKIT"
    return ds


@pytest.mark.parametrize("syntax", [IMPLICIT, EXPLICIT])
def test_a_find_response_takes_the_fast_path(syntax: str) -> None:
    ds = study_identifier()
    ours = _encode_flat(ds, syntax == IMPLICIT)
    assert ours is not None and ours == pydicom_bytes(ds, syntax == IMPLICIT)
    assert encode_dataset(ds, syntax) == ours


@pytest.mark.parametrize("charset, name", [("ISO_IR 192", "Müller^Jörg"), ("ISO_IR 100", "Müller^Jörg"),
                                           ("ISO_IR 192", "山田^太郎=やまだ^たろう")])
def test_text_in_utf8_and_latin1(charset: str, name: str) -> None:
    ds = study_identifier()
    ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ours = _encode_flat(ds, False)
    assert ours is not None and ours == pydicom_bytes(ds, False)


def changed(**elements: tuple[str, object]) -> Dataset:
    ds = study_identifier()
    for keyword_tag, (vr, value) in elements.items():
        ds.add(DataElement(int(keyword_tag, 16), vr, value, validation_mode=config.IGNORE))
    return ds


@pytest.mark.parametrize("ds, why", [
    (changed(**{"00081110": ("SQ", Sequence([Dataset()]))}), "a sequence"),
    (changed(**{"00081110": ("SQ", Sequence())}), "an empty sequence"),
    (changed(**{"00280010": ("US", 512)}), "a binary VR"),
    (changed(**{"00080005": ("CS", "ISO 2022 IR 87")}), "an ISO 2022 character set"),
    (changed(**{"00080005": ("CS", ["", "ISO 2022 IR 87"])}), "several character sets"),
    (changed(**{"00100010": ("PN", "Müller")}), "non-ASCII in the default repertoire"),
    (changed(**{"00080060": ("CS", "É")}), "non-ASCII in a VR of the default repertoire"),
    (changed(**{"00080000": ("UL", 4)}), "a group length"),
    (changed(**{"00081030": ("LO", "x" * 70000)}), "a short VR's value over 64 KiB in Explicit VR"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_what_is_left_to_pydicom(ds: Dataset, why: str) -> None:
    assert _encode_flat(ds, False) is None, why
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert encode_dataset(ds, EXPLICIT) == pydicom_bytes(ds, False)  # pydicom's, through encode_dataset


def test_a_raw_element_is_left_to_pydicom() -> None:
    ds = study_identifier()
    ds[0x00100020] = RawDataElement(0x00100020, "LO", 4, b"PID2", 0, False, True)
    assert _encode_flat(ds, True) is None
    assert encode_dataset(ds, IMPLICIT) == pydicom_bytes(ds, True)


@pytest.mark.parametrize("syntax", [DEFLATED, BIG])
def test_deflated_and_big_endian_are_pydicom_s(syntax: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from dimsekit import datasets

    monkeypatch.setattr(datasets, "_encode_flat", lambda *a: pytest.fail("the fast path was asked"))
    assert encode_dataset(study_identifier(), syntax)
