"""Evaluation throughput: what one honest evaluation costs, and how many fit in a minute.

    python benchmarks/eval_latency.py [--quick]

1. The same softmax kernel through the fast path (plain g++ build) and through load_inline
   (a torch extension build), each evaluated end to end (compile, checks, timing) in a fresh
   worker with a cold compile cache: median latencies and their ratio.
2. The cpu suite: per-candidate latency of seed kernels at several knob configurations.
3. Candidates per minute with 1 and 2 compile workers (evaluations in flight; timing phases
   still take the device one at a time).
Figures only; nothing here asserts.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.loop import knobs
from evaluator.cascade import EvalConfig, Evaluator
from sandbox.cpus import partition
from sandbox.process import ProcessSandbox, SandboxConfig
from tasks.registry import suite_tasks
from tasks.spec import load_task

# the row loop of the load_inline candidate the tests use: both candidates here run exactly it
LOOP = "\n" + re.search(r"^    for \(int64_t r = 0;.*?^    }\n", (ROOT / "tests" / "data" / "softmax_load_inline.py").read_text(),
                         re.M | re.S).group(0)

FAST = '''
import torch
import torch.nn as nn
from sandbox import fastpath

SRC = r"""
// {tag}
#include <cmath>
#include <cstdint>
#include <algorithm>
extern "C" void softmax_rows(float* o, const float* in, int64_t rows, int64_t cols) {{
{loop}
}}
"""
_lib = fastpath.compile(SRC)


class ModelNew(nn.Module):
    def forward(self, x):
        out = torch.empty_like(x)
        _lib.softmax_rows(out, x, x.shape[0], x.shape[1])
        return out
'''

INLINE = '''
import torch
import torch.nn as nn
from torch.utils.cpp_extension import load_inline

SRC = r"""
// {tag}
#include <torch/extension.h>
#include <cmath>
torch::Tensor softmax_rows(torch::Tensor x) {{
    auto out = torch::empty_like(x);
    const float* in = x.data_ptr<float>();
    float* o = out.data_ptr<float>();
    const int64_t rows = x.size(0), cols = x.size(1);
{loop}
    return out;
}}
"""
_ext = load_inline(name="kw_bench_softmax", cpp_sources=SRC, functions=["softmax_rows"], verbose=False)


class ModelNew(nn.Module):
    def forward(self, x):
        return _ext.softmax_rows(x.contiguous())
'''


def fresh_evaluator(cache: Path, timing_cpus: str = "auto") -> tuple[ProcessSandbox, Evaluator]:
    """As the CLI builds it by default: on a CPU, timing cores apart from the compile cores."""
    sb = ProcessSandbox(SandboxConfig.partitioned(cache, spec=timing_cpus))
    return sb, Evaluator(sb, EvalConfig())


def timed(ev: Evaluator, task, source: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    v = ev.evaluate(task, source)
    return time.perf_counter() - t0, v.status.value


def fast_vs_inline(n_fast: int, n_inline: int) -> tuple[float, float]:
    task = load_task(ROOT / "tests" / "data" / "softmax_small.py")
    with tempfile.TemporaryDirectory() as cache:
        sb, ev = fresh_evaluator(Path(cache))
        try:
            ev.evaluate(task, FAST.format(tag="warm", loop=LOOP))  # reference and fork server up
            fast = [timed(ev, task, FAST.format(tag=f"fast {i}", loop=LOOP)) for i in range(n_fast)]
            inline = [timed(ev, task, INLINE.format(tag=f"inline {i}", loop=LOOP)) for i in range(n_inline)]
        finally:
            ev.close()
            sb.close()
    for name, rows in (("fast path", fast), ("load_inline", inline)):
        print(f"{name:12s} latencies (s): {', '.join(f'{t:.2f}' for t, _ in rows)}; statuses { {s for _, s in rows} }")
    f, i = statistics.median(t for t, _ in fast), statistics.median(t for t, _ in inline)
    print(f"median latency: fast path {f:.2f} s, load_inline {i:.2f} s: {i / f:.1f}x lower with the fast path")
    return f, i


def suite_candidates(per_task: int) -> list[tuple[object, str]]:
    out = []
    for task in suite_tasks("cpu"):
        source = task.seed_paths()[0].read_text()
        space = knobs.read_space(source)
        configs = [knobs.current(source)] + [c for c in space.configs() if c != knobs.current(source)][:per_task - 1]
        out += [(task, knobs.instantiate(source, c)) for c in configs[:per_task]]
    return out


def suite_latency(per_task: int) -> float:
    with tempfile.TemporaryDirectory() as cache:
        sb, ev = fresh_evaluator(Path(cache))
        try:
            lat: dict[str, list[float]] = {}
            for task, source in suite_candidates(per_task):
                ev.warm(task)  # reference outputs and timing: once per task and run, not per candidate
                t, status = timed(ev, task, source)
                lat.setdefault(f"{task.name} ({status})", []).append(t)
        finally:
            ev.close()
            sb.close()
    for name, ts in lat.items():
        print(f"  {name:28s} {', '.join(f'{t:.2f}' for t in ts)} s")
    med = statistics.median(t for ts in lat.values() for t in ts)
    print(f"cpu suite: median per-candidate latency {med:.2f} s (cold compile, checks, timing, fresh worker)")
    return med


def throughput(workers: int, candidates: list) -> float:
    with tempfile.TemporaryDirectory() as cache:
        sb, ev = fresh_evaluator(Path(cache))
        try:
            for task in {id(t): t for t, _ in candidates}.values():
                ev.warm(task)
            todo = list(candidates)
            lock = threading.Lock()
            statuses: dict[str, int] = {}

            def work() -> None:
                while True:
                    with lock:
                        if not todo:
                            return
                        task, source = todo.pop()
                    v = ev.evaluate(task, source)
                    status = v.status.value
                    if status != "ok":
                        print(f"  {task.name}: {status}: {v.reason}", flush=True)
                    with lock:
                        statuses[status] = statuses.get(status, 0) + 1

            t0 = time.perf_counter()
            threads = [threading.Thread(target=work) for _ in range(workers)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            elapsed = time.perf_counter() - t0
        finally:
            ev.close()
            sb.close()
    per_min = len(candidates) / elapsed * 60
    print(f"{workers} compile worker(s): {len(candidates)} candidates in {elapsed:.1f} s = {per_min:.1f} per minute "
          f"(statuses {statuses})")
    return per_min


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    ap.add_argument("--sections", default="1,2,3", help="which parts to run, e.g. 3")
    args = ap.parse_args()
    n, parts = 3 if args.quick else 5, set(args.sections.split(","))
    print(f"timing cores: {list(partition('auto', 'cpu')) or 'all'} of {sorted(os.sched_getaffinity(0))}")
    if "1" in parts:
        print("== 1. the same kernel: fast path vs load_inline")
        f, i = fast_vs_inline(n, 2 if args.quick else 3)
    if "2" in parts:
        print("== 2. cpu suite, per candidate")
        suite_latency(2 if args.quick else 3)
    if "3" in parts:
        print("== 3. candidates per minute")
        cands = suite_candidates(3)
        one = throughput(1, cands)
        two = throughput(2, cands)
        print(f"2 vs 1 compile workers: {two / one:.2f}x candidates per minute")
    if "1" in parts:
        print(f"fast/load_inline median latency ratio: {f / i:.4f}")


if __name__ == "__main__":
    main()
