"""C-FIND SCP for the Patient Root and Study Root models (PS3.4 C.4.1).

The identifier becomes a :class:`~dimsekit_plugins.qr.model.Query`, the query
one SELECT over the index (:func:`find_sql`: matching in SQL, every condition
a parameter), and the rows stream back: a first small batch so that the first
match goes out at once, then larger ones, each batch fetched in the thread
pool while the reactor keeps serving.  Between two responses the SCP runner
lets the reactor run, so a C-CANCEL-RQ is seen before the next response.

Each response identifier holds exactly the keys of the request (values from
the index, zero-length when unknown; a sequence key its items as
:mod:`dimsekit_plugins.qr.sequences` says), Query/Retrieve Level, Retrieve AE Title
(this node's AE title) and, when some value is not plain ASCII or the
request named one, Specific Character Set (:func:`reply_charset`).

Combined date-time matching (Study Date with Study Time as one range) is
done on an association whose requestor asked for it in its SOP Class Extended
Negotiation sub-item (:func:`answer_extended_negotiation` accepts it; the
other options are refused).

Statuses: FF00 per match (FF01 when a requested optional key is not
supported: it is returned zero-length and not matched on), 0000 at the end,
A900 for an identifier that does not fit the model (Error Comment says why),
FE00 after a C-CANCEL, C000 when the index cannot be read.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, custom_encoders, encode_string, python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from dimsekit.errors import for_log
from dimsekit_plugins.qr.common import QRUnavailable, Shield, identifier_of, index_for, model_for
from dimsekit_plugins.qr.index import Cursor
from dimsekit_plugins.qr.matching import where
from dimsekit_plugins.qr.model import (
    FROM_CLAUSES,
    IdentifierError,
    Query,
    empty_element,
    parse_identifier,
)

__all__ = [
    "handle_find",
    "find_sql",
    "reply_charset",
    "response_identifier",
    "FIRST_BATCH",
    "answer_extended_negotiation",
    "combined_datetime_agreed",
    "COMBINED_DATETIME_BYTE",
]

_log = Logger(namespace="dimsekit.qr")

#: rows fetched first (small, so that the first response leaves quickly)
FIRST_BATCH = 16
#: rows fetched per thread-pool call after the first batch (``[plugins.queryretrieve] batch_size``)
batch_size = 256

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
_UTF8 = "ISO_IR 192"


#: PS3.4 Table C.5-1/C.5-2, the C-FIND Service-class-application-information field: item byte 2
#: (offset 1) is combined date and time matching.  Bytes 1 (relational queries), 3 (fuzzy
#: semantic matching of person names) and 4 (timezone query adjustment) are refused.
COMBINED_DATETIME_BYTE = 1


def answer_extended_negotiation(info: bytes) -> bytes | None:
    """Answer a C-FIND SOP Class Extended Negotiation sub-item (PS3.4 C.5.1.1).

    The answer has as many bytes as the request: combined date-time matching
    is accepted (1) when asked for, every other option is answered 0 (not
    supported).  None (no sub-item in the A-ASSOCIATE-AC) for an empty request.
    """
    if not info:
        return None
    answer = bytearray(len(info))
    if len(info) > COMBINED_DATETIME_BYTE and info[COMBINED_DATETIME_BYTE] == 1:
        answer[COMBINED_DATETIME_BYTE] = 1
    return bytes(answer)


def combined_datetime_agreed(association: Any, sop_class_uid: str) -> bool:
    """Whether combined date-time matching was agreed for ``sop_class_uid`` on ``association``."""
    negotiated = getattr(association, "negotiated", None)
    if negotiated is None:
        return False
    info = negotiated.extended.get(str(sop_class_uid), b"")
    return len(info) > COMBINED_DATETIME_BYTE and info[COMBINED_DATETIME_BYTE] == 1


def find_sql(query: Query) -> tuple[str, tuple[Any, ...], list[str]]:
    """The SELECT for a query: (sql, parameters, keywords of the selected columns)."""
    columns: list[str] = []
    expressions: list[str] = []
    select_params: list[Any] = []
    for key in query.keys:
        if key.supported and key.keyword not in columns:
            assert key.spec is not None and key.spec.column is not None
            sequence = query.sequences.get(key.keyword)
            if sequence is not None:
                expressions.append(sequence.select)  # the (matching) items as JSON text
                select_params.extend(sequence.params)
            elif key.spec.items is not None:
                continue  # a sequence key not planned (retrieve parsing): nothing to select
            else:
                expressions.append(key.spec.column)
            columns.append(key.keyword)
    clause, params = where(query.conditions)
    select = ", ".join(expressions) if expressions else "1"
    sql = f"SELECT {select} FROM {FROM_CLAUSES[query.level]} {clause}"
    return sql, (*select_params, *params), columns


#: the default repertoire: ASCII (pydicom writes it as Latin-1, which would put bytes
#: outside it under a character set that does not declare them)
_DEFAULT_TERMS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


def _holds(codec: str, char: str) -> bool:
    """The Python codec pydicom writes a character set with can write ``char``
    (pydicom's own encoders for the JIS sets, which take only their set's characters)."""
    encode = custom_encoders.get(codec)
    try:
        if encode is not None:
            encode(char)
        else:
            char.encode(codec)
    except (UnicodeError, LookupError, ValueError, IndexError):
        return False
    return True


def _encodable(texts: list[str], charset: list[str]) -> bool:
    """Every character of ``texts`` is in one of ``charset``'s character sets: pydicom
    writes a text in the first one that holds it, or in pieces, each in one that holds it.

    Not by asking pydicom's ``encode_string``, which warns and writes a replacement
    character for what it cannot encode: catching that warning took changing the
    process's warning filters, which the archive's threads share (a warning of theirs
    would have been raised as an error meanwhile).  Every term is one pydicom knows
    (:func:`reply_charset` sees to it)."""
    codecs = ["ascii" if term in _DEFAULT_TERMS else python_encoding[term] for term in charset]
    for char in {c for text in texts for c in text}:
        if not any(_holds(codec, char) for codec in codecs):
            return False
    return True


@functools.lru_cache(maxsize=64)
def _pydicom_writes_in(charset: tuple[str, ...]) -> bool:
    """pydicom's writer can write text in ``charset`` at all: pydicom 3.0's fails
    (IndexError) on every empty value or name component -- ``A\\``, ``DOE^JOHN^^`` -- in
    a character set whose first value is ISO 2022 IR 87 or IR 159 (no valid first value,
    PS3.3 C.12.1.1.2, but a peer may ask for it)."""
    try:
        encode_string("", convert_encodings(list(charset)))
    except Exception:
        return False
    return True


def reply_charset(request_charset: list[str], texts: list[str]) -> list[str] | None:
    """The Specific Character Set of a response identifier holding ``texts``.

    All plain ASCII: the request's (echoed, it may be absent).  Otherwise the
    request's when it can encode them all, else ISO_IR 192 (UTF-8): a value is
    never sent in a character set that cannot hold it.  A request's character set
    with a term pydicom does not know, or that pydicom cannot write in
    (:func:`_pydicom_writes_in`), is not used: the answer is in the default
    repertoire or UTF-8, not a failure to encode it.
    """
    if request_charset and any(request_charset) and (
        not all(term in _DEFAULT_TERMS or term in python_encoding for term in request_charset)
        or not _pydicom_writes_in(tuple(request_charset))
    ):
        request_charset = []  # a term no one knows is not echoed either (DICOM's Defined Terms only)
    if all(text.isascii() for text in texts):
        return request_charset or None
    if request_charset and any(request_charset) and _encodable(texts, request_charset):
        return request_charset
    return [_UTF8]


def _value(raw: Any, vr: str, multi: bool) -> Any:
    if raw is None or raw == "":
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return str(raw) if vr in ("IS", "DS") else raw
    text = str(raw)
    if (multi or "\\" in text) and vr not in ("LT", "ST", "UT"):
        parts = text.split("\\")
        return parts if len(parts) > 1 else parts[0]
    return text


#: the values of a response come from the archive's index, as they were received: pydicom is
#: not asked to check each again (its checks, with their regular expressions, took a third of
#: a C-FIND response's time; an odd value is sent as it is either way)
_AS_THEY_ARE = pydicom_config.IGNORE


def response_identifier(query: Query, row: tuple[Any, ...], columns: dict[str, int], retrieve_ae: str) -> Dataset:
    """The identifier of one match (see the module docstring)."""
    ds = Dataset()
    texts: list[str] = []
    for key in query.keys:
        keyword = key.keyword
        if keyword in ("RetrieveAETitle", "QueryRetrieveLevel"):
            continue
        if keyword == "InstanceAvailability":
            ds.add(DataElement(key.tag, "CS", "ONLINE", validation_mode=_AS_THEY_ARE))
            continue
        index = columns.get(keyword)
        if index is None:
            ds.add(empty_element(key))
            continue
        assert key.spec is not None
        sequence = query.sequences.get(keyword)
        if sequence is not None:
            items = sequence.sequence(row[index])
            texts.extend(sequence.texts(items))
            ds.add(DataElement(key.tag, "SQ", items))
            continue
        value = _value(row[index], key.vr, key.spec.multi)
        if value is not None and key.vr in _TEXT_VRS:
            texts.extend(value if isinstance(value, list) else [value])
        ds.add(DataElement(key.tag, key.vr, value, validation_mode=_AS_THEY_ARE))
    ds.add(DataElement(0x00080052, "CS", query.level, validation_mode=_AS_THEY_ARE))  # Query/Retrieve Level
    ds.add(DataElement(0x00080054, "AE", retrieve_ae, validation_mode=_AS_THEY_ARE))  # Retrieve AE Title
    charset = reply_charset(query.charset, texts)
    if charset:
        ds.add(DataElement(0x00080005, "CS", charset if len(charset) > 1 else charset[0],
                           validation_mode=_AS_THEY_ARE))  # Specific Character Set
    return ds


def handle_find(request: Any) -> AsyncIterator[tuple[Any, ...]]:
    """C-FIND handler (an async generator of responses)."""
    return _find(request)


async def _find(request: Any) -> AsyncIterator[tuple[Any, ...]]:
    model, refusal = model_for(request, "C-FIND")
    if model is None:
        yield refusal
        return
    ae = request.association.ae
    try:
        query = parse_identifier(identifier_of(request), model,
                                 combined_datetime=combined_datetime_agreed(request.association, request.sop_class_uid))
        index = index_for(ae)
    except IdentifierError as exc:
        _log.info("C-FIND from {peer} refused (A900): {why}", peer=request.association.remote_ae_title, why=for_log(exc))
        fields: dict[str, Any] = {"ErrorComment": str(exc)}
        if exc.offending:
            fields["OffendingElement"] = list(exc.offending)
        yield 0xA900, None, fields
        return
    except QRUnavailable as exc:
        _log.warn("C-FIND from {peer}: unable to process (C000): {why}", peer=request.association.remote_ae_title,
                  why=for_log(exc))
        yield 0xC000, None, {"ErrorComment": str(exc)}
        return
    sql, params, columns = find_sql(query)
    positions = {keyword: n for n, keyword in enumerate(columns)}
    pending = 0xFF01 if query.unsupported else 0xFF00
    retrieve_ae = ae.ae_title
    shield = Shield()
    cursor = None
    matches = 0
    try:
        try:
            cursor = await shield.wait(index.open(sql, params))
            size = FIRST_BATCH
            while True:
                rows = await shield.wait(cursor.fetch(size))
                if not rows:
                    break
                for row in rows:
                    matches += 1
                    yield pending, response_identifier(query, row, positions, retrieve_ae)
                if len(rows) < size:
                    break  # a short batch is the last one
                size = batch_size
        except CancelledError:
            if not request.cancelled:
                raise
            yield 0xFE00, None, {}
            return
    finally:
        await shield.settle()
        if cursor is None and isinstance(shield.outcome, Cursor):
            cursor = shield.outcome  # opened after a cancel arrived: close it too
        if cursor is not None:
            await cursor.close()
        _log.debug("C-FIND {qr_level}: {n} match(es)", qr_level=query.level, n=matches)
