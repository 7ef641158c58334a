"""Migrations: applied once, in order, all-or-nothing, and in agreement with the models."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Column, Index, Integer, MetaData, String, Table, UniqueConstraint, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from store import Store, StoreError, migrate
from store.db import make_engine
from store.migrations import LEDGER, MIGRATIONS, applied, m001_initial, migration


@pytest.fixture
def engine(store_url: str, tmp_path: Path):
    eng = make_engine(store_url, tmp_path / "unused-default.db")
    yield eng
    eng.dispose()


def m002_add_notes(conn: Connection) -> None:
    """A stand-in for the next real migration: a new table, a new column, data kept."""
    md = MetaData()
    Table("notes", md, Column("id", Integer, primary_key=True), Column("text", String, nullable=False),
          Index("ix_notes_text", "text"))
    md.create_all(conn, checkfirst=False)
    conn.execute(text("ALTER TABLE tasks ADD COLUMN note VARCHAR"))


def m002_half_broken(conn: Connection) -> None:
    m002_add_notes(conn)
    conn.execute(text("ALTER TABLE no_such_table ADD COLUMN x INTEGER"))


def _tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_first_migrate_applies_everything_and_a_second_is_a_no_op(engine: Engine):
    names = [fn.__name__ for fn in MIGRATIONS]
    assert migrate(engine) == names
    assert applied(engine) == names
    before = _tables(engine)
    assert {"tasks", "runs", "candidates", "evaluations", "_migrations"} <= before
    assert migrate(engine) == []
    assert applied(engine) == names
    assert _tables(engine) == before


def test_a_database_at_migration_n_upgrades_to_n_plus_1_and_keeps_its_rows(engine: Engine, tmp_path: Path):
    assert migrate(engine, [m001_initial]) == ["m001_initial"]
    with Store(engine) as st:
        task = st.upsert_task("gelu", "cpu", "class Model: pass\n", "gelu.py")
    assert "notes" not in _tables(engine)

    assert migrate(engine, [m001_initial, m002_add_notes]) == ["m002_add_notes"]
    assert applied(engine) == ["m001_initial", "m002_add_notes"]
    assert "notes" in _tables(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, name, note FROM tasks")).all() == [(task, "gelu", None)]
    assert migrate(engine, [m001_initial, m002_add_notes]) == []


def test_a_failing_migration_leaves_no_trace_and_can_be_retried(engine: Engine):
    migrate(engine, [m001_initial])
    with pytest.raises(StoreError, match="m002_half_broken"):
        migrate(engine, [m001_initial, m002_half_broken])
    # Its first statements ran before the failure; the rollback must take them back too.
    assert "notes" not in _tables(engine)
    assert "note" not in {c["name"] for c in inspect(engine).get_columns("tasks")}
    assert applied(engine) == ["m001_initial"]
    assert migrate(engine, [m001_initial, m002_add_notes]) == ["m002_add_notes"]


def test_migrations_must_be_named_in_order():
    count = len(MIGRATIONS)

    def setup(conn: Connection) -> None: ...

    def m000_too_early(conn: Connection) -> None: ...

    for fn in (setup, m000_too_early):
        with pytest.raises(ValueError):
            migration(fn)
    assert len(MIGRATIONS) == count


def test_the_migrated_schema_is_the_schema_the_models_describe(engine: Engine):
    # The models are written by hand next to the migrations; this is what keeps them in step.
    migrate(engine)
    db = inspect(engine)
    tables = {t.name: t for t in SQLModel.metadata.sorted_tables if t.name in {"tasks", "runs", "candidates", "evaluations", "llm_calls", "ceilings", "claims"}}
    assert set(tables) == set(db.get_table_names()) - {LEDGER.name}
    for name, model in tables.items():
        assert {(c["name"], c["nullable"]) for c in db.get_columns(name)} == \
               {(c.name, c.nullable) for c in model.columns}, name
        # PostgreSQL also lists the index behind each unique constraint; those are checked below.
        assert {(i["name"], tuple(i["column_names"])) for i in db.get_indexes(name)
                if "duplicates_constraint" not in i} == \
               {(i.name, tuple(c.name for c in i.columns)) for i in model.indexes}, name
        assert {(u["name"], tuple(u["column_names"])) for u in db.get_unique_constraints(name)} == \
               {(u.name, tuple(u.columns.keys())) for u in model.constraints
                if isinstance(u, UniqueConstraint)}, name
        assert {(tuple(f["constrained_columns"]), f["referred_table"]) for f in db.get_foreign_keys(name)} == \
               {(tuple(f.column_keys), f.elements[0].column.table.name) for f in model.foreign_key_constraints}, name
