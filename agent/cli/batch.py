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

from agent import settings
from agent.cli import typer_app as o  # the application and the options every command shares
from agent.cli.display import batch_progress_table, summary_table
from agent.runtime import UserError, check_device, cli_errors, machine_ceilings, open_store, options, run_guard


@o.app.command("batch")
@cli_errors
@o.search_command
def batch_cmd(
    flags: o.SearchFlags,
    task: Optional[list[str]] = typer.Option(None, "--task", help="Task file (repeatable; workers must see it)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster: auto | ray://HOST:PORT; none: a local one"),
    workers: int = typer.Option(2, "--workers", help="Without --address: CPUs of the local Ray instance"),
    cpus_per_job: float = typer.Option(1.0, "--cpus-per-job", help="CPUs each job holds (its evaluations' threads)"),
    gpus_per_eval: float = typer.Option(1.0, "--gpus-per-eval", help="With --device cuda: GPUs each job's evaluations hold"),
    max_retries: int = typer.Option(3, "--max-retries", help="Times a job is rerun after its worker dies"),
    resume: Optional[int] = typer.Option(None, "--resume", help="Continue this batch run as it was started; "
                                         "its stored flags stand, others given here are ignored"),
    db: Optional[str] = o.DbOpt, as_json: bool = o.JsonOpt,
) -> None:
    """Optimize many tasks at once on a Ray cluster (a local one by default), into one shared store."""
    from agent.loop import batch

    def fresh() -> dict[str, Any]:
        return {**flags.spec_fields(task), "address": address, "workers": workers, "cpus_per_job": cpus_per_job,
                "gpus_per_eval": gpus_per_eval, "max_retries": max_retries}

    # the store is opened after the options are checked: bad input leaves no store behind
    store, spec = o.run_spec("batch", resume, db, fresh)
    opts = _options(db, spec.device, spec.timeout_s, spec.cpus_per_job, spec.sandbox, spec.image)
    tasks = spec.resolve_tasks(opts.cache_dir)
    if resume is None:  # docker: the image the options resolved is the run's
        spec = dataclasses.replace(spec.pinned(tasks), image=opts.image)
    llm = spec.llm()
    if llm and not spec.address:  # local workers inherit this environment: a missing key fails here, not in every job
        llm.config(os.environ)
    store = store or open_store(opts.db)
    # measured here, once and before Ray starts: jobs measuring at once would each see a busy machine
    machine_ceilings(opts, store)
    try:
        resources = batch.connect(spec.address, spec.workers, worker_logs=not as_json)
    except Exception as e:  # noqa: BLE001 - Ray raises many kinds for an unreachable or refused cluster
        raise UserError(f"cannot start or reach Ray{f' at {spec.address}' if spec.address else ''}: "
                        f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    try:
        run_id = o.begin_run(store, spec, resume)
        with run_guard(store, run_id, "batch", db):
            summary = _run(store, spec, run_id, tasks, opts, llm, resources, as_json)
    finally:
        batch.shutdown()
    failed = [t for t in summary["tasks"] if t["note"].startswith("failed:")]
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        o.console.print(summary_table(summary))
    if failed:
        raise typer.Exit(1)


def _run(store: Any, spec: Any, run_id: int, tasks: list[Any], opts: Any, llm: Any, resources: dict[str, float],
         as_json: bool) -> dict[str, Any]:
    """The batch's jobs planned into run `run_id` and run on Ray to the end; its summary."""
    from agent.loop import batch

    jobs = batch.plan(store, tasks, spec.strategy)
    cfg = batch.BatchConfig(
        run_id=run_id, options=opts, optimize=spec.optimize_config(), llm=llm,
        deadline=time.time() + spec.time_limit_min * 60 if spec.time_limit_min else None,
        max_cost_per_job=spec.max_cost_usd / len(jobs) if spec.max_cost_usd is not None else None,
        cpus_per_job=spec.cpus_per_job, gpus_per_eval=spec.gpus_per_eval, max_retries=spec.max_retries,
        policy=spec.policy)
    say = o.err_console.print if as_json else o.console.print
    say(f"Batch run {run_id}: {len(jobs)} jobs on Ray ({_resources(resources)}); "
        + (f"LLM {spec.model}, strategy {spec.strategy}" if llm else f"no LLM: tuning seed kernels ({spec.tuner})"))
    if as_json:
        return batch.run_batch(store, cfg, jobs)
    with Live(console=o.err_console, refresh_per_second=2, transient=True) as live:
        return batch.run_batch(store, cfg, jobs, on_progress=lambda b: live.update(batch_progress_table(b, spec.budget)))


def _options(db: str | None, device: str, timeout: float | None, cpus_per_job: float, sandbox: str,
             image: str | None) -> Any:
    """The optimize options, for workers: the GPU is checked where jobs run, not here; a SQLite
    path is made absolute (workers start elsewhere); threads follow the job's CPUs unless set.
    A docker image is looked up here, on the driver's engine: every node needs the same tag."""
    check_device(device)
    opts = options(db, "cpu", timeout, sandbox, image)
    store_db = opts.db if "://" in opts.db else str(Path(opts.db).expanduser().resolve())
    threads = opts.threads if settings.read()["threads"] else max(1, int(cpus_per_job))
    # no timing cores apart: jobs on one node would all time on the same cores at once
    return dataclasses.replace(opts, db=store_db, device=device, threads=threads, timing_cpus=())


def _resources(r: dict[str, float]) -> str:
    gpus = r.get("GPU", 0)
    return f"{r.get('CPU', 0):g} CPUs" + (f", {gpus:g} GPUs" if gpus else "")
