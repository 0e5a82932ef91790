"""Where an instance lives on disk, from UIDs that were checked first.

Layout under the data directory::

    <data_dir>/
      index.sqlite                      the index (plus -wal and -shm)
      .lock                             held (flock) by the process using the archive
      .incoming/<sop uid>.<token>.part  instances being received
      .quarantine/                      files reconcile() could not read
      .journal                          small instances' bytes until a checkpoint (journal.py)
      <study uid>/<series uid>/<sop instance uid>.dcm

Every UID is checked by :func:`check_uid` before it becomes a path
component: digits and dots only, 1 to 64 characters, no empty component (so
no ``.``, ``..``, leading, trailing or doubled dots).  A UID is therefore never
a hidden name, a parent reference or a path separator: nothing can land
outside the data directory.  Components with leading zeros (``1.02``), which
PS3.5 9.1 forbids but real devices send, are accepted: they are harmless in a
path.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from twisted.logger import Logger

from dimsekit_plugins.archive.errors import InvalidUID

__all__ = [
    "check_uid",
    "is_uid",
    "instance_path",
    "relative_path",
    "is_instance_path",
    "fsync_dir",
    "unlink",
    "LENGTH_XATTR",
    "INCOMING",
    "QUARANTINE",
    "INDEX_NAME",
    "LOCK_NAME",
    "SUFFIX",
]

INCOMING = ".incoming"
QUARANTINE = ".quarantine"
INDEX_NAME = "index.sqlite"
LOCK_NAME = ".lock"
SUFFIX = ".dcm"

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*\Z")


def is_uid(value: object) -> bool:
    """True for a string that is a usable UID (see the module docstring)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.match(value) is not None


def check_uid(value: object, what: str, *, status: int | None = None, tag: int | None = None) -> str:
    """``value`` if it is a usable UID, else :class:`InvalidUID` naming ``what``.

    :param status: the C-STORE status for the error (default: Invalid SOP Instance).
    :param tag: the data element to name as Offending Element.
    """
    if is_uid(value):
        return value  # type: ignore[return-value]
    if value is None:
        problem = f"{what} is missing"
    elif value == "":
        problem = f"{what} is empty"
    else:
        problem = f"{what} {repr(value)[:40]} is not a UID (digits and dots, at most 64 characters)"
    raise InvalidUID(
        problem,
        status=status,
        offending=(tag,) if tag is not None else (),
    )


def relative_path(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """``study/series/instance.dcm`` (POSIX separators, as stored in the index)."""
    for uid, what in ((study_uid, "Study Instance UID"), (series_uid, "Series Instance UID"),
                      (sop_instance_uid, "SOP Instance UID")):
        check_uid(uid, what)
    return f"{study_uid}/{series_uid}/{sop_instance_uid}{SUFFIX}"


def instance_path(root: Path, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
    """The final place of an instance under ``root``."""
    return root.joinpath(*relative_path(study_uid, series_uid, sop_instance_uid).split("/"))


def is_instance_path(rel: str) -> bool:
    """Whether ``rel`` is a ``study/series/instance.dcm`` path of this layout (UIDs checked)."""
    parts = rel.split("/")
    return (len(parts) == 3 and parts[2].endswith(SUFFIX)
            and all(map(is_uid, (parts[0], parts[1], parts[2][: -len(SUFFIX)]))))


def fsync_dir(path: Path | str) -> None:
    """Make a directory's entries durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_log = Logger(namespace="dimsekit.archive")

#: extended attribute giving a file's full length, set before it is renamed into place unsynced
LENGTH_XATTR = "user.dimsekit.length"


def unlink(path: Path | str) -> None:
    """Remove ``path`` if it is there; a failure other than its absence is logged."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - reported, nothing else to do
        _log.warn("cannot remove {path}: {error}", path=str(path), error=exc)
