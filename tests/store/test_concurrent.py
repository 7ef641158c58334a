"""Many processes on one store at once, on every backend (SQLite file and PostgreSQL): the
shape of a batch, where each worker opens the store itself and records into one run."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from sqlalchemy import func, select
from sqlmodel import Session

from store import Store, open_engine
from store.migrations import MIGRATIONS, applied
from store.models import Candidate, Evaluation, Task
from tests.store.verdicts import verdict

WORKERS = 4
SHARED = [f"class ModelNew: pass  # shared {i}\n" for i in range(12)]
OWN = 4  # sources only one worker proposes


def _record(url: str, default: str, run_id: int, worker: int, barrier, errors) -> None:
    try:
        with Store.open(url, Path(default)) as st:
            task = st.upsert_task("softmax", "cpu", "class Model: pass\n", f"softmax-{worker}.py")
            barrier.wait(timeout=120)
            own = [f"class ModelNew: pass  # worker {worker} own {i}\n" for i in range(OWN)]
            # the shared sources in a different order per worker, so inserts of one row collide
            shared = SHARED[worker:] + SHARED[:worker]
            for src in [s for pair in zip(shared, own + [None] * len(shared)) for s in pair if s]:
                st.record(task, src, verdict(speedup=1.0 + worker), origin="llm", run_id=run_id)
    except BaseException as e:  # noqa: BLE001 - reported by the test
        barrier.abort()
        errors.put(f"worker {worker}: {type(e).__name__}: {e}")


def _open(url: str, default: str, barrier, errors) -> None:
    try:
        barrier.wait(timeout=120)
        open_engine(url, Path(default)).dispose()
    except BaseException as e:  # noqa: BLE001
        barrier.abort()
        errors.put(f"{type(e).__name__}: {e}")


def _run(target, args_of, n: int) -> list[str]:
    ctx = mp.get_context("spawn")  # a fresh interpreter each, like separate workers
    barrier, errors = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_of(i), barrier, errors)) for i in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    out = []
    while not errors.empty():
        out.append(errors.get())
    assert all(p.exitcode == 0 for p in procs), out
    return out


def test_processes_recording_into_one_run_lose_nothing_and_duplicate_nothing(store_url: str, tmp_path: Path):
    default = str(tmp_path / "unused.db")
    with Store.open(store_url, Path(default)) as st:
        run = st.start_run("batch", {}, "cpu")
    assert _run(_record, lambda i: (store_url, default, run, i), WORKERS) == []
    with Store.open(store_url, Path(default)) as st, Session(st.engine) as s:
        def count(table, *where) -> int:
            return s.execute(select(func.count()).select_from(table).where(*where)).scalar()

        assert count(Task) == 1
        # one row per content address, however many workers recorded it
        assert count(Candidate) == len(SHARED) + WORKERS * OWN
        assert count(Evaluation, Evaluation.run_id == run) == WORKERS * (len(SHARED) + OWN)
        per_candidate = dict(s.execute(select(Evaluation.candidate_id, func.count())
                                       .group_by(Evaluation.candidate_id)).all())
        assert sorted(set(per_candidate.values())) == [1, WORKERS]  # own: once; shared: once per worker
        (progress,) = st.run_progress(run).values()
        assert progress["evaluated"] == WORKERS * (len(SHARED) + OWN)
        assert progress["best_speedup"] == float(WORKERS)


def test_processes_opening_a_fresh_database_at_once_migrate_it_once(store_url: str, tmp_path: Path):
    default = str(tmp_path / "unused.db")
    assert _run(_open, lambda i: (store_url, default), 5) == []
    engine = open_engine(store_url, Path(default))
    try:
        assert applied(engine) == [fn.__name__ for fn in MIGRATIONS]
    finally:
        engine.dispose()
