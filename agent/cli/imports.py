"""`kernelwright import` and `kernelwright audit`: re-judging a peer's released kernels.

import reads a release (agent/loop/importers.py), evaluates every candidate under a policy, stores
the verdict beside what the publisher claimed (a run of its own, resumable), and prints the
audit (agent/outputs/audit.py): claimed against measured, per task, and totals.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from agent import settings
from agent.cli.display import speedup_text
from agent.cli.typer_app import (
    DbOpt,
    DeviceOpt,
    JsonOpt,
    KernelBenchOpt,
    ScaleOpt,
    TimeoutOpt,
    app,
    check_policy,
    console,
    err_console,
    open_run,
    stored_run,
)
from agent.loop.importers import parse
from agent.loop.judge import Record, judge
from agent.loop.reward import RewardConfig
from agent.outputs import audit as audit_mod
from agent.runspec import resume_hint
from agent.runtime import ImageOpt, SandboxOpt, UserError, cli_errors, evaluator, open_store, options, run_guard
from tasks.kernelbench import KernelBenchSelection, load_numbered, task_from_source
from tasks.spec import TaskError

_CONFIG = ("format", "path", "policy", "kernelbench", "scale", "device", "sandbox", "image", "timeout_s")


@app.command("import")
@cli_errors
def import_cmd(
    fmt: Optional[str] = typer.Argument(None, metavar="FORMAT", help="cuda-l1 (JSONL), kernelbench (a generations "
                                        "folder, with --kernelbench) or folder (<name>.py beside <name>_new.py)"),
    path: Optional[Path] = typer.Argument(None, metavar="FILE", help="The release: a file or folder"),
    policy: str = typer.Option("kernelbench", "--policy", help="Whose code may compute (strict, kernelbench, "
                               "library): the release's own rules are usually kernelbench's"),
    kernelbench: Optional[str] = KernelBenchOpt, scale: float = ScaleOpt,
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate at most this many candidates now "
                                        "(the rest with --resume)"),
    resume: Optional[int] = typer.Option(None, "--resume", help="Continue this import run as it was started; "
                                         "candidates it has judged are not evaluated again"),
    device: str = DeviceOpt, timeout: Optional[float] = TimeoutOpt, db: Optional[str] = DbOpt,
    sandbox: str = SandboxOpt, image: Optional[str] = ImageOpt, as_json: bool = JsonOpt,
) -> None:
    """Evaluate a release's candidates under a policy, store claimed beside measured, print the audit."""
    if limit is not None and limit < 1:
        raise UserError("--limit must be at least 1")
    store = None
    if resume is not None:
        store, config = stored_run("import", resume, db)
    else:
        if fmt is None or path is None:
            raise UserError("import needs FORMAT and FILE (or --resume RUN)")

        root = kernelbench or settings.read()["kernelbench"] or None
        config = {"format": fmt, "path": str(path.expanduser().resolve()), "policy": policy,
                  "kernelbench": str(Path(root).expanduser().resolve()) if root else None, "scale": scale,
                  "device": device, "sandbox": sandbox, "image": image, "timeout_s": timeout}
    rules = check_policy(config["policy"])
    opts = options(db, config["device"], config["timeout_s"], config["sandbox"], config["image"])
    items, skipped = _candidates(config, opts.cache_dir)
    store = store or open_store(opts.db)
    run_id = open_run(store, "import", {k: config[k] for k in _CONFIG}, config["device"], resume)
    done = {str((c["details"] or {}).get("key")) for c in store.claims(run_id)}
    todo = [it for it in items if it[0].key not in done]
    now = todo[:limit] if limit else todo
    source = f"{config['format']}:{Path(config['path']).name}"
    with run_guard(store, run_id, "import", db):
        if now:
            with evaluator(opts, store, policy=rules) as ev:
                for n, (item, task) in enumerate(now, 1):
                    _judge_one(store, ev, run_id, item, task, source)
                    if not as_json:
                        err_console.print(f"[{n}/{len(now)}] {item.key}: {task.name}")
    left = len(todo) - len(now)
    store.finish_run(run_id, "interrupted" if left else "finished")
    result = audit_mod.audit(store, run_id)
    if as_json:
        typer.echo(json.dumps({**result.to_json(), "skipped": list(skipped), "left": left}))
        return
    _print_audit(result)
    for why in skipped:
        console.print(f"[yellow]skipped[/yellow] {why}")
    if left:
        console.print(f"{left} candidates left: {resume_hint('import', run_id, db)}")


def _candidates(config: dict[str, Any], cache_dir: Path) -> tuple[list[tuple[Any, Any]], list[str]]:
    """(imported item, its task) pairs and the lines saying what was left out, before any work."""
    tasks = None
    if config["format"] == "kernelbench" and config["kernelbench"]:
        sel = KernelBenchSelection(Path(config["kernelbench"]), scale=config["scale"])
        tasks = {(lvl, pid): t for lvl, pid, t in load_numbered(sel, cache_dir)}
    parsed = parse(config["format"], Path(config["path"]), tasks)
    pairs, skipped = [], list(parsed.skipped)
    by_path = {str(t.path): t for t in (tasks or {}).values()}
    for item in parsed.items:
        try:
            if item.task_path in by_path:
                task = by_path[item.task_path]
            else:
                text = item.task_source if item.task_source is not None else Path(item.task_path or "").read_text()
                task = task_from_source(text, item.task_name, f"imported: {item.key}", config["scale"], cache_dir,
                                        suite="imported", where=item.key)
        except (TaskError, OSError, UnicodeDecodeError) as e:
            skipped.append(f"{item.key}: the task does not load: {str(e).splitlines()[0] if str(e) else e}")
            continue
        pairs.append((item, task))
    if not pairs and not skipped:
        raise UserError(f"{config['path']}: no candidates found")
    return pairs, skipped


def _judge_one(store: Any, ev: Any, run_id: int, item: Any, task: Any, source: str) -> None:
    task_id = store.upsert_task(task.name, task.meta.suite, task.source, str(task.path))
    done = judge(ev, task, item.candidate_source, RewardConfig(), store,
                 Record(task_id, "import", run_id, strategy="import"), confirm_outliers=False)
    assert done.candidate_id is not None
    store.record_claim(done.candidate_id, source, {**item.claimed, "key": item.key}, run_id)


@app.command("audit")
@cli_errors
def audit_cmd(run: Optional[int] = typer.Option(None, "--run", help="Import run [default: the latest]"),
              db: Optional[str] = DbOpt, as_json: bool = JsonOpt) -> None:
    """Claimed against measured for an import run: per candidate, and totals."""
    store = open_store(options(db, "cpu", None).db)
    if run is not None:
        found = store.run(run)
        if found is None or found["command"] != "import":
            raise UserError(f"no import run {run}")
    result = audit_mod.audit(store, run)
    if result.run_id is None:
        raise UserError("no import run in this store (run `kernelwright import` first)")
    if as_json:
        typer.echo(json.dumps(result.to_json()))
        return
    _print_audit(result)


def _print_audit(result: Any) -> None:
    table = Table(title=f"import run {result.run_id}: claimed vs measured")
    for col in ("task", "from", "claimed", "measured", "status", "reason", "held up"):
        table.add_column(col)
    for r in result.rows:
        why = (r.reason.splitlines() or [""])[0]
        table.add_row(r.task, r.key, speedup_text(r.claimed), speedup_text(r.measured), r.status, why[:70],
                      "yes" if r.held else "no")
    console.print(table)
    t = result.totals()
    statuses = ", ".join(f"{s} {n}" for s, n in t["by_status"].items())
    console.print(f"{t['held_up']}/{t['candidates']} claims hold up ({statuses}).")
    for why, n in t["reasons"].items():
        console.print(f"  {n} x {why}")
    if t["compared"]:
        console.print(f"geomean over {t['compared']} correct and timed: claimed {speedup_text(t['geomean_claimed'])}, "
                      f"measured {speedup_text(t['geomean_measured'])} (here, on this machine: claims were measured elsewhere)")
