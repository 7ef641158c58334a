"""Reading the store back: best kernels, id prefixes, lineage."""
from __future__ import annotations

import hashlib
import itertools

import pytest

from store import Store, StoreError
from store.rows import candidate_id
from tests.store.verdicts import verdict


def _src(tag: object) -> str:
    return f"class ModelNew:  # {tag}\n    pass\n"


@pytest.fixture
def tasks(store: Store) -> dict[str, int]:
    return {name: store.upsert_task(name, "cpu", f"class Model:  # {name}\n    pass\n", f"{name}.py")
            for name in ("gemm", "relu", "softmax")}


def test_best_is_the_fastest_correct_evaluation_per_task(store: Store, tasks: dict[str, int]):
    gemm, relu, softmax = tasks["gemm"], tasks["relu"], tasks["softmax"]
    store.record(gemm, _src("slow"), verdict(speedup=1.5), origin="seed")
    fast, _ = store.record(gemm, _src("fast"), verdict(speedup=2.5), origin="llm")
    store.record(gemm, _src("wrong"), verdict(speedup=9.0, correct=False), origin="llm")
    store.record(gemm, _src("untimed"), verdict(speedup=None), origin="llm")
    store.record(relu, _src("wrong"), verdict(speedup=5.0, correct=False), origin="llm")  # never correct
    sm, _ = store.record(softmax, _src("only"), verdict(speedup=1.2), origin="tuner")

    rows = store.best()
    assert [(r["task"], r["candidate_id"], r["speedup"]) for r in rows] == [("gemm", fast, 2.5), ("softmax", sm, 1.2)]
    top = rows[0]
    assert (top["origin"], top["fingerprint_id"], top["device"], top["task_id"]) == ("llm", "fp-a", "cpu", gemm)
    assert top["created_at"].endswith("+00:00")
    assert [r["task"] for r in store.best(task="softmax")] == ["softmax"]
    assert [r["task"] for r in store.best(task=gemm)] == ["gemm"]
    assert store.best(task="relu") == []


def test_best_filters_by_fingerprint_and_device(store: Store, tasks: dict[str, int]):
    gemm = tasks["gemm"]
    here, _ = store.record(gemm, _src("here"), verdict(speedup=2.0, fingerprint_id="fp-a"), origin="llm")
    there, _ = store.record(gemm, _src("there"), verdict(speedup=7.0, fingerprint_id="fp-h100", device="cuda"),
                            origin="llm")
    assert [r["candidate_id"] for r in store.best()] == [there]
    assert [r["candidate_id"] for r in store.best(fingerprint_id="fp-a")] == [here]
    assert [r["candidate_id"] for r in store.best(device="cpu")] == [here]
    assert [r["candidate_id"] for r in store.best(device="cuda", fingerprint_id="fp-h100")] == [there]
    assert store.best(device="cpu", fingerprint_id="fp-h100") == []


def test_best_breaks_ties_by_the_earliest_evaluation(store: Store, tasks: dict[str, int]):
    first, _ = store.record(tasks["gemm"], _src(1), verdict(speedup=3.0), origin="llm")
    store.record(tasks["gemm"], _src(2), verdict(speedup=3.0), origin="llm")
    assert [r["candidate_id"] for r in store.best()] == [first]


def test_a_candidate_ranks_by_the_median_of_its_measurements(store: Store, tasks: dict[str, int]):
    gemm = tasks["gemm"]
    run = store.start_run("optimize", {"strategy": "test"}, "cpu")
    lucky, _ = store.record(gemm, _src("lucky"), verdict(speedup=3.0), origin="llm", run_id=run)
    steady, _ = store.record(gemm, _src("steady"), verdict(speedup=2.4), origin="llm", run_id=run)
    for again in (1.8, 2.0):  # re-measured: the first figure was luck
        store.record(gemm, _src("lucky"), verdict(speedup=again), origin="llm", run_id=run)
    (row,) = store.best()
    assert (row["candidate_id"], row["speedup"], row["measurements"]) == (steady, 2.4, 1)
    progress = store.run_progress(run)[gemm]
    assert (progress["best_candidate_id"], progress["best_speedup"], progress["evaluated"]) == (steady, 2.4, 4)
    store.record(gemm, _src("steady"), verdict(speedup=2.2), origin="llm", run_id=run)
    (row,) = store.best()
    assert (row["candidate_id"], row["speedup"], row["measurements"]) == (steady, 2.3, 2)
    assert lucky != steady


def test_a_candidate_once_judged_incorrect_never_ranks(store: Store, tasks: dict[str, int]):
    gemm = tasks["gemm"]
    flaky, _ = store.record(gemm, _src("racy"), verdict(speedup=9.0), origin="llm")
    store.record(gemm, _src("racy"), verdict(speedup=9.0, correct=False), origin="llm")
    honest, _ = store.record(gemm, _src("honest"), verdict(speedup=1.1), origin="llm")
    assert [r["candidate_id"] for r in store.best()] == [honest]
    assert flaky != honest


def test_a_candidate_is_found_by_its_id_or_a_unique_prefix(store: Store, tasks: dict[str, int]):
    cid, _ = store.record(tasks["gemm"], _src("x"), verdict(), origin="llm")
    for ref in (cid, cid[:4], cid[:7], cid.upper(), f" {cid[:6]} "):
        assert store.candidate(ref)["id"] == cid, ref
    assert store.candidate("ffffffffffff" if not cid.startswith("f") else "000000000000") is None
    assert store.candidate("zzzz") is None  # not hex: matches nothing
    with pytest.raises(StoreError, match="at least 4"):
        store.candidate(cid[:3])


def test_an_ambiguous_prefix_is_an_error_naming_the_matches(store: Store, tasks: dict[str, int]):
    # Find two sources whose ids share their first 4 characters (a birthday search, ~300 tries).
    task_hash = hashlib.sha256(b"class Model:  # gemm\n    pass\n").hexdigest()
    seen: dict[str, str] = {}
    for i in itertools.count():
        cid = candidate_id(task_hash, _src(i))
        if cid[:4] in seen:
            a, b = seen[cid[:4]], _src(i)
            break
        seen[cid[:4]] = _src(i)
    ida, _ = store.record(tasks["gemm"], a, verdict(), origin="llm")
    idb, _ = store.record(tasks["gemm"], b, verdict(), origin="llm")
    assert ida[:4] == idb[:4] and ida != idb
    with pytest.raises(StoreError, match="ambiguous") as err:
        store.candidate(ida[:4])
    assert ida in str(err.value) and idb in str(err.value)
    first_difference = next(i for i in range(12) if ida[i] != idb[i])
    assert store.candidate(ida[:first_difference + 1])["id"] == ida


def test_evaluations_return_the_verdict_as_stored(store: Store, tasks: dict[str, int]):
    v = verdict(speedup=2.0, flags=["suspicious speedup"], log="warning: unused variable")
    cid, eid = store.record(tasks["gemm"], _src("x"), v, origin="llm", knobs={"BLOCK": 64})
    (e,) = store.evaluations(cid[:6])
    assert e["id"] == eid and e["candidate_id"] == cid
    for key in ("status", "reason", "correct", "speedup", "candidate_ms", "reference_ms", "flags", "trials",
                "timings", "stages", "fingerprint", "log"):
        assert e[key] == v[key], key
    assert (e["fingerprint_id"], e["device"]) == ("fp-a", "cpu")
    assert store.candidate(cid)["knobs"] == {"BLOCK": 64}
    assert store.evaluations("abcdabcdabcd") == []


def test_a_verdict_with_no_fingerprint_is_stored_without_one(store: Store, tasks: dict[str, int]):
    # Static-screen rejections come back before any device was touched.
    cid, _ = store.record(tasks["gemm"], _src("x"), {"status": "rejected", "reason": "uses torch.nn.functional"},
                          origin="llm")
    (e,) = store.evaluations(cid)
    assert (e["fingerprint"], e["fingerprint_id"], e["device"], e["correct"]) == ({}, None, None, False)


def test_lineage_walks_parents_back_to_the_root(store: Store, tasks: dict[str, int]):
    gemm = tasks["gemm"]
    root, _ = store.record(gemm, _src("root"), verdict(), origin="seed")
    child, _ = store.record(gemm, _src("child"), verdict(), origin="tuner", parent_id=root)
    grandchild, _ = store.record(gemm, _src("grandchild"), verdict(), origin="llm", parent_id=child)
    assert [c["id"] for c in store.lineage(grandchild[:5])] == [grandchild, child, root]
    assert [c["id"] for c in store.lineage(root)] == [root]
    assert store.lineage("abcdabcdabcd") == []


def test_a_candidate_cannot_be_its_own_parent(store: Store, tasks: dict[str, int]):
    task_hash = hashlib.sha256(b"class Model:  # gemm\n    pass\n").hexdigest()
    own = candidate_id(task_hash, _src("loop"))
    with pytest.raises(StoreError, match="own parent"):
        store.record(tasks["gemm"], _src("loop"), verdict(), origin="llm", parent_id=own)
    assert store.candidate(own) is None
