"""The store's tables as sqlmodel classes: what the queries in api.py read and write.

These classes describe the schema *after* all migrations; the DDL itself lives in
migrations.py (a test checks the two agree). JSON-valued columns are plain text holding
JSON, so the schema is the same on SQLite and PostgreSQL. Timestamps are aware UTC datetimes
(sqlmodel's UTCDateTime: timestamptz on PostgreSQL, UTC without offset in SQLite).
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

RUN_STATUSES = ("running", "finished", "interrupted", "failed")
ORIGINS = ("user", "seed", "llm", "tuner", "import")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _text(nullable: bool = False):
    # A fresh Column per field: SQLAlchemy columns cannot be shared between attributes.
    return Field(default=None if nullable else ..., sa_column=Column(Text, nullable=nullable))


class Task(SQLModel, table=True):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("source_hash", name="uq_tasks_source_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    suite: str
    source_hash: str  # sha256 hex of the task source: the task's identity
    source: str = _text()
    path: str
    created_at: dt.datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    __tablename__ = "runs"

    id: int | None = Field(default=None, primary_key=True)
    created_at: dt.datetime = Field(default_factory=utcnow)
    finished_at: dt.datetime | None = None
    command: str  # "eval", "optimize", ...
    status: str = "running"  # one of RUN_STATUSES
    config: str = _text()  # JSON object
    device: str


class Candidate(SQLModel, table=True):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("task_id", "source_hash", name="uq_candidates_task_source"),)

    # First 12 hex chars of sha256(task.source_hash + "\0" + source): the same source for
    # the same task is one row, however many times and by whom it was proposed.
    id: str = Field(primary_key=True)
    task_id: int = Field(foreign_key="tasks.id")
    source: str = _text()
    source_hash: str  # sha256 hex of the candidate source
    parent_id: str | None = Field(default=None, foreign_key="candidates.id")
    origin: str  # one of ORIGINS
    knobs: str | None = _text(nullable=True)  # JSON object, for tuner candidates
    run_id: int | None = Field(default=None, foreign_key="runs.id")
    created_at: dt.datetime = Field(default_factory=utcnow)


class Evaluation(SQLModel, table=True):
    __tablename__ = "evaluations"

    id: int | None = Field(default=None, primary_key=True)
    candidate_id: str = Field(foreign_key="candidates.id", index=True)
    run_id: int | None = Field(default=None, foreign_key="runs.id", index=True)
    status: str
    reason: str = _text()
    correct: bool
    speedup: float | None = None
    candidate_ms: float | None = None
    reference_ms: float | None = None
    candidate_spread_ms: float | None = None
    reference_spread_ms: float | None = None
    reference_compiled_ms: float | None = None  # torch.compile(Model), where it was timed (GPUs)
    speedup_vs_compile: float | None = None
    trials: str = _text()  # JSON list
    timings: str = _text()  # JSON object
    flags: str = _text()  # JSON list
    stages: str = _text()  # JSON object
    fingerprint: str = _text()  # JSON object
    # Both are None when the verdict came before any device was touched (static rejections).
    fingerprint_id: str | None = Field(default=None, index=True)
    device: str | None = Field(default=None, index=True)
    log: str = _text()
    created_at: dt.datetime = Field(default_factory=utcnow)
    # m002: the optimization loop's reward, the strategy that asked for the candidate, and the
    # compiler's per-kernel resource report (JSON list) shown in later prompts
    reward: float | None = None
    reward_note: str | None = _text(nullable=True)
    strategy: str | None = None
    resources: str | None = _text(nullable=True)
    # m003: the share of the timed calls' CPU samples in the candidate's own code, and its breakdown (JSON)
    coverage: float | None = None
    attribution: str | None = _text(nullable=True)
    # m005: the share of the machine's peak reached (ok verdicts), memory or compute, and eager's share
    peak_fraction: float | None = None
    bound: str | None = None
    reference_peak_fraction: float | None = None
    # m006: the policy the verdict was reached under (None in older rows: strict), the PyTorch compute ops
    # its forward ran (JSON list; policies other than strict allow them)
    policy: str | None = None
    torch_ops: str | None = _text(nullable=True)


class Claim(SQLModel, table=True):
    """What an imported candidate's publisher claimed for it (m006): kept beside what kernelwright measured."""

    __tablename__ = "claims"
    __table_args__ = (UniqueConstraint("candidate_id", "source", name="uq_claims_candidate_source"),
                      Index("ix_claims_run_id", "run_id"))

    id: int | None = Field(default=None, primary_key=True)
    candidate_id: str = Field(foreign_key="candidates.id")
    run_id: int | None = Field(default=None, foreign_key="runs.id")
    source: str  # where the claim came from: "cuda-l1:<file>", "kernelbench:<folder>", ...
    claimed_speedup: float | None = None
    claimed_correct: bool | None = None
    details: str = _text()  # JSON object: every claimed figure as given
    created_at: dt.datetime = Field(default_factory=utcnow)


class LLMCall(SQLModel, table=True):
    """One request to the LLM and its answer, whatever came of it (m002)."""

    __tablename__ = "llm_calls"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, foreign_key="runs.id", index=True)
    task_id: int | None = Field(default=None, foreign_key="tasks.id", index=True)
    candidate_id: str | None = Field(default=None, foreign_key="candidates.id", index=True)  # what it produced
    parent_id: str | None = Field(default=None, foreign_key="candidates.id")  # what it was asked to improve
    kind: str  # initial, contrastive, repair, format_retry
    model: str
    messages: str = _text()  # JSON list of chat messages
    response: str = _text()
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    attempts: int = 1
    status: str  # ok, api_error, format_error
    error: str = _text()
    created_at: dt.datetime = Field(default_factory=utcnow)


class Ceiling(SQLModel, table=True):
    """One measurement of a machine's ceilings for some cores and threads (m004; evaluator/ceilings.py)."""

    __tablename__ = "ceilings"
    __table_args__ = (Index("ix_ceilings_lookup", "fingerprint_id", "cores", "threads"),)

    id: int | None = Field(default=None, primary_key=True)
    fingerprint_id: str
    device: str
    cores: str  # "1" or "2,3": the cores measured, sorted ("" on a GPU)
    threads: int
    copy_gbs: float
    read_gbs: float
    copy_gbs_cached: float
    read_gbs_cached: float
    fma_gflops: float
    llc_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    details: str = _text()  # JSON object
    measured_at: dt.datetime = Field(default_factory=utcnow)
