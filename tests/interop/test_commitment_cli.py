"""``dimsekit commit`` against a dimsekit node: the report on the same
association, and with ``--port`` on the association the node opens back to
the tool -- dimsekit proposing SCP/SCU role selection, the tool taking the SCU
role -- after the tool released its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.interop.conftest import DIMSEKIT_CLI, _finish_node, free_port, run, start_node
from tests.interop.test_commitment_pynetdicom import ct_image

pytestmark = pytest.mark.interop


def test_commit_against_the_node_both_ways(tmp_path: Path):
    listen = free_port()
    config = (
        f'[[remote]]\nae_title = "COMMITCLI"\nhost = "127.0.0.1"\nport = {listen}\n\n'
        "[plugins.commitment]\nreport_delay = 1\n"  # the tool has released by then
    )
    stored, missing = tmp_path / "stored.dcm", tmp_path / "missing.dcm"
    ct_image().save_as(stored, enforce_file_format=True)
    ct_image().save_as(missing, enforce_file_format=True)
    node = start_node(tmp_path, "--data-dir", str(tmp_path / "data"), config=config)
    try:
        sent = run([*DIMSEKIT_CLI, "store", "127.0.0.1", str(node.port), "-aec", "DIMSEKIT", str(stored)])
        assert sent.returncode == 0, sent.stdout + sent.stderr
        common = ["127.0.0.1", str(node.port), "-aec", "DIMSEKIT", "-to", "10"]
        copy = tmp_path / "copy.dcm"  # the same instance twice: one reference
        copy.write_bytes(stored.read_bytes())
        same = run([*DIMSEKIT_CLI, "commit", *common, str(stored), str(copy), "--wait"], timeout=30)
        assert same.returncode == 0, same.stdout + same.stderr
        assert "(1 instance(s) in 2 files)" in same.stdout
        assert f"{copy}: the same SOP Instance UID as {stored}; one reference for both" in same.stderr
        assert f"committed  {_uid(stored)}  {stored}, {copy}" in same.stdout
        assert "Event Type 1: 1 committed, 0 failed" in same.stdout
        node.wait_log(r"storage commitment .* requested by DIMSEKIT: 1 instance\(s\)")
        back = run([*DIMSEKIT_CLI, "commit", *common, "-aet", "COMMITCLI", "--port", str(listen),
                    str(stored), str(missing)], timeout=30)
        assert back.returncode == 1, back.stdout + back.stderr
        assert f"failed     {_uid(missing)}  0x0112 No such object instance  {missing}" in back.stdout
        assert f"committed  {_uid(stored)}  {stored}" in back.stdout
        assert "Traceback" not in same.stderr + back.stderr
        node.wait_log(r"storage commitment .*: report \(event type 1: .*\) delivered to DIMSEKIT on the same association")
        node.wait_log(r"storage commitment .*: report \(event type 2: .*\) delivered to COMMITCLI on a new association")
        node.assert_healthy()
    finally:
        _finish_node(node)


def _uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
