"""Batch runs on a real local Ray instance (2 CPUs, so 2 jobs at once): cpu-suite tasks tuned
into one run, in a SQLite file and in PostgreSQL; a worker killed mid-job; the CLI once."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from agent.loop import batch
from agent.loop.optimize import OptimizeConfig
from agent.runtime import Options
from store import Store
from store.models import Evaluation
from tasks.spec import load_task
from tests.conftest import CPU_SUITE, FAST_TIMING
from tests.pg import fresh_database

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[dict]:
    """One local Ray instance for the module, as `batch` starts it without --address."""
    resources = batch.connect(None, workers=2)
    yield resources
    batch.shutdown()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "batch.db")  # a file every worker sees, as on a shared filesystem
    else:
        with fresh_database() as url:
            yield url


def _options(db: str, cache_dir: Path, tmp_path: Path) -> Options:
    return Options(db=db, device="cpu", timeout_s=60, cache_dir=cache_dir, workdir=tmp_path / "work",
                   memory_bytes=4 << 30, threads=1, isolate=True)


def _start(db: str, cache_dir: Path, tmp_path: Path, names: list[str], budget: int):
    store = Store.open(db, tmp_path / "unused.db")
    run = store.start_run("batch", {"budget": budget}, "cpu")
    tasks = [load_task(CPU_SUITE / f"{n}.py") for n in names]
    jobs = batch.plan(store, tasks, "evolve")
    cfg = batch.BatchConfig(run_id=run, options=_options(db, cache_dir, tmp_path),
                            optimize=OptimizeConfig(budget=budget, tuner="local", confirm=0), timing=FAST_TIMING)
    return store, run, jobs, cfg


def _per_candidate(store: Store, run: int) -> list[int]:
    """How many times each candidate was evaluated in the run."""
    with Session(store.engine) as s:
        return list(s.execute(select(func.count()).select_from(Evaluation).where(Evaluation.run_id == run)
                              .group_by(Evaluation.candidate_id)).scalars())


def test_a_batch_tunes_every_task_into_one_run(ray_local, db_url, cache_dir, tmp_path):
    assert ray_local["CPU"] == 2
    store, run, jobs, cfg = _start(db_url, cache_dir, tmp_path, ["gelu_linear", "rmsnorm"], budget=3)
    seen: list[int] = []
    summary = batch.run_batch(store, cfg, jobs, on_progress=lambda b: seen.append(sum(
        r["evaluated"] for r in b.progress())))

    assert store.run(run)["status"] == "finished"
    assert summary["run_id"] == run and summary["stopped_by"] == "budget"
    by_task = {t["task"]: t for t in summary["tasks"]}
    assert set(by_task) == {"gelu_linear", "rmsnorm"}
    for name, t in by_task.items():
        assert t["evaluated"] == 3 and sum(t["counts"].values()) == 3, t
        history = store.task_history(next(j.task_id for j in jobs if j.task.name == name), run)
        assert [h["origin"] for h in history][0] == "seed" and len(history) == 3
        best = max((h for h in history if h["evaluation"]["correct"]), key=lambda h: h["evaluation"]["speedup"])
        assert t["best_candidate_id"] == best["id"] and t["best_speedup"] == best["evaluation"]["speedup"]
        assert t["worker"]["pid"] != os.getpid()  # it ran in a Ray worker, not here
    assert sorted(_per_candidate(store, run)) == [1] * 6
    assert seen and seen[-1] == 6 and seen == sorted(seen)  # the driver followed progress in the store
    assert summary["tokens"] == {"in": 0, "out": 0} and summary["llm_calls"] == 0
    store.close()


def test_a_job_that_fails_is_reported_and_the_others_finish(ray_local, cache_dir, tmp_path):
    changed = tmp_path / "softmax_copy.py"
    changed.write_text((CPU_SUITE / "softmax.py").read_text())
    store = Store.open(str(tmp_path / "kw.db"), tmp_path / "kw.db")
    run = store.start_run("batch", {}, "cpu")
    jobs = batch.plan(store, [load_task(changed), load_task(CPU_SUITE / "gelu_linear.py")], "evolve")
    changed.write_text(changed.read_text() + "\n# changed after planning: the worker must refuse it\n")
    cfg = batch.BatchConfig(run_id=run, options=_options(str(tmp_path / "kw.db"), cache_dir, tmp_path),
                            optimize=OptimizeConfig(budget=1), timing=FAST_TIMING, max_retries=1)
    summary = batch.run_batch(store, cfg, jobs)
    bad, good = summary["tasks"]
    assert bad["note"].startswith("failed: TaskError: task softmax_copy: the worker's") and bad["evaluated"] == 0
    assert good["note"] == "" and good["evaluated"] == 1
    assert summary["stopped_by"] == "budget+failed" and store.run(run)["status"] == "failed"
    store.close()


def _worker_pid(job: batch.Job) -> int | None:
    """The Ray worker running this job: Ray titles it ray::<job name>."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title == f"ray::{job.name}":
            return int(proc.name)
    return None


def test_a_killed_worker_is_retried_and_no_evaluation_is_lost_or_counted_twice(ray_local, cache_dir, tmp_path):
    db = os.environ.get("KERNELWRIGHT_TEST_PG_URL")  # PostgreSQL where CI has it, else a SQLite file
    with (fresh_database() if db else contextlib.nullcontext(str(tmp_path / "batch.db"))) as url:
        budget = 4
        store, run, jobs, cfg = _start(url, cache_dir, tmp_path, ["softmax", "cumsum"], budget=budget)
        victim = jobs[0]
        state: dict = {}

        def kill_after_first_evaluation(b: batch.Batch) -> None:
            if "killed" in state:
                return
            done = {r["task"]: r["evaluated"] for r in b.progress()}
            pid = _worker_pid(victim)
            if done[victim.task.name] >= 1 and pid is not None:
                os.kill(pid, signal.SIGKILL)
                state["killed"], state["evaluated_then"] = pid, done[victim.task.name]

        summary = batch.run_batch(store, cfg, jobs, on_progress=kill_after_first_evaluation)

        assert "killed" in state, "the job finished before its worker could be killed"
        assert 1 <= state["evaluated_then"] < budget  # it died mid-job
        by_task = {t["task"]: t for t in summary["tasks"]}
        retried = by_task[victim.task.name]
        assert retried["worker"]["pid"] != state["killed"]  # a new attempt, in another worker, finished it
        assert retried["note"] == "" and store.run(run)["status"] == "finished"
        assert {t: v["evaluated"] for t, v in by_task.items()} == {"softmax": budget, "cumsum": budget}
        # exactly the budget in the store: nothing lost, nothing evaluated twice
        assert sorted(_per_candidate(store, run)) == [1] * (2 * budget)
        store.close()


def test_the_batch_command_runs_tasks_on_the_cluster_and_prints_the_summary(ray_local, cache_dir, tmp_path):
    import ray

    db = os.environ.get("KERNELWRIGHT_TEST_PG_URL")
    with (fresh_database() if db else contextlib.nullcontext(str(tmp_path / "cli.db"))) as url:
        env = {**os.environ, "KERNELWRIGHT_CACHE": str(cache_dir), "KERNELWRIGHT_TIMEOUT": "60",
               "KERNELWRIGHT_WORKDIR": str(tmp_path / "work")}
        args = [sys.executable, "-m", "agent.cli", "batch", "--task", str(CPU_SUITE / "gelu_linear.py"),
                "--task", str(CPU_SUITE / "layernorm.py"), "--budget", "1", "--db", url, "--json",
                "--address", ray.get_runtime_context().gcs_address]
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads(proc.stdout)
        assert {t["task"]: t["evaluated"] for t in summary["tasks"]} == {"gelu_linear": 1, "layernorm": 1}
        assert all(t["best_candidate_id"] and t["counts"] for t in summary["tasks"])
        assert set(summary) >= {"run_id", "tasks", "tokens", "cost_usd", "llm_calls", "stopped_by"}
        with Store.open(url, tmp_path / "unused.db") as st:
            (run,) = st.runs()
            # one candidate per task, each measured again once its budget was spent (--confirm 2)
            assert run["command"] == "batch" and run["status"] == "finished" and run["evaluations"] == 4
            assert all(t["measurements"] == 2 for t in summary["tasks"]), summary
            assert run["id"] == summary["run_id"] and run["config"]["budget"] == 1


def test_bad_input_fails_in_one_line_before_any_ray_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from agent.cli import app  # the package registers every command

    def no_ray(*a, **k):
        raise AssertionError("Ray was started for bad input")

    monkeypatch.setattr(batch, "connect", no_ray)
    monkeypatch.delenv("KERNELWRIGHT_DEBUG", raising=False)
    db = tmp_path / "kw.db"
    for extra, message in ((["--strategy", "nope"], "unknown strategy"), (["--budget", "0"], "--budget"),
                           (["--task", str(tmp_path / "missing.py")], "missing.py"),
                           (["--device", "tpu"], "unknown device"), (["--resume", "7"], "no batch run 7")):
        r = CliRunner().invoke(app, ["batch", "--db", str(db), *extra])
        assert r.exit_code == 2, (extra, r.output)
        assert r.output.startswith("Error: ") and message in r.output and r.output.count("\n") == 1, r.output
    with Store.open(str(db), tmp_path / "unused.db") as st:
        assert st.runs() == []  # nothing was started


def test_an_address_where_nothing_listens_fails_at_once():
    # Ray itself would retry an unreachable cluster for minutes
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        with pytest.raises(ConnectionError, match="nothing answers at 127.0.0.1:1"):
            batch._check_reachable(address)


def test_a_job_finds_built_in_tasks_in_its_own_install_and_refuses_a_changed_task(tmp_path):
    from tasks.spec import TaskError

    builtin = batch.TaskRef.of(load_task(CPU_SUITE / "softmax.py"))
    assert builtin.suite == "cpu"
    moved = batch.TaskRef(builtin.name, "/elsewhere/on/the/driver/softmax.py", builtin.source_hash, "cpu")
    assert moved.load().source_hash == builtin.source_hash  # resolved by name in this install
    user_file = tmp_path / "softmax.py"
    user_file.write_text((CPU_SUITE / "softmax.py").read_text())
    ref = batch.TaskRef.of(load_task(user_file))
    assert ref.suite is None and ref.load().path == user_file
    user_file.write_text(user_file.read_text() + "\n# edited after the driver read it\n")
    with pytest.raises(TaskError, match="differs"):
        ref.load()


def test_each_job_stays_within_its_share_of_the_cost_however_often_it_restarts(tmp_path):
    from tests.store.test_loop_records import CALL
    from tests.store.verdicts import verdict

    store = Store.open(str(tmp_path / "kw.db"), tmp_path / "kw.db")
    task, other = (load_task(CPU_SUITE / f"{n}.py") for n in ("softmax", "cumsum"))
    run = store.start_run("batch", {}, "cpu")
    jobs = batch.plan(store, [task, other], "evolve")
    store.record(jobs[0].task_id, "a", verdict(), origin="llm", run_id=run, llm_call={**CALL, "cost_usd": 0.3})
    store.record(jobs[1].task_id, "b", verdict(), origin="llm", run_id=run, llm_call={**CALL, "cost_usd": 0.7})
    cfg = batch.BatchConfig(run_id=run, options=_options("unused", tmp_path, tmp_path),
                            optimize=OptimizeConfig(), max_cost_per_job=0.5)
    cap = batch._cost_cap(store, cfg, task)
    # the Optimizer starts from the run's spend (1.0) and stops before its own new spend passes
    # cap - 1.0: that is 0.2, what is left of this job's 0.5 after its earlier 0.3
    assert cap - store.run_spend(run)["cost_usd"] == pytest.approx(0.2)
    assert batch._cost_cap(store, dataclasses.replace(cfg, max_cost_per_job=None), task) is None
    store.close()


def test_one_command_runs_a_suite_on_ray_into_postgresql_with_docker_isolated_evaluations(
        ray_local, docker_image, cache_dir, tmp_path):
    """The issue's whole: `batch` on the local cluster, a PostgreSQL store, every evaluation in a
    container (the fingerprint of each stored evaluation names the sandbox that ran it)."""
    import ray

    with fresh_database() as url:
        env = {**os.environ, "KERNELWRIGHT_CACHE": str(cache_dir), "KERNELWRIGHT_TIMEOUT": "60",
               "KERNELWRIGHT_WORKDIR": str(tmp_path / "work")}
        args = [sys.executable, "-m", "agent.cli", "batch", "--task", str(CPU_SUITE / "rmsnorm.py"),
                "--task", str(CPU_SUITE / "cumsum.py"), "--budget", "2", "--db", url, "--json", "--confirm", "0",
                "--sandbox", "docker", "--image", docker_image, "--address", ray.get_runtime_context().gcs_address]
        proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
        summary = json.loads(proc.stdout)
        assert {t["task"]: t["evaluated"] for t in summary["tasks"]} == {"rmsnorm": 2, "cumsum": 2}
        assert all(t["counts"].get("ok") for t in summary["tasks"]), summary
        with Store.open(url, tmp_path / "unused.db") as st:
            (run,) = st.runs()
            assert run["config"]["sandbox"] == "docker" and run["evaluations"] == 4
            evals = [st.evaluation(r["id"]) for r in st.evaluation_rows(run["id"])]
            assert len(evals) == 4
            assert {e["fingerprint"]["sandbox"] for e in evals} == {f"docker {docker_image}"}

