"""`kernelwright optimize` and `kernelwright runs`: the main job, and the runs it left."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import typer
from rich.table import Table

from agent.cli.typer_app import (
    BaseUrlOpt,
    BudgetOpt,
    ConfirmOpt,
    DbOpt,
    DeviceOpt,
    JsonOpt,
    KernelBenchOpt,
    LevelOpt,
    ModelOpt,
    PolicyOpt,
    ScaleOpt,
    SeedOpt,
    StrategyOpt,
    SuiteOpt,
    TaskIdOpt,
    TimeoutOpt,
    TuneFractionOpt,
    TunerOpt,
    app,
    check_search,
    console,
    err_console,
    suite_fields,
)
from agent.runtime import ImageOpt, SandboxOpt, UserError, cli_errors, evaluator, open_store, options, run_guard


def _llm_config(model: str | None, base_url: str | None, api_key_env: str, concurrency: int) -> Any:
    """None when no LLM is configured (the tuner runs instead)."""
    from agent import settings
    from agent.loop.llm import keyed_config

    s = settings.read()
    model = model or s["model"]
    if not model:
        return None
    return keyed_config(model, base_url or s["base_url"] or None, os.environ.get(api_key_env, ""), api_key_env,
                        concurrency)


@app.command("optimize")
@cli_errors
def optimize_cmd(
    suite: Optional[str] = SuiteOpt,
    task: Optional[list[str]] = typer.Option(None, "--task", help="Task file (repeatable)"),
    strategy: str = StrategyOpt,
    budget: int = BudgetOpt,
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Minutes, then stop"),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="USD of LLM spend, then stop"),
    concurrency: int = typer.Option(2, "--concurrency", help="LLM requests in flight"),
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Variable holding the API key"),
    tuner: str = TunerOpt,
    tune_fraction: float = TuneFractionOpt,
    seed: int = SeedOpt,
    confirm: int = ConfirmOpt,
    resume: Optional[int] = typer.Option(None, "--resume", help="Continue this run as it was started (after a kill "
                                         "or Ctrl-C); its stored flags stand, others given here are ignored"),
    device: str = DeviceOpt, timeout: Optional[float] = TimeoutOpt, db: Optional[str] = DbOpt, as_json: bool = JsonOpt,
    sandbox: str = SandboxOpt, image: Optional[str] = ImageOpt, policy: str = PolicyOpt,
    kernelbench: Optional[str] = KernelBenchOpt, level: Optional[list[int]] = LevelOpt,
    task_id: Optional[list[int]] = TaskIdOpt, scale: float = ScaleOpt,
) -> None:
    """Optimize kernels for a task set: ask, evaluate, learn, repeat; every result is stored."""
    from agent.loop.optimize import Optimizer
    from agent.runspec import RunSpec, SpecError, shown_url

    store = None  # opened after the options are checked: bad input leaves no store behind
    try:
        if resume is not None:
            store = open_store(options(db, "cpu", None).db)
            run = store.run(resume)
            if run is None or run["command"] != "optimize":
                raise UserError(f"no optimize run {resume} in {shown_url(options(db, 'cpu', None).db)}")
            spec = RunSpec.from_json("optimize", run["config"])  # the same run: every flag as it was
        else:
            spec = RunSpec("optimize", **suite_fields(suite, task, kernelbench, level, task_id, scale, policy),
                           strategy=strategy, budget=budget, tuner=tuner, tune_fraction=tune_fraction, seed=seed,
                           confirm=confirm, model=model, base_url=base_url, api_key_env=api_key_env,
                           concurrency=concurrency, device=device, sandbox=sandbox, image=image, timeout_s=timeout,
                           max_cost_usd=max_cost, time_limit_min=time_limit)
    except SpecError as e:
        raise UserError(str(e)) from None
    opts = options(db, spec.device, spec.timeout_s, spec.sandbox, spec.image)
    check_search(spec.strategy, spec.tuner)
    tasks = spec.resolve_tasks(opts.cache_dir)
    llm_cfg = _llm_config(spec.model, spec.base_url, spec.api_key_env, spec.concurrency)
    if resume is None:  # the model and endpoint the settings chose are part of the run
        spec = dataclasses.replace(spec, model=llm_cfg.model if llm_cfg else None,
                                   base_url=llm_cfg.base_url if llm_cfg else None,
                                   tasks=tuple(str(t.path) for t in tasks) if spec.tasks else ())
    store = store or open_store(opts.db)
    cfg = spec.optimize_config()
    if resume is None:
        run_id = store.start_run("optimize", spec.to_json(), spec.device)
    else:
        run_id = resume
        store.reopen_run(run_id)
    say = err_console.print if as_json else console.print
    if llm_cfg is None:
        say(f"No LLM configured (--model): tuning the seed kernels' knobs with the {spec.tuner} search.")
    else:
        from agent.loop.llm import describe_endpoint

        say(f"LLM: {describe_endpoint(llm_cfg)}; strategy {spec.strategy}; policy {spec.policy}; run {run_id}")
    llm = None
    if llm_cfg is not None:
        from agent.loop.llm import LLMClient

        llm = LLMClient(llm_cfg)
    from agent.cli.display import LiveProgress, summary_table

    with run_guard(store, run_id, "optimize", db):
        with evaluator(opts, policy=spec.eval_policy()) as ev:
            live = None if as_json else LiveProgress(err_console)
            opt = Optimizer(store, ev, tasks, cfg, run_id, llm=llm, on_update=live.update if live else None)
            if live:
                with live:
                    summary = opt.run()
            else:
                summary = opt.run()
    store.finish_run(run_id, "finished")
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        console.print(summary_table(summary))


@app.command("runs")
@cli_errors
def runs_cmd(limit: int = typer.Option(20, "--limit"), db: Optional[str] = DbOpt, as_json: bool = JsonOpt) -> None:
    """List runs, newest first."""
    opts = options(db, "cpu", None)
    runs = open_store(opts.db).runs(limit)
    if as_json:
        typer.echo(json.dumps({"runs": runs}))
        return
    table = Table("run", "command", "status", "started", "evaluations", "strategy", "model")
    for r in runs:
        c = r["config"] or {}
        table.add_row(str(r["id"]), r["command"], r["status"], (r["created_at"] or "")[:19], str(r["evaluations"]),
                      str(c.get("strategy", "-")), str(c.get("model") or "-"))
    console.print(table)
