"""Reading a data set's header for the archive's index from its first bytes.

The elements the index needs are found by a scan of the elements' framing
(tag, VR, length) in little endian data sets, values converted by pydicom
(:func:`~dimsekit_plugins.archive.index.header_values`); pydicom's reader
reads whatever the scan cannot frame.  See :func:`header_from_prefix`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import io
import struct
from collections.abc import Callable
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from dimsekit import framing
from dimsekit_plugins.archive import index


class HeaderJob:
    """Reading an instance's header for the index, maybe in a pool thread while the rest arrives.

    :meth:`run` may be called by a pool job (a large data set's, see
    :meth:`IncomingInstance._create_and_read`); the commit's worker calls
    :meth:`result`: it takes the result, waits for a run in progress, or --
    when no thread has started it (a busy pool, or a small data set) -- claims
    the job and does the work itself, so a commit never waits on a queued job.
    """

    __slots__ = ("_function", "_future")

    def __init__(self, function: Callable[[], Any]) -> None:
        self._function = function
        self._future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run(self) -> None:
        if not self._future.set_running_or_notify_cancel():
            return  # result() took it over
        try:
            self._future.set_result(self._function())
        except BaseException as exc:  # handed to result()
            self._future.set_exception(exc)

    def done(self) -> bool:
        return self._future.done()

    def result(self) -> Any:
        if self._future.cancel():  # nobody started it: do it here
            return self._function()
        return self._future.result()


@functools.lru_cache(maxsize=8)
def _header_tags(keywords: tuple[str, ...]) -> tuple[list[int], int]:
    """The tags of the index's keywords, and the last of them."""
    tags = [int(tag_for_keyword(keyword)) for keyword in keywords]  # type: ignore[arg-type]
    return tags, max(tags)


# -- finding the index's elements in a little endian data set ---------------------------------
#
# pydicom's reader costs ~3 us per element in Python, for every element up to
# the last one the index needs (~25 in a typical image): most of a small
# instance's header time.  The scan below only frames elements -- tag, VR,
# length -- and hands those the index needs to pydicom as the raw elements
# its own reader would have made (values still converted by pydicom or the
# index's checked fast path).  Anything it does not frame exactly as pydicom
# would -- big endian, an unknown VR, a sequence the index reads, an
# undefined length it cannot skip, a length past the end -- gives None, and
# pydicom reads the data set as before.  A property test holds its result
# to pydicom's reading of the whole data set.

# The framing's constants are dimsekit.framing's (its truncation check walks the same).
_EXPLICIT_HEAD, _IMPLICIT_HEAD, _ULONG = framing.EXPLICIT_HEAD, framing.IMPLICIT_HEAD, framing.ULONG
_LONG_VRS, _SHORT_VRS = framing.LONG_VRS, framing.SHORT_VRS
_UNDEFINED = framing.UNDEFINED


class _Unframed(Exception):
    """The scan cannot frame the data set as pydicom would: pydicom reads it."""


def _element_head(buf: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR bytes or None, value length, value offset) of the element at ``pos``."""
    if implicit:
        group, element, length = _IMPLICIT_HEAD.unpack_from(buf, pos)
        return group << 16 | element, None, length, pos + 8
    group, element, vr, length = _EXPLICIT_HEAD.unpack_from(buf, pos)
    tag = group << 16 | element
    if vr in _SHORT_VRS:
        return tag, vr, length, pos + 8
    if vr in _LONG_VRS:
        (length,) = _ULONG.unpack_from(buf, pos + 8)
        return tag, vr, length, pos + 12
    raise _Unframed


def scan_header(
    buf: bytes, complete: bool, implicit: bool, wanted: frozenset[int], last: int, sequences: frozenset[int],
    framed: list[int] | None = None,
) -> dict[int, RawDataElement] | None:
    """The raw elements ``wanted`` of the little endian data set in ``buf``, as pydicom's
    reader would make them, reading up to the first element past ``last``; None when
    pydicom must read it (see above), or when ``buf`` -- not ``complete`` -- ends first.
    ``framed``, when given, is told where the elements it framed end (the truncation check
    goes on from there).
    """
    end = len(buf)
    pos = 0
    found: dict[int, RawDataElement] = {}
    try:
        while pos < end:
            tag, vr, length, start = _element_head(buf, pos, implicit)
            if tag > last:
                if framed is not None:
                    framed.append(pos)
                return found
            if length == _UNDEFINED:
                if vr is not None and vr != b"SQ" or tag in wanted and tag not in sequences:
                    raise _Unframed
                after = framing.sequence_end(buf, start, implicit)
                if tag in wanted:
                    # A sequence the index reads: pydicom makes its items from these bytes when
                    # asked (its reader would have read them at once), the delimiter ending them.
                    found[tag] = RawDataElement(
                        BaseTag(tag), None if vr is None else "SQ", length, buf[start:after], start, implicit, True,
                        True,
                    )
                pos = after
                continue
            pos = start + length
            if pos > end:
                raise _Unframed
            if tag in wanted:
                found[tag] = RawDataElement(
                    BaseTag(tag), None if vr is None else vr.decode("ascii"), length, buf[start:pos], start, implicit,
                    True, True,
                )
    except (_Unframed, framing.Unframed, struct.error):
        return None
    if complete and framed is not None:
        framed.append(pos)
    return found if complete else None


_int_gt = int.__gt__


@functools.lru_cache(maxsize=64)
def _syntax(transfer_syntax: str) -> tuple[bool, bool, bool]:
    """(a transfer syntax whose data set pydicom reads from the bytes as they are -- not deflated,
    little endian, implicit VR)."""
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax or syntax.is_deflated:
        return False, False, False
    return True, syntax.is_little_endian, syntax.is_implicit_VR


@functools.lru_cache(maxsize=8)
def _scan_sets(keywords: tuple[str, ...]) -> tuple[frozenset[int], frozenset[int]]:
    """The tags of the index's keywords, and those of them that are sequences."""
    tags, _last = _header_tags(keywords)
    sequences = frozenset(int(tag_for_keyword(spec.sequence)) for spec in index.ITEM_TABLES)  # type: ignore[arg-type]
    return frozenset(tags), sequences


def header_from_prefix(prefix: bytes, complete: bool, transfer_syntax: str,
                       framed: list[int] | None = None) -> dict[str, Any] | None:
    """The index values of a data set read from its first bytes, or None to read the file.

    A little endian data set is scanned (:func:`scan_header`); pydicom's reader
    reads the rest, and whatever the scan leaves to it.

    ``prefix`` holds the first bytes of a data set in ``transfer_syntax``
    (all of it when ``complete``).  None when they may not hold every element the index
    needs (the header goes on past them), for a deflated or unknown transfer
    syntax, or when pydicom cannot read them -- the caller then reads the file,
    which also gives the authoritative error.  ``framed``: see :func:`scan_header`.
    """
    readable, little_endian, implicit = _syntax(transfer_syntax)
    if not readable:
        return None
    tags, last = _header_tags(index.HEADER_KEYWORDS)
    if little_endian:
        wanted, sequences = _scan_sets(index.HEADER_KEYWORDS)
        found = scan_header(prefix, complete, implicit, wanted, last, sequences, framed)
        if found is not None:
            try:
                return index.header_values(None, elements=found)
            except Exception:
                pass  # pydicom's reader below gives the answer
    stream = io.BytesIO(prefix)
    try:
        dataset = read_dataset(
            stream, implicit, little_endian,
            stop_when=lambda tag, vr, length: _int_gt(tag, last),  # not BaseTag.__gt__, in Python
            specific_tags=tags,  # type: ignore[arg-type]
        )
        if not complete and stream.tell() >= len(prefix):
            return None  # stopped by the end of the prefix, not past the last element needed
        return index.header_values(dataset)
    except Exception:
        return None
