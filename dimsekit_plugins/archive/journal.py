"""The archive's journal: small instances made durable by one append, their files in place unsynced.

A small instance (its data set under 64 KiB, new to its place) is put into
``<study>/<series>/<sop>.dcm`` without a sync, and its whole Part 10 file is
appended to ``<data dir>/.journal`` and synced there (``fdatasync`` of blocks
written in advance: one device flush, no metadata) before the success status
goes out.  The two fsyncs it replaces -- the file's and its directory's,
each a device flush -- were ~300 us of a ~850 us cycle on one association
(benchmarks/README.md, session 16: +21 % small instances/s).  The archive
writes the record first (:meth:`Journal.write` starts its write-out) and puts
the file in place while the device writes it, then waits (:meth:`Journal.sync`);
a checkpoint in between drops the record before the file is in place, and
``sync`` says so: that file is then synced on its own.

A *checkpoint* makes every file written so far durable (``syncfs`` of the
archive's file system, files and directories alike) and then starts a new
generation of the journal, whose older records no longer count.  It runs
when the journal is full, after :data:`CHECKPOINT_EVERY` records, before any
file is replaced or removed (a record must never restore a file's older
content), and when the archive closes.  After a crash, :func:`replay` gives
the records of the current generation, in order; the archive writes back
every file that is missing or differs, durably, before it reconciles.

Layout: block 0 holds the header (magic, version, generation, CRC-32); the
records follow from block 1, each starting on a block boundary: magic,
generation, the path's and the file's lengths, a CRC-32 of path and file,
then the relative path and the file's bytes.  A scan stops at the first
record that is not of the current generation or whose CRC does not match
(a torn append: never answered).
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

from dimsekit_plugins.archive.layout import fsync_dir

__all__ = ["Journal", "JOURNAL_NAME", "replay"]

JOURNAL_NAME = ".journal"
#: a checkpoint after this many records, so that a restart has little to check
CHECKPOINT_EVERY = 1024
_SIZE = 16 << 20
_BLOCK = 4096
_HEAD = struct.Struct("<4sIQI")  # magic, version, generation, crc32 of the first 16 bytes
_RECORD = struct.Struct("<4sQIII")  # magic, generation, path length, file length, crc32
_HEAD_MAGIC, _RECORD_MAGIC, _VERSION = b"DKJH", b"DKJR", 1

_libc = ctypes.CDLL(None, use_errno=True)


def _syncfs(fd: int) -> None:
    """Write back and flush the whole file system ``fd`` is on (syncfs(2): not in ``os``)."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_FADV_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)


def _start_writeout(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing a range out, not waiting (on Linux ``POSIX_FADV_DONTNEED``
    does, as for the archive's large files; a hint)."""
    if _FADV_DONTNEED is not None:
        os.posix_fadvise(fd, offset, length, _FADV_DONTNEED)


def _header(generation: int) -> bytes:
    body = struct.pack("<4sIQ", _HEAD_MAGIC, _VERSION, generation)
    return _HEAD.pack(_HEAD_MAGIC, _VERSION, generation, zlib.crc32(body)).ljust(_BLOCK, b"\0")


def _read_generation(fd: int) -> int | None:
    magic, version, generation, crc = _HEAD.unpack(os.pread(fd, _HEAD.size, 0))
    if magic != _HEAD_MAGIC or version != _VERSION or crc != zlib.crc32(struct.pack("<4sIQ", magic, version, generation)):
        return None
    return generation


class Journal:
    """``<root>/.journal``, opened (made and synced the first time) by :meth:`open`.  Thread-safe."""

    def __init__(self, root: Path, *, size: int = _SIZE, checkpoint_every: int = CHECKPOINT_EVERY) -> None:
        self.path = Path(root) / JOURNAL_NAME
        self.size = size
        self.checkpoint_every = checkpoint_every
        self._fd: int | None = None
        self._generation = 0
        self._offset = _BLOCK
        self._records = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        """Open the journal, made of zeros and synced (with its directory) if new.  Idempotent."""
        with self._lock:
            if self._fd is not None:
                return
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                generation = _read_generation(fd) if os.fstat(fd).st_size >= self.size else None
                if generation is None:
                    # Written out in full now: an append then overwrites blocks
                    # that exist, and its fdatasync has no metadata to write.
                    zeros = bytes(1 << 20)
                    for offset in range(0, self.size, len(zeros)):
                        os.pwrite(fd, zeros[: self.size - offset], offset)
                    generation = 1
                    os.pwrite(fd, _header(generation), 0)
                    os.fsync(fd)
                    fsync_dir(self.path.parent)
            except BaseException:
                os.close(fd)
                raise
            self._fd, self._generation, self._offset, self._records = fd, generation, _BLOCK, 0

    @property
    def pending(self) -> int:
        """Records appended since the last checkpoint."""
        return self._records

    def append(self, rel: str, chunks: list[bytes | memoryview]) -> None:
        """Append a file's bytes and sync them: durable once this returns (:meth:`write`, then
        :meth:`sync`)."""
        self.sync(self.write(rel, chunks))

    def write(self, rel: str, chunks: list[bytes | memoryview]) -> int:
        """Write a record of a file's bytes and start writing it out to the disk, without
        waiting; its generation, for :meth:`sync`.  Checkpoints first when it would not fit."""
        path = rel.encode("ascii")
        length = sum(map(len, chunks))
        need = -(-(_RECORD.size + len(path) + length) // _BLOCK) * _BLOCK
        if need > self.size - _BLOCK:
            raise ValueError(f"{length} bytes do not fit in the journal")
        crc = zlib.crc32(path)
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
        with self._lock:
            fd = self._require()
            if self._offset + need > self.size:
                self._checkpoint_locked()
            head = _RECORD.pack(_RECORD_MAGIC, self._generation, len(path), length, crc)
            os.pwritev(fd, [head, path, *chunks], self._offset)
            _start_writeout(fd, self._offset, need)
            self._offset += need
            self._records += 1
            return self._generation

    def sync(self, generation: int) -> bool:
        """Wait until every record written so far is durable.  False when a checkpoint
        came after the record of ``generation`` was written: the record no longer counts,
        and the caller must make its file durable itself."""
        os.fdatasync(self._require())
        with self._lock:  # not in the middle of a checkpoint
            return self._generation == generation

    def checkpoint(self, *, if_pending: bool = True) -> None:
        """Make every file written so far durable, then start a new generation."""
        with self._lock:
            if self._fd is None or (if_pending and not self._records):
                return
            self._checkpoint_locked()

    def due(self) -> bool:
        """Whether enough records accumulated for a checkpoint."""
        return self._records >= self.checkpoint_every

    def close(self) -> None:
        """Checkpoint and close (nothing left to replay after a clean close)."""
        with self._lock:
            if self._fd is None:
                return
            try:
                if self._records:
                    self._checkpoint_locked()
            finally:
                os.close(self._fd)
                self._fd = None

    def _require(self) -> int:
        if self._fd is None:
            raise OSError("the journal is closed")
        return self._fd

    def _checkpoint_locked(self) -> None:
        fd = self._require()
        _syncfs(fd)  # every file and directory written before now
        self._generation += 1
        os.pwrite(fd, _header(self._generation), 0)
        os.fdatasync(fd)
        self._offset, self._records = _BLOCK, 0


def replay(path: Path) -> Iterator[tuple[str, bytes]]:
    """The (relative path, file bytes) of the current generation's records, in order."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(fd).st_size
        if size < _BLOCK:
            return
        generation = _read_generation(fd)
        if generation is None:
            return
        offset = _BLOCK
        while offset + _RECORD.size <= size:
            magic, record_generation, path_length, length, crc = _RECORD.unpack(os.pread(fd, _RECORD.size, offset))
            end = offset + _RECORD.size + path_length + length
            if magic != _RECORD_MAGIC or record_generation != generation or end > size:
                return
            body = os.pread(fd, path_length + length, offset + _RECORD.size)
            if len(body) != path_length + length or zlib.crc32(body) != crc:
                return  # torn: never acknowledged
            try:
                rel = body[:path_length].decode("ascii")
            except UnicodeDecodeError:
                return
            yield rel, body[path_length:]
            offset += -(-(end - offset) // _BLOCK) * _BLOCK
    finally:
        os.close(fd)

