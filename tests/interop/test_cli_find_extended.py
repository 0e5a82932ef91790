"""``dimsekit find --datetime`` (C-FIND SOP Class Extended Negotiation) against the node.

The node agrees to combined date and time matching (PS3.4 C.2.2.2.5) when
it is proposed; the same query then matches a different set of studies than
without it.  Peers that do not agree are in tests/interop/test_cli_qr.py.
"""

from __future__ import annotations

import json

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.interop.conftest import DIMSEKIT_CLI, run, start_node, stop

pytestmark = pytest.mark.interop

ROOT = "1.2.826.0.1.3680043.8.498.7746"
#: study number -> (Study Date, Study Time): 07-05 09:00, 07-06 03:00, 07-07 19:00
STUDIES = {1: ("20060705", "090000"), 2: ("20060706", "030000"), 3: ("20060707", "190000")}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    base = tmp_path_factory.mktemp("find-extended")
    files = base / "in"
    files.mkdir()
    for n, (date, time) in STUDIES.items():
        ds = dcmread(get_testdata_file("CT_small.dcm", download=False))
        ds.StudyInstanceUID = f"{ROOT}.{n}"
        ds.SeriesInstanceUID = f"{ROOT}.{n}.1"
        ds.SOPInstanceUID = f"{ROOT}.{n}.1.1"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate, ds.StudyTime = date, time
        ds.save_as(files / f"{n}.dcm", enforce_file_format=True)
    node = start_node(base)
    try:
        done = run([*DIMSEKIT_CLI, "store", "127.0.0.1", str(node.port), "-aec", "DIMSEKIT", str(files)])
        assert done.returncode == 0, done.stdout + done.stderr
        yield node
    finally:
        assert stop(node.proc) == 0


def find(node, *args: str, date: str = "20060705-20060707", time: str = "1000-1800"):
    done = run([*DIMSEKIT_CLI, "find", "127.0.0.1", str(node.port), "-aec", "DIMSEKIT", "-to", "10",
                "-k", f"StudyDate={date}", "-k", f"StudyTime={time}", "-k", "StudyInstanceUID",
                "--json", *args])
    assert done.returncode == 0, done.stderr
    return sorted(d["0020000D"]["Value"][0] for d in json.loads(done.stdout)), done.stderr


def test_combined_date_time_matching_when_proposed(node):
    # from 07-05 10:00 to 07-07 18:00: only the study of 07-06 03:00
    studies, stderr = find(node, "--datetime")
    assert studies == [f"{ROOT}.2"]
    assert "did not agree" not in stderr


def test_date_and_time_matched_apart_without_it(node):
    # each day of 07-05..07-07 between 10:00 and 18:00: none of the three
    studies, stderr = find(node)
    assert studies == []


def test_options_the_node_refuses_are_named_and_the_query_goes_ahead(node):
    studies, stderr = find(node, "--datetime", "--relational", "--fuzzy")
    assert studies == [f"{ROOT}.2"]
    assert "did not agree to relational queries, fuzzy semantic matching of person names" in stderr
    assert "combined date and time" not in stderr


def test_a_combined_range_across_midnight(node):
    # 07-05 22:00 to 07-06 06:00
    studies, _ = find(node, "--datetime", date="20060705-20060706", time="2200-0600")
    assert studies == [f"{ROOT}.2"]
