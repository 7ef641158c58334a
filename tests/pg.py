"""A fresh PostgreSQL database per test, on the server KERNELWRIGHT_TEST_PG_URL names.

CI starts that server with scripts/start_postgres.sh and exports the variable; where it is
unset, tests that need PostgreSQL skip. The role in the URL must be allowed to create
databases.
"""
from __future__ import annotations

import contextlib
import os
import time
import uuid
import warnings
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

ENV = "KERNELWRIGHT_TEST_PG_URL"


def server_url() -> str:
    url = os.environ.get(ENV)
    if not url:
        pytest.skip(f"{ENV} is not set (scripts/start_postgres.sh starts a server and prints one)")
    return url


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database; dropped afterwards, with any connections still open."""
    base = make_url(server_url())
    name = f"kw_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield base.set(database=name).render_as_string(hide_password=False)
        finally:
            _drop(admin, name)
    finally:
        admin.dispose()


def _drop(admin: Engine, name: str) -> None:
    """Drop it, ending what still uses it (an autovacuum worker, too, where the role may signal
    it; start_postgres.sh grants that). A database left behind is a warning, not a failure."""
    for attempt in range(10):
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except DBAPIError as e:
            if attempt == 9:
                warnings.warn(f"test database {name} not dropped: {str(e.orig).splitlines()[0]}", stacklevel=2)
            time.sleep(0.5)
