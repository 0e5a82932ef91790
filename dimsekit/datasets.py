"""Data sets on the wire: pydicom does the encoding, we choose how.

A DIMSE data set is encoded in the transfer syntax of its presentation
context (PS3.7 6.3.1), with no File Meta Information.  pydicom encodes and
decodes; this module only picks the options (implicit/explicit VR, byte
order, deflate) from the transfer syntax UID, and finds where the data set of
a Part 10 file starts so it can be sent as raw bytes, unparsed.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import struct
import warnings
import zlib
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.filewriter import correct_ambiguous_vr_element, write_dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLETransferSyntaxes,
)
from pydicom.valuerep import PersonName

from dimsekit.errors import DimsekitError
from dimsekit.framing import LONG_VRS as _LONG_VRS
from dimsekit.framing import SHORT_VRS as _SHORT_VRS
from dimsekit.framing import EncapsulatedInNative, truncation

__all__ = [
    "DEFLATED",
    "encode_dataset",
    "decode_dataset",
    "Part10Info",
    "part10_info",
    "dataset_file_info",
    "dataset_uids",
    "swap_words",
    "iter_file",
    "DatasetError",
    "LOSSLESS_COMPRESSED",
    "decompressible",
    "decompressed",
    "decoded_size",
    "MAX_DECODED_BYTES",
    "first_int",
    "readable_part",
    "file_defect",
    "defect_in_file",
    "dataset_truncation",
    "is_several",
    "values_of",
    "json_dict",
    "json_text",
    "UnwritableElement",
]

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"


class DatasetError(DimsekitError):
    """A data set cannot be encoded, decoded or sent as asked."""


class DatasetValueError(DatasetError):
    """A received data set was framed, but one of its values (or a sequence's items) cannot be read."""


def pydicom_error(exc: BaseException) -> str:
    """What pydicom's exception says, in one line, without the traceback some of them carry
    in their text (``With tag (0010,0020) got exception: ...``, the element as pydicom
    prints it over lines and columns, then the whole stack): a log line, an Error Comment,
    not a traceback in the node's log."""
    text = str(exc).split("\nTraceback (most recent call last)", 1)[0]
    return " ".join(text.split())


class UnwritableElement(DatasetError):
    """pydicom cannot write an element of a data set as DICOM JSON.

    :ivar tag: the element's tag (inside a sequence item, the inner one).
    :ivar reason: pydicom's error, in one line.
    """

    def __init__(self, tag: int, reason: str) -> None:
        super().__init__(f"({tag >> 16:04X},{tag & 0xFFFF:04X}): {reason}")
        self.tag = tag
        self.reason = reason


def json_dict(dataset: Dataset, on_unwritable: Callable[[UnwritableElement], None] | None = None) -> dict[str, Any]:
    """``dataset`` as a DICOM JSON object (PS3.18 F), as pydicom's ``to_json_dict`` makes it --
    but for a PN of several values, which pydicom cannot write when one is empty
    (``DOE^J\\`` or ``DOE^J\\=``, as a peer or a worklist file may have it: an
    IndexError).  Those are written here, at any depth (PS3.18 F.2.2; an empty
    value among several is ``null``, F.2.5, which pydicom reads back as an
    empty name).  And a float that is not finite (FL, FD, DS) is the string
    "NaN", "Infinity" or "-Infinity", as fo-dicom and dicom-rs write it and pydicom
    reads it, not a bare ``NaN``.  Otherwise ``json.dumps(json_dict(ds), sort_keys=True)``
    is what ``ds.to_json()`` gives.

    :param on_unwritable: called with the error for each element pydicom cannot
        write, which is then left out (output for a person to read); without it, the error is raised.
    :raises UnwritableElement: pydicom cannot write an element.
    """
    out: dict[str, Any] = {}
    for tag in dataset.keys():
        try:
            element = dataset[tag]  # a raw element is converted here: it may fail (a peer's value)
            if element.VR == "SQ":
                items = [json_dict(item, on_unwritable) for item in element.value]
                value: dict[str, Any] = {"vr": "SQ", "Value": items}
            elif element.VR == "PN" and element.VM > 1:
                value = {"vr": "PN", "Value": [_person_name_json(name) for name in element.value]}
            else:
                value = element.to_json_dict(None, 1024)
                if element.VR in _FLOAT_VRS and "Value" in value:
                    value["Value"] = [_json_number(number) for number in value["Value"]]
        except UnwritableElement:
            raise  # an item's element (raised only without on_unwritable)
        except Exception as exc:
            error = UnwritableElement(int(tag), pydicom_error(exc) or type(exc).__name__)
            if on_unwritable is None:
                raise error from None
            on_unwritable(error)
            continue
        out[f"{tag:08X}"] = value
    return out


#: VRs whose values pydicom writes as JSON numbers, floating point ones among them
_FLOAT_VRS = frozenset(("FL", "FD", "DS"))


def _json_number(number: Any) -> Any:
    """A float JSON has no number for as the string others write and pydicom reads back
    ("NaN", "Infinity", "-Infinity"); ``json.dumps`` would write a bare ``NaN``, which
    SQLite's JSON functions (and most parsers) refuse."""
    if isinstance(number, float) and not math.isfinite(number):
        return "NaN" if math.isnan(number) else ("Infinity" if number > 0 else "-Infinity")
    return number


def _person_name_json(name: PersonName) -> dict[str, str] | None:
    components = name.components
    if not any(components):
        return None
    return dict(zip(("Alphabetic", "Ideographic", "Phonetic"), components, strict=False))


def json_text(dataset: Dataset) -> str:
    """:func:`json_dict` as text, keys sorted (what ``ds.to_json()`` gives where it can)."""
    return json.dumps(json_dict(dataset), sort_keys=True)


def is_several(value: Any) -> bool:
    """Whether an element's value holds several values: pydicom's ``MultiValue`` (which is
    not a ``list``), or a list or tuple a caller built."""
    return isinstance(value, (list, tuple, MultiValue))


def values_of(value: Any) -> list[Any]:
    """An element's value as a list of its values: several as they are, one as a list of
    one, ``None`` as none."""
    if is_several(value):
        return list(value)
    return [] if value is None else [value]


def first_int(value: Any, default: int) -> int:
    """An integer element's value as a peer sent it: the first of several (a peer's mistake
    where the VM is 1), ``default`` when empty, zero or not a number."""
    if is_several(value):
        value = value[0] if len(value) else None
    try:
        return int(value) or default
    except (TypeError, ValueError):
        return default


def read_in_full(dataset: Dataset) -> Dataset:
    """Convert every raw value of a decoded data set, in sequence items too (pydicom
    reads values -- and sequences' items -- only when asked): garbage from a peer
    surfaces here as one :class:`DatasetError`, not as whatever pydicom raises later,
    wherever a handler happens to look.

    :raises DatasetValueError: a value, or a sequence's items, cannot be read.
    """
    try:
        for _ in dataset.iterall():
            pass
    except Exception as exc:  # whatever pydicom raises: ValueError, OSError, IndexError, NotImplementedError...
        raise DatasetValueError(f"unreadable value: {type(exc).__name__}: {pydicom_error(exc)}") from exc
    return dataset


def readable_part(dataset: Dataset, on_unreadable: Callable[[int, str], None]) -> Dataset:
    """A copy of ``dataset`` without what pydicom cannot read: an element whose value (or
    sequence's items) raises when read is left out, in sequence items too, and
    ``on_unreadable(tag, reason)`` is told. The copy keeps the original encoding and
    character set, so pydicom writes the rest as it was received."""
    out = Dataset()
    for tag in list(dataset.keys()):
        try:
            element = dataset[tag]  # pydicom reads a raw value here
            if element.VR == "SQ":
                element = DataElement(tag, "SQ", [readable_part(item, on_unreadable) for item in element.value])
        except Exception as exc:  # whatever pydicom raises on a peer's bytes
            on_unreadable(int(tag), f"{type(exc).__name__}: {pydicom_error(exc)}")
            continue
        out.add(element)
    implicit, little = dataset.original_encoding
    out.set_original_encoding(implicit, little, dataset.original_character_set)
    return out


@functools.lru_cache(maxsize=64)
def _flags(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) for a transfer syntax (a pydicom UID validates itself as it
    is made: 5 us per data set encoded or decoded, now once per syntax)."""
    uid = UID(transfer_syntax)
    if uid == IMPLICIT_LE:
        return True, True
    if uid == EXPLICIT_BE:
        return False, False
    if not uid.is_transfer_syntax:
        raise DatasetError(f"{transfer_syntax} is not a known transfer syntax")
    return False, True


def encode_dataset(dataset: Dataset, transfer_syntax: str) -> bytes:
    """The bytes of ``dataset`` in ``transfer_syntax`` (no preamble, no file meta).

    Compressed transfer syntaxes need pixel data already compressed in them:
    the data set is written as it is (encapsulated pixel data stays so).
    """
    implicit, little = _flags(transfer_syntax)
    if little and transfer_syntax != DEFLATED:
        flat = _encode_flat(dataset, implicit)
        if flat is not None:
            return flat
    read_little = dataset.original_encoding[1]
    if read_little is not None and read_little != little:
        dataset = _byte_swapped(dataset)
    fp = DicomBytesIO()
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    try:
        write_dataset(fp, dataset)
    except Exception as exc:  # pydicom raises many kinds on unencodable values
        raise DatasetError(f"cannot encode the data set in {UID(transfer_syntax).name}: {pydicom_error(exc)}") from exc
    data = fp.getvalue()
    if transfer_syntax == DEFLATED:
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
        if len(data) & 1:
            data += b"\x00"  # PS3.5 A.5: the deflated stream is padded to even length
    return data


#: the VRs :func:`_encode_flat` writes: strings whose value pydicom writes as text
_FLAT_VRS = frozenset(("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT"))
#: ... of which these are in the Specific Character Set (the rest in the default repertoire)
_CHARSET_VRS = frozenset(("LO", "LT", "PN", "SH", "ST", "UC", "UT"))
#: the ones with a 4-byte length in Explicit VR (PS3.5 7.1.2)
_FLAT_LONG_VRS = frozenset(("UC", "UR", "UT"))
#: Specific Character Set -> the one Python codec of it :func:`_encode_flat` uses (others: pydicom)
_FLAT_CODECS = {None: "ascii", "": "ascii", "ISO_IR 6": "ascii", "ISO_IR 192": "utf-8", "ISO_IR 100": "latin_1"}
_NUMBER_STRINGS = frozenset(("IS", "DS"))


def _flat_text(value: Any, vr: str) -> str | None:
    """The text pydicom writes for one value of a string VR, or None (not one :func:`_encode_flat` takes)."""
    if isinstance(value, str):  # str, pydicom's UID
        return str(value)
    if isinstance(value, PersonName):
        return str(value) if vr == "PN" else None
    if vr in _NUMBER_STRINGS and isinstance(value, int | float):  # pydicom's IS, DSfloat, DSdecimal
        original = getattr(value, "original_string", None)
        return original if original is not None else str(value)
    return None


def _encode_flat(dataset: Dataset, implicit: bool) -> bytes | None:
    """``dataset`` in Implicit or Explicit VR Little Endian, written here, or None: it is not
    flat -- only elements of string VRs (:data:`_FLAT_VRS`), no sequence, no raw element, no
    group length, text in ASCII, ISO_IR 100 or ISO_IR 192 -- and pydicom writes it.

    The bytes are pydicom's, ~10x sooner: a C-FIND response is such a data set, and
    pydicom's writer took 140 us of one with eleven elements (``tests/test_flat_encoding.py``
    checks that both write the same bytes, and what is left to pydicom).
    """
    charset = dataset.get_item(0x00080005)
    if charset is None:
        codec = "ascii"
    else:
        if isinstance(charset, RawDataElement):
            return None
        codec = _FLAT_CODECS.get(charset.value) if isinstance(charset.value, str) else None
        if codec is None:
            return None
    out = bytearray()
    for tag in sorted(dataset.keys(), key=int):
        element = dataset.get_item(tag)
        if isinstance(element, RawDataElement) or not tag & 0xFFFF or tag >> 16 < 8:
            return None
        vr = element.VR
        if vr not in _FLAT_VRS:
            return None
        value = element.value
        if value is None or value == "":
            data = b""
        else:
            if isinstance(value, MultiValue | list | tuple):
                texts = [_flat_text(v, vr) for v in value]
                if None in texts:
                    return None
                text = "\\".join(texts)  # type: ignore[arg-type]
            else:
                text = _flat_text(value, vr)  # type: ignore[assignment]
                if text is None:
                    return None
            try:
                data = text.encode(codec if vr in _CHARSET_VRS else "ascii")
            except UnicodeError:
                return None
            if len(data) & 1:
                data += b"\x00" if vr == "UI" else b" "
        length = len(data)
        if implicit:
            out += struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)
        elif vr in _FLAT_LONG_VRS:
            out += struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
        elif length > 0xFFFF:
            return None  # (pydicom writes it as UN, with a warning)
        else:
            out += struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)
        out += data
    return bytes(out)


#: bytes per word of the VRs whose values pydicom keeps, and writes, as the raw bytes
#: it read -- in the byte order of the transfer syntax they came in (PS3.5 7.3)
_WORD_SIZES = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}
_ARRAY_CODES = {array(code).itemsize: code for code in "QLIH"}


def _byte_swapped(dataset: Dataset) -> Dataset:
    """A copy of ``dataset`` whose OW, OL, OF, OD and OV values have each word's
    bytes reversed, items of sequences included: what it takes to write in one
    byte order a data set read in the other (Explicit VR Big Endian <-> Little
    Endian), since pydicom converts the numbers it decoded but writes those
    values as they are.  ``dataset`` itself is left alone."""
    copy = Dataset()
    copy.set_original_encoding(*dataset.original_encoding, dataset.original_character_set)
    little = bool(dataset.original_encoding[1])
    for element in dataset:  # RawDataElements come out decoded
        if " or " in element.VR:  # read as Implicit VR: OB or OW, US or OW ... (PS3.5 Annex A.1)
            element = correct_ambiguous_vr_element(element, dataset, little)
        size = _WORD_SIZES.get(element.VR)
        if element.VR == "SQ" and element.value:
            element = DataElement(element.tag, "SQ", [_byte_swapped(item) for item in element.value])
        elif size is not None and isinstance(element.value, bytes | bytearray) and len(element.value) >= size:
            element = DataElement(element.tag, element.VR, swap_words(element.value, size))
        copy.add(element)
    return copy


def swap_words(data: bytes | bytearray, size: int) -> bytes:
    """``data`` with the bytes of each ``size``-byte word reversed (2, 4 or 8): an
    OW/OL/OF/OD/OV value into the other byte order; a trailing part word stays."""
    words = array(_ARRAY_CODES[size])
    whole = len(data) - len(data) % size
    words.frombytes(data[:whole])
    words.byteswap()
    return words.tobytes() + bytes(data[whole:])


def decode_dataset(data: bytes | IO[bytes], transfer_syntax: str) -> Dataset:
    """Parse a data set received in ``transfer_syntax`` (bytes or a binary file object)."""
    implicit, little = _flags(transfer_syntax)
    if isinstance(data, bytes | bytearray | memoryview):
        fp: IO[bytes] = io.BytesIO(bytes(data))
    else:
        fp = data
    if transfer_syntax == DEFLATED:
        fp = io.BytesIO(zlib.decompress(fp.read(), -zlib.MAX_WBITS))
    try:
        dataset = read_dataset(fp, implicit, little)
    except Exception as exc:
        raise DatasetError(f"cannot decode the data set ({UID(transfer_syntax).name}): {pydicom_error(exc)}") from exc
    return dataset


@dataclass(frozen=True, slots=True)
class Part10Info:
    """What a Part 10 file says of itself, read from its File Meta Information only."""

    path: Path
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    dataset_offset: int  #: byte offset where the data set starts
    dataset_length: int  #: bytes of data set to the end of the file
    #: False for a bare data set (no preamble, no File Meta): what it says of
    #: itself was read from its first elements, its transfer syntax guessed
    has_meta: bool = True


def part10_info(path: str | Path) -> Part10Info:
    """Read the File Meta Information of a Part 10 file (not its data set).

    A File Meta Information that is plain -- Explicit VR Little Endian, as PS3.10
    7.1 has it, its three UIDs single values -- is read from the file's first
    block (:func:`_plain_meta`: ~5 us, where pydicom's reader takes ~150 us; a
    C-MOVE sends each instance from its path, and ``dimsekit store`` reads every
    file before it connects); any other goes through pydicom, which is the
    authority for what is not plain, and says what is wrong.

    :raises DatasetError: not a Part 10 file, or its meta lacks a required element.
    """
    if not isinstance(path, Path):  # (a Path of a Path parses it again: 2 us a sub-operation)
        path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # not open(): its fstat and isatty, per file
        try:
            size = os.fstat(fd).st_size
            head = os.read(fd, min(_META_HEAD, size))
        finally:
            os.close(fd)
    except OSError:
        pass  # pydicom's reader says what is wrong
    else:
        plain = _plain_meta(head, size)
        if plain is not None:
            transfer_syntax, sop_class, sop_instance, offset = plain
            return Part10Info(path, transfer_syntax, sop_class, sop_instance, offset, size - offset)
    return _part10_info_by_pydicom(path)


#: bytes read for :func:`_plain_meta`: a File Meta Information is a few hundred bytes
_META_HEAD = 4096
#: the File Meta Information's UIDs a Part10Info holds, by element number: their place in it
_META_UIDS = {0x0010: 0, 0x0002: 1, 0x0003: 2}
_GROUP_ELEMENT = struct.Struct("<HH")
_US_AT, _UL_AT = struct.Struct("<H"), struct.Struct("<L")


def _plain_meta(head: bytes, size: int) -> tuple[str, str, str, int] | None:
    """(Transfer Syntax, Media Storage SOP Class and Instance UIDs, data set offset) of a Part 10
    file whose first bytes are ``head`` (``size``: the file's), read as pydicom reads them --
    trailing NULs and spaces dropped, then surrounding spaces -- when its File Meta Information
    is plain: every element of group 0002 in Explicit VR Little Endian, within ``head``, the three
    UIDs there, each a single UI value of Latin-1 text.  None for anything else."""
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    found: list[str | None] = [None, None, None]
    end = len(head)
    offset = 132
    while True:
        if offset + 8 > end:
            if offset == size:  # the file ends with its File Meta Information
                break
            return None
        group, element = _GROUP_ELEMENT.unpack_from(head, offset)
        if group != 0x0002:
            break
        vr = head[offset + 4:offset + 6]
        framed = _explicit_value(head, offset, end, _META_LONG_VRS, _is_vr_like)
        if framed is None:
            return None  # Implicit VR (some writers), or cut off: pydicom's reader
        length, start = framed
        if length == 0xFFFFFFFF:
            return None
        which = _META_UIDS.get(element)
        if which is not None:
            value = head[start:start + length]
            if vr != b"UI" or start + length > end or b"\\" in value:
                return None
            found[which] = value.decode("latin_1").rstrip("\0 ").strip()
        offset = start + length
    if found[0] is None or found[1] is None or found[2] is None:
        return None  # pydicom's reader names what is missing
    return found[0], found[1], found[2], offset


def _explicit_value(data: bytes, pos: int, end: int, long_vrs: frozenset[bytes],
                    short: Callable[[bytes], bool]) -> tuple[int, int] | None:
    """(value length, value offset) of the Explicit VR Little Endian element whose header is at
    ``pos`` (its tag read already, ``end`` the bytes there are): a VR of ``long_vrs`` has a
    4-byte length after two reserved bytes, one ``short`` says is a VR a 2-byte length.  None
    for any other VR, or a header cut off."""
    vr = data[pos + 4:pos + 6]
    if vr in long_vrs:
        if pos + 12 > end:
            return None
        return _UL_AT.unpack_from(data, pos + 8)[0], pos + 12
    if short(vr):
        return _US_AT.unpack_from(data, pos + 6)[0], pos + 8
    return None


def _is_vr_like(vr: bytes) -> bool:
    """Two capital letters: what :func:`_dataset_offset` takes for an explicit VR."""
    return 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90


#: explicit VRs with a 4-byte length in group 0002 (as :func:`_dataset_offset` has them)
_META_LONG_VRS = frozenset((b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR"))


def _part10_info_by_pydicom(path: Path) -> Part10Info:
    """:func:`part10_info` through pydicom's reader."""
    try:
        meta = read_file_meta_info(path)
    except Exception as exc:
        raise DatasetError(f"{path}: not a DICOM Part 10 file ({exc})") from exc
    try:
        transfer_syntax = str(meta.TransferSyntaxUID)
        sop_class = str(meta.MediaStorageSOPClassUID)
        sop_instance = str(meta.MediaStorageSOPInstanceUID)
    except AttributeError as exc:
        raise DatasetError(f"{path}: File Meta Information lacks {exc.args[0] if exc.args else 'a required element'}") from exc
    offset = _dataset_offset(path)
    size = path.stat().st_size
    return Part10Info(path, transfer_syntax, sop_class, sop_instance, offset, size - offset)


def _dataset_offset(path: Path) -> int:
    """Where the data set starts: after the preamble, "DICM" and group 0002.

    Group 0002 is Explicit VR Little Endian (PS3.10 7.1); walk its elements by
    their lengths rather than trusting the group length alone.  Some writers
    put it in Implicit VR Little Endian (pydicom and DCMTK read such files):
    an element whose VR field is not two capital letters is taken as implicit
    (tag, 4-byte length).
    """
    with path.open("rb") as f:
        head = f.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            raise DatasetError(f"{path}: no DICM prefix; not a Part 10 file")
        offset = 132
        while True:
            f.seek(offset)
            header = f.read(8)
            if len(header) < 8:
                return offset
            group, _element = struct.unpack("<HH", header[:4])
            if group != 0x0002:
                return offset
            vr = header[4:6]
            if not _is_vr_like(vr):  # no VR: Implicit VR (PS3.5 7.1.3)
                (length,) = struct.unpack("<I", header[4:8])
                offset += 8 + length
            elif vr in _META_LONG_VRS:
                extra = f.read(4)
                if len(extra) < 4:
                    raise DatasetError(f"{path}: truncated File Meta Information")
                (length,) = struct.unpack("<I", extra)
                offset += 12 + length
            else:
                (length,) = struct.unpack("<H", header[6:8])
                offset += 8 + length


def iter_file(path: str | Path, offset: int, chunk: int = 1 << 20, *, pad_to_even: bool = False) -> Iterator[bytes]:
    """Read a file from ``offset`` in chunks (for sending a data set unparsed).

    ``pad_to_even`` appends one NUL when the data set's length is odd: a
    deflated data set stored without its padding byte must still go on the
    wire with an even length (PS3.5 A.5; DCMTK refuses an odd fragment).
    """
    total = 0
    # os-level calls: a small file is open, fstat, pread, close (a buffered file object added
    # an fstat, an isatty, two seeks and two reads past the end: 15 -> 5 us a small file)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        end = os.fstat(fd).st_size  # what is there now: a file growing meanwhile is not followed
        while offset < end:
            data = os.pread(fd, min(chunk, end - offset), offset)
            if not data:  # it shrank under us
                break
            offset += len(data)
            total += len(data)
            yield data
    finally:
        os.close(fd)
    if pad_to_even and total & 1:
        yield b"\x00"


def dataset_from_any(value: Any) -> Dataset:
    """A pydicom Dataset from a Dataset, a path, or bytes of a Part 10 file."""
    from pydicom import dcmread

    if isinstance(value, Dataset):
        return value
    if isinstance(value, str | Path):
        return dcmread(value)
    if isinstance(value, bytes | bytearray):
        return dcmread(io.BytesIO(value))
    raise DatasetError(f"cannot make a data set of {type(value).__name__}")


@contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """pydicom's warnings (and its logger's, which print without a handler) silenced."""
    logger = logging.getLogger("pydicom")
    disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.disabled = disabled


#: (implicit VR, little endian) of a bare data set -> the transfer syntax it is in
_GUESSED = {(True, True): IMPLICIT_LE, (False, True): "1.2.840.10008.1.2.1", (False, False): EXPLICIT_BE}


def dataset_file_info(path: str | Path) -> Part10Info:
    """:func:`part10_info`, or for a file holding a bare data set (no preamble,
    no File Meta Information -- what DCMTK's ``storescu`` also sends) what its
    elements say: SOP Class and Instance UIDs, and the uncompressed transfer
    syntax pydicom finds it in (Implicit or Explicit VR, byte order).

    :raises DatasetError: neither, or a bare data set whose pixel data is
        encapsulated (compressed: which codec, only a File Meta would say).
    """
    if not isinstance(path, Path):
        path = Path(path)
    try:
        return part10_info(path)
    except DatasetError as exc:
        with path.open("rb") as f:
            head = f.read(132)
        if len(head) == 132 and head[128:132] == b"DICM":
            raise  # a Part 10 file, broken: not to be read as something else
        error = exc
    from pydicom import dcmread

    try:
        with _quiet_pydicom():  # what it warns of while guessing at a text file is noise
            dataset = dcmread(path, force=True, defer_size=1024, specific_tags=["SOPClassUID", "SOPInstanceUID", "PixelData"])
            sop_class = str(dataset.SOPClassUID)
            sop_instance = str(dataset.SOPInstanceUID)
            encoding = dataset.original_encoding
    except Exception:  # pydicom raises many kinds on what is no data set
        raise error from None
    pixels = dataset.get_item(0x7FE00010)
    if pixels is not None and (getattr(pixels, "is_undefined_length", False) or getattr(pixels, "length", 0) == 0xFFFFFFFF):
        raise DatasetError(f"{path}: a data set without File Meta Information whose pixel data is compressed (in which syntax is unknown)")
    transfer_syntax = _GUESSED.get((bool(encoding[0]), bool(encoding[1])))
    if transfer_syntax is None:
        raise error
    return Part10Info(path, transfer_syntax, sop_class, sop_instance, 0, path.stat().st_size, has_meta=False)


#: (0008,0018) SOP Instance UID: the last element :func:`dataset_uids` needs
_SOP_INSTANCE_TAG = 0x00080018


def dataset_uids(info: Part10Info) -> tuple[str | None, str | None]:
    """The SOP Class UID and SOP Instance UID that the data set of a file holds
    (None for one it does not have), as against what its File Meta Information
    says (``info``'s).

    Only the first elements are read: the data set is parsed, in the file's
    transfer syntax, from its start to the SOP Instance UID (0008,0018) -- a few
    hundred bytes; a deflated one is inflated only that far.  A little endian
    data set whose first elements are plain is read without pydicom
    (:func:`_plain_uids`, ~10 us against ~200 us); pydicom reads any other.

    :raises DatasetError: the data set cannot be read that far (an unknown
        transfer syntax, broken elements).
    """
    try:
        implicit, little = _flags(info.transfer_syntax)
    except DatasetError as exc:
        raise DatasetError(f"{info.path}: cannot read the data set's SOP Class and Instance UIDs: {exc}") from None
    if little and info.transfer_syntax != DEFLATED:
        try:
            fd = os.open(info.path, os.O_RDONLY | os.O_CLOEXEC)  # as part10_info: no buffered file object
            try:
                first = os.pread(fd, _META_HEAD, info.dataset_offset)
            finally:
                os.close(fd)
        except OSError:
            pass  # pydicom's reader says what is wrong
        else:
            plain = _plain_uids(first, implicit, len(first) >= info.dataset_length)
            if plain is not None:
                return plain
    return _dataset_uids_by_pydicom(info, implicit, little)


def _dataset_uids_by_pydicom(info: Part10Info, implicit: bool, little: bool) -> tuple[str | None, str | None]:
    """:func:`dataset_uids` through pydicom's reader."""
    with Path(info.path).open("rb") as raw:
        raw.seek(info.dataset_offset)
        fp: IO[bytes] = _Inflating(raw) if info.transfer_syntax == DEFLATED else raw
        try:
            with _quiet_pydicom():
                dataset = read_dataset(fp, implicit, little, stop_when=lambda tag, vr, length: tag > _SOP_INSTANCE_TAG,
                                       defer_size=4096)
                found = [dataset.get(tag) for tag in (0x00080016, _SOP_INSTANCE_TAG)]
                uids = [str(element.value).strip("\x00 ") if element is not None and element.value else None
                        for element in found]
        except Exception as exc:  # pydicom raises many kinds on broken elements
            raise DatasetError(f"{info.path}: cannot read the data set's SOP Class and Instance UIDs ({exc})") from exc
    return uids[0] or None, uids[1] or None


def _plain_uids(data: bytes, implicit: bool, whole: bool) -> tuple[str | None, str | None] | None:
    """(SOP Class UID, SOP Instance UID) -- None for one it lacks -- of a little endian data set
    whose first bytes are ``data`` (``whole``: all of it), read as pydicom reads them, when its
    elements up to (0008,0018) are plain: of defined length, in ``data``, in the VR encoding
    ``implicit`` says (pydicom reads in the one the first element shows), the two UIDs single UI
    values.  None for anything else: pydicom's reader then (:func:`dataset_uids`)."""
    end = len(data)
    if end >= 6 and _is_vr_like(data[4:6]) == implicit:
        return None  # the first element is not in the encoding the transfer syntax says
    found: list[str | None] = [None, None]
    pos = 0
    while True:
        if pos + 8 > end:
            if whole and pos == end:
                break
            return None
        group, element = _GROUP_ELEMENT.unpack_from(data, pos)
        tag = group << 16 | element
        if tag > _SOP_INSTANCE_TAG:
            break
        if implicit:
            (length,) = _UL_AT.unpack_from(data, pos + 4)
            start = pos + 8
        else:
            framed = _explicit_value(data, pos, end, _LONG_VRS, _SHORT_VRS.__contains__)
            if framed is None:
                return None
            length, start = framed
        if length == 0xFFFFFFFF:
            return None
        if tag == 0x00080016 or tag == _SOP_INSTANCE_TAG:
            value = data[start:start + length]
            if start + length > end or (not implicit and data[pos + 4:pos + 6] != b"UI") or b"\\" in value:
                return None
            found[tag == _SOP_INSTANCE_TAG] = value.decode("latin_1").rstrip("\0 ").strip().strip("\x00 ") or None
        pos = start + length
    return found[0], found[1]


def file_defect(info: Part10Info, *, prefix: int = 65536) -> str | None:
    """Why the data set of a Part 10 file is no image (:func:`dataset_defect`: a value or a
    sequence that runs past the end of the file, compressed fragments labelled uncompressed,
    another codec's), in a sentence, or None -- also for a big endian or deflated one, which it
    does not check. See :func:`defect_in_file`.

    :raises OSError: the file cannot be read.
    """
    return defect_in_file(info.path, info.dataset_offset, info.dataset_length, info.transfer_syntax, prefix=prefix)


def defect_in_file(path: str | Path, offset: int, length: int, transfer_syntax: str, *,
                   prefix: int = 65536) -> str | None:
    """:func:`dataset_defect` of the data set of ``length`` bytes at ``offset`` in the file at
    ``path``, in ``transfer_syntax``. Reads the first ``prefix`` bytes of the data set, then only
    element headers (and a fragment's first bytes) past them.

    :raises OSError: the file cannot be read.
    """
    with Path(path).open("rb") as f:
        f.seek(offset)
        head = f.read(min(prefix, length))
        fd = f.fileno()
        return dataset_defect(head, length, transfer_syntax, lambda at, size: os.pread(fd, size, offset + at))


#: the native (uncompressed) transfer syntaxes :func:`dataset_truncation` frames
_NATIVE_LITTLE = frozenset((IMPLICIT_LE, "1.2.840.10008.1.2.1"))


def dataset_truncation(prefix: bytes | bytearray, size: int, transfer_syntax: str,
                       read: Callable[[int, int], bytes] | None = None, start: int = 0,
                       fragment: list[tuple[int, int]] | None = None) -> str | None:
    """What cuts short a data set of ``size`` bytes in ``transfer_syntax`` -- a value or a sequence
    that runs past its end -- or None (:func:`dimsekit.framing.truncation`; no verdict for a big
    endian, deflated or unknown transfer syntax). ``prefix`` holds its first bytes,
    ``read(offset, size)`` the rest (None: no verdict when ``prefix`` is not all of it);
    ``start``: where an earlier scan's framing ended; ``fragment``: see :func:`dimsekit.framing.truncation`.

    :raises ~dimsekit.framing.EncapsulatedInNative: the transfer syntax is Implicit or Explicit
        VR Little Endian, and the Pixel Data is encapsulated (undefined length).
    """
    try:
        implicit, little = _flags(transfer_syntax)
    except DatasetError:
        return None
    if not little or transfer_syntax == DEFLATED:
        return None
    if size <= len(prefix):
        read = None
    elif read is None:
        return None
    return truncation(prefix, size, implicit=implicit, read=read, start=start,
                      native=transfer_syntax in _NATIVE_LITTLE, fragment=fragment)


#: the codec family of each encapsulated transfer syntax :func:`codec_of` can tell apart
_CODEC_FAMILIES = {
    **dict.fromkeys(map(str, [*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes]), "JPEG"),
    **dict.fromkeys(map(str, JPEG2000TransferSyntaxes), "JPEG 2000"),  # HTJ2K included
    **dict.fromkeys(map(str, RLETransferSyntaxes), "RLE"),
}
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def codec_of(head: bytes) -> str | None:
    """What the first bytes of a frame's first fragment say its codec is -- "JPEG" (an SOI
    marker: the JPEG processes and JPEG-LS), "JPEG 2000" (a codestream's SOC and SIZ markers,
    or a JP2 file's signature), "RLE" (PS3.5 G.5's header: 1 to 15 segments, the first at
    offset 64, the others after it in order, unused offsets 0) -- or None: none of them."""
    if head[:2] == b"\xff\xd8":
        return "JPEG"
    if head[:4] == b"\xff\x4f\xff\x51" or head[:12] == _JP2_SIGNATURE:
        return "JPEG 2000"
    if len(head) >= 64:
        count, *offsets = struct.unpack("<16L", head[:64])
        used = offsets[:count]
        if 1 <= count <= 15 and used[0] == 64 and all(a < b for a, b in zip(used, used[1:], strict=False)) \
                and not any(offsets[count:]):
            return "RLE"
    return None


def dataset_defect(prefix: bytes | bytearray, size: int, transfer_syntax: str,
                   read: Callable[[int, int], bytes] | None = None, start: int = 0) -> str | None:
    """Why a data set as :func:`dataset_truncation` takes it is no image, in a sentence, or None:
    it is cut short; its Pixel Data is encapsulated in an uncompressed transfer syntax; or the
    first fragment of its Pixel Data is, beyond doubt, of another codec than the transfer
    syntax's (RLE labelled JPEG 2000: a sender that used the first file's syntax for all)."""
    fragment: list[tuple[int, int]] = []
    try:
        short = dataset_truncation(prefix, size, transfer_syntax, read, start, fragment)
    except EncapsulatedInNative as exc:  # stored, every reader would take the fragments for pixels
        return f"encapsulated Pixel Data in {UID(transfer_syntax).name} (PS3.5 A.4): {exc}"
    if short is not None:
        return f"the data set is cut short: {short}"
    family = _CODEC_FAMILIES.get(transfer_syntax)
    if family is None or not fragment:
        return None
    ((offset, length),) = fragment
    wanted = min(length, 64)
    head = bytes(prefix[offset:offset + wanted])
    if len(head) < wanted and read is not None:
        head = read(offset, wanted)
    codec = codec_of(head)
    if codec is None or codec == family:
        return None  # unknown bytes are the decoder's business, not the archive's
    return (f"{codec} data in {UID(transfer_syntax).name}: the first fragment of its Pixel Data (at offset "
            f"{offset}) is {codec}, not {family} (PS3.5 A.4)")


class _Inflating(io.RawIOBase):
    """A deflated data set (PS3.5 A.5), inflated as far as it is read: what
    :func:`dataset_uids` needs of it (read, tell, and seek back a little)."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._out = bytearray()
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _more(self) -> bool:
        data = self._inflater.unconsumed_tail or self._raw.read(16384)
        if not data:
            return False
        self._out += self._inflater.decompress(data, 65536)
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        while (size < 0 or len(self._out) < self._pos + size) and self._more():
            pass
        end = len(self._out) if size < 0 else min(len(self._out), self._pos + size)
        data = bytes(self._out[self._pos:end])
        self._pos = end
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos}.get(whence)
        if base is None:
            raise io.UnsupportedOperation("seek from the end of a deflated stream")
        self._pos = max(0, base + offset)
        return self._pos


# -- decompressing for a peer that takes only uncompressed data ---------------------------------

#: compressed transfer syntaxes whose decoding gives back every pixel value as encoded:
#: RLE, JPEG Lossless (processes 14 and 14 SV1), JPEG-LS lossless, JPEG 2000 lossless only,
#: HTJ2K lossless and lossless RPCL, JPEG XL lossless.  JPEG 2000 (.91) may be either and
#: counts as lossy, as everything else compressed.
LOSSLESS_COMPRESSED = frozenset({
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.110",
})


@functools.lru_cache(maxsize=256)
def decompressible(transfer_syntax: str, policy: str) -> str | None:
    """Why a data set in ``transfer_syntax`` cannot be decompressed under ``policy``
    (``[node] decompress``: never, lossless, lossy), or None when it can: the policy
    allows it and pydicom has a decoder for the syntax installed."""
    if policy == "never":
        return "decompressing is off (decompress = \"never\")"
    if policy != "lossy" and transfer_syntax not in LOSSLESS_COMPRESSED:
        return f"{UID(transfer_syntax).name} is lossy, and only lossless data is decompressed (decompress = \"{policy}\")"
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(transfer_syntax)
    except (ImportError, NotImplementedError, ValueError):
        return f"pydicom cannot decode {UID(transfer_syntax).name}"
    if not decoder.is_available:
        return (f"no decoder for {UID(transfer_syntax).name} is installed "
                "(pip install 'dimsekit[codecs]': numpy, pylibjpeg and its plugins)")
    return None


#: the largest decoded pixel data :func:`decompressed` makes (an instance past it is not
#: decoded: its sub-operation fails, with the reason, rather than the node running out of memory)
MAX_DECODED_BYTES = 1 << 30


def decoded_size(dataset: Dataset) -> int:
    """Bytes the native pixel data of ``dataset`` takes: Rows x Columns x Samples per Pixel x
    Bits Allocated / 8 x Number of Frames (0 when an attribute is missing or unreadable)."""
    try:
        frames = int(dataset.get("NumberOfFrames") or 1)
        bits = int(dataset.BitsAllocated)
        pixels = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError):
        return 0
    return max(0, frames) * pixels * bits // 8


def decompressed(dataset: Dataset, max_bytes: int | None = None) -> Dataset:
    """``dataset`` (read from a file in a compressed syntax) with its pixel data decoded,
    in place: native Pixel Data, Explicit VR Little Endian in its File Meta, Photometric
    Interpretation as decoded (a YBR JPEG comes out RGB).  Holds the decoded frames in
    memory: one whose decoded pixel data would pass ``max_bytes`` (default
    :data:`MAX_DECODED_BYTES`; ``[node] max_decoded_mb``) is refused first.  Run it in a
    thread: decoding takes milliseconds to seconds.

    :raises DatasetError: pydicom could not decode it.
    """
    source = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "") or "")
    size = decoded_size(dataset)
    limit = MAX_DECODED_BYTES if max_bytes is None else max_bytes
    if size > limit:
        raise DatasetError(
            f"not decompressed: decoded, its pixel data would take {size / (1 << 20):,.0f} MiB, "
            f"more than the {limit >> 20:,} MiB dimsekit decodes at once (max_decoded_mb)"
        )
    try:
        # The same instance in another encoding: its SOP Instance UID stays (pydicom would
        # make a new one).  Decoding changes no pixel value from what the encoded data
        # holds; an image lossy compressed once and "decompressed and transferred in
        # uncompressed format" keeps Lossy Image Compression "01" (PS3.3 C.7.6.1.1.5).
        dataset.decompress(generate_instance_uid=False)
    except Exception as exc:  # the decoders raise many kinds on damaged data
        why = " ".join(str(exc).split())  # pydicom lists each decoder's error on a line of its own
        raise DatasetError(f"cannot decompress the pixel data ({why})") from exc
    if source and source not in LOSSLESS_COMPRESSED and "LossyImageCompression" not in dataset:
        dataset.LossyImageCompression = "01"  # it went through a lossy syntax: say so
    return dataset
