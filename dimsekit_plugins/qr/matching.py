"""C-FIND key matching (PS3.4 C.2.2.2) translated to SQL, as pure functions.

Each key of a C-FIND identifier becomes, by its VR and value, one of the
standard's matching kinds, and each kind becomes a SQL condition on the
column (a SQL expression) that holds that attribute:

=======================  ============================  =======================================
kind (PS3.4)             when                          SQL
=======================  ============================  =======================================
universal (C.2.2.2.3)    zero-length value, or only    no condition (the key is returned only)
                         ``*`` in a wild card VR
single value (C.2.2.2.1) any other value               ``col = ?``; PN: ``dk_pn_match(col, ?)``
list of UIDs (C.2.2.2.2) UI value with backslashes     ``col IN (?, ?, ...)``
wild card (C.2.2.2.4)    ``*`` or ``?`` in AE, CS, LO,   ``col GLOB ?`` (case-sensitive); PN:
                         LT, PN, SH, ST, UC, UR, UT     ``dk_pn_match(col, ?)``; ``?`` is one
                                                       *character*, not one byte of UTF-8
range (C.2.2.2.5)        ``-`` in DA, TM, DT            ``col >= ? AND col <= ?`` (either open)
numbers                  IS, DS, SL, SS, UL, US, FL,    ``col = ?`` with the number
                         FD, SV, UV
=======================  ============================  =======================================

A value made only of ``*`` matches everything, including entities whose
attribute is empty (the standard: an empty attribute matches a wild card of
``*`` only); every other condition excludes empty values (stored as NULL or '').

Stored values are what pydicom decoded (Unicode, whatever Specific Character
Set the instance used); query values are decoded the same way from the
request's Specific Character Set, so both sides compare as Unicode strings.

Dates (DA) are compared as stored: ``YYYYMMDD`` strings sort chronologically,
so a range is a plain string comparison that can use an index.  Times (TM)
and date-times (DT) come in several precisions, so they are compared through
SQL functions that normalise them (``dk_tm``, ``dk_dt``: the callers wrap the
column, e.g. ``dk_tm(st.study_time)``); :func:`normalise_time` does the same
to query values.

Combined date and time (PS3.4 C.2.2.2.5.1, when the requestor negotiated it,
PS3.4 C.5.1.1): :func:`combined_condition` matches a DA key and its TM key
as one date-time range -- Study Date ``20060705-20060707`` with Study Time
``1000-1800`` is from 2006-07-05 10:00 to 2006-07-07 18:00, not 10:00-18:00
on each of three days.

Person names (PS3.4 leaves PN wild card matching to the implementation): the
match is insensitive to case (``doe*`` finds ``DOE^JOHN``; non-ASCII letters
folded too, ``müller`` finds ``MÜLLER``); trailing empty components are
ignored (``DOE^JOHN`` finds ``DOE^JOHN^^``); and a query without ``=`` is
matched against the whole value *and* against each component group, so
``山田*`` finds ``Yamada^Tarou=山田^太郎``.  ``dk_pn_match`` does this; call
:func:`register_functions` on every connection the conditions run on.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from dimsekit.datasets import is_several

__all__ = [
    "Condition",
    "condition_for",
    "where",
    "WILDCARD_VRS",
    "RANGE_VRS",
    "NUMBER_VRS",
    "normalise_date",
    "normalise_time",
    "normalise_datetime",
    "stored_time",
    "stored_datetime",
    "fold",
    "pn_match",
    "register_functions",
    "MatchingError",
    "combined_condition",
]

#: VRs for which ``*`` and ``?`` are wild cards (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: VRs that take range matching (PS3.4 C.2.2.2.5).
RANGE_VRS = frozenset({"DA", "TM", "DT"})
#: VRs matched as numbers (single value matching only).
NUMBER_VRS = frozenset({"IS", "DS", "SL", "SS", "UL", "US", "FL", "FD", "SV", "UV"})
_INTEGER_VRS = frozenset({"IS", "SL", "SS", "UL", "US", "SV", "UV"})


class MatchingError(ValueError):
    """A key value the matching rules cannot use (a malformed range, date or number)."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One SQL condition with its parameters; ``sql`` is empty for universal matching."""

    sql: str
    params: tuple[object, ...] = ()


def fold(text: str) -> str:
    """The case-folded form person names are compared in (any script, not only ASCII)."""
    return text.lower()


# -- dates and times ------------------------------------------------------------------------------


def normalise_date(value: str) -> str:
    """A DA value as ``YYYYMMDD`` (accepts the old ``YYYY.MM.DD`` form)."""
    digits = value.strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit() or not (1 <= int(digits[4:6]) <= 12 and 1 <= int(digits[6:]) <= 31):
        raise MatchingError(f"{value!r} is not a date (YYYYMMDD)")
    return digits


def normalise_time(value: str, *, end: bool = False) -> str:
    """A TM value as ``HHMMSS.FFFFFF``; missing parts are 0 (or the latest
    value of that precision when ``end`` is true, for the upper bound of a range)."""
    text = value.strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        raise MatchingError(f"{value!r} is not a time (HHMMSS.FFFFFF)")
    if int(whole[:2]) > 23 or (len(whole) >= 4 and int(whole[2:4]) > 59) or (len(whole) == 6 and int(whole[4:]) > 60):
        raise MatchingError(f"{value!r} is not a time of day")
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
    if len(date_part) not in (4, 6, 8) or not date_part.isdigit():
        raise MatchingError(f"{value!r} is not a date-time")
    if len(date_part) == 4:
        date_part += "1231" if end else "0101"
    elif len(date_part) == 6:
        date_part += "31" if end else "01"
    time = normalise_time(time_part or ("23" if end else "00"), end=end)
    return date_part + time


def stored_time(value: str | None) -> str | None:
    """A stored TM value as ``HHMMSS.FFFFFF`` for comparison (``dk_tm``); None when unusable."""
    if not value:
        return None
    try:
        return normalise_time(value)
    except MatchingError:
        return None


def stored_datetime(value: str | None) -> str | None:
    """A stored DT value normalised for comparison (``dk_dt``); None when unusable."""
    if not value:
        return None
    try:
        return normalise_datetime(value)
    except MatchingError:
        return None


# -- person names ----------------------------------------------------------------------------------


def _pn_tidy(name: str) -> str:
    """Trailing empty components and groups, and padding, removed: ``DOE^JOHN^^=`` -> ``DOE^JOHN``."""
    groups = [group.strip(" ").rstrip("^").rstrip(" ") for group in name.strip(" ").split("=")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


@lru_cache(maxsize=512)
def _pn_pattern(pattern: str) -> tuple[re.Pattern[str], bool]:
    tidy = _pn_tidy(fold(pattern))
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in tidy)
    return re.compile(regex, re.DOTALL), "=" in tidy


def pn_match(value: str | None, pattern: str) -> int:
    """1 if the stored person name ``value`` matches the query ``pattern``, else 0.

    Case-insensitive; ``*`` any characters, ``?`` one character; a pattern
    without ``=`` may match the whole name or any one component group.
    """
    if value is None or pattern is None:
        return 0
    regex, grouped = _pn_pattern(pattern)
    name = fold(value)
    if regex.fullmatch(_pn_tidy(name)):
        return 1
    if not grouped and "=" in name:
        return int(any(regex.fullmatch(_pn_tidy(group)) for group in name.split("=")))
    return 0


def register_functions(conn: sqlite3.Connection) -> None:
    """Make ``dk_pn_match``, ``dk_tm`` and ``dk_dt`` available to SQL on ``conn``."""
    conn.create_function("dk_pn_match", 2, pn_match, deterministic=True)
    conn.create_function("dk_tm", 1, stored_time, deterministic=True)
    conn.create_function("dk_dt", 1, stored_datetime, deterministic=True)


# -- conditions --------------------------------------------------------------------------------------


#: SQLite's longest LIKE or GLOB pattern, in bytes (SQLITE_MAX_LIKE_PATTERN_LENGTH, as it ships)
GLOB_PATTERN_LIMIT = 50_000


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
    if vr == "DT":
        if value.count("-") != 1:
            raise MatchingError(f"date-time range {value!r} with a negative offset is not supported")
    elif value.count("-") != 1:
        raise MatchingError(f"range {value!r} has more than one '-'")
    low, _, high = value.partition("-")
    parts, params = [], []
    if low.strip():
        parts.append(f"{column} >= ?")
        params.append(_normalise(vr, low, end=False))
    if high.strip():
        parts.append(f"{column} <= ?")
        params.append(_normalise(vr, high, end=True))
    if not parts:
        raise MatchingError(f"range {value!r} has neither bound")
    if len(params) == 2 and params[0] > params[1]:
        raise MatchingError(f"range {value!r} ends before it starts")
    parts.append(f"{column} != ''")
    return Condition(" AND ".join(parts), tuple(params))


def _normalise(vr: str, value: str, *, end: bool) -> str:
    if vr == "DA":
        return normalise_date(value)
    if vr == "TM":
        return normalise_time(value, end=end)
    return normalise_datetime(value, end=end)


def _number(vr: str, text: str) -> int | float:
    try:
        if vr in _INTEGER_VRS:
            return int(text.strip())
        return float(text.strip())
    except ValueError:
        raise MatchingError(f"{text!r} is not a number ({vr})") from None


def condition_for(column: str, vr: str, value: object) -> Condition:
    """The SQL condition for one key of a C-FIND identifier.

    :param column: the SQL expression holding the attribute (TM and DT
        columns wrapped in ``dk_tm()`` / ``dk_dt()`` by the caller).
    :param vr: the attribute's VR.
    :param value: the key's value from the identifier (str, list, or None/empty).
    :raises MatchingError: the value cannot be matched (bad range, date or number).
    """
    if value is None:
        return Condition("")
    if is_several(value):
        values = [str(v) for v in value if str(v) != ""]
        text = "\\".join(values)
    else:
        text = str(value)
    if vr not in ("LT", "ST", "UT"):
        text = text.strip(" ")
    if vr == "UI":
        text = text.strip("\x00 ")
    if text == "" or (vr in WILDCARD_VRS and set(text) == {"*"}):
        return Condition("")  # universal matching; a lone "*" also matches empty values
    if vr == "UI":
        uids = [u.strip("\x00 ") for u in text.split("\\") if u.strip("\x00 ")]
        if len(uids) == 1:
            return Condition(f"{column} = ?", (uids[0],))
        placeholders = ", ".join("?" for _ in uids)
        return Condition(f"{column} IN ({placeholders})", tuple(uids))
    if vr in RANGE_VRS and "-" in text:
        return _range(column, vr, text)
    if vr == "DA":
        return Condition(f"{column} = ?", (normalise_date(text),))
    if vr in ("TM", "DT"):
        low, high = _normalise(vr, text, end=False), _normalise(vr, text, end=True)
        return Condition(f"{column} >= ? AND {column} <= ?", (low, high))
    if vr in NUMBER_VRS:
        return Condition(f"{column} = ?", (_number(vr, text),))
    if vr == "PN":
        return Condition(f"dk_pn_match({column}, ?)", (text,))
    if vr in WILDCARD_VRS and ("*" in text or "?" in text):
        pattern = _glob_pattern(text)
        if len(pattern.encode("utf-8")) > GLOB_PATTERN_LIMIT:
            # SQLite refuses it ("LIKE or GLOB pattern too complex"): said here, as a value
            # that cannot be matched, not as a failure of the query
            raise MatchingError(f"a wild card value of {len(text):,} characters is too long to match "
                                f"(at most {GLOB_PATTERN_LIMIT:,} bytes)")
        return Condition(f"{column} GLOB ?", (pattern,))
    return Condition(f"{column} = ?", (text,))


def _date_bounds(value: str) -> tuple[str | None, str | None]:
    if "-" not in value:
        day = normalise_date(value)
        return day, day
    if value.count("-") != 1:
        raise MatchingError(f"range {value!r} has more than one '-'")
    low, _, high = (part.strip() for part in value.partition("-"))
    if not low and not high:
        raise MatchingError(f"range {value!r} has neither bound")
    return (normalise_date(low) if low else None), (normalise_date(high) if high else None)


def _time_bounds(value: str) -> tuple[str | None, str | None]:
    if "-" not in value:
        return normalise_time(value), normalise_time(value, end=True)
    if value.count("-") != 1:
        raise MatchingError(f"range {value!r} has more than one '-'")
    low, _, high = (part.strip() for part in value.partition("-"))
    if not low and not high:
        raise MatchingError(f"range {value!r} has neither bound")
    return (normalise_time(low) if low else None), (normalise_time(high, end=True) if high else None)


_MIDNIGHT, _LAST_MOMENT = "000000.000000", "235959.999999"


def combined_condition(date_column: str, time_column: str, date_value: str, time_value: str) -> Condition:
    """A DA key and its TM key matched as one date-time range (combined date-time matching).

    The range runs from the lower date at the lower time (midnight when the
    time range has no lower bound) to the upper date at the upper time (the
    end of the day when it has no upper bound); an open date side leaves that
    side open.  A single date or time is a range of its whole precision.  An
    entity with a date but no (usable) time matches when any moment of its
    day falls in the range.

    :param date_column: SQL expression of the stored DA value (``YYYYMMDD``).
    :param time_column: SQL expression of the stored TM value (raw; normalised with ``dk_tm``).
    :param date_value: the DA key's value (not universal).
    :param time_value: the TM key's value (not universal).
    :raises MatchingError: a malformed date, time or range, or one that ends before it starts.
    """
    date_low, date_high = _date_bounds(date_value.strip())
    time_low, time_high = _time_bounds(time_value.strip())
    low = date_low + (time_low or _MIDNIGHT) if date_low else None
    high = date_high + (time_high or _LAST_MOMENT) if date_high else None
    if low is not None and high is not None and low > high:
        raise MatchingError(f"date-time range {date_value!r} {time_value!r} ends before it starts")
    first = f"({date_column} || COALESCE(dk_tm({time_column}), '{_MIDNIGHT}'))"
    last = f"({date_column} || COALESCE(dk_tm({time_column}), '{_LAST_MOMENT}'))"
    parts: list[str] = []
    params: list[object] = []
    if low is not None:
        parts += [f"{date_column} >= ?", f"{last} >= ?"]  # the plain date bound can use an index
        params += [date_low, low]
    if high is not None:
        parts += [f"{date_column} <= ?", f"{first} <= ?"]
        params += [date_high, high]
    parts.append(f"{date_column} != ''")
    return Condition(" AND ".join(parts), tuple(params))


def where(conditions: Iterable[Condition]) -> tuple[str, tuple[object, ...]]:
    """AND the non-empty conditions together: (``"WHERE ..."`` or ``""``, params)."""
    parts, params = [], []
    for condition in conditions:
        if condition.sql:
            parts.append(f"({condition.sql})")
            params.extend(condition.params)
    return ("WHERE " + " AND ".join(parts) if parts else ""), tuple(params)
