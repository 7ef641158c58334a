"""What supervisor-timed rounds cost, and how close their figure is to the worker's own clock.

    python benchmarks/timing_overhead.py [--repeats N]

For kernels from a few microseconds to a few milliseconds (a scale by 2 on 16K floats, the
test suite's small softmax, the cpu suite's softmax), an honest fast-path kernel is evaluated
N times. Printed per task: the round overhead measured on the reference's worker (a round of
no calls, and per call: the loop and the checksum), calls per round, the candidate's figure by
the supervisor's clock against the mean of its own per-call clock readings (an honest worker's
claims, so the ratio is the authority's error), and the spread across rounds. Figures only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from evaluator.cascade import EvalConfig, Evaluator
from sandbox.process import ProcessSandbox, SandboxConfig
from tasks.spec import load_task
from tests.data.candidates import FAST

SCALE_TASK = '''
import torch
import torch.nn as nn

n = 16384


class Model(nn.Module):
    def forward(self, x):
        return x * 2.0


def get_inputs():
    return [torch.randn(n)]


def get_init_inputs():
    return []
'''
SCALE = '''
import torch
import torch.nn as nn
from sandbox import fastpath

SRC = r"""
#include <cstdint>
extern "C" void scale2(float* y, const float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = 2.0f * x[i];
}
"""
_lib = fastpath.compile(SRC)


class ModelNew(nn.Module):
    def forward(self, x):
        y = torch.empty_like(x)
        _lib.scale2(y, x, x.numel())
        return y
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kw-overhead-"))
    (work / "scale.py").write_text(SCALE_TASK)
    cases = [("scale 16K floats", load_task(work / "scale.py"), SCALE),
             ("softmax 64x512 (tests)", load_task(ROOT / "tests" / "data" / "softmax_small.py"), FAST),
             ("softmax 256x4096 (cpu suite)", load_task(ROOT / "tasks" / "suites" / "cpu" / "softmax.py"), FAST)]
    sandbox = ProcessSandbox(SandboxConfig.partitioned(work / "cache", root=work / "sb"))
    evaluator = Evaluator(sandbox, EvalConfig(timeout_s=120))
    print(f"{'task':30} {'ref ms':>8} {'round':>7} {'per call':>8} {'calls':>6} {'cand ms':>9} {'claims':>9} "
          f"{'ratio':>6} {'spread':>7} {'cover':>6}")
    try:
        for name, task, source in cases:
            for _ in range(args.repeats):
                v = evaluator.evaluate(task, source)
                if v.status.value != "ok":
                    print(f"{name:30} {v.status.value}: {v.reason[:80]}")
                    continue
                c, r = v.candidate, v.reference
                claims = c.claimed_median_ms or 0.0
                print(f"{name:30} {r.median_ms:8.4f} {r.round_overhead_ms:7.3f} {r.overhead_ms:8.4f} "
                      f"{statistics.median(c.calls):6.0f} {c.median_ms:9.4f} {claims:9.4f} "
                      f"{c.median_ms / claims if claims else 0:6.2f} {c.spread_ms / c.median_ms if c.median_ms else float('inf'):7.1%} "
                      f"{v.coverage.share if v.coverage and v.coverage.share is not None else float('nan'):6.2f}")
    finally:
        evaluator.close()
        sandbox.close()
    print("(ref ms: the reference's figure; round: a round of no calls, ms; per call: loop and checksum, ms, "
          "both measured on the reference's worker; calls: per candidate round; cand ms: the supervisor's figure; "
          "claims: the worker's own clock; ratio: cand/claims; spread: interquartile range across rounds / median; "
          "cover: coverage)")


if __name__ == "__main__":
    main()
