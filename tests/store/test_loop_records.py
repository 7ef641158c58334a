"""What the optimization loop stores: LLM calls, rewards, progress and spend per run."""
from __future__ import annotations

import pytest

from store import Store, StoreError
from tests.store.verdicts import verdict

CALL = {"kind": "initial", "model": "m", "messages": [{"role": "user", "content": "make it fast"}],
        "response": "```python\n...\n```", "tokens_in": 100, "tokens_out": 50, "latency_s": 1.5,
        "cost_usd": 0.01, "attempts": 2, "status": "ok", "error": ""}


def test_candidate_evaluation_reward_and_llm_call_are_one_unit(store: Store, task_id: int):
    run = store.start_run("optimize", {"strategy": "evolve"}, "cpu")
    cid, eid = store.record(task_id, "src A", verdict(2.0), origin="llm", run_id=run, reward=0.69,
                            reward_note="", strategy="evolve", resources=[{"kernel": "k", "registers": 32}],
                            llm_call=CALL)
    ev = store.evaluations(cid)[0]
    assert (ev["reward"], ev["strategy"], ev["resources"][0]["registers"]) == (0.69, "evolve", 32)
    calls = store.llm_calls(run_id=run)
    assert len(calls) == 1 and calls[0]["candidate_id"] == cid and calls[0]["task_id"] == task_id
    assert calls[0]["messages"][0]["content"] == "make it fast"
    with pytest.raises(StoreError):  # a bad call rolls back the candidate and evaluation with it
        store.record(task_id, "src B", verdict(3.0), origin="llm", run_id=run, llm_call={**CALL, "status": "weird"})
    assert [h["source"] for h in store.task_history(task_id)] == ["src A"]
    assert len(store.llm_calls(run_id=run)) == 1


def test_progress_spend_history_and_resume(store: Store, task_id: int):
    run = store.start_run("optimize", {"budget": 3}, "cpu")
    store.record(task_id, "a", verdict(1.5), origin="llm", run_id=run, llm_call=CALL)
    store.record(task_id, "b", verdict(None, correct=False), origin="llm", run_id=run, llm_call=CALL)
    store.record(task_id, "c", verdict(2.5), origin="tuner", run_id=run)
    store.record(task_id, "a", verdict(1.4), origin="llm", run_id=run)  # a re-measurement
    store.record_llm_call({**CALL, "status": "format_error", "error": "no code", "task_id": task_id}, run)
    progress = store.run_progress(run)[task_id]
    assert progress["evaluated"] == 4 and progress["counts"] == {"ok": 3, "incorrect": 1}
    assert progress["best_speedup"] == 2.5
    spend = store.run_spend(run)
    assert spend["calls"] == 3 and spend["tokens_in"] == 300 and spend["cost_usd"] == pytest.approx(0.03)
    history = store.task_history(task_id, run)
    assert [h["source"] for h in history] == ["b", "c", "a"]  # ordered by latest evaluation
    assert history[-1]["evaluation"]["speedup"] == 1.4
    store.finish_run(run, "interrupted")
    assert store.reopen_run(run)["status"] == "running"
    with pytest.raises(StoreError):
        store.reopen_run(9999)


def test_spend_of_one_task_in_a_run(store: Store, task_id: int):
    # what a batch job checks its share of --max-cost against
    other = store.upsert_task("gelu", "cpu", "class Model: pass  # gelu\n", "gelu.py")
    run = store.start_run("batch", {}, "cpu")
    store.record(task_id, "a", verdict(1.5), origin="llm", run_id=run, llm_call=CALL)
    store.record_llm_call({**CALL, "status": "api_error", "task_id": task_id, "cost_usd": 0.0}, run)
    store.record(other, "b", verdict(1.5), origin="llm", run_id=run, llm_call={**CALL, "cost_usd": 0.5})
    assert store.run_spend(run, task_id)["calls"] == 2
    assert store.run_spend(run, task_id)["cost_usd"] == pytest.approx(0.01)
    assert store.run_spend(run, other)["cost_usd"] == pytest.approx(0.5)
    assert store.run_spend(run)["cost_usd"] == pytest.approx(0.51)
