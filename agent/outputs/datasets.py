"""Training data from the store, in the conversational record layouts the TRL library reads.

Every evaluated candidate answered some prompt: the stored prompt of the LLM call that produced
it, or (for seeds, tuner and user kernels) the initial prompt kernelwright would send for its
task on the machine that measured it. Candidates and format failures are grouped by (task,
prompt); each group gives
- sft:  {"prompt", "completion"}: the group's fastest correct kernel (one record per group);
- dpo:  {"prompt", "chosen", "rejected"}: a correct kernel over a slower correct one, or over
        an incorrect or failed one or an answer with no usable code;
- grpo: {"prompt", "completions", "rewards"}: every answer of the group with its stored reward
        (groups of at least two).
Prompts are chat messages; completions are one assistant message each. SFT and DPO completions
are the kernel file in a ```python block; GRPO completions are what the model answered (so a
reward function scores them as they were scored), or the fenced file where no model wrote it.
Extra columns (task, candidate ids, speedups) ride along; TRL passes them to reward functions.
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from agent.loop import prompts
from agent.loop.propose import target_facts
from agent.loop.reward import FAILURE, reward
from store import ranking


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    min_speedup: float | None = None  # sft completions and dpo chosen kernels at least this fast
    max_pairs_per_prompt: int = 16  # dpo


@dataclasses.dataclass(frozen=True)
class Answer:
    """One answer to one prompt: a candidate kernel, or an LLM reply with no usable code."""

    task: str
    source: str | None  # the candidate file; None for a format failure
    response: str | None  # what the model wrote; None where no model wrote it
    candidate_id: str | None
    status: str  # a verdict status, or "format_error"
    speedup: float | None
    reward: float
    fingerprint_id: str | None
    policy: str = "strict"  # the evaluation policy its verdict and reward were given under

    @property
    def correct(self) -> bool:
        return self.status == "ok" and self.speedup is not None

    def kernel_text(self) -> str:
        return fenced(self.source) if self.source is not None else (self.response or "")

    def answer_text(self) -> str:
        return self.response if self.response is not None else self.kernel_text()


def fenced(source: str) -> str:
    """The file in a ```python block, fenced longer than any backtick run inside it."""
    longest = max((len(m) for m in re.findall(r"`{3,}", source)), default=2)
    fence = "`" * max(3, longest + 1)
    return f"{fence}python\n{source.rstrip()}\n{fence}"


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def groups(store: Any) -> list[tuple[list[dict[str, str]], list[Answer]]]:
    """(prompt messages, answers) per task and prompt, in the store's order."""
    by_key: dict[str, tuple[list[dict[str, str]], list[Answer]]] = {}

    def add(task_id: int, messages: list[dict[str, str]], answer: Answer) -> None:
        key = json.dumps([task_id, messages], sort_keys=True)
        by_key.setdefault(key, (messages, []))[1].append(answer)

    producing: dict[str, list[dict[str, Any]]] = {}
    names = {t["id"]: t for t in store.tasks()}
    for call in store.llm_calls():
        if call["status"] == "ok" and call["candidate_id"]:
            producing.setdefault(call["candidate_id"], []).append(call)
        elif call["status"] == "format_error" and call["task_id"] in names:
            add(call["task_id"], call["messages"], Answer(names[call["task_id"]]["name"], None, call["response"], None,
                                                          "format_error", None, FAILURE["format_error"], None))
    # a candidate's speedup is the median of its measurements, as the leaderboard ranks it
    speed = {cid: st.speedup for cid, st in ranking.standings(store.evaluation_rows()).items()}
    for task in names.values():
        history = store.task_history(task["id"])
        measured = (h["evaluation"]["fingerprint"] for h in history if h["evaluation"]["fingerprint"].get("device"))
        home: dict[str, Any] = next(measured, {})  # for verdicts given before any device was touched (static rejections)
        initial: dict[tuple[str | None, str], list[dict[str, str]]] = {}
        for h in history:
            e = h["evaluation"]
            value = e["reward"] if e["reward"] is not None else reward(e).value
            calls: list[Any] = producing.get(h["id"], [])
            for call in calls or [None]:
                answer = Answer(task["name"], h["source"], call["response"] if call else None, h["id"], e["status"],
                                speed.get(h["id"], e["speedup"]), value, e["fingerprint_id"], e.get("policy", "strict"))
                if call is not None:
                    add(task["id"], call["messages"], answer)
                    continue
                fp = e["fingerprint"] if e["fingerprint"].get("device") else home
                key = (fp.get("id"), answer.policy)  # the prompt states the policy's rules
                if key not in initial:
                    initial[key] = prompts.initial(task["source"], target_facts(fp, answer.policy), task["name"])
                add(task["id"], initial[key], answer)
    return list(by_key.values())


def _fast_enough(a: Answer, cfg: DatasetConfig) -> bool:
    return a.correct and (cfg.min_speedup is None or (a.speedup or 0.0) >= cfg.min_speedup)


def sft(store: Any, cfg: DatasetConfig = DatasetConfig()) -> list[dict[str, Any]]:
    out = []
    for messages, answers in groups(store):
        best = max((a for a in answers if _fast_enough(a, cfg)), key=lambda a: a.speedup or 0.0, default=None)
        if best is not None:
            out.append({"prompt": messages, "completion": _assistant(best.kernel_text()), "task": best.task,
                        "candidate_id": best.candidate_id, "speedup": best.speedup,
                        "fingerprint_id": best.fingerprint_id, "policy": best.policy})
    return out


def _better(a: Answer, b: Answer) -> bool:
    """a is preferred over b: correct, and b is not (or is, with a lower, noise-rounded reward)."""
    return a.correct and (not b.correct or a.reward > b.reward)


def dpo(store: Any, cfg: DatasetConfig = DatasetConfig()) -> list[dict[str, Any]]:
    out = []
    for messages, answers in groups(store):
        ranked = sorted(answers, key=lambda a: (a.correct, a.reward, a.speedup or 0.0), reverse=True)
        pairs = [(a, b) for a in ranked if _fast_enough(a, cfg) for b in ranked if _better(a, b)]
        for a, b in pairs[:cfg.max_pairs_per_prompt]:
            out.append({"prompt": messages, "chosen": _assistant(a.kernel_text()),
                        "rejected": _assistant(b.kernel_text()), "task": a.task, "chosen_id": a.candidate_id,
                        "rejected_id": b.candidate_id, "chosen_speedup": a.speedup, "rejected_speedup": b.speedup,
                        "rejected_status": b.status, "policy": a.policy})
    return out


def grpo(store: Any, cfg: DatasetConfig = DatasetConfig()) -> list[dict[str, Any]]:
    return [{"prompt": messages, "completions": [_assistant(a.answer_text()) for a in answers],
             "rewards": [a.reward for a in answers], "task": answers[0].task,
             "candidate_ids": [a.candidate_id for a in answers], "statuses": [a.status for a in answers],
             "policies": [a.policy for a in answers]}
            for messages, answers in groups(store) if len(answers) >= 2]


FORMATS: dict[str, Callable[[Any, DatasetConfig], list[dict[str, Any]]]] = {"sft": sft, "dpo": dpo, "grpo": grpo}


def write_jsonl(records: Iterable[dict[str, Any]], path: Path) -> int:
    """One JSON object per line; returns how many."""
    n = 0
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n
