"""`kernelwright dataset` (SFT, DPO, GRPO records in TRL's layouts) and the RL reward function."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app  # the package registers every command
from agent.loop import prompts
from agent.loop.parse import extract
from agent.loop.propose import target_facts
from agent.loop.reward import FAILURE
from agent.loop.rl import KernelReward
from agent.outputs.datasets import DatasetConfig, dpo, fenced, grpo, sft
from store import Store
from tasks.spec import load_task
from tests.agent.review_data import DATA, WRONG
from tests.data.candidates import FAST


def by_id(store: Store) -> dict[str, dict]:
    return {h["id"]: h for t in store.tasks() for h in store.task_history(t["id"])}


def first_prompt(store: Store) -> list[dict]:
    """The initial prompt the LLM run sent twice (an incorrect kernel, then a slow correct one)."""
    return store.llm_calls()[0]["messages"]


def test_sft_pairs_each_prompt_with_its_fastest_correct_kernel(store: Store):
    records = sft(store)
    candidates = by_id(store)
    for r in records:
        assert [m["role"] for m in r["prompt"]][-1] == "user" and r["prompt"][0]["role"] == "system"
        (completion,) = r["completion"]
        assert completion["role"] == "assistant"
        assert extract(completion["content"]).source == candidates[r["candidate_id"]]["source"]
        assert candidates[r["candidate_id"]]["evaluation"]["status"] == "ok"
    tuned = {r["task"]: r for r in records if r["task"] in ("softmax", "rmsnorm")}
    assert set(tuned) == {"softmax", "rmsnorm"}  # the tuner's kernels answer the initial prompt
    for task, r in tuned.items():
        best = store.best(task)[0]
        assert r["candidate_id"] == best["candidate_id"] and r["speedup"] == best["speedup"]
        task_row = next(t for t in store.tasks() if t["name"] == task)
        fp = candidates[best["candidate_id"]]["evaluation"]["fingerprint"]
        assert r["prompt"] == prompts.initial(task_row["source"], target_facts(fp), task)
    first = [r for r in records if r["prompt"] == first_prompt(store)]
    assert [candidates[r["candidate_id"]]["source"].count("slow but right") for r in first] == [1]
    fastest = max(r["speedup"] for r in records)
    assert sft(store, DatasetConfig(min_speedup=fastest + 1e-9)) == []
    assert [r["speedup"] for r in sft(store, DatasetConfig(min_speedup=fastest))] == [fastest]


def test_dpo_prefers_correct_and_faster(store: Store):
    records = dpo(store)
    candidates = by_id(store)
    assert records
    for r in records:
        chosen, rejected = candidates[r["chosen_id"]]["evaluation"], None
        assert chosen["status"] == "ok" and r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
        if r["rejected_id"] is not None:
            rejected = candidates[r["rejected_id"]]["evaluation"]
            assert rejected["status"] != "ok" or rejected["reward"] < chosen["reward"]
        assert extract(r["chosen"][0]["content"]).source == candidates[r["chosen_id"]]["source"]
    (pair,) = [r for r in records if r["prompt"] == first_prompt(store)]
    assert pair["rejected_status"] == "incorrect" and "slow but right" in pair["chosen"][0]["content"]
    assert extract(pair["rejected"][0]["content"]).source == WRONG
    assert dpo(store, DatasetConfig(min_speedup=1e6)) == []


def test_grpo_groups_every_answer_to_a_prompt_with_its_stored_reward(store: Store):
    records = grpo(store)
    candidates = by_id(store)
    for r in records:
        assert len(r["completions"]) == len(r["rewards"]) == len(r["candidate_ids"]) >= 2
        for cid, reward, status in zip(r["candidate_ids"], r["rewards"], r["statuses"]):
            if cid is None:
                assert (status, reward) == ("format_error", FAILURE["format_error"])
            else:
                assert reward == candidates[cid]["evaluation"]["reward"]
    (group,) = [r for r in records if r["prompt"] == first_prompt(store)]
    assert group["statuses"] == ["incorrect", "ok"] and group["rewards"][0] == FAILURE["incorrect"]
    assert all(c[0]["content"].startswith("Plan: one pass per row.") for c in group["completions"])  # as answered
    tuned = [r for r in records if r["task"] == "softmax"]
    assert len(tuned) == 1 and len(tuned[0]["completions"]) == 3  # the seed and two tuned kernels


def test_the_cli_writes_jsonl(db: Path, store: Store, tmp_path: Path):
    for fmt, build, keys in (("sft", sft, {"prompt", "completion"}), ("dpo", dpo, {"prompt", "chosen", "rejected"}),
                             ("grpo", grpo, {"prompt", "completions", "rewards"})):
        out = tmp_path / f"{fmt}.jsonl"
        result = CliRunner().invoke(app, ["dataset", "--format", fmt, "--out", str(out), "--db", str(db), "--json"])
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert json.loads(result.output) == {"format": fmt, "records": len(lines), "out": str(out)}
        assert lines == build(store) and all(keys <= set(line) for line in lines)
    result = CliRunner().invoke(app, ["dataset", "--format", "ppo", "--out", str(tmp_path / "x"), "--db", str(db)])
    assert result.exit_code == 2 and result.output.strip() == "Error: unknown format 'ppo' (use sft, dpo, grpo)"


def test_fences_outlast_backticks_in_the_source():
    source = 'DOC = """```python\\nx\\n```"""\nclass ModelNew:\n    pass\n'
    assert extract(fenced(source)).source == source


def test_kernel_reward_evaluates_completions_for_trl(evaluator, tmp_path: Path):
    task = load_task(DATA / "softmax_small.py")
    with Store.open(str(tmp_path / "rl.db"), tmp_path / "rl.db") as store:
        run = store.start_run("rl", {}, "cpu")
        reward = KernelReward(evaluator, [task], store=store, run_id=run)
        assert reward.__name__ == "kernel_reward"
        prompt = [{"role": "user", "content": "Write ModelNew for softmax_small."}]
        completions = [[{"role": "assistant", "content": f"Here:\n```python\n{FAST}```\n"}],
                       [{"role": "assistant", "content": f"```python\n{WRONG}```"}],
                       [{"role": "assistant", "content": "I cannot help with that."}]]
        rewards = reward([prompt] * 3, completions, task=["softmax_small"] * 3, completion_ids=[[1], [2], [3]])
        assert [r["status"] for r in reward.last] == ["ok", "incorrect", "format_error"]
        assert rewards[1:] == [FAILURE["incorrect"], FAILURE["format_error"]]
        assert isinstance(rewards[0], float) and reward.last[0]["speedup"] > 0
        rows = store.evaluation_rows(run)
        assert [(r["status"], r["strategy"], r["origin"]) for r in rows] == [("ok", "rl", "llm"),
                                                                             ("incorrect", "rl", "llm")]
        assert rows[0]["reward"] == rewards[0]
    with pytest.raises(ValueError, match="no task 'gemm'"):
        KernelReward(evaluator, [task, load_task(DATA / "scale_small.py")])([prompt], ["x"], task=["gemm"])
