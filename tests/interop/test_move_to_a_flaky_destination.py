"""C-MOVE from a twistd node to a destination that misbehaves at random (``_flaky_store_scp.py``).

The destination answers each C-STORE sub-operation with success, a warning, a failure, a
status no standard defines, a pending status (not a C-STORE answer) -- after a pause -- or
aborts the association.  An abort fails the sub-operation in flight; the node associates
again for the ones left (up to 3 times in a row).  The C-MOVE's final response must add up: every
instance is counted once as completed, warning or failed, each as the destination's own
log says it was answered (one it never answered, or that its abort cut short, as failed);
the Failed SOP Instance UID List names exactly the failed ones; the status is 0000 with
nothing failed or warned, A702 when everything failed, B000 otherwise (PS3.4 C.4.2.3.1).
No traceback in the node's log, and it answers echoscu after.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE

from tests.interop.conftest import (
    _finish_node,
    dcmtk,
    run,
    start_node,
    start_peer_script,
    stop,
    tiny_ct,
)

pytestmark = pytest.mark.interop

FLAKY = Path(__file__).with_name("_flaky_store_scp.py")
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
INSTANCES = 8
WARNINGS = {"0xB000", "0xB007"}


@pytest.mark.parametrize("seed", [1, 5, 6, 20, 24])  # among them: pending statuses, aborts, an abort first
def test_a_move_to_a_flaky_destination_adds_up(tmp_path, seed):
    flaky, flaky_port, answers = start_peer_script(FLAKY, tmp_path, str(seed))
    try:
        node = start_node(tmp_path, config=f'[[remote]]\nae_title = "FLAKY"\nhost = "127.0.0.1"\nport = {flaky_port}\n')
    except BaseException:
        stop(flaky)
        raise
    try:
        study = "1.2.826.0.1.3680043.8.498.7700"
        files = []
        for i in range(INSTANCES):
            ct = tiny_ct(study=study)
            ct.InstanceNumber = i + 1
            path = tmp_path / f"ct{i}.dcm"
            ct.save_as(path, enforce_file_format=True)
            files.append((ct.SOPInstanceUID, path))
        stored = run([dcmtk("storescu"), "-aec", "DIMSEKIT", "127.0.0.1", str(node.port), *(str(p) for _, p in files)],
                     timeout=60)
        assert stored.returncode == 0, stored.stdout + stored.stderr

        ae = AE(ae_title="MOVER")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(STUDY_ROOT_MOVE)
        assoc = ae.associate("127.0.0.1", node.port, ae_title="DIMSEKIT")
        assert assoc.is_established
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = study
        try:
            responses = [(status, ds) for status, ds in assoc.send_c_move(identifier, "FLAKY", STUDY_ROOT_MOVE)
                         if status]
        finally:
            assoc.release()
        final, listed = responses[-1]
        time.sleep(0.3)  # the destination's last line
        said = dict(line.split()[1:3] for line in answers.read_text().splitlines() if line.startswith("store "))
        # an abort (or a protocol error that ends the association) fails the instance in
        # flight only: the others went over a new association (no seed here aborts 4 times in a row)
        assert set(said) == {uid for uid, _ in files}, said
        completed = {uid for uid, what in said.items() if what == "0x0000"}
        warned = {uid for uid, what in said.items() if what in WARNINGS}
        failed = {uid for uid, _ in files} - completed - warned  # answered otherwise, cut short, or never sent
        counts = (final.NumberOfCompletedSuboperations, final.NumberOfWarningSuboperations,
                  final.NumberOfFailedSuboperations)
        assert counts == (len(completed), len(warned), len(failed)), (counts, said)
        expected = 0x0000 if not failed and not warned else 0xA702 if len(failed) == INSTANCES else 0xB000
        assert final.Status == expected, (hex(final.Status), said)
        failed_list = set(listed.FailedSOPInstanceUIDList) if listed is not None and "FailedSOPInstanceUIDList" in listed \
            else set()
        if isinstance(listed.FailedSOPInstanceUIDList if failed_list else None, str):
            failed_list = {listed.FailedSOPInstanceUIDList}
        assert failed_list == failed, (failed_list, said)
        node.assert_healthy()
    finally:
        stop(flaky)
        _finish_node(node)
