"""kernelwright as the environment of an RL run: a reward function for TRL's GRPOTrainer.

    reward = KernelReward(evaluator, [task])
    GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=load_dataset("json", data_files="grpo.jsonl"))

TRL calls it with the batch's prompts and completions (strings, or assistant messages for
conversational data) and every other dataset column as a keyword list; the `task` column names
each row's task. Each completion is parsed like an LLM answer in the optimization loop,
evaluated by the sandbox and evaluator, and scored with agent/loop/reward.py; an answer with no
usable code scores the format-failure value. A speedup above the sanity bound stays capped
(the loop confirms such a result with a second measurement; a trainer step does not wait).
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

from agent.loop.judge import Record, judge
from agent.loop.parse import extract
from agent.loop.reward import FAILURE, RewardConfig
from tasks.spec import Task


class KernelReward:
    def __init__(self, evaluator: Any, tasks: Iterable[Task], cfg: RewardConfig = RewardConfig(), *,
                 store: Any = None, run_id: int | None = None, name: str = "kernel_reward"):
        """`store` (with `run_id`): keep every evaluation, as `optimize` does, origin llm, strategy rl."""
        self.evaluator, self.cfg, self.store, self.run_id = evaluator, cfg, store, run_id
        self.tasks = {t.name: t for t in tasks}
        self.__name__ = name  # TRL names each reward function's logged column after it
        self.last: list[dict[str, Any]] = []  # per completion of the last call: status, reason, speedup

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], task: Any = None,
                 **kwargs: Any) -> list[float]:
        names = list(task) if isinstance(task, (list, tuple)) else [task] * len(completions)
        if len(names) != len(completions):
            raise ValueError(f"{len(completions)} completions but {len(names)} task names")
        self.last = []
        return [self._score(_text(c), self._task(n)) for c, n in zip(completions, names)]

    def _task(self, name: str | None) -> Task:
        if name is None and len(self.tasks) == 1:
            return next(iter(self.tasks.values()))
        if name not in self.tasks:
            raise ValueError(f"no task {name!r} (known: {', '.join(sorted(self.tasks))}); "
                             "give the dataset a task column")
        return self.tasks[name]

    def _score(self, text: str, task: Task) -> float:
        got = extract(text)
        if got.source is None:
            self.last.append({"status": "format_error", "reason": got.reason, "speedup": None})
            return FAILURE["format_error"]
        record = None
        if self.store is not None:
            task_id = self.store.upsert_task(task.name, task.meta.suite, task.source, str(task.path))
            record = Record(task_id, "llm", self.run_id, strategy="rl")
        done = judge(self.evaluator, task, got.source, self.cfg, self.store, record, confirm_outliers=False)
        out = done.out
        self.last.append({"status": out["status"], "reason": out["reason"], "speedup": out["speedup"]})
        return done.reward.value


def _text(completion: Any) -> str:
    """A standard completion is a string; a conversational one is a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    return "".join(str(m.get("content") or "") for m in completion if m.get("role") == "assistant")
