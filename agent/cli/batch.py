"""`kernelwright batch`: the optimization loop for many tasks at once, on a Ray cluster."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.live import Live
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
from agent.runspec import resume_hint, shown_url
from agent.runtime import ImageOpt, SandboxOpt, UserError, cli_errors, machine_ceilings, open_store, options


@app.command("batch")
@cli_errors
def batch_cmd(
    suite: Optional[str] = SuiteOpt,
    task: Optional[list[str]] = typer.Option(None, "--task", help="Task file (repeatable; workers must see it)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: auto | ray://HOST:PORT; none: a local one"),
    workers: int = typer.Option(2, "--workers", help="Without --address: CPUs of the local Ray instance"),
    cpus_per_job: float = typer.Option(1.0, "--cpus-per-job", help="CPUs each job holds (its evaluations' threads)"),
    gpus_per_eval: float = typer.Option(1.0, "--gpus-per-eval", help="With --device cuda: GPUs each job's evaluations hold"),
    max_retries: int = typer.Option(3, "--max-retries", help="Times a job is rerun after its worker dies"),
    strategy: str = StrategyOpt,
    budget: int = BudgetOpt,
    time_limit: Optional[float] = typer.Option(None, "--time-limit", help="Minutes for the whole batch, then stop"),
    max_cost: Optional[float] = typer.Option(None, "--max-cost", help="USD of LLM spend, shared evenly by the tasks"),
    concurrency: int = typer.Option(2, "--concurrency", help="LLM requests in flight per job"),
    model: Optional[str] = ModelOpt,
    base_url: Optional[str] = BaseUrlOpt,
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Variable holding the API key, on every worker"),
    tuner: str = TunerOpt,
    tune_fraction: float = TuneFractionOpt,
    seed: int = SeedOpt,
    confirm: int = ConfirmOpt,
    resume: Optional[int] = typer.Option(None, "--resume", help="Continue this batch run as it was started; "
                                         "its stored flags stand, others given here are ignored"),
    device: str = DeviceOpt, timeout: Optional[float] = TimeoutOpt, db: Optional[str] = DbOpt, as_json: bool = JsonOpt,
    sandbox: str = SandboxOpt, image: Optional[str] = ImageOpt, policy: str = PolicyOpt,
    kernelbench: Optional[str] = KernelBenchOpt, level: Optional[list[int]] = LevelOpt,
    task_id: Optional[list[int]] = TaskIdOpt, scale: float = ScaleOpt,
) -> None:
    """Optimize many tasks at once on a Ray cluster (a local one by default), into one shared store."""
    from agent import settings
    from agent.loop import batch
    from agent.runspec import RunSpec, SpecError

    store = None  # opened after the options are checked: bad input leaves no store behind
    try:
        if resume is not None:
            found_db = _options(db, "cpu", None, 1.0, "process", None).db
            store = open_store(found_db)
            run = store.run(resume)
            if run is None or run["command"] != "batch":
                raise UserError(f"no batch run {resume} in {shown_url(found_db)}")
            spec = RunSpec.from_json("batch", run["config"])  # the same run: every flag as it was
        else:
            s = settings.read()
            spec = RunSpec("batch", **suite_fields(suite, task, kernelbench, level, task_id, scale, policy),
                           strategy=strategy, budget=budget, tuner=tuner, tune_fraction=tune_fraction, seed=seed,
                           confirm=confirm, model=model or s["model"] or None, base_url=base_url or s["base_url"] or None,
                           api_key_env=api_key_env, concurrency=concurrency, device=device, sandbox=sandbox,
                           image=image, timeout_s=timeout, max_cost_usd=max_cost, time_limit_min=time_limit,
                           address=address, workers=workers, cpus_per_job=cpus_per_job, gpus_per_eval=gpus_per_eval,
                           max_retries=max_retries)
    except SpecError as e:
        raise UserError(str(e)) from None
    opts = _options(db, spec.device, spec.timeout_s, spec.cpus_per_job, spec.sandbox, spec.image)
    check_search(spec.strategy, spec.tuner)
    tasks = spec.resolve_tasks(opts.cache_dir)
    if resume is None:  # docker: the image the options resolved is the run's
        spec = dataclasses.replace(spec, image=opts.image, tasks=tuple(str(t.path) for t in tasks) if spec.tasks else ())
    if spec.model and not spec.address:  # local workers inherit this environment: a missing key fails here, not in every job
        from agent.loop.llm import keyed_config

        keyed_config(spec.model, spec.base_url, os.environ.get(spec.api_key_env, ""), spec.api_key_env, spec.concurrency)
    llm = batch.LLMSpec(spec.model, spec.base_url, spec.api_key_env, spec.concurrency) if spec.model else None
    store = store or open_store(opts.db)
    # measured here, once and before Ray starts: jobs measuring at once would each see a busy machine
    machine_ceilings(opts, store)
    say = err_console.print if as_json else console.print
    try:
        resources = batch.connect(spec.address, spec.workers, worker_logs=not as_json)
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds for an unreachable or refused cluster
        raise UserError(f"cannot start or reach Ray{f' at {spec.address}' if spec.address else ''}: "
                        f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    try:
        if resume is None:
            run_id = store.start_run("batch", spec.to_json(), spec.device)
        else:
            run_id = resume
            store.reopen_run(run_id)
        jobs = batch.plan(store, tasks, spec.strategy)
        cfg = batch.BatchConfig(
            run_id=run_id, options=opts, optimize=spec.optimize_config(), llm=llm,
            deadline=time.time() + spec.time_limit_min * 60 if spec.time_limit_min else None,
            max_cost_per_job=spec.max_cost_usd / len(jobs) if spec.max_cost_usd is not None else None,
            cpus_per_job=spec.cpus_per_job, gpus_per_eval=spec.gpus_per_eval, max_retries=spec.max_retries,
            policy=spec.policy)
        say = err_console.print if as_json else console.print
        say(f"Batch run {run_id}: {len(jobs)} jobs on Ray ({_resources(resources)}); "
            + (f"LLM {spec.model}, strategy {spec.strategy}" if llm else f"no LLM: tuning seed kernels ({spec.tuner})"))
        try:
            if as_json:
                summary = batch.run_batch(store, cfg, jobs)
            else:
                with Live(console=err_console, refresh_per_second=2, transient=True) as live:
                    summary = batch.run_batch(store, cfg, jobs,
                                              on_progress=lambda b: live.update(_progress_table(b, spec.budget)))
        except KeyboardInterrupt:
            err_console.print(f"Interrupted. Resume with: {resume_hint('batch', run_id, db)}")
            raise typer.Exit(130) from None
    finally:
        batch.shutdown()
    failed = [t for t in summary["tasks"] if t["note"].startswith("failed:")]
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        from agent.cli.display import summary_table

        console.print(summary_table(summary))
    if failed:
        raise typer.Exit(1)


def _options(db: str | None, device: str, timeout: float | None, cpus_per_job: float, sandbox: str,
             image: str | None) -> Any:
    """The optimize options, for workers: the GPU is checked where jobs run, not here; a SQLite
    path is made absolute (workers start elsewhere); threads follow the job's CPUs unless set.
    A docker image is looked up here, on the driver's engine: every node needs the same tag."""
    from agent import settings

    if device not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r} (use cpu or cuda)")
    opts = options(db, "cpu", timeout, sandbox, image)
    store_db = opts.db if "://" in opts.db else str(Path(opts.db).expanduser().resolve())
    threads = opts.threads if settings.read()["threads"] else max(1, int(cpus_per_job))
    # no timing cores apart: jobs on one node would all time on the same cores at once
    return dataclasses.replace(opts, db=store_db, device=device, threads=threads, timing_cpus=())


def _resources(r: dict[str, float]) -> str:
    gpus = r.get("GPU", 0)
    return f"{r.get('CPU', 0):g} CPUs" + (f", {gpus:g} GPUs" if gpus else "")


def _progress_table(b: Any, budget: int) -> Table:
    rows = b.progress()
    evaluated = sum(r["evaluated"] for r in rows)
    minutes = max(1e-9, (time.monotonic() - b.started) / 60)
    t = Table(title=f"batch run {b.cfg.run_id}",
              caption=f"{minutes * 60:.0f} s   {evaluated} evaluations   {evaluated / minutes:.1f}/min")
    for col in ("task", "strategy", "evaluated", "correct", "best speedup", "job"):
        t.add_column(col, justify="left" if col in ("task", "strategy", "job") else "right")
    for r in rows:
        best = r["best_speedup"]
        t.add_row(r["task"], r["strategy"], f"{r['evaluated']}/{budget}", str(r["counts"].get("ok", 0)),
                  f"{best:.2f}x" if best is not None else "-", r["state"])
    return t
