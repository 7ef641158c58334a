"""`kernelwright optimize` with an LLM, end to end, where no model endpoint is reachable.

    python benchmarks/optimize_scripted_llm.py [--budget 6] [--tasks softmax,rmsnorm]

The test suite's scripted OpenAI-compatible server (tests/agent/fake_openai.py) plays the
model on 127.0.0.1; everything else is the real thing: the openai client over HTTP, the CLI,
the sandbox, the evaluator and a fresh SQLite store. The scripted "model" answers with the
task's seed kernel at a knob configuration of its own choosing, wrapped in prose; it opens
with a 429 and a 500 (retried) and one answer without code (stored as a format failure).
Prints the CLI's summary table and what the store holds of the LLM calls.
"""
from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.loop import knobs
from tasks.registry import suite_tasks
from tests.agent.fake_openai import FakeOpenAI, Request, Step, ok, rate_limited, server_error


class ScriptedModel:
    def __init__(self, tasks: list, seed: int = 0) -> None:
        self.tasks, self.rng, self.n = tasks, random.Random(seed), 0

    def __call__(self, request: Request) -> Step:
        self.n += 1
        if self.n == 2:
            return ok("I would first profile the kernel; no code this time.")
        prompt = request.prompt
        task = next((t for t in self.tasks if t.name in prompt), self.tasks[0])
        source = task.seed_paths()[0].read_text()
        config = self.rng.choice(list(knobs.read_space(source).configs()))
        code = knobs.instantiate(source, config)
        return ok(f"Analysis: memory bound.\nPlan: try {config}.\n\n```python\n{code}\n```\n",
                  tokens_in=len(prompt) // 4, tokens_out=len(code) // 4)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=int, default=6)
    ap.add_argument("--tasks", default="softmax,rmsnorm")
    args = ap.parse_args()
    names = args.tasks.split(",")
    tasks = [t for t in suite_tasks("cpu") if t.name in names]
    with tempfile.TemporaryDirectory() as tmp, FakeOpenAI(responder=ScriptedModel(tasks)) as server:
        server.push(rate_limited(0.5), server_error(500))
        db = Path(tmp) / "kw.db"
        cmd = [sys.executable, "-m", "agent.cli", "optimize", "--model", "gpt-4o-mini", "--base-url", server.url,
               "--budget", str(args.budget), "--db", str(db)]
        for t in tasks:
            cmd += ["--task", str(t.path)]
        env = {**os.environ, "OPENAI_API_KEY": "sk-scripted", "COLUMNS": "110"}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        print(proc.stdout)
        if proc.returncode:
            print(proc.stderr[-2000:])
            sys.exit(proc.returncode)
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT status, COUNT(*), SUM(attempts), SUM(tokens_in), SUM(tokens_out), "
                                "ROUND(SUM(cost_usd), 6) FROM llm_calls GROUP BY status").fetchall()
        print("llm_calls in the store (status, calls, attempts, tokens in, tokens out, cost USD):")
        for r in rows:
            print("  ", r)
        print(f"HTTP requests the server saw: {len(server.requests)}")


if __name__ == "__main__":
    main()
