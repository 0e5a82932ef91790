"""Reconciling files and index after a crash (part of :class:`~dimsekit_plugins.archive.store.Archive`).

:meth:`Reconciling._reconcile` runs in a worker thread when the archive
starts (and on demand): the journal's records are written back, then
temporary files nobody is receiving into are removed, rows whose file
vanished are dropped, files without a matching row are indexed -- or
quarantined when they cannot be read or never got all their data -- a stale
copy left behind by a move to another series is removed, and empty
directories go.  Each fix is named in the report it returns.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom import dcmread
from twisted.logger import Logger

from dimsekit_plugins.archive import index
from dimsekit_plugins.archive.errors import DatasetMismatch
from dimsekit_plugins.archive.layout import LENGTH_XATTR, QUARANTINE, SUFFIX, is_uid, unlink

if TYPE_CHECKING:
    from dimsekit_plugins.archive.store import Archive

__all__ = ["Reconciling", "IncompleteFile"]

_log = Logger(namespace="dimsekit.archive")


class Reconciling:
    """The reconcile half of the archive (a mixin of :class:`Archive`, sharing its state and locks)."""

    def _reconcile(self: Archive) -> dict[str, Any]:
        report: dict[str, Any] = {
            "temp_removed": [], "rows_dropped": [], "files_indexed": [], "rows_refreshed": [],
            "stale_removed": [], "quarantined": [], "dirs_removed": [],
        }
        self._open_journal(report)  # after a crash: the journaled files back first
        self._checkpoint()  # what reconcile removes or moves, no record brings back
        self._write_rows()  # the rows waiting for their batch, and the copies they moved away from
        # List first, then take the names of the instances being received:
        # receive() registers a name before it creates the file, so every
        # file listed that is not stray is in this snapshot.
        listed = _scandir(self.incoming_dir)
        with self._live_lock:
            live = set(self._live)
        for entry in listed:
            if entry.name not in live and entry.is_file(follow_symlinks=False):
                unlink(Path(entry.path))
                report["temp_removed"].append(entry.name)

        files = self._layout_files()
        indexed = self._sql(index.all_paths)
        by_path = {path: (uid, size) for uid, (path, size) in indexed.items()}

        gone = [uid for uid, (path, _size) in indexed.items() if path not in files]
        if gone:
            with self._write_lock:
                really = []
                for uid in gone:
                    record = self._sql(index.get, uid)
                    if record is not None and not self.root.joinpath(*record.path.split("/")).exists():
                        really.append(uid)
                self._sql(index.delete, really)
            report["rows_dropped"].extend(really)

        for rel, size in sorted(files.items()):
            known = by_path.get(rel)
            if known is not None and known[1] == size:
                continue
            with self._write_lock:
                self._reconcile_file(rel, report)

        with self._write_lock:
            self._known_dirs.clear()
            report["dirs_removed"].extend(self._remove_empty_dirs())
        report["instances"] = self._sql(lambda conn: conn.execute("SELECT COUNT(*) FROM instance").fetchone()[0])
        return report

    def _layout_files(self: Archive) -> dict[str, int]:
        """Relative path -> size of every ``<study>/<series>/<sop>.dcm`` file."""
        found: dict[str, int] = {}
        for study in _scandir(self.root):
            if not (is_uid(study.name) and study.is_dir(follow_symlinks=False)):
                continue
            for series in _scandir(Path(study.path)):
                if not (is_uid(series.name) and series.is_dir(follow_symlinks=False)):
                    continue
                for entry in _scandir(Path(series.path)):
                    name = entry.name
                    if name.endswith(SUFFIX) and is_uid(name[: -len(SUFFIX)]) and entry.is_file(follow_symlinks=False):
                        try:
                            found[f"{study.name}/{series.name}/{name}"] = entry.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            continue
        return found

    def _reconcile_file(self: Archive, rel: str, report: dict[str, Any]) -> None:
        """Index (or drop) one file that has no matching row.  Holds the write lock."""
        if rel in self._placing:
            return  # a commit is making it durable and will index it
        with self._rows_lock:
            waiting = any(pending.path == rel for pending in self._unindexed)
        if waiting:
            # Acknowledged, its row waiting for its batch (or, after a failed write, for
            # the next try): this copy is the instance (no mtime to compare can say otherwise).
            return
        path = self.root.joinpath(*rel.split("/"))
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        study_uid, series_uid, name = rel.split("/")
        uid = name[: -len(SUFFIX)]
        record = self._sql(index.get, uid)
        if record is not None and record.path == rel and record.size == size:
            return  # a commit indexed it meanwhile
        older: tuple[Path, str] | None = None  # the indexed copy, when this one was received after it
        if record is not None and record.path != rel:
            # Two copies: the one received last is the instance.  Usually the index names it
            # (a crash between indexing a copy moved to another series and removing the old
            # file), but an index transaction lost in a power cut (synchronous=NORMAL) leaves
            # the row naming the old copy while the new one, synced, was acknowledged.
            indexed = self.root.joinpath(*record.path.split("/"))
            try:
                indexed_mtime = indexed.stat().st_mtime_ns
            except FileNotFoundError:
                indexed_mtime = None
            if indexed_mtime is not None and indexed_mtime >= path.stat().st_mtime_ns:
                unlink(path)  # an older copy: the index names the current one
                report["stale_removed"].append(rel)
                return
            if indexed_mtime is not None:
                older = (indexed, record.path)
        try:
            # With a row too: a copy sent again after its file vanished may have been
            # cut by a crash.  Then only a short file counts: one edited in place by
            # hand keeps its old length attribute.
            _check_length(path, size, shorter_only=record is not None)
            dataset = dcmread(path, stop_before_pixels=True, specific_tags=list(index.HEADER_KEYWORDS))
            values = index.header_values(dataset)
            meta = dataset.file_meta
            transfer_syntax = str(meta.TransferSyntaxUID)
            source_ae = str(meta.get("SourceApplicationEntityTitle", "") or "").strip() or None
            if (values["sop_instance_uid"], values["study_instance_uid"], values["series_instance_uid"]) != (
                uid, study_uid, series_uid
            ):
                raise DatasetMismatch("its UIDs do not match its place")
            if not values["sop_class_uid"]:
                raise DatasetMismatch("no SOP Class UID")
            mtime = datetime.fromtimestamp(path.stat().st_mtime, UTC).isoformat(timespec="milliseconds")
            self._sql(index.put, index.InstanceRecord(
                **values, transfer_syntax_uid=transfer_syntax, path=rel, size=size, received_at=mtime,
                source_ae=source_ae,
            ))
        except sqlite3.Error:
            raise  # the index itself is in trouble: reconcile fails, said at start
        except Exception as exc:  # this file (unreadable, cut short, a value the index cannot hold)
            self._quarantine(path, rel, exc)
            report["quarantined"].append(rel)
            if record is not None and record.path == rel:  # its row names a file no longer there
                self._sql(index.delete, [uid])
                report["rows_dropped"].append(uid)
            return
        if older is not None:
            unlink(older[0])
            report["stale_removed"].append(older[1])
        report["rows_refreshed" if record is not None else "files_indexed"].append(rel)

    def _quarantine(self: Archive, path: Path, rel: str, why: Exception) -> None:
        target_dir = self.root / QUARANTINE
        target_dir.mkdir(exist_ok=True)
        target = target_dir / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{rel.replace('/', '_')}"
        os.replace(path, target)
        _log.warn("archive: {rel} cannot be indexed ({why}); moved to {target}", rel=rel, why=why, target=str(target))

    def _remove_empty_dirs(self: Archive) -> list[str]:
        removed = []
        for study in _scandir(self.root):
            if not (is_uid(study.name) and study.is_dir(follow_symlinks=False)):
                continue
            for series in _scandir(Path(study.path)):
                if is_uid(series.name) and series.is_dir(follow_symlinks=False):
                    try:
                        os.rmdir(series.path)
                        removed.append(f"{study.name}/{series.name}")
                    except OSError:
                        pass
            try:
                os.rmdir(study.path)
                removed.append(study.name)
            except OSError:
                pass
        return removed


class IncompleteFile(Exception):
    """A file renamed into place whose data never all reached the disk (a crash before its fsync)."""


def _check_length(path: Path, size: int, *, shorter_only: bool = False) -> None:
    """Raise :class:`IncompleteFile` when the file's size is not the length recorded before its
    rename (``shorter_only``: when it is shorter)."""
    try:
        recorded = os.getxattr(path, LENGTH_XATTR)
    except (OSError, AttributeError):
        return  # none recorded: it was synced before its rename (or put there by hand)
    try:
        expected = int(recorded)
    except ValueError:
        return
    if size < expected or (size != expected and not shorter_only):
        raise IncompleteFile(f"{size} of its {expected} bytes reached the disk before a crash")


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as entries:
            return list(entries)
    except FileNotFoundError:
        return []
