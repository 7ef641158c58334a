"""One store made by real optimize runs, shared by the review, report, export and dataset tests.

Run 1 tunes the cpu suite's softmax and rmsnorm seeds (no LLM). Run 2 asks an LLM (the fake
OpenAI server, scripted) for softmax_small with best-of-n: an incorrect kernel and a slow
correct one answer the same initial prompt, then a format failure and its retry, then a fast
kernel. Built once per test process (it takes about 25 s); tests only read it.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from agent.loop.llm import LLMClient, LLMConfig
from agent.loop.optimize import OptimizeConfig, Optimizer
from store import Store
from tasks.spec import load_task
from tests.agent.fake_openai import FakeOpenAI, ok
from tests.data.candidates import FAST, slow

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "tasks" / "suites" / "cpu"
DATA = ROOT / "tests" / "data"
WRONG = slow(forward="\n        out = torch.empty_like(x)\n        _lib.softmax_slow(out, x, x.shape[0], 1)\n"
                     "        return out")
_built: dict[str, Path] = {}


def fenced(code: str) -> str:
    return f"Plan: one pass per row.\n\n```python\n{code}```\n"


def script(request) -> object:
    """Answers by how many requests came before, so every run gets the same store."""
    n = script.calls = getattr(script, "calls", 0) + 1
    answers = {1: fenced(WRONG), 2: fenced(slow(prelude="# slow but right\n")), 3: "No code today, sorry.",
               4: fenced(FAST.replace("import torch\n", "import torch\n# fast, after a retry\n", 1)),
               5: fenced(FAST.replace("import torch\n", "import torch\n# fast again\n", 1))}
    return ok(answers.get(n, fenced(FAST.replace("import torch\n", f"import torch\n# {n}\n", 1))),
              tokens_in=1000 + n, tokens_out=300)


def review_store(evaluator, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The path of the shared SQLite store (built on first use)."""
    if "db" in _built:
        return _built["db"]
    db = tmp_path_factory.mktemp("review-store") / "kw.db"
    with Store.open(str(db), db) as store:
        run = store.start_run("optimize", {"suite": "cpu"}, "cpu")
        tasks = [load_task(SUITE / "softmax.py"), load_task(SUITE / "rmsnorm.py")]
        Optimizer(store, evaluator, tasks, OptimizeConfig(budget=3), run).run()
        store.finish_run(run, "finished")
        script.calls = 0
        with FakeOpenAI(responder=script) as server:
            llm = LLMClient(LLMConfig(model="gpt-4o", base_url=server.url, api_key="k", max_concurrency=1,
                                      backoff_base_s=0.05, backoff_max_s=0.2, timeout_s=20))
            run = store.start_run("optimize", {"model": "gpt-4o"}, "cpu")
            cfg = OptimizeConfig(strategy="best-of-n", budget=4, concurrency=1)
            Optimizer(store, evaluator, [load_task(DATA / "softmax_small.py")], cfg, run, llm=llm).run()
            store.finish_run(run, "finished")
    _built["db"] = db
    return db
