"""What a user sees: live tables during `optimize` and `batch`, the summary after them, and the
formats of speedups, peak fractions and statuses every command shares."""
from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


def speedup_text(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def status_color(status: str) -> str:
    """The rich colour of a verdict's status."""
    return {"ok": "green", "incorrect": "red", "rejected": "magenta"}.get(status, "yellow")


def progress_table(opt: Any) -> Table:
    """Per task: candidates evaluated, correct, best speedup; run-wide spend in the caption."""
    t = Table(title=f"run {opt.run_id}", caption=(
        f"{time.monotonic() - opt.started:.0f} s   LLM calls {opt.spend['calls']}   tokens "
        f"{opt.spend['tokens_in']}+{opt.spend['tokens_out']}   ${opt.spend['cost_usd']:.4f}"))
    for col in ("task", "evaluated", "correct", "best speedup", "in flight", "note"):
        t.add_column(col, justify="left" if col in ("task", "note") else "right")
    for tr in opt.runs:
        ok = [m for m in tr.members if m.ok]
        best = max((m.speedup or 0.0 for m in ok), default=None)
        t.add_row(tr.task.name, f"{tr.evaluated}/{opt.cfg.budget}", str(len(ok)),
                  speedup_text(best), str(tr.inflight), tr.done_reason)
    return t


class LiveProgress:
    def __init__(self, console: Console):
        self.live = Live(console=console, refresh_per_second=4, transient=True)

    def __enter__(self) -> LiveProgress:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.live.__exit__(*exc)

    def update(self, opt: Any) -> None:
        self.live.update(progress_table(opt))


def summary_table(summary: dict[str, Any]) -> Table:
    t = Table(title=f"run {summary['run_id']}: stopped by {summary['stopped_by']}",
              caption=f"LLM calls {summary['llm_calls']}, tokens {summary['tokens']['in']}+{summary['tokens']['out']}, "
                      f"${summary['cost_usd']:.4f}, {summary['seconds']} s")
    # measured: how many times the best was measured (its speedup is their median); statuses
    # count evaluations, re-measurements included
    # peak: the best's share of the machine's peak (evaluator/roofline.py), mem(ory) or fp32 bound
    for col in ("task", "best speedup", "peak", "measured", "best candidate", "evaluated", "statuses"):
        t.add_column(col, justify="right" if col in ("best speedup", "peak", "measured", "evaluated") else "left")
    for task in summary["tasks"]:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(task["counts"].items()))
        best = task["best_speedup"]
        t.add_row(task["task"], speedup_text(best),
                  peak_short(task.get("best_peak_fraction"), task.get("best_bound")),
                  str(task.get("measurements") or "-"),
                  task["best_candidate_id"] or "-",
                  str(task["evaluated"]), counts + (f" ({task['note']})" if task.get("note") else ""))
    return t


def coverage_line(share: float, attribution: dict | None) -> str:
    """`coverage 91% in the candidate's own code (sampled: own 80%, kernel 9%, ...)`."""
    cats = (attribution or {}).get("categories", {})
    total = max(1, sum(cats.values()))
    where = ", ".join(f"{k} {100 * n / total:.0f}%" for k, n in sorted(cats.items(), key=lambda kv: -kv[1]) if n)
    return f"coverage {share:.0%} in the candidate's own code (sampled: {where})"


def peak_text(fraction: float | None, bound: str | None, reference: float | None = None) -> str:
    """`31% of peak (memory-bound; eager 12%)`: a peak fraction as every display shows it."""
    if fraction is None:
        return "-"
    ref = f"; eager {reference:.0%}" if reference is not None else ""
    return f"{fraction:.0%} of peak ({bound or '?'}-bound{ref})"


def peak_short(fraction: float | None, bound: str | None) -> str:
    """`31% mem` for table cells."""
    if fraction is None:
        return "-"
    return f"{fraction:.0%} {'mem' if bound == 'memory' else 'fp32' if bound == 'compute' else ''}".rstrip()


def batch_progress_table(b: Any, budget: int) -> Table:
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
                  speedup_text(best), r["state"])
    return t
