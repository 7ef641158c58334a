"""A store of the cpu suite's layer kernels and the package exported from it, shared by the
custom-op, apply and end-to-end tests.

The seeds of softmax, rmsnorm, layernorm, gelu_linear and causal_attention are each evaluated
once for real (the session's sandbox: compile, checks, timing; no ceilings, so a machine too busy
to measure its own peak rejects nothing) and recorded as `kernelwright eval` records them; the
package is exported with `--min-speedup 0`, so that every kernel ships whatever this machine's
timing said (the tests are about the package, not the speedups).
Built once per test process (about 15 s); tests only read them.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app  # the package registers every command
from evaluator.cascade import EvalConfig, Evaluator
from store import Store
from tasks.spec import load_task
from tests.conftest import FAST_TIMING

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "tasks" / "suites" / "cpu"
TASKS = ("softmax", "rmsnorm", "layernorm", "gelu_linear", "causal_attention")
PACKAGE = "kwe2e"  # one name per test process: the package is imported in it
_built: dict[str, Path] = {}


def kernels_store(sandbox, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "db" in _built:
        return _built["db"]
    db = tmp_path_factory.mktemp("kernels-store") / "kw.db"
    evaluator = Evaluator(sandbox, EvalConfig(timeout_s=60, timing=FAST_TIMING))
    with Store.open(str(db), db) as store, contextlib.closing(evaluator):
        run = store.start_run("eval", {"suite": "cpu", "tasks": list(TASKS)}, "cpu")
        for name in TASKS:
            task = load_task(SUITE / f"{name}.py")
            source = task.seed_paths()[0].read_text()
            verdict = evaluator.evaluate(task, source)
            assert verdict.status.value == "ok", f"{name}: {verdict.status.value} {verdict.reason}"
            task_id = store.upsert_task(task.name, task.meta.suite, task.source, str(task.path))
            store.record(task_id, source, verdict.record(), origin="seed", run_id=run)
        store.finish_run(run, "finished")
    _built["db"] = db
    return db


def exported_package(sandbox, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project folder of the package exported from `kernels_store` (every kernel shipped)."""
    if "package" in _built:
        return _built["package"]
    db = kernels_store(sandbox, tmp_path_factory)
    out = tmp_path_factory.mktemp("kernels-export") / "project"
    result = CliRunner().invoke(app, ["export", "--out", str(out), "--name", PACKAGE, "--min-speedup", "0",
                                      "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    _built["package"] = out
    return out


def loaded_package(sandbox, tmp_path_factory: pytest.TempPathFactory):
    """The exported package, imported into this process (its builds in a temporary cache)."""
    import os

    from agent.outputs.e2e import load_package

    os.environ.setdefault(f"{PACKAGE.upper()}_CACHE", str(tmp_path_factory.mktemp("package-cache")))
    return load_package(exported_package(sandbox, tmp_path_factory))
