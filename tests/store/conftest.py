"""Store fixtures: real databases, one fresh store per test.

`store_url` is the one place that says which backends the store tests run on: a SQLite file
under tmp_path, and a fresh, empty PostgreSQL database (created here, dropped after) on the
server named by KERNELWRIGHT_TEST_PG_URL (CI starts one with scripts/start_postgres.sh; the
PostgreSQL params skip where it is unset). Every test taking `store` runs on both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from store import Store
from tests.pg import fresh_database


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "store.db")
    elif request.param == "postgresql":
        with fresh_database() as url:
            yield url
    else:
        raise ValueError(f"no store backend {request.param!r}")


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Store]:
    st = Store.open(store_url, tmp_path / "unused-default.db")
    yield st
    st.close()


@pytest.fixture
def task_id(store: Store) -> int:
    return store.upsert_task("softmax", "cpu", "class Model: pass\n", "tasks/suites/cpu/softmax.py")
