"""`kernelwright optimize --suite kernelbench`: real KernelBench-layout level-1 tasks (the fixture
checkout), scaled, judged under the kernelbench policy, with the scripted model over real HTTP."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.agent.fake_openai import ok
from tests.agent.kernelbench_answers import lazy_answer
from tests.agent.loop.test_optimize import _kw

CHECKOUT = Path(__file__).resolve().parents[2] / "data" / "kernelbench_current"


def test_optimize_a_kernelbench_level_under_each_policy(fake_openai, tmp_path, cache_dir):
    fake_openai.responder = lambda r: ok(lazy_answer(r.prompt))
    db = tmp_path / "kw.db"
    base = ["optimize", "--suite", "kernelbench", "--kernelbench", str(CHECKOUT), "--level", "1", "--scale", "0.125",
            "--model", "m", "--base-url", fake_openai.url, "--budget", "1", "--confirm", "0", "--db", str(db), "--json"]
    runs = {}
    for policy in ("kernelbench", "strict"):
        proc = _kw([*base, "--policy", policy], tmp_path, cache_dir)
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        runs[policy] = json.loads(out)
    tasks = {t["task"] for t in runs["kernelbench"]["tasks"]}
    assert len(tasks) >= 3 and all(t.startswith("kb_l1_") for t in tasks), tasks
    prompts = [r.prompt for r in fake_openai.requests]
    assert any("Rules of the kernelbench policy" in p for p in prompts)
    assert any("Rules of the strict policy" in p for p in prompts)
    with sqlite3.connect(db) as c:
        rows = c.execute("select e.policy, e.status, e.reason, e.flags, e.torch_ops, t.source from evaluations e "
                         "join candidates k on k.id = e.candidate_id join tasks t on t.id = k.task_id").fetchall()
    by_policy: dict[str, list] = {}
    for policy, status, reason, flags, torch_ops, source in rows:
        by_policy.setdefault(policy, []).append((status, reason, json.loads(flags), json.loads(torch_ops or "[]")))
        assert "scaled by 0.125" in source  # the scale is recorded with the task
    # the same lazy answers: ok under kernelbench (PyTorch did the work: recorded, flagged), rejected under strict
    kb = by_policy["kernelbench"]
    assert all(s == "ok" for s, *_ in kb), kb
    assert all(ops for *_, ops in kb)
    assert all(s == "rejected" and r.startswith("pytorch_compute") for s, r, *_ in by_policy["strict"])
    best = _kw(["best", "--policy", "kernelbench", "--db", str(db), "--json"], tmp_path, cache_dir)
    out, err = best.communicate(timeout=120)
    assert best.returncode == 0, err
    assert {r["task"] for r in json.loads(out)["tasks"]} == tasks
    strict = _kw(["best", "--db", str(db), "--json"], tmp_path, cache_dir)
    assert json.loads(strict.communicate(timeout=120)[0])["tasks"] == []  # policies never compete
