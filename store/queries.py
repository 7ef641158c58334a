"""The Store's reads: candidates, evaluations, leaderboards, runs, histories, claims. Plain dicts
out (store/rows.py), each query in one read-only session."""
from __future__ import annotations

import string
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from store import ranking
from store.errors import StoreError
from store.models import Candidate, Claim, Evaluation, LLMCall, Run, Task
from store.rows import (
    CANDIDATE_ID_LEN,
    candidate_dict,
    claim_dict,
    evaluation_dict,
    iso,
    llm_call_dict,
    run_dict,
    task_dict,
)

MIN_PREFIX = 4
# what store/ranking.py reads of an evaluation (not its bulky trials, timings and log)
_RANKED: tuple[Any, ...] = (col(Evaluation.id).label("id"), col(Evaluation.candidate_id).label("candidate_id"),
           col(Evaluation.status).label("status"), col(Evaluation.correct).label("correct"),
           col(Evaluation.speedup).label("speedup"), col(Evaluation.candidate_ms).label("candidate_ms"),
           col(Evaluation.reference_ms).label("reference_ms"), col(Evaluation.peak_fraction).label("peak_fraction"),
           col(Evaluation.bound).label("bound"))


class Queries:
    """Every read the Store answers (the Store is these and its writes)."""

    engine: Engine

    def claims(self, run_id: int | None = None) -> list[dict[str, Any]]:
        """Imported candidates' claims (of one import run, if given), oldest first, with their task."""
        query = (select(Claim, Task.name).join(Candidate, col(Candidate.id) == Claim.candidate_id)
                 .join(Task, col(Task.id) == Candidate.task_id).order_by(col(Claim.id)))
        if run_id is not None:
            query = query.where(Claim.run_id == run_id)
        with Session(self.engine) as s:
            return [{**claim_dict(c), "task": name} for c, name in s.exec(query)]

    def candidate(self, ref: str) -> dict[str, Any] | None:
        """The candidate with this id, or with this unique id prefix (at least 4 characters)."""
        with Session(self.engine) as s:
            cand = resolve(s, ref)
            return None if cand is None else candidate_dict(cand, task_name(s, cand.task_id))

    def evaluations(self, candidate_ref: str) -> list[dict[str, Any]]:
        """Every evaluation of one candidate (id or unique prefix), oldest first."""
        with Session(self.engine) as s:
            cand = resolve(s, candidate_ref)
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
                        col(Evaluation.created_at).label("created_at"), col(Evaluation.strategy).label("strategy"))
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
                        "strategy": e.strategy, "created_at": iso(e.created_at)})
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
            cand, chain, seen = resolve(s, candidate_ref), [], set()
            while cand is not None and cand.id not in seen:
                seen.add(cand.id)
                chain.append(candidate_dict(cand, task_name(s, cand.task_id)))
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
                    "task": task_name(s, task_id) if task_id is not None else ""}

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


def resolve(s: Session, ref: str) -> Candidate | None:
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


def task_name(s: Session, task_id: int) -> str:
    task = s.get(Task, task_id)
    return task.name if task is not None else ""
