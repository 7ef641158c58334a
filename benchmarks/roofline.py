"""Seeds toward the ceiling: peak fraction of every cpu seed, and of PyTorch eager, at the
suite's sizes and out of cache.

    python benchmarks/roofline.py [--tasks a,b] [--load SWEEP.json] [--llc-factor 4]
                                  [--large-bytes N] [--no-large] [--db URL] [--timeout S]

Per cpu task: its seed kernel at its default knobs (or, with --load, the best configuration of
a sweep `benchmarks/tuner_quality.py --save` wrote: the lowest median candidate time) is
evaluated by the evaluator as `kernelwright eval` does (process sandbox, timing cores apart),
once at the suite's sizes and once with the task's leading size constant scaled until the
work's bytes are at least --llc-factor times the last-level cache (or --large-bytes). Its
peak fraction (evaluator/roofline.py) is computed from the verdict's candidate and reference
medians against the ceilings measured for the timing cores and threads (evaluator/ceilings.py;
read from --db where stored, measured first otherwise, before any evaluation runs).
Figures only; nothing here asserts.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.loop import knobs
from evaluator import ceilings as ceilings_mod
from evaluator.cascade import EvalConfig, Evaluator
from evaluator.roofline import roofline
from sandbox.cpus import usable
from sandbox.process import ProcessSandbox, SandboxConfig
from tasks.registry import suite_tasks
from tasks.spec import load_task
from tasks.work import work

SIZE_NAMES = ("batch_size", "rows", "batch", "n", "N", "M")  # the constant scaled for out-of-cache sizes


def best_config(sweep_file: str, task: str) -> dict | None:
    """The configuration with the lowest median candidate time in a tuner_quality --save file."""
    raw = json.loads(Path(sweep_file).read_text()).get(task)
    if not raw:
        return None
    timed = {tuple(map(tuple, k)): statistics.median(s[0] for s in v) for k, v in raw if v and all(v)}
    return dict(min(timed, key=timed.get)) if timed else None


def scaled_task(task, min_bytes: float, where: Path):
    """A copy of the task file with its size constant scaled so its work moves >= min_bytes."""
    tree = ast.parse(task.source)
    consts = {n.targets[0].id: n for n in tree.body if isinstance(n, ast.Assign) and len(n.targets) == 1
              and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Constant)
              and type(n.value.value) is int}
    name = next((n for n in SIZE_NAMES if n in consts), None)
    if name is None:
        return None, "no size constant to scale"
    factor = math.ceil(min_bytes / work(task).bytes)
    if factor <= 1:
        return task, f"{name} unchanged"
    node = consts[name]
    value = node.value.value * factor
    lines = task.source.splitlines(keepends=True)
    line = lines[node.lineno - 1]
    lines[node.lineno - 1] = line[:node.col_offset] + f"{name} = {value}" + line[node.end_col_offset:]
    path = where / task.path.name
    path.write_text("".join(lines))
    return load_task(path), f"{name} x{factor} = {value}"


def evaluate(ev: Evaluator, task, source: str, ceil) -> dict:
    v = ev.evaluate(task, source)
    row = {"status": v.status.value, "reason": v.reason[:120]}
    if v.status.value != "ok":
        return row
    w = work(task)
    cand, ref = roofline(w, ceil, v.candidate.median_ms), roofline(w, ceil, v.reference.median_ms)
    row.update(seed_ms=v.candidate.median_ms, eager_ms=v.reference.median_ms, seed=cand["peak_fraction"],
               eager=ref["peak_fraction"], bound=cand["bound"], level=cand["level"], gbs=cand["gbs"],
               bytes=w.bytes, flops=w.flops, work=w.source)
    return row


def ceilings_for(cores, threads: int, db: str | None, cache: Path):
    fp = ceilings_mod.cpu_fingerprint_id(threads)
    store = None
    if db:
        from store.api import Store
        from store.ceilings import load_ceilings, save_ceilings

        store = Store.open(db, Path("kernelwright.db"))
        found = load_ceilings(store, fp, cores, threads)
        if found is not None:
            return found
    print(f"measuring ceilings on cores {cores} with {threads} thread(s)...", flush=True)
    found = ceilings_mod.measure(cores, threads, fingerprint_id=fp, cache_dir=cache)
    if store is not None:
        save_ceilings(store, found)
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="", help="only these tasks (comma-separated names)")
    ap.add_argument("--load", help="a tuner_quality.py --save file: time each seed at its best configuration")
    ap.add_argument("--llc-factor", type=float, default=4.0, help="out-of-cache sizes: work bytes >= this x LLC")
    ap.add_argument("--large-bytes", type=float, default=0, help="out-of-cache sizes: at least this many bytes instead")
    ap.add_argument("--no-large", action="store_true", help="the suite's sizes only")
    ap.add_argument("--db", help="store to read (and keep) the ceilings in")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per evaluation")
    args = ap.parse_args()
    cache = Path(os.environ.get("KERNELWRIGHT_CACHE") or Path.home() / ".cache" / "kernelwright")
    sb = ProcessSandbox(SandboxConfig.partitioned(cache))  # as the CLI: timing cores apart
    ceil = ceilings_for(sb.cfg.timing_cpus or usable(), sb.cfg.threads, args.db, cache)
    large = args.large_bytes or args.llc_factor * ceil.llc_bytes
    print(f"ceilings: copy {ceil.copy_gbs:.1f} GB/s out of cache, {ceil.copy_gbs_cached:.1f} in L2; "
          f"read {ceil.read_gbs:.1f} / {ceil.read_gbs_cached:.1f}; fp32 FMA {ceil.fma_gflops:.1f} GFLOP/s; "
          f"LLC {ceil.llc_bytes / 2**20:.0f} MiB; out-of-cache sizes: >= {large / 2**20:.0f} MiB", flush=True)
    rows = []
    # with the ceilings, as the CLI's evaluator: verdicts carry peak fractions and the gate applies
    ev = Evaluator(sb, EvalConfig(timeout_s=args.timeout, reference_timeout_s=args.timeout, ceilings=ceil))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for task in suite_tasks("cpu"):
                if args.tasks and task.name not in args.tasks.split(","):
                    continue
                source = task.seed_paths()[0].read_text()
                config = best_config(args.load, task.name) if args.load else None
                if config:
                    source = knobs.instantiate(source, config)
                sizes = [("suite", task, "")] if args.no_large else [("suite", task, ""), ("large", *scaled_task(task, large, Path(tmp)))]
                for label, t, note in sizes:
                    print(f"  {task.name} ({label}{', ' + note if note else ''})", flush=True)
                    row = {"status": "skipped", "reason": note} if t is None else evaluate(ev, t, source, ceil)
                    rows.append({"task": task.name, "size": label, "config": config or "default", **row})
    finally:
        ev.close()
        sb.close()
    print()
    print(f"{'task':17s} {'size':5s} {'MiB':>8s} {'bound':7s} {'level':6s} {'seed ms':>9s} {'seed':>6s} "
          f"{'eager ms':>9s} {'eager':>6s}  closer")
    for r in rows:
        if "seed" not in r:
            print(f"{r['task']:17s} {r['size']:5s} {r['status']}: {r['reason']}")
            continue
        closer = "seed" if r["seed"] >= r["eager"] else "eager"
        print(f"{r['task']:17s} {r['size']:5s} {r['bytes'] / 2**20:8.1f} {r['bound']:7s} {r['level']:6s} "
              f"{r['seed_ms']:9.3f} {r['seed']:6.1%} {r['eager_ms']:9.3f} {r['eager']:6.1%}  {closer}")
    print("(seed, eager: peak fraction, the larger of bytes / (time x bandwidth) and FLOPs / (time x fp32 FMA peak); "
          "bandwidth: the best copy or read figure of the cache level the work's bytes fit, out of cache beyond the "
          "last-level cache; bytes: inputs + outputs + parameters, FLOPs: declared or derived (tasks/work.py); "
          "times: the verdict's medians)")


if __name__ == "__main__":
    main()
