"""How candidates rank: a candidate's speed is the median of its measurements, not its luckiest.

When many candidates are each measured once with noise, the fastest single measurement is
biased high (the winner's curse); the optimizer re-measures its leader, and everything that
ranks candidates (best kernels, a run's progress, export) takes the median of what was
measured. A candidate ever judged incorrect or rejected never ranks, however fast its other
measurements were: a kernel that is wrong one time in two is wrong.
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Iterable, Mapping

DISQUALIFYING = frozenset({"incorrect", "rejected"})


@dataclasses.dataclass(frozen=True)
class Standing:
    candidate_id: str
    speedup: float  # median of the correct, timed measurements
    candidate_ms: float | None
    reference_ms: float | None
    measurements: int
    first: Any  # the earliest evaluation (ties go to the earliest candidate)
    peak_fraction: float | None = None  # median of the measurements that have one (evaluator/roofline.py)
    bound: str | None = None  # of the latest measurement with a peak fraction


def _get(e: Any, name: str) -> Any:
    return e[name] if isinstance(e, Mapping) else getattr(e, name)


def _maybe(e: Any, name: str) -> Any:
    """A field rows from before it existed may lack (peak_fraction, bound)."""
    return e.get(name) if isinstance(e, Mapping) else getattr(e, name, None)


def standings(evaluations: Iterable[Any]) -> dict[str, Standing]:
    """Per candidate id, its standing over the given evaluations (ORM rows or dicts with
    candidate_id, id, status, correct, speedup, candidate_ms, reference_ms; peak_fraction and bound
    where they have them), if it ranks."""
    groups: dict[str, list[Any]] = {}
    for e in evaluations:
        groups.setdefault(_get(e, "candidate_id"), []).append(e)
    out = {}
    for cid, evs in groups.items():
        if any(_get(e, "status") in DISQUALIFYING for e in evs):
            continue
        timed = sorted((e for e in evs if _get(e, "correct") and _get(e, "speedup") is not None),
                       key=lambda e: _get(e, "id"))
        if not timed:
            continue
        ms = [x for e in timed if (x := _get(e, "candidate_ms")) is not None]
        ref = [x for e in timed if (x := _get(e, "reference_ms")) is not None]
        peaks = [e for e in timed if _maybe(e, "peak_fraction") is not None]
        out[cid] = Standing(cid, statistics.median(_get(e, "speedup") for e in timed),
                            statistics.median(ms) if ms else None, statistics.median(ref) if ref else None,
                            len(timed), timed[0],
                            statistics.median(_maybe(e, "peak_fraction") for e in peaks) if peaks else None,
                            _maybe(peaks[-1], "bound") if peaks else None)
    return out


def leader(ranked: Iterable[Standing]) -> Standing | None:
    """The highest median speedup; a tie goes to the candidate measured first."""
    return min(ranked, key=lambda s: (-s.speedup, _get(s.first, "id")), default=None)
