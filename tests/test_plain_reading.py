"""The fast paths of :func:`dimsekit.datasets.part10_info` and :func:`~dimsekit.datasets.dataset_uids`
read what pydicom's reader reads -- or step aside for it.

Files are written byte by byte from hypothesis' choices: File Meta Information in Explicit or
(as some writers put it) Implicit VR, its group length now and then wrong, with or without each
of its UIDs, UIDs padded with NULs or
spaces, several values, a byte outside ASCII; data sets in the encoding their transfer syntax
says or the other one, elements before the SOP Class UID, a sequence, either UID missing or of
another VR; files cut off anywhere.  Each file is read both ways: the same result, or both refuse.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dimsekit import datasets
from dimsekit.datasets import DatasetError, Part10Info

EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
LONG = {"OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR"}


def _element(group: int, element: int, vr: str, value: bytes, implicit: bool) -> bytes:
    if implicit:
        return struct.pack("<HHI", group, element, len(value)) + value
    if vr in LONG:
        return struct.pack("<HH2sHI", group, element, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


digits = st.text(alphabet="0123456789", min_size=1, max_size=8)
plain_uid = st.lists(digits, min_size=2, max_size=6).map(".".join)


@st.composite
def uid_bytes(draw) -> bytes:
    text = draw(plain_uid)
    how = draw(st.sampled_from(["plain", "plain", "nul", "space", "lead", "two", "latin", "empty"]))
    if how == "nul":
        text += "\0"
    elif how == "space":
        text += " "
    elif how == "lead":
        text = " " + text
    elif how == "two":
        text += "\\" + draw(plain_uid)
    value = text.encode("latin_1") + (b"\xe9" if how == "latin" else b"")
    if how == "empty":
        value = b""
    return value + (b"\0" if len(value) % 2 else b"")


@st.composite
def part10_file(draw) -> bytes:
    meta_implicit = draw(st.integers(0, 9)) == 0
    ts = draw(st.sampled_from([EXPLICIT, IMPLICIT]))
    uids = {0x0002: draw(uid_bytes()), 0x0003: draw(uid_bytes()), 0x0010: (ts + "\0").encode()}
    for element in draw(st.sets(st.sampled_from(sorted(uids)), max_size=1)) if draw(st.integers(0, 7)) == 0 else ():
        del uids[element]
    meta = [(0x0001, "OB", b"\0\1")]
    meta += [(element, "UI", value) for element, value in sorted(uids.items())]
    if draw(st.booleans()):
        meta.append((0x0013, "SH", b"HYPO_1 "))
    if draw(st.booleans()):
        meta.append((0x0102, "OB", draw(st.binary(max_size=30)).ljust(2, b"\0")[: 30 // 2 * 2]))
    body = b"".join(_element(2, e, vr, v, meta_implicit) for e, vr, v in meta)
    group_length = len(body) + draw(st.sampled_from([0, 0, 0, -8, 8, -len(body)]))  # now and then wrong
    meta_bytes = _element(2, 0, "UL", struct.pack("<I", max(group_length, 0)), meta_implicit) + body

    implicit = (ts == IMPLICIT) != (draw(st.integers(0, 9)) == 0)  # now and then the other encoding
    elements = []
    if draw(st.booleans()):
        elements.append((0x0008, 0x0005, "CS", b"ISO_IR 100"))
    if draw(st.booleans()):
        elements.append((0x0008, 0x0008, "CS", b"ORIGINAL\\PRIMARY"))
    if draw(st.booleans()):
        elements.append((0x0008, 0x0012, "DA", b"20261129"))
    if draw(st.integers(0, 9)) == 0:
        elements.append((0x0008, 0x0006, "SQ", b""))
    for element in (0x0016, 0x0018):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            continue  # missing
        elements.append((0x0008, element, "LO" if choice == 1 else "UI", draw(uid_bytes())))
    elements.append((0x0010, 0x0010, "PN", b"Doe^John"))
    data = b"".join(_element(g, e, vr, v, implicit) for g, e, vr, v in elements)
    whole = b"\0" * 128 + b"DICM" + meta_bytes + data
    if draw(st.integers(0, 5)) == 0:
        whole = whole[: draw(st.integers(0, len(whole)))]
    return whole


def _outcome(call):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return call()
    except DatasetError:
        return "refused"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=part10_file())
def test_the_fast_reading_agrees_with_pydicoms(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "f.dcm"
    path.write_bytes(content)
    fast = _outcome(lambda: datasets.part10_info(path))
    slow = _outcome(lambda: datasets._part10_info_by_pydicom(path))
    assert fast == slow
    if isinstance(fast, Part10Info):
        assert _outcome(lambda: datasets.dataset_uids(fast)) == _outcome(
            lambda: datasets._dataset_uids_by_pydicom(fast, *datasets._flags(fast.transfer_syntax)))


def test_a_plain_file_is_read_without_pydicom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the fast paths are taken for what writers write (they would hide behind the fallback otherwise)
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Doe^John"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    path = tmp_path / "a.dcm"
    ds.save_as(path, enforce_file_format=True)

    def no_pydicom(*args, **kwargs):
        raise AssertionError("pydicom's reader was used")

    monkeypatch.setattr(datasets, "_part10_info_by_pydicom", no_pydicom)
    monkeypatch.setattr(datasets, "_dataset_uids_by_pydicom", no_pydicom)
    info = datasets.part10_info(path)
    assert (info.transfer_syntax, info.sop_instance_uid) == (EXPLICIT, ds.SOPInstanceUID)
    assert info.dataset_offset + info.dataset_length == path.stat().st_size
    assert datasets.dataset_uids(info) == (ds.SOPClassUID, ds.SOPInstanceUID)
