"""The Store: everything the rest of kernelwright writes to or asks of the database.

Writes go through `_write()`, one transaction each; on SQLite it holds the write lock
from BEGIN (see sqlite.py), so check-then-insert cannot race another process. On
PostgreSQL two writers can still race to insert the same content-addressed row, so
inserts go through `_insert_once`, which falls back to the row the other writer made.
"""
from __future__ import annotations

import string
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from store import ranking
from store.db import open_engine
from store.errors import StoreError, one_line
from store.models import ORIGINS, RUN_STATUSES, Candidate, Claim, Evaluation, LLMCall, Run, Task, utcnow
from store.rows import (
    CANDIDATE_ID_LEN,
    candidate_dict,
    candidate_id,
    claim_dict,
    encode,
    evaluation_dict,
    evaluation_row,
    iso,
    llm_call_dict,
    llm_call_row,
    run_dict,
    sha256_hex,
    task_dict,
)
from store.sqlite import for_writes

MIN_PREFIX = 4
# what store/ranking.py reads of an evaluation (not its bulky trials, timings and log)
_RANKED: tuple[Any, ...] = (col(Evaluation.id).label("id"), col(Evaluation.candidate_id).label("candidate_id"),
           col(Evaluation.status).label("status"), col(Evaluation.correct).label("correct"),
           col(Evaluation.speedup).label("speedup"), col(Evaluation.candidate_ms).label("candidate_ms"),
           col(Evaluation.reference_ms).label("reference_ms"), col(Evaluation.peak_fraction).label("peak_fraction"),
           col(Evaluation.bound).label("bound"))
_Row = TypeVar("_Row", Task, Candidate, Claim)


class Store:
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
            assert row.id is not None
            assert row.id is not None  # set by the flush
            return row.id

    def claims(self, run_id: int | None = None) -> list[dict[str, Any]]:
        """Imported candidates' claims (of one import run, if given), oldest first, with their task."""
        query = (select(Claim, Task.name).join(Candidate, col(Candidate.id) == Claim.candidate_id)
                 .join(Task, col(Task.id) == Candidate.task_id).order_by(col(Claim.id)))
        if run_id is not None:
            query = query.where(Claim.run_id == run_id)
        with Session(self.engine) as s:
            return [{**claim_dict(c), "task": name} for c, name in s.exec(query)]

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

    # --- reads ---------------------------------------------------------------------------

    def candidate(self, ref: str) -> dict[str, Any] | None:
        """The candidate with this id, or with this unique id prefix (at least 4 characters)."""
        with Session(self.engine) as s:
            cand = _resolve(s, ref)
            return None if cand is None else candidate_dict(cand, _task_name(s, cand.task_id))

    def evaluations(self, candidate_ref: str) -> list[dict[str, Any]]:
        """Every evaluation of one candidate (id or unique prefix), oldest first."""
        with Session(self.engine) as s:
            cand = _resolve(s, candidate_ref)
            if cand is None:
                return []
            rows = s.exec(select(Evaluation).where(Evaluation.candidate_id == cand.id).order_by(col(Evaluation.id)))
            return [evaluation_dict(e) for e in rows]

    def best(self, task: str | int | None = None, device: str | None = None,
             fingerprint_id: str | None = None, policy: str = "strict") -> list[dict[str, Any]]:
        """Per task, the correct candidate with the highest median speedup over its evaluations
        (store/ranking.py: the earliest wins a tie; one ever judged incorrect never ranks).

        `task` is a task name (every task of that name) or a task id. Without a fingerprint
        filter, speedups measured on different machines compete; filter to compare fairly.
        Only evaluations under `policy` count (rows from before policies existed are strict's):
        a kernel that may call PyTorch never competes with one that may not.
        """
        # (sqlmodel's select stubs stop at 4 columns)
        query = (select(*_RANKED, col(Task.id).label("task_id"), col(Task.name).label("task"),  # type: ignore[call-overload]
                        col(Task.suite).label("suite"), col(Candidate.origin).label("origin"),
                        col(Evaluation.device).label("device"), col(Evaluation.fingerprint_id).label("fingerprint_id"),
                        col(Evaluation.created_at).label("created_at"))
                 .join(Candidate, col(Candidate.task_id) == Task.id)
                 .join(Evaluation, col(Evaluation.candidate_id) == Candidate.id)
                 .order_by(col(Evaluation.id)))
        if isinstance(task, int):
            query = query.where(Task.id == task)
        elif task is not None:
            query = query.where(Task.name == task)
        if device is not None:
            query = query.where(Evaluation.device == device)
        if fingerprint_id is not None:
            query = query.where(Evaluation.fingerprint_id == fingerprint_id)
        query = query.where(func.coalesce(Evaluation.policy, "strict") == policy)
        with Session(self.engine) as s:
            rows = list(s.exec(query))
        per_task: dict[int, list[ranking.Standing]] = {}
        for st in ranking.standings(rows).values():
            per_task.setdefault(st.first.task_id, []).append(st)
        out = []
        for ranked in per_task.values():
            lead = ranking.leader(ranked)
            assert lead is not None  # ranked is never empty
            e = lead.first  # the evaluation that found it (its strategy, machine and date)
            out.append({"task": e.task, "task_id": e.task_id, "suite": e.suite, "speedup": lead.speedup,
                        "measurements": lead.measurements, "candidate_id": lead.candidate_id, "evaluation_id": e.id,
                        "fingerprint_id": e.fingerprint_id, "device": e.device, "origin": e.origin,
                        "candidate_ms": lead.candidate_ms, "reference_ms": lead.reference_ms,
                        "peak_fraction": lead.peak_fraction, "bound": lead.bound, "policy": policy,
                        "created_at": iso(e.created_at)})
        return sorted(out, key=lambda r: (r["task"], r["task_id"]))

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest runs first, each with how many evaluations it recorded."""
        count = (select(func.count()).select_from(Evaluation)
                 .where(Evaluation.run_id == Run.id).correlate(Run).scalar_subquery())
        with Session(self.engine) as s:
            rows = s.exec(select(Run, count).order_by(col(Run.id).desc()).limit(limit))
            return [run_dict(r, n) for r, n in rows]

    def run(self, run_id: int) -> dict[str, Any] | None:
        with Session(self.engine) as s:
            r = s.get(Run, run_id)
            return None if r is None else run_dict(r, 0)

    def task_history(self, task_id: int, run_id: int | None = None, policy: str | None = None) -> list[dict[str, Any]]:
        """Every candidate of a task (of one run, if given) with its latest evaluation (under one
        policy, if given), oldest first: what strategies pick parents from and prompts show as exemplars."""
        latest_q = select(func.max(Evaluation.id)).where(Evaluation.candidate_id == Candidate.id)
        if policy is not None:
            latest_q = latest_q.where(func.coalesce(Evaluation.policy, "strict") == policy)
        latest = latest_q.correlate(Candidate).scalar_subquery()
        query = (select(Candidate, Evaluation).join(Evaluation, col(Evaluation.id) == latest)
                 .where(Candidate.task_id == task_id).order_by(col(Evaluation.id)))
        if run_id is not None:
            query = query.where(Evaluation.run_id == run_id)
        with Session(self.engine) as s:
            return [{**candidate_dict(c, ""), "evaluation": evaluation_dict(e)} for c, e in s.exec(query)]

    def run_progress(self, run_id: int, task_id: int | None = None) -> dict[int, dict[str, Any]]:
        """Per task id: evaluations in this run (evaluated; by status: counts), the candidates they
        measured, and its leading candidate by the median of its measurements in this run
        (best_speedup, best_candidate_id, best_measurements)."""
        query = (select(*_RANKED, col(Candidate.task_id).label("task_id"))  # type: ignore[call-overload]
                 .join(Candidate, col(Candidate.id) == Evaluation.candidate_id)
                 .where(Evaluation.run_id == run_id).order_by(col(Evaluation.id)))
        if task_id is not None:
            query = query.where(Candidate.task_id == task_id)
        out: dict[int, dict[str, Any]] = {}
        evals: dict[int, list[Any]] = {}
        with Session(self.engine) as s:
            for e in s.exec(query):
                p = out.setdefault(e.task_id, {"evaluated": 0, "candidates": 0, "counts": {}, "best_speedup": None,
                                             "best_candidate_id": None, "best_measurements": 0})
                p["evaluated"] += 1
                p["counts"][e.status] = p["counts"].get(e.status, 0) + 1
                evals.setdefault(e.task_id, []).append(e)
        for tid, es in evals.items():
            out[tid]["candidates"] = len({e.candidate_id for e in es})
            if (st := ranking.leader(ranking.standings(es).values())) is not None:
                out[tid].update(best_speedup=st.speedup, best_candidate_id=st.candidate_id,
                                    best_measurements=st.measurements, best_peak_fraction=st.peak_fraction,
                                    best_bound=st.bound)
        return out

    def run_spend(self, run_id: int, task_id: int | None = None) -> dict[str, Any]:
        """LLM calls, tokens and cost of a run (of one task in it, if given)."""
        query = select(func.count(), func.coalesce(func.sum(LLMCall.tokens_in), 0),
                       func.coalesce(func.sum(LLMCall.tokens_out), 0),
                       func.coalesce(func.sum(LLMCall.cost_usd), 0.0)).where(LLMCall.run_id == run_id)
        if task_id is not None:
            query = query.where(LLMCall.task_id == task_id)
        with Session(self.engine) as s:
            calls, tin, tout, cost = s.exec(query).one()
        return {"calls": calls, "tokens_in": int(tin), "tokens_out": int(tout), "cost_usd": float(cost)}

    def llm_calls(self, run_id: int | None = None, candidate_id: str | None = None) -> list[dict[str, Any]]:
        query = select(LLMCall).order_by(col(LLMCall.id))
        if run_id is not None:
            query = query.where(LLMCall.run_id == run_id)
        if candidate_id is not None:
            query = query.where(LLMCall.candidate_id == candidate_id)
        with Session(self.engine) as s:
            return [llm_call_dict(c) for c in s.exec(query)]

    def lineage(self, candidate_ref: str) -> list[dict[str, Any]]:
        """The candidate, its parent, the parent's parent, ... up to the root ([] if unknown)."""
        with Session(self.engine) as s:
            cand, chain, seen = _resolve(s, candidate_ref), [], set()
            while cand is not None and cand.id not in seen:
                seen.add(cand.id)
                chain.append(candidate_dict(cand, _task_name(s, cand.task_id)))
                cand = s.get(Candidate, cand.parent_id) if cand.parent_id else None
            return chain

    # --- reads for review, reports and exports -------------------------------------------

    def task(self, task_id: int) -> dict[str, Any] | None:
        with Session(self.engine) as s:
            t = s.get(Task, task_id)
            return None if t is None else task_dict(t)

    def tasks(self) -> list[dict[str, Any]]:
        """Every task, by name then id."""
        with Session(self.engine) as s:
            return [task_dict(t) for t in s.exec(select(Task).order_by(col(Task.name), col(Task.id)))]

    def evaluation(self, evaluation_id: int) -> dict[str, Any] | None:
        """One evaluation, with the task its candidate belongs to."""
        with Session(self.engine) as s:
            e = s.get(Evaluation, evaluation_id)
            if e is None:
                return None
            cand = s.get(Candidate, e.candidate_id)
            task_id = cand.task_id if cand is not None else None
            return {**evaluation_dict(e), "task_id": task_id,
                    "task": _task_name(s, task_id) if task_id is not None else ""}

    def evaluation_rows(self, run_id: int | None = None) -> list[dict[str, Any]]:
        """Every evaluation (of one run, if given), oldest first, flattened with its candidate and
        task: what reports count and plot. The bulky columns (trials, timings, log) stay out."""
        query = (select(Evaluation, Candidate.origin, Candidate.parent_id, Task.id, Task.name)  # type: ignore[call-overload]
                 .join(Candidate, col(Candidate.id) == Evaluation.candidate_id)
                 .join(Task, col(Task.id) == Candidate.task_id).order_by(col(Evaluation.id)))
        if run_id is not None:
            query = query.where(Evaluation.run_id == run_id)
        with Session(self.engine) as s:
            return [{"id": e.id, "run_id": e.run_id, "task_id": tid, "task": name, "candidate_id": e.candidate_id,
                     "origin": origin, "parent_id": parent, "status": e.status, "reason": e.reason,
                     "correct": e.correct, "speedup": e.speedup, "candidate_ms": e.candidate_ms,
                     "reference_ms": e.reference_ms, "peak_fraction": e.peak_fraction, "bound": e.bound,
                     "reference_peak_fraction": e.reference_peak_fraction, "reward": e.reward, "strategy": e.strategy,
                     "device": e.device, "fingerprint_id": e.fingerprint_id, "policy": e.policy or "strict",
                     "created_at": iso(e.created_at)}
                    for e, origin, parent, tid, name in s.exec(query)]

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


def _resolve(s: Session, ref: str) -> Candidate | None:
    prefix = ref.strip().lower()
    if len(prefix) < MIN_PREFIX:
        raise StoreError(f"a candidate id prefix needs at least {MIN_PREFIX} characters, got {ref!r}")
    if len(prefix) > CANDIDATE_ID_LEN or not set(prefix) <= set(string.hexdigits.lower()):
        return None
    if len(prefix) == CANDIDATE_ID_LEN:
        return s.get(Candidate, prefix)
    # Ids are lowercase hex, so every id starting with the prefix lies in [prefix, prefix + "g"):
    # a range scan on the primary key, where LIKE would read every row on SQLite.
    ids = s.exec(select(Candidate.id).where(col(Candidate.id) >= prefix, col(Candidate.id) < prefix + "g")
                 .order_by(col(Candidate.id)).limit(5)).all()
    if len(ids) > 1:
        more = ", ..." if len(ids) == 5 else ""
        raise StoreError(f"candidate prefix {prefix!r} is ambiguous: {', '.join(ids[:4])}{more}")
    return s.get(Candidate, ids[0]) if ids else None


def _task_name(s: Session, task_id: int) -> str:
    task = s.get(Task, task_id)
    return task.name if task is not None else ""
