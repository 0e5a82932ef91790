"""DCMTK storescu (and raw peers) -> a dimsekit node under twistd: the archive gets
exactly what was sent, nothing partial, nothing outside the data directory."""

from __future__ import annotations

import hashlib
import re
import shutil
import signal
import subprocess
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import UID

import dimsekit
from dimsekit.datasets import part10_info
from dimsekit.dimse.status import Category, category
from dimsekit_plugins.archive.journal import replay
from tests.interop.conftest import RawPeer, abort_pdu, dcmtk, run, start_node, stop
from tests.interop.test_storage_support import (
    CT_IMAGE_STORAGE,
    RecordingProxy,
    associate_for_storage,
    big_instance,
    build_corpus,
    index_rows,
    store_rq_command,
    store_rq_pdus,
    store_rsp_status,
    stored_files,
    stores_on_the_wire,
    storescu_config,
    temp_files,
    wait_until,
)

pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    return build_corpus(directory / "files")


def _finish(node) -> None:
    code = stop(node.proc)
    text = node.log_text()
    assert "Traceback" not in text, text
    assert code == 0, f"node exited with {code}:\n{text}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dataset_bytes(path: Path) -> bytes:
    return path.read_bytes()[part10_info(path).dataset_offset :]


# -- the whole corpus -------------------------------------------------------------------------------------


def test_storescu_directory_mode_every_file_arrives_as_sent(tmp_path, corpus):
    node = start_node(tmp_path)  # no configuration: stores into ./dimsekit-data
    data_dir = tmp_path / "dimsekit-data"
    try:
        profile = storescu_config(corpus, tmp_path / "storescu.cfg")
        with RecordingProxy(node.port) as proxy:
            result = run([dcmtk("storescu"), "-xf", str(tmp_path / "storescu.cfg"), profile, "+sd",
                          "--max-send-pdu", "4096", "-aet", "STORESCU", "-aec", "DIMSEKIT",
                          "127.0.0.1", str(proxy.port), str(corpus[0].parent)], timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "Store Failed" not in result.stdout + result.stderr
            wire, pdu_lengths = stores_on_the_wire(bytes(proxy.recordings[0]))
        node.assert_healthy()
        # the association's log line says how many it took in, and of which SOP classes
        classes = sorted({UID(part10_info(path).sop_class_uid).name for path in corpus})
        contexts = ", ".join(classes) if len(classes) <= 4 else (
            f"{len(classes)} SOP classes accepted; used: {', '.join(classes)}"
        )
        node.wait_log(rf"calling=STORESCU .* contexts=\[{re.escape(contexts)}\] handled=\[C-STORE {len(corpus)}\] "
                      "duration=")
    finally:
        _finish(node)

    assert pdu_lengths and max(pdu_lengths) <= 4096  # storescu kept to --max-send-pdu
    sources = {part10_info(p).sop_instance_uid: p for p in corpus}
    assert set(wire) == set(sources), "storescu did not send every file"
    rows = {r["sop_instance_uid"]: r for r in index_rows(data_dir)}
    assert set(rows) == set(sources), "not every instance is indexed"
    assert temp_files(data_dir) == []
    assert len(stored_files(data_dir)) == len(sources)

    for uid, source in sources.items():
        row = rows[uid]
        path = data_dir / row["path"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            original = dcmread(source)
            kept = dcmread(path)
        # the data set bytes are exactly those that came over the wire
        assert _sha(_dataset_bytes(path)) == _sha(wire[uid]), f"{source.name}: data set bytes differ from those sent"
        info = part10_info(source)
        assert row["transfer_syntax_uid"] == info.transfer_syntax, source.name
        assert kept.file_meta.TransferSyntaxUID == info.transfer_syntax
        assert row["sop_class_uid"] == info.sop_class_uid
        assert path == data_dir / original.StudyInstanceUID / original.SeriesInstanceUID / f"{uid}.dcm"
        assert kept.file_meta.ImplementationClassUID == dimsekit.IMPLEMENTATION_CLASS_UID
        assert kept.file_meta.SourceApplicationEntityTitle == "STORESCU"
        assert row["source_ae"] == "STORESCU"
        assert row["size"] == path.stat().st_size
        for keyword in ("PixelData", "WaveformSequence"):
            if keyword in original:
                assert kept[keyword].value == original[keyword].value, f"{source.name}: {keyword} differs"
        study = index_rows(data_dir, "SELECT st.*, p.patient_id FROM study st JOIN patient p ON p.pk = st.patient_pk "
                           "WHERE study_instance_uid = ?", original.StudyInstanceUID)[0]
        assert study["patient_id"] == str(original.get("PatientID", "") or "")
        series = index_rows(data_dir, "SELECT * FROM series WHERE series_instance_uid = ?", original.SeriesInstanceUID)[0]
        assert series["modality"] == (str(original.Modality) if original.get("Modality") else None)


# -- refusals ----------------------------------------------------------------------------------------------


def _small_dataset() -> bytes:
    from pydicom.data import get_testdata_file

    return _dataset_bytes(Path(get_testdata_file("CT_small.dcm")))


@pytest.mark.parametrize("uid", ["../../etc/x", "1.2.3/4", "..", "1..2"])
def test_an_unusable_sop_instance_uid_gets_a_failure_and_nothing_is_written(tmp_path, uid):
    (tmp_path / "run").mkdir()
    node = start_node(tmp_path / "run")
    data_dir = tmp_path / "run" / "dimsekit-data"
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    try:
        with RawPeer.connect(node.port) as peer:
            context = associate_for_storage(peer)
            for pdu in store_rq_pdus(context, store_rq_command(CT_IMAGE_STORAGE, uid), _small_dataset()):
                peer.send(pdu)
            status, fields = store_rsp_status(peer.recv_pdu(timeout=10))
            peer.release()
        assert category(status) is Category.FAILURE, f"not a failure: 0x{status:04X}"
        node.assert_healthy()
    finally:
        _finish(node)
    new = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert {p.name for p in new} <= {"twistd.log", ".lock", "index.sqlite", "index.sqlite-wal", "index.sqlite-shm",
                                     ".journal"}, new
    # .journal: the archive's, made when it starts; no record of the refused instance in it
    assert list(replay(data_dir / ".journal")) == []
    assert all(data_dir in p.parents or p.parent == tmp_path / "run" for p in new), new
    assert not Path("/etc/x").exists()
    assert stored_files(data_dir) == [] and temp_files(data_dir) == []


def test_below_the_disk_floor_the_store_is_refused_out_of_resources_before_writing(tmp_path):
    free_mb = shutil.disk_usage(tmp_path).free // (1 << 20)
    node = start_node(tmp_path, config=f"[plugins.storage]\nmin_free_mb = {free_mb + 1_000_000}\n")
    data_dir = tmp_path / "dimsekit-data"
    try:
        with RawPeer.connect(node.port) as peer:
            context = associate_for_storage(peer)
            for pdu in store_rq_pdus(context, store_rq_command(CT_IMAGE_STORAGE, "1.2.3.4.5"), _small_dataset()):
                peer.send(pdu)
            status, fields = store_rsp_status(peer.recv_pdu(timeout=10))
            peer.release()
        assert status == 0xA700
        assert b"min_free_mb" in fields[(0x0000, 0x0902)]
        node.assert_healthy()
    finally:
        _finish(node)
    assert stored_files(data_dir) == [] and temp_files(data_dir) == []
    assert index_rows(data_dir) == []


@pytest.mark.parametrize("megabytes", [0, 3], ids=["small", "3 MB"])
def test_a_data_set_cut_short_is_refused_c000_and_the_association_goes_on(tmp_path, megabytes):
    """A sender that sends a file cut short on its disk, as it is, ending the data set with the
    last fragment: its header reads well; a Success would lose the image. The node says
    0xC000 with where it ends, keeps nothing, and stores the next, whole one."""
    node = start_node(tmp_path)
    data_dir = tmp_path / "dimsekit-data"
    if megabytes:
        ds = big_instance(tmp_path / "big.dcm", megabytes=megabytes)
        data, uid = _dataset_bytes(tmp_path / "big.dcm"), ds.SOPInstanceUID
    else:
        data, uid = _small_dataset(), "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"  # CT_small's
    try:
        with RawPeer.connect(node.port) as peer:
            context = associate_for_storage(peer)
            for pdu in store_rq_pdus(context, store_rq_command(CT_IMAGE_STORAGE, uid), data[:-1001]):
                peer.send(pdu)
            status, fields = store_rsp_status(peer.recv_pdu(timeout=10))
            assert status == 0xC000, f"0x{status:04X}"
            assert b"the data set is cut short: (7FE0,0010)" in fields[(0x0000, 0x0902)]
            assert stored_files(data_dir) == [] and temp_files(data_dir) == []
            for pdu in store_rq_pdus(context, store_rq_command(CT_IMAGE_STORAGE, uid, message_id=2), data):
                peer.send(pdu)
            status, _ = store_rsp_status(peer.recv_pdu(timeout=10), message_id=2)
            assert status == 0x0000
            peer.release()
        node.assert_healthy()
    finally:
        _finish(node)
    (stored,) = stored_files(data_dir)
    assert stored.read_bytes().endswith(data)


# -- senders that go away mid-instance ----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["close", "abort"])
def test_a_raw_sender_that_stops_halfway_leaves_no_file_and_no_row(tmp_path, how):
    node = start_node(tmp_path)
    data_dir = tmp_path / "dimsekit-data"
    source = tmp_path / "big.dcm"
    ds = big_instance(source, megabytes=3)  # half of it is past the 1 MiB kept in memory
    data = _dataset_bytes(source)
    try:
        peer = RawPeer.connect(node.port)
        try:
            context = associate_for_storage(peer)
            for pdu in store_rq_pdus(context, store_rq_command(CT_IMAGE_STORAGE, ds.SOPInstanceUID), data,
                                     stop_after=len(data) // 2):
                peer.send(pdu)
            wait_until(lambda: temp_files(data_dir), what="the instance being received")
            if how == "abort":
                peer.send(abort_pdu(source=0, reason=0))
        finally:
            peer.close()
        wait_until(lambda: not temp_files(data_dir), what="the partial instance removed")
        node.wait_log(r"calling=RAWSTORE")
        assert stored_files(data_dir) == []
        assert index_rows(data_dir) == []
        node.assert_healthy()
    finally:
        _finish(node)


def test_storescu_killed_mid_instance_leaves_no_file_and_no_row(tmp_path):
    node = start_node(tmp_path)
    data_dir = tmp_path / "dimsekit-data"
    source = tmp_path / "big.dcm"
    big_instance(source, megabytes=8)
    proxy = RecordingProxy(node.port, budget=2 << 20)  # lets 2 MiB through (past the in-memory 1 MiB), then stalls
    sender = subprocess.Popen([dcmtk("storescu"), "-aec", "DIMSEKIT", "127.0.0.1", str(proxy.port), str(source)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert proxy.stalled.wait(20), "storescu did not send 2 MiB"
        wait_until(lambda: temp_files(data_dir), what="the instance being received")
        sender.send_signal(signal.SIGKILL)
        sender.wait(10)
        proxy.close()  # the killed sender's connection ends at the node
        wait_until(lambda: not temp_files(data_dir), what="the partial instance removed")
        node.wait_log(r"calling=STORESCU")
        assert stored_files(data_dir) == []
        assert index_rows(data_dir) == []
        node.assert_healthy()
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(5)
        proxy.close()
        _finish(node)
