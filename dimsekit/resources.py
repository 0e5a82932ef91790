"""The open files a node may hold: :func:`raise_open_files_limit`.

Why.  Every connection is a file descriptor, and so is every instance being
written and every index connection.  Many systems start services with a soft
limit of 1,024 open files (systemd's default) under a hard limit of hundreds of
thousands.  Measured with the soft limit at 256: 300 idle TCP connections (a
port scanner, modalities behind a NAT retrying, each held up to the ARTIM
timeout) and the node could accept nothing more -- DCMTK ``echoscu`` was
refused at once ("Peer aborted Association") and Twisted logged ``EMFILE``
over and over; an instance arriving then could not have had its file created.

``twistd dimsekit`` raises the soft limit toward the hard one (at most
:data:`TARGET`) as it starts, and says so.  Raising a soft limit up to the hard
one needs no privilege.  Not with a ``select()`` reactor (``twistd -r select``:
it cannot watch descriptors past ``FD_SETSIZE``, 1,024), nor where the platform
has no such limit (Windows).  A library user embedding dimsekit may call it
itself; it changes the whole process.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TARGET", "raise_open_files_limit"]

#: the soft limit asked for (the hard limit if lower)
TARGET = 65536


def raise_open_files_limit(target: int = TARGET, reactor: Any = None) -> tuple[int, int] | None:
    """Raise the soft limit on open files toward ``target`` (within the hard limit).

    :param reactor: the reactor in use; a select()-based one leaves the limit alone.
    :returns: (before, after) when it was raised, else None.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    if reactor is not None and "select" in type(reactor).__name__.lower():
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = target if hard == resource.RLIM_INFINITY else min(hard, target)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return None
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ValueError, OSError):
        return None
    return soft, wanted
