"""Recording evaluations: content addressing, one transaction per record, tasks and runs."""
from __future__ import annotations

import hashlib
import math

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

import store.api as store_api
from store import Store, StoreError
from store.models import Candidate, Evaluation
from tests.store.verdicts import verdict

SOURCE = "class ModelNew:\n    pass\n"


def _count(st: Store, table) -> int:
    with Session(st.engine) as s:
        return s.execute(select(func.count()).select_from(table)).scalar()


def test_the_same_source_twice_is_one_candidate_with_two_evaluations(store: Store, task_id: int):
    a = store.record(task_id, SOURCE, verdict(speedup=1.5), origin="llm")
    b = store.record(task_id, SOURCE, verdict(speedup=1.6), origin="tuner")
    assert a[0] == b[0] and a[1] != b[1]
    assert [e["speedup"] for e in store.evaluations(a[0])] == [1.5, 1.6]
    assert store.candidate(a[0])["origin"] == "llm"  # the first sighting stands
    assert _count(store, Candidate) == 1


def test_the_candidate_id_is_the_documented_content_hash(store: Store, task_id: int):
    task_hash = hashlib.sha256(b"class Model: pass\n").hexdigest()
    cid, _ = store.record(task_id, SOURCE, verdict(), origin="user")
    assert cid == hashlib.sha256(f"{task_hash}\0{SOURCE}".encode()).hexdigest()[:12]


def test_the_same_source_for_another_task_is_another_candidate(store: Store, task_id: int):
    other = store.upsert_task("gelu", "cpu", "class Model:  # gelu\n    pass\n", "gelu.py")
    assert store.record(task_id, SOURCE, verdict(), origin="llm")[0] != store.record(other, SOURCE, verdict(),
                                                                                     origin="llm")[0]


def test_a_record_that_fails_midway_leaves_nothing_behind(store: Store, task_id: int):
    bad = verdict(stages={"compile": object()})  # fails after the candidate row was written
    with pytest.raises(StoreError, match="stages"):
        store.record(task_id, SOURCE, bad, origin="llm")
    assert _count(store, Candidate) == 0 and _count(store, Evaluation) == 0

    cid, _ = store.record(task_id, SOURCE, verdict(), origin="llm")
    with pytest.raises(StoreError):
        store.record(task_id, SOURCE, bad, origin="llm")
    assert len(store.evaluations(cid)) == 1


def test_any_exception_between_candidate_and_evaluation_rolls_both_back(store: Store, task_id: int, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-record")

    monkeypatch.setattr(store_api, "evaluation_row", boom)
    with pytest.raises(RuntimeError):
        store.record(task_id, SOURCE, verdict(), origin="llm")
    assert _count(store, Candidate) == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"run_id": 999}, "not stored"),                     # foreign key: no such run
    ({"parent_id": "0123456789ab"}, "not stored"),       # foreign key: no such parent
    ({"origin": "oracle"}, "origin"),
])
def test_bad_references_are_refused_and_write_nothing(store: Store, task_id: int, kwargs, match):
    with pytest.raises(StoreError, match=match):
        store.record(task_id, SOURCE, verdict(), **{"origin": "llm", **kwargs})
    assert _count(store, Candidate) == 0 and _count(store, Evaluation) == 0


def test_unknown_task_and_malformed_verdicts_are_refused(store: Store, task_id: int):
    with pytest.raises(StoreError, match="no task"):
        store.record(task_id + 1, SOURCE, verdict(), origin="llm")
    with pytest.raises(StoreError, match="status"):
        store.record(task_id, SOURCE, {"speedup": 2.0}, origin="llm")
    with pytest.raises(StoreError, match="speedup"):
        store.record(task_id, SOURCE, {**verdict(), "speedup": "fast"}, origin="llm")
    assert _count(store, Evaluation) == 0


def test_nan_speedup_is_stored_as_null_and_nan_errors_survive(store: Store, task_id: int):
    trials = [{"name": "seed0", "ok": False, "errors": [{"max_abs": float("nan")}], "note": ""}]
    cid, _ = store.record(task_id, SOURCE, verdict(speedup=float("nan"), trials=trials), origin="llm")
    (e,) = store.evaluations(cid)
    assert e["speedup"] is None
    assert math.isnan(e["trials"][0]["errors"][0]["max_abs"])


def test_peak_fractions_round_trip_and_the_best_carries_their_median(store: Store, task_id: int):
    run = store.start_run("optimize", {}, "cpu")
    peaks = {"bound": "memory", "reference_peak_fraction": 0.1}
    cid, _ = store.record(task_id, SOURCE, verdict(peak_fraction=0.3, **peaks), origin="llm", run_id=run)
    store.record(task_id, SOURCE, verdict(peak_fraction=0.5, **peaks), origin="llm", run_id=run)
    store.record(task_id, SOURCE, verdict(peak_fraction=0.35, **peaks), origin="llm", run_id=run)
    stored = store.evaluations(cid)
    assert [(e["peak_fraction"], e["bound"], e["reference_peak_fraction"]) for e in stored] == [
        (0.3, "memory", 0.1), (0.5, "memory", 0.1), (0.35, "memory", 0.1)]
    (best,) = store.best()
    assert (best["peak_fraction"], best["bound"]) == (0.35, "memory")  # the median, as the speedup's
    progress = store.run_progress(run)[task_id]
    assert (progress["best_peak_fraction"], progress["best_bound"]) == (0.35, "memory")
    assert [r["peak_fraction"] for r in store.evaluation_rows(run)] == [0.3, 0.5, 0.35]
    other, _ = store.record(task_id, SOURCE + "#\n", verdict(), origin="llm")  # measured without ceilings
    assert store.evaluations(other)[0]["peak_fraction"] is None and store.evaluations(other)[0]["bound"] is None
    with pytest.raises(StoreError, match="bound"):
        store.record(task_id, SOURCE, verdict(peak_fraction=0.3, bound="fast"), origin="llm")


def test_upsert_task_is_keyed_by_source_and_follows_renames(store: Store):
    a = store.upsert_task("softmax", "cpu", "src A", "a.py")
    assert store.upsert_task("softmax_v2", "gpu", "src A", "moved/a.py") == a
    assert store.upsert_task("softmax", "cpu", "src B", "a.py") != a
    cid, _ = store.record(a, SOURCE, verdict(), origin="seed")
    assert store.candidate(cid)["task"] == "softmax_v2"


def test_runs_start_finish_and_count_their_evaluations(store: Store, task_id: int):
    first = store.start_run("eval", {"timeout": 60}, "cpu")
    second = store.start_run("optimize", {"budget": 10}, "cuda")
    store.record(task_id, SOURCE, verdict(), origin="llm", run_id=second)
    store.record(task_id, SOURCE + "#", verdict(), origin="llm", run_id=second)
    store.finish_run(second, "interrupted")

    newest, oldest = store.runs(limit=10)
    assert (newest["id"], newest["status"], newest["evaluations"], newest["config"]) == \
           (second, "interrupted", 2, {"budget": 10})
    assert newest["finished_at"] is not None
    assert (oldest["id"], oldest["status"], oldest["finished_at"]) == (first, "running", None)
    assert len(store.runs(limit=1)) == 1


def test_finish_run_refuses_unknown_runs_and_statuses(store: Store):
    run = store.start_run("eval", {}, "cpu")
    with pytest.raises(StoreError, match="no run"):
        store.finish_run(run + 1, "finished")
    for status in ("running", "done"):
        with pytest.raises(StoreError):
            store.finish_run(run, status)
    with pytest.raises(StoreError, match="JSON"):
        store.start_run("eval", {"path": object()}, "cpu")
