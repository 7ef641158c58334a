"""`kernelwright eval`, `compile` and `tasks`: one candidate or one task at a time (the other
commands are the other modules of agent/cli/)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from agent.cli.display import coverage_line, peak_text, status_color
from agent.cli.typer_app import (
    DbOpt,
    DeviceOpt,
    JsonOpt,
    KernelBenchOpt,
    LevelOpt,
    PolicyOpt,
    ScaleOpt,
    TaskIdOpt,
    TimeoutOpt,
    app,
    check_policy,
    console,
    read_candidate,
    suite_fields,
    tasks_app,
)
from agent.loop.judge import Record, judge
from agent.loop.reward import RewardConfig
from agent.runspec import RunSpec, SpecError
from agent.runtime import (
    ImageOpt,
    SandboxOpt,
    UserError,
    check_device,
    cli_errors,
    evaluator,
    open_store,
    options,
    sandbox_config,
)
from evaluator.compile_only import compile_candidate
from sandbox.process import ProcessSandbox
from tasks.registry import suite_tasks, suites
from tasks.spec import load_task


@app.command("eval")
@cli_errors
def eval_cmd(
    task_file: Path = typer.Argument(..., help="KernelBench task file (Model, get_inputs, get_init_inputs)"),
    candidate_file: Path = typer.Argument(..., help="Candidate file defining ModelNew"),
    device: str = DeviceOpt, timeout: Optional[float] = TimeoutOpt, db: Optional[str] = DbOpt,
    as_json: bool = JsonOpt, sandbox: str = SandboxOpt, image: Optional[str] = ImageOpt, policy: str = PolicyOpt,
) -> None:
    """Evaluate one candidate against a task, store the result and print the verdict."""
    rules = check_policy(policy)
    task = load_task(task_file)
    source = read_candidate(candidate_file)
    opts = options(db, device, timeout, sandbox, image)
    store = open_store(opts.db)  # opened first: a bad --db fails before any work
    with evaluator(opts, store, policy=rules) as ev:
        done = judge(ev, task, source, RewardConfig(), confirm_outliers=False)
    task_id = store.upsert_task(task.name, task.meta.suite, task.source, str(task.path))
    run_id = store.start_run("eval", {"task": str(task.path), "candidate": str(candidate_file), "policy": policy},
                             device)
    done = done.save(store, Record(task_id, "user", run_id))
    store.finish_run(run_id, "finished")
    out = {k: v for k, v in done.out.items() if k != "log"}
    out.update({"candidate_id": done.candidate_id, "evaluation_id": done.evaluation_id, "task": task.name})
    if as_json:
        typer.echo(json.dumps(out))
        return
    _print_verdict(out, opts.db)


def _print_verdict(v: dict, db: str) -> None:
    color = status_color(v["status"])
    console.print(f"[bold]{v['task']}[/bold]  status [{color}]{v['status']}[/{color}]"
                  + (f"  {v['reason']}" if v["reason"] else "") + f"  (policy {v.get('policy', 'strict')})")
    if v.get("torch_ops"):
        shown = ", ".join(v["torch_ops"][:8]) + (" ..." if len(v["torch_ops"]) > 8 else "")
        console.print(f"pytorch {shown}  (PyTorch compute beside the candidate's kernels)")
    if v["speedup"] is not None:
        console.print(f"speedup {v['speedup']:.2f}x  (candidate {v['candidate_ms']:.3f} ms ± {v['candidate_spread_ms']:.3f}, "
                      f"reference {v['reference_ms']:.3f} ms ± {v['reference_spread_ms']:.3f}, IQR)")
    if v.get("peak_fraction") is not None:
        console.print(f"peak    {peak_text(v['peak_fraction'], v.get('bound'), v.get('reference_peak_fraction'))}"
                      "  (of this machine's measured ceilings: `kernelwright device`)")
    trials = v["trials"]
    if trials:
        worst = max((e["max_abs"] for t in trials for e in t["errors"]), default=0.0)
        console.print(f"trials  {sum(t['ok'] for t in trials)}/{len(trials)} passed, max abs error {worst:.3g}")
    if v.get("coverage") is not None:
        console.print(coverage_line(v["coverage"], v.get("attribution")))
    for flag in v["flags"]:
        console.print(f"[yellow]flag[/yellow]    {flag}")
    console.print(f"candidate {v['candidate_id']}  (stored in {db})")


@app.command("compile")
@cli_errors
def compile_cmd(
    candidate_file: Path = typer.Argument(..., help="Candidate file (fast path or load_inline)"),
    device: str = typer.Option("cuda", "--device", help="cuda (nvcc, ptxas report) or cpu (g++)"),
    arch: str = typer.Option("sm_90", "--arch", help="CUDA target, e.g. sm_80, sm_90, sm_90a"),
    timeout: Optional[float] = TimeoutOpt, as_json: bool = JsonOpt,
) -> None:
    """Compile a candidate's kernels without running them; on CUDA, report registers and spills."""
    source = read_candidate(candidate_file)
    check_device(device)
    if not arch.startswith(("sm_", "compute_")):
        raise UserError(f"--arch {arch!r} is not a CUDA target like sm_90")
    opts = options(None, "cpu", timeout)  # compiling needs no GPU
    with ProcessSandbox(sandbox_config(opts)) as sb:
        report = compile_candidate(sb, source, arch, opts.timeout_s)
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        console.print(f"[bold]{candidate_file}[/bold]  " + ("[green]compiled[/green]" if report.ok else "[red]failed[/red]")
                      + f"  ({len(report.builds)} builds, {report.seconds:.1f} s)")
        if report.kernels:
            table = Table("kernel", "arch", "registers", "spill st/ld", "smem B", "stack B")
            for k in report.kernels:
                table.add_row(k["kernel"][:60], k["arch"], str(k["registers"]),
                              f"{k['spill_stores']}/{k['spill_loads']}", str(k["shared_bytes"]), str(k["stack_bytes"]))
            console.print(table)
        if report.error:
            console.print(report.error[-3000:])
    if not report.ok:
        raise typer.Exit(1)


@tasks_app.command("list")
@cli_errors
def tasks_list(suite: Optional[str] = typer.Option(None, "--suite", help="Only this suite (kernelbench: from --kernelbench)"),
               kernelbench: Optional[str] = KernelBenchOpt, level: Optional[list[int]] = LevelOpt,
               task_id: Optional[list[int]] = TaskIdOpt, scale: float = ScaleOpt, as_json: bool = JsonOpt) -> None:
    """List the built-in tasks, or a KernelBench checkout's."""
    if suite == "kernelbench":
        try:
            spec = RunSpec("optimize", **suite_fields(suite, None, kernelbench, level, task_id, scale, "strict"))
        except SpecError as e:
            raise UserError(str(e)) from None
        found = [("kernelbench", t) for t in spec.resolve_tasks(options(None, "cpu", None).cache_dir)]
    else:
        suite_fields(suite, None, None, level, task_id, scale, "strict")  # (the KernelBench flags need its suite)
        found = [(s, t) for s in ([suite] if suite else suites()) for t in suite_tasks(s)]
    rows = [{"suite": s, "task": t.name, "file": str(t.path), "description": t.meta.description,
             "variants": len(t.meta.variants), "seeds": len(t.meta.seeds), "scale": t.meta.scale} for s, t in found]
    if as_json:
        typer.echo(json.dumps({"tasks": rows}))
        return
    table = Table("suite", "task", "variants", "seeds", "scale", "description")
    for r in rows:
        table.add_row(r["suite"], r["task"], str(r["variants"]), str(r["seeds"]), f"{r['scale']:g}", r["description"])
    console.print(table)


@tasks_app.command("check")
@cli_errors
def tasks_check(task_file: Path = typer.Argument(..., help="Task file to validate"),
                timeout: Optional[float] = TimeoutOpt, as_json: bool = JsonOpt) -> None:
    """Validate a task: it imports, the reference runs and is deterministic, cheats would not pass."""
    from evaluator.taskcheck import check_task

    task = load_task(task_file)
    opts = options(None, "cpu", timeout)
    with ProcessSandbox(sandbox_config(opts)) as sb:
        result = check_task(task, sb, opts.timeout_s)
    if as_json:
        typer.echo(json.dumps(result.to_json()))
    else:
        console.print(f"[bold]{result.name}[/bold]  {'[green]ok[/green]' if result.ok else '[red]invalid[/red]'}"
                      + (f"  reference {result.reference_ms:.3f} ms" if result.reference_ms is not None else ""))
        if result.outputs:
            console.print("outputs " + ", ".join(result.outputs))
        for e in result.errors:
            console.print(f"[red]error[/red]   {e}")
        for w in result.warnings:
            console.print(f"[yellow]warning[/yellow] {w}")
    if not result.ok:
        raise typer.Exit(1)

