"""One candidate judged: evaluated, rewarded, recorded, in one place. `kernelwright eval`, the
optimization loop (proposals and re-measurements) and the RL reward function all go through
`judge`, so a verdict becomes a reward and a stored evaluation the same way everywhere."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from agent.loop.reward import Reward, RewardConfig, reward
from evaluator.verdict import EvaluationRecord
from tasks.spec import Task

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Record:
    """Where and as what an evaluation is stored."""
    task_id: int
    origin: str  # user | llm | tuner | seed | ...
    run_id: int | None = None
    strategy: str | None = None
    parent_id: str | None = None
    knobs: Mapping[str, Any] | None = None
    llm_call: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Judged:
    task: Task
    source: str
    out: EvaluationRecord  # what the store keeps
    reward: Reward
    reward_note: str
    candidate_id: str | None = None  # set once recorded
    evaluation_id: int | None = None

    def save(self, store: Any, record: Record) -> Judged:
        """Store the evaluation and its reward; the same, with its ids."""
        cid, eid = store.record(record.task_id, self.source, self.out, origin=record.origin, run_id=record.run_id,
                                parent_id=record.parent_id, knobs=record.knobs, reward=self.reward.value,
                                reward_note=self.reward_note or None, strategy=record.strategy,
                                llm_call=record.llm_call)
        _log.debug("%s: recorded candidate %s (evaluation %s), reward %.3f%s", self.task.name, cid, eid,
                    self.reward.value, f" ({self.reward_note})" if self.reward_note else "")
        return dataclasses.replace(self, candidate_id=cid, evaluation_id=eid)


def judge(evaluator: Any, task: Task, source: str, reward_cfg: RewardConfig, store: Any = None,
          record: Record | None = None, *, slow_ms: float | None = None, confirm_outliers: bool = True) -> Judged:
    """Evaluate `source` on `task`, reward the verdict, store both (when given a store and record).

    A speedup above the reward's sanity bound counts only once a second, independent
    measurement agrees (`confirm_outliers`); until then the reward is capped."""
    v = evaluator.evaluate(task, source, slow_ms=slow_ms)
    out = v.record()
    flops, nbytes = task.meta.flops, task.meta.bytes
    r = reward(out, reward_cfg, flops=flops, nbytes=nbytes)
    note = r.note
    if r.needs_confirmation and confirm_outliers:
        again = evaluator.evaluate(task, source)
        if again.status.value == "ok" and again.speedup and again.speedup > 0.8 * (v.speedup or 0):
            r = reward(out, reward_cfg, confirmed=True, flops=flops, nbytes=nbytes)
            note = f"confirmed by a second measurement ({again.speedup:.2f}x)"
        else:
            note += f"; not confirmed (second measurement: {again.status.value}, {again.speedup or 0:.2f}x)"
    done = Judged(task, source, out, r, note)
    return done.save(store, record) if store is not None and record is not None else done
