"""The reads behind `best`, `show`, `report`, `export` and `dataset`."""
from __future__ import annotations

from store import Store
from tests.store.verdicts import verdict


def _src(tag: object) -> str:
    return f"class ModelNew:  # {tag}\n    pass\n"


def test_task_and_tasks(store: Store):
    b = store.upsert_task("relu", "cpu", "class Model:  # relu\n    pass\n", "relu.py")
    a = store.upsert_task("gemm", "cpu", "class Model:  # gemm\n    pass\n", "gemm.py")
    assert store.task(a)["source"] == "class Model:  # gemm\n    pass\n"
    assert store.task(a)["path"] == "gemm.py" and store.task(999) is None
    assert [t["id"] for t in store.tasks()] == [a, b]  # by name


def test_evaluation_carries_its_task(store: Store, task_id: int):
    run = store.start_run("optimize", {}, "cpu")
    _, eid = store.record(task_id, _src(1), verdict(speedup=1.7), origin="tuner", run_id=run, reward=0.53,
                          strategy="tune:local")
    e = store.evaluation(eid)
    assert (e["task"], e["task_id"], e["speedup"], e["strategy"], e["reward"]) == ("softmax", task_id, 1.7,
                                                                                 "tune:local", 0.53)
    assert e["trials"][0]["name"] == "seed0/normal"
    assert store.evaluation(eid + 1) is None


def test_evaluation_rows_are_flat_oldest_first_and_filter_by_run(store: Store, task_id: int):
    other = store.upsert_task("relu", "cpu", "class Model:  # relu\n    pass\n", "relu.py")
    r1, r2 = store.start_run("optimize", {}, "cpu"), store.start_run("optimize", {}, "cpu")
    seed, _ = store.record(task_id, _src("seed"), verdict(speedup=1.1), origin="seed", run_id=r1)
    store.record(task_id, _src("child"), verdict(speedup=None, correct=False), origin="tuner", run_id=r1,
                 parent_id=seed)
    store.record(other, _src("r"), verdict(speedup=3.0), origin="llm", run_id=r2)

    rows = store.evaluation_rows()
    assert [(r["task"], r["status"], r["origin"]) for r in rows] == [
        ("softmax", "ok", "seed"), ("softmax", "incorrect", "tuner"), ("relu", "ok", "llm")]
    assert rows[1]["parent_id"] == seed and rows[1]["speedup"] is None and not rows[1]["correct"]
    assert rows[0]["fingerprint_id"] == "fp-a" and rows[0]["created_at"].endswith("+00:00")
    assert "log" not in rows[0] and "trials" not in rows[0]
    assert [r["task"] for r in store.evaluation_rows(run_id=r2)] == ["relu"]
    assert store.evaluation_rows(run_id=r2 + 1) == []
