"""dimsekit.readahead: which files are asked for, when, and how much of them.

The thread pool here runs a call only when the test says so, so that what is
in flight at each moment can be seen.  The kernel's side (``posix_fadvise``)
is recorded, not called, except in the tests of :func:`prefetch_file` itself.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.task import Clock

from dimsekit import readahead
from dimsekit.readahead import ReadAhead, prefetch_file


class QueuedPool:
    """A thread pool whose calls wait in a list until :meth:`run_one`."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, tuple, dict]] = []

    def callInThreadWithCallback(self, on_result: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        self.calls.append((on_result, f, args, kwargs))

    def run_one(self) -> None:
        on_result, f, args, kwargs = self.calls.pop(0)
        on_result(True, f(*args, **kwargs))

    def run_all(self, limit: int = 1000) -> None:
        for _ in range(limit):
            if not self.calls:
                return
            self.run_one()
        raise AssertionError("the read-ahead did not stop")


class PoolReactor:
    def __init__(self) -> None:
        self.pool = QueuedPool()

    def getThreadPool(self) -> QueuedPool:
        return self.pool

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        f(*args, **kwargs)


@pytest.fixture
def advised(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """(file name, offset, length) of every posix_fadvise(WILLNEED) the read-ahead makes."""
    calls: list[tuple[str, int, int]] = []

    def advise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_WILLNEED
        calls.append((Path(os.readlink(f"/proc/self/fd/{fd}")).name, offset, length))

    monkeypatch.setattr(readahead, "_ADVISE", advise)
    return calls


def files(tmp_path: Path, sizes: list[int]) -> list[str]:
    paths = []
    for n, size in enumerate(sizes):
        path = tmp_path / f"f{n:02d}"
        path.write_bytes(b"x" * size)
        paths.append(str(path))
    return paths


def names(calls: list[tuple[str, int, int]]) -> list[str]:
    return [name for name, _offset, _length in calls]


def test_prefetch_file_asks_for_the_file_up_to_the_limit(tmp_path: Path, advised: list) -> None:
    small, large = files(tmp_path, [1000, 5000])
    assert prefetch_file(small, limit=4096) == 1000
    assert prefetch_file(large, limit=4096) == 5000
    assert advised == [("f00", 0, 1000), ("f01", 0, 4096)]


def test_prefetch_file_of_a_missing_or_empty_file_is_0_and_asks_nothing(tmp_path: Path, advised: list) -> None:
    (empty,) = files(tmp_path, [0])
    assert prefetch_file(str(tmp_path / "gone")) == 0
    assert prefetch_file(str(tmp_path)) == 0  # a directory: opened, but no file to read ahead
    assert prefetch_file(empty) == 0
    assert advised == []


def test_prefetch_file_of_a_fifo_does_not_wait_for_a_writer(tmp_path: Path, advised: list) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(prefetch_file(str(fifo))), daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # a blocking open: a writer releases it, then the test fails
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail("prefetch_file waited for a FIFO's writer")
    assert result == [0] and advised == []


def test_prefetch_file_calls_the_kernel(tmp_path: Path) -> None:
    (path,) = files(tmp_path, [70000])
    assert prefetch_file(path) == 70000  # the real posix_fadvise: no error from it


def test_one_call_in_flight_for_several_files_in_file_order(tmp_path: Path, advised: list) -> None:
    reactor = PoolReactor()
    paths = files(tmp_path, [100] * 12)
    ahead = ReadAhead(reactor, paths, files=4)
    ahead.at(0)
    assert len(reactor.pool.calls) == 1 and advised == []  # asked for in a thread
    reactor.pool.run_one()
    assert names(advised) == ["f01", "f02", "f03", "f04"]  # not f00: the loop reads it now
    assert reactor.pool.calls == []  # four ahead: the window is full
    ahead.at(1)
    assert reactor.pool.calls == []  # room for one: not worth waking the reactor for
    ahead.at(2)
    assert len(reactor.pool.calls) == 1  # room for two: half the window
    ahead.at(3)  # meanwhile
    assert len(reactor.pool.calls) == 1
    reactor.pool.run_all()
    assert names(advised)[4:] == ["f05", "f06"]
    ahead.at(6)  # the loop caught up: the whole window again
    reactor.pool.run_all()
    assert names(advised)[6:] == ["f07", "f08", "f09", "f10"]
    assert (ahead.prefetched, ahead.calls) == (10, 3)


def test_the_bytes_ahead_bound_the_window(tmp_path: Path, advised: list) -> None:
    reactor = PoolReactor()
    paths = files(tmp_path, [10_000] * 8)
    ahead = ReadAhead(reactor, paths, files=100, max_bytes=25_000)
    ahead.at(0)
    reactor.pool.run_all()
    assert names(advised) == ["f01", "f02", "f03"]  # 30,000 bytes ahead: the third crossed the bound
    ahead.at(1)  # 20,000 ahead: less than half the bound free
    assert reactor.pool.calls == []
    ahead.at(2)  # 10,000 ahead
    reactor.pool.run_all()
    assert names(advised)[3:] == ["f04", "f05"]


def test_a_large_file_is_asked_for_up_to_the_bound_and_holds_the_window(tmp_path: Path, advised: list) -> None:
    reactor = PoolReactor()
    paths = files(tmp_path, [100, 50_000, 100])
    ahead = ReadAhead(reactor, paths, max_bytes=20_000)
    ahead.at(0)
    reactor.pool.run_all()
    assert advised == [("f01", 0, 20_000)]
    ahead.at(1)
    reactor.pool.run_all()
    assert advised[1:] == [("f02", 0, 100)]


def test_the_loop_jumping_ahead_skips_what_it_passed(tmp_path: Path, advised: list) -> None:
    reactor = PoolReactor()
    paths = files(tmp_path, [100] * 10)
    ahead = ReadAhead(reactor, paths, files=2, max_bytes=300)
    ahead.at(0)
    ahead.at(5)  # the call for f01 and f02 is in flight meanwhile
    reactor.pool.run_all()
    assert names(advised) == ["f01", "f02", "f06", "f07"]  # f01 and f02 do not count as ahead


def test_the_end_of_the_list_and_stop(tmp_path: Path, advised: list) -> None:
    reactor = PoolReactor()
    paths = files(tmp_path, [100] * 6)
    ahead = ReadAhead(reactor, paths, files=2)
    ahead.at(0)
    reactor.pool.run_one()
    ahead.at(1)
    ahead.stop()  # the call in flight (f03) ends; nothing follows it
    reactor.pool.run_all()
    assert names(advised) == ["f01", "f02", "f03"]
    ahead.at(2)
    assert reactor.pool.calls == []
    last = ReadAhead(reactor, paths, files=10)
    last.at(5)
    assert reactor.pool.calls == []  # nothing after the last file


def test_without_a_thread_pool_nothing_is_asked(tmp_path: Path, advised: list) -> None:
    paths = files(tmp_path, [100] * 3)
    ahead = ReadAhead(Clock(), paths)  # a test's fake reactor
    ahead.at(0)
    ahead.at(1)
    assert advised == []


def test_without_posix_fadvise_nothing_is_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "_ADVISE", None)
    reactor = PoolReactor()
    ahead = ReadAhead(reactor, files(tmp_path, [100] * 3))
    ahead.at(0)
    assert reactor.pool.calls == []
