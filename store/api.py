"""The Store: everything the rest of kernelwright writes to or asks of the database.

Writes go through `_write()`, one transaction each; on SQLite it holds the write lock
from BEGIN (see sqlite.py), so check-then-insert cannot race another process. On
PostgreSQL two writers can still race to insert the same content-addressed row, so
inserts go through `_insert_once`, which falls back to the row the other writer made.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from store.db import open_engine
from store.errors import StoreError, one_line
from store.models import ORIGINS, RUN_STATUSES, Candidate, Claim, Run, Task, utcnow
from store.queries import Queries
from store.rows import (
    candidate_id,
    encode,
    evaluation_row,
    llm_call_row,
    run_dict,
    sha256_hex,
)
from store.sqlite import for_writes

_Row = TypeVar("_Row", Task, Candidate, Claim)


class Store(Queries):
    def __init__(self, engine: Engine):
        """Wrap an engine that open_engine (or migrate) has already brought up to date."""
        self.engine = engine
        self._writer = for_writes(engine)

    @classmethod
    def open(cls, url_or_path: str | None, default_path: Path) -> Store:
        return cls(open_engine(url_or_path, default_path))

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writes --------------------------------------------------------------------------

    def upsert_task(self, name: str, suite: str, source: str, path: str | Path) -> int:
        """The id of the task with this source; a new source is a new task. Name, suite and
        path follow the latest call (a renamed or moved file is still the same task)."""
        source_hash = sha256_hex(source)

        def find(s: Session) -> Task | None:
            return s.exec(select(Task).where(Task.source_hash == source_hash)).first()

        with self._write() as s:
            task = find(s)
            if task is None:
                task = _insert_once(s, Task(name=name, suite=suite, source_hash=source_hash, source=source,
                                            path=str(path)), find)
            else:
                task.name, task.suite, task.path = name, suite, str(path)
            s.flush()
            assert task.id is not None  # set by the flush
            return task.id

    def start_run(self, command: str, config: Mapping[str, Any], device: str) -> int:
        run = Run(command=command, config=encode("run config", dict(config)), device=device)
        with self._write() as s:
            s.add(run)
            s.flush()
            assert run.id is not None  # set by the flush
            return run.id

    def finish_run(self, run_id: int, status: str) -> None:
        if status not in RUN_STATUSES or status == "running":
            raise StoreError(f"a run finishes as one of {', '.join(RUN_STATUSES[1:])}, not {status!r}")
        with self._write() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise StoreError(f"no run {run_id}")
            run.status, run.finished_at = status, utcnow()

    def record(self, task_id: int, source: str, verdict_json: Mapping[str, Any], *, origin: str,
               run_id: int | None = None, parent_id: str | None = None,
               knobs: Mapping[str, Any] | None = None, reward: float | None = None,
               reward_note: str | None = None, strategy: str | None = None,
               resources: list[Any] | None = None, llm_call: Mapping[str, Any] | None = None) -> tuple[str, int]:
        """Store one evaluation of `source` for a task: (candidate id, evaluation id).

        The candidate row is made if this source is new for the task; otherwise the first
        one stands (its origin, parent and knobs describe where it first came from). The
        candidate, its evaluation, its reward and the LLM call that produced it are written
        in one transaction: if anything fails, none is (a killed run loses or repeats nothing).
        """
        if origin not in ORIGINS:
            raise StoreError(f"origin must be one of {', '.join(ORIGINS)}, not {origin!r}")
        knobs_json = None if knobs is None else encode("knobs", dict(knobs))
        source_hash = sha256_hex(source)
        with self._write() as s:
            task = s.get(Task, task_id)
            if task is None:
                raise StoreError(f"no task {task_id}")
            cid = candidate_id(task.source_hash, source)
            if parent_id == cid:
                raise StoreError(f"candidate {cid} cannot be its own parent")
            cand = s.get(Candidate, cid)
            if cand is None:
                cand = _insert_once(s, Candidate(id=cid, task_id=task_id, source=source, source_hash=source_hash,
                                                 parent_id=parent_id, origin=origin, knobs=knobs_json,
                                                 run_id=run_id),
                                    lambda s: s.get(Candidate, cid))
            if (cand.task_id, cand.source_hash) != (task_id, source_hash):
                raise StoreError(f"candidate id {cid} already belongs to other source (hash prefix collision)")
            # Built only now, after the candidate row is written inside this transaction, so
            # a bad verdict rolls the candidate back with it.
            evaluation = evaluation_row(cid, run_id, verdict_json)
            evaluation.reward = None if reward is None or reward != reward else float(reward)
            evaluation.reward_note, evaluation.strategy = reward_note, strategy
            if resources is not None:
                evaluation.resources = encode("resources", list(resources))
            s.add(evaluation)
            if llm_call is not None:
                s.add(llm_call_row({**llm_call, "candidate_id": cid, "task_id": task_id}, run_id))
            s.flush()
            assert evaluation.id is not None  # set by the flush
            return cid, evaluation.id

    def record_claim(self, candidate_id: str, source: str, claimed: Mapping[str, Any],
                     run_id: int | None = None) -> int:
        """What an imported candidate's publisher claimed (claimed["speedup"], claimed["correct"] and any
        other figures, kept whole); once per candidate and source: importing again keeps the first."""
        speedup, correct = claimed.get("speedup"), claimed.get("correct")
        if speedup is not None and (isinstance(speedup, bool) or not isinstance(speedup, (int, float))):
            raise StoreError(f"a claimed speedup must be a number or null, not {speedup!r}")
        if correct is not None and not isinstance(correct, bool):
            raise StoreError(f"a claimed correctness must be true, false or null, not {correct!r}")
        details = encode("claim details", dict(claimed))
        with self._write() as s:
            if s.get(Candidate, candidate_id) is None:
                raise StoreError(f"no candidate {candidate_id}")

            def find(s: Session) -> Claim | None:
                return s.exec(select(Claim).where(Claim.candidate_id == candidate_id, Claim.source == source)).first()

            row = find(s) or _insert_once(s, Claim(candidate_id=candidate_id, run_id=run_id, source=source,
                                                   claimed_speedup=None if speedup is None else float(speedup),
                                                   claimed_correct=correct, details=details), find)
            s.flush()
            assert row.id is not None  # set by the flush
            return row.id

    def record_llm_call(self, call: Mapping[str, Any], run_id: int | None = None) -> int:
        """An LLM call that produced no candidate (an API error, a format failure)."""
        with self._write() as s:
            row = llm_call_row(call, run_id)
            s.add(row)
            s.flush()
            assert row.id is not None  # set by the flush
            return row.id

    def reopen_run(self, run_id: int) -> dict[str, Any]:
        """Mark a run running again (resume); returns it."""
        with self._write() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise StoreError(f"no run {run_id}")
            run.status, run.finished_at = "running", None
            return run_dict(run, 0)

    # --- transactions --------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One write transaction, committed on normal exit and rolled back on any exception."""
        try:
            with Session(self._writer, expire_on_commit=False) as s, s.begin():
                yield s
        except IntegrityError as e:
            # Unknown run_id or parent_id (foreign keys) and the like: the caller's mistake.
            raise StoreError(f"not stored: {one_line(e)}") from e


def _insert_once(s: Session, row: _Row, find: Callable[[Session], _Row | None]) -> _Row:
    """Insert `row`; if a concurrent writer inserted the same unique row first, return theirs."""
    try:
        with s.begin_nested():
            s.add(row)
        return row
    except IntegrityError:
        existing = find(s)
        if existing is None:
            raise  # a different constraint failed (a foreign key, say): not a race
        return existing
