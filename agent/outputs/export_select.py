"""Which tasks an export ships: only kernels that help.

By default a task's best kernel ships only when it is faster than eager by more than its
measured spread: its upper-quartile time must lie below eager's lower-quartile time, i.e.

    speedup > (1 + c / 2) / (1 - r / 2)

with c and r the interquartile spreads of the kernel's and eager's times, relative to their
medians (each the median over the kernel's correct measurements). `--min-speedup X` replaces
the rule with `speedup >= X`. Every task left out is listed with the reason.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any


@dataclasses.dataclass(frozen=True)
class Spread:
    candidate: float | None  # relative IQR of the kernel's time (median over its measurements)
    reference: float | None  # the same for eager

    def needed(self) -> float | None:
        """The speedup that clears the spread (None when no spread was recorded)."""
        if self.candidate is None or self.reference is None or self.reference >= 2:
            return None
        return (1 + self.candidate / 2) / (1 - self.reference / 2)


def spread(evaluations: list[dict[str, Any]]) -> Spread:
    """The kernel's and eager's relative spreads over the candidate's correct, timed measurements."""
    timed = [e for e in evaluations if e.get("correct") and e.get("speedup") is not None]

    def rel(ms: str, spread_ms: str) -> float | None:
        values = [e[spread_ms] / e[ms] for e in timed if e.get(ms) and e.get(spread_ms) is not None]
        return statistics.median(values) if values else None
    return Spread(rel("candidate_ms", "candidate_spread_ms"), rel("reference_ms", "reference_spread_ms"))


def verdict(speedup: float, s: Spread, min_speedup: float | None) -> str:
    """"" when the kernel ships, else why not (one line)."""
    if min_speedup is not None:
        return "" if speedup >= min_speedup else f"{speedup:.2f}x is below --min-speedup {min_speedup:g}"
    need = s.needed()
    if need is None:
        return "no timing spread recorded, so no speedup can be shown (use --min-speedup to ship it anyway)"
    if speedup > need:
        return ""
    assert s.candidate is not None and s.reference is not None  # needed() had both
    slower = "slower than eager" if speedup < 1 else "not faster than eager by more than its measured spread"
    return (f"{speedup:.2f}x: {slower} (kernel ±{100 * s.candidate / 2:.1f}%, eager ±{100 * s.reference / 2:.1f}%: "
            f"needs more than {need:.2f}x)")


def choose(store: Any, rows: list[dict[str, Any]], min_speedup: float | None
           ) -> tuple[list[tuple[dict[str, Any], Spread]], list[dict[str, Any]]]:
    """The rows that ship, each with its spread, and the tasks left out with the reason."""
    kept, left_out = [], []
    for row in rows:
        s = spread(store.evaluations(row["candidate_id"]))
        why = verdict(row["speedup"], s, min_speedup)
        if why:
            left_out.append({"task": row["task"], "speedup": row["speedup"], "candidate_id": row["candidate_id"],
                             "evaluation_id": row["evaluation_id"], "reason": why})
        else:
            kept.append((row, s))
    return kept, left_out
