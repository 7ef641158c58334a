"""`kernelwright optimize` and `kernelwright runs`: the main job, and the runs it left."""
from __future__ import annotations

import json
import os
from typing import Optional

import typer
from rich.table import Table

from agent.cli import typer_app as o  # the options optimize and batch share
from agent.cli.display import LiveProgress, summary_table
from agent.cli.typer_app import (
    SearchFlags,
    app,
    begin_run,
    console,
    err_console,
    run_spec,
    search_command,
)
from agent.runtime import cli_errors, evaluator, open_store, options, run_guard


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
    tasks = spec.resolve_tasks(opts.cache_dir)
    llm_spec = spec.llm()
    llm_cfg = llm_spec.config(os.environ) if llm_spec else None  # a missing key fails here
    spec = spec.pinned(tasks) if resume is None else spec
    store = store or open_store(opts.db)
    run_id = begin_run(store, spec, resume)
    with run_guard(store, run_id, "optimize", db):
        say = err_console.print if as_json else console.print
        if llm_cfg is None:
            say(f"No LLM configured (--model): tuning the seed kernels' knobs with the {spec.tuner} search.")
        else:
            from agent.loop.llm import LLMClient, describe_endpoint

            say(f"LLM: {describe_endpoint(llm_cfg)}; strategy {spec.strategy}; policy {spec.policy}; run {run_id}")
        llm = LLMClient(llm_cfg) if llm_cfg is not None else None
        with evaluator(opts, store, policy=spec.eval_policy()) as ev:
            live = None if as_json else LiveProgress(err_console)
            opt = Optimizer(store, ev, tasks, spec.optimize_config(), run_id, llm=llm,
                            on_update=live.update if live else None)
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
