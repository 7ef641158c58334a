"""One run's specification: what `optimize` and `batch` build from their flags, store with the run,
and read back on `--resume`, so that a resumed run is the same run (sandbox, image, budgets,
model and all). Old runs' records (written before a field existed) read back with its default.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.loop.strategies import STRATEGIES
from agent.loop.tuner import STRATEGIES as TUNERS
from evaluator.rules import POLICIES, policy
from tasks.kernelbench import KernelBenchSelection
from tasks.registry import resolve

if TYPE_CHECKING:
    from agent.loop.llm import LLMSpec

COMMANDS = ("optimize", "batch")


class SpecError(ValueError):
    """A run specification that cannot run (one line, for the user)."""


@dataclasses.dataclass(frozen=True)
class RunSpec:
    command: str  # optimize | batch
    suite: str = "cpu"
    tasks: tuple[str, ...] = ()  # task files; empty: the whole suite
    policy: str = "strict"  # whose code may compute (evaluator/rules.py POLICIES)
    # --suite kernelbench: the checkout, the levels and problem ids chosen (empty: all), the size scaling
    kernelbench: str | None = None
    levels: tuple[int, ...] = ()
    task_ids: tuple[int, ...] = ()
    scale: float = 1.0
    strategy: str = "evolve"
    budget: int = 10  # candidates evaluated per task
    tuner: str = "pattern"
    tune_fraction: float = 0.25
    seed: int = 0
    confirm: int = 2
    model: str | None = None  # None: no LLM, the tuner runs
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"  # the variable's name; the key itself is never stored
    concurrency: int = 2  # LLM requests in flight (per job in a batch)
    device: str = "cpu"
    sandbox: str = "process"
    image: str | None = None  # docker image; None: the default tag
    timeout_s: float | None = None  # per evaluation; None: the setting
    max_cost_usd: float | None = None  # optimize: the run's; batch: shared evenly by its jobs
    time_limit_min: float | None = None  # counted from each start (a resumed run gets it again)
    # batch only
    address: str | None = None  # Ray cluster; None: a local one
    workers: int = 2
    cpus_per_job: float = 1.0
    gpus_per_eval: float = 1.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise SpecError(f"unknown run command {self.command!r}")
        if self.budget < 1 or self.concurrency < 1 or self.confirm < 0 or not 0.0 <= self.tune_fraction <= 1.0:
            raise SpecError("--budget and --concurrency must be at least 1, --confirm at least 0, "
                            "--tune-fraction within 0..1")
        if self.command == "batch" and (self.workers < 1 or self.max_retries < 0 or self.cpus_per_job <= 0
                                        or self.gpus_per_eval < 0):
            raise SpecError("--workers must be at least 1, --max-retries at least 0, --cpus-per-job positive "
                            "and --gpus-per-eval not negative")
        if self.strategy not in STRATEGIES:
            raise SpecError(f"unknown strategy {self.strategy!r} (known: {', '.join(STRATEGIES)})")
        if self.tuner not in TUNERS:
            raise SpecError(f"unknown tuner {self.tuner!r} (known: {', '.join(TUNERS)})")
        if self.policy not in POLICIES:
            raise SpecError(f"unknown policy {self.policy!r} (use {', '.join(POLICIES)})")
        if not 0.0 < self.scale <= 1.0:
            raise SpecError("--scale must be within 0 (exclusive) and 1")
        if self.suite == "kernelbench" and not self.kernelbench:
            raise SpecError("--suite kernelbench needs --kernelbench DIR (a local KernelBench checkout)")
        if self.max_cost_usd is not None and self.max_cost_usd < 0:
            raise SpecError("--max-cost must not be negative")
        if self.time_limit_min is not None and self.time_limit_min <= 0:
            raise SpecError("--time-limit must be positive")

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(tasks=list(self.tasks), levels=list(self.levels), task_ids=list(self.task_ids))
        return out

    @classmethod
    def from_json(cls, command: str, d: Mapping[str, Any]) -> RunSpec:
        """A stored run's spec; keys of older records map to today's names."""
        renamed = {"max_cost": "max_cost_usd"}
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {renamed.get(k, k): v for k, v in d.items() if renamed.get(k, k) in names}
        kw["command"] = command
        for key in ("tasks", "levels", "task_ids"):
            kw[key] = tuple(kw.get(key) or ())
        return cls(**kw)

    def resolve_tasks(self, cache_dir: Any) -> list[Any]:
        """The run's tasks: a built-in suite, KernelBench (scaled tasks are written under cache_dir), files."""
        if self.suite != "kernelbench":
            return resolve(self.suite, list(self.tasks) or None)

        selection = KernelBenchSelection(Path(str(self.kernelbench)).expanduser().resolve(), self.levels,
                                         self.task_ids, self.scale)
        return resolve(self.suite, list(self.tasks) or None, kernelbench=selection, cache_dir=Path(cache_dir))

    def pinned(self, tasks: list[Any]) -> RunSpec:
        """This spec with its task files as they resolved (absolute paths): a resumed run, started
        from anywhere, finds the same files."""
        return dataclasses.replace(self, tasks=tuple(str(t.path) for t in tasks)) if self.tasks else self

    def llm(self) -> LLMSpec | None:
        """The run's LLM, None when the tuner runs instead."""
        if not self.model:
            return None
        from agent.loop.llm import LLMSpec  # openai with it: only runs that ask a model pay the import

        return LLMSpec(self.model, self.base_url, self.api_key_env, self.concurrency)

    def eval_policy(self) -> Any:
        return policy(self.policy)

    def optimize_config(self) -> Any:
        from agent.loop.optimize import OptimizeConfig

        per_job = self.command == "batch"  # a batch shares its cost and time limits out itself
        return OptimizeConfig(strategy=self.strategy, budget=self.budget, concurrency=self.concurrency,
                              tuner=self.tuner, tune_fraction=self.tune_fraction, seed=self.seed, confirm=self.confirm,
                              time_limit_s=None if per_job or self.time_limit_min is None else self.time_limit_min * 60,
                              max_cost_usd=None if per_job else self.max_cost_usd)


def shown_url(url: str) -> str:
    """A database URL to show or log, its password masked (the user has it; logs need not)."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy parses: show no part of it that could hold a secret
        return url.split("://", 1)[0] + "://…"


def resume_hint(command: str, run_id: int, db: str | None) -> str:
    """What to type to continue: everything else comes back from the stored spec."""
    return f"kernelwright {command} --resume {run_id}" + (f" --db {shown_url(db)}" if db else "")
