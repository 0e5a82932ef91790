"""Whether a data set's bytes hold all of its elements: the check for a truncated data set.

A data set cut short -- a file truncated by a full disk and sent as it is, a
sender that stops a value early -- still parses up to where it ends, and a
reader that stops at the pixel data, as an archive's index does, never sees
the difference.  Stored as it is, it is an image lost with a success status.

:func:`truncation` walks the elements' framing (tag, VR, length; PS3.5 7.1)
from the start to the end, skipping values by their lengths and following
undefined-length sequences, items and encapsulated pixel data to their
delimiters (PS3.5 7.5, A.4), and says where the bytes run out.  It reads only
element headers, through a ``read(offset, size)`` callable: a data set in
memory, or a file read where it is needed (one read per element header past
what is in memory).

It is a check for *truncation*, never a parser: what it cannot frame exactly as
the standard says (big endian, an explicit VR it does not know, an undefined
length on an element that cannot have one, a stray delimiter) gets no verdict,
and the data set goes on as before; so do fewer than 8 zero bytes after the last
element (padding).  A data set is said to be truncated only when a header or a
value provably runs past the end of the bytes, or an undefined-length sequence
has no delimiter: the bytes end first, or an element stands where its next item
or its delimiter belongs (readers then take the rest of the data set for items).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

__all__ = ["truncation", "sequence_end", "sequence_items", "Unframed", "EncapsulatedInNative"]

#: an element's header, little endian: explicit VR (tag, VR, 2-byte length) and implicit VR (tag, length)
EXPLICIT_HEAD = struct.Struct("<HH2sH")
IMPLICIT_HEAD = struct.Struct("<HHL")
#: the 4-byte length after the reserved bytes of a long explicit VR
ULONG = struct.Struct("<L")
#: explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1)
LONG_VRS = frozenset((b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
#: explicit VRs with a 2-byte length (PS3.5 Table 7.1-2)
SHORT_VRS = frozenset((b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                       b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"))
#: explicit VRs whose value may have an undefined length: a sequence, encapsulated pixel data, UN (CP-246)
_UNDEFINED_OK = frozenset((b"SQ", b"OB", b"OW", b"UN"))
UNDEFINED = 0xFFFFFFFF
#: Item, Item Delimitation Item, Sequence Delimitation Item (PS3.5 7.5)
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
#: nesting followed before giving up (no verdict)
_MAX_DEPTH = 32

Reader = Callable[[int, int], bytes]


class Unframed(Exception):
    """The bytes cannot be framed as the standard frames them: no verdict."""


class EncapsulatedInNative(Exception):
    """The data set's Pixel Data (7FE0,0010) has an undefined length -- encapsulated, compressed
    fragments -- though its transfer syntax is native (uncompressed), where Pixel Data has a
    defined length (PS3.5 A.4: encapsulation is for the compressed transfer syntaxes).  Every
    reader takes the fragments for pixels, or fails: such a data set is no image."""

    def __init__(self, offset: int) -> None:
        super().__init__(f"Pixel Data (7FE0,0010) at offset {offset} is encapsulated (undefined length), "
                         "which only a compressed transfer syntax allows (PS3.5 A.4)")
        self.offset = offset


class _Short(Exception):
    """The bytes end inside a header or a value."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Walk:
    """The walk over one data set: ``buf`` holds its first ``have`` bytes, ``read`` gives the rest."""

    __slots__ = ("buf", "have", "read", "native", "first_fragment")

    def __init__(self, buf: memoryview, have: int, read: Reader | None, native: bool = False) -> None:
        self.buf = buf
        self.have = have
        self.read = read
        #: the transfer syntax is native: encapsulated Pixel Data at the top level is refused
        self.native = native
        #: (offset, length) of the top-level encapsulated Pixel Data's first fragment (the item
        #: after its Basic Offset Table), once framed
        self.first_fragment: tuple[int, int] | None = None

    def _unpack(self, st: struct.Struct, pos: int, end: int, what: str, owner: int = 0) -> tuple:
        """``st`` unpacked at ``pos``, within ``end``; what is cut off is said (``what``, formatted
        with ``owner``'s tag, only then)."""
        size = st.size
        if pos + size <= end:
            if pos + size <= self.have:
                return st.unpack_from(self.buf, pos)
            data = self.read(pos, size) if self.read is not None else b""
            if len(data) == size:
                return st.unpack(data)
            got = len(data)
        else:
            got = max(end - pos, 0)
        raise _Short(f"{what.format(_tag_text(owner))} at offset {pos} is cut off ({got} of {size} bytes)")

    def _zeros(self, pos: int, size: int) -> bool:
        if pos + size <= self.have:
            return not any(self.buf[pos:pos + size])
        return self.read is not None and not any(self.read(pos, size))

    def element(self, pos: int, end: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None, value length, value offset) of the element whose header is at ``pos``."""
        if implicit:
            group, number, length = self._unpack(IMPLICIT_HEAD, pos, end, "an element's header")
            vr = None
        else:
            group, number, vr, length = self._unpack(EXPLICIT_HEAD, pos, end, "an element's header")
        tag = group << 16 | number
        if group == 0xFFFE and tag >= ITEM:
            raise Unframed  # an item or a delimiter where an element belongs
        if implicit:
            return tag, None, length, pos + 8
        if vr in SHORT_VRS:
            return tag, vr, length, pos + 8
        if vr in LONG_VRS:
            (length,) = self._unpack(ULONG, pos + 8, end, "the header of {}", tag)
            return tag, vr, length, pos + 12
        raise Unframed  # an explicit VR not in the standard

    def elements(self, pos: int, end: int, implicit: bool, depth: int, until_item_end: bool,
                 collect: list[tuple[int, bytes | None, int, int]] | None = None) -> int:
        """Frame elements from ``pos``: up to ``end`` exactly, or -- in an undefined-length item --
        up to and past its Item Delimitation Item. The offset after them. ``collect`` is given
        (tag, VR, length, value offset) of each element of defined length at this level."""
        while True:
            if not until_item_end and pos == end:
                return pos
            if depth == 0 and end - pos < 8 and self._zeros(pos, end - pos):
                # A few zero bytes after the last element: padding, not an element cut off
                # (pydicom stops there too). No verdict.
                raise Unframed
            if until_item_end:
                group, number, _length = self._unpack(IMPLICIT_HEAD, pos, end, "an item's element")
                if group << 16 | number == ITEM_END:
                    return pos + 8
            tag, vr, length, start = self.element(pos, end, implicit)
            if length == UNDEFINED:
                if vr is not None and vr not in _UNDEFINED_OK:
                    raise Unframed
                if vr == b"OB" or vr == b"OW" or (vr is None and tag == _PIXEL_DATA):
                    if self.native and depth == 0 and tag == _PIXEL_DATA:
                        raise EncapsulatedInNative(pos)
                    pos = self.fragments(start, end, tag, top=depth == 0 and tag == _PIXEL_DATA)
                else:  # a sequence; an undefined-length UN holds one in implicit VR (CP-246)
                    pos = self.items(start, end, implicit or vr == b"UN", depth + 1, tag)
                continue
            if start + length > end:
                raise _Short(f"{_tag_text(tag)} at offset {pos} has a value of {length} bytes, "
                             f"{max(end - start, 0)} are left")
            if collect is not None:
                collect.append((tag, vr, length, start))
            pos = start + length

    def items(self, pos: int, end: int, implicit: bool, depth: int, owner: int) -> int:
        """An undefined-length sequence's items from ``pos``, to past its Sequence Delimitation Item."""
        if depth > _MAX_DEPTH:
            raise Unframed
        while True:
            if pos >= end:
                raise _Short(f"the sequence {_tag_text(owner)} has no end: the data set ends at offset {end} "
                             "before its Sequence Delimitation Item")
            group, number, length = self._unpack(IMPLICIT_HEAD, pos, end, "an item of {}", owner)
            tag = group << 16 | number
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM:
                # An element where the next item or the delimiter belongs: the sequence lost its
                # end (its delimiter), and a reader takes what follows for items -- garbage.
                raise _Short(f"the sequence {_tag_text(owner)} has no end: {_tag_text(tag)} at offset "
                             f"{pos - 8} stands where its next item or its Sequence Delimitation Item belongs")
            if length == UNDEFINED:
                pos = self.elements(pos, end, implicit, depth, until_item_end=True)
            elif pos + length > end:
                raise _Short(f"an item of {_tag_text(owner)} at offset {pos - 8} has {length} bytes, "
                             f"{max(end - pos, 0)} are left")
            else:
                pos += length

    def fragments(self, pos: int, end: int, owner: int, top: bool = False) -> int:
        """Encapsulated pixel data's items (defined lengths) from ``pos``, to past its delimiter
        (``top``: the data set's own Pixel Data, whose first fragment is noted)."""
        items = 0
        while True:
            if pos >= end:
                raise _Short(f"the encapsulated {_tag_text(owner)} has no end: the data set ends at offset "
                             f"{end} before its Sequence Delimitation Item")
            group, number, length = self._unpack(IMPLICIT_HEAD, pos, end, "a fragment of {}", owner)
            tag = group << 16 | number
            pos += 8
            if tag == SEQUENCE_END:
                return pos
            if tag != ITEM or length == UNDEFINED:
                raise Unframed
            if pos + length > end:
                raise _Short(f"a fragment of {_tag_text(owner)} at offset {pos - 8} has {length} bytes, "
                             f"{max(end - pos, 0)} are left")
            if top and items == 1:
                self.first_fragment = (pos, length)
            items += 1
            pos += length


def sequence_end(data: bytes | bytearray | memoryview, pos: int, implicit: bool) -> int:
    """The offset just past the undefined-length sequence whose items start at ``pos`` in ``data``.

    :raises Unframed: it cannot be framed exactly, or ``data`` ends first.
    """
    buf = memoryview(data)
    try:
        return _Walk(buf, len(buf), None).items(pos, len(buf), implicit, 1, 0)
    except _Short:
        raise Unframed from None


def sequence_items(value: bytes | bytearray | memoryview, implicit: bool) -> list[list[tuple[int, bytes | None, int, int]]]:
    """The items of a sequence from its value's bytes (of a defined-length sequence, or an
    undefined-length one with its Sequence Delimitation Item), each as the (tag, VR or None,
    length, value offset) of its own elements of defined length (nested sequences are
    stepped over).

    :raises Unframed: they cannot be framed exactly.
    """
    buf = memoryview(value)
    end = len(buf)
    walk = _Walk(buf, end, None)
    out: list[list[tuple[int, bytes | None, int, int]]] = []
    pos = 0
    try:
        while pos < end:
            group, number, length = walk._unpack(IMPLICIT_HEAD, pos, end, "an item")
            tag = group << 16 | number
            pos += 8
            if tag == SEQUENCE_END:
                if pos != end:
                    raise Unframed
                break
            if tag != ITEM:
                raise Unframed
            found: list[tuple[int, bytes | None, int, int]] = []
            if length == UNDEFINED:
                pos = walk.elements(pos, end, implicit, 1, until_item_end=True, collect=found)
            elif pos + length > end:
                raise Unframed
            else:
                pos = walk.elements(pos, pos + length, implicit, 1, until_item_end=False, collect=found)
            out.append(found)
    except (_Short, struct.error):
        raise Unframed from None
    return out


def truncation(data: bytes | bytearray | memoryview, total: int, *, implicit: bool, start: int = 0,
               read: Reader | None = None, native: bool = False,
               fragment: list[tuple[int, int]] | None = None) -> str | None:
    """What cuts the little endian data set of ``total`` bytes short, or None.

    :param data: the data set's first bytes (all of it, or a prefix: see ``read``).
    :param implicit: implicit VR (else explicit VR), as the transfer syntax says; from the start,
        the first element's VR decides, as it does for pydicom's reader.
    :param start: where an element starts from which to check (an earlier scan framed the rest).
    :param read: ``read(offset, size)`` gives the bytes at ``offset`` past ``data`` (fewer at the
        end); None when ``data`` is all there is.
    :param native: the transfer syntax is a native (uncompressed) one.
    :param fragment: given, (offset, length) of the first fragment of the data set's encapsulated
        Pixel Data is appended to it, when the walk framed one.
    :returns: None when every element ends within the bytes, or when the data set cannot be
        framed exactly (no verdict, see the module docstring); else what runs past the end.
    :raises EncapsulatedInNative: ``native``, and the top-level Pixel Data has an undefined length.
    """
    buf = memoryview(data)
    have = min(len(buf), total)
    if start == 0 and have >= 6:
        # As pydicom reads it: a data set whose first element's VR is not two capital letters
        # is read as implicit VR whatever its transfer syntax says, and one whose first element's
        # is, as explicit VR (a sender's mistake that every reader of the file will make too).
        implicit = not (0x40 < buf[4] < 0x5B and 0x40 < buf[5] < 0x5B)
    pos = _fast(buf, have, start, implicit)
    if pos == total:
        return None
    walk = _Walk(buf, have, read, native)
    try:
        walk.elements(pos, total, implicit, 0, until_item_end=False)
    except _Short as short:
        return short.text
    except (Unframed, struct.error):
        return None
    finally:
        if fragment is not None and walk.first_fragment is not None:
            fragment.append(walk.first_fragment)
    return None


def _fast(buf: memoryview, end: int, pos: int, implicit: bool) -> int:
    """Frame top-level elements of defined length whose headers are in ``buf[:end]``; the offset
    of the first one it leaves to the walk (undefined length, a value past ``end``, anything odd)."""
    if implicit:
        unpack = IMPLICIT_HEAD.unpack_from
        while pos + 8 <= end:
            group, _number, length = unpack(buf, pos)
            after = pos + 8 + length
            if after > end or group == 0xFFFE or length == UNDEFINED:
                return pos
            pos = after
        return pos
    unpack = EXPLICIT_HEAD.unpack_from
    ulong = ULONG.unpack_from
    short, long_ = SHORT_VRS, LONG_VRS
    while pos + 12 <= end:
        group, _number, vr, length = unpack(buf, pos)
        if vr in short:
            after = pos + 8 + length
        elif vr in long_:
            (length,) = ulong(buf, pos + 8)
            after = pos + 12 + length
            if length == UNDEFINED:
                return pos
        else:
            return pos
        if after > end or group == 0xFFFE:
            return pos
        pos = after
    return pos
