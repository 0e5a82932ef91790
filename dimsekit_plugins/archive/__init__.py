"""The built-in archive plugin: Part 10 files under the data directory, a SQLite index.

Provides the node's :class:`~dimsekit.interfaces.IArchive` through the
``dimsekit_archive`` hook (``firstresult``: a plugin that answers first --
``tryfirst=True`` -- replaces it; ``DIMSEKIT_DISABLE_PLUGINS=archive`` removes it).

One :class:`~dimsekit_plugins.archive.store.Archive` is made per data
directory and process, the first time a plugin asks for it; it is started
then (directories, thread pool stopped with the reactor) and reconciles its
files and index at once (logged).  An application entity that never stores
anything never creates the data directory.

Settings: see :mod:`dimsekit_plugins.archive.settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.logger import Logger

from dimsekit.config import Config
from dimsekit.hookspecs import hookimpl
from dimsekit_plugins.archive.errors import (
    ArchiveError,
    CannotUnderstand,
    DatasetMismatch,
    DuplicateRejected,
    InvalidUID,
    OutOfResources,
)
from dimsekit_plugins.archive.settings import ArchiveSettings
from dimsekit_plugins.archive.store import Archive, ArchivedInstance, IncomingInstance

__all__ = [
    "Archive",
    "ArchivedInstance",
    "IncomingInstance",
    "ArchiveSettings",
    "ArchiveError",
    "CannotUnderstand",
    "DatasetMismatch",
    "DuplicateRejected",
    "InvalidUID",
    "OutOfResources",
    "open_archive",
]

_log = Logger(namespace="dimsekit.archive")

#: data directory -> the archive serving it in this process
_archives: dict[Path, Archive] = {}


def open_archive(config: Config, reactor: Any = None) -> Archive:
    """The started archive for ``config``'s data directory (made and reconciled on first use)."""
    settings = ArchiveSettings.from_config(config)
    archive = _archives.get(settings.root)
    if archive is None or archive.closed:
        archive = Archive.from_settings(settings, reactor=reactor)
        _archives[settings.root] = archive
        archive.start()
        archive.reconcile().addErrback(
            lambda failure: _log.failure("archive {root}: reconcile failed", failure, root=str(settings.root))
        )
    return archive


@hookimpl
def dimsekit_configure(config: Config) -> None:
    """Check ``[plugins.archive]`` and the archive's keys of ``[plugins.storage]``."""
    ArchiveSettings.from_config(config)


@hookimpl(trylast=True)
def dimsekit_archive(config: Config) -> Archive:
    """The built-in archive for ``config.node.data_dir``.

    Asked last (``trylast``): an archive backend of another plugin replaces
    it, whatever order the entry points are found in (pluggy calls the
    plugins registered last first, and stops at the first archive)."""
    return open_archive(config)

