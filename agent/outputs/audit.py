"""Claimed against measured: what an import run (`kernelwright import`) found of a release's claims.

One row per imported candidate: its task, the speedup its publisher claimed, the speedup
kernelwright measured (the median of the run's evaluation; on this machine, under the run's
policy), the status and reason. A claim *holds up* when the candidate is correct and, if it
claimed to be faster than eager, is measured at least as fast as eager here. Totals count the
rows by status, the rejected and failed ones by the first words of their reason, and compare
the geometric means of claimed and measured speedups over the rows that have both.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class AuditRow:
    task: str
    key: str  # where in the imported file: "line 12", a file stem
    claimed: float | None
    measured: float | None  # None unless the candidate was correct and timed
    status: str
    reason: str
    policy: str
    candidate_id: str

    @property
    def held(self) -> bool:
        if self.status != "ok":
            return False
        return self.claimed is None or self.claimed <= 1.0 or (self.measured or 0.0) >= 1.0


@dataclasses.dataclass(frozen=True)
class Audit:
    run_id: int | None
    rows: tuple[AuditRow, ...]

    def totals(self) -> dict[str, Any]:
        both = [(r.claimed, r.measured) for r in self.rows if r.claimed and r.measured and r.claimed > 0]
        reasons = collections.Counter(f"{r.status}: {reason_head(r.reason)}" for r in self.rows if r.status != "ok")
        return {"candidates": len(self.rows), "held_up": sum(r.held for r in self.rows),
                "by_status": dict(collections.Counter(r.status for r in self.rows).most_common()),
                "reasons": dict(reasons.most_common()), "compared": len(both),
                "geomean_claimed": geomean([c for c, _ in both]), "geomean_measured": geomean([m for _, m in both])}

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "rows": [{**dataclasses.asdict(r), "held": r.held} for r in self.rows],
                "totals": self.totals()}


def geomean(values: list[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def reason_head(reason: str, words: int = 3) -> str:
    """The first words of a reason (`pytorch_compute: torch.matmul ...` -> `pytorch_compute:`)."""
    first = (reason or "").strip().splitlines()[0] if (reason or "").strip() else "(no reason given)"
    tokens = first.split()
    if tokens and tokens[0].endswith(":") and "/" in tokens[0]:  # a trial's name ("default/none:"): not a cause
        tokens = tokens[1:]
    if tokens and tokens[0].endswith(":"):
        return tokens[0].rstrip(":")
    return " ".join(tokens[:words]).split(":")[0]


def audit(store: Any, run_id: int | None = None) -> Audit:
    """The audit of one import run (default: the latest import run); an empty one without any."""
    if run_id is None:
        run_id = next((r["id"] for r in store.runs(limit=1000) if r["command"] == "import"), None)
        if run_id is None:
            return Audit(None, ())
    measured = {e["candidate_id"]: e for e in store.evaluation_rows(run_id)}  # the run's latest, per candidate
    rows = []
    for c in store.claims(run_id):
        e = measured.get(c["candidate_id"])
        if e is None:
            continue
        ok = e["status"] == "ok"
        rows.append(AuditRow(task=c["task"], key=str((c["details"] or {}).get("key", "")),
                             claimed=c["claimed_speedup"], measured=e["speedup"] if ok else None,
                             status=e["status"], reason=e["reason"] or "", policy=e["policy"],
                             candidate_id=c["candidate_id"]))
    return Audit(run_id, tuple(rows))
