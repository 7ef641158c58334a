"""Verdict dicts for store tests, shaped like evaluator Verdict.to_json()."""
from __future__ import annotations

from typing import Any


def verdict(speedup: float | None = 2.0, correct: bool = True, fingerprint_id: str = "fp-a",
            device: str = "cpu", **overrides: Any) -> dict[str, Any]:
    """A verdict dict shaped like evaluator Verdict.to_json() (test_contract.py checks the real one)."""
    out: dict[str, Any] = {
        "status": "ok" if correct else "incorrect",
        "reason": "" if correct else "output 0 differs",
        "correct": correct,
        "speedup": speedup,
        "candidate_ms": 1.0,
        "reference_ms": None if speedup is None else float(speedup),
        "candidate_spread_ms": 0.01,
        "reference_spread_ms": 0.02,
        "flags": [],
        "trials": [{"name": "seed0/normal", "ok": correct, "errors": [], "note": ""}],
        "timings": {"candidate_ms": [1.0, 1.1], "reference_ms": [2.0, 2.1]},
        "stages": {"compile": 0.4, "total": 1.0},
        "fingerprint": {"id": fingerprint_id, "device": device, "cpu": "test cpu"},
    }
    out.update(overrides)
    return out
