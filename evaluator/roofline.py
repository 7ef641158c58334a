"""Peak fraction and the physical-bound gate: a measured time against the machine's ceilings.

A call that moves `bytes` and computes `flops` (tasks/work.py) in `ms` reaches
bytes / (ms * bandwidth) of the memory ceiling and flops / (ms * peak) of the compute ceiling;
its peak fraction is the larger, and that one bounds it. The bandwidth is the best the machine
moved (copy or read-only, evaluator/ceilings.py) for a working set of that size: the smallest
measured cache level it fits, out of cache beyond the last-level cache. A smaller working set
never gets a lower figure than a larger one (cache levels measured on a shared machine can
come out below memory's: the larger figure stands).

Pure functions: nothing here measures.
"""
from __future__ import annotations

import math
from typing import Any, Protocol

# Beyond 1 + MARGIN of peak a time is rejected as not physical. Why 0.5: the ceilings are the
# best of a few repetitions and still come out 10-30% low when the machine was busy while they
# were measured; one timing window's median can be 10-30% off (README, Timing); derived FLOPs
# and bytes are lower bounds (tasks/work.py). Those compound to about 1.4x; what the gate is for
# (results cached across calls, skipped work, a forged clock) lands at many times the ceiling.
MARGIN = 0.5


class _Work(Protocol):  # read-only: tasks/work.py's Work is frozen
    @property
    def flops(self) -> float: ...
    @property
    def bytes(self) -> float: ...
    @property
    def source(self) -> str: ...


def bandwidth(ceilings: Any, working_set: float, cached: bool | None = None) -> tuple[float, str]:
    """(GB/s, level) for a working set of `working_set` bytes. `cached`: True or False forces in
    or out of cache; None decides by whether it fits the last-level cache."""
    memory = max(ceilings.copy_gbs, ceilings.read_gbs)
    levels = [(float(lv["capacity_bytes"]), max(lv["copy_gbs"], lv["read_gbs"]), lv["level"])
              for lv in (ceilings.details or {}).get("levels", ())]
    if not levels:  # only the brief's two figures: in cache means as fast as L2
        levels = [(float(ceilings.llc_bytes), max(ceilings.copy_gbs_cached, ceilings.read_gbs_cached), "cache")]
    levels.sort()
    if cached is None:
        cached = working_set <= max(float(ceilings.llc_bytes), levels[-1][0])
    if not cached:
        return memory, "memory"
    fits = [i for i, (cap, _, _) in enumerate(levels) if working_set <= cap] or [len(levels) - 1]
    i = fits[0]
    return max([memory] + [gbs for _, gbs, _ in levels[i:]]), levels[i][2]


def compute_peak(ceilings: Any) -> float:
    """GFLOP/s: fp32 FMA, or on a GPU the fastest rate measured (a tensor-core dtype's). The work
    carries no dtype, so a GPU kernel is judged against the fastest units it could have used: the
    gate never rejects a tensor-core kernel, and an fp32 kernel's compute fraction reads low."""
    tflops = [float(v) for v in ((ceilings.details or {}).get("tflops") or {}).values() if v]
    return max([float(ceilings.fma_gflops)] + [1e3 * t for t in tflops])


def roofline(work: _Work, ceilings: Any, ms: float, cached: bool | None = None) -> dict[str, Any]:
    """Everything a verdict may record: peak_fraction, bound ("memory" or "compute"), both
    fractions, and the ceilings they were taken against."""
    if not ms > 0 or not math.isfinite(ms):
        raise ValueError(f"a time must be positive, not {ms!r}")
    gbs, level = bandwidth(ceilings, work.bytes, cached)
    seconds = ms * 1e-3
    memory = work.bytes / (seconds * gbs * 1e9) if gbs > 0 else 0.0
    gflops = compute_peak(ceilings)
    compute = work.flops / (seconds * gflops * 1e9) if gflops > 0 else 0.0
    bound = "memory" if memory >= compute else "compute"
    return {"peak_fraction": max(memory, compute), "bound": bound, "memory_fraction": memory,
            "compute_fraction": compute, "gbs": gbs, "level": level, "gflops": gflops,
            "flops": work.flops, "bytes": work.bytes, "work_source": work.source}


def peak_fraction(work: _Work, ceilings: Any, ms: float, cached: bool | None = None) -> tuple[float, str]:
    """(fraction of peak, "memory" or "compute"): the larger of the two fractions, and which it is."""
    r = roofline(work, ceilings, ms, cached)
    return r["peak_fraction"], r["bound"]


def beyond_roofline(work: _Work, ceilings: Any, ms: float, margin: float = MARGIN,
                    cached: bool | None = None) -> str | None:
    """A rejection reason when `ms` is faster than the ceilings allow (above 1 + margin of peak).
    Judged against the second cache level's bandwidth for any working set larger than it: the
    last level's real capacity is not known on a virtual machine (its sysfs may describe the
    host's), and inputs staged warm may sit anywhere up to it. A rejection must never hit an
    honest kernel; a cheat lands at many times even this ceiling."""
    caps = sorted(float(lv["capacity_bytes"]) for lv in (ceilings.details or {}).get("levels", ()))
    if cached is None and len(caps) > 1 and work.bytes > caps[1]:
        gbs, level = bandwidth(ceilings, caps[1], True)
        r = roofline(work, ceilings, ms, cached)
        memory = work.bytes / (ms * 1e-3 * gbs * 1e9) if gbs > 0 else 0.0
        r = {**r, "gbs": gbs, "level": level, "memory_fraction": memory,
             "peak_fraction": max(memory, r["compute_fraction"]),
             "bound": "memory" if memory >= r["compute_fraction"] else "compute"}
    else:
        r = roofline(work, ceilings, ms, cached)
    if r["peak_fraction"] <= 1.0 + margin:
        return None
    if r["bound"] == "memory":
        need = f"{work.bytes:.4g} bytes at {r['gbs']:.4g} GB/s ({r['level']})"
    else:
        units = "fp32 FMA" if r["gflops"] <= ceilings.fma_gflops else "the fastest tensor-core dtype"
        need = f"{work.flops:.4g} FLOPs at {r['gflops']:.4g} GFLOP/s ({units})"
    floor = max(work.bytes / (r["gbs"] * 1e9) if r["gbs"] > 0 else 0.0,
                work.flops / (r["gflops"] * 1e9) if r["gflops"] > 0 else 0.0) * 1e3
    return (f"beyond_roofline: {ms:.4g} ms is {r['peak_fraction']:.2f}x of the {r['bound']} ceiling: "
            f"{need} takes at least {floor:.4g} ms ({work.source} work; rejected above {1 + margin:.2f}x, "
            f"the margin for measurement error of the ceilings and the timing)")
