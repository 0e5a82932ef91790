"""A node killed (SIGKILL) in the middle of receiving an instance, restarted on the
same data directory: it reconciles files and index, says what it fixed, and
goes on storing."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest
from pydicom import dcmread

from dimsekit.datasets import part10_info
from tests.interop.conftest import dcmtk, run, start_node, stop
from tests.interop.test_storage_support import (
    RecordingProxy,
    big_instance,
    build_corpus,
    index_rows,
    stored_files,
    temp_files,
    wait_until,
)

pytestmark = pytest.mark.interop


def _storescu(port: int, *files) -> None:
    result = run([dcmtk("storescu"), "-aec", "DIMSEKIT", "127.0.0.1", str(port), *map(str, files)], timeout=60)
    assert result.returncode == 0 and "Store Failed" not in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_node_killed_mid_write_reconciles_when_restarted(tmp_path):
    data_dir = tmp_path / "data"
    corpus = build_corpus(tmp_path / "corpus")
    lost, kept, planted, later = [f for f in corpus if part10_info(f).transfer_syntax == "1.2.840.10008.1.2.1"][:4]
    uid = {f: part10_info(f).sop_instance_uid for f in (lost, kept, planted, later)}
    big = tmp_path / "big.dcm"
    big_instance(big, megabytes=8)

    # 1. a node stores two instances, then dies (SIGKILL) while receiving a third
    (tmp_path / "run1").mkdir()
    node = start_node(tmp_path / "run1", "--data-dir", str(data_dir))
    sender = None
    proxy = RecordingProxy(node.port, budget=2 << 20)  # past the 1 MiB kept in memory
    try:
        _storescu(node.port, lost, kept)
        # their rows written (in a batch, 50 ms after the answer at the latest) before the crash
        wait_until(lambda: len(index_rows(data_dir)) == 2, what="two rows")
        sender = subprocess.Popen([dcmtk("storescu"), "-aec", "DIMSEKIT", "127.0.0.1", str(proxy.port), str(big)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert proxy.stalled.wait(20), "storescu did not send 2 MiB"
        wait_until(lambda: temp_files(data_dir), what="the big instance being received")
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)
    finally:
        proxy.close()
        if sender is not None:
            sender.kill()
            sender.wait(10)
        stop(node.proc)
    (stray,) = temp_files(data_dir)

    # 2. what else a crash or a hand can leave: a row whose file is gone, a file without a row
    rows = {r["sop_instance_uid"]: r for r in index_rows(data_dir)}
    assert set(rows) == {uid[lost], uid[kept]}
    (data_dir / rows[uid[lost]]["path"]).unlink()
    info = part10_info(planted)
    header = dcmread(planted, stop_before_pixels=True)
    target = data_dir / header.StudyInstanceUID / header.SeriesInstanceUID / f"{info.sop_instance_uid}.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(planted, target)

    # 3. restarted on the same data directory, it reconciles and says so
    (tmp_path / "run2").mkdir()
    node = start_node(tmp_path / "run2", "--data-dir", str(data_dir))
    try:
        _storescu(node.port, later)
        line = node.wait_log(r"reconciled files and index", timeout=10)
        # The lost file was answered before the crash: the journal brings it back (a row whose
        # file is gone is dropped only when no record holds it; test_archive covers that).
        assert "temp removed: 1" in line and "journal restored: 1" in line and "files indexed: 1" in line, line
        assert (data_dir / rows[uid[lost]]["path"]).stat().st_size == rows[uid[lost]]["size"]
        wait_until(lambda: uid[later] in {r["sop_instance_uid"] for r in index_rows(data_dir)}, what="the new instance")
        node.assert_healthy()
    finally:
        code = stop(node.proc)
    assert code == 0, node.log_text()
    assert "Traceback" not in node.log_text()

    assert not stray.exists() and temp_files(data_dir) == []
    rows = {r["sop_instance_uid"]: r for r in index_rows(data_dir)}
    assert set(rows) == {uid[lost], uid[kept], uid[planted], uid[later]}  # the lost one back from the journal
    assert rows[uid[planted]]["path"] == str(target.relative_to(data_dir))
    assert rows[uid[planted]]["transfer_syntax_uid"] == info.transfer_syntax
    assert rows[uid[planted]]["sop_class_uid"] == info.sop_class_uid
    assert sorted(stored_files(data_dir)) == sorted(data_dir / r["path"] for r in rows.values())
