"""Scale-out figures: evaluations per minute of a batch on the cpu suite, with 1 and 2 local
Ray workers, and their ratio.

    python benchmarks/scale.py [--budget 3] [--workers 1,2] [--tasks softmax,gelu_linear] [--fast-timing]

Each worker count gets the same workload from scratch: a fresh local Ray instance, a fresh
SQLite store and a fresh compile cache, so both sides pay for every compile. The clock runs
from submitting the jobs to the last result (Ray's own start-up is printed apart); it includes
each job's sandbox start and reference timing, as in a real batch. Jobs hold one CPU and
evaluate with one thread. A machine with N cores gives at most N times: timing runs compete
for cores and memory bandwidth, and evaluations of one job run one at a time.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.loop import batch
from agent.loop.optimize import OptimizeConfig
from agent.runtime import Options
from store import Store
from tasks.registry import suite_tasks


def measure(workers: int, task_names: list[str] | None, budget: int, fast: bool) -> dict:
    tasks = [t for t in suite_tasks("cpu") if not task_names or t.name in task_names]
    with tempfile.TemporaryDirectory(prefix=f"kw-scale-{workers}-") as tmp:
        db = str(Path(tmp) / "scale.db")
        store = Store.open(db, Path(db))
        run = store.start_run("batch", {"benchmark": "scale", "workers": workers, "budget": budget}, "cpu")
        jobs = batch.plan(store, tasks, "evolve")
        timing = None
        if fast:
            from evaluator.cascade import TimingConfig

            timing = TimingConfig(warmup=2, min_iters=5, target_s=0.05, round_ms=5.0, min_rounds=3)
        opts = Options(db=db, device="cpu", timeout_s=120, cache_dir=Path(tmp) / "cache", workdir=Path(tmp) / "work",
                       memory_bytes=4 << 30, threads=1, isolate=True)
        cfg = batch.BatchConfig(run_id=run, options=opts, optimize=OptimizeConfig(budget=budget, tuner="local"),
                                timing=timing)
        t0 = time.monotonic()
        batch.connect(None, workers, worker_logs=False)
        ray_s = time.monotonic() - t0
        try:
            t1 = time.monotonic()
            summary = batch.run_batch(store, cfg, jobs)
            seconds = time.monotonic() - t1
        finally:
            batch.shutdown()
        evaluated = sum(t["evaluated"] for t in summary["tasks"])
        failed = [t["task"] for t in summary["tasks"] if t["note"].startswith("failed:")]
        store.close()
    return {"workers": workers, "jobs": len(jobs), "evaluations": evaluated, "seconds": seconds,
            "per_minute": evaluated / seconds * 60, "ray_start_s": ray_s, "failed": failed}


def docker_overhead() -> None:
    """--- Docker sandbox overhead: the other half of this benchmark, kept in its own script. ---"""
    print("docker: see benchmarks/docker_overhead.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=3, help="evaluations per task")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--tasks", default="", help="cpu-suite task names (default: all)")
    ap.add_argument("--fast-timing", action="store_true", help="short timing loops (as the tests use)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    names = [n for n in args.tasks.split(",") if n] or None
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"cpu suite{' (' + ','.join(names) + ')' if names else ''}, budget {args.budget} per task, "
          f"{'fast' if args.fast_timing else 'default'} timing")
    results = []
    for n in counts:
        r = measure(n, names, args.budget, args.fast_timing)
        results.append(r)
        print(f"{n} worker{'s' if n > 1 else ' '}: {r['evaluations']} evaluations in {r['seconds']:.1f} s = "
              f"{r['per_minute']:.1f}/min  ({r['jobs']} jobs; Ray start {r['ray_start_s']:.1f} s, not counted)"
              + (f"  FAILED: {', '.join(r['failed'])}" if r["failed"] else ""))
    if len(results) >= 2:
        base = results[0]
        for r in results[1:]:
            print(f"ratio {r['workers']}/{base['workers']} workers: {r['per_minute'] / base['per_minute']:.2f}x "
                  f"(ideal {r['workers'] / base['workers']:.0f}x)")
    docker_overhead()


if __name__ == "__main__":
    main()
