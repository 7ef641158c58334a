"""Opening the store: a path or URL in, a migrated SQLAlchemy engine out."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from store import sqlite
from store.errors import StoreError, one_line
from store.migrations import migrate


def open_engine(url_or_path: str | None, default_path: Path) -> Engine:
    """None: SQLite at default_path. A plain path: SQLite there. Anything with "://": that URL.

    Pending migrations are applied, so the engine returned is ready to use. Any failure
    (bad URL, missing driver, unreachable server, a file that is not a database) raises
    StoreError.
    """
    engine, shown = _configured_engine(url_or_path, default_path)
    try:
        migrate(engine)
    except StoreError as e:
        engine.dispose()
        raise StoreError(f"cannot open store {shown}: {e}") from e
    except SQLAlchemyError as e:
        engine.dispose()
        raise StoreError(f"cannot open store {shown}: {one_line(e)}") from e
    return engine


def make_engine(url_or_path: str | None, default_path: Path) -> Engine:
    """The engine open_engine would return, before migrations (for tools and tests of migrations)."""
    return _configured_engine(url_or_path, default_path)[0]


def _configured_engine(url_or_path: str | None, default_path: Path) -> tuple[Engine, str]:
    """The engine, with the SQLite setup where it applies, and how to name it in messages.

    Parent directories of a SQLite file are created; nothing connects yet.
    """
    if url_or_path is None or "://" not in url_or_path:
        path = Path(url_or_path if url_or_path is not None else default_path).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the directory for the store {path}: {e.strerror}") from e
        url = URL.create("sqlite", database=str(path))
        shown = str(path)
    else:
        try:
            url = make_url(url_or_path)
        except (ArgumentError, ValueError) as e:
            # Not echoed whole: an unparsable URL may still hold a password.
            scheme = url_or_path.split("://", 1)[0]
            raise StoreError(f"not a valid database URL: {scheme}://... ({one_line(e)})") from e
        shown = url.render_as_string(hide_password=True)

    try:
        engine = create_engine(url)
    except (ArgumentError, ImportError) as e:
        # NoSuchModuleError (an ArgumentError) for an unknown dialect, ImportError for a missing driver.
        raise StoreError(f"cannot open store {shown}: {one_line(e)}") from e
    if engine.dialect.name == "sqlite":
        sqlite.install(engine)
    return engine, shown
