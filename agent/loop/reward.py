"""Rewards from verdicts: what the search (and an RL trainer) optimizes.

Failures get a negative value by class, exploits the most negative. A correct kernel gets its
log-speedup, clipped, and rounded to the noise of its own measurement (as CUDA-L1 does), so
two kernels whose difference is within the noise get the same reward. A speedup above the
sanity bound (about 10x, or a roofline estimate where the task declares its work) is capped
at the bound until a second, independent measurement confirms it. Under a policy that lets
PyTorch compute (kernelbench), a kernel flagged lazy_optimization (its own code carried a
negligible share of the time) earns no positive reward: the speed was PyTorch's.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

FAILURE = {
    "format_error": -1.0,  # no usable code in the answer
    "rejected": -1.0,  # an exploit or a broken rule
    "compile_error": -0.5,
    "runtime_error": -0.5,
    "timeout": -0.5,
    "incorrect": -0.25,
}


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    sanity_bound: float = 10.0
    clip: float = math.log(100.0)  # no single kernel is worth more than a 100x
    min_quantum: float = 0.01  # log units: about 1%
    peak_gflops: float | None = None  # device peaks, for a roofline bound where a task gives flops/bytes
    peak_gbs: float | None = None


@dataclasses.dataclass(frozen=True)
class Reward:
    value: float
    note: str = ""
    needs_confirmation: bool = False


def sanity_bound(cfg: RewardConfig, reference_ms: float | None, flops: float | None = None,
                 nbytes: float | None = None) -> float:
    """The largest speedup believable without review: 10x, or less where physics says so."""
    bound = cfg.sanity_bound
    floors = []
    if flops and cfg.peak_gflops:
        floors.append(flops / (cfg.peak_gflops * 1e9) * 1e3)
    if nbytes and cfg.peak_gbs:
        floors.append(nbytes / (cfg.peak_gbs * 1e9) * 1e3)
    if floors and reference_ms:
        bound = min(bound, max(1.0, reference_ms / max(floors)))
    return bound


def noise(verdict: Mapping[str, Any]) -> float:
    """Relative noise of a speedup: both medians' spreads (IQR) combined."""
    rel = 0.0
    for med, spread in (("candidate_ms", "candidate_spread_ms"), ("reference_ms", "reference_spread_ms")):
        m, s = verdict.get(med), verdict.get(spread)
        if m and s is not None and m > 0:
            rel += (s / m) ** 2
    return math.sqrt(rel)


def reward(verdict: Mapping[str, Any], cfg: RewardConfig = RewardConfig(), *, confirmed: bool = False,
           flops: float | None = None, nbytes: float | None = None) -> Reward:
    status = verdict.get("status", "runtime_error")
    if status != "ok" or verdict.get("speedup") is None:
        return Reward(FAILURE.get(status, -0.5), status)
    speedup = float(verdict["speedup"])
    bound = sanity_bound(cfg, verdict.get("reference_ms"), flops, nbytes)
    note, needs = "", False
    if speedup > bound and not confirmed:
        note, needs = f"capped: {speedup:.1f}x is above the {bound:.1f}x sanity bound until confirmed", True
        speedup = bound
    quantum = max(cfg.min_quantum, math.log1p(noise(verdict)))
    value = max(-cfg.clip, min(cfg.clip, math.log(speedup)))
    if value > 0 and any(str(f).startswith("lazy_optimization") for f in verdict.get("flags") or ()):
        value = 0.0
        note = "; ".join(x for x in (note, f"lazy optimization under the {verdict.get('policy')} policy: "
                                             "no reward for PyTorch's speed") if x)
    return Reward(round(round(value / quantum) * quantum, 6), note, needs)
