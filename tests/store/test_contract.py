"""The store against the evaluator's real Verdict.to_json(): nothing it says may be lost.

store/ never imports the evaluator; this test does, so that a key added to to_json()
without a column (and a migration) to keep it fails here rather than vanishing silently.
"""
from __future__ import annotations

import dataclasses
import json

from evaluator.verdict import OutputError, Status, Timing, Trial, Verdict
from store import Store


def _timing(samples: list[float]) -> Timing:
    return Timing.from_samples(samples, wall_ms=sum(samples) + 1.0, overhead_ms=0.01, warmup_ms=[samples[0]])


def _full_verdict() -> Verdict:
    # Any further timing the Verdict grows (torch.compile's, say) is filled too, so its keys are checked.
    timings = {f.name: _timing([3.0, 3.2, 3.1]) for f in dataclasses.fields(Verdict)
               if f.name not in ("candidate", "reference") and "Timing" in str(f.type)}
    return Verdict(
        status=Status.OK,
        trials=(Trial("seed0/normal", True, (OutputError(0, 1e-6, 1e-5, 0.0, True),)),
                Trial("post-timing", True)),
        candidate=_timing([1.0, 1.1, 0.9, 1.05]),
        reference=_timing([2.0, 2.2, 2.1, 1.9]),
        flags=("sandbox: no network namespace",),
        fingerprint={"id": "0123abcd4567", "device": "cpu", "cpu": "Test CPU", "threads": 4},
        stages={"static": 0.001, "compile": 0.4, "total": 1.2},
        log="a warning from the compiler",
        peak_fraction=0.42, bound="memory", reference_peak_fraction=0.21,
        **timings,
    )


def test_every_key_of_a_real_verdict_survives_the_round_trip(store: Store, task_id: int):
    v = _full_verdict()
    as_json = {**v.to_json(), "log": v.log}
    expected = json.loads(json.dumps(as_json))  # what JSON can say of it: tuples become lists
    cid, _ = store.record(task_id, "class ModelNew: pass\n", as_json, origin="user")
    (stored,) = store.evaluations(cid)
    assert stored["speedup"] is not None
    for key, value in expected.items():
        assert key in stored, f"Verdict.to_json() key {key!r} has no column in the store"
        assert stored[key] == value, key
    assert (stored["fingerprint_id"], stored["device"]) == ("0123abcd4567", "cpu")


def test_a_failed_verdict_records_as_incorrect(store: Store, task_id: int):
    v = Verdict(Status.COMPILE_ERROR, "syntax error at line 3: invalid syntax")
    cid, _ = store.record(task_id, "class ModelNew(:\n", v.to_json(), origin="llm")
    (stored,) = store.evaluations(cid)
    assert (stored["status"], stored["correct"], stored["speedup"]) == ("compile_error", False, None)
    assert store.best() == []
