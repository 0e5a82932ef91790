"""C-FIND key matching (PS3.4 C.2.2.2) translated to SQL, as pure functions.

Each key of a C-FIND identifier becomes, by its VR and value, one of the
standard's matching kinds, and each kind becomes a SQL condition on the
column that holds that attribute:

=======================  ============================  =======================================
kind (PS3.4)             when                          SQL
=======================  ============================  =======================================
universal (C.2.2.2.3)    zero-length value             no condition (the key is returned only)
single value (C.2.2.2.1) any other value               ``col = ?`` (PN: case-insensitive)
list of UIDs (C.2.2.2.2) UI value with backslashes     ``col IN (?, ?, ...)``
wild card (C.2.2.2.4)    ``*`` or ``?`` in AE, CS, LO,   ``col GLOB ?`` (PN: ``LIKE``), ``?`` is
                         LT, PN, SH, ST, UC, UR, UT     one *character*, not one byte
range (C.2.2.2.5)        ``-`` in DA, TM, DT            ``col >= ? AND col <= ?`` (either open)
=======================  ============================  =======================================

A value made only of ``*`` matches everything, including entities whose
attribute is empty (the standard: an empty attribute matches a wild card of
``*`` only); every other condition excludes empty values.

Dates, times and date-times are stored normalised (DA ``YYYYMMDD``, TM
``HHMMSS.FFFFFF`` without separators, padded) so that string comparison is
chronological; :func:`normalise_time` does the same to query values.

Person names: PS3.4 allows literal PN matching that is insensitive to case;
we match PN case-insensitively, which is what users of other archives expect
(``DOE*`` finds ``Doe^John``).  SQLite's LIKE folds ASCII case only, so
names are also stored and compared upper-cased (:func:`fold`), which folds
non-ASCII letters too.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Condition",
    "condition_for",
    "WILDCARD_VRS",
    "RANGE_VRS",
    "normalise_date",
    "normalise_time",
    "normalise_datetime",
    "fold",
    "MatchingError",
]

#: VRs for which ``*`` and ``?`` are wild cards (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: VRs that take range matching (PS3.4 C.2.2.2.5).
RANGE_VRS = frozenset({"DA", "TM", "DT"})


class MatchingError(ValueError):
    """A key value the matching rules cannot use (a malformed range or date)."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One SQL condition with its parameters; ``sql`` is empty for universal matching."""

    sql: str
    params: tuple[object, ...] = ()


def fold(text: str) -> str:
    """The case-folded form names are stored and compared in."""
    return text.upper()


def normalise_date(value: str) -> str:
    """A DA value as ``YYYYMMDD`` (accepts the old ``YYYY.MM.DD`` form)."""
    digits = value.strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        raise MatchingError(f"{value!r} is not a date (YYYYMMDD)")
    return digits


def normalise_time(value: str, *, end: bool = False) -> str:
    """A TM value as ``HHMMSS.FFFFFF``; missing parts are 0 (or the latest
    value of that precision when ``end`` is true, for the upper bound of a range)."""
    text = value.strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        raise MatchingError(f"{value!r} is not a time (HHMMSS.FFFFFF)")
    filler = "595959" if end else "000000"
    whole = whole + filler[len(whole):]
    if fraction:
        fraction = (fraction + ("9" if end else "0") * 6)[:6]
    else:
        fraction = "999999" if end else "000000"
    return f"{whole}.{fraction}"


def normalise_datetime(value: str, *, end: bool = False) -> str:
    """A DT value as ``YYYYMMDDHHMMSS.FFFFFF`` (offset ignored)."""
    text = value.strip()
    for sign in ("+", "-"):
        index = text.find(sign, 4)
        if index != -1:
            text = text[:index]
    date_part, time_part = text[:8], text[8:]
    if len(date_part) < 4 or not date_part.isdigit():
        raise MatchingError(f"{value!r} is not a date-time")
    date_part = date_part + ("1231"[len(date_part) - 4:] if end else "0101"[len(date_part) - 4:])
    if len(date_part) == 6:
        date_part += "31" if end else "01"
    time = normalise_time(time_part or ("23" if end else "00"), end=end)
    return date_part + time


def _like_pattern(value: str) -> str:
    """A DICOM wild card pattern as a LIKE pattern with ``\\`` as escape."""
    out = []
    for ch in value:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "%_\\":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _glob_pattern(value: str) -> str:
    """A DICOM wild card pattern as a SQLite GLOB pattern (``[`` escaped as ``[[]``)."""
    out = []
    for ch in value:
        if ch in "*?":
            out.append(ch)
        elif ch == "[":
            out.append("[[]")
        elif ch == "]":
            out.append("[]]")
        else:
            out.append(ch)
    return "".join(out)


def _range(column: str, vr: str, value: str) -> Condition:
    low, _, high = value.partition("-")
    if vr == "DT" and value.count("-") > 1:
        raise MatchingError(f"date-time range {value!r} with an offset is not supported")
    normalise = {"DA": lambda v, end: normalise_date(v), "TM": normalise_time, "DT": normalise_datetime}[vr]
    parts, params = [], []
    if low.strip():
        parts.append(f"{column} >= ?")
        params.append(normalise(low, end=False))
    if high.strip():
        parts.append(f"{column} <= ?")
        params.append(normalise(high, end=True))
    if not parts:
        raise MatchingError(f"range {value!r} has neither bound")
    parts.append(f"{column} != ''")
    return Condition(" AND ".join(parts), tuple(params))


def condition_for(column: str, vr: str, value: object) -> Condition:
    """The SQL condition for one key of a C-FIND identifier.

    :param column: the SQL expression holding the attribute (stored normalised:
        dates/times as above, PN folded with :func:`fold`).
    :param vr: the attribute's VR.
    :param value: the key's value from the identifier (str, list, or None/empty).
    :raises MatchingError: the value cannot be matched (bad range or date).
    """
    if value is None:
        return Condition("")
    if isinstance(value, list | tuple):
        values = [str(v) for v in value if str(v) != ""]
        text = "\\".join(values)
    else:
        text = str(value)
    if text == "" or (vr in WILDCARD_VRS and set(text) == {"*"}):
        return Condition("")  # universal matching; a lone "*" also matches empty values
    if vr == "UI" and "\\" in text:
        uids = [u.strip() for u in text.split("\\") if u.strip()]
        placeholders = ", ".join("?" for _ in uids)
        return Condition(f"{column} IN ({placeholders})", tuple(uids))
    if vr in RANGE_VRS and "-" in text:
        return _range(column, vr, text)
    if vr in RANGE_VRS:
        normalise = {"DA": lambda v: normalise_date(v), "TM": normalise_time, "DT": normalise_datetime}[vr]
        if vr == "DA":
            return Condition(f"{column} = ?", (normalise(text),))
        low, high = normalise(text), (normalise_time(text, end=True) if vr == "TM" else normalise_datetime(text, end=True))
        return Condition(f"{column} >= ? AND {column} <= ?", (low, high))
    if vr == "PN":
        text = fold(text)
    if vr in WILDCARD_VRS and ("*" in text or "?" in text):
        if vr == "PN":
            return Condition(f"{column} LIKE ? ESCAPE '\\'", (_like_pattern(text),))
        return Condition(f"{column} GLOB ?", (_glob_pattern(text),))
    if vr in WILDCARD_VRS or vr == "PN":
        text = text.rstrip(" ")  # trailing spaces are padding in these VRs
    return Condition(f"{column} = ?", (text,))


def where(conditions: Iterable[Condition]) -> tuple[str, tuple[object, ...]]:
    """AND the non-empty conditions together: (``"WHERE ..."`` or ``""``, params)."""
    parts, params = [], []
    for condition in conditions:
        if condition.sql:
            parts.append(f"({condition.sql})")
            params.extend(condition.params)
    return ("WHERE " + " AND ".join(parts) if parts else ""), tuple(params)


__all__ += ["where"]
