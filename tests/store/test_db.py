"""Opening a store: where the file goes, SQLite's setup, bad addresses, many writers at once."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from store import Store, StoreError, open_engine
from store.models import Candidate, Evaluation
from tests.store.verdicts import verdict


def _pragma(engine, name: str):
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


def test_none_opens_sqlite_at_the_default_path_and_creates_its_directory(tmp_path: Path):
    default = tmp_path / "deep" / "er" / "kw.db"
    engine = open_engine(None, default)
    assert default.is_file()
    assert engine.dialect.name == "sqlite"
    engine.dispose()


@pytest.mark.parametrize("form", ["path", "url"])
def test_a_path_or_sqlite_url_opens_that_file_with_wal_busy_timeout_and_foreign_keys(tmp_path: Path, form: str):
    path = tmp_path / "here.db"
    engine = open_engine(str(path) if form == "path" else f"sqlite:///{path}", tmp_path / "not-this.db")
    assert path.is_file() and not (tmp_path / "not-this.db").exists()
    assert _pragma(engine, "journal_mode") == "wal"
    assert _pragma(engine, "busy_timeout") == 30_000
    assert _pragma(engine, "foreign_keys") == 1
    engine.dispose()


@pytest.mark.parametrize("url", [
    "nosuchdialect://host/db",                   # no such SQLAlchemy dialect
    "://nothing",                                # not a URL at all
    "postgresql://kw:s3cret@127.0.0.1:notaport/kw",  # unparsable port
    "postgresql://kw:s3cret@127.0.0.1:1/kw",     # driver missing here, or nothing listening
])
def test_a_bad_url_raises_store_error_in_one_line_without_the_password(url: str, tmp_path: Path):
    with pytest.raises(StoreError) as err:
        open_engine(url, tmp_path / "d.db")
    message = str(err.value)
    assert "\n" not in message and "s3cret" not in message


def test_a_directory_or_a_file_that_is_no_database_raises_store_error(tmp_path: Path):
    with pytest.raises(StoreError):
        open_engine(str(tmp_path), tmp_path / "d.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an SQLite database, just some bytes" * 100)
    with pytest.raises(StoreError, match="not a database"):
        open_engine(str(junk), tmp_path / "d.db")


def test_writers_in_parallel_on_one_file_lose_nothing_and_count_nothing_twice(tmp_path: Path):
    # Separate engines stand in for separate processes: each has its own SQLite connections.
    # All record the same sources at once: each source must become one candidate, and every
    # call one evaluation, with no "database is locked" on the way.
    path = str(tmp_path / "shared.db")
    writers, sources = 6, [f"class ModelNew: pass  # {i}\n" for i in range(15)]
    start, errors = threading.Barrier(writers), []

    def work() -> None:
        try:
            with Store.open(path, tmp_path / "d.db") as st:
                task = st.upsert_task("softmax", "cpu", "class Model: pass\n", "softmax.py")
                run = st.start_run("optimize", {}, "cpu")
                start.wait(timeout=60)
                for src in sources:
                    st.record(task, src, verdict(), origin="llm", run_id=run)
                st.finish_run(run, "finished")
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            start.abort()  # a writer that failed early must not leave the others waiting forever
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with Store.open(path, tmp_path / "d.db") as st, Session(st.engine) as s:
        assert s.execute(select(func.count()).select_from(Candidate)).scalar() == len(sources)
        assert s.execute(select(func.count()).select_from(Evaluation)).scalar() == writers * len(sources)
        assert [r["status"] for r in st.runs()] == ["finished"] * writers


def test_opening_a_fresh_file_from_many_threads_at_once_migrates_it_once(tmp_path: Path):
    path, errors = str(tmp_path / "fresh.db"), []
    start = threading.Barrier(5)

    def work() -> None:
        try:
            start.wait(timeout=60)
            open_engine(path, tmp_path / "d.db").dispose()
        except Exception as e:  # noqa: BLE001
            start.abort()
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
