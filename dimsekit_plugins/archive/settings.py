"""The archive's settings, read from the node configuration and checked.

.. code-block:: toml

    [node]
    data_dir = "dimsekit-data"   # where the files and index.sqlite go

    [plugins.storage]
    duplicates = "newest"        # "newest" | "first" | "reject": a SOP Instance UID already stored
    min_free_mb = 100            # refuse C-STOREs (A700) while less disk space than this is free

    [plugins.archive]
    threads = 4                  # worker threads for fsync, parsing and the index
    fsync = true                 # false: faster, but a power cut may lose acknowledged instances
    keep_cached = false          # true: leave large instances just stored in the page cache
    journal = true               # small instances made durable by one journal append (false: 2 fsyncs)

``duplicates`` and ``min_free_mb`` live in ``[plugins.storage]`` because they
are what a storage SCP user tunes; any archive backend should honour them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dimsekit.config import Config, ConfigError

__all__ = ["ArchiveSettings", "DUPLICATE_POLICIES", "check_storage_keys", "check_archive_keys"]

DUPLICATE_POLICIES = ("newest", "first", "reject")

_STORAGE_ARCHIVE_KEYS = ("duplicates", "min_free_mb")
_ARCHIVE_KEYS = ("threads", "fsync", "keep_cached", "journal")


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    """What the built-in archive needs to know."""

    root: Path
    duplicates: str = "newest"
    min_free_mb: float = 100.0
    threads: int = 4
    fsync: bool = True
    keep_cached: bool = False
    journal: bool = True

    @classmethod
    def from_config(cls, config: Config) -> ArchiveSettings:
        """Read and check the settings (:class:`ConfigError` names the key)."""
        storage = _section(config, "storage")
        archive = _section(config, "archive")
        check_storage_keys(storage, allowed_extra=None)
        check_archive_keys(archive)
        data_dir = config.node.data_dir
        if not isinstance(data_dir, str) or not data_dir.strip():
            raise ConfigError("node.data_dir: give the directory the archive stores into")
        return cls(
            root=Path(data_dir).expanduser().resolve(),
            duplicates=storage.get("duplicates", "newest"),
            min_free_mb=float(storage.get("min_free_mb", 100)),
            threads=int(archive.get("threads", 4)),
            fsync=bool(archive.get("fsync", True)),
            keep_cached=bool(archive.get("keep_cached", False)),
            journal=bool(archive.get("journal", True)),
        )


def _section(config: Config, name: str) -> Mapping[str, Any]:
    section = config.plugins.get(name, {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"plugins.{name}: write it as a [plugins.{name}] table")
    return section


def check_storage_keys(section: Mapping[str, Any], allowed_extra: tuple[str, ...] | None) -> None:
    """Check the archive's keys of ``[plugins.storage]``.

    :param allowed_extra: the other keys the section may hold (the storage
        plugin's own); None: do not complain about other keys (the storage
        plugin checks its section as a whole).
    """
    if allowed_extra is not None:
        known = (*_STORAGE_ARCHIVE_KEYS, *allowed_extra)
        for key in section:
            if key not in known:
                raise ConfigError(
                    f"plugins.storage.{key}: unknown key; the keys of [plugins.storage] are: {', '.join(sorted(known))}"
                )
    if "duplicates" in section:
        value = section["duplicates"]
        if value not in DUPLICATE_POLICIES:
            raise ConfigError(
                f"plugins.storage.duplicates: {value!r} is not a policy; use one of "
                + ", ".join(repr(p) for p in DUPLICATE_POLICIES)
            )
    if "min_free_mb" in section:
        value = section["min_free_mb"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"plugins.storage.min_free_mb: give a number of megabytes, 0 or more (got {value!r})")


def check_archive_keys(section: Mapping[str, Any]) -> None:
    """Check ``[plugins.archive]``."""
    for key in section:
        if key not in _ARCHIVE_KEYS:
            raise ConfigError(
                f"plugins.archive.{key}: unknown key; the keys of [plugins.archive] are: {', '.join(_ARCHIVE_KEYS)}"
            )
    if "threads" in section:
        value = section["threads"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 64:
            raise ConfigError(f"plugins.archive.threads: give a whole number from 1 to 64 (got {value!r})")
    for key in ("fsync", "keep_cached", "journal"):
        if key in section and not isinstance(section[key], bool):
            raise ConfigError(f"plugins.archive.{key}: true or false (got {section[key]!r})")
