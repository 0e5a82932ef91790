"""dimsekit.memory.tune_allocator: bulk read buffers come from the heap, not fresh mappings."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from dimsekit import memory

# What a connection does while a data set streams in: read up to 1 MiB,
# get less, keep the last few reads a while (until written to the file).
_READS = textwrap.dedent(
    """
    import json, resource, socket, sys, threading
    from dimsekit.memory import tune_allocator
    outcome = tune_allocator() if sys.argv[1] == "tune" else "untouched"
    a, b = socket.socketpair()
    chunk = b"x" * (64 << 10)
    rounds = 1000

    def send():
        for _ in range(rounds):
            a.sendall(chunk)
        a.close()

    sender = threading.Thread(target=send)
    sender.start()
    kept, total, before = [], 0, None
    while True:
        data = b.recv(1 << 20)
        if not data:
            break
        total += len(data)
        kept.append(data)
        del kept[:-4]
        if before is None and total >= rounds * len(chunk) // 2:
            # the second half only: the heap has grown to what it needs by then
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    sender.join()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    print(json.dumps({"outcome": outcome, "faults": after - before, "bytes": total}))
    """
)


def _faults(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _READS, mode], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_bulk_reads_stop_faulting_in_fresh_pages() -> None:
    # Medians of three runs each: how much one read returns depends on the
    # sender thread's pace, and with it the untouched count (1,300-7,000 faults
    # seen on this VM); the tuned one stays near 0.
    runs = {mode: [_faults(mode) for _ in range(3)] for mode in ("untouched", "tune")}
    assert all(r["outcome"] == "tuned" for r in runs["tune"])
    assert {r["bytes"] for rs in runs.values() for r in rs} == {1000 * (64 << 10)}
    untouched = sorted(r["faults"] for r in runs["untouched"])[1]
    tuned = sorted(r["faults"] for r in runs["tune"])[1]
    # Untouched, every read's 1 MiB block is a fresh mapping whose pages the
    # kernel's copy faults in (32 MiB read in the half measured: thousands
    # of faults); tuned, the heap's pages are reused.
    assert untouched > 1000
    assert tuned < untouched / 10


def test_the_operator_s_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_done", None)
    assert memory.tune_allocator({"MALLOC_MMAP_THRESHOLD_": "131072"}) == "set by the environment"
    # the first answer sticks: the process's allocator is not changed later
    assert memory.tune_allocator({}) == "set by the environment"
    monkeypatch.setattr(memory, "_done", None)
    assert memory.tune_allocator({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}) == "set by the environment"


def test_the_node_and_the_command_tune_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from dimsekit import cli, tap

    calls: list[str] = []
    monkeypatch.setattr(memory, "tune_allocator", lambda: calls.append("node") or "tuned")
    monkeypatch.setattr(cli, "tune_allocator", lambda: calls.append("command") or "tuned")
    monkeypatch.setattr(cli.task, "react", lambda main: calls.append("react"))
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        options = tap.Options()
        options.parseOptions(["--port", "0", "--interface", "127.0.0.1"])
        tap.makeService(options)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert calls == ["node"]
    said = [formatEvent(e) for e in events if e.get("log_namespace") == "dimsekit.tap"]
    assert said == ["glibc malloc tuned for bulk reads: mmap threshold 4 MiB, trim threshold 16 MiB"]
    cli.main(["echo", "127.0.0.1", "104"])
    assert calls == ["node", "command", "react"]
