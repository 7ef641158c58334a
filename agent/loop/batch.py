"""Batch runs on Ray: one Ray task per (task, strategy) job, every job recording into one run.

The driver starts the run in the store and submits the jobs; Ray places them (a CPU each,
or the GPUs an evaluation needs) and runs them on its workers. A job opens the store from
its URL, builds its own sandbox and evaluator, and runs the Optimizer for its one task with
the batch's run id. The Optimizer rebuilds its state from the store, so when a worker dies
mid-job Ray runs the job again (`max_retries`) and the new attempt continues where the dead
one stopped: what was committed stays, the evaluation in flight is redone, nothing is
counted twice. The driver learns progress from the store, never from the workers.

Workers must import kernelwright: on one machine they use the driver's Python, where it is
installed; on a cluster, install the same version on every node. Task files the workers
cannot resolve themselves (a built-in suite is found in the worker's own install) must sit
on a shared filesystem; a worker refuses a task whose source differs from the driver's.
The API key is never sent: a worker reads it from its own environment variable
(`LLMSpec.api_key_env`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from agent.loop.llm import LLMSpec
from agent.loop.optimize import OptimizeConfig
from agent.runtime import Options
from tasks.spec import Task, TaskError


@dataclasses.dataclass(frozen=True)
class TaskRef:
    """A task as a worker finds it: a built-in suite's file by name, anything else by path."""

    name: str
    path: str
    source_hash: str
    suite: str | None = None  # a built-in suite: resolved in the worker's own install

    @classmethod
    def of(cls, task: Task) -> TaskRef:
        from tasks.registry import SUITES_DIR

        try:
            rel = Path(task.path).resolve().relative_to(SUITES_DIR)
        except ValueError:
            rel = None
        suite = rel.parts[0] if rel is not None and len(rel.parts) == 2 else None
        return cls(task.name, str(task.path), task.source_hash, suite)

    def load(self) -> Task:
        from tasks.registry import SUITES_DIR
        from tasks.spec import load_task

        path = SUITES_DIR / self.suite / Path(self.path).name if self.suite else Path(self.path)
        task = load_task(path)
        if task.source_hash != self.source_hash:
            raise TaskError(f"task {self.name}: the worker's {path} differs from the driver's "
                            "(install the same kernelwright version on every node)")
        return task


@dataclasses.dataclass(frozen=True)
class Job:
    task: TaskRef
    strategy: str
    task_id: int  # in the store (the driver made the row; the worker's Optimizer finds the same one)

    @property
    def name(self) -> str:
        """Ray's name for the job: shown in `ray list tasks` and as the worker's process title."""
        return f"kw:{self.task.name}:{self.strategy}"


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    run_id: int
    options: Options  # the store URL (or a SQLite path all workers see), device, limits, caches
    optimize: OptimizeConfig  # per job; time_limit_s and max_cost_usd are replaced as below
    llm: LLMSpec | None = None
    deadline: float | None = None  # epoch seconds: jobs stop then (--time-limit, for the whole batch)
    max_cost_per_job: float | None = None  # --max-cost, shared evenly between the jobs
    cpus_per_job: float = 1.0
    gpus_per_eval: float = 0.0  # with --device cuda: GPUs each job holds while it evaluates
    max_retries: int = 3  # attempts after a worker dies
    timing: Any = None  # evaluator.cascade.TimingConfig; None: the default (benchmarks and tests go faster)
    policy: str = "strict"  # evaluator/rules.py POLICIES: every job judges under the run's policy


def run_job(cfg: BatchConfig, job: Job) -> dict[str, Any]:
    """One job, in a Ray worker: optimize one task into the batch run; the task's summary."""
    from agent.loop.optimize import Optimizer
    from agent.runtime import evaluator, open_store

    task = job.task.load()
    store = open_store(cfg.options.db)
    try:
        llm = _llm_client(cfg.llm)
        opt_cfg = dataclasses.replace(cfg.optimize, strategy=job.strategy, time_limit_s=_time_left(cfg.deadline),
                                      max_cost_usd=_cost_cap(store, cfg, task))
        from evaluator.rules import policy

        eval_kw: dict[str, Any] = {"policy": policy(cfg.policy)}
        if cfg.timing is not None:
            eval_kw["timing"] = cfg.timing
        with evaluator(cfg.options, store, **eval_kw) as ev:
            summary = Optimizer(store, ev, [task], opt_cfg, cfg.run_id, llm=llm).run()
    finally:
        store.close()
    (out,) = summary["tasks"]
    return {**out, "strategy": job.strategy, "stopped_by": summary["stopped_by"], "seconds": summary["seconds"],
            "worker": {"node": _node_id(), "pid": os.getpid()}}


def _llm_client(spec: LLMSpec | None) -> Any:
    if spec is None:
        return None
    from agent.loop.llm import LLMClient

    return LLMClient(spec.config(os.environ))


def _time_left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.time())


def _cost_cap(store: Any, cfg: BatchConfig, task: Task) -> float | None:
    """The Optimizer's cap, chosen so this job's own spend (earlier attempts included) stays
    within its share: it compares the run's spend, read when it starts, plus its own new spend
    against the cap. Other jobs' spend after this read only makes the job stop sooner."""
    if cfg.max_cost_per_job is None:
        return None
    task_id = store.upsert_task(task.name, task.meta.suite, task.source, str(task.path))
    run_now = store.run_spend(cfg.run_id)["cost_usd"]
    mine = store.run_spend(cfg.run_id, task_id)["cost_usd"]
    return run_now - mine + cfg.max_cost_per_job


def _node_id() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (a direct call): no node
        return ""


# --- the driver ------------------------------------------------------------------------

def plan(store: Any, tasks: Sequence[Task], strategy: str) -> list[Job]:
    """One job per (task, strategy); the tasks' rows are made now, so progress can find them.

    One strategy per batch: the Optimizer's state for a task is the run's history of that
    task, so two strategies on one task in one run would share (and spend) one budget.
    """
    return [Job(TaskRef.of(task), strategy, store.upsert_task(task.name, task.meta.suite, task.source,
                                                              str(task.path))) for task in tasks]


def connect(address: str | None, workers: int, worker_logs: bool = True) -> dict[str, float]:
    """Join the cluster at `address` ("auto", "ray://HOST:PORT", ...), or start a local Ray
    instance with `workers` CPUs; returns the cluster's resources. worker_logs=False keeps the
    workers' output off this process's stdout (for --json)."""
    import logging

    import ray

    if address:
        _check_reachable(address)
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=worker_logs)
    else:
        ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=worker_logs)
    return dict(ray.cluster_resources())


def _check_reachable(address: str) -> None:
    """Fail fast where nothing listens: Ray itself retries an unreachable GCS for minutes."""
    import socket

    hostport = address.split("://", 1)[-1].rstrip("/")
    if address == "auto" or ":" not in hostport:
        return  # "auto" reads the local cluster's address file, and fails at once without one
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise ConnectionError(f"nothing answers at {hostport} ({getattr(e, 'strerror', None) or e})") from None


def shutdown() -> None:
    import ray

    ray.shutdown()


class Batch:
    """Submits the jobs and follows them to the end: `poll()` while they run, then `summary()`."""

    def __init__(self, store: Any, cfg: BatchConfig, jobs: Sequence[Job]):
        import ray

        self.store, self.cfg, self.jobs = store, cfg, list(jobs)
        self.started = time.monotonic()
        self.results: dict[Job, dict[str, Any]] = {}
        self.failures: dict[Job, str] = {}
        gpus = cfg.gpus_per_eval if cfg.options.device == "cuda" else 0
        remote = ray.remote(num_cpus=cfg.cpus_per_job, num_gpus=gpus, max_retries=cfg.max_retries,
                            retry_exceptions=False)(run_job)
        self._refs = {remote.options(name=job.name).remote(cfg, job): job for job in self.jobs}
        self._pending = list(self._refs)

    @property
    def done(self) -> bool:
        return not self._pending

    def poll(self, timeout_s: float = 1.0) -> None:
        """Wait up to timeout_s for jobs to finish; collect what finished."""
        import ray

        if not self._pending:
            return
        ready, self._pending = ray.wait(self._pending, num_returns=len(self._pending), timeout=timeout_s)
        for ref in ready:
            job = self._refs[ref]
            try:
                self.results[job] = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a job that failed for good (retries spent or its own error)
                self.failures[job] = _first_line(e)

    def cancel(self) -> None:
        import ray

        for ref in self._pending:
            ray.cancel(ref, force=True)

    def run(self, on_progress: Callable[[Batch], None] | None = None, poll_s: float = 1.0) -> dict[str, Any]:
        while not self.done:
            self.poll(poll_s)
            if on_progress:
                on_progress(self)
        return self.summary()

    def progress(self) -> list[dict[str, Any]]:
        """Per job, from the store: candidates evaluated, evaluations by status (re-measurements
        included), the best; with its state."""
        by_task = self.store.run_progress(self.cfg.run_id)
        rows = []
        for job in self.jobs:
            p = by_task.get(job.task_id, {})
            state = ("done" if job in self.results else "failed" if job in self.failures
                     else "running" if p.get("evaluated") else "started or queued")
            rows.append({"task": job.task.name, "strategy": job.strategy, "state": state,
                         "evaluated": p.get("candidates", 0), "counts": p.get("counts", {}),
                         "best_speedup": p.get("best_speedup"), "best_candidate_id": p.get("best_candidate_id"),
                         "measurements": p.get("best_measurements", 0),
                         "best_peak_fraction": p.get("best_peak_fraction"), "best_bound": p.get("best_bound")})
        return rows

    def summary(self) -> dict[str, Any]:
        """What `optimize --json` prints, for the whole batch; failed jobs say why in their note."""
        spend = self.store.run_spend(self.cfg.run_id)
        tasks, reasons = [], set()
        for job, row in zip(self.jobs, self.progress()):
            res = self.results.get(job, {})
            note = res.get("note", "") if job not in self.failures else f"failed: {self.failures[job]}"
            reasons.add("failed" if job in self.failures else res.get("stopped_by", ""))
            tasks.append({"task": row["task"], "strategy": row["strategy"],
                          "best_candidate_id": row["best_candidate_id"], "best_speedup": row["best_speedup"],
                          "measurements": row["measurements"], "best_peak_fraction": row["best_peak_fraction"],
                          "best_bound": row["best_bound"], "evaluated": row["evaluated"], "counts": row["counts"], "note": note,
                          "worker": res.get("worker")})
        return {"run_id": self.cfg.run_id, "tasks": tasks,
                "tokens": {"in": spend["tokens_in"], "out": spend["tokens_out"]},
                "cost_usd": round(spend["cost_usd"], 6), "llm_calls": spend["calls"],
                "stopped_by": "+".join(sorted(r for r in reasons if r)) or "budget",
                "seconds": round(time.monotonic() - self.started, 1)}


def run_batch(store: Any, cfg: BatchConfig, jobs: Sequence[Job],
              on_progress: Callable[[Batch], None] | None = None) -> dict[str, Any]:
    """Run the jobs to the end and close the run: finished, or failed if a job failed for good
    (the others still ran to the end). On Ctrl-C or an error the jobs are cancelled and it
    goes on up: the caller ends the run (agent/runtime.py run_guard); `--resume` goes on."""
    runner = Batch(store, cfg, jobs)
    try:
        summary = runner.run(on_progress)
    except BaseException:  # Ctrl-C or worse: the jobs stop; the caller's run_guard ends the run
        runner.cancel()
        raise
    store.finish_run(cfg.run_id, "failed" if runner.failures else "finished")
    return summary


def _first_line(e: BaseException) -> str:
    """Ray wraps a job's error with its traceback; the cause's own message is what a user needs."""
    cause = getattr(e, "cause", None) or e
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
