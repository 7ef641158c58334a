"""Checks on a candidate's timing phase, each returning the reason it fails (or None).

The worker measures its own calls; these decide whether to believe it: one call doing the
work of all (batch and skip), work hidden on another CUDA stream, CPU time taken from cores
the candidate was not given, calls that take longer by the supervisor's clock than reported,
and checksums of the timed outputs against the reference.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from evaluator.compare import Tolerance, flatten
from evaluator.verdict import Timing
from sandbox.protocol import TensorInfo


def batch_and_skip(cand: Timing) -> str | None:
    """One call taking most of the phase's time and far more than the median."""
    every = list(cand.warmup_ms[1:]) + list(cand.samples_ms)  # the first call may pay lazy set-up
    if len(every) >= 8 and max(every) > 0.5 * sum(every) and max(every) > 20 * cand.median_ms:
        return (f"batch_and_skip: one call took {max(every):.2f} ms of {sum(every):.2f} ms in all "
                f"(median {cand.median_ms:.3f} ms), twice")
    return None


def hidden_stream_work(meta: dict[str, Any], cand: Timing) -> str | None:
    """CUDA: the end event after a device-wide synchronize much later than the timed stream's."""
    synced = sorted(float(x) for x in meta.get("synced_ms", []))
    if synced and synced[len(synced) // 2] > 1.5 * cand.median_ms + 0.05:
        return (f"hidden_stream_work: {synced[len(synced) // 2]:.3f} ms with a device-wide sync against "
                f"{cand.median_ms:.3f} ms on the timed stream")
    return None


def cores_escaped(cpu_s: float, wall_s: float, cores: int) -> str | None:
    """More CPU time in the phase than the timing cores can give: work moved onto the others
    (more cores than the reference was timed on)."""
    if cpu_s > 1.15 * wall_s * cores + 0.05:
        return (f"cores_escaped: {cpu_s:.2f} s of CPU time in a {wall_s:.2f} s timing phase on {cores} "
                "timing core(s) (work moved off the timing cores)")
    return None


def spot_check(call: Callable[..., Any], cand: Timing, seed: int, calls: int = 7) -> tuple[float, str | None]:
    """Single calls timed by the supervisor's own clock (round trip minus a no-op's): a worker
    that reports faster timings than its calls really take is caught here. Minima, because load
    on the machine only ever adds time, and a call cannot be faster than it is. A virtual
    machine can still slow a whole round (a descheduled or moved vCPU), so a mismatch must show
    in two rounds; a forged clock shows in every round. Returns what was seen (ms) and the reason."""
    seen = 0.0
    for first_index in (1_000_000, 2_000_000):
        pings, trips = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            call("ping", {})
            pings.append((time.perf_counter() - t0) * 1e3)
        for k in range(calls):
            call("prepare", {"seed": seed, "index": first_index + k})
            t0 = time.perf_counter()
            call("call", {})
            trips.append((time.perf_counter() - t0) * 1e3)
        seen = min(trips) - min(pings)
        if seen <= max(2.0 * cand.median_ms, cand.median_ms + 0.5):
            return seen, None
    return seen, (f"timing_mismatch: calls timed by the supervisor take {seen:.3f} ms, the worker reported "
                  f"a median of {cand.median_ms:.3f} ms (fooled clock or escaped work)")


def checksums_match(claimed: Any, want: Any, tol: Tolerance) -> bool:
    """A timed call's (sum, sum of magnitudes) per output against the reference's outputs."""
    tensors = [w.tensor for w in flatten(want) if isinstance(w, TensorInfo)]
    if not isinstance(claimed, list) or len(claimed) != len(tensors):
        return False
    for (s, a), t in zip(claimed, tensors):
        if not t.numel():
            continue
        atol, rtol = tol.for_dtype(t.dtype)
        ws, wa = float(t.double().sum()), float(t.double().abs().sum())
        slack = atol * t.numel() + rtol * wa + 1e-9
        if abs(float(s) - ws) > slack or abs(float(a) - wa) > slack:
            return False
    return True
