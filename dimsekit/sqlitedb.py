"""SQLite helpers shared by the node's stores (the archive index, the worklist, N-service instances)."""

from __future__ import annotations

import sqlite3
import time

__all__ = ["wal_mode"]


def wal_mode(conn: sqlite3.Connection, timeout: float) -> None:
    """Put a database in WAL mode, waiting for other connections as any statement does.

    SQLite answers ``PRAGMA journal_mode`` with "database is locked" at once,
    without calling its busy handler, while another connection holds a lock on
    a database not yet in WAL mode.  That happens whenever two connections open
    a new database together -- on a node's first start the archive creating
    its index while the worklist opens the same file, the Q/R plugin, or a
    tool reading it: ~2 % of such pairs here.  So it is tried again, briefly
    apart, until ``timeout`` seconds have passed (then the error is raised).
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
