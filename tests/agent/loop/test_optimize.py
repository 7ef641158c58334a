"""The optimization loop end to end: the real openai client over HTTP to a scripted server,
real sandboxed evaluations, a real SQLite store; kills, resumes and budgets."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from agent.cli.display import peak_short, summary_table
from agent.loop.llm import LLMClient, LLMConfig
from agent.loop.optimize import OptimizeConfig, Optimizer
from store import Store
from tasks.spec import load_task
from tests.agent.fake_openai import Step, ok, rate_limited, server_error, slow
from tests.data.candidates import FAST, scale
from tests.data.candidates import slow as slow_softmax

DATA = Path(__file__).resolve().parents[2] / "data"


def fenced(code: str, prose: bool = True) -> str:
    if not prose:
        return f"```python\n{code}\n```"
    return f"Analysis: the loop is memory bound.\nPlan: fuse the passes.\n\n```python\n{code}\n```\nDone."


class Script:
    """Answers like a model that learns: slow kernels at first, fast ones once it sees exemplars."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, request) -> Step:
        self.n += 1
        prompt = request.prompt
        learned = "Above are earlier candidates" in prompt
        if "softmax_small" in prompt:
            code = FAST.replace("import torch\n", f"import torch\n# attempt {self.n}\n", 1) if learned \
                else slow_softmax(prelude=f"# attempt {self.n}\n")
        else:
            code = scale(1, f"fast {self.n}") if learned else scale(8, f"slow {self.n}")
        if self.n == 3:
            return ok("I would rather explain than write code.")  # a format failure
        return ok(fenced(code), tokens_in=1000, tokens_out=400)


@pytest.fixture
def tasks():
    return [load_task(DATA / "softmax_small.py"), load_task(DATA / "scale_small.py")]


def test_optimize_learns_from_the_store(fake_openai, evaluator, tasks, tmp_path):
    fake_openai.push(rate_limited(0.2), server_error(500))
    fake_openai.responder = Script()
    llm = LLMClient(LLMConfig(model="gpt-4o", base_url=fake_openai.url, api_key="k", max_concurrency=2,
                              backoff_base_s=0.05, backoff_max_s=0.2, timeout_s=20))
    store = Store.open(str(tmp_path / "kw.db"), tmp_path / "kw.db")
    run = store.start_run("optimize", {}, "cpu")
    opt = Optimizer(store, evaluator, tasks, OptimizeConfig(strategy="evolve", budget=4, concurrency=2), run, llm=llm)
    summary = opt.run()

    assert summary["stopped_by"] == "budget"
    by_task = {t["task"]: t for t in summary["tasks"]}
    assert by_task["softmax_small"]["evaluated"] == 4 and by_task["scale_small"]["evaluated"] == 4
    best = store.best("softmax_small")[0]
    assert best["candidate_id"] == by_task["softmax_small"]["best_candidate_id"]
    assert "attempt" in store.candidate(best["candidate_id"])["source"]
    assert "softmax_rows" in store.candidate(best["candidate_id"])["source"]  # the fastest correct kernel wins
    # every evaluation has a reward; every produced candidate has its LLM call
    history = store.task_history(store.upsert_task("softmax_small", "test", tasks[0].source, ""), run)
    assert all(h["evaluation"]["reward"] is not None for h in history)
    calls = store.llm_calls(run_id=run)
    statuses = [c["status"] for c in calls]
    assert "format_error" in statuses and statuses.count("ok") >= 8
    assert any(c["attempts"] >= 2 for c in calls)  # the 429 and the 500 were retried
    assert summary["tokens"]["in"] >= 8 * 1000 and summary["cost_usd"] > 0
    # the prompts carried the store's exemplars and their measured speedups
    contrastive = [r.prompt for r in fake_openai.requests if "Above are earlier candidates" in r.prompt]
    assert contrastive and any("slower)" in p or "faster than PyTorch eager" in p for p in contrastive)
    assert any(h["id"] in p for p in contrastive for h in history)
    store.close()


def test_tuner_runs_without_an_llm(evaluator, tmp_path):
    task = load_task(Path(__file__).resolve().parents[3] / "tasks" / "suites" / "cpu" / "softmax.py")
    store = Store.open(str(tmp_path / "kw.db"), tmp_path / "kw.db")
    run = store.start_run("optimize", {}, "cpu")
    summary = Optimizer(store, evaluator, [task], OptimizeConfig(budget=3, tuner="local", confirm=0), run).run()
    (t,) = summary["tasks"]
    assert t["evaluated"] == 3 and t["counts"].get("ok", 0) >= 1
    history = store.task_history(store.upsert_task(task.name, task.meta.suite, task.source, ""), run)
    origins = [h["origin"] for h in history]
    assert origins[0] == "seed" and set(origins[1:]) == {"tuner"}
    assert all(h["knobs"] for h in history)
    assert all(h["parent_id"] == history[0]["id"] for h in history[1:])  # lineage back to the seed
    store.close()


def test_the_leader_is_measured_again_after_the_budget(evaluator, tmp_path):
    task = load_task(Path(__file__).resolve().parents[3] / "tasks" / "suites" / "cpu" / "softmax.py")
    store = Store.open(str(tmp_path / "kw.db"), tmp_path / "kw.db")
    run = store.start_run("optimize", {}, "cpu")
    cfg = OptimizeConfig(budget=3, confirm=2)
    summary = Optimizer(store, evaluator, [task], cfg, run).run()
    (t,) = summary["tasks"]
    tid = store.upsert_task(task.name, task.meta.suite, task.source, "")
    history = store.task_history(tid, run)
    evals = {h["id"]: store.evaluations(h["id"]) for h in history}
    again = [e for es in evals.values() for e in es if e["strategy"] == "confirm"]
    assert t["evaluated"] == 3 and len(history) == 3  # the budget counts candidates
    assert 1 <= len(again) <= 2 and store.run_progress(run)[tid]["evaluated"] == 3 + len(again)
    # the reported figure is the leader's median, and the leader was measured twice unless both
    # re-measurements went to leaders that each lost their lead
    leader = t["best_candidate_id"]
    speeds = sorted(e["speedup"] for e in evals[leader])
    assert t["measurements"] == len(speeds) and t["best_speedup"] == pytest.approx(sum(speeds) / len(speeds))
    peaks = sorted(e["peak_fraction"] for e in evals[leader])  # the evaluator has ceilings (tests/conftest.py)
    assert t["best_peak_fraction"] == pytest.approx(sum(peaks) / len(peaks)) and t["best_bound"] == "memory"
    console = Console(width=200, record=True)
    console.print(summary_table(summary))
    assert peak_short(t["best_peak_fraction"], "memory") in console.export_text()
    assert len(speeds) == 2 or len(again) == 2
    (best,) = store.best(task.name)
    assert (best["candidate_id"], best["measurements"]) == (leader, len(speeds))
    # resuming the finished run measures nothing more
    Optimizer(store, evaluator, [task], cfg, run).run()
    assert store.run_progress(run)[tid]["evaluated"] == 3 + len(again)
    store.close()


def test_budgets_are_hard_stops(fake_openai, evaluator, tasks, tmp_path):
    fake_openai.responder = lambda r: ok(fenced(scale(1, str(time.monotonic()))), tokens_in=1000, tokens_out=1000)
    prices = {"m": (1000.0, 1000.0)}  # $1 + $1 per call of 1000 in, 1000 out
    llm = LLMClient(LLMConfig(model="m", base_url=fake_openai.url, api_key="k", prices=prices, max_tokens=1000,
                              worst_prompt_tokens=1000))
    store = Store.open(str(tmp_path / "kw.db"), tmp_path / "kw.db")
    run = store.start_run("optimize", {}, "cpu")
    cfg = OptimizeConfig(strategy="best-of-n", budget=50, concurrency=1, max_cost_usd=5.0)
    summary = Optimizer(store, evaluator, tasks[1:], cfg, run, llm=llm).run()
    assert summary["stopped_by"] == "max_cost"
    assert summary["cost_usd"] <= 5.0 and summary["llm_calls"] == 2
    run2 = store.start_run("optimize", {}, "cpu")
    cfg = OptimizeConfig(strategy="best-of-n", budget=50, concurrency=1, time_limit_s=0.0)
    assert Optimizer(store, evaluator, tasks[1:], cfg, run2, llm=llm).run()["stopped_by"] == "time_limit"
    store.close()


def _kw(args: list[str], tmp: Path, cache: Path) -> subprocess.Popen:
    env = {**os.environ, "KERNELWRIGHT_CACHE": str(cache), "KERNELWRIGHT_TIMEOUT": "60", "OPENAI_API_KEY": "k"}
    return subprocess.Popen([sys.executable, "-m", "agent.cli", *args], cwd=tmp, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after(proc: subprocess.Popen, db: Path, evaluations: int) -> None:
    """kill -9 a running `kernelwright` once its store holds this many evaluations."""
    deadline = time.monotonic() + 240
    while _evaluated(db) < evaluations and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _evaluated(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db) as c:
            return c.execute("select count(*) from evaluations").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_kill_and_resume_lose_and_repeat_nothing(fake_openai, tmp_path, cache_dir):
    counter = iter(range(10**6))

    def answer(request):
        n = next(counter)
        code = FAST if "softmax_small" in request.prompt else scale(1 + n % 3, f"v{n}")
        return ok(fenced(code.replace("import torch\n", f"import torch\n# variant {n}\n", 1)), delay_s=0.3)

    fake_openai.responder = answer
    db = tmp_path / "kw.db"
    args = ["optimize", "--task", str(DATA / "softmax_small.py"), "--task", str(DATA / "scale_small.py"),
            "--model", "gpt-4o", "--base-url", fake_openai.url, "--budget", "5", "--db", str(db), "--json"]
    kill_after(_kw(args, tmp_path, cache_dir), db, 3)
    before = _evaluated(db)
    assert 3 <= before < 10
    with sqlite3.connect(db) as c:
        assert c.execute("select status from runs").fetchone()[0] == "running"
    resumed = _kw(["optimize", "--resume", "1", "--db", str(db), "--json"], tmp_path, cache_dir)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    summary = json.loads(out)
    assert summary["run_id"] == 1
    assert {t["task"]: t["evaluated"] for t in summary["tasks"]} == {"softmax_small": 5, "scale_small": 5}
    with sqlite3.connect(db) as c:
        assert c.execute("select status from runs").fetchone()[0] == "finished"
        per_candidate = c.execute("select candidate_id, count(*) from evaluations where strategy != 'confirm' "
                                  "group by candidate_id").fetchall()
        again = c.execute("select count(*) from evaluations where strategy = 'confirm'").fetchone()[0]
    # nothing lost, nothing twice (but the re-measurements of each task's leader after its budget)
    assert len(per_candidate) == 10 and all(n == 1 for _, n in per_candidate) and 2 <= again <= 4


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(fake_openai, tmp_path, cache_dir):
    fake_openai.responder = lambda r: slow(30.0)
    db = tmp_path / "kw.db"
    proc = _kw(["optimize", "--task", str(DATA / "scale_small.py"), "--model", "m", "--base-url", fake_openai.url,
                "--db", str(db)], tmp_path, cache_dir)
    deadline = time.monotonic() + 60
    while not fake_openai.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "optimize --resume 1" in err
    with sqlite3.connect(db) as c:
        assert c.execute("select status from runs").fetchone()[0] == "interrupted"
