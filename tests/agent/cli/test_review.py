"""`kernelwright best`, `show` and `diff` on a store made by real optimize runs."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app  # the package registers every command
from agent.loop.optimize import OptimizeConfig
from store import Store


def kw(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def history(store: Store, task: str) -> list[dict]:
    (tid,) = [t["id"] for t in store.tasks() if t["name"] == task]
    return store.task_history(tid)


def test_best_json_is_the_leaderboard(db: Path, store: Store):
    code, out = kw("best", "--db", str(db), "--json")
    assert code == 0, out
    rows = json.loads(out)["tasks"]
    expected = {r["task"]: r for r in store.best()}
    assert sorted(r["task"] for r in rows) == sorted(expected) == ["rmsnorm", "softmax", "softmax_small"]
    for r in rows:
        want = expected[r["task"]]
        assert (r["speedup"], r["candidate_id"], r["fingerprint_id"], r["evaluation_id"]) == (
            want["speedup"], want["candidate_id"], want["fingerprint_id"], want["evaluation_id"])
        assert r["device"] == "cpu" and r["created_at"]
        assert 0 < r["peak_fraction"] <= 1 and r["peak_fraction"] == want["peak_fraction"] and r["bound"] == want["bound"]
        assert r["strategy"] == ("best-of-n" if r["task"] == "softmax_small" else f"tune:{OptimizeConfig().tuner}")
    code, out = kw("best", "--db", str(db), "--json", "--task", "rmsnorm")
    assert [r["task"] for r in json.loads(out)["tasks"]] == ["rmsnorm"]
    code, out = kw("best", "--db", str(db), "--json", "--device", "cuda")
    assert json.loads(out) == {"tasks": []}


def test_best_table_from_the_real_command(db: Path, store: Store, tmp_path: Path):
    env = {**os.environ, "COLUMNS": "160"}
    r = subprocess.run([sys.executable, "-m", "agent.cli", "best", "--db", str(db)], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    for row in store.best():
        line = next(ln for ln in r.stdout.splitlines() if row["candidate_id"] in ln)
        assert row["task"] in line and f"{row['speedup']:.2f}x" in line
        assert f"{row['peak_fraction']:.0%} {'mem' if row['bound'] == 'memory' else 'fp32'}" in line
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "best", "--db", str(db), "--device", "tpu"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "Error: unknown device 'tpu' (use cpu or cuda)"


def test_show_a_tuned_kernel_back_to_its_seed(db: Path, store: Store):
    best = store.best("rmsnorm")[0]
    code, out = kw("show", best["candidate_id"][:6], "--db", str(db), "--json")
    assert code == 0, out
    shown = json.loads(out)
    cand = store.candidate(best["candidate_id"])
    assert shown["candidate"]["source"] == cand["source"] and shown["candidate"]["knobs"] == cand["knobs"]
    e = shown["evaluations"][0]  # and a re-measurement, if it led its task after the budget
    assert all(x["status"] == "ok" for x in shown["evaluations"]) and len(shown["evaluations"]) == best["measurements"]
    assert statistics.median(x["speedup"] for x in shown["evaluations"]) == pytest.approx(best["speedup"])
    assert e["candidate_spread_ms"] is not None and e["timings"]["candidate_ms"]
    assert any(t["name"].startswith("variant") for t in e["trials"])
    assert all("max_abs" in err for t in e["trials"] for err in t["errors"])
    lineage = shown["lineage"]
    assert lineage[0]["id"] == best["candidate_id"] and lineage[-1]["origin"] == "seed"
    assert lineage[-1]["parent_id"] is None
    assert [c["speedup"] for c in lineage] == [(store.evaluations(c["id"])[-1]["speedup"]) for c in lineage]
    assert shown["llm_calls"] == []

    code, out = kw("show", best["candidate_id"], "--db", str(db))
    out = " ".join(out.split())  # rich wraps at the terminal's width
    assert code == 0
    assert "seed kernel" in out and "lineage" in out and "extern \"C\"" in out
    assert f"{best['speedup']:.2f}x" in out and "default/heavy" in out  # the verdict and its trials
    assert f"peak {e['peak_fraction']:.0%} of peak ({e['bound']}-bound; eager {e['reference_peak_fraction']:.0%})" in out


def test_show_an_llm_kernel_with_the_prompt_that_made_it(db: Path, store: Store):
    retried = [h for h in history(store, "softmax_small") if "after a retry" in h["source"]]
    (cand,) = retried
    code, out = kw("show", cand["id"], "--db", str(db), "--json")
    shown = json.loads(out)
    (call,) = shown["llm_calls"]
    assert call["kind"] == "format_retry" and "after a retry" in call["response"]
    assert [m["role"] for m in call["messages"]] == ["system", "user", "assistant", "user"]
    assert shown["lineage"] == [{"id": cand["id"], "origin": "llm", "parent_id": None, "knobs": None,
                                 "status": "ok", "speedup": cand["evaluation"]["speedup"]}]
    code, out = kw("show", cand["id"], "--db", str(db))
    words = " ".join(out.split())  # rich wraps at the terminal's width
    assert f"first prompt: LLM call {call['id']} (format_retry)" in words
    assert "No code today, sorry." in words  # the failed answer the retry prompt quotes


def test_diff_shows_the_knob_change_and_the_speedup_change(db: Path, store: Store):
    seed, child = history(store, "rmsnorm")[:2]
    code, out = kw("diff", seed["id"], child["id"], "--db", str(db), "--json")
    assert code == 0, out
    d = json.loads(out)
    changed = [k for k in child["knobs"] if child["knobs"][k] != seed["knobs"][k]]
    assert changed and all(f"+{k} = {child['knobs'][k]}" in d["diff"] for k in changed)
    assert all(f"-{k} = {seed['knobs'][k]}" in d["diff"] for k in changed)
    a, b = seed["evaluation"]["speedup"], child["evaluation"]["speedup"]
    assert d["speedup_change"] == pytest.approx(b - a) and d["speedup_ratio"] == pytest.approx(b / a)
    assert d["same_task"] and d["same_fingerprint"] and (d["a"]["id"], d["b"]["id"]) == (seed["id"], child["id"])
    code, out = kw("diff", seed["id"], child["id"], "--db", str(db))
    out = " ".join(out.split())
    assert f"speedup {a:.2f}x -> {b:.2f}x ({b - a:+.2f}, {b / a:.2f}x)" in out


@pytest.mark.parametrize("args, message", [
    (["show", "abcdef123456"], "Error: no candidate 'abcdef123456' in the store"),
    (["show", "ab"], "Error: a candidate id prefix needs at least 4 characters, got 'ab'"),
    (["diff", "abcdef123456", "abcdef"], "Error: no candidate 'abcdef123456' in the store"),
])
def test_unknown_candidates_are_one_line_and_exit_2(db: Path, args: list[str], message: str):
    code, out = kw(*args, "--db", str(db))
    assert code == 2 and out.strip() == message
