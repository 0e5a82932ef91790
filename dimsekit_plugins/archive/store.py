"""The built-in archive: Part 10 files on disk, a SQLite index beside them.

:class:`Archive` provides :class:`~dimsekit.interfaces.IArchive`.  A C-STORE
goes through it like this:

1. :meth:`Archive.receive` (reactor thread, when the C-STORE-RQ command set is
   complete): the UIDs of the command are checked, then the free-space floor.
2. :meth:`IncomingInstance.write` (reactor thread): the data set bytes, as
   they arrive, unparsed, are held -- as handed in (views of what was read
   from the socket), not copied: ``writev`` writes them to the file as they
   are, many at a time, without a user-space buffer.  Once 64 KiB are there
   (a large data set), the reactor thread creates the temporary file
   ``.incoming/<sop uid>.<random><count>.part`` (on the same file system as the
   final place, so the rename below is atomic) with the preamble and File
   Meta Information, and reads the header from those 64 KiB; a creation
   that took over 2 ms (a slow or network file system) has the thread pool
   create the files of the next minute's large instances instead (one job:
   file, then header), so a slow disk does not stall every association.  A
   small data set is written, file and all, by the commit's worker (one
   thread hand-off rather than two, which cost more CPU than the creation).
   Once the file exists, every 256 KiB received are written to it from the
   reactor thread (into the page cache: a pool thread would not get the GIL
   before the data set is all there), and the kernel is asked to start
   writing them out (``posix_fadvise``), so the fsync at the end waits for
   little.  Past 8 MiB held without a file (the pool far behind) the reactor
   thread creates it, holding the sender back.  The header: up to the last
   element the index needs, the elements found by a scan of their framing,
   converted by pydicom (pydicom's reader wherever the scan cannot frame
   them, see :func:`~dimsekit_plugins.archive.header.scan_header`); by the commit's worker for a small
   instance.
3. :meth:`IncomingInstance.commit` -- everything else runs in the archive's
   own thread pool, never in the reactor thread: take the header (or read it
   from the file when the first bytes were not enough); check it against the
   command (SOP Class/Instance UID) and check the Study/Series Instance UIDs
   that make up the path; apply the duplicates policy; put the file into
   ``<study>/<series>/<sop>.dcm`` (new directories fsynced into their
   parents) and fsync it and its directory -- a new file is renamed first and
   synced after, which makes one journal commit do for both (see
   :meth:`Archive._store_file`).  The Deferred fires then: success means
   durable.  Its index row joins the rows waiting to be written, in the
   same breath as the answer; they are written in one transaction when 64
   wait, 50 ms after the first, before any read of the index and at close
   (see :meth:`Archive._index_new`), so anything that learns of the
   instance (a hook, a C-FIND, a storage commitment) finds it indexed.  A
   copy of the instance that a row moved away from (sent again under
   another series) is removed once the row is written.  Any failure before
   the answer removes the file, also after its rename (a failed fsync) --
   except a copy that replaced the stored one in place (synced before that
   rename), which stays for reconcile to index.  An index write that fails
   after the answer is retried with the next batch or read (and reconcile
   indexes the file).

Concurrency: commits of different instances run in parallel up to the pool
size; the rename and the answer each hold one lock (``_write_lock``,
re-entrant), which :meth:`reconcile` also takes while it fixes anything;
the index is written holding ``_db_lock``, and the waiting rows are guarded
by ``_rows_lock``.  A file renamed into place whose commit has not yet made
it durable and answered is in ``_placing``, and reconcile leaves it alone
(it would otherwise index a file not yet synced, or take a copy moved to
another series for a stale one), as it leaves a file whose row waits.
Commits of the same SOP Instance UID are serialised in arrival order.

A small new instance (the data set under 64 KiB, duplicates ``newest``)
takes a shorter path: its file is put in place unsynced and the whole file
appended to the journal, synced there (one device flush instead of the
file's and its directory's), before the answer; checkpoints make the files
durable in bulk (see :mod:`~dimsekit_plugins.archive.journal`).

Crash consistency: a file reaches its place either synced, or (new files)
with its full length recorded in an extended attribute just before the
rename, or (small ones) with its bytes in the journal, which is replayed
before anything else after a restart; it is indexed only once durable.  So after a crash the worst cases are
a stray temporary file, a file without a row (complete, or shorter than its
recorded length: quarantined), or a row whose file vanished.
:meth:`reconcile` (run when the archive starts) fixes all of them and reports it.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import io
import itertools
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

import dimsekit
from dimsekit.datasets import dataset_defect
from dimsekit.dimse.fragments import write_chunks as _write_chunks
from dimsekit.errors import LocalProtocolError
from dimsekit.interfaces import IArchive, IIncomingInstance, StoredInstance
from dimsekit.libraries_log import about
from dimsekit_plugins.archive import index
from dimsekit_plugins.archive.errors import (
    STATUS_DATASET_MISMATCH,
    ArchiveError,
    CannotUnderstand,
    DatasetMismatch,
    DuplicateRejected,
    OutOfResources,
)
from dimsekit_plugins.archive.header import HeaderJob, header_from_prefix
from dimsekit_plugins.archive.journal import Journal, replay
from dimsekit_plugins.archive.layout import (
    INCOMING,
    INDEX_NAME,
    LOCK_NAME,
    check_uid,
    is_instance_path,
    relative_path,
)
from dimsekit_plugins.archive.layout import LENGTH_XATTR as _LENGTH_XATTR
from dimsekit_plugins.archive.layout import fsync_dir as _fsync_dir
from dimsekit_plugins.archive.layout import unlink as _unlink
from dimsekit_plugins.archive.reconcile import Reconciling
from dimsekit_plugins.archive.settings import DUPLICATE_POLICIES, ArchiveSettings

__all__ = ["Archive", "IncomingInstance", "ArchivedInstance"]

_log = Logger(namespace="dimsekit.archive")

_MB = 1 << 20
#: how much of each data set is kept in memory as it arrives, to read its header from
_PREFIX = 64 * 1024
#: after this many bytes of a data set the kernel is asked to start writing them out
_WRITEBACK = 256 * 1024
#: received bytes not yet written past which the reactor thread writes them itself (back-pressure)
_MAX_PENDING = 8 * _MB
#: a file creation in the reactor thread slower than this (seconds: the file system is slow, a
#: network one, or its journal busy) has files created in the thread pool for _POOL_CREATES_FOR s
_SLOW_CREATE = 0.002
_POOL_CREATES_FOR = 60.0
#: free space this far above the floor is not checked again for a second
_FREE_MARGIN = 1 << 30
#: the rows of answered instances are written in one transaction once this many wait ...
_ROWS_BATCH = 64
#: ... or this long (seconds) after the first of them was answered, or before any read
_ROWS_DELAY = 0.05
#: how many directories known to exist are remembered (then forgotten all at once)
_KNOWN_DIRS = 4096
_FADV_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)
#: a synced file at least this long leaves the page cache (unless keep_cached; see _drop_cached)
_DROP_CACHED_FROM = _WRITEBACK
_TAG_SOP_CLASS = 0x00080016
_TAG_SOP_INSTANCE = 0x00080018
_TAG_STUDY = 0x0020000D
_TAG_SERIES = 0x0020000E


class ArchivedInstance(StoredInstance):
    """A :class:`~dimsekit.interfaces.StoredInstance` with what this archive adds.

    ``duplicate_discarded``: the SOP Instance was stored already and, by the
    ``first`` policy, the copy just received was thrown away (the fields
    describe the copy kept).  ``record``: the full
    :class:`~dimsekit_plugins.archive.index.InstanceRecord`.
    """

    __slots__ = ("duplicate_discarded", "record")

    def __init__(self, **fields: object) -> None:
        for name in (*StoredInstance.__slots__, *ArchivedInstance.__slots__):
            setattr(self, name, fields.get(name))

    @classmethod
    def of(cls, root: Path, record: index.InstanceRecord, *, path: Path | None = None,
           **extra: object) -> ArchivedInstance:
        """``path``: the file's (``root`` + the record's relative path), when the caller has it already."""
        return cls(
            sop_class_uid=record.sop_class_uid,
            sop_instance_uid=record.sop_instance_uid,
            study_instance_uid=record.study_instance_uid,
            series_instance_uid=record.series_instance_uid,
            patient_id=record.patient_id,
            transfer_syntax=record.transfer_syntax_uid,
            path=path if path is not None else root.joinpath(*record.path.split("/")),
            size=record.size,
            source_ae=record.source_ae,
            received_at=record.received_at,
            record=record,
            **extra,
        )


def part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str | None) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 7.1) for a received instance.

    pydicom encodes the group once per SOP class, transfer syntax, source AE
    and length of the instance UID (so the group length is the same); the
    instance UID is then put in place of a placeholder of that length.  Encoding
    it from scratch each time cost ~0.2 ms of reactor time per instance.
    """
    template, offset = _header_template(sop_class_uid, transfer_syntax, source_ae or "", len(sop_instance_uid))
    value = sop_instance_uid.encode("ascii")
    return b"".join((template[:offset], value, template[offset + len(value):]))


@functools.lru_cache(maxsize=512)
def _header_template(sop_class_uid: str, transfer_syntax: str, source_ae: str, uid_length: int) -> tuple[bytes, int]:
    """The encoded header with a placeholder instance UID of ``uid_length`` characters, and its offset."""
    placeholder = "1" * uid_length
    encoded = _encode_part10_header(sop_class_uid, placeholder, transfer_syntax, source_ae)
    # (0002,0003) UI, explicit VR little endian: tag, "UI", 2-byte length, value.
    marker = b"\x02\x00\x03\x00UI"
    at = encoded.index(marker) + len(marker) + 2
    if encoded[at:at + uid_length] != placeholder.encode("ascii"):  # pragma: no cover - pydicom changed its layout
        raise AssertionError("unexpected File Meta Information layout")
    return encoded, at


def _encode_part10_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = dimsekit.IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = dimsekit.IMPLEMENTATION_VERSION_NAME
    if source_ae:
        meta.SourceApplicationEntityTitle = source_ae
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class _Held:
    """The stored copy a new one is about to replace, held open (see :func:`_hold`)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    def release(self) -> None:
        """Close it (once): the old copy's blocks are freed now."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


#: what a file system that will not replace a file someone holds open answers a rename over it
_IN_USE = frozenset({errno.EBUSY, errno.EACCES, errno.EPERM, errno.ETXTBSY})


def _hold(path: Path) -> tuple[_Held | None, bool]:
    """The stored copy a new one is about to replace, held open, and whether there is one.

    Renaming over a file frees its blocks and page cache in the ``rename``
    itself, before the answer: for a 1 GiB instance sent again, ~20 % of the
    C-STORE's time here (tmpfs; ext4 frees its extents the same way).  Held
    open, the old inode lives on until :meth:`Archive._store_file` lets it go,
    after the answer.  Nothing of it survives a crash: an open descriptor is
    not on disk (ext4 and XFS drop orphaned inodes when they mount).
    """
    try:
        return _Held(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)), True
    except FileNotFoundError:
        return None, False  # the usual case: a new instance
    except OSError:
        return None, path.exists()


def _create(path: Path | str) -> int:
    """Create ``path`` (it must not exist) for writing (and reading back: the commit checks the framing); its descriptor."""
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)


def _resource_error(exc: OSError, doing: str) -> OutOfResources:
    reason = "disk full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc))
    return OutOfResources(f"cannot {doing}: {reason}")


@implementer(IIncomingInstance)
class IncomingInstance:
    """A C-STORE data set on its way into the archive (a data sink).  See the module docstring."""

    def __init__(
        self,
        archive: Archive,
        *,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        source_ae: str | None,
        temp_path: Path | str,
        header_length: int,
        part10_header: bytes | None = None,
    ) -> None:
        self.archive = archive
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax = transfer_syntax
        self.source_ae = source_ae
        #: the temporary file (a str: a Path made for every instance cost the reactor ~8 us)
        self._temp = os.fspath(temp_path)
        self.header_length = header_length
        self.size = 0
        #: receiving -> closed -> committing -> committed | failed; or aborted
        self.state = "receiving"
        #: a write failed (disk full): the data is dropped, commit() fails with this
        self.error: ArchiveError | None = None
        self.stored: ArchivedInstance | None = None
        #: the temporary file's descriptor, opened by the first _drain (a pool thread); guarded by _file_lock
        self._fd: int | None = None
        self._file_lock = threading.Lock()
        #: bytes received and not yet written (the preamble and File Meta first); guarded by _lock
        self._pending: list[bytes] = [part10_header] if part10_header else []
        self._pending_size = 0
        self._lock = threading.Lock()
        self._unflushed = 0
        self._file_asked = False  # a pool thread was asked to create the file
        #: the first _PREFIX bytes of the data set, to read its header from
        self._prefix = bytearray()
        self._header: HeaderJob | None = None
        #: where the header scan's framing of the prefix ended (the cut-short check starts there)
        self._framed: list[int] = []

    def _start_header(self, *, complete: bool) -> None:
        """The job reading the header from the first bytes (run by the pool job or the commit)."""
        prefix = bytes(self._prefix)
        self._header = HeaderJob(functools.partial(header_from_prefix, prefix, complete, self.transfer_syntax,
                                                   self._framed))

    def _drain(self, *, tail: bool = False) -> None:
        """Write what is pending into the temporary file, creating it first (any thread; the pool's).

        Run first once a data set proves large, by :meth:`_create_and_read` (the
        reactor thread, or a pool job after a slow creation), so that the file
        exists while the rest arrives;
        :meth:`write` then calls it every
        256 KiB, so most of a large data set is written -- and being written
        out by the kernel -- by the time the last fragment comes; the commit's
        worker calls it for the rest.  A write error drops the data (see
        :attr:`error`); after :meth:`abort` nothing more is written.

        ``tail`` (:meth:`commit`, the last bytes in): the kernel is also asked to
        start writing what it has not been asked to yet, however little, so that
        the device is busy with the tail while the commit's worker wakes up and
        checks the header; its fsync then waits for less (A/B, 16 rounds of 600
        CT on one association: +4 % and +9.5 %, 11 of 16 rounds faster).
        """
        with self._file_lock:
            while True:
                with self._lock:
                    chunks, self._pending, self._pending_size = self._pending, [], 0
                    if not chunks:
                        break
                if self.error is not None or self.state == "aborted":
                    continue  # dropped
                try:
                    fd = self._fd
                    if fd is None:
                        fd = self._fd = _create(self._temp)
                    self._unflushed += _write_chunks(fd, chunks)
                except OSError as exc:
                    self._write_failed(exc)
            fd = self._fd
            if (fd is not None and self.error is None and self._unflushed
                    and (tail or self._unflushed >= _WRITEBACK) and _FADV_DONTNEED is not None):
                # Have the kernel start writing what arrived so far: the fsync
                # at the end then waits for little.
                self._unflushed = 0
                try:
                    os.posix_fadvise(fd, 0, 0, _FADV_DONTNEED)
                except OSError:
                    pass  # a hint: the fsync writes it all the same

    def _create_and_read(self) -> None:
        """A large data set's file created (timed for :meth:`Archive.creation_took`) and what is
        there written, then its header read -- by the reactor thread, or a pool job after a slow creation."""
        with self._file_lock:
            # Not once the commit is over (a pool job that got the lock late): the
            # file would be made again, and left with its descriptor open.
            if self._fd is None and self.error is None and self.state not in ("aborted", "committed", "failed"):
                started = time.monotonic()
                try:
                    self._fd = _create(self._temp)
                except OSError as exc:
                    self._write_failed(exc)
                self.archive.creation_took(time.monotonic() - started)
        self._drain()
        header = self._header
        if header is not None:
            with self.about():
                header.run()  # the scan: ~30 us for an image header

    def cut_short(self) -> str | None:
        """Why the data set is no image -- cut short, compressed fragments in an uncompressed syntax,
        another codec's -- or None (:func:`~dimsekit.datasets.dataset_defect`): the commit's
        worker, once the data set is all in the file or the prefix."""
        fd, base = self._fd, self.header_length
        read = None if fd is None else (lambda offset, size: os.pread(fd, size, base + offset))
        return dataset_defect(self._prefix, self.size, self.transfer_syntax, read, self._framed[-1] if self._framed else 0)

    def __repr__(self) -> str:
        return f"<IncomingInstance {self.sop_instance_uid} {self.state} {self.size} bytes>"

    def about(self) -> about:
        """What pydicom says while this instance is read is said of it and its sender, in the
        node's log (:class:`~dimsekit.libraries_log.about`)."""
        peer = self.source_ae or ""
        return about(peer, lambda: f"storing {self.sop_instance_uid} from {peer or '-'}")

    @property
    def temp_path(self) -> Path:
        """The temporary file the data set goes into until its commit."""
        return Path(self._temp)

    # -- DataSink -----------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> None:
        """Append data set bytes (reactor thread), held until written (by the pool's job, by this
        thread every 256 KiB once the file exists, or by the commit's worker).

        After :meth:`abort` (the archive closing under a transfer) the rest is dropped.
        """
        if self.state != "receiving":
            if self.state == "aborted":
                self.size += len(data)
                return
            raise LocalProtocolError(f"write to an incoming instance that is {self.state}")
        self.size += len(data)
        if self.error is not None:
            return  # a write failed: keep counting, drop the data
        prefix = self._prefix
        if len(prefix) < _PREFIX:
            prefix += data[: _PREFIX - len(prefix)]
            if len(prefix) >= _PREFIX and self._header is None:
                self._start_header(complete=False)  # read by the pool job below
        with self._lock:
            self._pending.append(data)  # as handed in: a view stays valid (DataSink.write)
            self._pending_size += len(data)
            pending = self._pending_size
        if not self._file_asked and self.size >= _PREFIX:
            # A large data set: its file is created now, and its header read,
            # so that the rest goes to the page cache as it arrives.  Here,
            # while the file system creates files quickly: a pool thread asked
            # to do it often did not get the GIL before the data set was all
            # there (this thread was busy receiving), and the hand-off and the
            # lock between them cost ~12 % of the CPU of a CT instance.  In the
            # pool otherwise (see Archive.creation_took).  A small data set is
            # written, file and all, by the commit's worker: one hand-off.
            self._file_asked = True
            if self.archive.create_here():
                self._create_and_read()
            else:
                self.archive._submit(self._create_and_read)
        if pending >= _MAX_PENDING or pending >= _WRITEBACK and self._fd is not None:
            # Into the page cache from here: a pool thread would not get the
            # GIL while this thread is busy receiving.  The file was created
            # by the pool (that blocked); writing it does not.  Past
            # _MAX_PENDING without a file (the pool far behind), the file is
            # created here too, holding the sender back.
            self._drain()

    def write_many(self, chunks: list[bytes | memoryview]) -> None:
        """Append several fragments (reactor thread): as :meth:`write` of each, with the
        bookkeeping done once -- the assembler's run of a data set streaming in."""
        if self.state != "receiving" or self.error is not None or not self._file_asked:
            for chunk in chunks:  # the first fragments, or after a failure: one by one
                self.write(chunk)
            return
        size = sum(map(len, chunks))
        self.size += size
        with self._lock:
            self._pending += chunks
            self._pending_size += size
            pending = self._pending_size
        if pending >= _MAX_PENDING or pending >= _WRITEBACK and self._fd is not None:
            self._drain()  # as in write()

    def _write_failed(self, exc: OSError) -> None:
        """(Holding _file_lock.)"""
        self.error = _resource_error(exc, "write the instance")
        _log.warn("{uid}: {error}; the rest of its data set is dropped", uid=self.sop_instance_uid, error=self.error)
        self._close_file()
        _unlink(self._temp)

    def close(self) -> None:
        """The last fragment arrived."""
        if self.state == "receiving":
            self.state = "closed"

    def abort(self) -> None:
        """Throw the partial instance away: no file remains.  Idempotent; too late once committing."""
        if self.state not in ("receiving", "closed"):
            return
        self.state = "aborted"
        with self._lock:
            self._pending, self._pending_size = [], 0
        with self._file_lock:  # a drain in progress finishes first; later ones write nothing
            self._close_file()
            _unlink(self._temp)
        self.archive._forget(self)

    def open(self) -> IO[bytes]:
        """The data set bytes received, as a binary file positioned at their start."""
        if self.state == "committed" and self.stored is not None:
            path = Path(self.stored.path)
            offset = self.header_length
            if self.stored.duplicate_discarded:
                from dimsekit.datasets import part10_info

                offset = part10_info(path).dataset_offset
        elif self.state in ("receiving", "closed") and self.error is None and self.size <= len(self._prefix):
            return io.BytesIO(bytes(self._prefix))
        elif self.state in ("receiving", "closed") and self.error is None:
            self._drain()
            path, offset = self.temp_path, self.header_length
        else:
            raise LocalProtocolError(f"the data set of an incoming instance that is {self.state} cannot be read")
        f = path.open("rb")
        f.seek(offset)
        return f

    def commit(self) -> Deferred:
        """Make it durable, then indexed; a Deferred firing with an :class:`ArchivedInstance` once durable
        (the index row follows in a batch, written before any read of the index gets through)."""
        if self.state == "aborted":
            return defer.fail(OutOfResources("the archive closed before the instance was complete"))
        if self.state != "closed":
            return defer.fail(LocalProtocolError(f"commit() of an incoming instance that is {self.state}"))
        self.state = "committing"
        if self.error is None and self._header is None:
            self._start_header(complete=True)
        committed = self.archive._commit(self)
        if self._fd is not None and (self._pending or self._unflushed) and len(self.archive._live) <= 1:
            # The rest of a large data set (up to 256 KiB) goes into its file,
            # and the device starts writing it, from here while the commit's
            # worker wakes up (~50-100 us on a small VM), not after: +3-4 % CT
            # instances/s on one association (the write), +4-9 % (the write-out).
            # Not while other instances stream in: this thread is then the
            # busiest, and the worker writes it as before.
            self._drain(tail=True)
        return committed

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


@implementer(IArchive)
class Archive(Reconciling):
    """Part 10 files under ``root`` and their SQLite index.

    :param root: the data directory (created on :meth:`start`).
    :param duplicates: a SOP Instance UID already stored: ``"newest"`` replaces
        it, ``"first"`` keeps the stored copy and discards the new one,
        ``"reject"`` refuses the new one (:class:`DuplicateRejected`).
    :param min_free_mb: :meth:`receive` refuses while less space is free.
    :param threads: size of the worker thread pool.
    :param fsync: fsync files and directories before success (turn off only
        for throwaway data).
    :param keep_cached: leave a large instance's file in the page cache once
        it is synced (by default its pages are dropped: see :meth:`_drop_cached`).
    :param journal: make small new instances durable by a journal append
        rather than two fsyncs (see :mod:`~dimsekit_plugins.archive.journal`).
    :param reactor: the reactor the Deferreds fire in (default: the global one).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        duplicates: str = "newest",
        min_free_mb: float = 100.0,
        threads: int = 4,
        fsync: bool = True,
        keep_cached: bool = False,
        journal: bool = True,
        reactor: Any = None,
    ) -> None:
        if duplicates not in DUPLICATE_POLICIES:
            raise ValueError(f"duplicates must be one of {DUPLICATE_POLICIES}, not {duplicates!r}")
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.root = Path(root)
        self.incoming_dir = self.root / INCOMING
        # Temporary file names: a random prefix of this archive's own and a count (a
        # getrandom() system call per instance cost ~1 % of the reactor's time).
        self._part_prefix = secrets.token_hex(6)
        self._incoming_str = str(self.incoming_dir)
        self._part_serial = itertools.count()
        self.duplicates = duplicates
        self.min_free_mb = float(min_free_mb)
        self.fsync = fsync
        self.keep_cached = keep_cached
        self.reactor = reactor
        self.started = False
        self.closed = False
        #: the report of the last reconcile() (a dict), None before one ran
        self.last_reconcile: dict[str, Any] | None = None
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name=f"dimsekit-archive {self.root}")
        self._conn: sqlite3.Connection | None = None
        #: set once close() closed the index: nothing opens it again
        self._db_closed = False
        self._db_lock = threading.Lock()
        #: re-entrant: a read under it (reconcile's) removes the copies rows moved away from
        self._write_lock = threading.RLock()
        self._live: dict[str, IncomingInstance] = {}  # temp file name -> instance; guarded by _live_lock
        self._live_lock = threading.Lock()
        self._uid_locks: dict[str, DeferredLock] = {}
        self._inflight = 0
        self._idle_waiters: list[Deferred] = []
        self._trigger: Any = None
        self._closing: Deferred | None = None
        self._stopped = False
        self._lock_file: IO[str] | None = None
        #: rename new files into place before syncing them (see _store_file); off without xattrs
        self._rename_first = hasattr(os, "setxattr")
        self._free_ok_until = 0.0
        #: until when (time.monotonic()) large data sets' files are created in the pool
        self._pool_creates_until = 0.0
        #: series directories known to exist (see _make_dirs); guarded by _write_lock
        self._known_dirs: set[Path] = set()
        #: relative paths of files renamed into place whose commit has not indexed them yet;
        #: guarded by _write_lock
        self._placing: set[str] = set()
        #: records of answered (durable) instances whose rows are not written yet, in answer
        #: order (see _index_new); guarded by _rows_lock, written holding _db_lock
        self._unindexed: list[index.InstanceRecord] = []
        #: (SOP Instance UID, relative path) of copies a row written moved away from, to remove
        #: (see _remove_stale); guarded by _rows_lock
        self._stale: list[tuple[str, str]] = []
        self._rows_lock = threading.Lock()
        self._rows_timer: Any = None  # the reactor's delayed call that writes waiting rows
        #: small instances made durable by one append (see journal.py); replayed before first use
        self._journal = Journal(self.root) if fsync and journal else None
        self._journal_ready = False
        self._journal_init = threading.Lock()

    @classmethod
    def from_settings(cls, settings: ArchiveSettings, reactor: Any = None) -> Archive:
        return cls(
            settings.root,
            duplicates=settings.duplicates,
            min_free_mb=settings.min_free_mb,
            threads=settings.threads,
            fsync=settings.fsync,
            keep_cached=settings.keep_cached,
            journal=settings.journal,
            reactor=reactor,
        )

    def __repr__(self) -> str:
        return f"<Archive {self.root}>"

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Create the directories and start the thread pool (stopped with the reactor).

        Idempotent.  Called by the other methods when needed.
        """
        if self.started:
            return
        if self.closed:
            raise OutOfResources("the archive is closed")
        try:
            self.incoming_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _resource_error(exc, f"create the data directory {self.root}") from exc
        self._lock_root()
        self.started = True
        self._pool.start()
        add_trigger = getattr(self.reactor, "addSystemEventTrigger", None)
        if add_trigger is not None:
            # "during" shutdown: after the services' stopService (the "before"
            # phase) let the associations end, like the reactor's own thread pool.
            self._trigger = add_trigger("during", "shutdown", self._shutdown)

    def close(self) -> Deferred:
        """Refuse new instances, wait for commits in progress, close the index, stop the threads."""
        if self._closing is not None:
            d: Deferred = Deferred()
            self._closing.addBoth(lambda result: (d.callback(None), result)[1])
            return d
        self._refuse_new()
        self._cancel_rows_timer()
        self._closing = Deferred()
        if not self.started or self._stopped:
            self._closing.callback(None)
            return self.close()

        def stop(result: object) -> None:
            if isinstance(result, Failure):
                _log.failure("closing the archive index failed", result)
            self._stop_threads()
            self._unlock_root()
            remove = getattr(self.reactor, "removeSystemEventTrigger", None)
            if remove is not None and self._trigger is not None:
                try:
                    remove(self._trigger)
                except (ValueError, KeyError, TypeError):
                    pass
                self._trigger = None
            self._closing.callback(None)  # type: ignore[union-attr]

        waited = self._wait_idle()
        waited.addCallback(lambda _: deferToThreadPool(self.reactor, self._pool, self._close_db))
        waited.addBoth(stop)
        return self.close()

    def _shutdown(self) -> None:
        """The reactor is shutting down (and will run no more of our callbacks): stop now.

        Joining the threads lets a commit in progress finish its rename and
        index write (its answer can no longer be sent; the instance is kept).
        """
        if self._stopped:
            return
        self._refuse_new()
        self._cancel_rows_timer()
        self._stop_threads()
        self._close_db()
        self._unlock_root()

    def _cancel_rows_timer(self) -> None:
        """No batch of rows in the pool from now on (close() writes what waits)."""
        timer, self._rows_timer = self._rows_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _lock_root(self) -> None:
        """Hold an exclusive lock on ``<root>/.lock`` while open: two processes
        sharing a data directory would take each other's instances in progress
        for debris of a crash.  The kernel drops the lock if the process dies."""
        path = self.root / LOCK_NAME
        try:
            file = path.open("a+")
        except OSError as exc:
            raise _resource_error(exc, f"open {path}") from exc
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise OutOfResources(f"the data directory {self.root} is in use by {holder}") from None
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()}\n")
        file.flush()
        self._lock_file = file

    def _unlock_root(self) -> None:
        file, self._lock_file = self._lock_file, None
        if file is not None:
            file.close()  # releases the lock

    def _refuse_new(self) -> None:
        self.closed = True
        with self._live_lock:
            live = list(self._live.values())
        for incoming in live:
            incoming.abort()

    def _stop_threads(self) -> None:
        if self.started and not self._stopped:
            self._stopped = True
            self._pool.stop()

    def _close_db(self) -> None:
        try:
            self._write_rows()
        except (sqlite3.Error, OSError, ArchiveError) as exc:  # reconcile indexes the files at the next start
            _log.warn("archive {root}: writing the last rows: {error}", root=str(self.root), error=exc)
        if self._journal is not None and self._journal_ready:
            try:
                self._journal.close()  # a checkpoint: nothing to replay at the next start
            except OSError as exc:
                _log.warn("archive {root}: closing the journal: {error}", root=str(self.root), error=exc)
        with self._db_lock:
            self._db_closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _wait_idle(self) -> Deferred:
        if self._inflight == 0:
            return defer.succeed(None)
        d: Deferred = Deferred()
        self._idle_waiters.append(d)
        return d

    def _refusal(self) -> Deferred | None:
        """Before work goes to the pool: a failed Deferred if the archive cannot take it."""
        if self._stopped:
            return defer.fail(OutOfResources("the archive is closed"))
        try:
            self.start()
        except ArchiveError:
            return defer.fail()
        return None

    def _run(self, function: Callable[..., Any], *args: Any) -> Deferred:
        """Run blocking work in the pool; close() waits for all of it."""
        refused = self._refusal()
        if refused is not None:
            return refused
        self._busy(+1)
        d = deferToThreadPool(self.reactor, self._pool, function, *args)
        return d.addBoth(lambda result: (self._busy(-1), result)[1])

    def _run_answering(self, function: Callable[..., Any], *args: Any) -> Deferred:
        """:meth:`_run` for work that answers before it ends: ``function(answer, *args)``.

        Calling ``answer(result)`` in the worker fires the Deferred (through
        the reactor) while the work goes on; its end then only matters to the
        pool (close() joins the threads, and takes the index's lock the rest
        holds).  Without a call to ``answer``, the return value or exception
        is the answer, as with :meth:`_run`.
        """
        refused = self._refusal()
        if refused is not None:
            return refused
        self._busy(+1)
        d: Deferred = Deferred()
        answered: list[bool] = []

        def answer(result: object) -> None:
            if not answered:
                answered.append(True)
                self.reactor.callFromThread(d.callback, result)

        def work() -> None:
            try:
                result = function(answer, *args)
            except BaseException:
                failure = Failure()
                if answered:  # pragma: no cover - the work after the answer handles its own failures
                    _log.failure("archive work failed after its answer", failure)
                    return
                answered.append(True)
                self.reactor.callFromThread(d.errback, failure)
            else:
                answer(result)

        self._pool.callInThread(work)
        return d.addBoth(lambda result: (self._busy(-1), result)[1])

    def _submit(self, work: Callable[[], None]) -> None:
        """Queue side work in the pool (no Deferred; whoever waits for it can run it instead)."""
        if self.started and not self._stopped:
            self._pool.callInThread(work)

    def _busy(self, delta: int) -> None:
        self._inflight += delta
        if self._inflight == 0:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _sql(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(connection, *args)`` with the index (worker thread)."""
        with self._db_lock:
            self._retry_unindexed()
            result = self._sql_locked(function, *args)
        self._remove_stale()
        return result

    def wait_for_index(self) -> None:
        """Return once the index writes under way are done (blocking: not in the reactor thread).

        A reader with a connection of its own (the Q/R plugin's) calls it before
        each query: every instance answered before then is in the index (the
        rows waiting for their batch are written first, as by :meth:`_sql`).
        """
        with self._db_lock:
            self._retry_unindexed()
        self._remove_stale()

    def _retry_unindexed(self) -> None:
        """Write the rows of answered instances that wait, if any (holding ``_db_lock``)."""
        if not self._unindexed:
            return
        try:
            self._put_unindexed()
        except (sqlite3.Error, OSError, ArchiveError) as exc:
            _log.error("{n} instance(s) stored durably but not yet indexed ({error}): the rows are written "
                       "again with the next batch or read, and reconcile() indexes the files in any case",
                       n=len(self._unindexed), error=exc)

    def _sql_locked(self, function: Callable[..., Any], *args: Any) -> Any:
        """:meth:`_sql`, holding ``_db_lock``."""
        if self._conn is None:
            if self._db_closed:  # work that got in while close() ran: the index stays closed
                raise OutOfResources("the archive is closed")
            self._conn = index.connect(str(self.root / INDEX_NAME))
        return function(self._conn, *args)

    # -- IArchive -------------------------------------------------------------------------

    def receive(
        self, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_ae: str | None
    ) -> IncomingInstance:
        """Start receiving an instance (reactor thread).  See the module docstring.

        :raises InvalidUID: a UID of the command is unusable (status 0117H).
        :raises OutOfResources: closed, below the free-space floor, or the
            temporary file cannot be created (status A700H).
        """
        if self.closed:
            raise OutOfResources("the archive is shutting down")
        check_uid(sop_instance_uid, "Affected SOP Instance UID", tag=0x00001000)
        check_uid(sop_class_uid, "Affected SOP Class UID", tag=0x00000002)
        check_uid(transfer_syntax, "transfer syntax")
        self.start()
        self._check_free_space()
        name = f"{sop_instance_uid}.{self._part_prefix}{next(self._part_serial):x}.part"
        path = f"{self._incoming_str}/{name}"
        header = part10_header(sop_class_uid, sop_instance_uid, transfer_syntax, source_ae)
        incoming = IncomingInstance(
            self,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax=transfer_syntax,
            source_ae=source_ae or None,
            temp_path=path,
            header_length=len(header),
            part10_header=header,
        )
        with self._live_lock:  # before the file exists: reconcile() must never take it for a stray one
            self._live[name] = incoming
        return incoming

    def lookup(self, sop_instance_uid: str) -> Deferred:
        """A Deferred firing with the :class:`ArchivedInstance` of a UID, or None."""

        def find() -> ArchivedInstance | None:
            record = self._sql(index.get, sop_instance_uid)
            return None if record is None else ArchivedInstance.of(self.root, record, replaced=False)

        return self._run(find)

    def query(self, sql: str, parameters: Any = ()) -> Deferred:
        """Run a read-only SQL query on the index (worker thread); fires with the rows as dicts."""
        return self._run(self._sql, index.rows, sql, parameters)

    def reconcile(self) -> Deferred:
        """Make files and index agree; fires with the report (also logged).

        The report's lists: ``temp_removed`` (stray temporary files),
        ``rows_dropped`` (rows whose file is gone), ``files_indexed`` (files
        without a row), ``rows_refreshed`` (rows whose file changed size),
        ``stale_removed`` (an older copy of an instance indexed elsewhere),
        ``quarantined`` (files that cannot be read, moved to ``.quarantine``),
        ``dirs_removed`` (empty study/series directories), ``journal_restored`` (files
        written back from the journal, after a crash; only if any); ``instances``: how
        many are indexed afterwards.
        """

        def done(report: dict[str, Any]) -> dict[str, Any]:
            self.last_reconcile = report
            fixed = {k: len(v) for k, v in report.items() if isinstance(v, list) and v}
            if fixed:
                _log.warn(
                    "archive {root}: reconciled files and index: {fixed}; {n} instances indexed",
                    root=str(self.root), fixed=", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in fixed.items()),
                    n=report["instances"],
                )
            else:
                _log.info("archive {root}: files and index agree; {n} instances", root=str(self.root), n=report["instances"])
            return report

        return self._run(self._reconcile).addCallback(done)

    # -- committing (worker thread) ------------------------------------------------------------

    def _check_free_space(self) -> None:
        """Refuse below the floor.  Far above it, a reading is trusted for a second (a statvfs per
        instance cost as much as the rest of receive())."""
        if self.min_free_mb <= 0:
            return
        now = time.monotonic()
        if now < self._free_ok_until:
            return
        try:
            free = shutil.disk_usage(self.root).free
        except OSError as exc:
            raise _resource_error(exc, "check the free disk space") from exc
        if free > self.min_free_mb * _MB + _FREE_MARGIN:
            self._free_ok_until = now + 1.0
        if free < self.min_free_mb * _MB:
            raise OutOfResources(
                f"{free // _MB} MB free, below the floor of {self.min_free_mb:g} MB (min_free_mb)"
            )

    def create_here(self) -> bool:
        """Whether the reactor thread creates a large data set's file itself (see
        :meth:`IncomingInstance.write`): unless a creation was slow a little while ago."""
        return time.monotonic() >= self._pool_creates_until

    def creation_took(self, seconds: float) -> None:
        """A file creation took ``seconds``: one slow enough to stall every association
        had it been the reactor thread's has files created in the thread pool for a
        while (a slow one there extends the while); said once as it begins."""
        if seconds > _SLOW_CREATE:
            beginning = self.create_here()
            self._pool_creates_until = time.monotonic() + _POOL_CREATES_FOR
            if not beginning:
                return
            _log.info(
                "archive {root}: creating a file took {ms:.1f} ms; for the next {period:g} s large "
                "instances' files are created in the thread pool",
                root=str(self.root), ms=seconds * 1000, period=_POOL_CREATES_FOR,
            )

    def _forget(self, incoming: IncomingInstance) -> None:
        with self._live_lock:
            self._live.pop(os.path.basename(incoming._temp), None)

    def _commit(self, incoming: IncomingInstance) -> Deferred:
        uid = incoming.sop_instance_uid
        lock = self._uid_locks.get(uid)
        if lock is None:
            lock = self._uid_locks[uid] = DeferredLock()
        self._busy(+1)

        def finished(result: object) -> object:
            if not lock.locked and not lock.waiting:
                self._uid_locks.pop(uid, None)
            self._forget(incoming)
            if isinstance(result, Failure):
                incoming.state = "failed"
            else:
                incoming.state = "committed"
                incoming.stored = result  # type: ignore[assignment]
            self._busy(-1)
            return result

        try:
            d = lock.run(self._run_answering, self._store, incoming)
        except Exception:
            d = defer.fail()
        return d.addBoth(finished)

    def _store(self, answer: Callable[[object], None], incoming: IncomingInstance) -> ArchivedInstance:
        temp = incoming.temp_path
        try:
            with incoming.about():
                return self._store_file(incoming, answer)
        except ArchiveError:
            _unlink(temp)
            raise
        except OSError as exc:
            _unlink(temp)
            raise _resource_error(exc, "store the instance") from exc
        except sqlite3.Error as exc:
            # The file may already be in place: reconcile() indexes it at the next start.
            _unlink(temp)
            raise OutOfResources(f"cannot index the instance: {exc}") from exc
        finally:
            incoming._close_file()

    def _store_file(self, incoming: IncomingInstance, answer: Callable[[object], None]) -> ArchivedInstance:
        """Sync, check, rename and index one instance (worker thread).

        ``answer`` is called with the result once the file and its name are
        durable, its index row then waiting for its batch (see
        :meth:`_index_new`); a failure before that is raised as before.

        Two orders, the same guarantee once it returns (file, name and
        directory synced): a new file is renamed into place *before* its fsync,
        so one journal commit makes both its data and its name durable (on
        ext4 and XFS, fsyncing the directory afterwards then costs nothing;
        a second commit cost ~1 ms per instance).  Its full length is put in an
        extended attribute first, so that after a crash in between,
        :meth:`reconcile` can tell a file that never got all its data
        (quarantined) from a complete one.  Replacing a stored copy, or where
        the file system has no extended attributes, the file is synced before
        it is renamed.
        """
        if self._journal is not None:
            self._open_journal()  # replayed before anything is stored (a record must not undo it)
            if not incoming._file_asked and incoming.error is None and self.duplicates == "newest":  # < 64 KiB
                journaled = self._store_journaled(incoming, answer)
                if journaled is not None:
                    return journaled
        incoming._drain()  # the rest of the data set (usually all of a small one)
        if incoming.error is not None:
            raise incoming.error
        fd = incoming._fd
        if fd is None:
            raise OutOfResources("the instance's file is gone")
        temp = incoming.temp_path
        header, incoming._header = incoming._header, None
        values = header.result() if header is not None else None
        if values is None:
            values = self._read_header(temp)
        size = os.fstat(fd).st_size
        record, final = self._checked_record(incoming, values, size)
        held, final_existed = _hold(final)
        try:
            return self._place(incoming, fd, temp, size, record, final, held, final_existed, answer)
        finally:
            if held is not None:
                held.release()  # the replaced copy's blocks are freed now, after the answer

    def _place(self, incoming: IncomingInstance, fd: int, temp: Path, size: int, record: index.InstanceRecord,
               final: Path, held: _Held | None, final_existed: bool,
               answer: Callable[[object], None]) -> ArchivedInstance:
        """:meth:`_store_file` once the record is checked: the file into place and durable (in the
        order :meth:`_store_file` gives), then the answer."""
        rel = record.path
        if final_existed:
            self._checkpoint()  # no journal record may bring back what this replaces
        rename_first = self.fsync and self._rename_first and not final_existed and self._mark_length(fd, size)
        if self.fsync and not rename_first:
            os.fsync(fd)
        with self._write_lock:
            if self.duplicates != "newest":
                # The policy decides here, before the file goes anywhere; "newest"
                # needs no look-up: index.put says what it replaced.
                existing = self._sql(index.get, incoming.sop_instance_uid)
                if existing is not None and not self.root.joinpath(*existing.path.split("/")).exists():
                    existing = None  # its file vanished: store this one as new
                if existing is not None and self.duplicates == "reject":
                    raise DuplicateRejected(
                        f"SOP Instance {incoming.sop_instance_uid} is stored already (duplicates = reject)"
                    )
                if existing is not None and self.duplicates == "first":
                    incoming._close_file()
                    _unlink(temp)
                    _log.info("{uid}: stored already; the copy just received is discarded (duplicates = first)",
                              uid=incoming.sop_instance_uid)
                    return ArchivedInstance.of(self.root, existing, replaced=False, duplicate_discarded=True)
            try:
                self._rename_into_place(temp, final)
            except OSError as exc:
                if held is None or exc.errno not in _IN_USE:
                    raise
                # A file system that will not replace a file held open (some SMB
                # servers): let the old copy go first, as before holding it.
                held.release()
                self._rename_into_place(temp, final)
            # In place, not yet durable and indexed: reconcile() leaves it alone
            # (it would index it unsynced, or take it for a stale copy and delete it).
            self._placing.add(rel)
        try:
            if rename_first:
                os.fsync(fd)
            if self.fsync:
                _fsync_dir(final.parent)
        except Exception:
            with self._write_lock:
                self._placing.discard(rel)
                if not final_existed:
                    # Not durable, or not indexed: it must not stay where reconcile
                    # would index it after the sender was told it failed.
                    _unlink(final)
                else:
                    # It replaced the stored copy in place (synced before its rename):
                    # kept, the next reconcile refreshes its row.
                    _log.warn("{uid}: stored in place over the previous copy, but not indexed; "
                              "reconcile refreshes its row", uid=incoming.sop_instance_uid)
            raise
        stored = ArchivedInstance.of(self.root, record, replaced=final_existed, duplicate_discarded=False, path=final)
        self._index_new(record, answer, stored)
        self._drop_cached(fd, size)  # after the answer: off the sender's path
        return stored

    def _index_new(self, record: index.InstanceRecord, answer: Callable[[object], None],
                   stored: ArchivedInstance) -> None:
        """Answer (the instance is durable); its index row is written with the next batch.

        The answer goes out before the index write (+13-17 % instances/s on one
        association, session 9); the rows are written in batches, one
        transaction for up to :data:`_ROWS_BATCH` instances (session 17: +8 %
        small, +9 % CT instances/s), :data:`_ROWS_DELAY` after the first at
        the latest.  Every read of the index writes the waiting rows first
        (:meth:`_sql`, :meth:`wait_for_index`), and the record joins them in
        the same breath as the answer, so whatever learns of this instance --
        a hook, a C-FIND, a storage commitment -- finds its row.  An index
        write that fails cannot fail the C-STORE any more (the file is
        durable, the sender was told so): the rows stay waiting and are
        written again with the next batch or read, and reconcile() indexes the
        file in any case.
        """
        with self._write_lock, self._rows_lock:
            answer(stored)
            self._unindexed.append(record)
            waiting = len(self._unindexed)
            self._placing.discard(record.path)  # waiting rows are known to reconcile too
        if waiting >= _ROWS_BATCH:
            self._write_rows(wait=False)
        elif waiting == 1:
            self.reactor.callFromThread(self._rows_due)

    def _rows_due(self) -> None:
        """Have the waiting rows written in :data:`_ROWS_DELAY` (reactor thread)."""
        if self._rows_timer is None and not (self.closed or self._stopped):  # close() writes them
            self._rows_timer = self.reactor.callLater(_ROWS_DELAY, self._rows_timer_fired)

    def _rows_timer_fired(self) -> None:
        self._rows_timer = None
        self._submit(self._write_rows)

    def _write_rows(self, *, wait: bool = True) -> None:
        """Write the waiting rows, then remove the copies they moved away from (worker thread,
        holding no lock).  ``wait=False``: not when another thread is writing the index."""
        if not self._db_lock.acquire(blocking=wait):
            return
        try:
            if self._db_closed:
                return
            self._retry_unindexed()
        finally:
            self._db_lock.release()
        self._remove_stale()

    def _put_unindexed(self) -> None:
        """Write the waiting rows, in one transaction (holding ``_db_lock``).  If it fails, one
        at a time: a row that cannot be written holds back only those after it."""
        with self._rows_lock:
            batch = list(self._unindexed)
        if not batch:
            return
        try:
            replaced = self._sql_locked(index.put_many, batch)
        except (sqlite3.Error, OSError, ArchiveError):
            if len(batch) == 1:
                raise
            for record in batch:
                self._rows_written([record], [self._sql_locked(index.put, record)])
            return
        self._rows_written(batch, replaced)

    def _rows_written(self, records: list[index.InstanceRecord], replaced: list[str | None]) -> None:
        with self._rows_lock:
            del self._unindexed[: len(records)]
            self._stale.extend(
                (record.sop_instance_uid, previous)
                for record, previous in zip(records, replaced, strict=True)
                if previous is not None and previous != record.path
            )
            later = bool(self._unindexed)
        if later and not self._stopped:  # answered while these were written: their own timer
            self.reactor.callFromThread(self._rows_due)

    def _remove_stale(self) -> None:
        """Remove the copies rows written moved away from (holding no lock but ``_write_lock``)."""
        if self._stale:
            with self._write_lock:
                self._remove_stale_locked()

    def _remove_stale_locked(self) -> None:
        """:meth:`_remove_stale`, holding ``_write_lock``: a copy goes unless a commit is placing
        a file there, a waiting row names it, or the index does again (the instance came back)."""
        with self._rows_lock:
            stale, self._stale = self._stale, []
            waiting = {record.path for record in self._unindexed}
        checkpointed = False
        for uid, rel in stale:
            if rel in self._placing or rel in waiting:
                continue
            with self._db_lock:
                current = self._sql_locked(index.get, uid)
            if current is not None and current.path == rel:
                continue
            if not checkpointed:
                self._checkpoint()  # no journal record may bring it back
                checkpointed = True
            _unlink(self.root.joinpath(*rel.split("/")))

    def _store_journaled(self, incoming: IncomingInstance, answer: Callable[[object], None]) -> ArchivedInstance | None:
        """A small new instance: into place unsynced, made durable by a journal append (see
        journal.py), then answered and indexed.  None: it takes the usual path."""
        header = incoming._header
        values = header.result() if header is not None else None
        if values is None:
            return None
        with incoming._lock:
            chunks = incoming._pending
        record, final = self._checked_record(incoming, values, sum(map(len, chunks)))
        if final.exists():
            return None  # a replacement: synced in place, after a checkpoint
        incoming._header = None
        with incoming._lock:
            incoming._pending, incoming._pending_size = [], 0
        # The record first, its write-out started: the device writes it while the
        # file goes into place (+3 % small instances/s).  A checkpoint in between
        # would make durable everything but this file, and drop its record: then
        # the file is synced here (journal.sync says so).
        journal = self._journal
        assert journal is not None
        generation = journal.write(record.path, chunks)
        placed = False
        try:
            fd = _create(incoming._temp)
            try:
                _write_chunks(fd, chunks)
                with self._write_lock:
                    self._rename_into_place(incoming.temp_path, final)
                    self._placing.add(record.path)
                    placed = True
                if not journal.sync(generation):
                    os.fsync(fd)
                    _fsync_dir(final.parent)
            finally:
                os.close(fd)
        except BaseException:
            if placed:
                with self._write_lock:
                    self._placing.discard(record.path)
                    _unlink(final)
            self._checkpoint()  # its record must not bring back what fails
            raise
        stored = ArchivedInstance.of(self.root, record, replaced=False, duplicate_discarded=False, path=final)
        self._index_new(record, answer, stored)
        if journal.due():
            self._checkpoint()
        return stored

    def _checked_record(self, incoming: IncomingInstance, values: dict[str, Any],
                        size: int) -> tuple[index.InstanceRecord, Path]:
        """The index record of a data set whose header gave ``values``, and its final place, once
        the header agrees with the command and its UIDs make a path, and the data set is whole."""
        self._check_against_command(values, incoming)
        defect = incoming.cut_short()
        if defect is not None:
            raise CannotUnderstand(defect)
        check_uid(values["study_instance_uid"], "Study Instance UID", status=STATUS_DATASET_MISMATCH, tag=_TAG_STUDY)
        check_uid(values["series_instance_uid"], "Series Instance UID", status=STATUS_DATASET_MISMATCH, tag=_TAG_SERIES)
        rel = relative_path(values["study_instance_uid"], values["series_instance_uid"], incoming.sop_instance_uid)
        record = index.InstanceRecord(**values, transfer_syntax_uid=incoming.transfer_syntax, path=rel, size=size,
                                      received_at=_now(), source_ae=incoming.source_ae)
        return record, self.root.joinpath(*rel.split("/"))

    def _rename_into_place(self, temp: Path, final: Path) -> None:
        """Rename, its directories made first (holding the write lock)."""
        self._make_dirs(final.parent)
        try:
            os.replace(temp, final)
        except FileNotFoundError:
            if not temp.exists():
                raise
            # Its directory went away under us (removed by hand): make it again.
            self._known_dirs.clear()
            self._make_dirs(final.parent)
            os.replace(temp, final)

    def _open_journal(self, report: dict[str, Any] | None = None) -> None:
        """Before the journal's first use: write back durably every file its records hold
        that is missing or differs (after a crash), then start a new generation."""
        journal = self._journal
        if journal is None or self._journal_ready:
            return
        with self._journal_init:
            if self._journal_ready:
                return
            with self._write_lock:
                restored = [rel for rel, data in replay(journal.path) if self._restore(rel, data)]
            journal.open()
            journal.checkpoint(if_pending=False)
            self._journal_ready = True
        if restored:
            _log.warn("archive {root}: {n} instance(s) written back from the journal", root=str(self.root),
                      n=len(restored))
            if report is not None:
                report["journal_restored"] = restored

    def _restore(self, rel: str, data: bytes) -> bool:
        """A journal record's file back in place, synced, unless it is there with these bytes
        (holding the write lock); False for that, or for a path not of the layout."""
        if not is_instance_path(rel):
            return False  # never a path outside the data directory
        final = self.root.joinpath(*rel.split("/"))
        if final.is_file() and final.read_bytes() == data:
            return False
        temp = self.incoming_dir / f"{self._part_prefix}{next(self._part_serial):x}.part"
        fd = _create(temp)
        try:
            _write_chunks(fd, [data])
            os.fsync(fd)
        finally:
            os.close(fd)
        self._rename_into_place(temp, final)
        _fsync_dir(final.parent)
        return True

    def _checkpoint(self) -> None:
        """Make the journaled files durable and empty the journal (worker thread)."""
        if self._journal is not None and self._journal_ready:
            self._journal.checkpoint()

    def _drop_cached(self, fd: int, size: int) -> None:
        """Drop a large file's pages from the page cache, now that they are synced (clean).

        The archive writes each instance once; left cached, every instance took
        fresh pages for the next one's writes.  Dropped, the next instance's
        writes reuse them: on a virtual machine whose host takes back the
        memory its guest leaves free, the copy into fresh pages cost up to 5x
        (the reactor thread's kernel time per CT instance doubled in half the
        runs here; benchmarks/README.md, session 16).  The index and the files
        that are read stay cached.  Dropping 525 KB costs ~80 us of kernel
        time, so it is done after the answer.  ``keep_cached`` leaves them,
        for a node that reads what it stores at once (a forwarder).  Failing
        is harmless: the pages stay.
        """
        if self.keep_cached or not self.fsync or size < _DROP_CACHED_FROM or _FADV_DONTNEED is None:
            return
        try:
            os.posix_fadvise(fd, 0, 0, _FADV_DONTNEED)
        except OSError:
            pass

    def _mark_length(self, fd: int, size: int) -> bool:
        """Record the file's full length in an extended attribute; False where they are not supported."""
        try:
            os.setxattr(fd, _LENGTH_XATTR, str(size).encode("ascii"))
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENOSYS):
                self._rename_first = False
                _log.info("archive {root}: no extended attributes ({error}); files are synced before they are "
                          "renamed into place (slower)", root=str(self.root), error=exc)
                return False
            raise
        return True

    def _read_header(self, path: Path) -> dict[str, Any]:
        try:
            dataset = dcmread(path, stop_before_pixels=True, specific_tags=list(index.HEADER_KEYWORDS))
            values = index.header_values(dataset)
        except Exception as exc:
            raise CannotUnderstand(f"cannot parse the data set: {exc}") from exc
        return values

    @staticmethod
    def _check_against_command(values: dict[str, Any], incoming: IncomingInstance) -> None:
        for key, expected, tag, name in (
            ("sop_class_uid", incoming.sop_class_uid, _TAG_SOP_CLASS, "SOP Class UID"),
            ("sop_instance_uid", incoming.sop_instance_uid, _TAG_SOP_INSTANCE, "SOP Instance UID"),
        ):
            found = values[key]
            if found is None:
                raise DatasetMismatch(f"the data set has no {name}", offending=(tag,))
            if found != expected:
                raise DatasetMismatch(f"{name} {found} of the data set is not {expected} of the C-STORE-RQ",
                                      offending=(tag,))

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and missing parents below the root, each fsynced into its parent.

        Directories found or made are remembered (holding the write lock), so
        that the next instance of a series costs no ``stat``; :meth:`reconcile`,
        the only code that removes directories, forgets them.
        """
        known = self._known_dirs
        if directory in known:
            return
        missing = []
        current = directory
        while current != self.root and not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            if self.fsync:
                _fsync_dir(path.parent)
        if len(known) >= _KNOWN_DIRS:
            known.clear()
        known.add(directory)
