"""Checks on a candidate's timing phase, each returning the reason it fails (or None).

The supervisor's clock gives a candidate's figure (evaluator/rounds.py); these decide whether
to believe the rest: one call doing the work of all (batch and skip, in the worker's per-call
claims), work hidden on another CUDA stream, CPU time taken from cores the candidate was not
given, a worker clock that disagrees with the supervisor's, and the checksums of every timed
output against the reference's.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

import torch

from evaluator.compare import Tolerance
from evaluator.verdict import Timing


def batch_and_skip(claimed: list[float]) -> str | None:
    """One call taking most of the phase's time and far more than the median (worker claims)."""
    if len(claimed) < 8:
        return None
    median = statistics.median(claimed)
    if max(claimed) > 0.5 * sum(claimed) and max(claimed) > 20 * median:
        return (f"batch_and_skip: one call took {max(claimed):.2f} ms of {sum(claimed):.2f} ms in all "
                f"(median {median:.3f} ms), twice")
    return None


def hidden_stream_work(synced: list[float], claimed: list[float]) -> str | None:
    """CUDA: the end event after a device-wide synchronize much later than the timed stream's."""
    if not synced or not claimed:
        return None
    s, c = statistics.median(synced), statistics.median(claimed)
    if s > 1.5 * c + 0.05:
        return f"hidden_stream_work: {s:.3f} ms with a device-wide sync against {c:.3f} ms on the timed stream"
    return None


def cores_escaped(cpu_s: float, wall_s: float, cores: int) -> str | None:
    """More CPU time in the phase than the timing cores can give: work moved onto the others
    (more cores than the reference was timed on)."""
    if cpu_s > 1.15 * wall_s * cores + 0.01:
        return (f"cores_escaped: {cpu_s:.3f} s of CPU time in {wall_s:.3f} s of timing rounds on {cores} "
                "timing core(s) (work moved off the timing cores)")
    return None


def threads_escaped(found: list[tuple[int, str]], timing_cpus: tuple[int, ...]) -> str | None:
    """Worker threads allowed on other cores than the timing cores after a timed round."""
    if not found:
        return None
    tid, cores = found[0]
    return (f"cores_escaped: worker thread {tid} may run on cores {cores} during a timing round "
            f"(the timing cores are {','.join(map(str, timing_cpus))}): work moved off the timing cores")


def clock_mismatch(cand: Timing) -> str | None:
    """In every round the worker's own clock says its calls took far less than the supervisor
    measured: a forged clock or work that escaped the call (the figure is the supervisor's
    either way). Every round, because a loaded machine can stall a round between two calls."""
    pairs = [(a, c) for a, c in zip(cand.samples_ms, cand.claimed_ms)]
    if not pairs or not all(a > 2.0 * c + 0.02 for a, c in pairs):
        return None
    claimed = cand.claimed_median_ms or 0.0
    return (f"timing_mismatch: the worker's clock reports {claimed:.3f} ms per call, the supervisor "
            f"measured {cand.median_ms:.3f} ms, in every round (fooled clock or escaped work)")


SIGMAS = 6.0  # how far a signed sum may stray, in standard deviations of honest error


def checksums_match(claimed: Any, want: Any, tol: Tolerance) -> bool:
    """A timed call's checksums against the reference's: [signed sum, sum of squares, elements,
    dtype] per output (evaluator/jail/instruments.py). An output within atol + rtol*|y| of the
    reference y everywhere, its errors unrelated to the secret signs, moves the signed sum by a
    random amount of standard deviation at most sqrt(sum (atol + rtol*|y|)^2), which is at most
    sqrt(2 (n atol^2 + rtol^2 sum y^2)); the sum of squares by at most about
    2 (atol sum|y| + rtol sum y^2), with sum|y| <= sqrt(n sum y^2). Anything else is some other
    output: a skipped call, a stale or partial one."""
    if not isinstance(claimed, list) or not isinstance(want, list) or len(claimed) != len(want):
        return False
    for c, (ws, wq, n, dtype) in zip(claimed, want):
        if not n:
            continue
        try:
            s, q = float(c[0]), float(c[1])
        except (TypeError, ValueError, IndexError, KeyError):
            return False
        atol, rtol = tol.for_dtype(getattr(torch, str(dtype), torch.float32))
        n, wq = int(n), float(wq)
        sigma = math.sqrt(2.0 * (n * atol ** 2 + rtol ** 2 * wq))
        l1 = math.sqrt(n * wq)
        slack_q = 2.0 * (atol * l1 + rtol * wq) + n * (atol + rtol * math.sqrt(wq)) ** 2 + 1e-9
        if not (abs(s - float(ws)) <= SIGMAS * sigma + 1e-9 and abs(q - wq) <= slack_q):  # NaN fails too
            return False
    return True
