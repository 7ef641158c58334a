"""The CLI as a user runs it: the real `kernelwright` command in a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.candidates import FAST, slow

DATA = Path(__file__).resolve().parents[2] / "data"
SUITE = Path(__file__).resolve().parents[3] / "tasks" / "suites" / "cpu"


def kw(*args: str, cwd: Path, cache: Path, timeout: int = 300,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERNELWRIGHT_CACHE": str(cache), "KERNELWRIGHT_TIMEOUT": "60", **(env or {})}
    env.pop("KERNELWRIGHT_DB", None)
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def work(tmp_path, cache_dir):
    (tmp_path / "fast.py").write_text(FAST)
    (tmp_path / "wrong.py").write_text(slow(forward="\n        out = torch.empty_like(x)\n"
                                                    "        _lib.softmax_slow(out, x, x.shape[0], 1)\n        return out"))
    return tmp_path, cache_dir


def test_eval_json_is_stored(work):
    tmp, cache = work
    r = kw("eval", str(DATA / "softmax_small.py"), "fast.py", "--json", cwd=tmp, cache=cache)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("status", "reason", "correct", "speedup", "candidate_ms", "reference_ms", "flags", "candidate_id"):
        assert key in out
    assert out["status"] == "ok" and out["correct"] and out["speedup"] > 0
    # the ceilings were measured (quick: tests/conftest.py), stored, and every ok verdict is against them
    assert 0 < out["peak_fraction"] <= 1 and out["bound"] in ("memory", "compute") and out["reference_peak_fraction"] > 0
    text = kw("eval", str(DATA / "softmax_small.py"), "fast.py", cwd=tmp, cache=cache)
    assert text.returncode == 0 and "of peak (" in text.stdout and "-bound; eager " in text.stdout, text.stdout
    from sqlmodel import Session, select

    from store import Store
    from store.models import Ceiling

    with Store.open(str(tmp / "kernelwright.db"), tmp / "kernelwright.db") as store:
        assert store.candidate(out["candidate_id"])["source"] == FAST
        assert store.evaluations(out["candidate_id"])[0]["status"] == "ok"
        assert store.evaluations(out["candidate_id"])[0]["peak_fraction"] == out["peak_fraction"]
        with Session(store.engine) as s:
            (stored,) = s.exec(select(Ceiling)).all()
        assert json.loads(stored.details)["quick"] is True  # measured once, then read from the store
    r = kw("eval", str(DATA / "softmax_small.py"), "wrong.py", "--json", "--db", str(tmp / "other.db"), cwd=tmp, cache=cache)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "incorrect"
    assert (tmp / "other.db").exists()


@pytest.mark.parametrize("task, candidate, message", [
    ("missing.py", "fast.py", "task file not found"),
    ("fast.py", "fast.py", "is not a task"),
    ("TASK", "missing.py", "candidate file not found"),
    ("TASK", "nomodel.py", "defines no class ModelNew"),
    ("TASK", "broken.py", "syntax error"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(work, task, candidate, message):
    tmp, cache = work
    (tmp / "nomodel.py").write_text("import torch\nclass Other: pass\n")
    (tmp / "broken.py").write_text("class ModelNew(:\n")
    task = str(DATA / "softmax_small.py") if task == "TASK" else task
    r = kw("eval", task, candidate, cwd=tmp, cache=cache)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]
    assert not (tmp / "kernelwright.db").exists()


@pytest.mark.parametrize("args, message", [
    (["--strategy", "nope"], "unknown strategy"), (["--tuner", "nope"], "unknown tuner"),
    (["--budget", "0"], "--budget"), (["--task", "missing.py"], "missing.py"),
])
def test_bad_optimize_input_is_one_line_and_leaves_no_store(work, args, message):
    tmp, cache = work
    r = kw("optimize", *args, cwd=tmp, cache=cache)
    assert r.returncode == 2 and r.stderr.startswith("Error:") and message in r.stderr, r.stderr
    assert not (tmp / "kernelwright.db").exists()


def test_bad_db_url(work):
    tmp, cache = work
    r = kw("eval", str(DATA / "softmax_small.py"), "fast.py", "--db", "nosuchdialect://x", cwd=tmp, cache=cache)
    assert r.returncode == 2 and r.stderr.startswith("Error:")


def test_tasks_list(work):
    tmp, cache = work
    r = kw("tasks", "list", "--suite", "cpu", "--json", cwd=tmp, cache=cache)
    assert r.returncode == 0
    names = {t["task"] for t in json.loads(r.stdout)["tasks"]}
    assert {"softmax", "layernorm", "rmsnorm", "gelu_linear", "adam", "causal_attention", "cumsum"} <= names
    assert len(names) >= 8
    assert kw("tasks", "list", "--suite", "nope", cwd=tmp, cache=cache).returncode == 2


TASK = '''
import torch
import torch.nn as nn
n = 64
class Model(nn.Module):
    def forward(self, x):
        return {body}
def get_inputs():
    return [torch.randn(n, 8)]
def get_init_inputs():
    return []
'''


@pytest.mark.parametrize("body, code, expect", [
    ("x.exp()", 0, None),
    ("torch.zeros_like(x) + 1.0", 0, "does not depend on the input"),
    ("x * 1e-9", 0, "zeros would pass"),
    ("x + torch.rand_like(x)", 1, "not deterministic"),
    ("x.nonexistent()", 1, "failed"),
])
def test_tasks_check(work, body, code, expect):
    tmp, cache = work
    (tmp / "t.py").write_text(TASK.format(body=body))
    r = kw("tasks", "check", "t.py", "--json", cwd=tmp, cache=cache)
    assert r.returncode == code, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] == (code == 0)
    if expect:
        assert any(expect in m for m in out["warnings"] + out["errors"]), out
    else:
        assert out["warnings"] == [] and out["errors"] == []


def test_tasks_check_builtin_suite_task(work):
    tmp, cache = work
    r = kw("tasks", "check", str(SUITE / "softmax.py"), cwd=tmp, cache=cache)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok" in r.stdout


def test_compile_cpu(work):
    tmp, cache = work
    r = kw("compile", "fast.py", "--device", "cpu", "--json", cwd=tmp, cache=cache)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["ok"] is True
    (tmp / "bad.py").write_text(FAST.replace("float m = -INFINITY;", "float m = ;"))
    r = kw("compile", "bad.py", "--device", "cpu", "--json", cwd=tmp, cache=cache)
    assert r.returncode == 1 and "error" in json.loads(r.stdout)["error"]


def test_verbose_says_what_the_evaluator_and_sandbox_do_and_leaves_the_verdict_alone(work):
    tmp, cache = work
    quiet = kw("eval", str(DATA / "softmax_small.py"), "fast.py", "--json", "--db", "q.db", cwd=tmp, cache=cache)
    loud = kw("--verbose", "eval", str(DATA / "softmax_small.py"), "fast.py", "--json", "--db", "v.db", cwd=tmp, cache=cache)
    assert quiet.returncode == 0 and loud.returncode == 0, (quiet.stderr, loud.stderr)
    a, b = json.loads(quiet.stdout), json.loads(loud.stdout)  # stdout stays one JSON object
    assert a["status"] == b["status"] == "ok" and a["correct"] == b["correct"]
    for said in ("evaluator.cascade: softmax_small: evaluating", "sandbox.process: worker ", "sandbox.process: build ",
                 "evaluator.candidate: softmax_small: ", "evaluator.cascade: softmax_small: ok in "):
        assert said in loud.stderr, (said, loud.stderr)
    assert "sandbox.process" not in quiet.stderr and "evaluator.cascade" not in quiet.stderr
    bad = kw("eval", str(DATA / "softmax_small.py"), "fast.py", cwd=tmp, cache=cache,
             env={"KERNELWRIGHT_LOG": "loud"})
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "KERNELWRIGHT_LOG" in bad.stderr, bad.stderr
