"""Read access to the archive's SQLite index for Query/Retrieve, off the reactor thread.

:class:`QueryIndex` opens its own connections to the archive's index file
(``<data_dir>/index.sqlite``, WAL mode: readers never block the archive's
writer, nor it them), made by the archive's own
:func:`~dimsekit_plugins.archive.index.connect` so the schema is the one the
archive writes, then set ``query_only``.  Every SQL call runs in the
reactor's thread pool (:func:`~twisted.internet.threads.deferToThreadPool`).

A C-FIND streams: :meth:`QueryIndex.open` executes the statement and gives a
:class:`Cursor`; :meth:`Cursor.fetch` brings the next batch of rows (a thread
pool call each); :meth:`Cursor.close` ends the read transaction and gives the
connection back for the next query.  Nothing is ever loaded whole: memory is
one batch of rows, whatever the size of the index.

A node that never stored anything has no index file; queries then match
nothing (and create nothing).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from dimsekit_plugins.archive import index as archive_index
from dimsekit_plugins.qr.matching import register_functions

__all__ = ["QueryIndex", "Cursor"]


class Cursor:
    """An executed statement whose rows are fetched in batches (see the module docstring)."""

    def __init__(self, owner: QueryIndex, conn: sqlite3.Connection | None, cursor: sqlite3.Cursor | None) -> None:
        self.owner = owner
        self._conn = conn
        self._cursor = cursor
        self.closed = cursor is None

    def fetch(self, size: int) -> Deferred:
        """A Deferred firing with up to ``size`` rows (tuples); ``[]`` at the end."""
        if self.closed or self._cursor is None:
            from twisted.internet import defer

            return defer.succeed([])
        return self.owner._run(self._cursor.fetchmany, size)

    def close(self) -> Deferred:
        """End the statement and return the connection (a thread pool call); idempotent."""
        from twisted.internet import defer

        if self.closed:
            return defer.succeed(None)
        self.closed = True
        cursor, conn = self._cursor, self._conn
        self._cursor = self._conn = None
        return self.owner._run(self.owner._release, conn, cursor)


class QueryIndex:
    """Read-only SQL over the index at ``path`` (see the module docstring).

    :param path: the archive's ``index.sqlite``.
    :param reactor: whose thread pool runs the SQL (the global reactor by default).
    """

    def __init__(self, path: str | Path, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.path = Path(path)
        self.reactor = reactor
        self._free: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.closed = False
        #: called (in the worker) before each statement: the archive's wait for the index writes under
        #: way -- it answers a C-STORE before writing its row, and a query that follows must find it
        self.barrier: Any = None

    def __repr__(self) -> str:
        return f"<QueryIndex {self.path}>"

    # -- thread side --------------------------------------------------------------------------

    def _run(self, function: Any, *args: Any) -> Deferred:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), function, *args)

    def _connection(self) -> sqlite3.Connection | None:
        with self._lock:
            if self._free:
                return self._free.pop()
        if not self.path.exists():
            return None
        conn = archive_index.connect(str(self.path))
        register_functions(conn)
        conn.row_factory = None
        conn.execute("PRAGMA query_only = ON")
        return conn

    def _release(self, conn: sqlite3.Connection | None, cursor: sqlite3.Cursor | None) -> None:
        if cursor is not None:
            cursor.close()
        if conn is None:
            return
        with self._lock:
            if not self.closed:
                self._free.append(conn)
                return
        conn.close()

    def _execute(self, sql: str, params: tuple[Any, ...]) -> tuple[sqlite3.Connection | None, sqlite3.Cursor | None]:
        barrier = self.barrier
        if barrier is not None:
            barrier()
        conn = self._connection()
        if conn is None:
            return None, None
        try:
            return conn, conn.execute(sql, params)
        except BaseException:
            self._release(conn, None)
            raise

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        conn, cursor = self._execute(sql, params)
        if cursor is None:
            return []
        try:
            return cursor.fetchall()
        finally:
            self._release(conn, cursor)

    # -- reactor side -----------------------------------------------------------------------------

    def open(self, sql: str, params: tuple[Any, ...] = ()) -> Deferred:
        """Execute a SELECT; a Deferred firing with a :class:`Cursor` over its rows."""
        d = self._run(self._execute, sql, tuple(params))
        return d.addCallback(lambda pair: Cursor(self, *pair))

    def all(self, sql: str, params: tuple[Any, ...] = ()) -> Deferred:
        """Execute a SELECT; a Deferred firing with every row (for bounded results only)."""
        return self._run(self._all, sql, tuple(params))

    def close(self) -> None:
        """Close the idle connections (those in use close when their cursor does)."""
        with self._lock:
            self.closed = True
            free, self._free = self._free, []
        for conn in free:
            conn.close()
