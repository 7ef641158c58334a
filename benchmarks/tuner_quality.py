"""Tuner quality on the cpu suite: how close the knob tuner gets to the best configuration,
and with how many evaluations, against random search at the same budget.

    python benchmarks/tuner_quality.py [--rounds 3] [--budget-fraction 0.25] [--repeats 40]
                                       [--tasks a,b] [--save F | --load F]

Every configuration of every seed's knob space is measured `rounds` times (an exhaustive
sweep, real evaluations in the sandbox; round r measures every configuration once, in a fresh
random order, so drift of the machine over minutes touches all configurations alike). A
configuration's true time is the median of its rounds.

Then each search strategy runs over those measurements as it would in real use: each
configuration it asks for answers with ONE of its measured samples, drawn at random, so a
strategy sees the same noise a real run sees. What a strategy returns is scored by the true
(median) time of the configuration it picked, against the best true time of the space: the
best of single noisy samples would reward luck, not search. Random search and the tuner are
averaged over `repeats` seeds. Also printed per task: the measurement noise (median over
configurations of the rounds' range over their median) and the spread of the space (how much
slower its median configuration is than the best).
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

from agent.loop import knobs, tuner
from evaluator.cascade import EvalConfig, Evaluator
from sandbox.process import ProcessSandbox, SandboxConfig
from tasks.registry import suite_tasks

Samples = dict[tuple, list]  # config key -> [(candidate ms, reference ms) or None per round]


def sweep(ev: Evaluator, task, source: str, rounds: int, rng: random.Random) -> Samples:
    configs = list(knobs.read_space(source).configs())
    out: Samples = {tuner.key(c): [] for c in configs}
    for r in range(rounds):
        print(f"  {task.name}: round {r + 1}/{rounds} of {len(configs)} configurations", flush=True)
        for c in rng.sample(configs, len(configs)):
            v = ev.evaluate(task, knobs.instantiate(source, c))
            ok = v.status.value == "ok"
            out[tuner.key(c)].append((v.candidate.median_ms, v.reference.median_ms) if ok else None)
            if not ok:
                print(f"    {c}: {v.status.value} {v.reason[:100]}")
    return out


def true_ms(samples: Samples) -> dict[tuple, float]:
    """Median candidate time per configuration that never failed."""
    return {k: statistics.median(s[0] for s in v) for k, v in samples.items() if v and all(v)}


def search_pick(strategy: str, source: str, samples: Samples, budget: int, confirm: int, seed: int) -> tuple | None:
    """Run a strategy for `budget - confirm` evaluations, then re-measure its leader with up to
    `confirm` more (tuner.to_confirm); every evaluation answers with one sample drawn at random.
    The pick: the configuration with the lowest median of what the search saw."""
    rng = random.Random(seed)
    t = tuner.search(strategy, knobs.read_space(source), knobs.current(source), random.Random(seed))
    seen: dict[tuple, list[float]] = {}

    def measure(k: tuple) -> float | None:
        s = rng.choice(samples[k])
        if s is None:
            seen[k] = []  # failed: never the pick, even if it passed before
        else:
            seen.setdefault(k, []).append(s[0])
        return None if s is None else s[0]

    for _ in range(budget - confirm):
        c = t.next()
        if c is None:
            break
        t.report(c, measure(tuner.key(c)))
    for _ in range(confirm):
        k = tuner.to_confirm(seen)
        if k is None:
            break
        measure(k)
    return tuner.leader(seen)


def quality(strategy: str, source: str, samples: Samples, budget: int, confirm: int,
            repeats: int) -> tuple[float, float]:
    """Mean over seeds of best-true-time / picked-true-time (1.0: found the best), and the share
    of seeds that picked a configuration within 5% of the best."""
    truth = true_ms(samples)
    best = min(truth.values())
    ratios = []
    for seed in range(repeats):
        k = search_pick(strategy, source, samples, budget, confirm, seed)
        ratios.append(best / truth[k] if k in truth else 0.0)
    return statistics.mean(ratios), sum(r >= 1 / 1.05 for r in ratios) / repeats


def load(path: str) -> dict[str, Samples]:
    raw = json.loads(Path(path).read_text())
    return {task: {tuple(map(tuple, k)): [tuple(s) if s else None for s in v] for k, v in rows}
            for task, rows in raw.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget-fraction", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--confirm", type=int, default=1,
                    help="of each budget, evaluations kept to re-measure the leader (none when the budget is under 4)")
    ap.add_argument("--tasks", default="")
    ap.add_argument("--save", help="write the sweeps' measurements to this JSON file")
    ap.add_argument("--load", help="reuse the measurements a --save wrote (compare strategies, measure nothing)")
    args = ap.parse_args()
    saved = load(args.load) if args.load else {}
    sweeps: dict[str, Samples] = {}
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        sb = ProcessSandbox(SandboxConfig.partitioned(Path(cache)))  # as the CLI: timing cores apart
        ev = Evaluator(sb, EvalConfig())
        try:
            for task in suite_tasks("cpu"):
                if args.tasks and task.name not in args.tasks.split(","):
                    continue
                source = task.seed_paths()[0].read_text()
                size = knobs.read_space(source).size
                samples = saved.get(task.name) or sweep(ev, task, source, args.rounds, random.Random(task.name))
                sweeps[task.name] = samples
                truth = true_ms(samples)
                best_key = min(truth, key=truth.get)
                ref = statistics.median(s[1] for v in samples.values() for s in v if s)
                noise = statistics.median((max(x[0] for x in v) - min(x[0] for x in v)) / truth[k]
                                          for k, v in samples.items() if k in truth)
                spread = statistics.median(truth.values()) / truth[best_key]
                budget = max(2, math.ceil(args.budget_fraction * size))
                confirm = args.confirm if budget >= 4 else 0
                q = {(s, c): quality(s, source, samples, budget, c, args.repeats)
                     for s in ("pattern", "random", "local") for c in {0, confirm}}
                q["tuner"], q["random"] = q["pattern", confirm], q["random", 0]
                # the ceiling at this noise: every configuration measured once, the fastest sample taken
                q["ceiling"] = quality("exhaustive", source, samples, size, 0, args.repeats)
                rows.append((task.name, size, budget, ref / truth[best_key], noise, spread, q))
        finally:
            ev.close()
            sb.close()
    if args.save:
        Path(args.save).write_text(json.dumps({t: [[k, v] for k, v in s.items()] for t, s in sweeps.items()}))
    print()
    print(f"{'task':18s} {'space':>5s} {'budget':>6s} {'best/eager':>10s} {'noise':>6s} {'spread':>6s} "
          f"{'tuner':>6s} {'within5%':>8s} {'random':>6s} {'within5%':>8s} | {'pattern':>7s} {'local':>6s} {'random':>6s} "
          f"{'all once':>8s}")
    for name, size, budget, sp, noise, spread, q in rows:
        (tq, th), (rq, rh) = q["tuner"], q["random"]
        print(f"{name:18s} {size:5d} {budget:6d} {sp:9.2f}x {noise:6.1%} {spread:5.2f}x "
              f"{tq:6.3f} {th:8.0%} {rq:6.3f} {rh:8.0%} | {q['pattern', 0][0]:7.3f} {q['local', 0][0]:6.3f} "
              f"{q['random', args.confirm if budget >= 4 else 0][0]:6.3f} {q['ceiling'][0]:8.3f}")
    print(f"(each: the picked configuration's median time as a fraction of the best median, mean over {args.repeats} "
          f"seeds; within5%: the share of seeds within 5%. tuner = pattern search, the default, keeping {args.confirm} "
          "evaluation(s) of its budget to re-measure its leader when the budget is 4 or more; random = random search, "
          "all budget to search. After |: every budget to search (pattern, local = hill climbing), and random search "
          "with the tuner's re-measurement; all once: every configuration measured once and the fastest "
          "sample taken: what a search of single measurements reaches with 4x the budget at this noise)")
    better = sum(1 for r in rows if r[6]["tuner"][0] > r[6]["random"][0])
    near = sum(1 for r in rows if r[6]["tuner"][0] >= 1 / 1.05)
    print(f"tuner better than random on {better} of {len(rows)} tasks; "
          f"tuner within 5% of the exhaustive best (mean over seeds) on {near} of {len(rows)} tasks")
    ceiling = sum(1 for r in rows if r[6]["ceiling"][0] >= 1 / 1.05)
    print(f"measuring every configuration once (4x the budget) lands within 5% on {ceiling} of {len(rows)} tasks")
    geo = math.exp(statistics.mean(math.log(r[3]) for r in rows)) if rows else float("nan")
    print(f"geometric-mean speedup over PyTorch eager (exhaustive best per task, medians): {geo:.2f}x")


if __name__ == "__main__":
    main()
