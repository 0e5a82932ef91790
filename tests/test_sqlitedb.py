"""dimsekit.sqlitedb: WAL mode set while another connection holds a lock on a new database."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time

import pytest

from dimsekit.sqlitedb import wal_mode
from dimsekit_plugins.archive import index as archive_index


@contextlib.contextmanager
def _writer_holding_a_lock(path, seconds):
    """Another connection in a write transaction on a database not yet in WAL mode, for ``seconds``
    (as a connection creating the schema of a new index is); joined at the end."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE IF NOT EXISTS t (x)")
    other.execute("BEGIN IMMEDIATE")  # a RESERVED lock until the transaction ends
    timer = threading.Timer(seconds, lambda: (other.execute("COMMIT"), other.close()))
    timer.start()
    try:
        yield
    finally:
        timer.join()


@contextlib.contextmanager
def _locked(tmp_path, seconds):
    """A connection to a new database another connection holds a write lock on for ``seconds``."""
    path = str(tmp_path / "db.sqlite")
    with _writer_holding_a_lock(path, seconds):
        conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        try:
            yield conn
        finally:
            conn.close()


def test_sqlite_itself_refuses_at_once_without_waiting(tmp_path):
    # What wal_mode is for: the pragma does not wait for the busy timeout.
    with _locked(tmp_path, 0.5) as conn:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            conn.execute("PRAGMA journal_mode=WAL")
        assert time.monotonic() - started < 0.4


def test_wal_mode_waits_for_the_other_connection(tmp_path):
    with _locked(tmp_path, 0.2) as conn:
        wal_mode(conn, 5.0)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_wal_mode_gives_up_after_its_timeout(tmp_path):
    with _locked(tmp_path, 1.0) as conn:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            wal_mode(conn, 0.2)
        assert 0.1 < time.monotonic() - started < 0.9


def test_the_archive_index_opens_while_another_connection_creates_it(tmp_path):
    # The archive creating its index while the worklist (same file) or the Q/R plugin
    # opens it: ~2 % of such pairs failed with "database is locked" before wal_mode.
    path = str(tmp_path / "index.sqlite")
    with _writer_holding_a_lock(path, 0.2):
        conn = archive_index.connect(path)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == str(
            archive_index.SCHEMA_VERSION)
        conn.close()
