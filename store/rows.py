"""Between plain dicts and rows: content hashes, verdict JSON in, JSON-ready dicts out.

Callers hand the store plain dicts (a verdict is `Verdict.to_json()`); they get plain dicts
back, with JSON columns decoded and timestamps as ISO-8601 UTC strings, so the CLI can
print them with `json.dumps` as they are.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from typing import Any, Mapping

from store.errors import StoreError
from store.models import Candidate, Claim, Evaluation, LLMCall, Run, Task

CANDIDATE_ID_LEN = 12
_FLOAT_FIELDS = ("speedup", "candidate_ms", "reference_ms", "candidate_spread_ms", "reference_spread_ms",
                 "reference_compiled_ms", "speedup_vs_compile", "coverage", "peak_fraction",
                 "reference_peak_fraction")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def candidate_id(task_source_hash: str, source: str) -> str:
    """Content address of a candidate: the same source for the same task gets the same id."""
    return sha256_hex(task_source_hash + "\0" + source)[:CANDIDATE_ID_LEN]


def encode(field: str, value: Any) -> str:
    # NaN and inf stay allowed: a broken kernel's error figures are often exactly that.
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{field} is not JSON-serializable: {e}") from e


def decode(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def iso(t: dt.datetime | None) -> str | None:
    # Always aware here: sqlmodel's UTCDateTime refuses naive values and returns aware ones.
    return None if t is None else t.astimezone(dt.UTC).isoformat()


def _number(field: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # SQLite would quietly store a string in a REAL column; refuse it here instead.
        raise StoreError(f"verdict {field} must be a number or null, not {value!r}")
    # SQLite stores NaN as NULL while PostgreSQL sorts it above every number (so a NaN
    # speedup would win best()); store NULL on every backend.
    return None if math.isnan(value) else float(value)


def evaluation_row(candidate: str, run_id: int | None, verdict: Mapping[str, Any]) -> Evaluation:
    """The evaluations row for one verdict (the keys of evaluator Verdict.to_json(), plus "log")."""
    if not isinstance(verdict.get("status"), str):
        raise StoreError("verdict has no status")
    fingerprint = verdict.get("fingerprint") or {}
    if not isinstance(fingerprint, Mapping):
        raise StoreError("verdict fingerprint must be an object")
    return Evaluation(
        candidate_id=candidate,
        run_id=run_id,
        status=verdict["status"],
        reason=str(verdict.get("reason") or ""),
        correct=bool(verdict.get("correct", False)),
        **{f: _number(f, verdict.get(f)) for f in _FLOAT_FIELDS},  # type: ignore[arg-type]  # all float columns
        trials=encode("verdict trials", verdict.get("trials", [])),
        timings=encode("verdict timings", verdict.get("timings", {})),
        flags=encode("verdict flags", verdict.get("flags", [])),
        stages=encode("verdict stages", verdict.get("stages", {})),
        fingerprint=encode("verdict fingerprint", dict(fingerprint)),
        fingerprint_id=fingerprint.get("id"),
        device=fingerprint.get("device"),
        log=str(verdict.get("log") or ""),
        resources=encode("verdict resources", list(verdict["resources"])) if "resources" in verdict else None,
        attribution=encode("verdict attribution", dict(verdict["attribution"])) if verdict.get("attribution") else None,
        bound=_bound(verdict.get("bound")),
        policy=_policy(verdict.get("policy")),
        torch_ops=encode("verdict torch_ops", list(verdict["torch_ops"])) if verdict.get("torch_ops") else None,
    )


def _policy(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.isidentifier()):
        raise StoreError(f"verdict policy must be a policy's name or null, not {value!r}")
    return value


def _bound(value: Any) -> str | None:
    if value not in (None, "memory", "compute"):
        raise StoreError(f"verdict bound must be memory, compute or null, not {value!r}")
    return value


def task_dict(t: Task) -> dict[str, Any]:
    return {"id": t.id, "name": t.name, "suite": t.suite, "source_hash": t.source_hash,
            "source": t.source, "path": t.path, "created_at": iso(t.created_at)}


def run_dict(r: Run, evaluations: int) -> dict[str, Any]:
    return {"id": r.id, "command": r.command, "status": r.status, "config": decode(r.config),
            "device": r.device, "created_at": iso(r.created_at), "finished_at": iso(r.finished_at),
            "evaluations": evaluations}


def candidate_dict(c: Candidate, task_name: str) -> dict[str, Any]:
    return {"id": c.id, "task_id": c.task_id, "task": task_name, "source": c.source,
            "source_hash": c.source_hash, "parent_id": c.parent_id, "origin": c.origin,
            "knobs": decode(c.knobs), "run_id": c.run_id, "created_at": iso(c.created_at)}


def evaluation_dict(e: Evaluation) -> dict[str, Any]:
    return {"id": e.id, "candidate_id": e.candidate_id, "run_id": e.run_id, "status": e.status,
            "reason": e.reason, "correct": e.correct,
            **{f: getattr(e, f) for f in _FLOAT_FIELDS},
            "trials": decode(e.trials), "timings": decode(e.timings), "flags": decode(e.flags),
            "stages": decode(e.stages), "fingerprint": decode(e.fingerprint),
            "fingerprint_id": e.fingerprint_id, "device": e.device, "log": e.log,
            "reward": e.reward, "reward_note": e.reward_note, "strategy": e.strategy,
            "resources": decode(e.resources), "attribution": decode(e.attribution),
            "bound": e.bound, "policy": e.policy or "strict", "torch_ops": decode(e.torch_ops) or [],
            "created_at": iso(e.created_at)}


def claim_dict(c: Claim) -> dict[str, Any]:
    return {"id": c.id, "candidate_id": c.candidate_id, "run_id": c.run_id, "source": c.source,
            "claimed_speedup": c.claimed_speedup, "claimed_correct": c.claimed_correct,
            "details": decode(c.details), "created_at": iso(c.created_at)}


LLM_CALL_STATUSES = ("ok", "api_error", "format_error")


def llm_call_row(call: Mapping[str, Any], run_id: int | None) -> LLMCall:
    if call.get("status") not in LLM_CALL_STATUSES:
        raise StoreError(f"llm call status must be one of {', '.join(LLM_CALL_STATUSES)}")
    return LLMCall(
        run_id=run_id, task_id=call.get("task_id"), candidate_id=call.get("candidate_id"),
        parent_id=call.get("parent_id"), kind=str(call.get("kind", "")), model=str(call.get("model", "")),
        messages=encode("llm messages", list(call.get("messages", []))), response=str(call.get("response") or ""),
        tokens_in=int(call.get("tokens_in") or 0), tokens_out=int(call.get("tokens_out") or 0),
        latency_s=float(call.get("latency_s") or 0.0), cost_usd=float(call.get("cost_usd") or 0.0),
        attempts=int(call.get("attempts") or 1), status=call["status"], error=str(call.get("error") or ""),
    )


def llm_call_dict(c: LLMCall) -> dict[str, Any]:
    return {"id": c.id, "run_id": c.run_id, "task_id": c.task_id, "candidate_id": c.candidate_id,
            "parent_id": c.parent_id, "kind": c.kind, "model": c.model, "messages": decode(c.messages),
            "response": c.response, "tokens_in": c.tokens_in, "tokens_out": c.tokens_out,
            "latency_s": c.latency_s, "cost_usd": c.cost_usd, "attempts": c.attempts, "status": c.status,
            "error": c.error, "created_at": iso(c.created_at)}
