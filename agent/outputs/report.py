"""`kernelwright report`: one self-contained HTML file about what the store holds.

Per-task leaderboard, the distribution of speedups, search progress (best speedup against
evaluations spent), failures by status and reason, LLM tokens and cost over time. Charts are
matplotlib figures inlined as SVG; there are no scripts, fonts or images to fetch, so the file
opens anywhere, offline. Numbers in tables are formatted here once (`fmt_speedup`), so a test
can look for exactly what a reader sees.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import html
import io
import itertools
from typing import Any

from store import ranking

SPEEDUP_CLIP = 1e3  # a report axis, not a claim: flagged outliers still plot, at the edge


def fmt_speedup(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def fmt_peak(fraction: float | None, bound: str | None) -> str:
    return "-" if fraction is None else f"{fraction:.0%} ({bound or '?'})"


@dataclasses.dataclass(frozen=True)
class ReportData:
    title: str
    evaluations: list[dict[str, Any]]  # Store.evaluation_rows()
    llm_calls: list[dict[str, Any]]  # Store.llm_calls()
    audits: tuple[Any, ...] = ()  # agent/outputs/audit.py: one per import run shown


def load(store: Any, run_id: int | None = None) -> ReportData:
    from agent.outputs.audit import audit

    title = f"run {run_id}" if run_id is not None else "all runs"
    runs = [run_id] if run_id is not None else sorted({c["run_id"] for c in store.claims() if c["run_id"] is not None})
    audits = tuple(a for a in (audit(store, r) for r in runs) if a.rows)
    return ReportData(title, store.evaluation_rows(run_id), store.llm_calls(run_id=run_id), audits)


def leaderboard(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task id: evaluations, correct ones, and the best candidate by the median of its
    measurements (store/ranking.py; the earliest wins a tie)."""
    board: dict[int, dict[str, Any]] = {}
    for r in rows:
        b = board.setdefault(r["task_id"], {"task": r["task"], "evaluations": 0, "correct": 0, "best": None})
        b["evaluations"] += 1
        b["correct"] += bool(r["correct"] and r["speedup"] is not None)
    ranked: dict[int, list[ranking.Standing]] = {}
    for st in ranking.standings(rows).values():
        ranked.setdefault(st.first["task_id"], []).append(st)
    for task_id, standings in ranked.items():
        lead = ranking.leader(standings)
        assert lead is not None  # standings is never empty
        board[task_id]["best"] = {**lead.first, "speedup": lead.speedup, "measurements": lead.measurements,
                                  "peak_fraction": lead.peak_fraction, "bound": lead.bound}
    return sorted(board.values(), key=lambda b: b["task"])


# --- charts ------------------------------------------------------------------------------

def _times(value: float, _: Any = None) -> str:
    return f"{value:g}x"


def _figure(height: float = 3.2) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display

    fig = Figure(figsize=(7.5, height), layout="constrained")
    return fig, fig.subplots()


def _svg(fig: Any) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "kernelwright"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog: the SVG sits inside HTML


def progress_chart(rows: list[dict[str, Any]]) -> str:
    from matplotlib.ticker import MaxNLocator, NullFormatter

    fig, ax = _figure()
    by_task: dict[str, list[float | None]] = collections.defaultdict(list)
    for r in rows:
        best = by_task[r["task"]][-1] if by_task[r["task"]] else None
        s = min(r["speedup"], SPEEDUP_CLIP) if r["correct"] and r["speedup"] is not None else None
        by_task[r["task"]].append(s if best is None or (s is not None and s > best) else best)
    for task, series in sorted(by_task.items()):
        xs = [i + 1 for i, v in enumerate(series) if v is not None]
        ax.step(xs, [v for v in series if v is not None], where="post", marker="o", markersize=3, label=task)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xlabel="evaluations of the task", ylabel="best speedup so far", yscale="log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(_times)
    ax.yaxis.set_minor_formatter(NullFormatter())  # minor labels of a log axis crowd each other
    if by_task:
        ax.legend(fontsize="small", ncols=2)
    return _svg(fig)


def distribution_chart(rows: list[dict[str, Any]]) -> str:
    import numpy as np
    from matplotlib.ticker import MaxNLocator, NullFormatter

    fig, ax = _figure()
    speedups = [min(r["speedup"], SPEEDUP_CLIP) for r in rows if r["correct"] and r["speedup"]]
    if speedups:
        lo, hi = min(speedups + [0.5]), max(speedups + [2.0])
        ax.hist(speedups, bins=np.geomspace(lo * 0.9, hi * 1.1, 30), color="#4c72b0")
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set(xscale="log", xlabel="speedup over PyTorch eager (log scale)", ylabel="correct kernels")
    ax.xaxis.set_major_formatter(_times)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return _svg(fig)


def failure_chart(counts: dict[str, int]) -> str:
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(1.0 + 0.45 * len(counts))
    names = sorted(counts, key=lambda k: -counts[k])
    ax.barh(names, [counts[n] for n in names], color="#c44e52")
    ax.invert_yaxis()
    ax.set(xlabel="evaluations")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _svg(fig)


def llm_chart(calls: list[dict[str, Any]]) -> str:
    from matplotlib.dates import DateFormatter

    fig, ax = _figure()
    times = [dt.datetime.fromisoformat(c["created_at"]) for c in calls]
    ax.step(times, list(itertools.accumulate(c["tokens_in"] for c in calls)), where="post", label="tokens in")
    ax.step(times, list(itertools.accumulate(c["tokens_out"] for c in calls)), where="post", label="tokens out")
    ax.set(xlabel="time (UTC)", ylabel="tokens, cumulative")
    cost_ax = ax.twinx()
    cost_ax.step(times, list(itertools.accumulate(c["cost_usd"] for c in calls)), where="post", color="#55a868",
                 label="cost (USD)")
    cost_ax.set_ylabel("USD, cumulative")
    ax.legend(handles=[*ax.get_lines(), *cost_ax.get_lines()], fontsize="small", loc="upper left")
    ax.xaxis.set_major_formatter(DateFormatter("%H:%M:%S"))
    fig.autofmt_xdate()
    return _svg(fig)


# --- the page ----------------------------------------------------------------------------

CSS = """body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}h2{margin-top:1.6em}.note{color:#666}
svg{max-width:100%;height:auto}"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _table(head: list[str], rows: list[list[tuple[str, str]]], table_id: str) -> str:
    """Rows of (css class, already-escaped cell html)."""
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f'<td class="{c}">{v}</td>' for c, v in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _reason(text: str) -> str:
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else "(no reason given)"
    return first if len(first) <= 100 else first[:97] + "..."


def audit_section(audits: tuple[Any, ...]) -> list[str]:
    """Imported candidates (kernelwright import): what was claimed beside what was measured here."""
    if not audits:
        return []
    parts = ["<h2>Imported candidates: claimed vs measured</h2>",
             '<p class="note">Claims were measured by their publishers, elsewhere; measured speedups are this '
             "store's, under the run's policy. A claim holds up when the candidate is correct and, if it claimed "
             "to beat eager, does so here.</p>"]
    for a in audits:
        t = a.totals()
        rows = [[("task", _e(r.task)), ("key", _e(r.key)), ("num claimed", fmt_speedup(r.claimed)),
                 ("num measured", fmt_speedup(r.measured)), ("status", _e(r.status)), ("reason", _e(_reason(r.reason))),
                 ("policy", _e(r.policy)), ("held", "yes" if r.held else "no")] for r in a.rows]
        parts += [f'<p id="audit-totals-{a.run_id}">Import run {a.run_id}: {t["held_up"]} of {t["candidates"]} '
                  f'claims hold up; geomean claimed {fmt_speedup(t["geomean_claimed"])}, measured '
                  f'{fmt_speedup(t["geomean_measured"])} over {t["compared"]} correct and timed.</p>',
                  _table(["task", "from", "claimed", "measured", "status", "reason", "policy", "held up"], rows,
                         "audit" if len(audits) == 1 else f"audit-{a.run_id}")]
    return parts


def render(data: ReportData) -> str:
    rows, calls = data.evaluations, data.llm_calls
    board = leaderboard(rows)
    lead = [[("task", _e(b["task"])), ("num speedup", fmt_speedup(b["best"]["speedup"] if b["best"] else None)),
             ("num peak", _e(fmt_peak(b["best"]["peak_fraction"], b["best"]["bound"])) if b["best"] else "-"),
             ("candidate", _e(b["best"]["candidate_id"]) if b["best"] else "-"),
             ("num evaluations", str(b["evaluations"])), ("num correct", str(b["correct"])),
             ("device", _e(b["best"]["device"]) if b["best"] else "-"),
             ("fingerprint", _e(b["best"]["fingerprint_id"]) if b["best"] else "-")] for b in board]
    failed = [r for r in rows if r["status"] != "ok"]
    by_status = collections.Counter(r["status"] for r in failed)
    by_reason = collections.Counter((r["status"], _reason(r["reason"])) for r in failed)
    reasons = [[("status", _e(s)), ("reason", _e(why)), ("num count", str(n))]
               for (s, why), n in by_reason.most_common(20)]
    tin, tout = sum(c["tokens_in"] for c in calls), sum(c["tokens_out"] for c in calls)
    cost = sum(c["cost_usd"] for c in calls)
    parts = [
        f"<h1>kernelwright report: {_e(data.title)}</h1>",
        f'<p class="note">Generated {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. Speedups are medians '
        "against PyTorch eager, measured on the machine named by each fingerprint; compare only within one. "
        "Peak: the median share of the machine's measured peak, memory or compute, whichever bounds it.</p>",
        f'<p id="totals"><span id="n-evaluations">{len(rows)}</span> evaluations of <span id="n-tasks">{len(board)}'
        f'</span> tasks, <span id="n-correct">{sum(b["correct"] for b in board)}</span> correct, '
        f'<span id="n-failed">{len(failed)}</span> failed; <span id="n-llm-calls">{len(calls)}</span> LLM calls, '
        f'<span id="tokens">{tin} + {tout}</span> tokens, <span id="cost">${cost:.4f}</span>.</p>',
        "<h2>Leaderboard</h2>", _table(["task", "best speedup", "peak", "candidate", "evaluations", "correct", "device",
                                       "fingerprint"], lead, "leaderboard"),
        "<h2>Search progress</h2>", '<p class="note">Best correct speedup after each evaluation of a task.</p>',
        progress_chart(rows),
        "<h2>Distribution of speedups</h2>", distribution_chart(rows),
        "<h2>Failures</h2>",
    ]
    if failed:
        parts += [failure_chart(dict(by_status)), _table(["status", "reason", "count"], reasons, "failures")]
    else:
        parts.append('<p class="note">No failed evaluations.</p>')
    parts += audit_section(data.audits)
    parts.append("<h2>LLM tokens and cost</h2>")
    parts.append(llm_chart(calls) if calls else '<p class="note">No LLM calls (the knob tuner ran).</p>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>kernelwright report: '
            f"{_e(data.title)}</title><style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
