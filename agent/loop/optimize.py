"""The optimization loop: ask, evaluate, reward, record; per task, until its budget is spent.

Threads overlap LLM calls (up to `concurrency`), while evaluations take the device one at a
time (a kernel must never be timed while other work shares its device). Each evaluated
candidate is committed with its evaluation, reward and LLM call as one transaction, and the
loop's whole state is rebuilt from the store, so `--resume` after a kill loses and repeats
nothing. Budgets are hard stops: candidates per task, wall time, and LLM spend (a call's
worst-case cost is reserved before it is made).
"""
from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable

from agent.loop import propose, strategies
from agent.loop.judge import Record, judge
from agent.loop.llm import LLMClient
from agent.loop.reward import RewardConfig
from agent.loop.strategies import Member
from evaluator.verdict import EvaluationRecord
from store.rows import candidate_id as content_id
from tasks.spec import Task

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class OptimizeConfig:
    strategy: str = "evolve"  # best-of-n | evolve | refine; without an LLM the tuner runs
    budget: int = 10  # candidates evaluated per task
    time_limit_s: float | None = None
    max_cost_usd: float | None = None
    concurrency: int = 2
    tuner: str = "pattern"
    tune_fraction: float = 0.25  # with an LLM: the share of evaluations that tune its knob-annotated kernels
    seed: int = 0
    reward: RewardConfig = RewardConfig()
    max_api_failures: int = 5  # in a row: the endpoint is down or the key is wrong
    confirm: int = 2  # after a task's budget: re-measurements of its leader until measured twice (0: off)


class _TaskRun:
    def __init__(self, task: Task, task_id: int):
        self.task, self.task_id = task, task_id
        self.members: list[Member] = []
        self.inflight = 0
        self.asks = 0
        self.tunings: list[propose.KnobTuning] = []
        self.tuning_busy: set[int] = set()
        self.tune_evals = 0
        self.best_ms: float | None = None
        self.done_reason = ""
        self.confirms = 0  # re-measurements of the leader made after the budget (store/ranking.py)

    @property
    def evaluated(self) -> int:
        return len(self.members)


class Optimizer:
    def __init__(self, store: Any, evaluator: Any, tasks: list[Task], cfg: OptimizeConfig, run_id: int,
                 llm: LLMClient | None = None, on_update: Callable[[Optimizer], None] | None = None):
        self.store, self.evaluator, self.cfg, self.run_id, self.llm = store, evaluator, cfg, run_id, llm
        self.policy: str = evaluator.cfg.policy.name  # history, dedup and prompts: this policy's verdicts only
        self.on_update = on_update or (lambda _: None)
        self.rng = random.Random(cfg.seed * 7919 + run_id)
        self.lock = threading.Condition()  # guards the state below; notified when a job ends
        self.stop = threading.Event()
        self.stopped_by = ""
        self.started = time.monotonic()
        self.spend = store.run_spend(run_id)
        self.reserved = 0.0
        self.api_failures = 0
        self.errors: list[BaseException] = []
        progress = store.run_progress(run_id)  # once for all tasks: a resumed run's evaluations
        self.runs = [self._restore(t, progress) for t in tasks]
        if cfg.strategy not in strategies.STRATEGIES:
            raise ValueError(f"unknown strategy {cfg.strategy!r} (known: {', '.join(strategies.STRATEGIES)})")

    # --- state from the store -----------------------------------------------------------
    def _restore(self, task: Task, progress: dict[int, dict[str, Any]]) -> _TaskRun:
        tid = self.store.upsert_task(task.name, task.meta.suite, task.source, str(task.path))
        tr = _TaskRun(task, tid)
        for h in self.store.task_history(tid, self.run_id, self.policy):
            tr.members.append(_member(h))
            self._note_best(tr, h["evaluation"])
        # every evaluation beyond one per candidate was a re-measurement
        tr.confirms = progress.get(tid, {}).get("evaluated", 0) - tr.evaluated
        if self.llm is None:
            history = self.store.task_history(tid, policy=self.policy)
            for path in task.seed_paths():
                source = path.read_text()
                if propose.knobs.read_space(source) is None:
                    continue
                known = propose.known_scores(history, source)
                tr.tunings.append(propose.KnobTuning(source, content_id(task.source_hash, source), self.cfg.tuner,
                                                     random.Random(self.cfg.seed), known, seed=True))
            if not tr.tunings:
                tr.done_reason = "no knob-annotated seed kernel and no LLM configured"
        return tr

    def _note_best(self, tr: _TaskRun, e: Mapping[str, Any]) -> None:
        if e.get("status") == "ok" and e.get("candidate_ms") and (tr.best_ms is None or e["candidate_ms"] < tr.best_ms):
            tr.best_ms = e["candidate_ms"]

    # --- scheduling ---------------------------------------------------------------------
    def _limits_hit(self) -> str:
        if self.cfg.time_limit_s is not None and time.monotonic() - self.started > self.cfg.time_limit_s:
            return "time_limit"
        if self.api_failures >= self.cfg.max_api_failures:
            return "api_failures"
        return ""

    def _claim(self) -> tuple[_TaskRun, Any] | None:
        with self.lock:
            while not self.stop.is_set():
                if reason := self._limits_hit():
                    self.stopped_by = self.stopped_by or reason
                    return None
                for tr in self.runs:
                    if not tr.done_reason and tr.asks >= 3 * self.cfg.budget and tr.evaluated < self.cfg.budget:
                        tr.done_reason = f"stopped after {tr.asks} asks (duplicate or unusable proposals)"
                open_runs = [tr for tr in self.runs if not tr.done_reason
                             and tr.evaluated + tr.inflight < self.cfg.budget]
                for tr in self.runs:
                    if tr not in open_runs and (job := self._confirm_job(tr)) is not None:
                        tr.inflight += 1
                        return tr, job
                if not open_runs:
                    if not any(tr.inflight for tr in self.runs):
                        return None
                    self.lock.wait(0.05)  # for in-flight work: it may free or end a task
                    continue
                for tr in sorted(open_runs, key=lambda t: (t.evaluated + t.inflight, t.task.name)):
                    job = self._next_job(tr)
                    if job is not None:
                        tr.inflight += 1
                        tr.asks += 1
                        return tr, job
                if not any(tr.inflight for tr in self.runs):
                    return None
                self.lock.wait(0.05)
            return None

    def _confirm_job(self, tr: _TaskRun) -> Any:
        """Once a task's search is over: its leader, if measured only once (the lowest of many
        noisy single measurements is biased low; see store/ranking.py)."""
        if tr.inflight or tr.confirms >= self.cfg.confirm:
            return None
        p = self.store.run_progress(self.run_id, tr.task_id).get(tr.task_id, {})
        if p.get("best_candidate_id") is None or p["best_measurements"] >= 2:
            tr.confirms = self.cfg.confirm  # confirmed, or nothing to confirm: this task is done
            return None
        tr.confirms += 1
        return ("confirm", p["best_candidate_id"], None)

    def _next_job(self, tr: _TaskRun) -> Any:
        want_tune = self.llm is None or (tr.tune_evals < self.cfg.tune_fraction * max(1, tr.evaluated + 1))
        if want_tune:
            for i, tuning in enumerate(tr.tunings):
                if i in tr.tuning_busy or tuning.tuner.done:
                    continue
                proposal = tuning.next()
                if proposal is not None:
                    tr.tuning_busy.add(i)
                    return ("tune", i, proposal)
        if self.llm is None:
            if all(t.tuner.done for t in tr.tunings) and not tr.tuning_busy:
                tr.done_reason = "knob space exhausted"
            return None
        if self.cfg.max_cost_usd is not None:
            worst = self.llm.worst_case_cost()
            if self.spend["cost_usd"] + self.reserved + worst > self.cfg.max_cost_usd:
                _log.debug("stopping: the next call's worst case would pass the max cost (%.4f + %.4f + %.4f > %.4f USD)",
                           self.spend["cost_usd"], self.reserved, worst, self.cfg.max_cost_usd)
                self.stopped_by = self.stopped_by or "max_cost"
                self.stop.set()
                return None
            self.reserved += worst
        ask = strategies.STRATEGIES[self.cfg.strategy](tr.members, self.rng)
        return ("llm", ask, None)

    # --- one job ------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            claimed = self._claim()
            if claimed is None:
                return
            tr, job = claimed
            try:
                if job[0] == "tune":
                    self._tune(tr, job[1], job[2])
                elif job[0] == "confirm":
                    self._remeasure(tr, job[1])
                else:
                    self._ask_llm(tr, job[1])
            except BaseException as e:  # noqa: BLE001 - unexpected: stop the run, report it
                self.errors.append(e)
                self.stop.set()
            finally:
                with self.lock:
                    tr.inflight -= 1
                    self.lock.notify_all()
                self.on_update(self)

    def _ask_llm(self, tr: _TaskRun, ask: strategies.Ask) -> None:
        assert self.llm is not None
        history = self.store.task_history(tr.task_id, policy=self.policy)
        fp = self.evaluator.fingerprint(tr.task)
        worst = self.llm.worst_case_cost() if self.cfg.max_cost_usd is not None else 0.0
        try:
            proposal = propose.from_llm(self.llm, ask, tr.task.source, tr.task.name, propose.target_facts(fp, self.policy),
                                        history, random.Random(self.rng.random()))
        finally:
            with self.lock:
                self.reserved -= worst
        with self.lock:
            self.api_failures = self.api_failures + 1 if any(c["status"] == "api_error" for c in proposal.llm_calls) else 0
            for c in proposal.llm_calls:
                self.spend["cost_usd"] += c["cost_usd"]
                self.spend["tokens_in"] += c["tokens_in"]
                self.spend["tokens_out"] += c["tokens_out"]
                self.spend["calls"] += 1
        calls = list(proposal.llm_calls)
        if proposal.source is None:
            for c in calls:
                self.store.record_llm_call({**c, "task_id": tr.task_id}, self.run_id)
            return
        for c in calls[:-1]:  # format failures before the answer that worked
            self.store.record_llm_call({**c, "task_id": tr.task_id}, self.run_id)
        cid = content_id(tr.task.source_hash, proposal.source)
        if self.store.candidate(cid) is not None and any(e["policy"] == self.policy for e in self.store.evaluations(cid)):
            # seen before under this policy (this run or another): dedup by content; the call is kept, linked to it
            self.store.record_llm_call({**calls[-1], "task_id": tr.task_id, "candidate_id": cid}, self.run_id)
            return
        self._evaluate(tr, proposal, calls[-1])

    def _tune(self, tr: _TaskRun, index: int, proposal: propose.Proposal) -> None:
        try:
            verdict = self._evaluate(tr, proposal, None)
            tr.tunings[index].report(proposal.knobs or {}, verdict)
            with self.lock:
                tr.tune_evals += 1
        finally:
            with self.lock:
                tr.tuning_busy.discard(index)

    def _remeasure(self, tr: _TaskRun, cid: str) -> None:
        cand = self.store.candidate(cid)
        judge(self.evaluator, tr.task, cand["source"], self.cfg.reward, self.store,
              Record(tr.task_id, cand["origin"], self.run_id, strategy="confirm"), confirm_outliers=False)

    def _evaluate(self, tr: _TaskRun, proposal: propose.Proposal, call: dict | None) -> EvaluationRecord:
        assert proposal.source is not None
        slow_ms = 3.0 * tr.best_ms if tr.best_ms else None
        _log.debug("%s: evaluating a %s proposal%s (%d evaluated so far)", tr.task.name, proposal.origin,
                   f" with knobs {proposal.knobs}" if proposal.knobs else "", tr.evaluated)
        done = judge(self.evaluator, tr.task, proposal.source, self.cfg.reward, self.store,  # shares the device fairly
                     Record(tr.task_id, proposal.origin, self.run_id, strategy=self._strategy_name(proposal),
                            parent_id=proposal.parent_id, knobs=proposal.knobs, llm_call=call), slow_ms=slow_ms)
        out, r, cid = done.out, done.reward, done.candidate_id
        assert cid is not None  # judged with a store and a record: saved
        with self.lock:
            tr.members.append(Member(cid, proposal.parent_id, out["status"], out.get("speedup"), r.value,
                                     proposal.knobs, proposal.origin))
            self._note_best(tr, out)
            if self.llm is not None and proposal.origin == "llm" and proposal.knobs and out["status"] == "ok":
                # the LLM proposed structure; the tuner now tunes its numbers
                known = {propose.tuner.key(proposal.knobs): out.get("candidate_ms")}
                tr.tunings.append(propose.KnobTuning(proposal.source, cid, self.cfg.tuner,
                                                     random.Random(self.cfg.seed), known))
        return out

    def _strategy_name(self, proposal: propose.Proposal) -> str:
        return f"tune:{self.cfg.tuner}" if proposal.origin in ("tuner", "seed") else self.cfg.strategy

    # --- driving ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        threads = [threading.Thread(target=self._work, daemon=True, name=f"kw-opt-{i}")
                   for i in range(max(1, self.cfg.concurrency))]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.2)
        except KeyboardInterrupt:
            self.stopped_by = "interrupted"
            self.stop.set()
            raise
        if self.errors:
            raise self.errors[0]
        if not self.stopped_by:
            self.stopped_by = "budget"
        return self.summary()

    def summary(self) -> dict[str, Any]:
        progress = self.store.run_progress(self.run_id)
        spend = self.store.run_spend(self.run_id)
        tasks = []
        for tr in self.runs:
            p = progress.get(tr.task_id, {})
            tasks.append({"task": tr.task.name, "best_candidate_id": p.get("best_candidate_id"),
                          "best_speedup": p.get("best_speedup"), "measurements": p.get("best_measurements", 0),
                          "best_peak_fraction": p.get("best_peak_fraction"), "best_bound": p.get("best_bound"),
                          "evaluated": tr.evaluated,
                          "counts": p.get("counts", {}), "note": tr.done_reason})
        return {"run_id": self.run_id, "tasks": tasks,
                "tokens": {"in": spend["tokens_in"], "out": spend["tokens_out"]},
                "cost_usd": round(spend["cost_usd"], 6), "llm_calls": spend["calls"], "stopped_by": self.stopped_by,
                "seconds": round(time.monotonic() - self.started, 1)}


def _member(h: dict[str, Any]) -> Member:
    e = h["evaluation"]
    return Member(h["id"], h.get("parent_id"), e["status"], e.get("speedup"), e.get("reward"), h.get("knobs"),
                  h.get("origin", "llm"))
