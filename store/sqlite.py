"""SQLite setup: the only place SQLite-specific SQL is allowed.

Many workers (several optimize runs, batch nodes sharing a disk) write one file, so:
- WAL journal mode: readers never block the writer, nor the writer the readers.
- busy_timeout: a writer waits for the lock instead of failing at once with "locked".
- foreign keys on: SQLite ignores them unless asked, per connection.
- Write transactions start with BEGIN IMMEDIATE. A deferred transaction that reads first
  and writes later must upgrade its lock, and SQLite answers SQLITE_BUSY at once (no busy
  wait) when another writer committed in between; taking the write lock at BEGIN avoids that.
  Read transactions keep a plain BEGIN so they never wait on writers.

Transactions are marked as writing with `for_writes(engine)`; on other backends the mark
is ignored, so callers use it everywhere without asking which backend they are on.
"""
from __future__ import annotations

import random
import sqlite3
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "kernelwright_write"


def for_writes(engine: Engine) -> Engine:
    """The same engine (same pool), with transactions that take the write lock up front."""
    return engine.execution_options(**{_WRITE_OPTION: True})


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (a setting kept in the file, so normally already done).

    The switch needs an exclusive lock, and SQLite reports SQLITE_BUSY for it at once,
    without the busy handler, when another connection is opening or switching the same
    new file (several workers starting on a fresh store); so wait and retry here.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005 + random.random() * 0.02)


def install(engine: Engine) -> None:
    """Set pragmas on every new connection and let SQLAlchemy, not sqlite3, emit BEGIN."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # isolation_level None stops Python's sqlite3 module from issuing its own BEGIN
        # (which it skips before SELECT and before SAVEPOINT), so ours below is the only one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            _use_wal(cursor)
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        writing = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")
