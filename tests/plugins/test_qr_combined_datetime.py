"""Combined date-time matching of Study Date and Study Time (PS3.4 C.2.2.2.5.1, negotiated per C.5.1.1).

Studies around 2006-07-05..07 are indexed by the archive's code; each case runs
the SQL the C-FIND SCP runs, once as negotiated (combined) and once baseline.
"""

from __future__ import annotations

import sqlite3

import pytest
from pydicom.dataset import Dataset

from dimsekit_plugins.archive import index as archive_index
from dimsekit_plugins.qr.find import find_sql
from dimsekit_plugins.qr.matching import combined_condition, register_functions
from dimsekit_plugins.qr.model import STUDY_ROOT, IdentifierError, parse_identifier

ROOT = "1.2.826.0.1.3680043.9.7433.78"

#: study id -> (date, time, patient name)
STUDIES = {
    "A": ("20060704", "2300", "DOE^JOHN"),
    "B": ("20060705", "0930", "DOE^JOHN"),
    "C": ("20060705", "100000", "Müller^Jürgen"),
    "D": ("20060706", "03", "Müller^Jürgen"),
    "E": ("20060707", "1800", "DOE^JOHN"),
    "F": ("20060707", "183000.25", "Müller^Jürgen"),
    "G": ("20060706", None, "DOE^JOHN"),
    "H": ("20060705", None, "Müller^Jürgen"),
    "I": ("20060708", "0000", "DOE^JOHN"),
}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> sqlite3.Connection:
    conn = archive_index.connect(str(tmp_path_factory.mktemp("dt") / "index.sqlite"))
    for n, (study_id, (date, time, name)) in enumerate(STUDIES.items()):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID = name, f"P{name[:3]}"
        ds.StudyInstanceUID, ds.StudyID, ds.StudyDate = f"{ROOT}.1.{n}", study_id, date
        if time is not None:
            ds.StudyTime = time
        ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID = f"{ROOT}.2.{n}", f"{ROOT}.3.{n}", "1.2.3"
        archive_index.put(conn, archive_index.InstanceRecord(
            **archive_index.header_values(ds), transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"x/{n}",
            size=1, received_at="2024-01-01T00:00:00"))
    register_functions(conn)
    conn.row_factory = None
    return conn


def found(conn, *, combined: bool, **keys) -> set[str]:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    q = parse_identifier(ds, STUDY_ROOT, combined_datetime=combined)
    sql, params, columns = find_sql(q)
    at = columns.index("StudyID")
    return {row[at] for row in conn.execute(sql, params)}


@pytest.mark.parametrize(
    ("date", "time", "combined", "baseline"),
    [
        # the standard's example: from 07-05 10:00 to 07-07 18:00, not 10:00-18:00 on each day
        ("20060705-20060707", "1000-1800", set("CDEGH"), set("CE")),
        ("20060705-", "1000-", set("CDEFGHI"), set("CEF")),
        ("-20060705", "-0959", set("ABH"), set("B")),
        ("20060705-20060707", "-1800", set("BCDEGH"), set("BCDE")),
        ("20060706", "0300", set("DG"), set("D")),  # G: no time, its day overlaps
        ("20060706", "02-04", set("DG"), set("D")),
        ("20060705-20060705", "1000-1000", set("CH"), set("C")),
        # one of the pair universal: the other is matched on its own, combined or not
        ("20060705-20060707", "", set("BCDEFGH"), set("BCDEFGH")),
        ("", "1000-1800", set("CE"), set("CE")),
    ],
)
def test_study_date_and_time(indexed, date, time, combined, baseline):
    assert found(indexed, combined=True, StudyDate=date, StudyTime=time) == combined
    assert found(indexed, combined=False, StudyDate=date, StudyTime=time) == baseline


def test_a_combined_range_may_cross_midnight(indexed):
    # 07-04 22:00 to 07-06 06:00; "2200-0600" alone is no time range (A900 without the negotiation)
    assert found(indexed, combined=True, StudyDate="20060704-20060706", StudyTime="2200-0600") == set("ABCDGH")
    with pytest.raises(IdentifierError, match="ends before it starts"):
        found(indexed, combined=False, StudyDate="20060704-20060706", StudyTime="2200-0600")


def test_combined_with_a_non_ascii_person_name(indexed):
    assert found(indexed, combined=True, StudyDate="20060705-20060707", StudyTime="1000-1800",
                 PatientName="müller*") == set("CDH")
    assert found(indexed, combined=True, StudyDate="20060705-20060707", StudyTime="1000-1800",
                 PatientName="Müller^J?rgen") == set("CDH")


@pytest.mark.parametrize(
    ("date", "time", "comment"),
    [
        ("20060707-20060705", "1000", "ends before it starts"),
        ("20060705-20060705", "1800-1000", "ends before it starts"),
        ("2006070x", "1000", "is not a date"),
        ("20060705", "2500", "is not a time of day"),
        ("20060705-06-07", "1000", "more than one '-'"),
        ("20060705", "10-11-12", "more than one '-'"),
    ],
)
def test_a_combined_range_that_cannot_be_matched_is_refused_a900(date, time, comment):
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyDate, ds.StudyTime = date, time
    with pytest.raises(IdentifierError) as raised:
        parse_identifier(ds, STUDY_ROOT, combined_datetime=True)
    assert raised.value.status == 0xA900
    assert str(raised.value).startswith("StudyDate/StudyTime: ")
    assert comment in str(raised.value)
    assert raised.value.offending == (0x00080020, 0x00080030)


def test_the_combined_condition_keeps_a_plain_date_bound_for_the_index(indexed):
    condition = combined_condition("st.study_date", "st.study_time", "20060705-20060707", "1000-1800")
    assert condition.params == ("20060705", "20060705100000.000000", "20060707", "20060707180059.999999")
    q = Dataset()
    q.QueryRetrieveLevel, q.StudyDate, q.StudyTime = "STUDY", "20060705-20060707", "1000-1800"
    sql, params, _ = find_sql(parse_identifier(q, STUDY_ROOT, combined_datetime=True))
    plan = " ".join(str(row[-1]) for row in indexed.execute("EXPLAIN QUERY PLAN " + sql, params))
    assert "USING INDEX study_date" in plan, plan
