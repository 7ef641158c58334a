"""Reading the store back: `best`, `show`, `diff`, `report`, `export` and `dataset`."""
from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from agent.cli.display import coverage_line, peak_short, peak_text, speedup_text, status_color
from agent.cli.typer_app import DbOpt, JsonOpt, app, check_policy, console
from agent.runtime import UserError, check_device, cli_errors, open_store, options
from store import ranking

PROMPT_CHARS = 3000  # of a prompt shown on the terminal; --json has it all


def _store(db: str | None) -> Any:
    return open_store(options(db, "cpu", None).db)  # reading needs no device: cpu, whatever was measured


def _device(device: str | None) -> str | None:
    return None if device is None else check_device(device)


def _candidate(store: Any, ref: str) -> dict[str, Any]:
    cand = store.candidate(ref)
    if cand is None:
        raise UserError(f"no candidate {ref!r} in the store")
    return cand


def _latest(store: Any, candidate_id: str) -> dict[str, Any] | None:
    evaluations = store.evaluations(candidate_id)
    return evaluations[-1] if evaluations else None


@app.command("best")
@cli_errors
def best_cmd(task: Optional[str] = typer.Option(None, "--task", help="Only this task (name)"),
             device: Optional[str] = typer.Option(None, "--device", help="Only kernels measured on cpu or cuda"),
             policy: str = typer.Option("strict", "--policy", help="The leaderboard of this evaluation policy "
                                        "(strict, kernelbench, library): policies never compete"),
             db: Optional[str] = DbOpt, as_json: bool = JsonOpt) -> None:
    """The leaderboard: the fastest correct kernel of every task, under one policy."""
    check_policy(policy)
    store = _store(db)
    rows = store.best(task, _device(device), policy=policy)
    if as_json:
        typer.echo(json.dumps({"tasks": rows}))
        return
    if not rows:
        console.print("No correct kernel in the store" + (f" for {task}" if task else "") + f" under the {policy} policy.")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    # speedup: the median of the candidate's measurements (store/ranking.py); measured: how many;
    # peak: their median share of the machine's peak, mem(ory) or fp32 bound (evaluator/roofline.py)
    for name in ("task", "speedup", "peak", "measured", "candidate", "device", "fingerprint", "strategy", "when"):
        width = {"candidate": 12, "fingerprint": 12, "when": 10, "strategy": 10, "speedup": 7, "device": 6,
                 "peak": 8}.get(name)
        table.add_column(name, no_wrap=True, min_width=width,  # ids are for copying: never cut
                         justify="right" if name in ("speedup", "peak", "measured") else "left")
    for r in rows:
        table.add_row(escape(r["task"]), speedup_text(r["speedup"]), peak_short(r.get("peak_fraction"), r.get("bound")),
                      str(r["measurements"]), r["candidate_id"],
                      r["device"] or "-",
                      r["fingerprint_id"] or "-", escape(r["strategy"] or "-"), (r["created_at"] or "")[:10])
    console.print(table)


@app.command("show")
@cli_errors
def show_cmd(candidate: str = typer.Argument(..., help="Candidate id (or a unique prefix of 4+ characters)"),
             db: Optional[str] = DbOpt, as_json: bool = JsonOpt) -> None:
    """One candidate: source, verdicts, lineage, the prompt and answer that produced it, knobs."""
    store = _store(db)
    cand = _candidate(store, candidate)
    evaluations = store.evaluations(cand["id"])
    lineage = []
    for c in store.lineage(cand["id"]):  # the candidate itself first: its evaluations are read already
        found = evaluations if c["id"] == cand["id"] else store.evaluations(c["id"])
        latest = found[-1] if found else {}
        lineage.append({"id": c["id"], "origin": c["origin"], "parent_id": c["parent_id"], "knobs": c["knobs"],
                        "status": latest.get("status"), "speedup": latest.get("speedup")})
    calls = store.llm_calls(candidate_id=cand["id"])
    if as_json:
        typer.echo(json.dumps({"candidate": cand, "evaluations": evaluations, "lineage": lineage, "llm_calls": calls}))
        return
    console.print(f"[bold]{cand['id']}[/bold]  task {escape(cand['task'])}  origin {cand['origin']}"
                  + (f"  parent {cand['parent_id']}" if cand["parent_id"] else "") + f"  run {cand['run_id']}")
    if cand["knobs"]:
        console.print("knobs   " + ", ".join(f"{k}={v}" for k, v in cand["knobs"].items()))
    console.print(Syntax(cand["source"], "python", line_numbers=True, word_wrap=True))
    for e in evaluations:
        _print_evaluation(e)
    standing = ranking.standings(evaluations).get(cand["id"])
    if standing and standing.measurements > 1:
        console.print(f"speedup {speedup_text(standing.speedup)}: the median of its {standing.measurements} correct "
                      "measurements (the leaderboard ranks by it)")
    chain = [f"{c['id']} ({c['origin']}, {c['status'] or 'not evaluated'}, {speedup_text(c['speedup'])})" for c in lineage]
    root = lineage[-1]
    root_calls = calls if root["id"] == cand["id"] else store.llm_calls(candidate_id=root["id"])
    start = (f"first prompt: LLM call {root_calls[0]['id']} ({root_calls[0]['kind']})" if root_calls
             else "seed kernel" if root["origin"] == "seed" else f"{root['origin']} kernel")
    console.print("lineage " + " <- ".join(chain) + f"  <- {start}")
    for c in calls:
        prompt = "\n\n".join(f"[{m.get('role')}] {m.get('content')}" for m in c["messages"])
        console.rule(f"LLM call {c['id']}: {c['kind']}, {c['model']}, {c['tokens_in']}+{c['tokens_out']} tokens, "
                     f"${c['cost_usd']:.4f}")
        console.print(prompt[-PROMPT_CHARS:], markup=False, highlight=False)
        if len(prompt) > PROMPT_CHARS:
            console.print(f"(the last {PROMPT_CHARS} of {len(prompt)} characters; --json has all)")
        console.rule("response")
        console.print(c["response"], markup=False, highlight=False)


def _print_evaluation(e: dict[str, Any]) -> None:
    color = status_color(e["status"])
    console.print(f"evaluation {e['id']}  [{color}]{e['status']}[/{color}]"
                  + (f"  {escape(e['reason'])}" if e["reason"] else "")  # store text, not markup
                  + f"  ({e['device'] or '-'}, fingerprint {e['fingerprint_id'] or '-'}, {(e['created_at'] or '')[:19]})")
    if e["speedup"] is not None:
        samples = e["timings"].get("candidate_ms") or []
        spread = f"; {len(samples)} samples, {min(samples):.4f} to {max(samples):.4f} ms" if samples else ""
        console.print(f"  speedup {speedup_text(e['speedup'])}: candidate {e['candidate_ms']:.4f} ms ± "
                      f"{e['candidate_spread_ms']:.4f}, reference {e['reference_ms']:.4f} ms ± "
                      f"{e['reference_spread_ms']:.4f} (median ± IQR{spread})")
    if e.get("peak_fraction") is not None:
        console.print(f"  peak {peak_text(e['peak_fraction'], e.get('bound'), e.get('reference_peak_fraction'))}")
    if e["trials"]:
        table = Table("trial", "ok", "max abs err", "max rel err", "mismatch", "note")
        for t in e["trials"]:
            errs = t["errors"] or [{}]
            table.add_row(escape(t["name"]), "yes" if t["ok"] else "NO", f"{max(x.get('max_abs', 0.0) for x in errs):.3g}",
                          f"{max(x.get('max_rel', 0.0) for x in errs):.3g}",
                          f"{max(x.get('mismatch_frac', 0.0) for x in errs):.3g}", escape(t.get("note") or ""))
        console.print(table)
    if e.get("coverage") is not None:
        console.print("  " + coverage_line(e["coverage"], e.get("attribution")))
    for flag in e["flags"]:
        console.print(f"  [yellow]flag[/yellow] {escape(flag)}")
    if e["reward"] is not None:
        console.print(f"  reward {e['reward']:.4f}" + (f" ({escape(e['reward_note'])})" if e["reward_note"] else "")
                      + (f", strategy {e['strategy']}" if e["strategy"] else ""))


@app.command("diff")
@cli_errors
def diff_cmd(a: str = typer.Argument(..., help="Candidate id (before)"),
             b: str = typer.Argument(..., help="Candidate id (after)"),
             db: Optional[str] = DbOpt, as_json: bool = JsonOpt) -> None:
    """The source diff of two candidates, and the change in speedup."""
    store = _store(db)
    sides = []
    for ref in (a, b):
        cand = _candidate(store, ref)
        e = _latest(store, cand["id"]) or {}
        sides.append({"id": cand["id"], "task": cand["task"], "status": e.get("status"), "speedup": e.get("speedup"),
                      "fingerprint_id": e.get("fingerprint_id"), "source": cand["source"]})
    before, after = sides
    text = "".join(difflib.unified_diff(before["source"].splitlines(keepends=True),
                                        after["source"].splitlines(keepends=True), before["id"], after["id"]))
    both = before["speedup"] is not None and after["speedup"] is not None
    out = {"a": {k: v for k, v in before.items() if k != "source"},
           "b": {k: v for k, v in after.items() if k != "source"},
           "speedup_change": after["speedup"] - before["speedup"] if both else None,
           "speedup_ratio": after["speedup"] / before["speedup"] if both and before["speedup"] else None,
           "same_task": before["task"] == after["task"],
           "same_fingerprint": before["fingerprint_id"] == after["fingerprint_id"], "diff": text}
    if as_json:
        typer.echo(json.dumps(out))
        return
    console.print(Syntax(text or "(identical sources)\n", "diff"))
    change = (f" ({out['speedup_change']:+.2f}, {out['speedup_ratio']:.2f}x)" if out["speedup_ratio"] else "")
    console.print(f"speedup {speedup_text(before['speedup'])} -> {speedup_text(after['speedup'])}{change}")
    if not out["same_task"]:
        console.print(f"[yellow]note[/yellow] different tasks: {escape(before['task'])} and {escape(after['task'])}")
    elif both and not out["same_fingerprint"]:
        console.print("[yellow]note[/yellow] measured on different machines (fingerprints differ): not comparable")


@app.command("report")
@cli_errors
def report_cmd(out: Path = typer.Option(..., "--out", help="HTML file to write"),
               run: Optional[int] = typer.Option(None, "--run", help="Only this run"),
               db: Optional[str] = DbOpt, as_json: bool = JsonOpt) -> None:
    """One self-contained HTML report: leaderboard, speedups, search progress, failures, LLM spend."""
    from agent.outputs import report

    store = _store(db)
    if run is not None and store.run(run) is None:
        raise UserError(f"no run {run} in the store")
    data = report.load(store, run)
    try:
        out.write_text(report.render(data))
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    summary = {"out": str(out), "evaluations": len(data.evaluations),
               "tasks": len(report.leaderboard(data.evaluations)), "llm_calls": len(data.llm_calls)}
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        console.print(f"Wrote {out}: {summary['evaluations']} evaluations of {summary['tasks']} tasks.")


@app.command("export")
@cli_errors
def export_cmd(out: Path = typer.Option(..., "--out", help="Directory to write the package project into"),
               name: str = typer.Option("kw_kernels", "--name", help="Python package name (and torch.ops namespace)"),
               min_speedup: Optional[float] = typer.Option(
                   None, "--min-speedup", help="Ship kernels at least this fast [default: only kernels faster than "
                   "eager by more than their measured spread]"),
               device: Optional[str] = typer.Option(None, "--device", help="Only kernels measured on cpu or cuda"),
               build: bool = typer.Option(False, "--build", help="Compile the kernels now and ship the binaries "
                                          "for this machine's CPU/GPU"),
               db: Optional[str] = DbOpt, as_json: bool = JsonOpt) -> None:
    """Write the best correct kernel of every task as a pip-installable package of PyTorch custom ops."""
    from agent.outputs.export import ExportConfig, export

    manifest = export(_store(db), ExportConfig(out=out, name=name, min_speedup=min_speedup, device=_device(device),
                                               build=build))
    if as_json:
        typer.echo(json.dumps(manifest))
        return
    table = Table("function", "speedup", "peak", "pattern", "device", "candidate", "evaluation")
    for e in manifest["tasks"]:
        table.add_row(f"{name}.{e['function']}", speedup_text(e["speedup"]), peak_short(e["peak_fraction"], e["bound"]),
                      (e.get("binding") or {}).get("pattern", "-"), e["device"], e["candidate_id"],
                      str(e["evaluation_id"]))
    console.print(table)
    for e in manifest["left_out"]:
        console.print(f"[yellow]left out[/yellow] {escape(e['task'])}: {escape(e['reason'])}")
    if manifest.get("prebuilt"):
        console.print(f"Shipped {manifest['prebuilt']['libs']} prebuilt kernel binaries for this machine.")
    console.print(f"Install with: pip install {out}   then check: python -m {name}.selftest")


@app.command("dataset")
@cli_errors
def dataset_cmd(fmt: str = typer.Option(..., "--format", help="sft | dpo | grpo"),
                out: Path = typer.Option(..., "--out", help="JSONL file to write"),
                min_speedup: Optional[float] = typer.Option(
                    None, "--min-speedup", help="SFT kernels and DPO chosen kernels at least this fast"),
                db: Optional[str] = DbOpt, as_json: bool = JsonOpt) -> None:
    """Training records for TRL (SFT, DPO or GRPO) from every evaluated candidate."""
    from agent.outputs.datasets import FORMATS, DatasetConfig, write_jsonl

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (use {', '.join(FORMATS)})")
    records = FORMATS[fmt](_store(db), DatasetConfig(min_speedup=min_speedup))
    try:
        n = write_jsonl(records, out)
    except OSError as e:
        raise UserError(f"cannot write {out}: {e.strerror}") from None
    if as_json:
        typer.echo(json.dumps({"format": fmt, "records": n, "out": str(out)}))
    else:
        console.print(f"Wrote {n} {fmt} records to {out}.")
