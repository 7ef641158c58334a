"""The typer application and what its commands share; commands live in agent/cli/*.py."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console

from agent import settings
from agent.cli import logs
from agent.runspec import RunSpec, SpecError, shown_url
from agent.runtime import ImageOpt, SandboxOpt, UserError, cli_errors, open_store, options
from evaluator.rules import policy
from evaluator.static import defines_modelnew
from tasks.spec import TaskError, read_python

app = typer.Typer(help="kernelwright: LLM-driven kernel optimization with honest, sandboxed evaluation.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
tasks_app = typer.Typer(help="List and check tasks.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")
console = Console()
err_console = Console(stderr=True)

DbOpt = typer.Option(None, "--db", help="Store: SQLite path or SQLAlchemy URL [env KERNELWRIGHT_DB; default kernelwright.db]")
DeviceOpt = typer.Option("cpu", "--device", help="cpu or cuda")
TimeoutOpt = typer.Option(None, "--timeout", help="Seconds per candidate [env KERNELWRIGHT_TIMEOUT; default 120]")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object")
PolicyOpt = typer.Option("strict", "--policy", help="Whose code may compute: strict (only the candidate's kernels), "
                         "kernelbench (PyTorch ops beside at least one custom kernel) or library (vendor libraries too)")

# the search options `optimize` and `batch` share
KernelBenchOpt = typer.Option(None, "--kernelbench", help="A local KernelBench checkout, for --suite kernelbench "
                              "(current or v0 layout) [env KERNELWRIGHT_KERNELBENCH]")
LevelOpt = typer.Option(None, "--level", help="--suite kernelbench: only this level (repeatable)")
TaskIdOpt = typer.Option(None, "--task-id", help="--suite kernelbench: only this problem id (repeatable)")
ScaleOpt = typer.Option(1.0, "--scale", help="--suite kernelbench: shrink the tasks' size constants by this factor "
                        "(0 < F <= 1; recorded with each task)")
SuiteOpt = typer.Option(None, "--suite", help="Built-in suite (default: cpu, when no --task)")
StrategyOpt = typer.Option("evolve", "--strategy", help="best-of-n | evolve | refine")
BudgetOpt = typer.Option(10, "--budget", help="Candidates evaluated per task")
ModelOpt = typer.Option(None, "--model", help="LLM model [env KERNELWRIGHT_MODEL]; none: the tuner")
BaseUrlOpt = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint [env OPENAI_BASE_URL]")
TunerOpt = typer.Option("pattern", "--tuner", help="Knob search: pattern | local | random | exhaustive | evolutionary")
TuneFractionOpt = typer.Option(0.25, "--tune-fraction", help="With an LLM: share of evaluations for tuning")
SeedOpt = typer.Option(0, "--seed", help="Seed of the search's own choices")
TimeLimitOpt = typer.Option(None, "--time-limit", help="Minutes (a batch: for the whole batch), then stop")
MaxCostOpt = typer.Option(None, "--max-cost", help="USD of LLM spend, then stop (a batch shares it evenly by the tasks)")
ConcurrencyOpt = typer.Option(2, "--concurrency", help="LLM requests in flight (a batch: per job)")
ApiKeyEnvOpt = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Variable holding the API key (a batch: on every worker)")
ConfirmOpt = typer.Option(2, "--confirm", help="After each task's budget: up to this many re-measurements of its "
                          "leader, until it has been measured twice (0: off)")


@app.callback()
@cli_errors
def configure(verbose: bool = typer.Option(False, "--verbose", "-v", help="Say what the loop, the evaluator and the "
                                      "sandbox are doing, on stderr [env KERNELWRIGHT_LOG=debug]")) -> None:
    """kernelwright: LLM-driven kernel optimization with honest, sandboxed evaluation."""
    try:
        level = "debug" if verbose else settings.read()["log"]
    except ValueError as e:
        raise UserError(str(e)) from None
    if level != "warning":
        logs.configure(level)


@dataclasses.dataclass(frozen=True)
class SearchFlags:
    """The flags optimize and batch share: which tasks, how to search, where to evaluate."""
    suite: Optional[str]
    strategy: str
    budget: int
    time_limit: Optional[float]
    max_cost: Optional[float]
    concurrency: int
    model: Optional[str]
    base_url: Optional[str]
    api_key_env: str
    tuner: str
    tune_fraction: float
    seed: int
    confirm: int
    device: str
    timeout: Optional[float]
    sandbox: str
    image: Optional[str]
    policy: str
    kernelbench: Optional[str]
    level: Optional[list[int]]
    task_id: Optional[list[int]]
    scale: float

    def spec_fields(self, tasks: list[str] | None) -> dict[str, Any]:
        """RunSpec's fields of these flags (and the --task files). The model and endpoint the
        settings choose are the run's: a resumed run keeps them whatever the settings say then
        (and batch workers, which read no settings, get them)."""
        s = settings.read()
        return {**suite_fields(self.suite, tasks, self.kernelbench, self.level, self.task_id, self.scale, self.policy),
                "strategy": self.strategy, "budget": self.budget, "tuner": self.tuner,
                "tune_fraction": self.tune_fraction, "seed": self.seed, "confirm": self.confirm,
                "model": self.model or s["model"] or None, "base_url": self.base_url or s["base_url"] or None,
                "api_key_env": self.api_key_env, "concurrency": self.concurrency,
                "device": self.device, "sandbox": self.sandbox, "image": self.image, "timeout_s": self.timeout,
                "max_cost_usd": self.max_cost, "time_limit_min": self.time_limit}


_SEARCH_OPTIONS = {  # SearchFlags' options, declared once
    "suite": SuiteOpt, "strategy": StrategyOpt, "budget": BudgetOpt, "time_limit": TimeLimitOpt,
    "max_cost": MaxCostOpt, "concurrency": ConcurrencyOpt, "model": ModelOpt, "base_url": BaseUrlOpt,
    "api_key_env": ApiKeyEnvOpt, "tuner": TunerOpt, "tune_fraction": TuneFractionOpt, "seed": SeedOpt,
    "confirm": ConfirmOpt, "device": DeviceOpt, "timeout": TimeoutOpt, "sandbox": SandboxOpt, "image": ImageOpt,
    "policy": PolicyOpt, "kernelbench": KernelBenchOpt, "level": LevelOpt, "task_id": TaskIdOpt, "scale": ScaleOpt,
}


def search_command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose first parameter is a SearchFlags: typer sees the command's own options
    followed by SearchFlags' (so every command that searches declares them the same way)."""
    hints = typing.get_type_hints(SearchFlags)
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=hints[name])
              for name, option in _SEARCH_OPTIONS.items()]
    own = list(inspect.signature(fn, eval_str=True).parameters.values())[1:]

    @functools.wraps(fn)
    def command(**given: Any) -> Any:
        flags = SearchFlags(**{name: given.pop(name) for name in _SEARCH_OPTIONS})
        return fn(flags, **given)

    command.__signature__ = inspect.Signature([*own, *shared], return_annotation=None)  # type: ignore[attr-defined]
    return command


def suite_fields(suite: str | None, tasks: list[str] | None, kernelbench: str | None, level: list[int] | None,
                 task_id: list[int] | None, scale: float, policy: str) -> dict[str, Any]:
    """The RunSpec fields that say which tasks, under which policy (optimize and batch share them)."""
    root = kernelbench or settings.read()["kernelbench"] or None
    if (level or task_id or scale != 1.0) and suite != "kernelbench":
        raise UserError("--level, --task-id and --scale need --suite kernelbench")
    return {"suite": suite if suite or tasks else "cpu", "tasks": tuple(str(t) for t in tasks or ()),
            "policy": policy, "kernelbench": str(Path(root).expanduser().resolve()) if root else None,
            "levels": tuple(level or ()), "task_ids": tuple(task_id or ()), "scale": scale}


def run_spec(command: str, resume: int | None, db: str | None, fresh: Callable[[], dict[str, Any]]) -> tuple[Any, Any]:
    """(the store, when it had to be opened; the run's RunSpec): run `resume`'s as it was stored
    (the same run, every flag as it was), or a new one of `fresh()`'s fields."""
    if resume is None:
        try:
            return None, RunSpec(command, **fresh())
        except SpecError as e:
            raise UserError(str(e)) from None
    store, config = stored_run(command, resume, db)
    try:
        return store, RunSpec.from_json(command, config)
    except SpecError as e:
        store.close()
        raise UserError(str(e)) from None


def stored_run(command: str, resume: int, db: str | None) -> tuple[Any, dict[str, Any]]:
    """(the store, run `resume`'s stored configuration), or a one-line error (the store closed)
    when the store holds no `command` run of that id."""
    url = options(db, "cpu", None).db
    store = open_store(url)
    run = store.run(resume)
    if run is None or run["command"] != command:
        store.close()
        raise UserError(f"no {command} run {resume} in {shown_url(url)}")
    return store, dict(run["config"] or {})


def begin_run(store: Any, spec: Any, resume: int | None) -> int:
    """The run's id: a new run of `spec`, or run `resume` marked running again."""
    return open_run(store, spec.command, spec.to_json(), spec.device, resume)


def open_run(store: Any, command: str, config: dict[str, Any], device: str, resume: int | None) -> int:
    """A new run of this configuration, or run `resume` marked running again; its id."""
    if resume is None:
        return int(store.start_run(command, config, device))
    store.reopen_run(resume)
    return resume


def check_policy(name: str) -> Any:
    """The named evaluation policy (evaluator/rules.py), before any work."""
    try:
        return policy(name)
    except ValueError as e:
        raise UserError(str(e)) from None


def read_candidate(path: Path) -> str:
    try:
        source, tree = read_python(path, "candidate file")
        compile(tree, str(path), "exec")  # what parsing lets through: a `return` outside a function, say
    except TaskError as e:
        raise UserError(str(e)) from None
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    if not defines_modelnew(source):
        raise UserError(f"{path} defines no class ModelNew")
    return source
