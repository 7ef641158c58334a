"""Tuner quality on the cpu suite: how close the knob tuner gets to the best configuration,
and with how many evaluations, against random search at the same budget.

    python benchmarks/tuner_quality.py [--budget-fraction 0.25] [--repeats 20] [--tasks a,b] [--save F | --load F]

Every configuration of every seed's knob space is measured once (an exhaustive sweep, real
evaluations in the sandbox). Then each search strategy runs over those measurements, asking
for configurations one by one within the budget, so all strategies see the same numbers and
differ only in what they choose to measure. Random search is averaged over `repeats` seeds,
and so is the tuner (its neighbour order and restarts are random).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import knobs, tuner  # noqa: E402
from evaluator.cascade import EvalConfig, Evaluator  # noqa: E402
from sandbox.process import ProcessSandbox, SandboxConfig  # noqa: E402
from tasks.registry import suite_tasks  # noqa: E402


def sweep(ev: Evaluator, task, source: str) -> tuple[dict[tuple, float | None], dict[tuple, float | None]]:
    """Every configuration's median ms (None: failed) and its speedup over PyTorch eager."""
    space = knobs.read_space(source)
    ms, speed = {}, {}
    for c in space.configs():
        v = ev.evaluate(task, knobs.instantiate(source, c))
        ok = v.status.value == "ok"
        ms[tuner.key(c)] = v.candidate.median_ms if ok else None
        speed[tuner.key(c)] = v.speedup if ok else None
        if not ok:
            print(f"    {c}: {v.status.value} {v.reason[:100]}")
    return ms, speed


def search_best(strategy: str, source: str, table: dict[tuple, float | None], budget: int, seed: int) -> tuple | None:
    space = knobs.read_space(source)
    t = tuner.search(strategy, space, knobs.current(source), random.Random(seed))
    for _ in range(budget):
        c = t.next()
        if c is None:
            break
        t.report(c, table[tuner.key(c)])
    best, _ = t.best()
    return None if best is None else tuner.key(best)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget-fraction", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--tasks", default="")
    ap.add_argument("--save", help="write the sweeps' measurements to this JSON file")
    ap.add_argument("--load", help="reuse the measurements a --save wrote (compare strategies, measure nothing)")
    args = ap.parse_args()
    rows = []
    saved = json.loads(Path(args.load).read_text()) if args.load else {}
    sweeps: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as cache:
        sb = ProcessSandbox(SandboxConfig.partitioned(Path(cache)))  # as the CLI: timing cores apart
        ev = Evaluator(sb, EvalConfig())
        try:
            for task in suite_tasks("cpu"):
                if args.tasks and task.name not in args.tasks.split(","):
                    continue
                source = task.seed_paths()[0].read_text()
                size = knobs.read_space(source).size
                if task.name in saved:
                    ms, speed = ({tuple(map(tuple, k)): v for k, v in saved[task.name][part]} for part in ("ms", "speed"))
                else:
                    print(f"{task.name}: sweeping {size} configurations", flush=True)
                    ms, speed = sweep(ev, task, source)
                sweeps[task.name] = {"ms": list(ms.items()), "speed": list(speed.items())}
                measured = {k: v for k, v in ms.items() if v is not None}
                best_key = min(measured, key=measured.get)
                budget = max(2, math.ceil(args.budget_fraction * size))

                def quality(strategy: str) -> tuple[float, float]:
                    ratios, hits = [], 0
                    for seed in range(args.repeats):
                        k = search_best(strategy, source, ms, budget, seed)
                        r = measured[best_key] / ms[k] if k is not None and ms[k] else 0.0
                        ratios.append(r)  # 1.0: found the best; 0.9: 10% slower than the best
                        hits += r >= 0.95
                    return statistics.mean(ratios), hits / args.repeats

                tq, th = quality("pattern")  # the default tuner
                lq, _ = quality("local")
                rq, rh = quality("random")
                rows.append((task.name, size, budget, speed[best_key], tq, th, rq, rh, lq))
        finally:
            ev.close()
            sb.close()
    if args.save:
        Path(args.save).write_text(json.dumps(sweeps))
    print()
    print(f"{'task':18s} {'space':>5s} {'budget':>6s} {'best vs eager':>13s} {'tuner':>7s} {'within5%':>8s} "
          f"{'random':>7s} {'within5%':>8s} {'local':>7s}")
    for name, size, budget, sp, tq, th, rq, rh, lq in rows:
        print(f"{name:18s} {size:5d} {budget:6d} {sp:12.2f}x {tq:7.3f} {th:8.0%} {rq:7.3f} {rh:8.0%} {lq:7.3f}")
    print("(tuner = pattern search, the default; random; local = hill climbing: the best found as a fraction "
          "of the exhaustive best's speed, mean over seeds)")
    better = sum(1 for r in rows if r[4] > r[6])
    print(f"tuner better than random on {better} of {len(rows)} tasks; "
          f"tuner within 5% of the exhaustive best (mean over seeds) on {sum(1 for r in rows if r[4] >= 0.95)} tasks")
    geo = math.exp(statistics.mean(math.log(r[3]) for r in rows)) if rows else float("nan")
    print(f"geometric-mean speedup over PyTorch eager (exhaustive best per task): {geo:.2f}x")


if __name__ == "__main__":
    main()
