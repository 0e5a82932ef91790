"""``dimsekit store`` to a storage SCP that misbehaves at random (``_flaky_store_scp.py``).

The peer answers each C-STORE with success, a warning, a failure, a status no standard
defines, a pending status (no C-STORE answer: a failure of that instance, as storescu
counts it -- the run goes on), after a pause, or aborts the association (the tool then
associates again, the file in flight first, once).  The summary must say of each file
what the peer's own log says became of it last; the exit status is 0 only when nothing
failed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.interop.conftest import (
    DIMSEKIT_CLI,
    SAME_CODE,
    run,
    start_peer_script,
    stop,
    tiny_ct,
)

pytestmark = pytest.mark.interop

FLAKY = Path(__file__).with_name("_flaky_store_scp.py")
FILES = 8


@pytest.mark.parametrize("seed", [5, 15, 22])  # pending statuses and aborts among their answers
def test_store_to_a_flaky_peer_reports_what_became_of_each_file(tmp_path, seed):
    flaky, port, answers = start_peer_script(FLAKY, tmp_path, str(seed))
    try:
        study = "1.2.826.0.1.3680043.8.498.7701"
        files = {}
        for i in range(FILES):
            ct = tiny_ct(study=study)
            path = tmp_path / f"ct{i}.dcm"
            ct.save_as(path, enforce_file_format=True)
            files[ct.SOPInstanceUID] = path
        done = run([*DIMSEKIT_CLI, "store", "127.0.0.1", str(port), "-aec", "FLAKY", "-to", "10",
                    *(str(p) for p in files.values())], timeout=120, env={**os.environ, **SAME_CODE})
        said = done.stdout + done.stderr
        assert "Traceback" not in said, said
    finally:
        stop(flaky)
    last: dict[str, str] = {}
    for line in answers.read_text().splitlines():
        if line.startswith("store "):
            _, uid, what = line.split()[:3]
            last[uid] = what
    success = sum(1 for what in last.values() if what == "0x0000")
    warning = sum(1 for what in last.values() if what in ("0xB000", "0xB007"))
    failure = len(last) - success - warning
    not_sent = FILES - len(last)
    assert not_sent == 0, said  # every file reached the peer: no seed here aborts 3 times in a row
    summary = re.search(r"\((\d+) Success, (\d+) Warning, (\d+) Failure, (\d+) not sent\)", done.stdout)
    assert summary, said
    assert tuple(map(int, summary.groups())) == (success, warning, failure, not_sent), (said, last)
    assert done.returncode == (0 if failure == 0 and not_sent == 0 else 1), said
    for uid, what in last.items():  # each failed file named, with the pending status's reason
        if what == "0xFF00":
            assert re.search(rf"failure +\S*{re.escape(files[uid].name)}: .*pending status \(0xFF00\)", done.stdout), said
