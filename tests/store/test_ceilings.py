"""Ceilings in the store: saved, found again by fingerprint, cores and threads, newest first."""
from __future__ import annotations

import dataclasses

from evaluator.ceilings import Ceilings
from store import Store
from store.ceilings import load_ceilings, save_ceilings


def ceilings(**kw) -> Ceilings:
    base = {"device": "cpu", "fingerprint_id": "abc123", "cores": (3, 2), "threads": 2, "copy_gbs": 20.5, "read_gbs": 18.25,
            "copy_gbs_cached": 100.0, "read_gbs_cached": 170.0, "fma_gflops": 220.0,
            "measured_at": "2026-12-01T10:00:00.123456+00:00", "llc_bytes": 3 << 30,
            "details": {"levels": [{"level": "L2", "capacity_bytes": 1 << 21, "bytes": 1 << 19,
                                    "copy_gbs": 100.0, "read_gbs": 170.0}], "reps": 5}}
    return Ceilings(**{**base, **kw})


def test_save_then_load_round_trip(store: Store):
    c = ceilings()
    assert load_ceilings(store, "abc123", (2, 3), 2) is None
    assert save_ceilings(store, c) > 0
    got = load_ceilings(store, "abc123", [3, 2], 2)
    assert got == dataclasses.replace(c, cores=(2, 3))  # cores come back sorted
    # another key finds nothing
    assert load_ceilings(store, "abc123", (2,), 2) is None
    assert load_ceilings(store, "abc123", (2, 3), 1) is None
    assert load_ceilings(store, "other", (2, 3), 2) is None


def test_the_newest_measurement_wins_and_an_engine_works_too(store: Store):
    save_ceilings(store, ceilings(copy_gbs=1.0, measured_at="2026-12-01T10:00:00+00:00"))
    save_ceilings(store.engine, ceilings(copy_gbs=2.0, measured_at="2026-12-02T10:00:00+00:00"))
    save_ceilings(store, ceilings(copy_gbs=0.5, measured_at="2026-11-30T10:00:00+00:00"))  # older, stored later
    assert load_ceilings(store.engine, "abc123", (2, 3), 2).copy_gbs == 2.0
    gpu = ceilings(device="cuda", fingerprint_id="gpu", cores=(), threads=0, details={"tflops": {"bf16": 700.0}})
    save_ceilings(store, gpu)
    assert load_ceilings(store, "gpu", (), 0) == gpu
