"""Store fixtures: real databases, one fresh store per test.

`store_url` is the one place that says which backends the store tests run on. Today it is a
SQLite file under tmp_path; a PostgreSQL param would yield the URL of a fresh, empty
database (created here, dropped after), and every test taking `store` would run on both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from store import Store


@pytest.fixture(params=["sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    raise ValueError(f"no store backend {request.param!r}")


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    st = Store.open(store_url, tmp_path / "unused-default.db")
    yield st
    st.close()


@pytest.fixture
def task_id(store: Store) -> int:
    return store.upsert_task("softmax", "cpu", "class Model: pass\n", "tasks/suites/cpu/softmax.py")

