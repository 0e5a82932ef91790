"""Files read from disk before a loop sends them, while it sends the one before.

A C-MOVE or C-GET (and ``dimsekit store``) sends files one after the other, each
read in the reactor thread as the peer takes it.  From a cold page cache every
read waits on the disk (here ~0.5 ms for a 525 KB CT instance, much longer on
a spinning or network disk), and nothing else happens meanwhile: not the
network, not the other associations.  :class:`ReadAhead` has the kernel read
the next files into the page cache (``posix_fadvise(WILLNEED)``, from a pool
thread: opening a file whose inode is not cached waits on the disk too) while
the current one goes out, so that the reactor's reads find them there.

At most one such call is in flight for a loop, in file order, and it stays at
most :data:`FILES_AHEAD` files and about :data:`BYTES_AHEAD` bytes ahead of the
file being sent: what it asks for is page cache, which the kernel can take back,
never memory of ours.  Where there is no ``posix_fadvise`` (not Linux/BSD) or no
thread pool (a test's fake reactor), it does nothing.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from typing import Any

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

__all__ = ["ReadAhead", "prefetch_file", "prefetch_files", "FILES_AHEAD", "BYTES_AHEAD"]

_log = Logger()

#: how many files ahead of the one being sent the read-ahead goes, at most
FILES_AHEAD = 16
#: how many bytes ahead (the files' sizes added up, the first one of any size), at most;
#: also how much of one file is asked for
BYTES_AHEAD = 32 << 20

_ADVISE = getattr(os, "posix_fadvise", None)


def prefetch_file(path: str, limit: int = BYTES_AHEAD) -> int:
    """Ask the kernel to read the first ``limit`` bytes of the file at ``path`` into the
    page cache, without waiting for them; return the file's size (0: it cannot be opened,
    or is no regular file).

    It blocks while the file is opened (its directory entry and inode may come
    from the disk): call it from a thread.
    """
    try:
        # O_NONBLOCK: a FIFO among the files would otherwise hold the thread until a writer came
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return 0  # the sending says what is wrong with it, in its own words
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return 0
        if _ADVISE is not None and status.st_size:
            _ADVISE(fd, 0, min(status.st_size, limit), os.POSIX_FADV_WILLNEED)
        return status.st_size
    except OSError:
        return 0
    finally:
        os.close(fd)


def prefetch_files(paths: Sequence[str], budget: int, limit: int = BYTES_AHEAD) -> list[int]:
    """:func:`prefetch_file` of each of ``paths`` in turn (up to ``limit`` bytes of each) until
    their sizes add up to ``budget``: the sizes of those asked for (from a thread)."""
    sizes: list[int] = []
    for path in paths:
        if budget <= 0:
            break
        size = prefetch_file(path, limit)
        sizes.append(size)
        budget -= size
    return sizes


class ReadAhead:
    """The read-ahead of a loop over ``paths``: call :meth:`at` with each index as the loop
    starts sending that file, :meth:`stop` when it ends (it may end early).

    A call asks for several files (each completed call wakes the reactor): it goes
    when the window has room for half of it again, or is empty.
    """

    def __init__(self, reactor: Any, paths: Sequence[str], *, files: int = FILES_AHEAD,
                 max_bytes: int = BYTES_AHEAD) -> None:
        self._reactor = reactor
        self._paths = paths
        self._files = files
        self._max_bytes = max_bytes
        get_pool = getattr(reactor, "getThreadPool", None)
        self._pool = get_pool() if get_pool is not None and _ADVISE is not None and files > 0 else None
        #: the loop's index (the file being sent)
        self._current = -1
        #: the next index to ask for
        self._next = 0
        #: index -> size of the files asked for beyond the current one
        self._ahead: dict[int, int] = {}
        self._busy = False
        self._stopped = False
        #: files asked for so far, and in how many calls (tests, logs)
        self.prefetched = 0
        self.calls = 0

    def at(self, index: int) -> None:
        """The loop now sends ``paths[index]`` (read in its own thread, not asked for now)."""
        self._current = index
        for done in [i for i in self._ahead if i <= index]:
            del self._ahead[done]
        self._next = max(self._next, index + 1)
        self._kick()

    def stop(self) -> None:
        """No more files: a call in flight ends on its own, nothing follows it."""
        self._stopped = True

    def _kick(self) -> None:
        if self._busy or self._stopped or self._pool is None or self._next >= len(self._paths):
            return
        ahead = self._next - self._current - 1  # files asked for beyond the current one
        room = self._files - ahead
        budget = self._max_bytes - sum(self._ahead.values())  # at most FILES_AHEAD of them
        if ahead > 0 and (room < max(1, self._files // 2) or budget < self._max_bytes // 2):
            return  # not yet: a call for one file per file sent would wake the reactor as often
        if room <= 0 or budget <= 0:
            return
        start = self._next
        batch = [str(path) for path in self._paths[start:start + room]]
        self._busy = True
        self.calls += 1
        d = deferToThreadPool(self._reactor, self._pool, prefetch_files, batch, budget, self._max_bytes)
        d.addCallbacks(self._done, self._failed, callbackArgs=(start,))

    def _done(self, sizes: list[int], start: int) -> None:
        self._busy = False
        self.prefetched += len(sizes)
        for index, size in enumerate(sizes, start):
            if index > self._current:
                self._ahead[index] = size
        self._next = max(self._next, start + len(sizes))
        self._kick()

    def _failed(self, failure: Any) -> None:  # pragma: no cover - prefetch_file catches what it can
        self._busy = False
        self._stopped = True
        _log.failure("read-ahead stopped", failure)
