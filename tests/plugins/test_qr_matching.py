"""PS3.4 C.2.2.2 matching rules as SQL (dimsekit_plugins.qr.matching), one table per rule and VR.

Every case runs its condition on a real SQLite table of stored values (as the
archive's index keeps them: decoded Unicode, dates as stored, NULL when
absent) and compares the rows that match with the expected ones.
"""

from __future__ import annotations

import re
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dimsekit_plugins.qr.matching import (
    Condition,
    MatchingError,
    condition_for,
    normalise_date,
    normalise_datetime,
    normalise_time,
    pn_match,
    register_functions,
    where,
)

#: id -> (pn, da, tm, dt, cs, lo, ui, is, lt)
ROWS = {
    1: ("DOE^JOHN", "20240105", "101530", "20240105101530", "CT", "ACC1", "1.2.3.1", 1, "text *star*"),
    2: ("Doe^Jane^^", "20240210", "0830", "20240210083000.123456", "MR", "acc2", "1.2.3.2", 2, "plain"),
    3: ("Müller^Jürgen", "20231231", "235959.5", "2023123123", "CR", "ACC3", "1.2.3.3", 10, None),
    4: ("Yamada^Tarou=山田^太郎=やまだ^たろう", "19991231", "00", "1999", "US", "A[1]", "1.2.3.4", None, "x"),
    5: ("MÜLLER^JÜRGEN", None, None, None, None, None, "1.2.3.5", 5, None),
    6: (None, "", "", "", "", "", "1.2.3.6", 0, ""),
    7: ("O'Brien^Seán", "20240105", "1015", "20240105", "SR", "ACC_7", "1.2.3.17", 7, None),
}

COLUMNS = ("pn", "da", "tm", "dt", "cs", "lo", "ui", "num", "lt")
VR_OF = {"pn": "PN", "da": "DA", "tm": "TM", "dt": "DT", "cs": "CS", "lo": "LO", "ui": "UI", "num": "IS", "lt": "LT"}
#: the SQL expression each column is matched through (times normalised by the registered functions)
EXPRESSION = {"tm": "dk_tm(tm)", "dt": "dk_dt(dt)"}


@pytest.fixture(scope="module")
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    register_functions(conn)
    conn.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, {', '.join(COLUMNS)})")
    conn.executemany(
        f"INSERT INTO t VALUES (?, {', '.join('?' for _ in COLUMNS)})",
        [(key, *values) for key, values in ROWS.items()],
    )
    return conn


def matching(db: sqlite3.Connection, column: str, value: object) -> set[int]:
    condition = condition_for(EXPRESSION.get(column, column), VR_OF[column], value)
    clause, params = where([condition])
    return {row[0] for row in db.execute(f"SELECT id FROM t {clause}", params)}


ALL = set(ROWS)

# (column, query value, ids expected)
UNIVERSAL = [
    ("pn", "", ALL),
    ("pn", None, ALL),
    ("pn", "*", ALL),          # a lone "*" is universal: empty/absent values match too
    ("pn", "**", ALL),
    ("cs", "*", ALL),
    ("da", "", ALL),
    ("tm", "", ALL),
    ("ui", "", ALL),
    ("num", "", ALL),
    ("lo", [], ALL),
]

SINGLE_VALUE = [
    # PN: insensitive to case (any script), trailing empty components ignored, per component group
    ("pn", "DOE^JOHN", {1}),
    ("pn", "doe^john", {1}),
    ("pn", "DOE^JANE", {2}),               # stored "Doe^Jane^^"
    ("pn", "Doe^Jane^^", {2}),
    ("pn", "müller^jürgen", {3, 5}),       # ISO_IR 100 / non-ASCII letters folded
    ("pn", "MÜLLER^JÜRGEN", {3, 5}),
    ("pn", "山田^太郎", {4}),                # an ideographic component group alone
    ("pn", "やまだ^たろう", {4}),
    ("pn", "yamada^tarou", {4}),
    ("pn", "Yamada^Tarou=山田^太郎=やまだ^たろう", {4}),  # the whole value
    ("pn", "Yamada^Tarou=山田^花子", set()),            # "=" in the query: whole value only
    ("pn", "DOE", set()),                  # single value: not a prefix match
    ("pn", "o'brien^seán", {7}),
    # CS / LO: exact, case-sensitive, padding ignored
    ("cs", "CT", {1}),
    ("cs", "ct", set()),
    ("cs", "CT ", {1}),
    ("lo", "ACC1", {1}),
    ("lo", "acc2", {2}),
    ("lo", "ACC2", set()),
    ("lo", "A[1]", {4}),
    ("lo", "ACC_7", {7}),
    # UI: exact
    ("ui", "1.2.3.1", {1}),
    ("ui", "1.2.3.1\x00", {1}),           # UI padding is a NUL
    ("ui", "1.2.3", set()),
    # DA: exact date (old ACR-NEMA form accepted)
    ("da", "20240105", {1, 7}),
    ("da", "2024.01.05", {1, 7}),
    ("da", "19991231", {4}),
    # TM: a time matches every stored time within its precision
    ("tm", "10", {1, 7}),                  # 10:00:00 - 10:59:59.999999
    ("tm", "1015", {1, 7}),
    ("tm", "101530", {1}),
    ("tm", "0830", {2}),
    ("tm", "235959", {3}),
    ("tm", "235959.5", {3}),
    ("tm", "235959.4", set()),
    ("tm", "00", {4}),
    # DT
    ("dt", "20240105", {1, 7}),
    ("dt", "2024", {1, 2, 7}),
    ("dt", "1999", {4}),
    # IS: as a number
    ("num", "10", {3}),
    ("num", " 010 ", {3}),
    ("num", "0", {6}),
]

LIST_OF_UIDS = [
    ("ui", "1.2.3.1\\1.2.3.3", {1, 3}),
    ("ui", ["1.2.3.2", "1.2.3.17", "9.9"], {2, 7}),
    ("ui", "1.2.3.1\\", {1}),
]

WILD_CARD = [
    # PN: case-insensitive, "?" is one character (not one UTF-8 byte)
    ("pn", "DOE*", {1, 2}),
    ("pn", "doe^j*", {1, 2}),
    ("pn", "*JOHN", {1}),
    ("pn", "D?E^JOHN", {1}),
    ("pn", "M?LLER*", {3, 5}),             # ü is one character
    ("pn", "M??LLER*", set()),
    ("pn", "m*r^j?rgen", {3, 5}),
    ("pn", "山田*", {4}),                   # matches a component group
    ("pn", "山?^太郎", {4}),
    ("pn", "*たろう", {4}),
    ("pn", "YAMADA*", {4}),
    ("pn", "*=山田*", {4}),
    ("pn", "?", set()),
    ("pn", "*O*", {1, 2, 4, 7}),
    ("pn", "o'*", {7}),
    # CS / LO / LT: case-sensitive; GLOB metacharacters in data are literal
    ("cs", "C*", {1, 3}),
    ("cs", "?R", {2, 3, 7}),
    ("cs", "c*", set()),
    ("lo", "ACC?", {1, 3}),
    ("lo", "A[1*", {4}),
    ("lo", "*_*", {7}),
    ("lo", "acc*", {2}),
    ("lt", "*\\*star\\**", set()),          # backslash is not an escape
    ("lt", "text*", {1}),
]

RANGES = [
    ("da", "20240101-20240131", {1, 7}),
    ("da", "20240101-", {1, 2, 7}),
    ("da", "-20000101", {4}),
    ("da", "20231231-20231231", {3}),
    ("da", "2023.12.31-2024.01.05", {1, 3, 7}),
    ("tm", "0800-1100", {1, 2, 7}),
    ("tm", "2359-", {3}),
    ("tm", "-0830", {2, 4}),               # "-0830" includes 08:30:59.999999
    ("tm", "101530-101530", {1}),
    ("dt", "2024-", {1, 2, 7}),
    ("dt", "20231231-20240105", {1, 3, 7}),
    ("dt", "-1999", {4}),
]


def _ids(cases):
    return [f"{c[0]}={c[1]!r}" for c in cases]


@pytest.mark.parametrize(("column", "value", "expected"), UNIVERSAL, ids=_ids(UNIVERSAL))
def test_universal_matching(db, column, value, expected):
    assert condition_for(column, VR_OF[column], value).sql == ""
    assert matching(db, column, value) == expected


@pytest.mark.parametrize(("column", "value", "expected"), SINGLE_VALUE, ids=_ids(SINGLE_VALUE))
def test_single_value_matching(db, column, value, expected):
    assert matching(db, column, value) == expected


@pytest.mark.parametrize(("column", "value", "expected"), LIST_OF_UIDS, ids=_ids(LIST_OF_UIDS))
def test_list_of_uid_matching(db, column, value, expected):
    assert matching(db, column, value) == expected


@pytest.mark.parametrize(("column", "value", "expected"), WILD_CARD, ids=_ids(WILD_CARD))
def test_wild_card_matching(db, column, value, expected):
    assert matching(db, column, value) == expected


@pytest.mark.parametrize(("column", "value", "expected"), RANGES, ids=_ids(RANGES))
def test_range_matching(db, column, value, expected):
    assert matching(db, column, value) == expected


BAD = [
    ("da", "2024-01-05"),       # two '-'
    ("da", "20240"),
    ("da", "-"),
    ("da", "20240201-20240101"),  # ends before it starts
    ("tm", "25"),
    ("tm", "1a"),
    ("tm", "1260"),
    ("da", "20241301"),
    ("dt", "20x4"),
    ("num", "ten"),
]


@pytest.mark.parametrize(("column", "value"), BAD, ids=[f"{c}={v!r}" for c, v in BAD])
def test_values_that_cannot_be_matched(column, value):
    with pytest.raises(MatchingError):
        condition_for(column, VR_OF[column], value)


def test_every_value_is_a_parameter_never_sql_text():
    condition = condition_for("lo", "LO", "x' OR 1=1 --")
    assert condition == Condition("lo = ?", ("x' OR 1=1 --",))
    condition = condition_for("pn", "PN", "'; DROP TABLE t; --*")
    assert "DROP" not in condition.sql


def test_where_joins_the_conditions_and_skips_universal_ones():
    clause, params = where([Condition(""), Condition("a = ?", (1,)), Condition("b >= ? AND b <= ?", (2, 3))])
    assert clause == "WHERE (a = ?) AND (b >= ? AND b <= ?)"
    assert params == (1, 2, 3)
    assert where([Condition("")]) == ("", ())


def test_normalisers():
    assert normalise_date("2024.01.05") == "20240105"
    assert normalise_time("10") == "100000.000000"
    assert normalise_time("10", end=True) == "105959.999999"
    assert normalise_time("10:15:30.5") == "101530.500000"
    assert normalise_datetime("2024") == "20240101000000.000000"
    assert normalise_datetime("202402", end=True) == "20240231235959.999999"  # compares after the 29th
    assert normalise_datetime("20240105101530+0100") == "20240105101530.000000"


@pytest.mark.parametrize(
    ("stored", "pattern", "expected"),
    [
        ("DOE^JOHN", "doe^john", 1),
        (None, "*", 0),
        ("DOE^JOHN^^^", "DOE^JOHN", 1),
        ("=山田^太郎", "山田*", 1),           # an empty alphabetic group
        ("A^B=C^D", "A^B=", 1),             # trailing empty groups in the query ignored
        ("ÉLODIE", "élodie", 1),
        ("ÉLODIE", "e?odie", 0),
        ("ÉLODIE", "?lodie", 1),
    ],
)
def test_pn_match(stored, pattern, expected):
    assert pn_match(stored, pattern) == expected


# -- wild cards against a reference, on arbitrary text -------------------------------------------------

_ALPHABET = "aAbZ09^.[]%_\\-ü山ß*?"


def _reference(value: str, pattern: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


@settings(max_examples=300, deadline=None)
@given(value=st.text(alphabet=_ALPHABET.replace("*", "").replace("?", ""), min_size=1, max_size=8),
       pattern=st.text(alphabet=_ALPHABET, min_size=1, max_size=6))
def test_wild_card_matching_agrees_with_a_reference(value, pattern):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE v (lo)")
    conn.execute("INSERT INTO v VALUES (?)", (value,))
    condition = condition_for("lo", "LO", pattern)
    clause, params = where([condition])
    matched = conn.execute(f"SELECT COUNT(*) FROM v {clause}", params).fetchone()[0] == 1
    assert matched == _reference(value, pattern)
