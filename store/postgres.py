"""PostgreSQL setup: the only place PostgreSQL-specific SQL is allowed.

Several processes may open a brand-new database at once (the workers of a batch, each
opening the store on start). Each migration runs in its own transaction, but PostgreSQL's
DDL is not serialized by any lock a reader of `_migrations` could wait on: two processes
both see a migration as pending and both create its tables, and one fails on a duplicate
catalog entry. So migrate() holds a session-level advisory lock, on a connection of its
own, while it applies migrations; a second process waits for it, then finds nothing to do.
On other backends `migration_lock` does nothing (SQLite serializes writers itself, see
sqlite.py).
"""
from __future__ import annotations

import contextlib
import zlib
from typing import Iterator

from sqlalchemy import text
from sqlalchemy.engine import Engine

# One fixed key for "kernelwright migrates this database" (advisory locks are per database).
MIGRATION_LOCK_KEY = zlib.crc32(b"kernelwright.store.migrate")


@contextlib.contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Hold the database's migration lock for the block (PostgreSQL only; a no-op elsewhere)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
