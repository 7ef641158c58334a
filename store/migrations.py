"""Versioned schema migrations, applied in order, each once, each in its own transaction.

Every migration is a function `mNNN_what(conn)` registered with @migration. Its DDL is
written out inside the function with SQLAlchemy Core, never taken from the live models:
a migration must mean the same thing forever, whatever the models later become. Applied
migrations are recorded by name in `_migrations`, in the same transaction as their DDL,
so a migration is either fully applied and recorded or not at all. Processes migrating one
database at once take turns: SQLite's write lock on each transaction, PostgreSQL's advisory
lock around the whole of migrate() (see postgres.py).

To change the schema: add `mNNN_...` at the end of this file and update models.py to
match (tests/store/test_migrations.py checks that they agree). Never edit an old one.
"""
from __future__ import annotations

from typing import Callable, Sequence

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from store.errors import StoreError, one_line
from store.models import utcnow
from store.postgres import migration_lock
from store.sqlite import for_writes

Migration = Callable[[Connection], None]
MIGRATIONS: list[Migration] = []

_ledger_metadata = MetaData()
LEDGER = Table(
    "_migrations", _ledger_metadata,
    Column("name", String, primary_key=True),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)


def migration(fn: Migration) -> Migration:
    """Register `fn` as the next migration; names must be mNNN_ and strictly increasing."""
    if not fn.__name__.startswith("m") or not fn.__name__[1:4].isdigit():
        raise ValueError(f"migration names look like m001_what, not {fn.__name__!r}")
    if MIGRATIONS and fn.__name__ <= MIGRATIONS[-1].__name__:
        raise ValueError(f"migration {fn.__name__} must sort after {MIGRATIONS[-1].__name__}")
    MIGRATIONS.append(fn)
    return fn


def applied(engine: Engine) -> list[str]:
    """Names of the migrations recorded in this database, in the order they were applied."""
    with engine.connect() as conn:
        if not engine.dialect.has_table(conn, LEDGER.name):
            return []
        return list(conn.execute(select(LEDGER.c.name).order_by(LEDGER.c.applied_at, LEDGER.c.name)).scalars())


def migrate(engine: Engine, migrations: Sequence[Migration] | None = None) -> list[str]:
    """Apply the pending migrations in order; return the names applied now ([] if none)."""
    todo = MIGRATIONS if migrations is None else list(migrations)
    if {fn.__name__ for fn in todo} <= set(applied(engine)):
        return []  # the common case, decided without waiting on another process's migration
    with migration_lock(engine):
        return _apply(engine, todo)


def _apply(engine: Engine, todo: Sequence[Migration]) -> list[str]:
    writer = for_writes(engine)
    done = set(applied(engine))
    if not done:
        with writer.begin() as conn:
            LEDGER.create(conn, checkfirst=True)
    now: list[str] = []
    for fn in todo:
        if fn.__name__ in done:
            continue
        try:
            with writer.begin() as conn:
                # Look again under the write lock: another process may have applied it meanwhile.
                if conn.execute(select(LEDGER.c.name).where(LEDGER.c.name == fn.__name__)).first():
                    continue
                fn(conn)
                conn.execute(insert(LEDGER).values(name=fn.__name__, applied_at=utcnow()))
        except SQLAlchemyError as e:
            raise StoreError(f"migration {fn.__name__} failed: {one_line(e)}") from e
        now.append(fn.__name__)
    return now


# --- the migrations, oldest first ------------------------------------------------------

@migration
def m001_initial(conn: Connection) -> None:
    md = MetaData()
    Table(
        "tasks", md,
        Column("id", Integer, primary_key=True),
        Column("name", String, nullable=False),
        Column("suite", String, nullable=False),
        Column("source_hash", String, nullable=False),
        Column("source", Text, nullable=False),
        Column("path", String, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("source_hash", name="uq_tasks_source_hash"),
        Index("ix_tasks_name", "name"),
    )
    Table(
        "runs", md,
        Column("id", Integer, primary_key=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("finished_at", DateTime(timezone=True), nullable=True),
        Column("command", String, nullable=False),
        Column("status", String, nullable=False),
        Column("config", Text, nullable=False),
        Column("device", String, nullable=False),
    )
    Table(
        "candidates", md,
        Column("id", String, primary_key=True),
        Column("task_id", Integer, ForeignKey("tasks.id"), nullable=False),
        Column("source", Text, nullable=False),
        Column("source_hash", String, nullable=False),
        Column("parent_id", String, ForeignKey("candidates.id"), nullable=True),
        Column("origin", String, nullable=False),
        Column("knobs", Text, nullable=True),
        Column("run_id", Integer, ForeignKey("runs.id"), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        # Leading task_id also serves lookups of a task's candidates.
        UniqueConstraint("task_id", "source_hash", name="uq_candidates_task_source"),
    )
    Table(
        "evaluations", md,
        Column("id", Integer, primary_key=True),
        Column("candidate_id", String, ForeignKey("candidates.id"), nullable=False),
        Column("run_id", Integer, ForeignKey("runs.id"), nullable=True),
        Column("status", String, nullable=False),
        Column("reason", Text, nullable=False),
        Column("correct", Boolean, nullable=False),
        Column("speedup", Float, nullable=True),
        Column("candidate_ms", Float, nullable=True),
        Column("reference_ms", Float, nullable=True),
        Column("candidate_spread_ms", Float, nullable=True),
        Column("reference_spread_ms", Float, nullable=True),
        Column("reference_compiled_ms", Float, nullable=True),
        Column("speedup_vs_compile", Float, nullable=True),
        Column("trials", Text, nullable=False),
        Column("timings", Text, nullable=False),
        Column("flags", Text, nullable=False),
        Column("stages", Text, nullable=False),
        Column("fingerprint", Text, nullable=False),
        Column("fingerprint_id", String, nullable=True),
        Column("device", String, nullable=True),
        Column("log", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Index("ix_evaluations_candidate_id", "candidate_id"),
        Index("ix_evaluations_run_id", "run_id"),
        Index("ix_evaluations_fingerprint_id", "fingerprint_id"),
        Index("ix_evaluations_device", "device"),
    )
    md.create_all(conn, checkfirst=False)


@migration
def m002_llm_calls_and_rewards(conn: Connection) -> None:
    """The optimization loop: every LLM call, and per evaluation its reward, strategy and the
    compiler's resource report (registers, spills) for prompts."""
    md = MetaData()
    for name, key in (("runs", Integer), ("tasks", Integer), ("candidates", String)):
        Table(name, md, Column("id", key, primary_key=True))  # stubs: targets of the foreign keys
    calls = Table(
        "llm_calls", md,
        Column("id", Integer, primary_key=True),
        Column("run_id", Integer, ForeignKey("runs.id"), nullable=True),
        Column("task_id", Integer, ForeignKey("tasks.id"), nullable=True),
        Column("candidate_id", String, ForeignKey("candidates.id"), nullable=True),
        Column("parent_id", String, ForeignKey("candidates.id"), nullable=True),
        Column("kind", String, nullable=False),
        Column("model", String, nullable=False),
        Column("messages", Text, nullable=False),
        Column("response", Text, nullable=False),
        Column("tokens_in", Integer, nullable=False),
        Column("tokens_out", Integer, nullable=False),
        Column("latency_s", Float, nullable=False),
        Column("cost_usd", Float, nullable=False),
        Column("attempts", Integer, nullable=False),
        Column("status", String, nullable=False),
        Column("error", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Index("ix_llm_calls_run_id", "run_id"),
        Index("ix_llm_calls_task_id", "task_id"),
        Index("ix_llm_calls_candidate_id", "candidate_id"),
    )
    calls.create(conn, checkfirst=False)
    for name, kind in (("reward", Float()), ("reward_note", Text()), ("strategy", String()), ("resources", Text())):
        conn.execute(text(f"ALTER TABLE evaluations ADD COLUMN {name} {kind.compile(dialect=conn.dialect)}"))


@migration
def m003_coverage(conn: Connection) -> None:
    """Per evaluation: the share of the timed calls' CPU samples in the candidate's own code,
    sampled from outside the worker, and the sampler's breakdown (JSON)."""
    for name, kind in (("coverage", Float()), ("attribution", Text())):
        conn.execute(text(f"ALTER TABLE evaluations ADD COLUMN {name} {kind.compile(dialect=conn.dialect)}"))


@migration
def m004_ceilings(conn: Connection) -> None:
    """The machine's measured ceilings (evaluator/ceilings.py), per device fingerprint, cores and
    thread count; a new measurement is a new row, the newest counts."""
    md = MetaData()
    Table(
        "ceilings", md,
        Column("id", Integer, primary_key=True),
        Column("fingerprint_id", String, nullable=False),
        Column("device", String, nullable=False),
        Column("cores", String, nullable=False),
        Column("threads", Integer, nullable=False),
        Column("copy_gbs", Float, nullable=False),
        Column("read_gbs", Float, nullable=False),
        Column("copy_gbs_cached", Float, nullable=False),
        Column("read_gbs_cached", Float, nullable=False),
        Column("fma_gflops", Float, nullable=False),
        Column("llc_bytes", BigInteger, nullable=False),
        Column("details", Text, nullable=False),
        Column("measured_at", DateTime(timezone=True), nullable=False),
        Index("ix_ceilings_lookup", "fingerprint_id", "cores", "threads"),
    )
    md.create_all(conn, checkfirst=False)


@migration
def m005_peak_fraction(conn: Connection) -> None:
    """Per ok evaluation: the share of the machine's peak the candidate reached, what bounds it
    (memory or compute), and the reference's share (evaluator/roofline.py)."""
    for name, kind in (("peak_fraction", Float()), ("bound", String()), ("reference_peak_fraction", Float())):
        conn.execute(text(f"ALTER TABLE evaluations ADD COLUMN {name} {kind.compile(dialect=conn.dialect)}"))


@migration
def m006_policies_and_claims(conn: Connection) -> None:
    """Per evaluation the policy it was judged under (evaluator/rules.py; NULL in older rows:
    strict, the only policy there was) and the PyTorch compute ops its forward ran (JSON list);
    and the claims an imported candidate came with (agent/loop/importers.py), kept beside the
    measured figures."""
    for name, kind in (("policy", String()), ("torch_ops", Text())):
        conn.execute(text(f"ALTER TABLE evaluations ADD COLUMN {name} {kind.compile(dialect=conn.dialect)}"))
    md = MetaData()
    for name, key in (("runs", Integer), ("candidates", String)):
        Table(name, md, Column("id", key, primary_key=True))  # stubs: targets of the foreign keys
    Table(
        "claims", md,
        Column("id", Integer, primary_key=True),
        Column("candidate_id", String, ForeignKey("candidates.id"), nullable=False),
        Column("run_id", Integer, ForeignKey("runs.id"), nullable=True),
        Column("source", String, nullable=False),
        Column("claimed_speedup", Float, nullable=True),
        Column("claimed_correct", Boolean, nullable=True),
        Column("details", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("candidate_id", "source", name="uq_claims_candidate_source"),
        Index("ix_claims_run_id", "run_id"),
    )
    md.tables["claims"].create(conn, checkfirst=False)
