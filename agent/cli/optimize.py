"""`kernelwright optimize` and `kernelwright runs`: the main job, and the runs it left."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import typer
from rich.table import Table

from agent import settings
from agent.cli import typer_app as o  # the options optimize and batch share
from agent.cli.display import LiveProgress, summary_table
from agent.cli.typer_app import (
    SearchFlags,
    app,
    begin_run,
    check_search,
    console,
    err_console,
    run_spec,
    search_command,
)
from agent.runtime import cli_errors, evaluator, open_store, options, run_guard


def _llm_config(model: str | None, base_url: str | None, api_key_env: str, concurrency: int) -> Any:
    """None when no LLM is configured (the tuner runs instead)."""
    from agent.loop.llm import keyed_config

    s = settings.read()
    model = model or s["model"]
    if not model:
        return None
    return keyed_config(model, base_url or s["base_url"] or None, os.environ.get(api_key_env, ""), api_key_env,
                        concurrency)


@app.command("optimize")
@cli_errors
@search_command
def optimize_cmd(
    flags: SearchFlags,
    task: Optional[list[str]] = typer.Option(None, "--task", help="Task file (repeatable)"),
    resume: Optional[int] = typer.Option(None, "--resume", help="Continue this run as it was started (after a kill "
                                         "or Ctrl-C); its stored flags stand, others given here are ignored"),
    db: Optional[str] = o.DbOpt, as_json: bool = o.JsonOpt,
) -> None:
    """Optimize kernels for a task set: ask, evaluate, learn, repeat; every result is stored."""
    from agent.loop.optimize import Optimizer

    # the store is opened after the options are checked: bad input leaves no store behind
    store, spec = run_spec("optimize", resume, db, lambda: flags.spec_fields(task))
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
    run_id = begin_run(store, spec, resume)
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
def runs_cmd(limit: int = typer.Option(20, "--limit"), db: Optional[str] = o.DbOpt, as_json: bool = o.JsonOpt) -> None:
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
